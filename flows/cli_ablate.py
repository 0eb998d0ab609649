"""`curate ablate`: train the same model on each version with paired seeds and report the loss deltas.

Three forms (registered in `flows/cli.py`):

    curate ablate V1 V2 [V3 ...]        every version against the first (or --baseline)
    curate ablate --steps RECIPE         the recipe's cumulative stages, with a waterfall
    curate ablate --calibrate V          the seed-to-seed noise of one version (use --seeds 5)

and `--finetune --base CKPT` with the first or the third: each run fine-tunes the base on an instruction version
and is measured by its response loss on the registered instruction sets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

# The rest of training/ (torch), curation/ and flows.ablate (Prefect) are imported inside the commands: Prefect
# must wait for `prefect_env`, and they would slow every start (flows/cli_common.py); training.config is
# torch-free and is where the options' defaults live.
from flows.cli_common import DEFAULT_STORE, StoreOption, console, fail, prefect_env, require_version, valid_name
from flows.cli_train import PRESET_HELP, VOCAB_HELP, CompileOption, DeviceOption, finetune_configs
from training.config import (
    DEFAULT_VOCAB_SIZE,
    FINETUNE_LEARNING_RATE,
    LORA_LEARNING_RATE,
    PRESETS,
    AblationSpec,
    FinetuneConfig,
    TrainConfig,
)

SEEDS = len(AblationSpec.seeds)  # the command counts seeds (0 .. N-1); the spec lists them

MAX_NAME = 100


def default_name(kind: str, versions: list[str], preset: str, tokens: int | None, seeds: int) -> str:
    """Readable and specific: the versions, the preset, the budget and the seed count."""
    body = "-vs-".join(versions) if kind == "ablation" else f"{kind}-{versions[-1]}"
    name = f"{body}.{preset}-t{tokens or 'chinchilla'}-x{seeds}"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11]}-{digest}"
    return name


def _ci(c: dict[str, Any]) -> str:
    return "" if c["ci_low"] is None else f" [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"


def _delta(c: dict[str, Any]) -> str:
    return f"{c['mean']:+.4f}{_ci(c)}"


def print_result(result: dict[str, Any]) -> None:
    """The ablation as a few narrow tables (the HTML report has every number)."""
    if result["kind"] == "calibration":
        _print_noise(result)
    else:
        _print_comparison(result)
        if result.get("waterfall"):
            _print_waterfall(result["waterfall"])
        console.print("ranking (lowest loss first): " + " < ".join(escape(v) for v in result["ranking"]))
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(f"report: {result['paths']['report']} ({result['wall_seconds']:.0f} s)")


def _print_noise(result: dict[str, Any]) -> None:
    noise = result["noise"]
    console.print(f"noise floor of {escape(result['version'])} on {escape(result['primary'])}: "
                  f"{noise['runs']['n']} seeds, loss {noise['runs']['mean']:.4f}, single-run sd "
                  f"{noise['sd_single_run']:.4g}; paired-difference sd <= {noise['sd_paired_delta_bound']:.4g}")
    console.print("minimum detectable effect (95 %, power 0.8) by seeds: "
                  + ", ".join(f"{k}: {v:.4f}" for k, v in noise["mde_by_seeds"].items()))
    if noise.get("effect") is not None:
        needed = noise.get("seeds_needed") or "more than 1000"
        console.print(f"seeds needed for an effect of {noise['effect']:g}: {needed}")


def _print_comparison(result: dict[str, Any]) -> None:
    """Loss per version with its paired delta against the baseline, then the same per evaluation domain."""
    analysis, primary = result["analysis"], result["primary"]
    table = Table(title=escape(f"loss on {primary} (mean ± sd over seeds; Δ against {result['baseline']}, "
                               "paired by seed, 95% CI)"), title_justify="left")
    for column in ("version", "loss", "Δ loss [95% CI]", "p", "verdict", "epochs", "eval overlap"):
        table.add_column(column, justify="left" if column in ("version", "verdict") else "right")
    for version in analysis["versions_order"]:
        info = analysis["versions"][version]
        loss = info["eval"][primary]["loss"]
        c = analysis["comparisons"].get(version, {}).get(primary, {}).get("loss")
        sd = f" ± {loss['std']:.4f}" if loss["std"] is not None else ""
        p = "" if c is None or c["p_value"] is None else f"{c['p_value']:.3f}"
        overlap = (result["versions"][version].get("overlap") or {}).get("contaminated", 0)
        table.add_row(escape(version), f"{loss['mean']:.4f}{sd}", "baseline" if c is None else _delta(c), p,
                      "" if c is None else c["verdict"], f"{info['epochs']:.2f}", f"{overlap:,} docs")
    console.print(table)
    domains = [k for k in analysis["eval_keys"] if k != primary]
    if domains:
        per = Table(title="per domain: Δ loss [95% CI], verdict", title_justify="left")
        per.add_column("version")
        single = len(result["eval_sets"]) == 1
        for key in domains:
            per.add_column(escape(key.split("/", 1)[1] if single else key), justify="right")
        for version, by_key in analysis["comparisons"].items():
            cells = [_delta(c) + f" {c['verdict']}" if (c := by_key.get(key, {}).get("loss")) else "-"
                     for key in domains]
            per.add_row(escape(version), *cells)
        console.print(per)


def _print_waterfall(waterfall: list[dict[str, Any]]) -> None:
    for row in waterfall:
        console.print(f"  stage {escape(row['label'])} = {escape(', '.join(row['steps']) or 'ingestion only')}"
                      f" -> {escape(row['stage'])}", highlight=False)
    fall = Table(title="waterfall: the loss change each stage caused (paired by seed)", title_justify="left")
    for column in ("stage", "loss", "Δ this stage [95% CI]", "verdict", "Δ total"):
        fall.add_column(column, justify="left" if column in ("stage", "verdict") else "right")
    for row in waterfall:
        step, total = row["step"], row["cumulative"]
        if step is None:
            fall.add_row(escape(row["label"]), f"{row['level']:.4f}", "", "baseline", "")
        else:
            fall.add_row(f"+{escape(row['label'])}", f"{row['level']:.4f}", _delta(step), step["verdict"],
                         f"{total['mean']:+.4f}")
    console.print(fall)


def ablate_command(
    versions: Annotated[list[str] | None, typer.Argument(
        help="Versions to compare; the first is the baseline (with --steps: each compared with the recipe's first "
             "stage too).")] = None,
    store: StoreOption = DEFAULT_STORE,
    steps: Annotated[Path | None, typer.Option("--steps", help="A recipe: publish and compare its cumulative stages "
                                                                "(raw, +filters, +dedup, ...).")] = None,
    each_step: Annotated[bool, typer.Option("--each-step", help="With --steps: every step its own stage.")] = False,
    calibrate: Annotated[str | None, typer.Option(help="Measure the seed-to-seed noise of this version.")] = None,
    baseline: Annotated[str | None, typer.Option(help="The version the others are compared with.")] = None,
    preset: Annotated[str, typer.Option(help=PRESET_HELP)] = AblationSpec.preset,
    tokens: Annotated[int | None, typer.Option(help="Token budget of every run (default: 20 per parameter).")
                      ] = AblationSpec.tokens,
    seeds: Annotated[int, typer.Option(help="Seeds per version (0 .. N-1), the same for every version.")] = SEEDS,
    effect: Annotated[float | None, typer.Option(help="The effect size you care about (nats/token): warns when the "
                                                      "seeds cannot detect it.")] = None,
    eval_set: Annotated[list[str] | None, typer.Option(help="Registered evaluation set(s) (default: all).")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="A tokenizer.json (default: trained on the baseline).")] = None,
    vocab_size: Annotated[int, typer.Option(help=VOCAB_HELP)] = DEFAULT_VOCAB_SIZE,
    batch_size: Annotated[int, typer.Option(help="Sequences per optimiser step.")] = AblationSpec.batch_size,
    learning_rate: Annotated[float | None, typer.Option(
        help=f"Peak learning rate (default: {AblationSpec.learning_rate:g}; fine-tuning {FINETUNE_LEARNING_RATE:g}, "
             f"{LORA_LEARNING_RATE:g} with --lora).")] = None,
    block_size: Annotated[int | None, typer.Option(help="Context length (default: the preset's).")
                          ] = AblationSpec.block_size,
    name: Annotated[str | None, typer.Option(help="Name of the result under <store>/ablations/.")] = None,
    parallel: Annotated[int | None, typer.Option(help="Runs at once (default: a run per core, or per GPU).")] = None,
    workers: Annotated[int | None, typer.Option(help="Curation worker processes for --steps.")] = None,
    device: DeviceOption = AblationSpec.device,
    compile: CompileOption = AblationSpec.compile,
    finetune: Annotated[bool, typer.Option("--finetune", help="Fine-tune --base on each (instruction) version; "
                                                               "measure on the instruction sets.")] = False,
    base: Annotated[Path | None, typer.Option(help="With --finetune: a checkpoint.pt of `curate train` or a GPT-2 "
                                                   "folder.")] = None,
    template: Annotated[str, typer.Option(help="With --finetune: alpaca, chat or a format string.")
                        ] = FinetuneConfig.template,
    epochs: Annotated[float, typer.Option(help="With --finetune: passes over each version's records.")
                      ] = FinetuneConfig.epochs,
    lora: Annotated[bool, typer.Option(help="With --finetune: train LoRA adapters only.")] = FinetuneConfig.lora,
    lora_r: Annotated[int, typer.Option(help="With --lora: the rank.")] = FinetuneConfig.lora_r,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Train the same model on each version with the same seeds; loss deltas with 95% intervals and verdicts."""
    ft = None
    if finetune:
        if base is None or steps is not None:
            fail("--finetune needs --base CKPT and versions (or --calibrate VERSION), not --steps")
        ft, cfg = finetune_configs(base, template, epochs, lora, lora_r, FinetuneConfig.lora_alpha, 0, batch_size,
                                   learning_rate, TrainConfig.eval_every, compile, device)
        learning_rate = cfg.learning_rate
    elif base is not None:
        fail("--base is for --finetune (fine-tuning ablations)")
    ablate(versions or [], store, steps=steps, each_step=each_step, calibrate=calibrate, baseline=baseline,
           preset=preset, tokens=tokens, seeds=seeds, effect=effect, eval_set=eval_set, tokenizer=tokenizer,
           vocab_size=vocab_size, batch_size=batch_size, learning_rate=learning_rate or AblationSpec.learning_rate,
           block_size=block_size, name=name, parallel=parallel, workers=workers, device=device, compile=compile,
           verbose=verbose, finetune=ft)


def ablate(versions: list[str], store: str, *, steps: Path | None = None, each_step: bool = False,
           calibrate: str | None = None, baseline: str | None = None, preset: str = AblationSpec.preset,
           tokens: int | None = AblationSpec.tokens, seeds: int = SEEDS, effect: float | None = None,
           eval_set: list[str] | None = None, tokenizer: Path | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
           batch_size: int = AblationSpec.batch_size, learning_rate: float = AblationSpec.learning_rate,
           block_size: int | None = AblationSpec.block_size, name: str | None = None, parallel: int | None = None,
           workers: int | None = None, device: str = AblationSpec.device, compile: bool = AblationSpec.compile,
           verbose: bool = False, stage_prefix: str | None = None, finetune: FinetuneConfig | None = None
           ) -> dict[str, Any]:
    """The command's body, also called by `curate demo` (which names the stage versions after its own)."""
    prefect_env(verbose)
    from curation.evalsets import EvalSetError
    from curation.recipe import RecipeError
    from curation.store import StoreError, VersionStore
    from flows.ablate import run_ablation, stage_versions
    from training.ablation import AblationError
    from training.sft import SFTError

    _check_arguments(versions, steps, calibrate, preset, seeds, name)
    spec = AblationSpec(preset=preset, tokens=tokens, seeds=tuple(range(seeds)), batch_size=batch_size,
                        learning_rate=learning_rate, block_size=block_size, device=device, compile=compile)
    target = VersionStore(store)
    stages = None
    try:
        if steps is not None:  # the recipe's stages, then any versions named beside it (compared with its baseline)
            staged, stages = stage_versions(steps, store, stage_prefix, workers=workers, show_progress=True,
                                            each_step=each_step)
            versions = [*staged, *(v for v in versions if v not in staged)]
        elif calibrate is not None:
            versions = [calibrate]
        for version in versions:
            require_version(target, version)
        if baseline is not None and baseline not in versions:
            fail(f"--baseline {baseline!r} is not among the versions ({', '.join(versions)})")
        if baseline is not None:  # the baseline leads the table
            versions = [baseline, *(v for v in versions if v != baseline)]
        kind = "calibrate" if calibrate else "ablation"
        name = name or default_name(kind, versions, f"ft-e{finetune.epochs:g}" + ("-lora" if finetune.lora else "")
                                    if finetune else preset, tokens, seeds)
        result = run_ablation(target.url, versions, spec, name, baseline=baseline, tokenizer=str(tokenizer) if
                              tokenizer else None, vocab_size=vocab_size, eval_sets=eval_set, effect=effect,
                              stages=stages, calibrate=calibrate is not None, parallel=parallel, show_progress=True,
                              finetune=finetune)
    except (StoreError, AblationError, RecipeError, ValueError, EvalSetError, SFTError) as exc:
        fail(str(exc))
    print_result(result)
    return result


def _check_arguments(versions: list[str], steps: Path | None, calibrate: str | None, preset: str, seeds: int,
                     name: str | None) -> None:
    """Mistakes in the command's arguments, each one line and exit 2 before any work."""
    if calibrate is not None and (versions or steps is not None) or not (versions or steps or calibrate):
        fail("give versions to compare, or --steps RECIPE (and versions to compare with its stages too), or "
             "--calibrate VERSION alone")
    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if seeds < 1:
        fail(f"--seeds must be at least 1, got {seeds}")
    valid_name(name, "ablation")
    if versions and steps is None and len(versions) < 2:
        fail("an ablation compares at least two versions (or use --calibrate VERSION for one)")
    if versions and len(set(versions)) != len(versions):
        fail(f"a version is listed twice: {', '.join(versions)}")
    if calibrate is not None and seeds < 2:
        fail("calibration needs at least 2 seeds (--seeds 5 is a good start)")
