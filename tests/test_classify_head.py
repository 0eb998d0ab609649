"""The "gpt" quality-classifier backend: pooling, head-only training, separation, the saved folder, the
quality_classifier step with it, and its errors (tiny CPU models, seconds each)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_jsonl
from test_classifier import bad_doc, good_doc
from typer.testing import CliRunner

from curation import classifier as clf
from curation.classifier import ClassifierError, cached_model, labelled_data, load_classifier, read_info
from curation.steps.quality_classifier import QualityClassifier
from curation.store import VersionStore
from flows.cli_classifier import classifier_app
from training.classify import GPTClassifier, GPTQualityModel, encode, pad, train_gpt_classifier
from training.model import GPT, GPTConfig
from training.pretrained import BaseModelError, load_base
from training.tokenizer import train_tokenizer
from training.trainer import TrainConfig, save_checkpoint

TINY = {"block_size": 64, "n_layer": 1, "n_head": 2, "n_embd": 32}
FAST = {"epochs": 4, "lr": 3e-3, "batch_size": 16}  # a tiny randomly initialised base learns in seconds


def write_base(folder: Path, texts: list[str]) -> Path:
    """A randomly initialised GPT checkpoint with its tokenizer, as `curate train` writes one."""
    tok = train_tokenizer(texts, folder, vocab_size=400)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY))
    save_checkpoint(folder / "checkpoint.pt", model, torch.optim.AdamW(model.parameters()), 0, TrainConfig(), {})
    return folder / "checkpoint.pt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("head")
    rng = random.Random(1)
    good = [good_doc(rng) for _ in range(120)]
    bad = [bad_doc(rng) for _ in range(120)]
    good_file = write_jsonl(root / "good.jsonl", [{"id": f"g{i}", "text": t} for i, t in enumerate(good)])
    bad_file = write_jsonl(root / "bad.jsonl", [{"id": f"b{i}", "text": t} for i, t in enumerate(bad)])
    return root, write_base(root / "base", good + bad), good_file, bad_file


@pytest.fixture(scope="module")
def trained(corpus):
    root, base, good, bad = corpus
    info = train_gpt_classifier([str(good)], [str(bad)], root / "gpt-last", base=base, pooling="last", seed=0,
                                holdout=0.2, **FAST)
    return root, info


def test_pooling_reads_real_tokens_only_so_padding_changes_no_score(corpus):
    root, base, *_ = corpus
    loaded = load_base(base)
    rows = encode(loaded.tokenizer, ["A short one.", "free casino bonus now " * 5, "The farmer walked home."], 64)
    for pooling in ("last", "mean"):
        torch.manual_seed(0)
        model = GPTClassifier(loaded.model.config, pooling).eval()
        with torch.no_grad():
            batched = model(*pad(rows, loaded.tokenizer.eot_id))
            alone = torch.cat([model(*pad([row], loaded.tokenizer.eot_id)) for row in rows])
            torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
            hidden = model.body.hidden_states(torch.tensor([rows[0]]))[0]
            expected = hidden[-1] if pooling == "last" else hidden.mean(dim=0)
            torch.testing.assert_close(model.pooled(*pad(rows, 0))[0], expected, rtol=0, atol=1e-5)
    assert len(rows[1]) > len(rows[0]) and rows[0][0] == loaded.tokenizer.eot_id


def test_head_only_training_leaves_the_body_bit_identical(corpus, tmp_path):
    root, base, good, bad = corpus
    info = train_gpt_classifier([str(good)], [str(bad)], tmp_path / "head", base=base, head_only=True,
                                pooling="mean", epochs=2, max_docs_per_class=60)
    saved = GPTQualityModel.load(tmp_path / "head").model
    body = load_base(base).model.state_dict()
    for name, tensor in saved.body.state_dict().items():
        assert torch.equal(tensor, body[name]), name
    assert not torch.equal(saved.head.weight, GPTClassifier(saved.body.config).head.weight)  # the head trained
    assert info.params["head_only"] and info.params["lr"] == 1e-3  # the head-only default


def test_a_tiny_model_separates_planted_classes_and_records_its_provenance(trained, corpus):
    root, info = trained
    _, base, good, bad = corpus
    assert info.metrics["roc_auc"] > 0.9 and info.metrics["n_hq"] == info.metrics["n_lq"] == 24
    meta = json.loads((root / "gpt-last" / "classifier.json").read_text())
    assert meta["backend"] == "gpt" and meta["pooling"] == "last" and meta["model_file"] == "model.safetensors"
    assert meta["base"] == {"kind": "checkpoint", "path": str(base), "sha256": clf.file_sha256(base)}
    assert meta["counts"]["heldout"] == {"hq": 24, "lq": 24}
    assert meta["sources"]["positive"][0]["files"][0]["sha256"] == clf.file_sha256(good)
    assert (root / "gpt-last" / "tokenizer.json").read_bytes() == (base.parent / "tokenizer.json").read_bytes()
    assert not list(root.glob(".gpt-last*"))  # no staging leftovers


def test_the_saved_folder_scores_the_held_out_documents_as_recorded(trained, corpus):
    root, info = trained
    _, _, good, bad = corpus
    data = labelled_data([str(good)], [str(bad)], lambda text: text[:8 * 64] if text.strip() else "", seed=0,
                         holdout=0.2)  # the split and cut train_gpt_classifier made
    model = load_classifier(root / "gpt-last")
    assert isinstance(model, GPTQualityModel)
    again = clf.binary_metrics(model.score(data.test_texts), data.test_labels)
    assert again == pytest.approx(info.metrics)
    assert model.score(["", None]).tolist() == [0.0, 0.0]  # nothing to score, as with fastText
    assert np.array_equal(GPTQualityModel.load(root / "gpt-last" / "model.safetensors").score(data.test_texts[:5]),
                          model.score(data.test_texts[:5]))


def test_the_quality_classifier_step_filters_with_a_gpt_classifier_in_a_recipe_run(trained, tmp_path,
                                                                                  prefect_harness):
    from curation.recipe import parse_recipe
    from flows.curate import run_curation

    root, _ = trained
    rng = random.Random(7)
    rows = [{"id": f"m{i}", "text": good_doc(rng) if i % 2 else bad_doc(rng)} for i in range(40)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    recipe = parse_recipe({"inputs": [{"path": str(path)}],
                           "steps": [{"step": "quality_classifier", "model": str(root / "gpt-last")}]})
    manifest = run_curation(recipe, str(tmp_path / "store"), "v1", workers=1)
    assert manifest["accounting"]["ok"]
    store = VersionStore(tmp_path / "store")
    kept = store.read_table("v1", columns=["id", "quality_score"])
    odd = sum(int(i[1:]) % 2 for i in kept.column("id").to_pylist())
    assert odd >= 0.9 * kept.num_rows and kept.num_rows >= 15  # mostly the good (odd) documents stay
    assert min(kept.column("quality_score").to_pylist()) >= 0.5
    reasons = store.read_table("v1", "rejects").column("reason").to_pylist()
    assert reasons and all(r.startswith("quality_classifier:score=") for r in reasons)


def _one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_missing_backend_or_a_damaged_folder_is_a_one_line_error(trained, tmp_path, monkeypatch):
    root, _ = trained
    folder = tmp_path / "copy"
    folder.mkdir()
    for file in (root / "gpt-last").iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    monkeypatch.delitem(clf._BACKENDS, "gpt")
    with pytest.raises(ClassifierError) as exc:
        load_classifier(folder)
    _one_line(exc, str(folder / "classifier.json"), "'gpt' is not registered", "import training.classify")
    with pytest.raises(ValueError, match="^model: .*'gpt' is not registered") as exc:  # a recipe fails before work
        QualityClassifier(model=str(folder)).preflight("")
    _one_line(exc)
    monkeypatch.undo()

    meta = json.loads((folder / "classifier.json").read_text())
    (folder / "classifier.json").write_text(json.dumps({**meta, "backend": "xgboost"}))
    with pytest.raises(ClassifierError) as exc:
        load_classifier(folder)
    _one_line(exc, str(folder), "'xgboost' is not registered", "fasttext", "gpt")

    (folder / "classifier.json").write_text(json.dumps({**meta, "pooling": "max"}))
    with pytest.raises(ClassifierError) as exc:
        load_classifier(folder)
    _one_line(exc, str(folder / "classifier.json"), "pooling")

    (folder / "classifier.json").write_text(json.dumps(meta))
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ClassifierError) as exc:
        load_classifier(folder)
    _one_line(exc, str(folder / "tokenizer.json"))

    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ClassifierError) as exc:
        load_classifier(folder)
    _one_line(exc, str(folder / "model.safetensors"), "sha256")

    with pytest.raises(BaseModelError) as exc:
        load_base(tmp_path / "nowhere")
    _one_line(exc, str(tmp_path / "nowhere"), "no such base model")


def test_the_model_cache_keys_on_the_backend(trained, tmp_path, monkeypatch):
    root, _ = trained
    first = cached_model(root / "gpt-last")
    assert cached_model(root / "gpt-last") is first
    meta = json.loads((root / "gpt-last" / "classifier.json").read_text())
    other = tmp_path / "same-file-other-backend"
    other.mkdir()
    (other / "classifier.json").write_text(json.dumps({**meta, "backend": "echo"}))
    (other / "model.safetensors").symlink_to(root / "gpt-last" / "model.safetensors")

    class Echo:
        def __init__(self, folder: Path) -> None:
            self.info = read_info(folder)

        def score(self, texts):
            return np.full(len(texts), 0.25)

    monkeypatch.setitem(clf._BACKENDS, "echo", Echo)
    assert cached_model(other).score(["x"]).tolist() == [0.25]  # same model file and sha256, another backend


def test_cli_trains_a_gpt_head_and_scores_with_it(corpus, tmp_path):
    root, base, good, bad = corpus
    store = tmp_path / "store"
    runner = CliRunner()
    result = runner.invoke(classifier_app, ["train", "-n", "head", "-p", str(good), "-N", str(bad), "-s", str(store),
                                            "--backend", "gpt", "--base", str(base.parent), "--pooling", "mean",
                                            "--epochs", "1", "--head-only", "--max-docs", "40"])
    assert result.exit_code == 0, result.output
    for word in ("ROC AUC", "model.safetensors", "epoch 1/1 (head only)"):
        assert word in result.output
    meta = json.loads((store / "models" / "quality" / "head" / "classifier.json").read_text())
    assert meta["pooling"] == "mean" and meta["params"]["epochs"] == 1 and meta["params"]["head_only"]
    result = runner.invoke(classifier_app, ["score", "head", "The farmer visited the mill.", "-s", str(store)])
    assert result.exit_code == 0 and 0.0 <= float(result.output.strip()) <= 1.0, result.output
    result = runner.invoke(classifier_app, ["train", "-n", "x", "-p", str(good), "-N", str(bad), "-s", str(store),
                                            "--backend", "gpt"])
    assert result.exit_code == 2 and "--backend gpt needs --base" in result.output
    result = runner.invoke(classifier_app, ["train", "-n", "x", "-p", str(good), "-N", str(bad), "-s", str(store),
                                            "--head-only"])
    assert result.exit_code == 2 and "--head-only: not an option of the fasttext backend" in result.output


@pytest.mark.e2e
def test_the_curation_flows_worker_modules_register_the_gpt_backend(trained):
    """A worker process imports flows/curate.py to run a shard task; that alone must make gpt folders load."""
    root, _ = trained
    code = ("import flows.curate\nfrom curation.classifier import load_classifier\n"
            f"print(load_classifier({str(root / 'gpt-last')!r}).score(['The farmer walked home.'])[0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert 0.0 <= float(done.stdout.strip()) <= 1.0
