"""Training throughput (tokens/s) of our GPT next to nanoGPT's reference model, same config, one run.

    .venv/bin/python bench/train_speed.py --nanogpt ../nanoGPT/model.py            # tiny preset, batch 16
    .venv/bin/python bench/train_speed.py --nanogpt ../nanoGPT/model.py --preset small --steps 4
    .venv/bin/python bench/train_speed.py --nanogpt ../nanoGPT/model.py --json bench/out/train_speed.json --check

The reference is Andrej Karpathy's nanoGPT (https://github.com/karpathy/nanoGPT, MIT). It is not on
PyPI and none of its code lives in this repository: clone it anywhere and pass the path of its
`model.py` with `--nanogpt`. The file is imported at run time (importlib, from that path), and its
`GPTConfig` / `GPT` are built with our preset's n_layer, n_head, n_embd, block_size, vocab_size and
bias, dropout 0. Without `--nanogpt` only our model is timed and the report says so.

Both models run the same loop on the same batches:

    random token batches (B, block_size + 1) from a seeded generator, inputs = [:-1], targets = [1:]
    logits, loss = model(x, y); loss.backward(); optimizer.step(); optimizer.zero_grad(set_to_none=True)

with AdamW from each model's own helper and the same hyper-parameters: ours
`configure_optimizer(weight_decay, learning_rate, betas, device_type)`, nanoGPT's
`configure_optimizers(weight_decay, learning_rate, betas, device_type)` (both: decay for dim >= 2,
fused AdamW on CUDA). Initial weights come from the same seed (the two models draw them in a
different order, so they are not equal; the work per step is).

Measurement: `--warmup` untimed steps per model first, then `--rounds` rounds; in each round every
model runs one untimed step (its caches were just evicted by the other model) and `--steps` timed
steps; the order alternates per round (ours, ref / ref, ours / ...) so that neither model always
follows the other. tokens/s = batch * block_size * steps / seconds; the report gives every round,
the median per model, the ratio ours / reference of the medians and the median of the per-round
ratios (paired, less sensitive to slow drifts in machine load). Torch's thread count is pinned to
`torch.get_num_threads()` (or `--threads`) and printed with the load average before and after, since
a shared 2-core machine is noisy.

On CUDA (`--device auto` picks it when available) the preset comparison runs with bf16 autocast
(`--dtype`), TF32 matmuls, and our `gpt2` preset (124 M parameters, block 1024) is timed too, next to
nanoGPT at the same config when `--nanogpt` is given, with tokens/s and MFU: training FLOPs per token
from our `GPT.flops_per_token` (the same for both models at one config) over the peak bf16 FLOP/s of
the device from `training.trainer.peak_flops` (the GPU's whole name against `PEAK_FLOPS`' patterns). The header
prints the GPU's name and the peak used; MFU is left out for a GPU of unknown peak and without bf16 autocast
(the bf16 peak does not apply to fp32/TF32 steps). AdamW is fused on CUDA (`configure_optimizer`).
`--compile` wraps every timed model in `torch.compile` (on the CPU that needs a C++ compiler).

    .venv/bin/python bench/train_speed.py --device cuda --json bench/out/train_speed_gpu.json   # + --compile

Target (`--check` exits 1 when missed, only when the reference ran): ours >= `--min-ratio` (1.0) x
the reference's median tokens/s at the preset.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from training.config import ADAM_BETA1, TrainConfig
from training.model import GPT, GPTConfig
from training.trainer import autocast_context, compute_precision, peak_flops, synchronize

# The trainer's optimiser settings (they do not change the work per step).
WEIGHT_DECAY = TrainConfig.weight_decay
LEARNING_RATE = TrainConfig.learning_rate
BETAS = (ADAM_BETA1, TrainConfig.beta2)
DISTINCT_BATCHES = 8  # batches cycled through; the same sequence for every model
CPU_PRESETS = ("tiny", "small")


# ---- the models ------------------------------------------------------------------------------------------


def load_nanogpt(path: Path) -> ModuleType:
    """Import nanoGPT's model.py from `path` (never from this repository)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise SystemExit(f"--nanogpt {path}: no such file (git clone https://github.com/karpathy/nanoGPT)")
    spec = importlib.util.spec_from_file_location("nanogpt_reference_model", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--nanogpt {path}: not importable as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    for name in ("GPT", "GPTConfig"):
        if not hasattr(module, name):
            raise SystemExit(f"--nanogpt {path}: defines no {name}; is this nanoGPT's model.py?")
    return module


class Contender:
    """One model under test: the module, its optimizer, what runs the steps, and its measurements."""

    def __init__(self, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 params: dict[str, int], compile_model: bool) -> None:
        self.name = name
        self.model = model
        self.optimizer = optimizer
        self.params = params
        self.runner = torch.compile(model) if compile_model else model
        self.step = 0  # batches consumed: both models see the same sequence
        self.tokens_per_second: list[float] = []
        self.last_loss = float("nan")


def build_ours(config: GPTConfig, device: str, seed: int, compile_model: bool) -> Contender:
    torch.manual_seed(seed)
    model = GPT(config).to(device)
    model.train()
    optimizer = model.configure_optimizer(WEIGHT_DECAY, LEARNING_RATE, BETAS, device.split(":")[0])
    params = {"total": model.num_params(), "position_table": model.pos_emb.weight.numel() if model.pos_emb else 0,
              "reported": model.num_params()}
    return Contender("ours", model, optimizer, params, compile_model)


def build_reference(nanogpt: ModuleType, config: GPTConfig, device: str, seed: int,
                    compile_model: bool) -> Contender:
    ref_config = nanogpt.GPTConfig(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                   block_size=config.block_size, vocab_size=config.vocab_size,
                                   bias=config.bias, dropout=0.0)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter and group counts
        model = nanogpt.GPT(ref_config).to(device)
        model.train()
        optimizer = model.configure_optimizers(WEIGHT_DECAY, LEARNING_RATE, BETAS, device.split(":")[0])
    params = {"total": sum(p.numel() for p in model.parameters()),
              "position_table": model.transformer.wpe.weight.numel(),
              "reported": model.get_num_params()}  # nanoGPT's default leaves out the position table
    return Contender("nanoGPT", model, optimizer, params, compile_model)


# ---- the loop --------------------------------------------------------------------------------------------


def make_batches(vocab_size: int, block_size: int, batch_size: int, device: str,
                 seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(DISTINCT_BATCHES):
        seq = torch.randint(vocab_size, (batch_size, block_size + 1), generator=generator)
        batches.append((seq[:, :-1].contiguous().to(device), seq[:, 1:].contiguous().to(device)))
    return batches


def run_steps(c: Contender, batches, n: int, ctx_factory) -> torch.Tensor | None:
    """The identical training step for every model: forward with targets, backward, AdamW, zero_grad."""
    loss = None
    for _ in range(n):
        x, y = batches[c.step % len(batches)]
        c.step += 1
        with ctx_factory():
            _, loss = c.runner(x, y)
        loss.backward()
        c.optimizer.step()
        c.optimizer.zero_grad(set_to_none=True)
    return loss


def measure(contenders: list[Contender], batches, tokens_per_step: int, device: str, ctx_factory,
            warmup: int, rounds: int, steps: int, log=print) -> None:
    """Warm each model up, then `rounds` interleaved rounds of `steps` timed steps each."""
    for c in contenders:
        started = time.perf_counter()
        loss = run_steps(c, batches, warmup, ctx_factory)
        synchronize(device)
        log(f"  warm-up {c.name:<8} {warmup} steps in {time.perf_counter() - started:.1f} s"
            + (f", loss {float(loss.detach()):.3f}" if loss is not None else ""))
    for r in range(rounds):
        order = contenders if r % 2 == 0 else contenders[::-1]
        cells = []
        for c in order:
            run_steps(c, batches, 1, ctx_factory)  # untimed: re-warm after the other model ran
            synchronize(device)
            started = time.perf_counter()
            loss = run_steps(c, batches, steps, ctx_factory)
            synchronize(device)
            seconds = time.perf_counter() - started
            c.tokens_per_second.append(tokens_per_step * steps / seconds)
            c.last_loss = float(loss.detach())
            cells.append(f"{c.name} {c.tokens_per_second[-1]:,.0f}")
        log(f"  round {r + 1}/{rounds}: " + ", ".join(cells) + " tokens/s")


def summarise(ours: Contender, ref: Contender | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in (ours, ref):
        if c is None:
            continue
        out[c.name] = {"tokens_per_second": c.tokens_per_second, "median": statistics.median(c.tokens_per_second),
                       "min": min(c.tokens_per_second), "max": max(c.tokens_per_second),
                       "params": c.params, "last_loss": c.last_loss}
    if ref is not None:
        paired = [a / b for a, b in zip(ours.tokens_per_second, ref.tokens_per_second)]
        out["ratio"] = out["ours"]["median"] / out["nanoGPT"]["median"]
        out["paired_ratios"] = paired
        out["paired_ratio_median"] = statistics.median(paired)
    return out


def device_peak(device: str, dtype: str) -> tuple[str | None, float | None, str]:
    """The GPU's name, the peak FLOP/s MFU is measured against (None: no MFU) and a line saying which and why."""
    if not device.startswith("cuda"):
        return None, None, "MFU: not measured on the CPU"
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name)
    if peak is None:
        return name, None, f"MFU: not measured: no known peak FLOP/s for {name!r} (training.trainer.PEAK_FLOPS)"
    if compute_precision(device, dtype) != "bf16":
        return name, None, (f"MFU: not measured: the steps run in fp32/TF32, and {peak / 1e12:,.0f} TFLOP/s is "
                            f"{name}'s bf16 peak")
    return name, peak, f"MFU against {name}'s dense bf16 peak {peak / 1e12:,.0f} TFLOP/s (training.trainer.PEAK_FLOPS)"


# ---- report ----------------------------------------------------------------------------------------------


def describe(config: GPTConfig) -> str:
    return (f"n_layer {config.n_layer}, n_head {config.n_head}, n_embd {config.n_embd}, block {config.block_size}, "
            f"vocab {config.vocab_size}, bias {config.bias}, dropout {config.dropout:g}")


def print_table(result: dict[str, Any], model: GPT, peak: float | None) -> None:
    ours, ref = result["ours"], result.get("nanoGPT")
    rounds = len(ours["tokens_per_second"])
    header = f"  {'round':<8}{'ours tok/s':>14}"
    if ref:
        header += f"{'nanoGPT tok/s':>16}{'ours/ref':>10}"
    print(header)
    for i in range(rounds):
        line = f"  {i + 1:<8}{ours['tokens_per_second'][i]:>14,.0f}"
        if ref:
            line += f"{ref['tokens_per_second'][i]:>16,.0f}{result['paired_ratios'][i]:>9.3f}x"
        print(line)
    line = f"  {'median':<8}{ours['median']:>14,.0f}"
    if ref:
        line += f"{ref['median']:>16,.0f}{result['ratio']:>9.3f}x"
    print(line)
    for stat in ("min", "max"):
        line = f"  {stat:<8}{ours[stat]:>14,.0f}"
        if ref:
            line += f"{ref[stat]:>16,.0f}"
        print(line)
    if ref:
        print(f"  ratio of medians {result['ratio']:.3f}x; median of per-round ratios "
              f"{result['paired_ratio_median']:.3f}x")
    if peak:
        mfu = {name: model.estimate_mfu(result[name]["median"], peak) for name in ("ours", "nanoGPT") if name in result}
        result["mfu"] = mfu
        print("  MFU (median)     " + ", ".join(f"{k} {v * 100:.1f} %" for k, v in mfu.items())
              + f"  ({model.flops_per_token() / 1e6:,.1f} MFLOP/token, peak {peak / 1e12:,.0f} TFLOP/s)")
    p = ours["params"]
    print(f"  parameters       ours {p['total']:,} (num_params(): every tensor, tied embedding once, "
          f"position table {p['position_table']:,} included)")
    if ref:
        q = ref["params"]
        same = "same" if q["total"] == p["total"] else "DIFFERENT"
        print(f"                   nanoGPT {q['reported']:,} (get_num_params(): position table excluded); "
              f"{q['total']:,} with it ({same} as ours)")
        print(f"  loss after run   ours {ours['last_loss']:.3f}, nanoGPT {ref['last_loss']:.3f} "
              f"(different initial draws, same batches)")


def compare(label: str, config: GPTConfig, batch_size: int, device: str, dtype: str, peak: float | None,
            nanogpt: ModuleType | None, args: argparse.Namespace) -> dict[str, Any]:
    tokens_per_step = batch_size * config.block_size
    print(f"\n== {label}: {describe(config)}; batch {batch_size} -> {tokens_per_step:,} tokens/step")
    ours = build_ours(config, device, args.seed, args.compile)
    ref = build_reference(nanogpt, config, device, args.seed, args.compile) if nanogpt else None
    contenders = [ours] + ([ref] if ref else [])
    batches = make_batches(config.vocab_size, config.block_size, batch_size, device, args.seed)
    ctx_factory = lambda: autocast_context(device, dtype)  # noqa: E731 (a fresh context per step)
    measure(contenders, batches, tokens_per_step, device, ctx_factory, args.warmup, args.rounds, args.steps)
    result = summarise(ours, ref)
    result.update(config=asdict(config), batch_size=batch_size, tokens_per_step=tokens_per_step)
    print()
    print_table(result, ours.model, peak)
    if ref is None:
        print("  nanoGPT: NOT MEASURED (no --nanogpt PATH given); only our model was timed")
    for c in contenders:  # free the memory before the next comparison
        c.model = c.runner = c.optimizer = None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, help="path to nanoGPT's model.py (git clone "
                        "https://github.com/karpathy/nanoGPT); without it only ours is measured")
    parser.add_argument("--preset", choices=CPU_PRESETS, default="tiny", help="config of the side-by-side run")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step at --preset")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model before the rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default torch.get_num_threads())")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast on CUDA with bf16, else fp32 (training.trainer.autocast_context)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every timed model")
    parser.add_argument("--gpt2-batch-size", type=int, default=16, help="sequences per step for the CUDA gpt2 run")
    parser.add_argument("--gpt2-steps", type=int, default=20, help="timed steps per round for the CUDA gpt2 run")
    parser.add_argument("--skip-gpt2", action="store_true", help="on CUDA, skip the gpt2 preset run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-ratio", type=float, default=1.0, help="--check target: ours / nanoGPT at --preset")
    parser.add_argument("--json", type=Path, help="also save the full report here")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    if min(args.batch_size, args.steps, args.rounds, args.gpt2_batch_size, args.gpt2_steps) < 1 or args.warmup < 0:
        parser.error("--batch-size, --steps, --rounds, --gpt2-* must be >= 1 and --warmup >= 0")

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    nanogpt = load_nanogpt(args.nanogpt) if args.nanogpt else None
    device_name, peak, peak_line = device_peak(device, args.dtype)
    load_before = os.getloadavg()
    dtype_used = {True: "bf16 autocast", False: "fp32"}[
        not isinstance(autocast_context(device, args.dtype), contextlib.nullcontext)]

    print(f"device {device}{f' ({device_name})' if device_name else ''}, torch {torch.__version__}, "
          f"{threads} torch threads, {os.cpu_count()} CPUs, {dtype_used}{', torch.compile' if args.compile else ''}")
    print(peak_line)
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} (1/5/15 min)")
    print(f"reference: {args.nanogpt.expanduser().resolve() if nanogpt else 'none (pass --nanogpt PATH)'}")
    print(f"loop: AdamW (weight decay {WEIGHT_DECAY}, lr {LEARNING_RATE}, betas {BETAS}); {args.warmup} warm-up "
          f"steps, then {args.rounds} rounds x {args.steps} timed steps per model, 1 untimed step per model "
          f"per round, order alternating")

    report: dict[str, Any] = {"device": device, "device_name": device_name, "torch": torch.__version__,
                              "threads": threads, "cpus": os.cpu_count(), "dtype": dtype_used, "peak_flops": peak,
                              "compile": args.compile, "nanogpt": str(args.nanogpt) if nanogpt else None,
                              "load_before": load_before, "warmup": args.warmup, "rounds": args.rounds,
                              "steps": args.steps, "seed": args.seed}
    config = GPTConfig.from_preset(args.preset)
    report["preset"] = {"name": args.preset, **compare(f"preset {args.preset}", config, args.batch_size, device,
                                                       args.dtype, peak, nanogpt, args)}
    if device.startswith("cuda") and not args.skip_gpt2:
        gpt2_args = argparse.Namespace(**{**vars(args), "steps": args.gpt2_steps})
        report["gpt2"] = compare("preset gpt2", GPTConfig.from_preset("gpt2"), args.gpt2_batch_size, device,
                                 args.dtype, peak, nanogpt, gpt2_args)
        print(f"  {peak_line}")
    elif not device.startswith("cuda"):
        print("\ngpt2 preset: not run (no CUDA device; tokens/s and MFU for gpt2 are measured on CUDA only)")

    load_after = os.getloadavg()
    report["load_after"] = load_after
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} "
          f"(includes this benchmark's own {threads} threads)")
    ok = True
    if "ratio" in report["preset"]:
        ratio = report["preset"]["ratio"]
        ok = ratio >= args.min_ratio
        print(f"target: ours >= {args.min_ratio:g}x nanoGPT at {args.preset}: {ratio:.3f}x "
              f"{'met' if ok else 'MISSED'}")
    else:
        print("target: not checked (nanoGPT was not measured)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"report: {args.json}")
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
