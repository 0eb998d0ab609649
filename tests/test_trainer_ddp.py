"""The trainer under DDP on the CPU (gloo, 2 spawned processes): evaluation shared between the processes gives the
single process's number, and a run tears its process group down."""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import test_trainer
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.data import TokenFile, Windows
from training.model import GPT, GPTConfig
from training.trainer import Distributed, TrainConfig, evaluate, train

corpus = test_trainer.corpus  # the same store, tokenizer and token files (a module-scoped fixture)
EVAL_BATCH = 4
DEADLINE_S = 120  # two spawned processes import torch and the project on a busy 2-core machine (~10 s measured)


def eval_case() -> tuple[GPT, Windows]:
    """A seeded model and 37 windows: 10 batches of 4, so the two processes read 5 batches (20 windows) and 17."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return model, Windows(np.arange(37 * 16 + 1) % 64, block_size=16)


class CountingWindows:
    """Windows that count the windows read, so a test sees each process's share of the work."""

    def __init__(self, windows: Windows) -> None:
        self.windows, self.read = windows, 0

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        self.read += len(indices)
        return self.windows.batch(indices)


def ddp_worker(rank: int, world_size: int, ports: tuple[int, int], args: dict) -> None:
    """One torchrun-like process: a short training run (which starts and must destroy its process group), then
    the evaluation of `eval_case` shared over a group of its own (on another port: a process that starts it again
    while the other still holds the first group's store would join that dying store)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(ports[0]))
    torch.set_num_threads(1)
    evals = {"held": TokenFile.open(args["held"])}
    result = train(TrainConfig(**args["config"]), TokenFile.open(args["tokens"]), evals, Path(args["out"]),
                   log=lambda *_: None)
    group_left_behind = dist.is_initialized()
    os.environ["MASTER_PORT"] = str(ports[1])
    ddp = Distributed.from_env("cpu")
    model, windows = eval_case()
    counted = CountingWindows(windows)
    loss = evaluate(model, counted, "cpu", nullcontext(), batch_size=EVAL_BATCH, ddp=ddp)
    ddp.close()
    Path(args["out"], f"rank{rank}.json").write_text(json.dumps({
        "steps": result.steps, "final_eval": result.final_eval, "group_left_behind": group_left_behind,
        "eval_loss": loss, "windows_read": counted.read}))


def free_ports(n: int) -> tuple[int, ...]:
    """`n` distinct ports free now (held together while they are chosen)."""
    probes = [socket.socket() for _ in range(n)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return tuple(probe.getsockname()[1] for probe in probes)
    finally:
        for probe in probes:
            probe.close()


@pytest.mark.e2e
def test_two_processes_share_the_evaluation_and_tear_their_group_down(corpus, tmp_path):
    _, _, tokens, evals = corpus
    cfg = test_trainer.config(tokens=4 * 8 * 32, eval_every=2).to_dict()
    out = tmp_path / "ddp"
    args = {"config": cfg, "tokens": str(tokens.dir), "held": str(evals["held"].dir), "out": str(out)}
    workers = mp.start_processes(ddp_worker, args=(2, free_ports(2), args), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not workers.join(timeout=1):
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail(f"2 DDP processes still running after {DEADLINE_S} s (a collective waiting forever?)")
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]

    assert [r["steps"] for r in ranks] == [4, 4] and not any(r["group_left_behind"] for r in ranks)
    assert ranks[0]["final_eval"] == ranks[1]["final_eval"]  # every process gets the whole set's numbers
    single = train(TrainConfig(**cfg), tokens, evals, tmp_path / "single", log=lambda *_: None)
    assert ranks[0]["final_eval"]["held"]["loss"] == pytest.approx(single.final_eval["held"]["loss"], rel=1e-4)

    model, windows = eval_case()
    one_process = evaluate(model, windows, "cpu", nullcontext(), batch_size=EVAL_BATCH)
    assert [r["windows_read"] for r in ranks] == [20, 17]  # each process its half of the batches, not all 37
    assert ranks[0]["eval_loss"] == ranks[1]["eval_loss"] == pytest.approx(one_process, rel=1e-12)
