"""Operations commands: incremental series runs, their schedule, and a local Prefect server."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

# curation/ and flows.schedule (Prefect) are imported inside the commands, and httpx (~0.2 s) only by `serve`:
# Prefect must wait for `prefect_env`, and they would slow every start (flows/cli_common.py).
from flows.cli_common import DEFAULT_STORE, ClusterOption, StoreOption, console, fail, prefect_env, valid_name

SeriesOption = Annotated[str | None, typer.Option(help="Series name: versions are <series>-0001, -0002, ... "
                                                       "(default: the recipe's name).")]
DEFAULT_PORT = 4200  # Prefect's own default port


def _series(recipe_path: Path, series: str | None) -> str:
    from curation.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(recipe_path)
    except RecipeError as exc:
        fail(str(exc))
    name = series or recipe.name
    if not name:
        fail(f"{recipe_path}: the recipe has no `name:`; pass --series")
    return valid_name(name, "series")


def increment_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    store: StoreOption = DEFAULT_STORE,
    series: SeriesOption = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: every core).")] = None,
    cluster: ClusterOption = None,
    start: Annotated[str | None, typer.Option("--from", help="A new series continues this version: its records "
                                                              "are carried over and its input files count as seen.")]
    = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Run the series' next increment now: curate only the input files that are new since its last
    version, on top of that version (its records carried over, dedup against it)."""
    prefect_env(verbose)
    from curation.ingest import IngestError
    from curation.recipe import RecipeError
    from curation.store import StoreError
    from flows.schedule import increment_flow

    name = _series(recipe, series)
    try:
        result = increment_flow(str(recipe.resolve()), store, name, workers=workers, cluster=cluster,
                                show_progress=True, start=start)
    except (RecipeError, IngestError, StoreError, ValueError) as exc:
        fail(str(exc))
    if result["published"] is None:
        console.print(result["message"])
        return
    new = result["series"]["new_files"]
    carried = (result.get("carried") or {}).get("rows", 0)
    console.print(f"[green]published[/] {result['name']}: {result['rows']:,} records ({carried:,} carried over from "
                  f"{result['parents'][0] if result['parents'] else 'none'}, {result['rows'] - carried:,} new from "
                  f"{new} file(s)), {result['rejected_rows']:,} rejects, fingerprint {result['fingerprint'][:16]}")
    if result.get("diff"):
        d = result["diff"]
        console.print(f"diff {d['a']} -> {d['b']}: +{d['added']:,} added, -{d['removed']:,} removed, "
                      f"{d['changed']:,} changed")


def _api_url(api_url: str | None) -> str:
    import httpx

    url = api_url or os.environ.get("PREFECT_API_URL") or f"http://127.0.0.1:{DEFAULT_PORT}/api"
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        fail(f"no Prefect server answers at {url} ({exc.__class__.__name__}); start one with `curate server` "
             "(or `prefect server start`) and point PREFECT_API_URL at it")
    return url


def serve_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    cron: Annotated[str, typer.Option(help='Cron schedule, e.g. "0 3 * * *" (03:00 every day); a sixth field '
                                           "adds seconds.")],
    store: StoreOption = DEFAULT_STORE,
    series: SeriesOption = None,
    timezone: Annotated[str | None, typer.Option(help="Time zone of the schedule (default: UTC).")] = None,
    api_url: Annotated[str | None, typer.Option(help="Prefect API (default: $PREFECT_API_URL, else "
                                                     f"http://127.0.0.1:{DEFAULT_PORT}/api).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes per run (default: every core).")] = None,
    cluster: ClusterOption = None,
    start: Annotated[str | None, typer.Option("--from", help="A new series continues this version.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Register the recipe's series as a Prefect deployment on a cron schedule and serve its runs until
    stopped (Ctrl-C pauses the schedule). Each run is `curate increment`."""
    url = _api_url(api_url)
    os.environ["PREFECT_API_URL"] = url
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")  # a served process logs each run it starts
    prefect_env(verbose)
    name = _series(recipe, series)
    from flows.schedule import serve

    store_path = store if "://" in store else str(Path(store).resolve())
    console.print(f"serving series {name!r} ({recipe}) on cron {cron!r} against {url}; store {store_path}")
    serve(recipe, store_path, name, cron, workers=workers, cluster=cluster, timezone=timezone, start=start)


def server_command(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default: no one else can reach it).")]
    = "127.0.0.1",
) -> None:
    """Start a Prefect server with its UI (foreground; Ctrl-C stops it). Runs started with
    PREFECT_API_URL=http://HOST:PORT/api show their flow runs and artifacts there."""
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or shutil.which("prefect")
    if prefect is None:
        fail("the `prefect` command is not installed next to curate")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://{host}:{port}/api"}
    console.print(f"Prefect server and UI on http://{host}:{port}; in another shell:\n"
                  f"  export PREFECT_API_URL=http://{host}:{port}/api")
    os.execve(prefect, [prefect, "server", "start", "--host", host, "--port", str(port)], env)
