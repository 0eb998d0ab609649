"""Shared fixtures. Prefect settings must be in the environment before Prefect is imported."""

from __future__ import annotations

import os
import tempfile

_PREFECT_HOME = tempfile.mkdtemp(prefix="curate-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves the environment as it found it: a command invoked in-process (typer's CliRunner) sets the
    log file, Prefect's logging configuration or API URL in `os.environ`, and a later test's subprocess would
    inherit them (its log written elsewhere, its Prefect pointed at a server that has stopped)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_jsonl(path: Path, rows: list[dict | bytes | str]) -> Path:
    """Rows as JSON lines; bytes/str rows are written verbatim (for malformed input)."""
    with open(path, "wb") as handle:
        for row in rows:
            if isinstance(row, bytes):
                handle.write(row)
            elif isinstance(row, str):
                handle.write(row.encode())
            else:
                handle.write(json.dumps(row).encode())
            handle.write(b"\n")
    return path


def chromium() -> str:
    """Headless Chromium for the browser checks (CI installs Debian's package; elsewhere they skip)."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    message = "headless Chromium is needed for the browser checks: apt-get install -y chromium"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def curate(*args: str, env: dict[str, str]):
    """The `curate` CLI in a subprocess (the real entry point, its own Prefect server)."""
    import subprocess
    import sys

    cli = Path(sys.executable).with_name("curate")
    return subprocess.run([str(cli), *args], capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`curate demo` once per session (scale 0.1, a short ablation): (store path, env, stdout)."""
    tmp = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "COLUMNS": "160"}
    store = tmp / "store"
    result = curate("demo", "--store", str(store), "--scale", "0.1", "--workers", "2", "--train-tokens", "16384",
                    "--seeds", "3", "--synth-records", "24", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return store, env, result.stdout


def publish_rows(store, name: str, rows: list[tuple[str, str]], ids: list[str] | None = None) -> None:
    """A version published without a curation run: rows of (source, text), ids `<name>-<i>` unless given."""
    import pyarrow as pa

    n = len(rows)
    store.publish_table(name, pa.table({
        "id": ids or [f"{name}-{i}" for i in range(n)], "text": pa.array([t for _, t in rows], pa.large_string()),
        "source": [s for s, _ in rows], "origin": ["human"] * n, "generation": pa.array([0] * n, pa.int32()),
        "generator": pa.array([None] * n, pa.string())}))


def doc(i: int, words: int = 40) -> str:
    """A plausible English document of about `words` words, different for each i."""
    base = ("the river ran past the old mill where people met each morning to trade grain and news "
            "about weather roads prices and the health of their families").split()
    return " ".join(f"{base[(i + k) % len(base)]}" if k % 7 else f"item{i}x{k}" for k in range(words)) + "."


def publish_instructions(store, name: str, rows: list[tuple[str, str, dict]]) -> None:
    """An instruction version as `curate synthesize` publishes one: rows of (schema, task type, record)."""
    import pyarrow as pa

    from curation.synth.schemas import ALPACA, CHAT

    schemas = {"alpaca": ALPACA, "chat": CHAT}
    flat = [schemas[s].flat(r) if s in schemas else {"instruction": None, "input": None, "output": None}
            for s, _, r in rows]
    n = len(rows)
    store.publish_table(name, pa.table({
        "id": [f"{name}-{i}" for i in range(n)],
        "text": [schemas[s].render(r) if s in schemas else json.dumps(r) for s, _, r in rows],
        "source": ["synthetic-grounded"] * n, "origin": ["synthetic"] * n, "generation": pa.array([1] * n, pa.int32()),
        "generator": ["scripted"] * n, "record": [json.dumps(r) for _, _, r in rows],
        **{field: [f[field] for f in flat] for field in ("instruction", "input", "output")},
        "schema": [s for s, _, _ in rows], "task_type": [t for _, t, _ in rows]}))


# A chat record with a system turn and two exchanges, as the fine-tuning and records-ingestion tests use it.
TWO_TURNS = {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Where is the mill?"},
                          {"role": "assistant", "content": "By the river."},
                          {"role": "user", "content": "And the fields?"},
                          {"role": "assistant", "content": "Under a grey sky."}]}


@pytest.fixture(scope="session")
def instruction_tok(tmp_path_factory):
    """A tiny tokenizer of the words, template markers and role markers the instruction tests use."""
    import random

    from training.tokenizer import train_tokenizer

    rng = random.Random(0)
    words = ("the river ran past old stone walls and green fields under a grey sky where people met each "
             "morning at the mill ### Instruction: Input: Response: <|user|> <|assistant|> <|system|>").split()
    texts = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(200)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "t", vocab_size=300)

