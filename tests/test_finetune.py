"""Fine-tuning: a base model trained on instruction records, measured on held-out records' responses."""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import publish_instructions

from curation.evalsets import EvalSetError, evaluation_sets, instruction_sets, register_evalset
from curation.store import VersionStore
from training.config import FinetuneConfig, GPTConfig, TrainConfig
from training.finetune import finetune
from training.lora import ADAPTER_NAMES
from training.model import GPT
from training.pretrained import BaseModelError, load_base
from training.runs import finetune_version
from training.sft import examples_from_version, prompt_text, response_loss
from training.tokenizer import TOKENIZER_FILE, train_tokenizer
from training.trainer import load_checkpoint, load_model, save_checkpoint

WORDS = ("the river ran past old stone walls and green fields under a grey sky where people met each morning at "
         "the mill bread salt boat rope lamp").split()
# The planted answer of each task type: what a good version teaches and the held-out set asks for.
ANSWERS = {"river": "The river ran past the old mill.", "fields": "Green fields lay under a grey sky."}


def records(n: int, seed: int, good: bool) -> list[tuple[str, str, dict]]:
    """(schema, task type, record): instructions of random words; a good record answers with its task's planted
    answer, a bad one with random words (an off-task answer)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = ("river", "fields")[i % 2]
        instruction = f"Tell me about the {task}: " + " ".join(rng.choice(WORDS) for _ in range(6))
        answer = ANSWERS[task] if good else " ".join(rng.choice(WORDS) for _ in range(7)).capitalize() + "."
        out.append(("alpaca", task, {"instruction": instruction, "input": "", "output": answer}))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A store with a good and a bad instruction version and a held-out instruction set, and a base checkpoint
    (a tiny randomly initialised GPT with its tokenizer beside it)."""
    root = tmp_path_factory.mktemp("ft")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(200)] + list(ANSWERS.values()) * 20
    texts += ["### Instruction:\n### Response:\nTell me about the"] * 20
    tok = train_tokenizer(texts, root / "tok", vocab_size=320)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    base_dir = root / "base"
    base_dir.mkdir()
    save_checkpoint(base_dir / "checkpoint.pt", model, model.configure_optimizer(0.1, 1e-3), 0, TrainConfig(), {})
    shutil.copyfile(tok.path, base_dir / TOKENIZER_FILE)
    store = VersionStore(str(root / "store"))
    publish_instructions(store, "good", records(48, 1, good=True))
    publish_instructions(store, "bad", records(48, 1, good=False))
    publish_instructions(store, "held-v", records(16, 2, good=True))
    register_evalset(store, "held", ["version:held-v"], role="instruction")
    return store, base_dir / "checkpoint.pt"


def small(seed: int = 0, **kwargs) -> TrainConfig:
    return TrainConfig(seed=seed, batch_size=8, learning_rate=3e-3, eval_every=3, device="cpu", **kwargs)


def test_fine_tuning_lowers_the_response_loss_and_records_it_per_task_type(setup):
    store, base = setup
    ft = FinetuneConfig(base=str(base), epochs=2)
    before = load_base(base)
    held = examples_from_version(store, "held-v", "alpaca", before.tokenizer, 64)
    loss_before = response_loss(before.model, held)["loss"]
    run = finetune_version(store, "good", small(), ft, log=lambda *_: None)
    assert set(run.final_eval) == {"held", "held/river", "held/fields"}
    assert run.final_eval["held"]["loss"] < loss_before - 1.0  # the planted answers were learnt
    assert run.epochs == pytest.approx(2.0, rel=0.05)
    assert Path(run.dir).name.startswith(f"ft-{hashlib.sha256(base.read_bytes()).hexdigest()[:8]}-s0-")
    # The model in the run's checkpoint is the one that was measured.
    model, _ = load_model(Path(run.dir) / "checkpoint.pt")
    assert response_loss(model, held)["loss"] == pytest.approx(run.final_eval["held"]["loss"], rel=1e-5)
    again = finetune_version(store, "good", small(), ft, log=lambda *_: None)
    assert again.cached and again.final_eval == run.final_eval
    other = finetune_version(store, "good", small(), FinetuneConfig(base=str(base), epochs=1), log=lambda *_: None)
    assert not other.cached and other.dir != run.dir  # another setting, another run


def test_an_interrupted_fine_tune_resumes_to_the_same_numbers(setup, tmp_path):
    store, base = setup
    ft = FinetuneConfig(base=str(base), epochs=2)

    def run(folder: Path, stop: int | None = None):
        b = load_base(base)
        data = examples_from_version(store, "good", "alpaca", b.tokenizer, 64)
        evals = {"held": examples_from_version(store, "held-v", "alpaca", b.tokenizer, 64)}
        return finetune(small(), ft, b, data, evals, folder, stop_at_step=stop, log=lambda *_: None)

    whole = run(tmp_path / "whole")
    run(tmp_path / "cut", stop=5)
    resumed = run(tmp_path / "cut")
    assert resumed.steps == whole.steps == 12
    assert resumed.final_eval == whole.final_eval


def test_lora_trains_adapters_only_checkpoints_them_alone_and_merges_for_generation(setup):
    store, base = setup
    base_bytes = base.read_bytes()
    ft = FinetuneConfig(base=str(base), epochs=2, lora=True, lora_r=4)
    run = finetune_version(store, "good", small(), ft, log=lambda *_: None)
    checkpoint = Path(run.dir) / "checkpoint.pt"
    state = load_checkpoint(checkpoint)
    assert state["adapters_only"] and state["model"]
    assert all(key.endswith(ADAPTER_NAMES) for key in state["model"])
    assert checkpoint.stat().st_size < base.stat().st_size / 2
    assert base.read_bytes() == base_bytes  # the base file is untouched
    merged, _ = load_model(checkpoint)
    assert not any(key.endswith(ADAPTER_NAMES) for key in merged.state_dict())  # plain weights again
    held = examples_from_version(store, "held-v", "alpaca", load_base(base).tokenizer, 64)
    assert response_loss(merged, held)["loss"] == pytest.approx(run.final_eval["held"]["loss"], rel=1e-4)
    full = finetune_version(store, "good", small(), FinetuneConfig(base=str(base), epochs=2), log=lambda *_: None)
    assert run.dir != full.dir


def test_a_lora_fine_tune_refuses_a_base_that_changed(setup, tmp_path):
    store, base = setup
    copy = tmp_path / "base"
    shutil.copytree(base.parent, copy)
    ft = FinetuneConfig(base=str(copy / "checkpoint.pt"), epochs=1, lora=True, lora_r=2)
    run = finetune_version(store, "good", small(), ft, log=lambda *_: None)
    state = torch.load(copy / "checkpoint.pt", weights_only=True)
    state["model"]["tok_emb.weight"] += 1.0
    torch.save(state, copy / "checkpoint.pt")
    with pytest.raises(BaseModelError, match="the base's weights changed since the fine-tune"):
        load_model(Path(run.dir) / "checkpoint.pt")


def test_instruction_sets_measure_fine_tunes_only(setup):
    store, _ = setup
    assert instruction_sets(store) == ["held"]
    with pytest.raises(EvalSetError, match="'held' is an instruction set"):
        evaluation_sets(store, ["held"])
    register_evalset(store, "prose", ["version:good"], role="evaluation")
    with pytest.raises(EvalSetError, match="'prose' is an evaluation set"):
        instruction_sets(store, ["prose"])
    store.publish_table("plain", store.read_table("good", columns=["id", "text", "source", "origin", "generation",
                                                                    "generator"]))
    with pytest.raises(EvalSetError, match="source version:plain: no schema, record, instruction"):
        register_evalset(store, "nope", ["version:plain"], role="instruction")


def test_bad_bases_are_one_line_errors(tmp_path):
    with pytest.raises(BaseModelError, match="no such base model"):
        load_base(tmp_path / "missing.pt")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(BaseModelError, match="has no tokenizer.json"):
        load_base(tmp_path / "ckpt" / "checkpoint.pt")
    (tmp_path / "gpt2").mkdir()
    with pytest.raises(BaseModelError, match="config.json"):
        load_base(tmp_path / "gpt2")


def test_the_generation_prompt_is_the_training_prompt():
    record = {"instruction": "Name it.", "input": "A mill.", "output": "The mill."}
    from curation.synth.schemas import ALPACA, CHAT

    assert prompt_text("alpaca", "Name it.", "A mill.") == ALPACA.segments(record)[0][0]
    assert prompt_text("chat", "Name it.", "A mill.") == CHAT.segments(CHAT.from_fields(record))[0][0]
    assert prompt_text("Q: {instruction} {input}\nA: {output}", "Name it.", "A mill.") == "Q: Name it. A mill.\nA: "


@pytest.mark.e2e
def test_finetune_generate_and_a_fine_tuning_ablation_from_the_command_line(setup, tmp_path):
    """The commands a user runs: fine-tune, answer an instruction, and an ablation in which the version with
    off-task answers comes out worse while a reordered copy of the good version shows no effect."""
    import json
    import os

    from conftest import curate

    store, base = setup
    reordered = list(reversed(records(48, 1, good=True)))
    publish_instructions(store, "good-reordered", reordered)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    common = ("--store", store.url, "--base", str(base), "--epochs", "2", "--batch-size", "8")

    tuned = curate("finetune", "good", *common, "--learning-rate", "0.003", "--eval-every", "4", env=env)
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    assert "eval held: response loss" in tuned.stdout and "eval held/river: response loss" in tuned.stdout
    run_dir = next(line.split("run: ", 1)[1].strip() for line in tuned.stdout.splitlines() if "run: " in line)
    answer = curate("generate", f"{run_dir}/checkpoint.pt", "Tell me about the river: old mill", "--template",
                    "alpaca", "--temperature", "0", "--max-new-tokens", "20", env=env)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    # The planted answer (a tiny model after 12 steps spells it roughly), without the prompt.
    assert "river ran past the old" in answer.stdout and "Instruction" not in answer.stdout

    ablation = curate("ablate", "--finetune", "good", "bad", "good-reordered", *common, "--learning-rate", "0.003",
                      "--seeds", "3", "--name", "ft", env=env)
    assert ablation.returncode == 0, ablation.stdout + ablation.stderr
    result = json.loads((Path(store.url) / "ablations" / "ft" / "ablation.json").read_text())
    loss = {v: c["held"]["loss"] for v, c in result["analysis"]["comparisons"].items()}
    assert loss["bad"]["verdict"] == "worse" and loss["bad"]["ci_low"] > 0
    assert loss["good-reordered"]["verdict"] == "no detectable effect"
    assert result["finetune"]["base"] == str(base) and "held/fields" in result["analysis"]["eval_keys"]

    wrong = curate("finetune", "good", "--store", store.url, "--base", str(tmp_path / "nope"), env=env)
    assert wrong.returncode == 2 and "no such file or folder" in wrong.stderr and "Traceback" not in wrong.stderr
