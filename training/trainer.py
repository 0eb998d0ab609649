"""The training loop: the instrument that measures data.

Same preset, tokenizer, token budget and seed on two versions means that a loss difference is a
data difference: the data order is a pure function of (seed, step), the initialisation of the seed,
and a run stopped at step N and resumed reaches exactly the state of an uninterrupted run.

Fast paths on a GPU: bf16 autocast, TF32 matmuls, fused AdamW, optional torch.compile, batches copied from
pinned memory without blocking, losses read only when a line of metrics needs them, DDP through `torchrun`
(NCCL, one GPU per LOCAL_RANK; gloo on the CPU) with evaluation shared between the processes. Everything also runs
on the CPU, where the tests run.

`TrainConfig` and the training defaults live in the torch-free `training.config` (the CLI reads them at
start-up); importing them from here keeps working.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from curation.glibc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MAX_INT, mallopt
from training.config import (
    ADAM_BETA1,
    MAX_EPOCHS_BEFORE_WARNING,
    TOKENS_PER_PARAM,
    GPTConfig,
    TrainConfig,
    config_for_key,
)
from training.data import EpochSampler, TokenFile, Windows, fixed_eval_windows, per_source_eval_windows
from training.lora import load_lora_state_dict, lora_state_dict
from training.model import GPT, IGNORE_INDEX

CHECKPOINT = "checkpoint.pt"
# Peak dense bf16 tensor FLOP/s for MFU, by a pattern that must match the whole name `torch.cuda.get_device_name`
# reports ("NVIDIA " aside), so "L4" is not "L40S" and "H100 PCIe" is not an SXM. NVIDIA's datasheets give the peak
# with 2:4 sparsity, twice the dense one. A GPU no pattern matches gets no MFU rather than another GPU's peak; CPU
# MFU is not meaningful.
PEAK_FLOPS: dict[str, float] = {
    r"H100( SXM\d?)?( \d+GB)?( HBM3)?": 989e12,  # H100 SXM ("NVIDIA H100 80GB HBM3"), datasheet 1,979 sparse
    r"H100 PCIe( \d+GB)?": 756e12,  # H100 datasheet: 1,513 sparse
    r"H100 NVL": 835e12,  # H100 datasheet: 1,671 sparse
    r"H200( SXM\d?)?( \d+GB)?( HBM3e)?": 989e12,  # H200 SXM datasheet: 1,979 sparse
    r"A100([- ].*)?": 312e12,  # every A100 (SXM4, PCIe; 40 and 80 GB), datasheet 624 sparse
    r"L4": 121e12,  # L4 datasheet: 242 sparse
    r"L40S": 362e12,  # L40S datasheet: 362.05 dense, 733 sparse
    r"A10": 125e12,  # A10 datasheet: 250 sparse
    # AWS's A10G has no NVIDIA datasheet: 70 TFLOP/s is the dense bf16 figure quoted for it (public bf16 GEMM
    # measurements reach ~69.5), not the A10's 125.
    r"A10G": 70e12,
}


class CheckpointMismatch(ValueError):
    """A checkpoint that belongs to a run of another configuration: resuming it would mix two runs."""


# ---- devices and processes ----------------------------------------------------------------------


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of the GPU `torch.cuda.get_device_name` calls `device_name` (PEAK_FLOPS), or
    None for a GPU of unknown peak."""
    name = device_name.strip().removeprefix("NVIDIA ")
    return next((peak for pattern, peak in PEAK_FLOPS.items() if re.fullmatch(pattern, name)), None)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun started (RANK and WORLD_SIZE >= 2 in the environment)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) >= 2


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process group was initialised here, so `close` destroys it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> Distributed:
        """Set up DDP when launched by torchrun. On CUDA `device` is this process's own GPU (already set as the
        current device), passed as `device_id` where this torch accepts it: NCCL then binds the group to it at once
        instead of guessing a GPU for its first collective."""
        if not launched_by_torchrun():
            return cls()
        owns_group = not dist.is_initialized()
        if owns_group:
            options: dict[str, Any] = {}
            if device.startswith("cuda") and "device_id" in inspect.signature(dist.init_process_group).parameters:
                options["device_id"] = torch.device(device)
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", **options)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns_group)

    def close(self) -> None:
        """Destroy the process group when this code initialised it (a caller's own group is left to the caller)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False

    def mean(self, value: float, device: str) -> float:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def sum_over_processes(self, values: list[float], device: str) -> list[float]:
        """`values` summed element-wise over every process (float64)."""
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def shard(self, n: int, chunk: int = 1) -> range:
        """This process's contiguous share of `n` items, cut at multiples of `chunk` (whole batches): every
        process gets 1/world_size of the chunks, and one process gets everything."""
        chunks = -(-n // chunk)
        first, last = self.rank * chunks // self.world_size, (self.rank + 1) * chunks // self.world_size
        return range(min(first * chunk, n), min(last * chunk, n))


def keep_freed_memory() -> bool:
    """On the CPU every step frees and re-allocates the same large tensors (logits and their gradients).
    glibc returns each freed block above its mmap threshold to the OS at once and page-faults a fresh one in
    on the next step; keeping freed memory in the heap instead cut a tiny-preset demo run (409,600 tokens,
    one thread, 2 cores busy) from 70 s to 57 s and its kernel time from ~18 s to under 1 s. The process
    keeps its peak memory rather than handing it back. No-op off glibc."""
    return mallopt(M_MMAP_THRESHOLD, MAX_INT) and mallopt(M_TRIM_THRESHOLD, MAX_INT)


def compute_precision(device: str, dtype: str) -> str:
    """What a run computes in: "bf16" (autocast on a CUDA GPU) or "fp32". `dtype="auto"` depends on the GPU,
    so a run's key holds this rather than the setting alone."""
    if device.startswith("cuda") and (dtype == "bf16" or dtype == "auto" and torch.cuda.is_bf16_supported()):
        return "bf16"
    return "fp32"


def autocast_context(device: str, dtype: str):
    if compute_precision(device, dtype) == "bf16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: torch.Tensor, device: str) -> torch.Tensor:
    """A host batch on `device`. On CUDA it is copied from pinned (page-locked) memory with non_blocking=True: the
    copy is queued on the stream and the CPU goes on launching the step's kernels instead of waiting for it."""
    if device.startswith("cuda") and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def synchronize(device: str) -> None:
    """Wait for the work queued on `device` (a GPU runs asynchronously: a clock read without this measures launches)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device == "mps":
        torch.mps.synchronize()


# ---- planning -----------------------------------------------------------------------------------


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio x the peak."""
    warmup = max(1, int(total_steps * cfg.warmup_fraction))
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = cfg.learning_rate * cfg.min_lr_ratio
    return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - floor)


def plan(model: GPT, cfg: TrainConfig, unique_tokens: int, world_size: int = 1, steps: int | None = None,
         step_tokens: int | None = None) -> dict[str, Any]:
    """What the run will cost, printed before it starts: parameters, memory per parameter, tokens,
    epochs over the data and FLOPs (6 N per token plus attention, as in the PaLM appendix). Pre-training
    steps follow from the token budget; a fine-tune gives its `steps` and mean `step_tokens`."""
    n_params = model.num_params()
    tokens = cfg.tokens or TOKENS_PER_PARAM * n_params
    block = model.config.block_size
    step_tokens = step_tokens or cfg.batch_size * block
    if steps:
        tokens = steps * step_tokens
    else:
        steps = max(1, math.ceil(tokens / step_tokens))
    micro = cfg.batch_size // (world_size * cfg.grad_accum)
    # fp32 weights 4 B + gradients 4 B + AdamW moments 8 B per parameter; activations of one micro-batch
    # ~ 34 x block x n_embd x layers bytes per sequence in fp32 (Korthikanti et al. 2022, no recompute).
    activations = 34 * block * model.config.n_embd * model.config.n_layer * max(micro, 1)
    return {
        "params": n_params, "bytes_per_param": 16, "state_bytes": 16 * n_params,
        "activation_bytes_per_process": activations,
        "tokens": steps * step_tokens, "requested_tokens": tokens, "steps": steps, "tokens_per_step": step_tokens,
        "micro_batch": micro, "unique_tokens": unique_tokens,
        "epochs": steps * step_tokens / max(unique_tokens, 1),
        "flops": model.flops_per_token() * steps * step_tokens,
        "tokens_per_param": steps * step_tokens / n_params,
    }


# ---- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: GPT, windows, device: str, ctx, batch_size: int = 16, ddp: Distributed | None = None) -> float:
    """Mean next-token loss (nats) over the real targets of a fixed set of windows: padded positions
    (target IGNORE_INDEX) add 0 to the sum, so they must not add to the count either. Under DDP (`ddp`) each
    process measures its own whole batches of the windows (`Distributed.shard`) and the (sum, count) pairs are
    summed over the processes: every process gets the whole set's loss for 1/world_size of the work."""
    ddp = ddp or Distributed()
    mine = ddp.shard(len(windows), batch_size)
    model.eval()
    batch_sums: list[torch.Tensor] = []  # on the device: read once at the end, not once per batch
    count = 0
    for start in range(mine.start, mine.stop, batch_size):
        x, y = windows.batch(np.arange(start, min(start + batch_size, mine.stop)))
        with ctx:
            losses = model.token_losses(to_device(x, device), to_device(y, device))
        batch_sums.append(losses.float().sum())
        count += int((y != IGNORE_INDEX).sum())
    model.train()
    total = 0.0
    for batch_sum in torch.stack(batch_sums).tolist() if batch_sums else []:
        total += batch_sum  # float64, in order, in a plain loop (Python 3.12's sum() compensates: other bits)
    total, count = ddp.sum_over_processes([total, float(count)], device)
    return total / max(count, 1)


def bits_per_byte(loss: float, token_file: TokenFile, source: str | None = None) -> float:
    """Tokenizer-independent: nats per token -> bits per UTF-8 byte of the text the tokens encode."""
    tokens, text_bytes = token_file.tokens_and_bytes(source)
    return loss / math.log(2) * tokens / max(text_bytes, 1)


# ---- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(path: Path, model: GPT, optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig,
                    extra: dict[str, Any], adapters_only: bool = False) -> None:
    """The run's state, atomically. `adapters_only`: the LoRA adapters alone (the frozen base is rebuilt from the
    base the run's `extra` names), a few hundred KB instead of the whole model."""
    state = {
        "model": lora_state_dict(model) if adapters_only else model.state_dict(),
        "optimizer": optimizer.state_dict(), "step": step, "adapters_only": adapters_only,
        "config": cfg.to_dict(), "model_config": asdict(model.config), "extra": extra,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def _run_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What besides the configuration decides a run's numbers, from the trainer's meta (as saved)."""
    identity = {k: meta[k] for k in ("tokenizer_hash", "fingerprint", "precision", "base_sha256", "finetune")
                if k in meta}
    if "device" in meta:
        identity["device_type"] = str(meta["device"]).split(":")[0]
    return identity


def check_resumable(path: Path, state: dict[str, Any], cfg: TrainConfig, meta: dict[str, Any]) -> None:
    """Raise CheckpointMismatch naming every field in which the checkpoint's run differs from this one:
    configuration (NOT_IN_KEY aside), training data, tokenizer, device type, precision. What an older
    checkpoint did not record is not compared."""
    saved = {**config_for_key(state["config"]), **_run_identity(state["extra"])}
    wanted = {**config_for_key(cfg), **_run_identity(meta)}
    differ = [f"{name}: checkpoint {saved[name]!r}, now {wanted.get(name)!r}"
              for name in saved if saved[name] != wanted.get(name)]
    if differ:
        raise CheckpointMismatch(f"{path}: holds a run of another configuration ({'; '.join(differ)}); resume "
                                 "with the checkpoint's settings or train into another folder")


def load_model(path: Path, device: str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """A trained model from a checkpoint (for generation and evaluation); a LoRA fine-tune's adapters are
    applied to its base and merged into plain weights."""
    state = load_checkpoint(path, device)
    if state.get("adapters_only"):
        from training.finetune import merged_model  # the base's loader lives with fine-tuning

        return merged_model(state, device), state
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(_strip_compile_prefix(state["model"]))
    return model.to(device).eval(), state


def _strip_compile_prefix(state: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("_orig_mod."): v for k, v in state.items()}


# ---- the loop -----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    tokens_trained: int
    epochs: float
    final_eval: dict[str, dict[str, float]]
    train_loss: float
    seconds: float  # wall-clock of this call's loop: evaluations, checkpoints and warm-up included
    tokens_per_second: float  # the tokens this call trained / seconds (metrics.jsonl has the steps' own rate)
    plan: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(cfg: TrainConfig, train_tokens: TokenFile, eval_sets: dict[str, TokenFile], out_dir: Path,
          stop_at_step: int | None = None, log=print) -> TrainResult:
    """Train `cfg.preset` on `train_tokens`; evaluate on the frozen `eval_sets`. Resumes from
    `out_dir/checkpoint.pt` when it exists. `stop_at_step` ends early (as a crash would) after
    saving a checkpoint, for resume tests."""
    device, ddp = _set_up_device(cfg.device)
    try:
        run = _set_up(cfg, device, ddp, train_tokens, eval_sets, Path(out_dir))
        evaluator = _Evaluator(run, eval_sets)
    except BaseException:  # refused on every process alike: none waits in a collective, the group can go
        ddp.close()
        raise
    return run_loop(run, evaluator, stop_at_step, log)


def run_loop(run: _Run, evaluator: Evaluator, stop_at_step: int | None = None, log=print) -> TrainResult:
    """The steps of a set-up run, from its checkpoint if it has one: pre-training (`train`) and fine-tuning
    (`training.finetune`) share it, with their own data (anything with `__len__` and `batch(indices)`) and
    their own evaluator. At the end it destroys the process group if `run.ddp` started it."""
    cfg = run.cfg
    start_step = _resume(run, log)
    train_model = _wrap(run)
    if run.ddp.main:
        log(format_plan(run.budget, run.model.config, run.device, run.ddp.world_size))
        (run.out_dir / "plan.json").write_text(json.dumps({"plan": run.budget, "config": cfg.to_dict(),
                                                           "meta": run.meta}, indent=2))

    sampler = EpochSampler(len(run.windows), cfg.seed).shard(run.ddp.rank, run.ddp.world_size)
    progress = _Progress(run, log)
    step_losses: list[torch.Tensor] = []  # the last step's micro-step losses, on the device until a line needs them
    final_eval: dict[str, dict[str, float]] = {}
    for step, indices in sampler.batches(cfg.batch_size, start_step=start_step, end_step=run.total_steps):
        lr = lr_at(step, run.total_steps, cfg)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        step_losses = _train_step(run, train_model, indices)
        progress.step_done()
        done = step + 1
        is_last = done == run.total_steps
        measure = done % cfg.eval_every == 0 or is_last
        save = run.ddp.main and (done % cfg.checkpoint_every == 0 or is_last or done == stop_at_step)
        if measure or save:
            with progress.paused():  # evaluating and checkpointing are not training time
                if measure:
                    if is_last:  # the run's final numbers: every set overall and per source
                        final_eval = evaluator.everything()
                        curve_point = {k: e for k, e in final_eval.items() if "/" not in k}
                    else:
                        curve_point = evaluator.overall()
                    progress.write(done, lr, _step_loss(run, step_losses), curve_point)
                if save:
                    save_checkpoint(run.checkpoint_path, run.model, run.optimizer, done, cfg, run.meta,
                                    adapters_only=run.adapters_only)
        if stop_at_step is not None and done >= stop_at_step:
            break
    train_loss = _step_loss(run, step_losses) if step_losses else float("nan")
    seconds = time.perf_counter() - progress.started
    if start_step >= run.total_steps:  # resumed from the last step's checkpoint: nothing to train, still measure
        final_eval = evaluator.everything()
    steps_run = min(run.total_steps, stop_at_step or run.total_steps)
    result = TrainResult(str(run.out_dir), steps_run, steps_run * run.tokens_per_step,
                         steps_run * run.tokens_per_step / max(run.budget["unique_tokens"], 1), final_eval, train_loss,
                         seconds, (steps_run - start_step) * run.tokens_per_step / max(seconds, 1e-9), run.budget,
                         run.meta)
    if run.ddp.main and steps_run == run.total_steps:
        (run.out_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
        plot_curves(progress.metrics_path, run.out_dir / "loss.png")
    if run.ddp.world_size > 1:
        dist.barrier()
    run.ddp.close()
    return result


class Batches(Protocol):
    """What the loop trains on: a count of examples and their (x, y) tensors by index."""

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]: ...


class Evaluator(Protocol):
    """Loss and bits per byte by evaluation key: `overall` for the curve, `everything` (per domain too) at the end."""

    def overall(self) -> dict[str, dict[str, float]]: ...

    def everything(self) -> dict[str, dict[str, float]]: ...


@dataclass
class _Run:
    """What one call of `train` sets up before its first step."""

    cfg: TrainConfig
    out_dir: Path
    device: str
    ddp: Distributed
    ctx: Any  # autocast, or nullcontext
    model: GPT  # the plain module: evaluation and checkpoints use it, whatever wraps it for the steps
    optimizer: torch.optim.Optimizer
    windows: Batches  # the training examples: token windows, or fine-tuning examples
    budget: dict[str, Any]  # plan()
    meta: dict[str, Any]  # what besides the configuration decides the run's numbers
    adapters_only: bool = False  # LoRA: checkpoints hold the adapters, not the frozen base

    @property
    def total_steps(self) -> int:
        return self.budget["steps"]

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimiser step (a fine-tune's varies with its examples: their mean)."""
        return self.budget["tokens_per_step"]

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT


def _set_up_device(requested: str) -> tuple[str, Distributed]:
    """The device and process group, with TF32 on a GPU and the allocator tuned on the CPU. Under torchrun each
    process takes the GPU of its LOCAL_RANK, made current before the process group starts (NCCL binds to it)."""
    device = pick_device(requested)
    if device.startswith("cuda") and launched_by_torchrun():
        if device != "cuda":
            raise ValueError(f"device {requested!r} under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}): every "
                             "process would use that one GPU; set device to 'cuda' or 'auto' and each process takes "
                             "the GPU of its LOCAL_RANK")
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    ddp = Distributed.from_env(device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device == "cpu":
        keep_freed_memory()
    return device, ddp


def _set_up(cfg: TrainConfig, device: str, ddp: Distributed, train_tokens: TokenFile, eval_sets: dict[str, TokenFile],
            out_dir: Path) -> _Run:
    """Model (seeded), training windows, plan and optimiser on a set-up device; refuses a budget that cannot run."""
    if ddp.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and in every run with this seed
    model_cfg = GPTConfig.from_preset(cfg.preset, vocab_size=int(train_tokens.meta["vocab_size"]), **cfg.model)
    model = GPT(model_cfg).to(device)
    windows = Windows(train_tokens.tokens(), model_cfg.block_size)
    if len(windows) == 0:
        raise ValueError(f"{train_tokens.path}: {train_tokens.n_tokens} tokens is less than one block of "
                         f"{model_cfg.block_size}")
    if cfg.batch_size % (ddp.world_size * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by processes x grad_accum "
                         f"({ddp.world_size} x {cfg.grad_accum})")
    budget = plan(model, cfg, train_tokens.n_tokens, ddp.world_size)
    if budget["epochs"] > MAX_EPOCHS_BEFORE_WARNING and ddp.main:
        warnings.warn(f"the token budget repeats the data {budget['epochs']:.1f} times "
                      f"(> {MAX_EPOCHS_BEFORE_WARNING:g} epochs): expect over-fitting",
                      stacklevel=3)  # points at the caller of train()
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (ADAM_BETA1, cfg.beta2),
                                          device.split(":")[0])
    meta = {"tokenizer_hash": train_tokens.meta["tokenizer_hash"], "version": train_tokens.meta.get("version"),
            "fingerprint": train_tokens.meta.get("fingerprint"), "device": device, "world_size": ddp.world_size,
            "precision": compute_precision(device, cfg.dtype), "model": asdict(model_cfg),
            "eval_sets": {n: tf.meta.get("fingerprint") for n, tf in eval_sets.items()}}
    return _Run(cfg, out_dir, device, ddp, autocast_context(device, cfg.dtype), model, optimizer, windows, budget,
                meta)


def _resume(run: _Run, log) -> int:
    """The step to start from: 0, or the step of the checkpoint in the run's folder, after restoring its
    model, optimiser and RNG states (refused when it belongs to a run of another configuration)."""
    path = run.checkpoint_path
    if not path.exists():
        return 0
    state = load_checkpoint(path, run.device)
    check_resumable(path, state, run.cfg, run.meta)
    if run.adapters_only:
        load_lora_state_dict(run.model, state["model"])
    else:
        run.model.load_state_dict(_strip_compile_prefix(state["model"]))
    run.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    step = int(state["step"])
    if run.ddp.main:
        log(f"resuming from step {step} ({path})")
    return step


def _wrap(run: _Run) -> torch.nn.Module:
    """The module the training steps call: the model, compiled and/or wrapped for DDP as configured."""
    train_model: torch.nn.Module = run.model
    if run.cfg.compile:
        train_model = torch.compile(run.model)
    if run.ddp.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[run.ddp.local_rank] if run.device.startswith("cuda") else None)
    return train_model


def _train_step(run: _Run, train_model: torch.nn.Module, indices: np.ndarray) -> list[torch.Tensor]:
    """One optimiser step on this process's share of a global batch, in grad_accum micro-steps (gradients
    are synchronised across processes on the last one); the micro-steps' losses, left on the device: reading
    one waits for the GPU, so `_step_loss` reads them only when a line of metrics needs them."""
    cfg = run.cfg
    losses = []
    for k, chunk in enumerate(np.array_split(indices, cfg.grad_accum)):
        x, y = run.windows.batch(chunk)
        x, y = to_device(x, run.device), to_device(y, run.device)
        sync = k == cfg.grad_accum - 1 or run.ddp.world_size == 1
        with (nullcontext() if sync else train_model.no_sync()), run.ctx:
            _, loss = train_model(x, y)
            (loss / cfg.grad_accum).backward()
        losses.append(loss.detach())
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return losses


def _step_loss(run: _Run, losses: list[torch.Tensor]) -> float:
    """A step's mean loss over its micro-steps and all processes (a collective: every process calls it at the same
    step). The micro-step losses are added in float64 on the host, one by one in order, as when each was read at
    once: the same number to the last bit."""
    loss_sum = 0.0
    for value in torch.stack(losses).tolist():
        loss_sum += value / run.cfg.grad_accum
    return run.ddp.mean(loss_sum, run.device)


class _Evaluator:
    """Loss and bits per byte on the frozen evaluation sets, on fixed windows chosen once per run."""

    def __init__(self, run: _Run, eval_sets: dict[str, TokenFile]):
        self.run = run
        self.eval_sets = eval_sets
        block, n_tokens = run.model.config.block_size, run.cfg.eval_tokens
        self.windows = {name: fixed_eval_windows(tf, n_tokens, block, seed=0) for name, tf in eval_sets.items()}
        self.per_source = {name: per_source_eval_windows(tf, n_tokens, block, seed=0)
                           for name, tf in eval_sets.items()}
        for name, tf in eval_sets.items():
            if tf.meta["tokenizer_hash"] != run.meta["tokenizer_hash"]:
                raise ValueError(f"evaluation set {name!r} was tokenised with another tokenizer")

    def _measure(self, windows, name: str, source: str | None = None) -> dict[str, float]:
        run = self.run
        loss = evaluate(run.model, windows, run.device, run.ctx, ddp=run.ddp)
        return {"loss": loss, "bpb": bits_per_byte(loss, self.eval_sets[name], source)}

    def overall(self) -> dict[str, dict[str, float]]:
        """Every evaluation set as a whole (the curve's points)."""
        return {name: self._measure(windows, name) for name, windows in self.windows.items()}

    def everything(self) -> dict[str, dict[str, float]]:
        """Every evaluation set as a whole, and per source as `set/source` (the run's final numbers)."""
        out: dict[str, dict[str, float]] = {}
        for name, windows in self.windows.items():
            out[name] = self._measure(windows, name)
            for source, source_windows in self.per_source[name].items():
                out[f"{name}/{source}"] = self._measure(source_windows, name, source)
        return out


class _Progress:
    """Training throughput between lines, and the lines of metrics.jsonl (and the log). Only training steps are
    timed: not evaluations or checkpoints (`paused`), nor the first step after a start or resume (compilation,
    allocator and cache warm-up), whose seconds the next line reports apart as `warmup_seconds`. A line with no
    timed step since the previous one has no tokens_per_second."""

    def __init__(self, run: _Run, log):
        self.run, self.log = run, log
        self.metrics_path = run.out_dir / "metrics.jsonl"
        # MFU against the bf16 peak only when the steps compute in bf16.
        bf16_gpu = run.device.startswith("cuda") and compute_precision(run.device, run.cfg.dtype) == "bf16"
        self.peak = peak_flops(torch.cuda.get_device_name(run.device)) if bf16_gpu else None
        self.started = time.perf_counter()
        self.warming_up = True  # until the first step is done
        self.warmup_seconds: float | None = None  # the first step's, until a line reports it
        self.clock = self.started  # when the current stretch of timed steps began
        self.timed_steps, self.timed_seconds = 0, 0.0  # since the previous line

    def _now(self) -> float:
        synchronize(self.run.device)  # the queued steps belong to the stretch being measured
        return time.perf_counter()

    def step_done(self) -> None:
        """After every training step: the first ends the warm-up and starts the clock; later ones are timed."""
        if self.warming_up:
            self.clock = self._now()
            self.warmup_seconds, self.warming_up = self.clock - self.started, False
        else:
            self.timed_steps += 1

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the clock for what is not a training step."""
        self.timed_seconds += self._now() - self.clock
        yield
        self.clock = self._now()

    def write(self, done: int, lr: float, train_loss: float, evals: dict[str, dict[str, float]]) -> None:
        """A line for step `done` with the throughput of the timed steps since the previous line (called paused)."""
        run = self.run
        record: dict[str, Any] = {"step": done, "tokens": done * run.tokens_per_step, "lr": lr,
                                  "train_loss": train_loss}
        if self.timed_steps:
            speed = self.timed_steps * run.tokens_per_step / max(self.timed_seconds, 1e-9)
            record["tokens_per_second"] = speed
            if self.peak:
                record["mfu"] = run.model.estimate_mfu(speed / run.ddp.world_size, self.peak)
        if self.warmup_seconds is not None:
            record["warmup_seconds"] = self.warmup_seconds
        self.timed_steps, self.timed_seconds, self.warmup_seconds = 0, 0.0, None
        record.update({f"eval/{name}/{metric}": v for name, e in evals.items() for metric, v in e.items()})
        if run.ddp.main:
            with open(self.metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))


def format_plan(budget: dict[str, Any], model_cfg: GPTConfig, device: str, world_size: int) -> str:
    gib = 1024 ** 3
    return (f"plan: {budget['params'] / 1e6:.2f} M parameters ({model_cfg.n_layer} layers x {model_cfg.n_embd}, "
            f"block {model_cfg.block_size}, vocab {model_cfg.vocab_size}); {budget['bytes_per_param']} B/param "
            f"(weights 4 + grads 4 + AdamW 8) = {budget['state_bytes'] / gib:.3f} GiB + activations "
            f"{budget['activation_bytes_per_process'] / gib:.3f} GiB per process; {budget['tokens']:,} tokens "
            f"({budget['tokens_per_param']:.1f}/param, {budget['epochs']:.2f} epochs of {budget['unique_tokens']:,}) "
            f"in {budget['steps']:,} steps; {budget['flops']:.3g} FLOPs; {world_size} x {device}")


def plot_curves(metrics_path: Path, png: Path) -> None:
    """Training and evaluation loss against tokens, as a PNG."""
    # matplotlib (~0.5 s to import) only when a run finishes; a Figure without pyplot leaves no global state.
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    tokens = [r["tokens"] for r in rows]
    ax.plot(tokens, [r["train_loss"] for r in rows], label="train")
    for key in sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("/loss")}):
        ax.plot(tokens, [r.get(key, float("nan")) for r in rows], label=key[5:-5])
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
