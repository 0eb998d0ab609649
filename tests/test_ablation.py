"""Ablations on real text: runs found again in the store, a planted defect that must come out worse with
an interval that excludes zero, identical content that must come out as no effect, and a recipe's stage
waterfall through the CLI, the Prefect flow and its process pool."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from conftest import publish_rows

from curation.demo import build_demo_corpus
from curation.evalsets import register_evalset
from curation.store import VersionStore
from training.ablation import BETTER, NO_EFFECT, WORSE, AblationSpec
from training.runs import RESULT_FILE, train_version
from training.tokenizer import tokenizer_for_version
from training.trainer import TrainConfig

EVALSET = "held"
JUNK_SHARE = 0.3  # the planted defect: 30 % of documents replaced by junk


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def shuffled_words(text: str, rng: random.Random) -> str:
    """The document's own words in a random order: the same unigrams, no language left."""
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    """Human text installed everywhere (stdlib docstrings, KJV chapters), its held-out evaluation set, and
    versions: clean, junk (30 % of documents word-shuffled), and clean's content under another name."""
    root = tmp_path_factory.mktemp("ablation")
    corpus = build_demo_corpus(root / "corpus", seed=0, scale=0.15)
    rows = [(path.name.split(".")[0], r["text"]) for path in corpus.inputs[:2] for r in _jsonl(path)]
    ids = [f"doc-{i}" for i in range(len(rows))]
    store = VersionStore(root / "store")
    register_evalset(store, EVALSET, [str(p) for p in corpus.heldout_files])
    publish_rows(store, "clean", rows, ids)
    rng = random.Random(0)
    junk = set(rng.sample(range(len(rows)), round(JUNK_SHARE * len(rows))))
    publish_rows(store, "junk", [(s, shuffled_words(t, rng) if i in junk else t) for i, (s, t) in enumerate(rows)],
                 ids)
    publish_rows(store, "clean-copy", rows, ids)
    return store


TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}


def test_a_run_is_found_again_by_content_and_config(human):
    store = human
    tok = tokenizer_for_version(store, "clean", 512)
    cfg = TrainConfig(model=TINY, tokens=12 * 8 * 32, batch_size=8, eval_every=6, eval_tokens=256, seed=1)
    first = train_version(store, "clean", cfg, tok, [EVALSET], log=lambda *_: None)
    again = train_version(store, "clean", cfg, tok, [EVALSET], log=lambda *_: None)
    renamed = train_version(store, "clean-copy", cfg, tok, [EVALSET], log=lambda *_: None)  # same fingerprint
    assert not first.cached and again.cached and renamed.cached
    assert again.final_eval == first.final_eval == renamed.final_eval and again.dir == first.dir
    assert set(first.final_eval) == {EVALSET, f"{EVALSET}/stdlib_docs", f"{EVALSET}/kjv"}
    other = train_version(store, "clean", TrainConfig(**{**cfg.to_dict(), "learning_rate": 1e-3}), tok, [EVALSET],
                          log=lambda *_: None)
    assert not other.cached and other.dir != first.dir

    # A run that crashed after its last checkpoint but before result.json resumes and still measures.
    (Path(first.dir) / RESULT_FILE).unlink()
    resumed = train_version(store, "clean", cfg, tok, [EVALSET], log=lambda *_: None)
    assert not resumed.cached
    assert resumed.final_eval[EVALSET]["loss"] == pytest.approx(first.final_eval[EVALSET]["loss"], rel=1e-6)


@pytest.mark.e2e
def test_planted_junk_comes_out_worse_and_identical_content_as_no_effect(human, prefect_harness):
    from flows.ablate import run_ablation

    store = human
    spec = AblationSpec(tokens=200 * 8 * 64, seeds=(0, 1, 2), batch_size=8, block_size=64, eval_tokens=4096)
    result = run_ablation(store.url, ["clean", "junk", "clean-copy"], spec, "planted", vocab_size=1024,
                          eval_sets=[EVALSET], parallel=2)
    comparisons = result["analysis"]["comparisons"]
    junk = comparisons["junk"][EVALSET]["loss"]
    assert junk["verdict"] == WORSE and junk["ci_low"] > 0, junk
    assert all(d > 0 for d in junk["deltas"])
    twin = comparisons["clean-copy"][EVALSET]["loss"]
    assert twin["verdict"] == NO_EFFECT and twin["identical"] and twin["deltas"] == [0.0, 0.0, 0.0]
    assert result["ranking"][-1] == "junk"
    assert any("same content as clean" in w for w in result["warnings"])
    # Per domain: both held-out sources are measured; the word-shuffled text hurts each of them.
    assert set(comparisons["junk"]) == {EVALSET, f"{EVALSET}/stdlib_docs", f"{EVALSET}/kjv"}
    assert comparisons["junk"][f"{EVALSET}/kjv"]["loss"]["mean"] > 0
    # Stored beside the versions, with the report, its twin and the curves.
    folder = Path(store.root, "ablations", "planted")
    saved = json.loads((folder / "ablation.json").read_text())
    assert saved["analysis"]["comparisons"]["junk"][EVALSET]["loss"]["verdict"] == WORSE
    page = (folder / "report.html").read_text()
    assert "junk" in page and "worse" in page and page.count("data:image/png;base64,") >= 2
    assert (folder / "curves.png").stat().st_size > 5000
    assert json.loads((folder / "report.json").read_text())["plots"][:1] == ["forest"]
    # and as Prefect artifacts of the flow run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["curate-ablation-planted-table", "curate-ablation-planted-summary"]
    with get_client(sync_client=True) as client:
        found = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=keys)))}
    assert set(found) == set(keys)
    assert "worse" in str(found[keys[0]].data) and "Ablation `planted`" in found[keys[1]].data

    # Asked again with one version fewer: every run is found in the store, nothing is trained.
    again = run_ablation(store.url, ["clean", "junk"], spec, "planted-again", vocab_size=1024, eval_sets=[EVALSET],
                         parallel=2)
    assert all(r["cached"] for r in again["runs"])
    assert again["analysis"]["comparisons"]["junk"][EVALSET]["loss"]["deltas"] == junk["deltas"]


@pytest.mark.e2e
def test_calibration_then_an_effect_size_warning(human, prefect_harness):
    from flows.ablate import run_ablation

    store = human
    spec = AblationSpec(tokens=20 * 8 * 64, seeds=(0, 1, 2, 3), batch_size=8, block_size=64, eval_tokens=2048)
    calibration = run_ablation(store.url, ["clean"], spec, "noise", vocab_size=1024, eval_sets=[EVALSET],
                               calibrate=True, effect=0.001, parallel=1)
    noise = calibration["noise"]
    assert noise["runs"]["n"] == 4 and noise["sd_single_run"] > 0
    assert noise["seeds_needed"] is None or noise["seeds_needed"] > 4
    assert Path(calibration["paths"]["calibration"]).exists()
    ablation = run_ablation(store.url, ["clean", "junk"], AblationSpec(**{**spec.to_dict(), "seeds": (0, 1)}), "small",
                            vocab_size=1024, eval_sets=[EVALSET], effect=0.001, parallel=1)
    assert ablation["noise"]["calibration"]["version"] == "clean"
    assert any("detect effects of about" in w and "not 0.001" in w for w in ablation["warnings"])


@pytest.mark.e2e
def test_steps_publish_each_stage_and_draw_a_waterfall(human, tmp_path, prefect_harness, capsys):
    from flows.cli_ablate import ablate  # what `curate ablate --steps` runs (the demo runs it through the CLI)

    store = human
    corpus = next(Path(store.root).parent.glob("corpus"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""name: stages
inputs:
  - {{path: {corpus / 'stdlib_docs.jsonl'}}}
  - {{path: {corpus / 'web_crawl.jsonl'}}}
steps:
  - {{step: normalize, stage: raw}}
  - {{step: length_filter, min_chars: 200, min_words: 30, max_chars: 200000}}
  - {{step: gopher_repetition}}
  - {{step: exact_dedup}}
""")
    options = dict(steps=recipe, tokens=20 * 8 * 64, seeds=2, batch_size=8, block_size=64, vocab_size=1024,
                   eval_set=[EVALSET], workers=1, parallel=1)
    result = ablate([], store.url, **options)
    out = capsys.readouterr().out
    assert "publishing stages.1-filter" in out and "waterfall" in out
    rows = result["waterfall"]
    assert [r["label"] for r in rows] == ["raw", "filter", "dedup"]
    assert [r["stage"] for r in rows] == ["stages.0-raw", "stages.1-filter", "stages.2-dedup"]
    assert rows[1]["steps"] == ["length_filter", "gopher_repetition"]
    assert sum(r["step"]["mean"] for r in rows[1:]) == pytest.approx(rows[-1]["cumulative"]["mean"])
    assert all(r["step"]["verdict"] in (BETTER, WORSE, NO_EFFECT) for r in rows[1:])
    assert VersionStore(store.url).manifest("stages.2-dedup")["parents"] == ["stages.1-filter"]
    # Every stage's removals are shown beside its loss change.
    assert [d["b"] for d in result["diffs"]] == ["stages.1-filter", "stages.2-dedup"]
    assert result["diffs"][0]["removed"] > 0 and result["diffs"][0]["top_reasons"][0]["step"] in (
        "length_filter", "gopher_repetition")
    assert Path(result["paths"]["result"]).exists()

    # Again: the stage versions are found by recipe content and every run in the store.
    again = ablate([], store.url, **options)
    assert "publishing" not in capsys.readouterr().out and all(r["cached"] for r in again["runs"])
    assert again["waterfall"][1]["step"]["deltas"] == rows[1]["step"]["deltas"]
