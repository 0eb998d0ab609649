"""The command's worker processes: work runs there when a run has several workers and here otherwise, each call
reports the memory its process needed, and a pool that lost a worker is replaced at the next run's start."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from flows import process_pool
from flows.curate import curation_runner


@pytest.fixture
def no_pool():
    process_pool.stop()
    yield
    process_pool.stop()


def _grow(megabytes: int) -> int:
    block = bytearray(megabytes << 20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    return os.getpid()


def test_without_a_pool_the_work_runs_here_and_reports_this_process_peak(no_pool):
    pid, peak = process_pool.run(_grow, 64)
    assert pid == os.getpid() and peak >= 64 << 20


def test_a_pool_runs_the_work_in_its_workers_and_reports_each_call_peak(no_pool):
    process_pool.start(2)
    pids = {process_pool.run(os.getpid)[0] for _ in range(8)}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    _, big = process_pool.run(_grow, 200)
    _, small = process_pool.run(_grow, 1)
    assert big >= 200 << 20
    # The peak is the call's own: a worker's earlier, larger call does not count (Linux resets it per call).
    assert small < big - (150 << 20)


def test_a_worker_that_dies_fails_its_call_and_the_next_start_makes_a_new_pool(no_pool):
    process_pool.start(2)
    with pytest.raises(BrokenProcessPool):
        process_pool.run(os._exit, 1)
    process_pool.start(2)
    assert process_pool.run(os.getpid)[0] != os.getpid()


def test_a_one_worker_run_after_a_pooled_one_runs_its_tasks_here(no_pool):
    curation_runner(2)
    assert process_pool.run(os.getpid)[0] != os.getpid()
    curation_runner(1)
    assert process_pool.run(os.getpid)[0] == os.getpid()


def _warn(message: str) -> None:
    import logging

    logging.getLogger("curation.test").warning(message)


def test_what_a_worker_logs_goes_to_the_command_log_file(no_pool, tmp_path, monkeypatch):
    log = tmp_path / "run.log"
    monkeypatch.setenv("CURATE_LOG_FILE", str(log))
    monkeypatch.delenv("CURATE_DEBUG", raising=False)
    process_pool.start(2)
    process_pool.run(_warn, "a word from a worker")
    process_pool.stop()  # the worker exits: its handler is flushed and closed
    assert "a word from a worker" in log.read_text()
