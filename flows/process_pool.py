"""The worker processes of a curation run on this machine: plain processes that run curation functions, while the
Prefect tasks that record them run in the flow's own process.

Prefect's ProcessPoolTaskRunner runs each task's engine in the worker: the task's bookkeeping (its states sent to
the API, its context rebuilt) took ~0.3 s of a worker between two tasks on 2 cores, and each worker imported all
of Prefect before its first task (bench/scaling.py). Here the workers import only `curation/` (and the "gpt"
classifier backend); they start with the command, while its Prefect server starts; one pool serves every flow
of the command; and the flow's task threads (twice as many as workers) do the bookkeeping while the workers
compute, so a worker always has its next call queued. With a Dask cluster the tasks run on the cluster's
workers as before and `run` calls the function where the task runs.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import multiprocessing
import os
import resource
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")

_pool: ProcessPoolExecutor | None = None
_size = 0
_broken = False  # a worker died (killed for memory, say): the next start makes a new pool


def peak_rss_bytes() -> int:
    """This process's peak resident memory over its life (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def memory_status(field: str) -> int | None:
    """A memory figure of this process from Linux's /proc/self/status (VmRSS, VmHWM: the peak since the last
    `reset_peak`), in bytes; None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            line = next((x for x in status if x.startswith(field + ":")), None)
    except OSError:
        return None
    return int(line.split()[1]) * 1024 if line else None


def reset_peak() -> bool:
    """Start this process's peak (VmHWM) over from its current size (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


# What every task needs, imported before a worker's first task: the steps' registry, pyarrow, the ingest readers,
# the statistics (SciPy); flows.gpt registers the "gpt" classifier backend.
PRELOADED = ("curation.pipeline", "flows.gpt")


def _prepare_worker(environment: dict[str, str]) -> None:
    """The command's environment as the pool starts (the fork server's is as the first pool started); the preloaded
    modules (already there in a worker forked from the fork server); and the command's log file for what
    `curation/` logs here (Prefect, which routes it in the command, is not loaded)."""
    os.environ.clear()
    os.environ.update(environment)
    for module in PRELOADED:
        importlib.import_module(module)
    from flows.cli_common import LOG_FILE_ENV, RunLogHandler, debugging

    if os.environ.get(LOG_FILE_ENV) and not debugging():
        logging.basicConfig(level=os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING").upper(),
                            format="%(asctime)s | %(levelname)-7s | %(name)s - %(message)s",
                            handlers=[RunLogHandler()])


def _context() -> multiprocessing.context.BaseContext:
    """Workers forked from a fork server that imported `curation/` once (not from this process: it holds threads,
    Prefect's and the server's start-up, that forking would copy mid-work), so that a second worker costs no second
    import (~0.9 s of a core each); spawned where there is no fork server (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOADED))
    return context


def start(workers: int) -> None:
    """Have a pool of `workers` processes (an existing pool of another size is stopped first); every process is
    started now, so that they start while the command goes on."""
    global _pool, _size
    if _pool is not None and _size == workers and not _broken:
        return
    stop()
    pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_prepare_worker,
                               initargs=(dict(os.environ),))
    for _ in range(workers):  # a process per call while none is idle: one each
        pool.submit(int)
    _pool, _size = pool, workers


def _measured(fn: Callable[..., T], args: tuple) -> tuple[T, int]:
    """`fn(*args)` and the peak resident memory of this process while it ran (a worker serves every flow of a
    command, so its lifetime peak could be an earlier run's), or over its life where the peak cannot be reset."""
    reset = reset_peak()
    result = fn(*args)
    peak = memory_status("VmHWM") if reset else None
    return result, peak if peak is not None else peak_rss_bytes()


def run(fn: Callable[..., T], *args: Any) -> tuple[T, int]:
    """`fn(*args)` in a worker of the pool (here when there is none), with the peak resident memory of the process
    that ran it."""
    global _broken
    if _pool is None:
        return _measured(fn, args)
    try:
        return _pool.submit(_measured, fn, args).result()
    except BrokenProcessPool:
        _broken = True
        raise


def stop() -> None:
    global _pool, _size, _broken
    pool, _pool, _size, _broken = _pool, None, 0, False
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(stop)
