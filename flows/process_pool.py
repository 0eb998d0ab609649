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


def _prepare_worker() -> None:
    """What every task needs, imported once per worker as it starts rather than by its first task; and the
    command's log file for what `curation/` logs here (Prefect, which routes it in the command, is not loaded)."""
    import curation.pipeline  # noqa: F401 - the steps' registry, pyarrow, the ingest readers, the statistics (SciPy)
    import flows.gpt  # noqa: F401 - registers the "gpt" classifier backend
    from flows.cli_common import LOG_FILE_ENV, RunLogHandler, debugging

    if os.environ.get(LOG_FILE_ENV) and not debugging():
        logging.basicConfig(level=os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING").upper(),
                            format="%(asctime)s | %(levelname)-7s | %(name)s - %(message)s",
                            handlers=[RunLogHandler()])


def start(workers: int) -> None:
    """Have a pool of `workers` processes (an existing pool of another size is stopped first); every process is
    started now, so that they start while the command goes on."""
    global _pool, _size
    if _pool is not None and _size == workers and not _broken:
        return
    stop()
    # spawn, as Prefect's own pool: the command's process holds threads (Prefect's, the server's start-up)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_prepare_worker)
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
