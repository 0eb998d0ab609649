"""What every `curate` command shares: the consoles, the `--store` option, and failing clearly."""

from __future__ import annotations

import os
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True)

DEFAULT_STORE = "curate-store"
StoreOption = Annotated[str, typer.Option("--store", "-s", envvar="CURATE_STORE",
                                          help="Version store: a folder or any fsspec URL.")]

ClusterOption = Annotated[str | None, typer.Option(
    help="Run the tasks on Dask through Prefect's DaskTaskRunner: local:N starts a LocalCluster of N worker "
         "processes, tcp://host:8786 uses an existing scheduler (default: a process pool on this machine).")]


def fail(message: str) -> NoReturn:
    """Print the error (names the file, key or version at fault) and exit with status 2."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def prefect_env(verbose: bool) -> None:
    """Embedded Prefect, quiet and offline-friendly, unless the user configured otherwise."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The default 20 s start-up timeout of the temporary server is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
