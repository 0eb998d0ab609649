"""Model-collapse guards on crafted data with known verdicts, and the gate in the curation flow."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import write_jsonl
from test_synth_parts import tiny_gpt

from curation.evalsets import register_evalset
from curation.guards import GuardConfig, GuardError, compute_guards, version_guards
from curation.recipe import parse_recipe
from curation.store import VersionStore

VOCAB = [f"w{i}" for i in range(4000)]


def zipf_docs(n: int, seed: int, words: int = 150, top: int | None = None) -> list[str]:
    """Documents whose words follow Zipf's law over VOCAB (human-like frequencies); `top` keeps only the
    most frequent words (a model that has lost the tail)."""
    rng = np.random.default_rng(seed)
    size = top or len(VOCAB)
    p = 1.0 / np.arange(1, size + 1)
    p /= p.sum()
    return [" ".join(VOCAB[i] for i in rng.choice(size, words, p=p)) + "." for _ in range(n)]


def table(texts: list[str], origin: str = "human", generation: int = 0, source: str = "web",
          prefix: str = "d") -> pa.Table:
    n = len(texts)
    return pa.table({"id": [f"{prefix}{i}" for i in range(n)], "text": texts, "source": [source] * n,
                     "origin": [origin] * n, "generation": pa.array([generation] * n, pa.int32())})


def verdicts(report: dict) -> dict[str, bool | None]:
    return {g["name"]: g["passed"] for g in report["guards"]}


def test_provenance_guards():
    human, synthetic = table(["one two three four"] * 4), table(["five six"] * 10, "synthetic", 1, "gen", "s")
    report = compute_guards([human, synthetic], GuardConfig())
    fraction = next(g for g in report["guards"] if g["name"] == "synthetic_fraction")
    assert fraction["value"] == pytest.approx(20 / 36, abs=1e-4) and fraction["passed"] is False
    assert report["synthetic_by_source"]["gen"]["synthetic_fraction"] == 1.0
    assert report["hard_failures"] == ["synthetic_fraction"] and not report["passed"]
    # An instruction set is synthetic by design: reported, not capped.
    assert verdicts(compute_guards([human, synthetic], GuardConfig(mix="instruction")))["synthetic_fraction"] is None
    deep = compute_guards([human, table(["x y"], "synthetic", 2, prefix="z")], GuardConfig())
    assert verdicts(deep)["lineage_depth"] is False and deep["generation_histogram"] == {"0": 4, "2": 1}
    # Accumulate, do not replace: the parent's human records must be present or removed with a reason.
    parent_ids = {"d0", "d1", "d2", "d3", "gone"}
    few = table(["x y"], "synthetic", 1, prefix="z")
    kept = compute_guards([human, few], GuardConfig(max_synthetic_fraction=None), parent="p",
                          parent_human_ids=parent_ids)
    assert verdicts(kept)["parent_human_kept"] is False  # "gone" vanished without a reason
    excused = compute_guards([human, few], GuardConfig(), parent="p", parent_human_ids=parent_ids,
                             excused_ids={"gone"})
    assert verdicts(excused)["parent_human_kept"] is True
    # An all-human version (new documents only, say) replaces nothing with generated text: not applied.
    assert verdicts(compute_guards([human], GuardConfig(), parent="p", parent_human_ids=parent_ids))[
        "parent_human_kept"] is None
    replaced = compute_guards([synthetic], GuardConfig(), parent="p", parent_human_ids=parent_ids)
    assert next(g for g in replaced["guards"] if g["name"] == "parent_human_kept")["value"] == 0.0


def test_distribution_guards_pass_human_text_and_fail_a_collapsed_or_repetitive_one():
    reference = zipf_docs(400, seed=0)
    config = GuardConfig(sample_words=20_000)

    def check(texts: list[str]) -> dict[str, bool | None]:
        return verdicts(compute_guards([table(texts)], config, reference_name="ref", reference_texts=reference))

    human = check(zipf_docs(200, seed=1))
    assert all(human[n] for n in ("unigram_js", "bigram_js", "tail_coverage", "tail_mass", "distinct_2",
                                  "near_dup_cliff")), human
    assert human["perplexity_spread"] is None  # no reference model: not measured
    collapsed = check(zipf_docs(200, seed=2, top=25))  # only the 25 most frequent words are left
    assert collapsed["tail_mass"] is False and collapsed["tail_coverage"] is False
    assert collapsed["unigram_js"] is False and collapsed["distinct_2"] is False
    rng = np.random.default_rng(3)
    base = zipf_docs(5, seed=4)
    flood = [" ".join(w if rng.random() > 0.05 else "edit" for w in base[i % 5].split()) for i in range(200)]
    assert check(flood)["near_dup_cliff"] is False  # paraphrases of five documents


def test_a_zero_near_duplicate_floor_is_refused_when_the_recipe_is_read():
    """The floor divides the version's duplicates: zero would crash the run at its end, on a reference without
    duplicates, instead of failing when the recipe is read."""
    with pytest.raises(ValueError, match="near_dup_floor"):
        GuardConfig(near_dup_floor=0)


def test_the_perplexity_guard_scores_with_the_callable_it_is_given():
    reference = [" ".join(["w"] * n) for n in range(10, 90)]  # log-perplexities 10..89 under the scorer below
    config = GuardConfig(sample_words=1000)
    scored_texts = []

    def words(texts: list[str]) -> list[float]:  # a stand-in model: the log-perplexity of a text is its length
        scored_texts.extend(texts)
        return [float(len(t.split())) for t in texts]

    def spread(texts: list[str]) -> dict:
        report = compute_guards([table(texts)], config, reference_texts=reference, perplexity=words)
        return next(g for g in report["guards"] if g["name"] == "perplexity_spread")

    inside = spread([" ".join(["w"] * n) for n in range(20, 80)])
    assert inside["value"] == 0.0 and inside["passed"] is True
    outside = spread([" ".join(["w"] * 300)] * 20)  # every document far above the reference's 95th percentile
    assert outside["value"] == 1.0 and outside["passed"] is False and "1.00 above" in outside["detail"]
    assert " ".join(["w"] * 300) in scored_texts
    with pytest.raises(ValueError, match=r"reference_model = 'ckpt.pt' is set but no perplexity scorer"):
        compute_guards([table(reference)], GuardConfig(reference_model="ckpt.pt"), reference_texts=reference)


def test_the_projects_gpt_scores_perplexity_for_the_guards(tmp_path):
    from flows.gpt import perplexity_scorer

    assert perplexity_scorer(None) is None
    scorer = perplexity_scorer(tiny_gpt(tmp_path))
    texts = ["the river ran past old stone walls " * 8, "old stone walls and green fields " * 8,
             "green fields under a grey sky", "sky"]
    scores = scorer(texts)
    assert len(scores) == 3 and all(np.isfinite(scores))  # "sky" is one token: too short to score
    assert scorer(texts[1:2])[0] == pytest.approx(scores[1], abs=1e-5)  # a text's score is its own, batched or not
    with pytest.raises(FileNotFoundError, match="no such GPT checkpoint"):
        perplexity_scorer(tmp_path / "nope.pt")


def test_curation_imports_neither_training_nor_flows():
    """The library stays usable without the model code and the orchestration: imports point one way, including
    those inside functions."""
    root = Path(__file__).resolve().parents[1]
    offending = []
    for path in sorted((root / "curation").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            offending += [f"{path.relative_to(root)}:{node.lineno} {m}" for m in modules
                          if m.split(".")[0] in ("training", "flows")]
    assert offending == []


@pytest.mark.e2e
def test_the_gate_refuses_a_failing_version_and_an_override_is_recorded(tmp_path, prefect_harness):
    from flows.curate import run_curation

    store = VersionStore(tmp_path / "store")
    rows = [{"id": f"h{i}", "text": text} for i, text in enumerate(zipf_docs(20, seed=5))]
    rows += [{"id": f"s{i}", "text": text, "origin": "synthetic", "generation": 1, "generator": "m"}
             for i, text in enumerate(zipf_docs(40, seed=6))]
    write_jsonl(tmp_path / "mix.jsonl", rows)
    register_evalset(store, "ref", [str(write_jsonl(tmp_path / "ref.jsonl", [{"text": t} for t in zipf_docs(60, 7)]))])
    recipe = parse_recipe({"inputs": [{"path": str(tmp_path / "mix.jsonl")}], "steps": []})
    with pytest.raises(GuardError, match=r"synthetic_fraction = 0\.6\d* \(threshold <= 0\.5"):
        run_curation(recipe, store.url, "mix", workers=1)
    assert not store.exists("mix") and not list((tmp_path / "store" / ".staging").glob("mix.lock"))
    manifest = run_curation(recipe, store.url, "mix", workers=1, override_guards="a measured 2:1 mix")
    assert manifest["resumed"]["shard_tasks"] == manifest["resumed"]["of_shard_tasks"] > 0  # the override redid nothing
    assert manifest["guard_override"] == {"reason": "a measured 2:1 mix", "overridden": ["synthetic_fraction"]}
    assert manifest["guards"]["reference"]["name"] == "ref"
    # A recipe may allow more, with the same data.
    looser = parse_recipe({"inputs": [{"path": str(tmp_path / "mix.jsonl")}],
                           "guards": {"max_synthetic_fraction": 0.7}})
    assert run_curation(looser, store.url, "mix-ok", workers=1)["guards"]["passed"]
    assert version_guards(store, "mix-ok", GuardConfig())["hard_failures"] == ["synthetic_fraction"]
