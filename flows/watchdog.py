"""Nothing a `curate` command starts outlives it, even when it is killed with SIGKILL.

A command that starts Prefect (its temporary API server, worker processes, a Dask cluster) first starts this
watchdog in a session of its own, and puts a token in the environment that every process it starts inherits.
The watchdog polls the command's process; once it is gone, it ends every process whose environment, as it was
started, carries the token: SIGTERM, then SIGKILL for those still there after a grace period. A command's
own environment at start never holds its token, so only what it started is ended; a `curate` started by
another one (a scheduled run) adds a token of its own to the list it inherited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil

TOKENS_ENV = "CURATE_RUN_TOKENS"
POLL_SECONDS = 0.25  # how often the watchdog looks for its command (our choice: well inside the 10 s promise)
GRACE_SECONDS = 3.0  # between SIGTERM and SIGKILL (uvicorn and Dask workers stop cleanly well within it)

_started = False


def start() -> None:
    """Watch this process (once per process); what it starts from now on carries the token."""
    global _started
    if _started:
        return
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != TOKENS_ENV}  # the watchdog must never match itself
    subprocess.Popen([sys.executable, "-m", "flows.watchdog", str(os.getpid()), token], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)  # a Ctrl-C to the command's terminal does not stop it
    os.environ[TOKENS_ENV] = ",".join([*filter(None, os.environ.get(TOKENS_ENV, "").split(",")), token])
    _started = True


def carries(process: psutil.Process, token: str) -> bool:
    try:
        return token in process.environ().get(TOKENS_ENV, "").split(",")
    except (psutil.Error, OSError):
        return False


def end_processes(token: str, grace: float = GRACE_SECONDS) -> list[int]:
    """End every process started with `token`; their pids."""
    ended: list[int] = []
    for _ in range(2):  # a second pass for anything started while the first one was ending
        found = [p for p in psutil.process_iter() if p.pid != os.getpid() and carries(p, token)]
        if not found:
            break
        for process in found:
            try:
                process.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(found, timeout=grace)
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass
        ended += [p.pid for p in found]
    return ended


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main(pid: int, token: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        command = psutil.Process(pid)
    except psutil.Error:
        command = None
    while command is not None and _alive(command):
        time.sleep(POLL_SECONDS)
    end_processes(token)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
