"""What every `curate` command shares: the consoles, the `--store` option, and failing clearly.

An error is one line on the terminal (what went wrong and what to do) with exit status 2. Prefect's own
logs and every traceback go to a log file instead (its path is printed with the error), unless `--debug`
asks for them on the terminal. Worker processes inherit the same log file through the environment.

Every CLI module (flows/cli*.py) imports at start-up only what `curate --help` needs: typer, rich, the other
CLI modules, and the torch-free configuration dataclasses whose defaults the options show (`training/config.py`,
`flows/collapse_spec.py`). The rest of curation/, training/ and the flows are imported inside the commands:
Prefect must not be imported before `route_logs` and `prefect_env` have set its environment, and torch, pyarrow
and the step registry would add seconds to every start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from flows import watchdog
from flows.temporary_api import TemporaryServer

if TYPE_CHECKING:
    from curation.store import VersionStore

console = Console()
err = Console(stderr=True)

DEFAULT_STORE = "curate-store"
StoreOption = Annotated[str, typer.Option("--store", "-s", envvar="CURATE_STORE",
                                          help="Version store: a folder or any fsspec URL.")]

# The demo's training settings (our choice), which the collapse experiment shares: with a 4,096-token vocabulary
# and batches of 8 the tiny model trains ~1.5x faster on 2 cores, and 200 optimiser steps gave paired deltas 2.5x
# less noisy than 100 steps of 16.
DEMO_VOCAB_SIZE = 4096
DEMO_BATCH_SIZE = 8
# Seeds of the demo's ablation (our choice): with 3, the interval of a 0.1-nat gain reached zero on one of two
# measurements (t has 2 degrees of freedom); 4 give t 3 of them, for a third more training time.
DEMO_SEEDS = 4

ClusterOption = Annotated[str | None, typer.Option(
    help="Run the tasks on Dask through Prefect's DaskTaskRunner: local:N starts a LocalCluster of N worker "
         "processes, tcp://host:8786 uses an existing scheduler (default: a process pool on this machine).")]


LOG_FILE_ENV = "CURATE_LOG_FILE"
DEBUG_ENV = "CURATE_DEBUG"


def printer(enabled: bool) -> Callable[[str], None]:
    """`say(message)` for a flow: a plain line on the terminal when it shows its progress (the CLI), else nothing."""
    if not enabled:
        return lambda *_: None
    return lambda message: console.print(message, markup=False, highlight=False)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def fail(message: str) -> NoReturn:
    """Print the error (names the file, key or version at fault) and exit with status 2."""
    err.print(f"[bold red]error:[/] {escape(message)}{_log_hint()}", soft_wrap=True)
    raise typer.Exit(2)


def valid_name(name: str | None, kind: str) -> str | None:
    """A user-given name that will become a path, checked before any work (one line and exit 2 if unsafe)."""
    from curation.store import StoreError, check_name  # pyarrow: not at start-up (module docstring)

    if name is None:
        return None
    try:
        return check_name(name, kind)
    except StoreError as exc:
        fail(str(exc))


def require_version(store: VersionStore, name: str) -> dict[str, Any]:
    """The manifest of version `name`; if the store has no such version, one line naming it and how to list the
    store's versions, and exit 2."""
    from curation.store import StoreError, VersionNotFoundError  # pyarrow: not at start-up (module docstring)

    try:
        return store.manifest(name)
    except VersionNotFoundError:
        fail(f"no version {name!r} in {store.url} (`curate versions --store {store.url}` lists them)")
    except StoreError as exc:  # an invalid name or an unreadable store: the store's own message names it
        fail(str(exc))


def crash(exc: BaseException) -> NoReturn:
    """An error nothing expected: one line, the traceback in the log file (or on the terminal with --debug)."""
    if debugging():
        raise exc
    log = log_file()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("".join(traceback.format_exception(exc)))
    err.print(f"[bold red]error:[/] {escape(f'{type(exc).__name__}: {exc}')}{_log_hint()}", soft_wrap=True)
    raise SystemExit(2)  # outside the command, where typer.Exit is no longer handled


def _log_hint() -> str:
    log = os.environ.get(LOG_FILE_ENV)
    if debugging() or not log or not Path(log).is_file() or Path(log).stat().st_size == 0:
        return ""
    return f" (details: {log}; or rerun with --debug)"


def log_file() -> Path:
    """This command's log file (created on the first record): under $CURATE_LOG_DIR, else the temp folder."""
    if LOG_FILE_ENV not in os.environ:
        folder = Path(os.environ.get("CURATE_LOG_DIR") or Path(tempfile.gettempdir()) / "curate-logs")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        os.environ[LOG_FILE_ENV] = str(folder / f"curate-{stamp}-{os.getpid()}.log")
    return Path(os.environ[LOG_FILE_ENV])


class RunLogHandler(logging.FileHandler):
    """Prefect's console output, appended to the command's log file (named by the environment, so worker
    processes write to the same file)."""

    def __init__(self, level: int = 0) -> None:
        path = log_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, encoding="utf-8", delay=True)
        self.setLevel(level)


def route_logs(debug: bool) -> None:
    """Before Prefect is imported: its terminal handlers write to the log file, unless debugging."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
        return
    if os.environ.get("PREFECT_LOGGING_SETTINGS_PATH"):
        return  # the user's own logging configuration wins
    log = log_file()
    log.parent.mkdir(parents=True, exist_ok=True)
    settings = log.parent / "prefect-logging.yml"
    text = yaml.safe_dump(_file_logging_config())
    if not settings.is_file() or settings.read_text(encoding="utf-8") != text:
        tmp = settings.with_name(f"{settings.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(settings)
    os.environ["PREFECT_LOGGING_SETTINGS_PATH"] = str(settings)


def _file_logging_config() -> dict[str, Any]:
    """Prefect's own logging configuration with every handler that writes to the terminal replaced by ours."""
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.submodule_search_locations
    default = Path(next(iter(spec.submodule_search_locations))) / "logging" / "logging.yml"
    config = yaml.safe_load(default.read_text(encoding="utf-8"))
    for name, handler in config.get("handlers", {}).items():
        if "stream" in handler:
            config["handlers"][name] = {"()": f"{__name__}.RunLogHandler", "level": handler.get("level", 0),
                                        "formatter": handler.get("formatter", "standard")}
    return config


def prefect_env(verbose: bool, wait: bool = True) -> None:
    """Embedded Prefect, quiet and offline-friendly, unless the user configured otherwise; whatever the command
    starts from here on (the temporary API server, workers) ends with it (`flows.watchdog`).

    Unless the user names a Prefect API, the command starts one temporary server (`flows/temporary_api.py`), which
    its flows and every Dask worker report to: left to Prefect, each worker process would start a server of its own
    (~220 MB and seconds each). `wait=False` returns while the server starts, so the command can
    do other work meanwhile; `prefect_api_ready()` must then come before its first flow."""
    watchdog.start()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The default 20 s start-up timeout of the temporary server is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Every start of the temporary server imports each installed Prefect collection to register (or, memoized, to
    # hash) their block types: ~1 s of its start-up (measured on 2 busy cores: 3.3-3.8 s to answer with it, 2.3-2.9 s
    # without). Our flows use no blocks.
    os.environ.setdefault("PREFECT_SERVER_REGISTER_BLOCKS_ON_START", "false")
    os.environ.setdefault("PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    if verbose and os.environ.get("PREFECT_LOGGING_SETTINGS_PATH", "").startswith(str(log_file().parent)):
        del os.environ["PREFECT_LOGGING_SETTINGS_PATH"]  # --verbose: Prefect's logs on the terminal
    _start_temporary_api()
    if wait:
        prefect_api_ready()


_server: TemporaryServer | None = None  # the temporary API server this command started, until it answers


def _start_temporary_api() -> None:
    """Start Prefect's temporary server in the background, where Prefect itself would start one: no API
    configured (environment or profile) and the temporary server allowed. The process starts first; the settings
    (~0.6 s to import) are read while it does, and it is stopped again if they name an API after all."""
    global _server
    if _server is not None or os.environ.get("PREFECT_API_URL"):
        return
    server = TemporaryServer()
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        server.stop()
        return
    _server = server


def prefect_api_ready() -> None:
    """Wait for the temporary server `prefect_env` started, if it did, and point Prefect at it, in this process
    (its settings) and in every process started from now on (the environment they inherit)."""
    global _server
    if _server is None:
        return
    url = _server.url()
    _server = None
    os.environ["PREFECT_API_URL"] = url
    import prefect.context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    prefect.context.refresh_global_settings_context()
    # A flow's heartbeats tell a lasting server that the flow's process died; this server ends with the command.
    # Each flow's end waits for the heartbeat thread, which sleeps in 1 s steps: 0.5 s a flow on average.
    current = prefect.context.GLOBAL_SETTINGS_CONTEXT
    prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.SettingsContext(
        profile=current.profile, settings=current.settings.copy_with_update({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
