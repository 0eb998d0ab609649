"""`curate tune RECIPE`: search the recipe's candidates (each filter on or off, paper or calibrated bounds, scopes,
your own `tune:` entries) with small paired-seed ablations, confirm the winner with fresh seeds, and write it.

Registered in `flows/cli.py`; the search is `flows/tune.py`, its candidates `curation/tuning.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

# curation/, training/ (but its torch-free config) and flows.tune (Prefect, torch) are imported inside the command:
# Prefect must wait for `prefect_env`, and they would slow every start (flows/cli_common.py).
from flows.cli_common import (
    DEFAULT_STORE,
    DEMO_BATCH_SIZE,
    DEMO_VOCAB_SIZE,
    StoreOption,
    console,
    fail,
    prefect_env,
    valid_name,
)
from flows.cli_train import PRESET_HELP, VOCAB_HELP
from training.config import PRESETS, TUNE_CONFIRM_SEEDS, TUNE_SEEDS_START, TUNE_TOKENS, AblationSpec


def tune_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (its first stage is the baseline).")],
    store: StoreOption = DEFAULT_STORE,
    name: Annotated[str | None, typer.Option(help="Name of the search under <store>/tunes/ (default: the recipe's "
                                                  "name and a digest of the settings).")] = None,
    seeds_start: Annotated[int, typer.Option(help="Seeds of the first round; each later round doubles them.")
                           ] = TUNE_SEEDS_START,
    confirm_seeds: Annotated[int, typer.Option(help="Fresh seeds the finalists are confirmed with.")
                             ] = TUNE_CONFIRM_SEEDS,
    tokens: Annotated[int, typer.Option(help="Token budget of every training run.")] = TUNE_TOKENS,
    eval_set: Annotated[list[str] | None, typer.Option(help="Registered evaluation set(s) (default: all).")] = None,
    reference: Annotated[list[str] | None, typer.Option(
        help="Trusted text for the calibrated candidates when the recipe names none: a reference set, "
             "version:NAME or source:NAME.")] = None,
    per_rule: Annotated[bool, typer.Option("--per-rule", help="Also calibrate each filter alone at each keep "
                                                              "(four more candidates per filter).")] = False,
    budget_minutes: Annotated[float | None, typer.Option(
        help="Bound the search: candidates are left out from the end until the estimate fits, and rounds stop "
             "when the time is spent.")] = None,
    publish: Annotated[str | None, typer.Option(help="Publish the winning recipe as this version.")] = None,
    preset: Annotated[str, typer.Option(help=PRESET_HELP)] = AblationSpec.preset,
    vocab_size: Annotated[int, typer.Option(help=VOCAB_HELP)] = DEMO_VOCAB_SIZE,
    batch_size: Annotated[int, typer.Option(help="Sequences per optimiser step.")] = DEMO_BATCH_SIZE,
    block_size: Annotated[int | None, typer.Option(help="Context length (default: the preset's).")
                          ] = AblationSpec.block_size,
    workers: Annotated[int | None, typer.Option(help="Curation worker processes (default: every core).")] = None,
    parallel: Annotated[int | None, typer.Option(help="Training runs at once (default: a run per core, or per GPU).")
                        ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = AblationSpec.device,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Find the recipe that helps the model: a successive-halving search of small paired-seed ablations over the
    recipe's candidates, the winner confirmed against the baseline with fresh seeds and written as a recipe."""
    tune(recipe, store, name=name, seeds_start=seeds_start, confirm_seeds=confirm_seeds, tokens=tokens,
         eval_set=eval_set, reference=reference, per_rule=per_rule, budget_minutes=budget_minutes, publish=publish,
         preset=preset, vocab_size=vocab_size, batch_size=batch_size, block_size=block_size, workers=workers,
         parallel=parallel, device=device, verbose=verbose)


def tune(recipe: Path, store: str, *, name: str | None = None, seeds_start: int = TUNE_SEEDS_START,
         confirm_seeds: int = TUNE_CONFIRM_SEEDS, tokens: int = TUNE_TOKENS, eval_set: list[str] | None = None,
         reference: list[str] | None = None, per_rule: bool = False, budget_minutes: float | None = None,
         publish: str | None = None, preset: str = AblationSpec.preset, vocab_size: int = DEMO_VOCAB_SIZE,
         batch_size: int = DEMO_BATCH_SIZE, block_size: int | None = AblationSpec.block_size,
         workers: int | None = None, parallel: int | None = None, device: str = AblationSpec.device,
         verbose: bool = False) -> dict[str, Any]:
    """The command's body (tests call it directly)."""
    _check_arguments(preset, seeds_start, confirm_seeds, tokens, budget_minutes)
    valid_name(name, "tune")
    valid_name(publish, "version")
    prefect_env(verbose)
    from curation.evalsets import EvalSetError
    from curation.ingest import IngestError
    from curation.recipe import RecipeError
    from curation.store import StoreError
    from flows.tune import run_tune
    from training.ablation import AblationError

    spec = AblationSpec(preset=preset, tokens=tokens, batch_size=batch_size, block_size=block_size, device=device)
    try:
        result = run_tune(recipe, store, name, spec, seeds_start=seeds_start, confirm=confirm_seeds,
                          eval_sets=eval_set, vocab_size=vocab_size, reference=reference, per_rule=per_rule,
                          budget_minutes=budget_minutes, publish=publish, workers=workers, parallel=parallel,
                          show_progress=True)
    except (RecipeError, StoreError, AblationError, EvalSetError, IngestError, ValueError) as exc:
        fail(str(exc))
    print_result(result)
    return result


def _check_arguments(preset: str, seeds_start: int, confirm_seeds: int, tokens: int,
                     budget_minutes: float | None) -> None:
    """Mistakes in the command's arguments, each one line and exit 2 before any work."""
    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if seeds_start < 2:
        fail(f"--seeds-start must be at least 2 (a paired interval needs two seeds), got {seeds_start}")
    if confirm_seeds < 2:
        fail(f"--confirm-seeds must be at least 2 (a verdict needs an interval), got {confirm_seeds}")
    if tokens < 1:
        fail(f"--tokens must be positive, got {tokens}")
    if budget_minutes is not None and budget_minutes <= 0:
        fail(f"--budget-minutes must be positive, got {budget_minutes:g}")


def print_result(result: dict[str, Any]) -> None:
    """The ranked candidates, the confirmation and where everything was written."""
    from training.tune_report import ci_text, p_text, summary_rows  # not at start-up (flows/cli_common.py)

    rows = summary_rows(result, digits=3)
    # Two tables, so that each reads in an 80-column terminal: the losses, then what each candidate kept.
    data_columns = ("tokens kept", "removed (top reasons)", "planted")
    titles = (f"tune {result['name']}: candidates ranked by Δ loss on {result['primary']} against "
              f"{result['baseline']['version']} (search rounds, paired by seed, 95% CI; confirmed: fresh seeds)",
              "what each candidate kept and removed (beyond the baseline)")
    loss_columns = [c for c in rows[0] if c not in (*data_columns, "version")]
    kept_columns = ["rank", "candidate", *(c for c in data_columns if c in rows[0])]
    for title, columns in zip(titles, (loss_columns, kept_columns)):
        table = Table(title=escape(title), title_justify="left")
        for column in columns:
            table.add_column(escape(column), justify="right" if column in ("rank", "tokens kept") else "left")
        for row in rows:
            table.add_row(*(escape(str(row[c])) for c in columns))
        console.print(table)
    winner = result["winner"]
    delta = winner["delta"]
    console.print(f"winner: {escape(winner['label'])} ({escape(winner['version'])}); confirmed with fresh seeds "
                  f"{', '.join(map(str, result['confirmation']['seeds']))}: Δ loss {ci_text(delta)}, "
                  f"[bold]{escape(delta['verdict'])}[/] (p Holm {p_text(delta.get('p_adjusted'))})")
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(f"winning recipe: {winner['recipe_file']}" + (f"; published as {winner['published']}"
                                                                if winner["published"] else ""))
    console.print(f"report: {result['paths']['report']} ({result['wall_seconds']:.0f} s)")
