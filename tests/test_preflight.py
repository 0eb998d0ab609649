"""What a recipe names outside itself is checked before any work: files when it loads, the store's
evaluation sets and versions when a run starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import publish_rows, write_jsonl

from curation.recipe import RecipeError, load_recipe
from curation.store import VersionStore


def _recipe(tmp_path: Path, steps: list[dict], **extra) -> Path:
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "some words in a document"}])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"inputs": [{"path": "in.jsonl"}], "steps": steps, **extra}))
    return path


@pytest.mark.parametrize("step, key", [
    ({"step": "quality_classifier", "model": "models/hq"}, "model"),
    ({"step": "c4_quality", "bad_words_file": "words.txt"}, "bad_words_file"),
    ({"step": "language_filter", "backend": "fasttext", "model_path": "lid.176.ftz"}, "model_path"),
])
def test_a_missing_file_fails_when_the_recipe_loads_naming_step_key_and_path(tmp_path, step, key):
    path = _recipe(tmp_path, [{"step": "normalize"}, step])
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    resolved = tmp_path.resolve() / step[key]
    assert str(info.value) == (f"{path}: steps[1] ({step['step']}): {key} = {step[key]!r}: no such file or folder "
                               f"({resolved})")


def test_relative_files_are_taken_from_the_recipes_folder_wherever_the_run_starts(tmp_path, monkeypatch):
    (tmp_path / "words.txt").write_text("zebra\n")
    recipe = load_recipe(_recipe(tmp_path, [{"step": "c4_quality", "bad_words_file": "words.txt"}]))
    monkeypatch.chdir("/")
    (_, step), = recipe.build_steps()
    assert step.params.bad_words_file == str(tmp_path.resolve() / "words.txt")
    assert recipe.content_hash() == load_recipe(tmp_path / "recipe.yaml").content_hash()


def test_a_classifier_folder_without_its_model_fails_before_work(tmp_path):
    (tmp_path / "hq").mkdir()
    recipe = load_recipe(_recipe(tmp_path, [{"step": "quality_classifier", "model": "hq"}]))
    with pytest.raises(RecipeError, match=r"steps\[0\] \(quality_classifier\): model: .*metadata file missing"):
        recipe.preflight(str(tmp_path / "store"))


@pytest.mark.parametrize("steps, extra, message", [
    ([{"step": "decontaminate", "evalsets": ["heldout"]}], {},
     "steps[0] (decontaminate): evalsets: no evaluation set 'heldout' in"),
    ([{"step": "normalize"}, {"step": "exact_dedup", "against": ["old", "web-0001"]}], {},
     "steps[1] (exact_dedup): against: no version 'web-0001' in"),
    ([{"step": "minhash_dedup", "against": ["gone"]}], {}, "steps[0] (minhash_dedup): against: no version 'gone' in"),
    ([{"step": "rouge_novelty", "against": ["gone"]}], {}, "steps[0] (rouge_novelty): against: no version 'gone' in"),
    ([], {"guards": {"reference": "human"}}, "guards: reference = 'human': no such evaluation set in"),
    ([], {"guards": {"reference_model": "ckpt.pt"}}, "guards: reference_model = 'ckpt.pt': no such file"),
])
def test_what_the_store_must_hold_is_checked_when_the_run_starts(tmp_path, steps, extra, message):
    store = VersionStore(tmp_path / "store")
    publish_rows(store, "old", [("web", "an earlier document")])
    recipe = load_recipe(_recipe(tmp_path, steps, **extra))
    with pytest.raises(RecipeError) as info:
        recipe.preflight(store.url)
    assert message in str(info.value)
