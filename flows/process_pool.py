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
import multiprocessing
import resource
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_pool: ProcessPoolExecutor | None = None
_size = 0


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far: what a worker really needed (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _prepare_worker() -> None:
    """What every task needs, imported once per worker as it starts rather than by its first task."""
    import curation.pipeline  # noqa: F401 - the steps' registry, pyarrow, the ingest readers
    import flows.gpt  # noqa: F401 - registers the "gpt" classifier backend


def start(workers: int) -> None:
    """Have a pool of `workers` processes (an existing pool of another size is stopped first); every process is
    started now, so that they start while the command goes on."""
    global _pool, _size
    if _pool is not None and _size == workers:
        return
    stop()
    # spawn, as Prefect's own pool: the command's process holds threads (Prefect's, the server's start-up)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_prepare_worker)
    for _ in range(workers):  # a process per call while none is idle: one each
        pool.submit(int)
    _pool, _size = pool, workers


def size() -> int:
    """How many worker processes the pool has (0: none started)."""
    return _size if _pool is not None else 0


def _measured(fn: Callable[..., T], args: tuple) -> tuple[T, int]:
    return fn(*args), peak_rss_bytes()


def run(fn: Callable[..., T], *args: Any) -> tuple[T, int]:
    """`fn(*args)` in a worker of the pool (here when there is none), with the peak resident memory of the process
    that ran it."""
    if _pool is None:
        return _measured(fn, args)
    return _pool.submit(_measured, fn, args).result()


def stop() -> None:
    global _pool, _size
    pool, _pool, _size = _pool, None, 0
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(stop)
