"""The trainer: exact resume, DDP equivalence, the planner, and the CLI (CPU, tiny configs)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import publish_rows

from curation.evalsets import register_evalset
from curation.store import VersionStore
from training import trainer
from training.data import Windows, tokenize_evalset, tokenize_version
from training.model import GPT, IGNORE_INDEX, GPTConfig
from training.runs import run_key
from training.tokenizer import train_tokenizer
from training.trainer import (
    CheckpointMismatch,
    Distributed,
    TrainConfig,
    _Run,
    evaluate,
    load_checkpoint,
    lr_at,
    peak_flops,
    plan,
    run_loop,
    train,
)

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}
WORDS = ("river mill people morning trade grain news weather roads prices health families village market "
         "harvest winter summer children school teacher letter window garden kitchen bread water").split()


def sentences(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    store = VersionStore(root / "store")
    publish_rows(store, "v1", [("web", t) for t in sentences(1, 300)])
    heldout = root / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"id": f"h{i}", "text": t}) + "\n" for i, t in enumerate(sentences(2, 40))))
    register_evalset(store, "held", [str(heldout)])
    tok = train_tokenizer(sentences(1, 300), root / "tok", vocab_size=300)
    return store, tok, tokenize_version(store, "v1", tok), {"held": tokenize_evalset(store, "held", tok)}


def config(**overrides) -> TrainConfig:
    base = dict(model=TINY, tokens=40 * 8 * 32, batch_size=8, learning_rate=3e-3, eval_every=10, eval_tokens=512,
                checkpoint_every=1000, seed=3)
    return TrainConfig(**{**base, **overrides})


def test_training_lowers_eval_loss_and_writes_its_artefacts(corpus, tmp_path):
    store, tok, tokens, evals = corpus
    result = train(config(), tokens, evals, tmp_path / "run", log=lambda *_: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == result.steps == 40
    assert rows[-1]["eval/held/loss"] < rows[0]["eval/held/loss"] < 6.0  # ln(300) = 5.7 at init
    assert result.final_eval["held"]["bpb"] > 0
    assert result.final_eval["held/heldout"]["loss"] == pytest.approx(result.final_eval["held"]["loss"], rel=0.05)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["meta"]["tokenizer_hash"] == tok.hash and saved["tokens_trained"] == 40 * 8 * 32


def test_stop_and_resume_equals_one_uninterrupted_run(corpus, tmp_path):
    _, _, tokens, evals = corpus
    straight = train(config(), tokens, evals, tmp_path / "straight", log=lambda *_: None)
    train(config(), tokens, evals, tmp_path / "resumed", stop_at_step=20, log=lambda *_: None)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 20
    resumed = train(config(), tokens, evals, tmp_path / "resumed", log=lambda *_: None)
    assert resumed.train_loss == pytest.approx(straight.train_loss, rel=1e-6)
    assert resumed.final_eval["held"]["loss"] == pytest.approx(straight.final_eval["held"]["loss"], rel=1e-6)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resuming_a_checkpoint_of_another_config_is_refused_naming_the_difference(corpus, tmp_path):
    _, _, tokens, evals = corpus
    short = dict(tokens=4 * 8 * 32)
    train(config(**short), tokens, evals, tmp_path / "run", stop_at_step=2, log=lambda *_: None)
    with pytest.raises(CheckpointMismatch, match=r"learning_rate: checkpoint 0\.003, now 0\.001") as refused:
        train(config(**short, learning_rate=1e-3), tokens, evals, tmp_path / "run", log=lambda *_: None)
    assert "\n" not in str(refused.value) and "checkpoint.pt" in str(refused.value)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2  # nothing was overwritten
    # How a run is executed may change between its start and its resumption.
    resumed = train(config(**short, checkpoint_every=3), tokens, evals, tmp_path / "run", log=lambda *_: None)
    assert resumed.steps == 4


def test_compiled_and_eager_runs_have_their_own_keys():
    def key(cfg: TrainConfig, device_type: str = "cuda", precision: str = "bf16") -> str:
        return run_key("f" * 64, "t" * 64, cfg, {"held": "e" * 64}, device_type, precision)

    eager = TrainConfig(seed=1)
    assert key(eager) == key(TrainConfig(seed=1))
    assert key(eager) != key(TrainConfig(seed=1, compile=True))
    assert key(eager) == key(TrainConfig(seed=1, device="cuda:1", checkpoint_every=7))  # how, not what, it runs
    assert len({key(eager), key(eager, "cpu", "fp32"), key(eager, "cuda", "fp32")}) == 3


def test_same_seed_same_run_other_seed_other_run(corpus, tmp_path):
    _, _, tokens, evals = corpus
    one = train(config(tokens=10 * 8 * 32), tokens, evals, tmp_path / "a", log=lambda *_: None)
    two = train(config(tokens=10 * 8 * 32), tokens, evals, tmp_path / "b", log=lambda *_: None)
    other = train(config(tokens=10 * 8 * 32, seed=4), tokens, evals, tmp_path / "c", log=lambda *_: None)
    assert one.train_loss == two.train_loss and one.train_loss != other.train_loss


def test_planner_defaults_to_chinchilla_and_warns_about_repeats(corpus, tmp_path):
    _, _, tokens, evals = corpus
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config(tokens=None), tokens, evals, tmp_path / "chin", stop_at_step=1, log=lambda *_: None)
    plan = result.plan
    assert plan["requested_tokens"] == 20 * plan["params"]
    assert plan["epochs"] > 2 and any("repeats the data" in str(w.message) for w in caught)
    assert plan["state_bytes"] == 16 * plan["params"]


def test_padded_windows_are_trained_and_evaluated_on_their_real_targets_only():
    """The last window of a token array that does not fill it is padded: forward, loss and evaluation must
    accept it and count only its real targets."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    windows = Windows(np.arange(21) % 32, block_size=8, drop_last=False)  # 20 targets: 8 + 8 + 4 (4 padded)
    x, y = windows.batch([0, 1, 2])
    real = y != IGNORE_INDEX
    assert int(real.sum()) == 20
    with torch.no_grad():
        _, loss = model(x, y)
        per_token = model.token_losses(x, y)
    assert torch.isfinite(loss) and float(loss) == pytest.approx(float(per_token[real].mean()), rel=1e-6)
    # Two batches, the second holding only the padded window: its 4 ignored positions are not averaged in.
    measured = evaluate(model, windows, "cpu", nullcontext(), batch_size=2)
    assert measured == pytest.approx(float(per_token[real].mean()), rel=1e-6)


def test_learning_rate_warms_up_then_decays():
    cfg = TrainConfig(learning_rate=1.0, warmup_fraction=0.1, min_lr_ratio=0.1)
    rates = [lr_at(step, 100, cfg) for step in range(100)]
    assert rates[0] < rates[9] == pytest.approx(1.0) and rates[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("NVIDIA A10", 125e12),
    ("NVIDIA A10G", 70e12),
    # No known peak: no MFU rather than a neighbour's peak.
    ("NVIDIA L40", None), ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None), ("NVIDIA GeForce RTX 4090", None),
    ("NVIDIA H200 NVL", None), ("Tesla T4", None),
])
def test_mfu_peak_is_chosen_by_the_whole_gpu_name(name, peak):
    assert peak_flops(name) == peak


class SkippingClock:
    """The trainer's clock: real time plus the seconds `skip` added, so a test can spend an hour in no time."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.skipped

    def skip(self, seconds: float) -> None:
        self.skipped += seconds


class SlowEvaluator:
    """An evaluator (the loop's protocol) that takes an hour on the trainer's clock."""

    def __init__(self, clock: SkippingClock) -> None:
        self.clock = clock

    def overall(self) -> dict[str, dict[str, float]]:
        self.clock.skip(3600)
        return {"held": {"loss": 1.0}}

    def everything(self) -> dict[str, dict[str, float]]:
        return self.overall()


def test_tokens_per_second_counts_training_steps_only(tmp_path, monkeypatch):
    """Each line's tokens/s is the training steps' own: an hour of evaluation before an interval, or an hour in the
    first step (compilation), does not lower it; the first step's time is reported as warm-up."""
    clock = SkippingClock()
    monkeypatch.setattr(trainer, "time", clock)
    cfg = config(eval_every=2, checkpoint_every=2, batch_size=4)
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    first_step_hour = iter([3600])  # like a compilation: the first forward takes an hour, the others nothing
    model.register_forward_hook(lambda *_: clock.skip(next(first_step_hour, 0)))
    windows = Windows(np.arange(2048) % 64, block_size=16)
    budget = plan(model, cfg, 2048, steps=6, step_tokens=4 * 16)
    run = _Run(cfg, tmp_path, "cpu", Distributed(), nullcontext(), model,
               model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (0.9, cfg.beta2), "cpu"), windows,
               budget, {})
    run_loop(run, SlowEvaluator(clock), log=lambda *_: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4, 6]
    interval_seconds = [2 * 4 * 16 / row["tokens_per_second"] for row in rows[1:]]
    assert max(interval_seconds) < 600  # two tiny steps each; an hour of evaluation would make them >= 3600 s
    assert 1 * 4 * 16 / rows[0]["tokens_per_second"] < 600  # step 2 alone: step 1 was the warm-up
    assert rows[0]["warmup_seconds"] >= 3600 and all("warmup_seconds" not in row for row in rows[1:])


def test_a_gpu_index_under_torchrun_is_refused(corpus, tmp_path, monkeypatch):
    """Under torchrun every process takes the GPU of its LOCAL_RANK: one named GPU would put them all on it."""
    _, _, tokens, evals = corpus
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match=r"device 'cuda:1' under torchrun .*LOCAL_RANK") as refused:
        train(config(device="cuda:1"), tokens, evals, tmp_path / "run", log=lambda *_: None)
    assert "\n" not in str(refused.value)


DDP_SCRIPT = """
import json, sys
from pathlib import Path
from training.data import TokenFile
from training.trainer import TrainConfig, train
args = json.loads(sys.argv[1])
tokens = TokenFile.open(args["tokens"])
result = train(TrainConfig(**args["config"]), tokens, {}, Path(args["out"]), log=lambda *_: None)
if __import__("os").environ.get("RANK", "0") == "0":
    Path(args["out"], "loss.json").write_text(json.dumps(result.train_loss))
"""


@pytest.mark.e2e
def test_ddp_on_two_cpu_processes_matches_one_process(corpus, tmp_path):
    _, _, tokens, _ = corpus
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    cfg = {**config(tokens=12 * 8 * 32).to_dict(), "eval_every": 100}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    losses = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        args = json.dumps({"config": cfg, "tokens": str(tokens.path.parent), "out": str(out)})
        command = ([sys.executable, str(script), args] if procs == 1 else
                   [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                    str(script), args])
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        losses[procs] = json.loads((out / "loss.json").read_text())
        weights = load_checkpoint(out / "checkpoint.pt")["model"]
        losses[f"w{procs}"] = weights["tok_emb.weight"]
    assert losses[2] == pytest.approx(losses[1], rel=1e-4)
    assert torch.allclose(losses["w1"], losses["w2"], atol=1e-4)


@pytest.mark.e2e
def test_cli_train_then_generate(corpus, tmp_path):
    store, _, _, _ = corpus
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    cli = str(Path(sys.executable).with_name("curate"))
    done = subprocess.run([cli, "train", "v1", "--store", store.url, "--tokens", "4096", "--batch-size", "8",
                           "--block-size", "32", "--vocab-size", "300", "--eval-every", "8"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "eval held: loss" in done.stdout and "bits/byte" in done.stdout
    checkpoint = next(Path(store.root, "runs").glob("*/*/checkpoint.pt"))
    greedy = [subprocess.run([cli, "generate", str(checkpoint), "The river", "--temperature", "0",
                              "--max-new-tokens", "12"], capture_output=True, text=True, env=env, timeout=300)
              for _ in range(2)]
    assert all(g.returncode == 0 for g in greedy), greedy[0].stderr
    assert greedy[0].stdout == greedy[1].stdout and greedy[0].stdout.startswith("The river")
