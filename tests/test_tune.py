"""`curate tune`: the candidates a recipe yields, the halving schedule and the time budget (fast, no training), and
a tiny search on real text with a planted harmful rule that the winner must switch off, confirmed with seeds the
search never trained, written as a recipe that reproduces the winning version, and resumed without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.demo import build_demo_corpus
from curation.evalsets import register_evalset
from curation.recipe import RecipeError, load_recipe, parse_recipe
from curation.store import VersionStore
from curation.tuning import (
    AS_WRITTEN,
    CALIBRATED,
    CONFIRM_SEED_BASE,
    OFF,
    PAPER,
    PER_RULE,
    UNSCOPED,
    USER,
    Candidate,
    TuneError,
    baseline_recipe,
    candidates,
    confirm_seeds,
    fit_budget,
    frontier,
    halving,
    plain_recipe,
    recipe_text,
    training_runs,
)

EVALSET = "held"


def _recipe(tmp_path: Path, extra: str = "") -> Path:
    for name in ("web.jsonl", "docs.jsonl"):
        (tmp_path / name).write_text('{"id": "1", "text": "a few words of text"}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text(f"""name: r
inputs:
  - {{path: web.jsonl, source: web}}
  - {{path: docs.jsonl, source: docs}}
calibrate: {{reference: [source:docs], keep: 0.98}}
steps:
  - {{step: normalize, stage: raw}}
  - {{step: decontaminate, stage: raw, evalsets: [{EVALSET}]}}
  - {{step: length_filter, min_chars: 200, sources: [web]}}
  - {{step: gopher_quality, sources: [web]}}
  - {{step: decontaminate, name: late_decontaminate, evalsets: [{EVALSET}]}}
  - {{step: exact_dedup}}
{extra}""")
    return path


def test_candidates_vary_the_recipe_one_factor_at_a_time(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, """tune:
  - {name: looser, set: {length_filter: {min_chars: 50}}, calibrate: null}
  - {name: no-gopher, drop: [gopher_quality]}
"""))
    found = candidates(recipe)
    assert [(c.kind, c.label) for c in found] == [
        (AS_WRITTEN, "as written"), (PAPER, "paper bounds (no calibration)"), (USER, "tune: looser"),
        # `no-gopher` has the content of `without gopher_quality`: listed once, under the user's name
        (USER, "tune: no-gopher"), (OFF, "without length_filter"),
        (UNSCOPED, "unscoped (every step on every source)"),
        # keep 0.98 is the recipe as written: left out
        (CALIBRATED, "calibrated, keep 0.9"), (CALIBRATED, "calibrated, keep 0.95"),
        (CALIBRATED, "calibrated, keep 0.995")]
    by_label = {c.label: c.recipe for c in found}
    assert by_label["as written"].content_hash() == recipe.content_hash()
    looser = by_label["tune: looser"]
    assert looser.calibrate is None and looser.steps[2].params["min_chars"] == 50
    assert looser.steps[2].sources == ["web"]  # what the patch does not set stays
    assert all(s.scope.everywhere for s in by_label["unscoped (every step on every source)"].steps)
    assert by_label["calibrated, keep 0.9"].calibrate.keep == 0.9
    # Decontamination is never switched off (the loss would be flattered), nor is the baseline (`stage: raw`).
    assert not any("decontaminate" in c.label for c in found)
    assert all(c.recipe.steps[:2] == recipe.steps[:2] for c in found)
    assert baseline_recipe(recipe).content_hash() == recipe.prefix(2).content_hash()
    # Keys name versions: unique and safe.
    assert len({c.key for c in found}) == len(found) and all(c.key[0] == "c" for c in found)
    # Per rule: each calibratable filter alone at each keep, after the rest.
    per_rule = [c for c in candidates(recipe, per_rule=True) if c.kind == PER_RULE]
    assert [c.label for c in per_rule][:2] == ["length_filter calibrated, keep 0.9",
                                               "length_filter calibrated, keep 0.95"]


def test_a_recipe_without_calibration_gets_calibrated_candidates_only_from_a_reference(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    plain = parse_recipe({**recipe.model_dump(mode="json", exclude={"tune"}), "calibrate": None}, recipe.base)
    assert {c.kind for c in candidates(plain)} == {AS_WRITTEN, OFF, UNSCOPED}
    given = candidates(plain, reference=["source:docs"])
    assert [c.recipe.calibrate.reference for c in given if c.kind == CALIBRATED] == [["source:docs"]] * 4


def test_the_tune_block_is_checked_and_does_not_change_the_recipe_hash(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    tuned = load_recipe(_recipe(tmp_path, "tune:\n  - {name: x, drop: [gopher_quality]}\n"))
    assert tuned.content_hash() == recipe.content_hash()
    with pytest.raises(RecipeError, match=r"tune\[0\] \(x\): drop: no step named 'nope'; the recipe's steps: "):
        load_recipe(_recipe(tmp_path, "tune:\n  - {name: x, drop: [nope]}\n"))
    with pytest.raises(RecipeError, match=r"tune\[0\] \(x\): set: normalize belong\(s\) to the baseline"):
        load_recipe(_recipe(tmp_path, "tune:\n  - {name: x, set: {normalize: {form: NFC}}}\n"))
    with pytest.raises(RecipeError, match=r"candidate name 'x' is used twice"):
        load_recipe(_recipe(tmp_path, "tune:\n  - {name: x, drop: [exact_dedup]}\n  - {name: x}\n"))
    with pytest.raises(RecipeError, match=r"unknown key 'tune\[0\]\.remove'; valid keys: name, drop, set, calibrate"):
        load_recipe(_recipe(tmp_path, "tune:\n  - {name: x, remove: [exact_dedup]}\n"))
    bad = load_recipe(_recipe(tmp_path, "tune:\n  - {name: x, set: {length_filter: {min_chars: -5}}}\n"))
    with pytest.raises(RecipeError, match=r"tune\[0\] \(x\).*min_chars = -5"):
        candidates(bad)


def test_halving_keeps_the_better_half_and_doubles_the_seeds():
    rounds = halving(13, 2)
    assert [(r.candidates, len(r.seeds), r.keep) for r in rounds] == [(13, 2, 7), (7, 4, 4), (4, 8, 2)]
    assert [(r.candidates, r.keep) for r in halving(2, 2)] == [(2, 2)]  # ranked once, both finalists
    # Round 1 trains 2 seeds of 13 candidates and the baseline, round 2 two more seeds of 7, round 3 four more of 4;
    # the confirmation 3 fresh seeds of the baseline and both finalists.
    assert training_runs(rounds, 3) == 14 * 2 + 8 * 2 + 5 * 4 + 3 * 3
    assert set(confirm_seeds(3)).isdisjoint(s for r in rounds for s in r.seeds)
    assert confirm_seeds(2) == (CONFIRM_SEED_BASE, CONFIRM_SEED_BASE + 1)
    with pytest.raises(TuneError, match="past the confirmation's seeds"):
        halving(4096, 2)


def test_the_budget_leaves_candidates_out_from_the_end_and_says_which(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    found = [Candidate(f"c{i}", f"candidate {i}", OFF, recipe) for i in range(6)]
    everything, estimate = fit_budget(found, set(), None, 60, 30, 2, 3)
    assert len(everything) == 6 and estimate.left_out == []
    seconds = estimate.seconds
    fitted, trimmed = fit_budget(found, set(), seconds - 1, 60, 30, 2, 3)
    assert 2 <= len(fitted) < 6 and trimmed.seconds <= seconds - 1
    assert trimmed.left_out == [c.label for c in found[len(fitted):]]
    assert "left out to fit the budget: " + ", ".join(trimmed.left_out) in trimmed.describe()
    smallest, over = fit_budget(found, {"c0", "c1"}, 1, 60, 30, 2, 3)  # never fewer than two; published: no curation
    assert [c.key for c in smallest] == ["c0", "c1"] and over.curation_runs == 0 and over.seconds > 1


def test_the_frontier_is_what_no_other_beats_on_both_axes():
    points = {"a": (100, 0.0), "b": (90, -0.1), "c": (80, -0.05), "d": (50, -0.3), "e": (100, 0.2)}
    assert frontier(points) == ["a", "b", "d"]


def test_the_winner_file_is_a_plain_recipe_that_runs_from_anywhere(tmp_path):
    (tmp_path / "labels.jsonl").write_text("")
    recipe = load_recipe(_recipe(tmp_path, "labels: labels.jsonl\n"))
    body = plain_recipe(recipe)
    assert "calibrate" not in body and "tune" not in body
    assert body["inputs"][0] == {"path": str(tmp_path / "web.jsonl"), "source": "web"}
    assert body["labels"] == str(tmp_path / "labels.jsonl")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "winner.yaml").write_text(recipe_text(body, ["the header", "", "of the file"]))
    assert (moved / "winner.yaml").read_text().startswith("# the header\n#\n# of the file\nname: r\n")
    again = load_recipe(moved / "winner.yaml")
    assert [s.model_dump(exclude={"calibrate"}) for s in again.steps] == \
        [s.model_dump(exclude={"calibrate"}) for s in recipe.steps]
    assert [again.resolve(i.path) for i in again.inputs] == [recipe.resolve(i.path) for i in recipe.inputs]


# ---- a tiny search end to end -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harmful(tmp_path_factory):
    """Installed human text (stdlib docstrings, KJV chapters), its held-out evaluation set, and a recipe whose
    `short_only` rule removes almost every KJV chapter (and many docstrings): planted harm the search must undo."""
    root = tmp_path_factory.mktemp("tune")
    corpus = build_demo_corpus(root / "corpus", seed=0, scale=0.15)
    store = VersionStore(root / "store")
    register_evalset(store, EVALSET, [str(p) for p in corpus.heldout_files])
    recipe = root / "recipe.yaml"
    recipe.write_text(f"""name: harmful
inputs:
  - {{path: {corpus.root / 'stdlib_docs.jsonl'}, source: stdlib_docs}}
  - {{path: {corpus.root / 'kjv.jsonl.gz'}, source: kjv}}
steps:
  - {{step: normalize, stage: raw}}
  - {{step: length_filter, name: short_only, max_chars: 1500}}
  - {{step: gopher_repetition}}
""")
    return store, recipe


# Tiny runs (our choice for a test of the machinery, not of a model): 30 steps of 8 x 64 tokens, 1,024 tokens.
TINY = dict(tokens=30 * 8 * 64, batch_size=8, block_size=64, vocab_size=1024, workers=1, parallel=1,
            seeds_start=2, confirm_seeds=3, eval_set=[EVALSET])


def _runs(store: VersionStore) -> set[Path]:
    return {p.parent for p in Path(store.root, "runs").rglob("result.json")}


@pytest.mark.e2e
def test_tune_switches_off_a_harmful_rule_confirms_it_with_fresh_seeds_and_resumes(harmful, prefect_harness,
                                                                                   capsys, monkeypatch):
    from flows.cli_tune import tune

    store, recipe = harmful
    result = tune(recipe, store.url, name="harm", publish="harmful-tuned", **TINY)
    out = " ".join(capsys.readouterr().out.split())  # as printed, without the terminal's line breaks
    assert "estimate: 3 candidate(s)" in out and "winner: without short_only" in out

    winner = result["winner"]
    assert winner["label"] == "without short_only"
    assert "short_only" not in [s.instance_name for s in load_recipe(winner["recipe_file"]).steps]
    ranked = result["candidates"]
    assert ranked[0]["winner"] and ranked[0]["key"] == winner["key"]
    # The rule costs ~0.08 nats on the held-out set (measured: +0.076 to +0.091 per seed), far beyond the noise.
    assert ranked[0]["search"][EVALSET]["mean"] + 0.03 < min(e["search"][EVALSET]["mean"] for e in ranked[1:])
    # The search's seeds and the confirmation's are disjoint: the verdict is not the selection's.
    searched = {s for r in result["rounds"] for s in r["seeds"]}
    assert searched == {0, 1} and set(result["confirmation"]["seeds"]) == {1000, 1001, 1002}
    confirmation = json.loads(Path(store.root, "ablations", "harm-confirm", "ablation.json").read_text())
    assert {r["seed"] for r in confirmation["runs"]} == {1000, 1001, 1002}
    # The winner drops 5 repetitive documents beyond the baseline: no detectable gain, honestly said; the runner-up
    # still carries the harmful rule, and the confirmation finds it worse.
    assert winner["delta"]["verdict"] in ("better", "no detectable effect")
    runner_up = next(e for e in ranked if e["key"] == result["confirmation"]["finalists"][1])
    assert runner_up["confirmed"][EVALSET]["verdict"] == "worse"
    assert runner_up["confirmed"][EVALSET]["p_adjusted"] is not None
    # The ranked table: per domain, tokens kept, what was removed by reason.
    assert set(ranked[0]["search"]) == {EVALSET, f"{EVALSET}/stdlib_docs", f"{EVALSET}/kjv"}
    as_written = next(e for e in ranked if e["label"] == "as written")
    assert as_written["tokens_share"] < 0.5 < ranked[0]["tokens_share"]
    assert as_written["removed"]["top"][0][0] == "short_only:length_filter:chars"
    # Stored: the result, the report with the frontier, the state, the winner file (which reproduces the version).
    folder = Path(store.root, "tunes", "harm")
    assert json.loads((folder / "tune.json").read_text())["winner"]["key"] == winner["key"]
    assert json.loads((folder / "state.json").read_text())["status"] == "done"
    page = (folder / "report.html").read_text()
    assert "without short_only" in page and "data:image/png;base64," in page
    assert json.loads((folder / "report.json").read_text())["plots"] == ["frontier"]
    assert load_recipe(folder / "winner.yaml").content_hash() == winner["recipe_hash"]
    published = store.manifest("harmful-tuned")
    assert published["recipe_hash"] == winner["recipe_hash"]
    assert published["fingerprint"] == store.manifest(winner["version"])["fingerprint"]
    # and as Prefect artifacts of the flow run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["curate-tune-harm-ranking", "curate-tune-harm-frontier"]
    with get_client(sync_client=True) as client:
        found = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=keys)))}
    assert set(found) == set(keys) and "without short_only" in str(found[keys[0]].data)
    assert "data:image/png;base64," in found[keys[1]].data

    # The same command again: resumed, nothing curated or trained.
    trained = _runs(store)
    again = tune(recipe, store.url, name="harm", publish="harmful-tuned", **TINY)
    out = capsys.readouterr().out
    assert "resuming" in out and "publishing" not in out
    assert _runs(store) == trained and again["winner"]["key"] == winner["key"]
    assert again["winner"]["delta"]["deltas"] == winner["delta"]["deltas"]

    # Interrupted after its search rounds (before the confirmation): the state says how far it got, and the same
    # command resumes, finding every version and run in the store.
    import flows.tune

    def interrupted(store_url, versions, spec, name, **kwargs):
        if name.endswith("-confirm"):
            raise RuntimeError("interrupted")
        return run_ablation(store_url, versions, spec, name, **kwargs)

    run_ablation = flows.tune.run_ablation
    monkeypatch.setattr(flows.tune, "run_ablation", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        tune(recipe, store.url, name="harm-2", **TINY)
    state = json.loads(Path(store.root, "tunes", "harm-2", "state.json").read_text())
    assert state["status"] == "searching" and [r["number"] for r in state["rounds"]] == [1]
    monkeypatch.undo()
    capsys.readouterr()
    resumed = tune(recipe, store.url, name="harm-2", **TINY)
    out = " ".join(capsys.readouterr().out.split())
    assert "resuming (searching, 1 round(s) done before" in out and "publishing" not in out
    assert _runs(store) == trained and resumed["winner"]["key"] == winner["key"]

    # A budget too small for the search: candidates left out from the end, said so.
    small = tune(recipe, store.url, name="harm-small", budget_minutes=0.01, **TINY)
    out = " ".join(capsys.readouterr().out.split())
    assert "left out to fit the budget: without gopher_repetition" in out
    assert [e["label"] for e in small["candidates"]] in (["without short_only", "as written"],
                                                         ["as written", "without short_only"])
    assert any("left out to fit --budget-minutes 0.01" in w for w in small["warnings"])

    # Other settings under the same name: refused, one line.
    import typer

    with pytest.raises(typer.Exit):
        tune(recipe, store.url, name="harm", **{**TINY, "confirm_seeds": 2})
    assert "was started with other settings" in capsys.readouterr().err
