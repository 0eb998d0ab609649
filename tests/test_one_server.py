"""One temporary Prefect server per command: the workers of a local Dask cluster report to the command's own API
instead of each starting a server of its own (~220 MB and seconds apiece), the process pool's workers run no
Prefect, and the published version is the same whatever runs the tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import doc, write_jsonl

CLI = str(Path(sys.executable).with_name("curate"))
SERVER_APP = "prefect.server.api.server:create_app"  # what Prefect's temporary server runs under uvicorn
FORK_SERVER = "multiprocessing.forkserver import main"  # the command line of a fork server and of what it forks


def _recipe(tmp_path: Path) -> Path:
    """Ten documents in two files (two ingest tasks, so both workers get work) and a few steps."""
    for part in range(2):
        write_jsonl(tmp_path / f"in-{part}.jsonl", [{"id": f"d{part}-{i}", "text": doc(part * 5 + i)}
                                                    for i in range(5)])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"inputs": [{"path": f"in-{part}.jsonl"} for part in range(2)],
                                    "steps": [{"step": "normalize"}, {"step": "exact_dedup"},
                                              {"step": "gopher_repetition"}]}))
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "CURATE_LOG_DIR": str(tmp_path / "logs")}
    env.pop("PREFECT_API_URL", None)  # the CLI's own temporary server, as a user gets it
    return env


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _parent_cmdline(process: psutil.Process) -> str:
    try:
        parent = process.parent()
    except psutil.Error:
        return ""
    return _cmdline(parent) if parent else ""


def _api_url(process: psutil.Process) -> str | None:
    try:
        return process.environ().get("PREFECT_API_URL")
    except psutil.Error:
        return None


def _run_watching(tmp_path: Path, store: Path, *options: str) -> tuple[dict[int, str], dict[int, str | None]]:
    """`curate run` with `options`, watching its process tree until it ends: the Prefect servers it ran (pid ->
    the port they listened on) and its worker processes (pid -> the API URL they were started with)."""
    output = tmp_path / f"{store.name}.out"  # a file, not a pipe: nothing reads the output until the run ends
    with open(output, "w") as handle:
        cli = subprocess.Popen([CLI, "run", str(_recipe(tmp_path)), "--store", str(store), "--name", "v", *options],
                               env=_env(tmp_path), stdout=handle, stderr=subprocess.STDOUT)
    command = psutil.Process(cli.pid)
    servers: dict[int, str] = {}
    workers: dict[int, str | None] = {}
    deadline = time.monotonic() + 600
    while cli.poll() is None:
        assert time.monotonic() < deadline, "the run did not end within 10 minutes"
        for process in _descendants(command):
            line = _cmdline(process)
            if SERVER_APP in line:
                servers[process.pid] = line.split("--port ")[-1].split()[0]
            elif process.pid not in workers and ("spawn_main" in line  # a Dask nanny's worker, a spawned one
                                                  or FORK_SERVER in line and FORK_SERVER in _parent_cmdline(process)):
                workers[process.pid] = _api_url(process)  # forked from the pool's fork server: one of its workers
        time.sleep(0.05)
    assert cli.returncode == 0, output.read_text()
    return servers, workers


def _fingerprint(store: Path) -> str:
    return json.loads((store / "versions" / "v" / "manifest.json").read_text())["fingerprint"]


def _assert_one_server_for_every_worker(servers: dict, workers: dict) -> None:
    assert len(servers) == 1, f"Prefect servers started during the run: {servers}"
    port = next(iter(servers.values()))
    assert workers and set(workers.values()) == {f"http://127.0.0.1:{port}/api"}, workers


@pytest.mark.e2e
def test_a_process_pool_run_starts_one_prefect_server_and_publishes_what_one_worker_does(tmp_path):
    # The pool's workers run curation functions only (flows/process_pool.py): the flow records their work.
    servers, workers = _run_watching(tmp_path, tmp_path / "pool", "--workers", "2")
    assert len(servers) == 1, f"Prefect servers started during the run: {servers}"
    assert len(workers) == 2, workers

    single, _ = _run_watching(tmp_path, tmp_path / "single", "--workers", "1")
    assert len(single) == 1
    assert _fingerprint(tmp_path / "pool") == _fingerprint(tmp_path / "single")


@pytest.mark.e2e
def test_a_local_dask_cluster_run_starts_one_prefect_server(tmp_path):
    _assert_one_server_for_every_worker(*_run_watching(tmp_path, tmp_path / "dask", "--cluster", "local:2"))


def test_a_users_own_prefect_api_is_used_and_no_server_started(tmp_path):
    user_api = "http://127.0.0.1:9/api"  # never contacted: prefect_env only decides where the flows will report
    probe = ("import psutil; from flows.cli_common import prefect_env; prefect_env(False); "
             "import os; from prefect.settings import get_current_settings; "
             "print(os.environ['PREFECT_API_URL'], get_current_settings().api.url); "
             "print(sum('uvicorn' in ' '.join(p.cmdline()) for p in psutil.Process().children(recursive=True)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**_env(tmp_path), "PREFECT_API_URL": user_api})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [user_api, user_api, "0"]
