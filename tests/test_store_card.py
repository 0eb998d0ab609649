"""Every version folder carries a dataset card and loads the way a Hugging Face user loads a folder."""

from __future__ import annotations

import datasets
import pytest
import yaml
from conftest import doc, publish_rows, write_jsonl

from curation import store as store_module
from curation.card import dataset_card
from curation.recipe import parse_recipe
from curation.store import VersionStore
from flows.curate import run_curation


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_a_curated_version_loads_as_a_folder_with_data_and_rejects_apart(tmp_path, prefect_harness):
    rows = [{"id": f"d{i}", "text": doc(i)} for i in range(12)] + [{"id": "short", "text": "too short"}]
    recipe = parse_recipe({"name": "web", "inputs": [{"path": str(write_jsonl(tmp_path / "in.jsonl", rows)),
                                                      "source": "web"}],
                           "steps": [{"step": "length_filter", "min_chars": 30}]})
    manifest = run_curation(recipe, str(tmp_path / "store"), "v1", workers=1)
    store = VersionStore(tmp_path / "store")
    folder = store.version_path("v1")

    data = datasets.load_dataset(folder, split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(data["id"]) == sorted(f"d{i}" for i in range(12)) and "reason" not in data.column_names
    rejects = datasets.load_dataset(folder, "rejects", split="train", cache_dir=str(tmp_path / "hf"))
    assert rejects["id"] == ["short"] and rejects["step"] == ["length_filter"]

    card = (tmp_path / "store" / "versions" / "v1" / "README.md").read_text()
    entry = next(f for f in manifest["files"] if f["path"] == "README.md")
    assert entry["kind"] == "card" and entry["sha256"] == store_module.file_sha256(f"{folder}/README.md", store.fs)
    data_parts = [f"{folder}/{f['path']}" for f in manifest["files"] if f["kind"] == "data"]
    assert manifest["fingerprint"] == store_module.content_fingerprint(store.fs, data_parts)  # records only
    front = front_matter(card)
    assert front["pretty_name"] == "v1" and front["license"] == "unknown"
    assert [c["config_name"] for c in front["configs"]] == ["default", "rejects"]
    assert "| web | 12 |" in card  # the source's records
    assert "| length_filter | 13 | 12 | 1 | length_filter:chars (1) |" in card
    assert "ok. Every step's input" in card and manifest["fingerprint"] in card
    assert "## Statistics" in card and "| documents | 12 |" in card
    assert "At least one input declares no licence" in card and 'load_dataset("path/to/v1", "rejects"' in card


def test_a_version_with_no_rejects_loads_and_says_it_has_none(tmp_path):
    store = VersionStore(tmp_path / "store")
    publish_rows(store, "made", [("gen", "a generated record"), ("gen", "another generated record")])
    folder = store.version_path("made")
    data = datasets.load_dataset(folder, split="train", cache_dir=str(tmp_path / "hf"))
    assert data["text"] == ["a generated record", "another generated record"]
    card = (tmp_path / "store" / "versions" / "made" / "README.md").read_text()
    assert [c["config_name"] for c in front_matter(card)["configs"]] == ["default"]
    assert "no removed records (so no `rejects` config)" in card and "Published without a recipe" in card
    with pytest.raises(ValueError, match="rejects"):
        datasets.load_dataset(folder, "rejects", split="train", cache_dir=str(tmp_path / "hf"))
    assert [f["kind"] for f in store.manifest("made")["files"]] == ["data", "card"]


@pytest.mark.parametrize("licenses, expected", [
    ({"docs": "psf-2.0", "web": "psf-2.0"}, {"license": "psf-2.0"}),
    ({"docs": "psf-2.0", "bible": "public-domain"},
     {"license": "other", "license_name": "mixed", "license_details": "docs: psf-2.0; bible: public-domain"}),
    ({"docs": "psf-2.0", "web": None}, {"license": "unknown"}),
])
def test_the_card_states_the_licences_the_inputs_declare(tmp_path, licenses, expected):
    store = VersionStore(tmp_path / "store")
    publish_rows(store, "made", [("docs", "a record")])
    inputs = [{"path": f"{source}.jsonl", "source": source, **({"license": value} if value else {})}
              for source, value in licenses.items()]
    card = dataset_card({**store.manifest("made"), "recipe": {"inputs": inputs}})
    front = front_matter(card)
    assert {k: front.get(k) for k in expected} == expected
    assert ("license_name" in front) == ("license_name" in expected)
    for source, value in licenses.items():
        assert f"| {source} | {value or 'not declared'} |" in card
