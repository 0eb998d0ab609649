"""The training loop: the instrument that measures data.

Same preset, tokenizer, token budget and seed on two versions means that a loss difference is a
data difference: the data order is a pure function of (seed, step), the initialisation of the seed,
and a run stopped at step N and resumed reaches exactly the state of an uninterrupted run.

Fast paths on a GPU: bf16 autocast, TF32 matmuls, fused AdamW, optional torch.compile, DDP through
`torchrun` (NCCL; gloo on the CPU). Everything also runs on the CPU, where the tests run.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from curation.glibc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MAX_INT, mallopt
from training.data import EpochSampler, TokenFile, Windows, fixed_eval_windows, per_source_eval_windows
from training.model import GPT, IGNORE_INDEX, GPTConfig

# Chinchilla (Hoffmann et al. 2022): ~20 training tokens per parameter is compute-optimal.
TOKENS_PER_PARAM = 20
# More passes than this over the unique tokens start to over-fit (the course's 1-2 epochs).
MAX_EPOCHS_BEFORE_WARNING = 2.0
CHECKPOINT = "checkpoint.pt"
# Peak dense bf16 FLOP/s for MFU on common GPUs (vendor datasheets); CPU MFU is not meaningful.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


@dataclass
class TrainConfig:
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # GPTConfig overrides (block_size, rope, bias...)
    tokens: int | None = None  # token budget; default TOKENS_PER_PARAM x parameters
    batch_size: int = 16  # sequences per optimiser step, over all processes and micro-steps
    grad_accum: int = 1  # micro-steps per optimiser step (per process)
    learning_rate: float = 2e-3  # our choice for the ~1 M-parameter preset; nanoGPT's GPT-2 uses 6e-4
    min_lr_ratio: float = 0.1  # cosine decays to 10 % of the peak (Chinchilla)
    warmup_fraction: float = 0.02  # linear warm-up over the first 2 % of steps (our choice)
    weight_decay: float = 0.1  # GPT-3
    beta2: float = 0.95  # GPT-3
    grad_clip: float = 1.0  # GPT-3
    seed: int = 0
    eval_every: int = 50  # optimiser steps
    eval_tokens: int = 32_768  # fixed evaluation tokens per evaluation set
    checkpoint_every: int = 200
    device: str = "auto"  # auto: cuda, else mps, else cpu
    dtype: str = "auto"  # auto: bf16 autocast on a GPU that has it, else fp32
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# TrainConfig fields that change how a run is executed, not what it computes: left out of a run's key
# (training/runs.py) and free to change when a run resumes. `compile` is not one of them: compiled kernels
# fuse and reorder floating-point operations, so a compiled run's numbers differ from an eager one's.
NOT_IN_KEY = ("device", "checkpoint_every")


def config_for_key(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """The configuration fields that decide a run's numbers (a TrainConfig, or one as a checkpoint stores it)."""
    values = config.to_dict() if isinstance(config, TrainConfig) else config
    return {k: v for k, v in values.items() if k not in NOT_IN_KEY}


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


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> Distributed:
        """Set up DDP when launched by torchrun (RANK / WORLD_SIZE in the environment)."""
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def mean(self, value: float, device: str) -> float:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size


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


# ---- planning -----------------------------------------------------------------------------------


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio x the peak."""
    warmup = max(1, int(total_steps * cfg.warmup_fraction))
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = cfg.learning_rate * cfg.min_lr_ratio
    return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - floor)


def plan(model: GPT, cfg: TrainConfig, unique_tokens: int, world_size: int = 1) -> dict[str, Any]:
    """What the run will cost, printed before it starts: parameters, memory per parameter, tokens,
    epochs over the data and FLOPs (6 N per token plus attention, as in the PaLM appendix)."""
    n_params = model.num_params()
    tokens = cfg.tokens or TOKENS_PER_PARAM * n_params
    block = model.config.block_size
    step_tokens = cfg.batch_size * block
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
def evaluate(model: GPT, windows, device: str, ctx, batch_size: int = 16) -> float:
    """Mean next-token loss (nats) over the real targets of a fixed set of windows: padded positions
    (target IGNORE_INDEX) add 0 to the sum, so they must not add to the count either."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        x, y = windows.batch(np.arange(start, min(start + batch_size, len(windows))))
        with ctx:
            losses = model.token_losses(x.to(device), y.to(device))
        total += float(losses.float().sum())
        count += int((y != IGNORE_INDEX).sum())
    model.train()
    return total / max(count, 1)


def bits_per_byte(loss: float, token_file: TokenFile, source: str | None = None) -> float:
    """Tokenizer-independent: nats per token -> bits per UTF-8 byte of the text the tokens encode."""
    tokens, text_bytes = token_file.tokens_and_bytes(source)
    return loss / math.log(2) * tokens / max(text_bytes, 1)


# ---- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(path: Path, model: GPT, optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig,
                    extra: dict[str, Any]) -> None:
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
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
    identity = {k: meta[k] for k in ("tokenizer_hash", "fingerprint", "precision") if k in meta}
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
    """A trained model from a checkpoint (for generation and evaluation)."""
    state = load_checkpoint(path, device)
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
    seconds: float
    tokens_per_second: float
    plan: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(cfg: TrainConfig, train_tokens: TokenFile, eval_sets: dict[str, TokenFile], out_dir: Path,
          stop_at_step: int | None = None, log=print) -> TrainResult:
    """Train `cfg.preset` on `train_tokens`; evaluate on the frozen `eval_sets`. Resumes from
    `out_dir/checkpoint.pt` when it exists. `stop_at_step` ends early (as a crash would) after
    saving a checkpoint, for resume tests."""
    out_dir = Path(out_dir)
    device = pick_device(cfg.device)
    ddp = Distributed.from_env(device)
    if device == "cuda" and ddp.world_size > 1:
        device = f"cuda:{ddp.local_rank}"
        torch.cuda.set_device(device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = autocast_context(device, cfg.dtype)
    if device == "cpu":
        keep_freed_memory()
    if ddp.main:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and in every run with this seed
    tokenizer_hash = train_tokens.meta["tokenizer_hash"]
    vocab = int(train_tokens.meta["vocab_size"])
    model_cfg = GPTConfig.from_preset(cfg.preset, vocab_size=vocab, **cfg.model)
    model = GPT(model_cfg).to(device)
    windows = Windows(train_tokens.tokens(), model_cfg.block_size)
    if len(windows) == 0:
        raise ValueError(f"{train_tokens.path}: {train_tokens.n_tokens} tokens is less than one block of "
                         f"{model_cfg.block_size}")
    if cfg.batch_size % (ddp.world_size * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by processes x grad_accum "
                         f"({ddp.world_size} x {cfg.grad_accum})")
    budget = plan(model, cfg, train_tokens.n_tokens, ddp.world_size)
    total_steps = budget["steps"]
    if budget["epochs"] > MAX_EPOCHS_BEFORE_WARNING and ddp.main:
        warnings.warn(f"the token budget repeats the data {budget['epochs']:.1f} times "
                      f"(> {MAX_EPOCHS_BEFORE_WARNING:g} epochs): expect over-fitting", stacklevel=2)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (0.9, cfg.beta2),
                                          device.split(":")[0])
    meta = {"tokenizer_hash": tokenizer_hash, "version": train_tokens.meta.get("version"),
            "fingerprint": train_tokens.meta.get("fingerprint"), "device": device, "world_size": ddp.world_size,
            "precision": compute_precision(device, cfg.dtype), "model": asdict(model_cfg),
            "eval_sets": {n: tf.meta.get("fingerprint") for n, tf in eval_sets.items()}}
    start_step = 0
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, device)
        check_resumable(checkpoint_path, state, cfg, meta)
        model.load_state_dict(_strip_compile_prefix(state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        start_step = int(state["step"])
        if ddp.main:
            log(f"resuming from step {start_step} ({checkpoint_path})")
    train_model: torch.nn.Module = model
    if cfg.compile:
        train_model = torch.compile(model)
    if ddp.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[ddp.local_rank] if device.startswith("cuda") else None)

    evals = {name: fixed_eval_windows(tf, cfg.eval_tokens, model_cfg.block_size, seed=0)
             for name, tf in eval_sets.items()}
    per_source = {name: per_source_eval_windows(tf, cfg.eval_tokens, model_cfg.block_size, seed=0)
                  for name, tf in eval_sets.items()}
    for name, tf in eval_sets.items():
        if tf.meta["tokenizer_hash"] != tokenizer_hash:
            raise ValueError(f"evaluation set {name!r} was tokenised with another tokenizer")
    peak = next((v for k, v in PEAK_FLOPS.items() if device.startswith("cuda")
                 and k in torch.cuda.get_device_name()), None)
    if ddp.main:
        log(format_plan(budget, model_cfg, device, ddp.world_size))
        (out_dir / "plan.json").write_text(json.dumps({"plan": budget, "config": cfg.to_dict(), "meta": meta},
                                                      indent=2))
    metrics_path = out_dir / "metrics.jsonl"

    def evaluate_all() -> dict[str, dict[str, float]]:
        """Loss and bits per byte on every evaluation set, overall and per source."""
        out: dict[str, dict[str, float]] = {}
        for name, ew in evals.items():
            loss_value = ddp.mean(evaluate(model, ew, device, ctx), device)
            out[name] = {"loss": loss_value, "bpb": bits_per_byte(loss_value, eval_sets[name])}
            for source, sw in per_source[name].items():
                sl = ddp.mean(evaluate(model, sw, device, ctx), device)
                out[f"{name}/{source}"] = {"loss": sl, "bpb": bits_per_byte(sl, eval_sets[name], source)}
        return out

    sampler = EpochSampler(len(windows), cfg.seed)
    started = time.perf_counter()
    last_time, last_step = started, start_step
    train_loss = float("nan")
    final_eval: dict[str, dict[str, float]] = {}
    for step, indices in sampler.batches(cfg.batch_size, start_step=start_step):
        if step >= total_steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg)
        mine = np.asarray(indices).reshape(ddp.world_size, -1)[ddp.rank]  # this process's slice of the batch
        loss_sum = 0.0
        for k, chunk in enumerate(np.array_split(mine, cfg.grad_accum)):
            x, y = windows.batch(chunk)
            x, y = x.to(device), y.to(device)
            sync = k == cfg.grad_accum - 1 or ddp.world_size == 1
            with (nullcontext() if sync else train_model.no_sync()), ctx:
                _, loss = train_model(x, y)
                (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach()) / cfg.grad_accum
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_loss = ddp.mean(loss_sum, device)
        done = step + 1
        is_last = done == total_steps
        if done % cfg.eval_every == 0 or is_last:
            now = time.perf_counter()
            tokens_per_second = (done - last_step) * cfg.batch_size * model_cfg.block_size / max(now - last_time, 1e-9)
            last_time, last_step = now, done
            record: dict[str, Any] = {"step": done, "tokens": done * cfg.batch_size * model_cfg.block_size,
                                      "lr": lr_at(step, total_steps, cfg), "train_loss": train_loss,
                                      "tokens_per_second": tokens_per_second}
            if peak:
                record["mfu"] = model.estimate_mfu(tokens_per_second / ddp.world_size, peak)
            if is_last:
                final_eval = evaluate_all()
                record.update({f"eval/{k}/{m}": v for k, e in final_eval.items() if "/" not in k for m, v in e.items()})
            else:
                for name, ew in evals.items():
                    loss_value = ddp.mean(evaluate(model, ew, device, ctx), device)
                    record[f"eval/{name}/loss"] = loss_value
                    record[f"eval/{name}/bpb"] = bits_per_byte(loss_value, eval_sets[name])
            if ddp.main:
                with open(metrics_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if ddp.main and (done % cfg.checkpoint_every == 0 or is_last or done == stop_at_step):
            save_checkpoint(checkpoint_path, model, optimizer, done, cfg, meta)
        if stop_at_step is not None and done >= stop_at_step:
            break
    seconds = time.perf_counter() - started
    steps_run = min(total_steps, stop_at_step or total_steps)
    if start_step >= total_steps:  # resumed from the last step's checkpoint: nothing to train, still measure
        final_eval = evaluate_all()
    tokens_trained = steps_run * cfg.batch_size * model_cfg.block_size
    result = TrainResult(str(out_dir), steps_run, tokens_trained, tokens_trained / max(train_tokens.n_tokens, 1),
                         final_eval, train_loss, seconds,
                         (steps_run - start_step) * cfg.batch_size * model_cfg.block_size / max(seconds, 1e-9),
                         budget, meta)
    if ddp.main and steps_run == total_steps:
        (out_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
        plot_curves(metrics_path, out_dir / "loss.png")
    if ddp.world_size > 1:
        dist.barrier()
    return result


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
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
    plt.close(fig)
