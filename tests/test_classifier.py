"""The fastText quality classifier: training, metadata, verified loading, the filter step and the CLI."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from typer.testing import CliRunner

from curation import classifier as clf
from curation.classifier import (
    ClassifierError,
    QualityModel,
    TextSource,
    binary_metrics,
    model_dir,
    preprocess,
    roc_auc,
    train_quality_classifier,
)
from curation.record import conform
from curation.steps.quality_classifier import QualityClassifier
from curation.store import VersionStore
from flows.cli_classifier import classifier_app

# Small and fast for tests: a tiny model trains and quantizes in well under a second.
FAST = {"dim": 16, "bucket": 5_000, "epoch": 10, "quantize_cutoff": 2_000}

SUBJECTS = ["the farmer", "a young teacher", "the old captain", "my neighbour", "the river", "a quiet student",
            "the committee", "her brother", "the small village", "an engineer", "the doctor", "our guide"]
VERBS = ["walked slowly towards", "carefully described", "often remembered", "quietly repaired", "visited",
         "wrote a letter about", "looked for", "spoke warmly about", "painted", "explained"]
OBJECTS = ["the market in the morning", "an old bridge near the mill", "the history of the town",
           "a broken wooden gate", "the northern hills", "the books in the library", "a garden full of roses",
           "the harbour at dusk", "the lessons of the winter", "a long road through the forest"]
CLAUSES = ["because the weather had changed", "although nobody had asked", "before the sun went down",
           "while the children were asleep", "after the long journey", "as the bells began to ring",
           "since it was the first day of spring", "when the rain finally stopped"]

SPAM = ["buy", "cheap", "best", "price", "discount", "free", "shipping", "casino", "viagra", "loans", "online",
        "deal", "sale", "click", "win", "bonus", "crypto", "offer", "now", "limited"]
BOILER = ["Home", "About us", "Contact", "Privacy Policy", "Terms of Use", "Cookie settings", "Log in",
          "Sign up", "Subscribe to our newsletter", "All rights reserved", "Share on Facebook", "Tweet",
          "Back to top", "Related posts", "Read more", "Skip to content", "Accept all cookies", "Menu"]


def good_doc(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(3, 7)):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(CLAUSES)}."
        sentences.append(s[0].upper() + s[1:])
    return " ".join(sentences)


def bad_doc(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:  # keyword spam
        return " ".join(rng.choice(SPAM) for _ in range(rng.randint(20, 60)))
    if kind == 1:  # boilerplate / navigation lines
        return "\n".join(rng.choice(BOILER) + (f" | {rng.choice(BOILER)}" if rng.random() < 0.5 else "")
                         for _ in range(rng.randint(5, 15))) + f"\n© {rng.randint(2000, 2025)}"
    words = " ".join(rng.sample(SUBJECTS + VERBS + OBJECTS, 8)).split()  # word salad
    rng.shuffle(words)
    return " ".join(words)


def write_corpus(root: Path, n: int = 300, seed: int = 1) -> tuple[Path, Path]:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    good = write_jsonl(root / "good.jsonl", [{"id": f"g{i}", "text": good_doc(rng)} for i in range(n)]
                       + [b"{not json", {"id": "missing"}])  # lines that are not records are skipped
    bad = write_jsonl(root / "bad.jsonl", [{"id": f"b{i}", "text": bad_doc(rng)} for i in range(n)])
    return good, bad


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    good, bad = write_corpus(root / "corpus")
    info = train_quality_classifier([str(good)], [TextSource.parse(str(bad))], root / "model", seed=0,
                                   holdout=0.2, **FAST)
    return root, good, bad, info


def test_train_separates_classes_and_records_metadata(trained):
    root, good, bad, info = trained
    m = info.metrics
    assert m["roc_auc"] > 0.9 and m["f1"] > 0.8
    assert m["n_hq"] == m["n_lq"] == 60  # 20% of 300 per class, balanced
    meta = json.loads((root / "model" / "classifier.json").read_text())
    assert meta["model_file"] == "model.ftz" and (root / "model" / "model.ftz").is_file()
    assert meta["sha256"] == clf.file_sha256(root / "model" / "model.ftz")
    assert meta["size_bytes"] == (root / "model" / "model.ftz").stat().st_size
    pos, neg = meta["sources"]["positive"], meta["sources"]["negative"]
    assert pos[0]["kind"] == "path" and pos[0]["files"][0]["path"] == str(good)
    assert pos[0]["files"][0]["sha256"] == clf.file_sha256(good)
    assert neg[0]["files"][0]["sha256"] == clf.file_sha256(bad)
    assert pos[0]["docs_read"] == 300 and pos[0]["docs_train"] == 240 and pos[0]["docs_heldout"] == 60
    assert meta["counts"] == {"available": {"hq": 300, "lq": 300}, "train": {"hq": 240, "lq": 240},
                              "heldout": {"hq": 60, "lq": 60}}
    assert meta["metrics"]["roc_auc"] == pytest.approx(m["roc_auc"])
    assert meta["params"]["dim"] == 16 and meta["params"]["word_ngrams"] == 2 and meta["params"]["quantize"]
    assert meta["seed"] == 0 and meta["labels"] == {"positive": "__label__hq", "negative": "__label__lq"}
    assert meta["fasttext_version"] and meta["created_at"] and meta["preprocessing"]["max_words"] == 5000
    assert "heldout_metrics_unquantized" in meta
    assert not list(root.glob(".model*"))  # no staging leftovers


def test_same_seed_same_model_and_existing_dir_is_refused(trained, tmp_path):
    root, good, bad, info = trained
    again = train_quality_classifier([str(good)], [str(bad)], tmp_path / "again", seed=0, holdout=0.2, **FAST)
    assert again.sha256 == info.sha256  # thread=1: reproducible
    with pytest.raises(ClassifierError, match="already holds a classifier"):
        train_quality_classifier([str(good)], [str(bad)], tmp_path / "again", **FAST)
    replaced = train_quality_classifier([str(good)], [str(bad)], tmp_path / "again", seed=1, holdout=0.2,
                                        overwrite=True, quantize=False, **FAST)
    assert replaced.model_file == "model.bin" and sorted(p.name for p in (tmp_path / "again").iterdir()) == [
        "classifier.json", "model.bin"]


def test_small_models_train_reliably(tmp_path):
    """fasttext-modern leaves most of a small input matrix uninitialised (see curation.classifier); without
    the zeroed allocations nearly every run of this tiny model fails with NaN or differs from the last."""
    write_jsonl(tmp_path / "g.jsonl", [{"text": f"the cat sat on the mat {i % 3}"} for i in range(20)])
    write_jsonl(tmp_path / "b.jsonl", [{"text": f"buy cheap pills now {i % 3}"} for i in range(20)])
    shas = set()
    for i in range(5):
        info = train_quality_classifier([str(tmp_path / "g.jsonl")], [str(tmp_path / "b.jsonl")], tmp_path / f"m{i}",
                                        dim=8, word_ngrams=1, epoch=5, quantize=False)
        assert info.metrics["roc_auc"] == 1.0
        shas.add(info.sha256)
    assert len(shas) == 1


def test_balancing_and_max_docs(tmp_path):
    good, bad = write_corpus(tmp_path, n=120)
    write_jsonl(tmp_path / "more_bad.jsonl", [{"text": f"cheap deal number {i} click now"} for i in range(80)])
    info = train_quality_classifier([str(good)], [str(bad), str(tmp_path / "more_bad.jsonl")], tmp_path / "m",
                                    quantize=False, **FAST)
    assert info.counts["available"] == {"hq": 120, "lq": 200}
    assert info.counts["train"]["hq"] == info.counts["train"]["lq"] == 108  # down-sampled to 120, 10% held out
    capped = train_quality_classifier([str(good)], [str(bad)], tmp_path / "c", max_docs_per_class=50,
                                      quantize=False, **FAST)
    assert capped.counts["available"] == {"hq": 50, "lq": 50}
    assert capped.sources["positive"][0]["docs_read"] == 120


def test_load_verifies_hash_and_names_the_file(trained, tmp_path):
    root, _, _, info = trained
    model = QualityModel.load(root / "model")
    assert QualityModel.load(root / "model" / "model.ftz").sha256 == model.sha256 == info.sha256
    scores = model.score(["The farmer walked slowly towards the market in the morning before the sun went down.",
                          "buy cheap casino bonus free shipping click now win offer deal sale", "", None])
    assert scores.shape == (4,) and scores[0] > 0.5 > scores[1] and scores[2] == scores[3] == 0.0
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root / "model", copy)
    with open(copy / "model.ftz", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ClassifierError, match=r"model\.ftz: sha256 .* does not match .*classifier\.json"):
        QualityModel.load(copy)
    (copy / "model.ftz").unlink()
    with pytest.raises(ClassifierError, match=r"model\.ftz: model file missing"):
        QualityModel.load(copy)
    (copy / "classifier.json").unlink()
    with pytest.raises(ClassifierError, match=r"classifier\.json: metadata file missing"):
        QualityModel.load(copy)
    with pytest.raises(ClassifierError, match="no such classifier"):
        QualityModel.load(tmp_path / "nowhere")


def _batch(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.large_string())})


def test_step_scores_filters_and_annotates(trained):
    root, *_ = trained
    rng = random.Random(99)
    texts = [good_doc(rng) for _ in range(20)] + [bad_doc(rng) for _ in range(20)]
    step = QualityClassifier(model=str(root / "model"), min_score=0.5)
    out = step.apply(_batch(texts))
    assert out.kept.num_rows + out.rejected.num_rows == 40
    assert out.kept.schema.field("quality_score").type == pa.float32()
    assert all(s >= 0.5 for s in out.kept.column("quality_score").to_pylist())
    kept_ids = set(out.kept.column("id").to_pylist())
    assert len(kept_ids & {f"d{i}" for i in range(20)}) >= 18 and len(kept_ids & {f"d{i}" for i in range(20, 40)}) <= 2
    for score, reason in zip(out.rejected.column("quality_score").to_pylist(),
                             out.rejected.column("reason").to_pylist()):
        assert reason == f"quality_classifier:score={score:.3g}<0.5"
    assert all(r.startswith("quality_classifier:score=") for r in out.rejected.column("reason").to_pylist())

    annotate = QualityClassifier(model=str(root / "model"), mode="annotate").apply(_batch(texts))
    assert annotate.kept.num_rows == 40 and annotate.rejected.num_rows == 0
    filtered = dict(zip(out.kept.column("id").to_pylist() + out.rejected.column("id").to_pylist(),
                        out.kept.column("quality_score").to_pylist()
                        + out.rejected.column("quality_score").to_pylist()))
    assert dict(zip(annotate.kept.column("id").to_pylist(), annotate.kept.column("quality_score").to_pylist())) \
        == filtered  # same scores, every row kept
    assert annotate.counters == {"would_reject:quality_classifier:score": out.rejected.num_rows}
    assert annotate.kept.column("quality_classifier__score").to_pylist() == \
        annotate.kept.column("quality_score").to_pylist()  # the signal column that threshold views read
    assert "quality_classifier__score" not in out.kept.column_names

    empty = step.apply(_batch([]))
    assert empty.kept.num_rows == 0 and "quality_score" in empty.kept.column_names


def test_step_pickles_without_the_model_and_reuses_the_cache(trained):
    root, *_ = trained
    step = QualityClassifier(model=str(root / "model"), min_score=0.7)
    step.apply(_batch(["warm the cache"]))
    blob = pickle.dumps(step)
    assert len(blob) < 2_000  # the fastText model is not in it
    clone = pickle.loads(blob)
    assert clone.params == step.params
    texts = ["The doctor explained the history of the town while the children were asleep.", "free casino bonus"]
    np.testing.assert_array_equal(clone.apply(_batch(texts)).kept.column("id").to_pylist(), ["d0"])
    assert clf.cached_model(root / "model") is clf.cached_model(str(root / "model" / "model.ftz"))


def _apply_in_worker(step: QualityClassifier, texts: list[str]) -> list[float]:
    return step.apply(_batch(texts)).kept.column("quality_score").to_pylist()


def test_step_runs_in_a_fresh_worker_process(trained):
    root, *_ = trained
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    step = QualityClassifier(model=str(root / "model"), mode="annotate")
    texts = ["The doctor explained the history of the town while the children were asleep.", "free casino bonus"]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        remote = pool.submit(_apply_in_worker, step, texts).result()
    assert remote == step.apply(_batch(texts)).kept.column("quality_score").to_pylist()


def test_step_params_are_validated():
    with pytest.raises(ValueError):
        QualityClassifier(model="m", min_score=1.5)
    with pytest.raises(ValueError):
        QualityClassifier(model="m", min_scor=0.5)


def _publish(store: VersionStore, name: str, texts: list[str]) -> None:
    staging = store.begin(name)
    n = len(texts)
    table = conform(pa.table({"id": [f"{name}:{i}" for i in range(n)], "text": texts, "source": [name] * n,
                              "origin": ["human"] * n, "generation": [0] * n, "generator": [None] * n}))
    with store.fs.open(staging.sub("data", "part-00000.parquet"), "wb") as handle:
        pq.write_table(table, handle)
    store.publish(staging, {"parents": [], "steps": [{"name": "ingest", "in": n, "kept": n, "rejected": 0,
                                                      "rejected_by_reason": {}}]})


def test_train_from_store_versions(tmp_path):
    store = VersionStore(tmp_path / "store")
    rng = random.Random(5)
    _publish(store, "good-v1", [good_doc(rng) for _ in range(150)])
    _, bad = write_corpus(tmp_path / "corpus", n=150)
    out = model_dir(store, "q1")
    assert out == Path(store.root) / "models" / "quality" / "q1"
    info = train_quality_classifier(["version:good-v1"], [str(bad)], out, store=store, **FAST)
    assert info.metrics["roc_auc"] > 0.9
    src = info.sources["positive"][0]
    assert src["kind"] == "version" and src["name"] == "good-v1" and src["rows"] == 150
    assert src["fingerprint"] == store.manifest("good-v1")["fingerprint"]
    assert QualityModel.load(out).sha256 == info.sha256
    with pytest.raises(ClassifierError, match="no store was given"):
        train_quality_classifier(["version:good-v1"], [str(bad)], tmp_path / "x", **FAST)
    with pytest.raises(Exception, match="no version 'nope'"):
        train_quality_classifier(["version:nope"], [str(bad)], tmp_path / "y", store=store, **FAST)


def test_source_parsing_and_unreadable_sources(tmp_path):
    assert TextSource.parse("version:demo") == TextSource("version", "demo")
    assert TextSource.parse("data/*.jsonl") == TextSource("path", "data/*.jsonl")
    assert str(TextSource.parse("version:demo")) == "version:demo"
    with pytest.raises(ClassifierError, match="needs a version name"):
        TextSource.parse("version:")
    with pytest.raises(ClassifierError, match="does not exist"):
        train_quality_classifier([str(tmp_path / "missing.jsonl")], [str(tmp_path / "m2.jsonl")], tmp_path / "o")
    (tmp_path / "txt").mkdir()
    for i in range(3):
        (tmp_path / "txt" / f"{i}.txt").write_text(f"Document number {i}\n\nwith two paragraphs.")
    assert len(list(TextSource.parse(str(tmp_path / "txt")).texts())) == 3  # a folder of text files
    with pytest.raises(ClassifierError, match="need at least 2"):
        write_jsonl(tmp_path / "one.jsonl", [{"text": "only one"}])
        train_quality_classifier([str(tmp_path / "one.jsonl")], [str(tmp_path / "txt")], tmp_path / "o", **FAST)


def test_preprocess_and_metrics():
    assert preprocess("Hello\n\n  WORLD\tagain") == "hello world again"
    assert preprocess(" ".join(["w"] * 6000)).count("w") == 5000
    assert preprocess("x __label__hq y") == "x _label_hq y"  # a document cannot inject a label
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 1)  # many ties
    labels = rng.random(200) < 0.4
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[labels] for n in scores[~labels]]
    assert roc_auc(scores, labels) == pytest.approx(np.mean(pairs))
    assert roc_auc([0.1, 0.2], [True, True]) is None
    m = binary_metrics(np.array([0.9, 0.8, 0.3, 0.6, 0.1]), np.array([True, True, True, False, False]))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of 6 (hq, lq) pairs ranked right


def test_cli_train_and_score(tmp_path):
    good, bad = write_corpus(tmp_path / "corpus", n=150)
    store = tmp_path / "store"
    runner = CliRunner()
    result = runner.invoke(classifier_app, ["train", "--positive", str(good), "--negative", str(bad), "--name", "q",
                                            "--store", str(store), "--seed", "3", "--max-docs", "120",
                                            "--dim", "16", "--no-quantize"])
    assert result.exit_code == 0, result.output
    for word in ("precision", "recall", "F1", "ROC AUC", "model size", "model.bin"):
        assert word in result.output
    meta = json.loads((store / "models" / "quality" / "q" / "classifier.json").read_text())
    assert meta["seed"] == 3 and meta["counts"]["available"] == {"hq": 120, "lq": 120}
    result = runner.invoke(classifier_app, ["score", "q", "The farmer visited the old bridge near the mill.",
                                            "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert 0.0 <= float(result.output.strip()) <= 1.0
    result = runner.invoke(classifier_app, ["score", str(store / "models" / "quality" / "q"), "a", "b c"],
                           env={"CURATE_STORE": str(store)})
    assert result.exit_code == 0 and len(result.output.strip().splitlines()) == 2
    result = runner.invoke(classifier_app, ["score", "nope", "text", "--store", str(store)])
    assert result.exit_code == 2 and "no such classifier" in result.output
    result = runner.invoke(classifier_app, ["train", "-p", str(good), "-N", str(bad), "-n", "q", "-s", str(store)])
    assert result.exit_code == 2 and "already holds a classifier" in result.output



def test_keep_top_percent_is_a_corpus_wide_cut_whatever_the_sharding(trained, tmp_path, prefect_harness):
    from curation.recipe import parse_recipe
    from flows.curate import run_curation

    root, good, bad, info = trained
    rng = random.Random(5)
    rows = [{"id": f"m{i}", "text": good_doc(rng) if i % 3 else bad_doc(rng)} for i in range(120)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    kept = {}
    for shard_mb in (64.0, 0.004):  # one shard, then many
        recipe = parse_recipe({"inputs": [{"path": str(path)}], "shard_size_mb": shard_mb,
                               "steps": [{"step": "normalize"},
                                         {"step": "quality_classifier", "model": str(root / "model"),
                                          "keep_top_percent": 25}]})
        manifest = run_curation(recipe, str(tmp_path / "store"), f"top-{shard_mb}", workers=1)
        assert manifest["accounting"]["ok"]
        data_parts = [f for f in manifest["files"] if f["kind"] == "data"]
        assert (len(data_parts) > 1) == (shard_mb < 1)
        table = VersionStore(tmp_path / "store").read_table(f"top-{shard_mb}", columns=["id", "quality_score"])
        kept[shard_mb] = set(table.column("id").to_pylist())
        assert len(kept[shard_mb]) == pytest.approx(30, abs=2)  # 25 % of 120, up to ties
        reasons = VersionStore(tmp_path / "store").read_table(f"top-{shard_mb}", "rejects").column("reason")
        assert all(r.startswith("quality_classifier:score=") for r in reasons.to_pylist())
    assert kept[64.0] == kept[0.004]
