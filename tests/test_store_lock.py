"""The store's per-name lock: a lock being created is never mistaken for a stale one."""

from __future__ import annotations

import json
import os
import time

import pytest

from curation import store as store_module
from curation.store import LOCK_GRACE_SECONDS, VersionLockedError, VersionStore


def staged_work(store: VersionStore) -> str:
    """An interrupted run's staged work for version `v`, kept for a resume; its lock released."""
    staging = store.begin("v", run_key="ab" * 32)
    with open(staging.sub("work", "finished-task.arrow"), "wb") as handle:
        handle.write(b"result")
    store.release(staging)
    return staging.path


def test_a_lock_still_being_written_counts_as_held_and_nothing_is_deleted(tmp_path):
    store = VersionStore(tmp_path / "store")
    work = staged_work(store)
    lock = tmp_path / "store" / ".staging" / "v.lock"
    lock.write_bytes(b"")  # another run created its lock and has not written its owner yet
    with pytest.raises(VersionLockedError, match=r"version 'v' is locked by \S+v\.lock, which is empty or "
                                                 r"unreadable and \d+ s old: another run is probably still creating"):
        store.begin("v", run_key="cd" * 32)
    assert lock.exists() and lock.read_bytes() == b""  # the other run's lock is left alone
    assert os.path.exists(f"{work}/work/finished-task.arrow")  # and so is the staged work


@pytest.mark.parametrize("content", [b"", b'{"pid": 12', b"[1, 2]"], ids=["empty", "cut-short", "no-owner"])
def test_a_lock_unreadable_past_the_grace_period_is_taken_over(tmp_path, content):
    store = VersionStore(tmp_path / "store")
    (tmp_path / "store" / ".staging").mkdir(parents=True)
    lock = tmp_path / "store" / ".staging" / "v.lock"
    lock.write_bytes(content)
    then = time.time() - LOCK_GRACE_SECONDS - 5
    os.utime(lock, (then, then))
    staging = store.begin("v")
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    store.abandon(staging)
    assert not lock.exists()


def test_the_lock_appears_only_with_its_owner_written(tmp_path, monkeypatch):
    store = VersionStore(tmp_path / "store")
    lock = tmp_path / "store" / ".staging" / "v.lock"
    visible_while_writing = []
    real_dump = json.dump

    def dump_and_look(obj, handle, *args, **kwargs):
        visible_while_writing.append(lock.exists())
        real_dump(obj, handle, *args, **kwargs)

    monkeypatch.setattr(store_module.json, "dump", dump_and_look)
    staging = store.begin("v")
    monkeypatch.undo()
    assert visible_while_writing == [False]  # no other run could have read it half written
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in lock.parent.iterdir() if p.is_file()) == ["v.lock"]  # no temporary file left
    store.abandon(staging)
