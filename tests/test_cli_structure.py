"""The command line's structure as a user and a reader meet it: the flows' modules import one another without a
cycle, `curate` starts without Prefect, torch or pyarrow, an option left out takes the config dataclass's
default (each default has one home), and a missing version is one line naming it and how to list the versions."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import publish_rows

from curation.store import VersionStore
from flows import ablate as ablate_flow
from flows import cli_ablate, cli_train
from training.ablation import AblationError, AblationSpec
from training.config import DEFAULT_VOCAB_SIZE
from training.trainer import TrainConfig

FLOWS = Path(__file__).resolve().parent.parent / "flows"
CLI = str(Path(sys.executable).with_name("curate"))


def _imports_of(path: Path) -> set[str]:
    """The flows modules a module imports, wherever the import statement is (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.removeprefix("flows.") for n in names if n.startswith("flows.")}
    return found


def test_the_flows_modules_import_one_another_without_a_cycle():
    modules = {p.stem for p in FLOWS.glob("*.py")}
    graph = {m: _imports_of(FLOWS / f"{m}.py") & modules for m in modules}

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        for imported in sorted(graph[module]):
            if imported in path:
                return path[path.index(imported):] + [imported]
            found = cycle_from(imported, [*path, imported])
            if found:
                return found
        return None

    cycles = [c for m in sorted(modules) if (c := cycle_from(m, [m]))]
    assert not cycles, " -> ".join(cycles[0])


def test_the_cli_starts_without_prefect_torch_or_pyarrow():
    # Prefect must wait until `route_logs` and `prefect_env` have set its environment; torch, pyarrow and the
    # step registry would cost every start (even `curate --help`) seconds. Of training/, only the torch-free
    # configuration (the options' defaults) is read.
    probe = ("import sys, flows.cli; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('prefect', 'torch', 'pyarrow', 'numpy', 'transformers', 'curation', 'training'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["training", "training.config"]


@pytest.mark.parametrize("command", ["show", "stats", "report", "train"])
def test_a_missing_version_is_one_line_naming_it_and_how_to_list_them(tmp_path, command):
    store = VersionStore(tmp_path / "store")
    publish_rows(store, "there", [("web", "a document with a few words")])
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "CURATE_LOG_DIR": str(tmp_path / "logs")}
    result = subprocess.run([CLI, command, "nope", "--store", store.url], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"error: no version 'nope' in {store.url} (`curate versions --store {store.url}` lists them)"]


def test_train_options_left_out_take_the_trainers_defaults(tmp_path, monkeypatch):
    store = VersionStore(tmp_path / "store")
    publish_rows(store, "v", [("web", "a document with a few words")])
    calls = []
    monkeypatch.setattr(cli_train, "train_version", lambda *args, **kwargs: calls.append((args, kwargs)))
    cli_train.train_command("v", store.url)
    cli_train.train_command("v", store.url, learning_rate=1e-3, vocab_size=512, block_size=32)
    (_, _, default), options = calls[0]
    assert default == TrainConfig() and options["vocab_size"] == DEFAULT_VOCAB_SIZE
    (_, _, given), options = calls[1]
    assert given == TrainConfig(learning_rate=1e-3, model={"block_size": 32}) and options["vocab_size"] == 512


def test_ablate_options_left_out_take_the_ablation_specs_defaults(tmp_path, monkeypatch):
    store = VersionStore(tmp_path / "store")
    publish_rows(store, "a", [("web", "a document with a few words")])
    publish_rows(store, "b", [("web", "another document with a few words")])
    calls = []

    def stop(store_url: str, versions: list[str], spec: AblationSpec, name: str, **kwargs) -> None:
        calls.append((spec, kwargs))
        raise AblationError("stopped by the test")

    monkeypatch.setattr(ablate_flow, "run_ablation", stop)
    monkeypatch.setattr(cli_ablate, "prefect_env", lambda verbose: None)
    for options in ({}, {"learning_rate": 1e-3, "seeds": 2, "vocab_size": 512}):
        with pytest.raises(typer.Exit):
            cli_ablate.ablate(["a", "b"], store.url, **options)
    (default, kwargs), (given, given_kwargs) = calls
    assert default == AblationSpec() and kwargs["vocab_size"] == DEFAULT_VOCAB_SIZE
    assert given == AblationSpec(learning_rate=1e-3, seeds=(0, 1)) and given_kwargs["vocab_size"] == 512


def test_a_missing_checkpoint_is_one_error_line_on_stderr(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "CURATE_LOG_DIR": str(tmp_path / "logs")}
    missing = tmp_path / "checkpoint.pt"
    result = subprocess.run([CLI, "generate", str(missing), "Once"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"error: {missing}: no such checkpoint (`curate train` writes <run>/checkpoint.pt)"]
