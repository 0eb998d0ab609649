"""`curate synthesize RECIPE`: generate instruction data with a recipe's `synthesize:` block and publish
the schema-checked, curated result as a version (see `flows/synthesize.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

# curation/ and flows.synthesize are imported inside the command: Prefect must wait for `prefect_env`, and they
# would slow every start (flows/cli_common.py).
from flows.cli_common import DEFAULT_STORE, StoreOption, console, fail, prefect_env, valid_name
from flows.printing import accounting, print_guards


def synthesize_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML with a `synthesize:` block.")],
    store: StoreOption = DEFAULT_STORE,
    name: Annotated[str | None, typer.Option(help="Version name (default: the recipe's name).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: every core).")] = None,
    override_guards: Annotated[str | None, typer.Option(help="Publish even if a hard model-collapse guard fails; "
                                                             "the reason is recorded in the manifest.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> dict[str, Any]:
    """Generate schema-checked instruction records (Self-Instruct or document-grounded) with an OpenAI-compatible
    server, a local Hugging Face model, a GPT checkpoint of this project, or the programmatic baseline; every
    attempt ends as a record or a counted reject. Rerunning the same recipe resumes."""
    prefect_env(verbose)
    from curation.guards import GuardError
    from curation.recipe import RecipeError, load_recipe
    from curation.store import StoreError
    from curation.synth.schemas import SchemaError
    from flows.synthesize import rejects_by_reason, run_synthesis

    try:
        parsed = load_recipe(recipe)
    except RecipeError as exc:
        fail(str(exc))
    if parsed.synthesize is None:
        fail(f"{recipe}: no `synthesize:` block; use `curate run` for a recipe with inputs")
    name = name or parsed.name
    if not name:
        fail(f"{recipe}: the recipe has no `name:`; pass --name")
    valid_name(name, "version")
    spec = parsed.synthesize
    console.print(f"[bold]synthesize[/] {name}: {spec.records:,} attempts, method {spec.method}, backend "
                  f"{spec.backend.kind}, schema {spec.schema_ if isinstance(spec.schema_, str) else 'json_schema'}")
    try:
        manifest = run_synthesis(parsed, store, name, workers=workers, show_progress=True,
                                 override_guards=override_guards)
    except (RecipeError, StoreError, SchemaError, GuardError, ValueError, FileNotFoundError, ImportError) as exc:
        fail(str(exc))
    print_outcome(manifest, rejects_by_reason(manifest))
    return manifest


def print_outcome(manifest: dict[str, Any], rejects: list[dict[str, Any]]) -> None:
    """Every attempt's fate (accepted, or the step and reason that rejected it), the guards, and the version."""
    synthesis = manifest["synthesis"]
    table = Table(title=f"{manifest['name']}: every attempt, accepted or rejected", title_justify="left")
    for column in ("step", "reason", "records"):
        table.add_column(column, justify="right" if column == "records" else "left")
    table.add_row("[green]accepted[/]", "", f"{manifest['rows']:,}")
    for row in rejects:
        table.add_row(row["step"], row["reason"], f"{row['records']:,}")
    table.add_row("[bold]total[/]", "", f"{synthesis['attempts']:,}")
    console.print(table)
    print_guards(manifest)
    console.print(f"[green]published[/] {manifest['name']}: {manifest['rows']:,} of {synthesis['attempts']:,} attempts "
                  f"accepted (generator {synthesis['generator']}, generation {synthesis['generation']}); "
                  f"{synthesis['batches_resumed']} of {synthesis['batches']} batches and "
                  f"{synthesis['cached_requests']:,} requests reused from an earlier run; accounting "
                  f"{accounting(manifest)}")
    console.print(f"path: {manifest.get('path', '')}")
