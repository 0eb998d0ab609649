"""`curate evalset ...`: register frozen evaluation sets in the store, and list them.

Mounted in `flows/cli.py` with `app.add_typer(evalset_app, name="evalset")`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

# curation/ (pyarrow) is imported inside the commands, so that every start stays fast (flows/cli_common.py).
from flows.cli_common import DEFAULT_STORE, StoreOption, console, fail

evalset_app = typer.Typer(help="Frozen evaluation sets: held-out text, registered once, hashed, never curated.",
                          no_args_is_help=True, pretty_exceptions_enable=False)


@evalset_app.command()
def register(
    name: Annotated[str, typer.Argument(help="Eval set name: stored in <store>/evalsets/NAME (immutable).")],
    sources: Annotated[list[str], typer.Argument(help="version:NAME, or a file, folder or glob (JSONL, Parquet, CSV, "
                                                 "text).")],
    store: StoreOption = DEFAULT_STORE,
    max_docs: Annotated[int | None, typer.Option("--max-docs", help="Keep a seeded sample of N documents.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the --max-docs sample.")] = 0,
    text_field: Annotated[str, typer.Option("--text-field", help="Text column/key of file sources.")] = "text",
    source_name: Annotated[str | None, typer.Option("--source-name", help="`source` of every document "
                                                    "(default: the input's name).")] = None,
    role: Annotated[str, typer.Option(help="evaluation: held-out text models are measured on (ablations, "
                                           "decontamination); reference: trusted text filters are calibrated on "
                                           "(`calibrate: {reference: NAME}`); instruction: held-out instruction "
                                           "records fine-tuned models are measured on (from version:NAME of an "
                                           "instruction version). A set has one role.")] = "evaluation",
) -> None:
    """Freeze SOURCES as the set NAME: never filtered or deduplicated, hashed, checked on every load."""
    from curation.evalsets import EvalSetError, register_evalset
    from curation.ingest import IngestError
    from curation.store import StoreError

    try:
        info = register_evalset(store, name, sources, text_field=text_field, max_docs=max_docs, seed=seed,
                                source_name=source_name, role=role)
    except (EvalSetError, IngestError, StoreError) as exc:
        fail(str(exc))
    sampled = f" (sampled from {info.docs_available:,}, seed {info.seed})" if info.docs < info.docs_available else ""
    console.print(f"[bold]{info.role} set[/] {info.name}: {info.docs:,} docs{sampled}, {info.chars:,} chars")
    if info.skipped:
        console.print("skipped: " + ", ".join(f"{k} {v:,}" for k, v in info.skipped.items()))
    console.print(f"fingerprint: {info.fingerprint}", soft_wrap=True)
    console.print(f"sha256: {info.sha256}", soft_wrap=True)
    console.print(f"path: {info.data_path}", soft_wrap=True)


@evalset_app.command("list")
def list_(store: StoreOption = DEFAULT_STORE) -> None:
    """List the eval sets in the store."""
    from curation.evalsets import EvalSetError, list_evalsets
    from curation.store import StoreError

    try:
        infos = list_evalsets(store)
    except (EvalSetError, StoreError) as exc:
        fail(str(exc))
    if not infos:
        console.print(f"no eval sets in {store} (register one with `curate evalset register NAME SOURCE`)")
        return
    table = Table(title=f"eval sets in {store}", title_justify="left")
    for column in ("name", "role", "docs", "chars", "sources", "fingerprint", "created"):
        table.add_column(column, justify="right" if column in ("docs", "chars") else "left")
    for info in infos:
        sources = ", ".join(f"version:{s['name']}" if s.get("kind") == "version" else str(s.get("path"))
                            for s in info.sources)
        table.add_row(info.name, info.role, f"{info.docs:,}", f"{info.chars:,}", sources, info.fingerprint[:16],
                      info.created_at[:16].replace("T", " "))
    console.print(table)
