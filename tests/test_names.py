"""Every name a user gives that becomes a path goes through one validator, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from curation.classifier import ClassifierError, model_dir
from curation.evalsets import EvalSetError, evalset_dir
from curation.recipe import parse_recipe
from curation.series import next_increment
from curation.store import StoreError, VersionStore, check_name
from training.ablation import save_result

CLI = str(Path(sys.executable).with_name("curate"))
UNSAFE = ["../../x/pwn", "nl\n", "a/b", "..", "a..b", "x\x00", "tab\tname", "", ".hidden", "-flag", "a" * 129]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_are_refused_for_every_kind_of_name(tmp_path, name):
    store = VersionStore(tmp_path / "store")
    with pytest.raises(StoreError, match="invalid version name"):
        store.version_path(name)
    with pytest.raises(StoreError, match="invalid series name"):
        next_increment(store, name, parse_recipe({"inputs": [{"path": "x.jsonl"}]}))
    with pytest.raises(EvalSetError, match="invalid evaluation set name"):
        evalset_dir(store, name)
    with pytest.raises(ClassifierError, match="invalid classifier name"):
        model_dir(store, name)
    with pytest.raises(StoreError, match="invalid ablation name"):
        save_result(store, {"name": name, "kind": "ablation"})
    assert not any((tmp_path / "x").glob("*")) and sorted(os.listdir(tmp_path)) in ([], ["store"])


@pytest.mark.parametrize("name", ["demo", "demo-raw", "demo.1-quality", "web-0001", "A_b.c-9", "a" * 128])
def test_ordinary_names_pass(name):
    assert check_name(name) == name


@pytest.mark.parametrize("args", [
    ["ablate", "a", "b", "--name", "../../x/pwn"],
    ["collapse-sim", "--name", "../x"],
    ["run", "recipe.yaml", "--name", "nl\n"],
])
def test_the_cli_refuses_an_unsafe_name_before_any_work(tmp_path, args):
    (tmp_path / "in.jsonl").write_text('{"text": "a document with words"}\n')
    (tmp_path / "recipe.yaml").write_text("inputs: [{path: in.jsonl}]\nsteps: []\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "CURATE_LOG_DIR": str(tmp_path / "logs")}
    result = subprocess.run([CLI, *args, "--store", str(tmp_path / "store")], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "name" in lines[0] and "use letters, digits" in lines[0], result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
