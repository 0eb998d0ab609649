"""The one temporary Prefect API server a `curate` command starts, launched before Prefect is even imported.

Prefect would start the same server (uvicorn serving `prefect.server.api.server:create_app`, the settings that
mark it temporary) from the first flow, after importing its whole server package (~1.3 s) in the command's
process. Launching the process directly lets it start while the command imports Prefect and plans its work, and
the command never imports the server package at all: ~1.8 s less before a flow can start (bench/overhead.py).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from pathlib import Path

SERVER_APP = "prefect.server.api.server:create_app"
PORT_IN_USE_EXIT = 3  # uvicorn's exit status when its port was taken between our check and its bind
HEALTH_POLL_SECONDS = 0.05  # our choice: a start takes 2-3 s; Prefect's own start-up polls every 0.1 s
STOP_SECONDS = 5.0  # the grace a stopping server gets before it is killed (Prefect's own choice)
# Unset by the user, the start-up may take this long (Prefect's default, 20 s, is too short on a busy 2-core
# machine: flows/cli_common.prefect_env sets 120).
TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryServer:
    """A Prefect API server process for the lifetime of this command; `url()` waits until it answers."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._answering: Future[str] = Future()
        self._launch()
        atexit.register(self.stop)
        threading.Thread(target=self._wait_until_answering, name="prefect-temporary-api", daemon=True).start()

    def _launch(self) -> None:
        self.port = _free_port()
        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.origin is not None
        self._process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
             SERVER_APP, "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error",
             "--lifespan", "on"],
            # What Prefect sets for its temporary server: no UI, and the server's own services kept minimal.
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                 "PREFECT__SERVER_FINAL": "1"},
            stdin=subprocess.DEVNULL)

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + float(os.environ.get(TIMEOUT_ENV, "20"))
        try:
            while time.monotonic() < deadline:
                process = self._process
                if process is None:
                    raise RuntimeError("the temporary Prefect server was stopped before it answered")
                status = process.poll()
                if status == PORT_IN_USE_EXIT:
                    self._launch()
                    continue
                if status is not None:
                    raise RuntimeError(f"the temporary Prefect server exited with status {status} while starting")
                try:
                    with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                        if response.status == 200:
                            self._answering.set_result(self.api_url)
                            return
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(HEALTH_POLL_SECONDS)
            raise RuntimeError(f"the temporary Prefect server did not answer within {os.environ.get(TIMEOUT_ENV)} "
                               f"s (set {TIMEOUT_ENV} to wait longer)")
        except BaseException as exc:  # noqa: BLE001 - handed to url(), in the command's thread
            self._answering.set_exception(exc)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def url(self) -> str:
        """The API's URL once the server answers; the start-up's error if it could not start."""
        return self._answering.result()

    def stop(self) -> None:
        """At exit: what this process still has to send to the server (Prefect's queued logs) goes first, else
        logging's own shutdown, which runs after this, waits 5 s for a server that is gone."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        handlers = sys.modules.get("prefect.logging.handlers")
        if handlers is not None and self._answering.done() and self._answering.exception() is None:
            handlers.APILogWorker.drain_all(timeout=STOP_SECONDS)
        process.terminate()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
