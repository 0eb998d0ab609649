"""The command line as a user meets it: an error is one line and exit status 2 (the traceback in a log file,
or on the terminal with --debug), and nothing a command starts outlives it, even after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import write_jsonl

CLI = str(Path(sys.executable).with_name("curate"))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "CURATE_LOG_DIR": str(tmp_path / "logs"),
           "COLUMNS": "200", **extra}
    env.pop("CURATE_DEBUG", None)
    return env


def _recipe(tmp_path: Path, steps: list[dict], docs: int = 3) -> Path:
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": f"document {i} " + "with some words " * 20}
                                        for i in range(docs)])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"inputs": [{"path": "in.jsonl"}], "steps": steps}))
    return path


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_a_missing_resource_is_one_line_and_exit_2_before_any_work(tmp_path):
    recipe = _recipe(tmp_path, [{"step": "decontaminate", "evalsets": ["heldout"]}])
    store = tmp_path / "store"
    result = subprocess.run([CLI, "run", str(recipe), "--store", str(store), "--name", "v"], capture_output=True,
                            text=True, env=_env(tmp_path), timeout=300)
    assert result.returncode == 2
    assert _error_lines(result.stderr) == [
        f"error: steps[0] (decontaminate): evalsets: no evaluation set 'heldout' in {store} (register one with "
        "`curate evalset register`; `curate evalset list` shows those there are)"]
    assert not (store / ".staging").exists() or not any((store / ".staging").iterdir())  # no work was started


@pytest.fixture
def corrupt_classifier(tmp_path: Path) -> Path:
    """A classifier folder whose model file does not match its recorded checksum: found at load, fails in a worker."""
    folder = tmp_path / "hq"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"not a model")
    (folder / "classifier.json").write_text(json.dumps({"model_file": "model.bin", "sha256": "0" * 64}))
    return folder


@pytest.mark.e2e
def test_a_failing_step_is_one_line_naming_it_with_the_traceback_in_the_log(tmp_path, corrupt_classifier,
                                                                             prefect_harness):
    from prefect.settings import PREFECT_API_URL

    recipe = _recipe(tmp_path, [{"step": "quality_classifier", "model": "hq"}])
    env = _env(tmp_path, PREFECT_API_URL=PREFECT_API_URL.value())
    args = ["run", str(recipe), "--store", str(tmp_path / "store"), "--name", "v", "--workers", "1"]
    result = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: step 'quality_classifier' failed on shard ")
    assert "ClassifierError" in lines[0] and "rerun the same command to resume" in lines[0]
    logs = sorted((tmp_path / "logs").glob("curate-*.log"))
    assert len(logs) == 1 and f"details: {logs[0]}" in lines[0]
    assert "Traceback (most recent call last)" in logs[0].read_text()
    assert "Traceback" not in result.stdout

    debug = subprocess.run([CLI, "--debug", *args], capture_output=True, text=True, env=env, timeout=300)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert "details:" not in debug.stderr


def test_an_unexpected_error_is_one_line_too(tmp_path):
    store = tmp_path / "store"
    (store / "versions" / "v").mkdir(parents=True)
    (store / "versions" / "v" / "manifest.json").write_text("{not json")
    result = subprocess.run([CLI, "show", "v", "--store", str(store)], capture_output=True, text=True,
                            env=_env(tmp_path), timeout=120)
    assert result.returncode == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    logs = list((tmp_path / "logs").glob("curate-*.log"))
    assert logs and "Traceback" in logs[0].read_text() and f"details: {logs[0]}" in lines[0]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.e2e
def test_nothing_the_cli_started_outlives_a_kill_9(tmp_path):
    recipe = _recipe(tmp_path, [{"step": "gopher_repetition"}], docs=40_000)
    env = _env(tmp_path)
    env.pop("PREFECT_API_URL", None)  # the CLI's own temporary Prefect server, as a user gets it
    cli = subprocess.Popen([CLI, "run", str(recipe), "--store", str(tmp_path / "store"), "--name", "v"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    command = psutil.Process(cli.pid)
    deadline = time.monotonic() + 240
    started: list[psutil.Process] = []
    while not any("uvicorn" in " ".join(p.cmdline()) for p in started if _alive(p)):
        assert cli.poll() is None and time.monotonic() < deadline, "the run ended before its server was seen"
        try:
            started = command.children(recursive=True)
        except psutil.Error:
            started = []
        time.sleep(0.2)
    started = command.children(recursive=True)  # the server, the watchdog, workers if any by now
    os.kill(cli.pid, signal.SIGKILL)
    assert cli.wait(timeout=30) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in started):
        assert time.monotonic() < deadline, [" ".join(p.cmdline()) for p in started if _alive(p)]
        time.sleep(0.2)
