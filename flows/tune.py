"""`curate tune`: a loss-guided search for the recipe that helps the model, and an independent check of the pick.

1. The baseline (the recipe's first stage) and the recipe as written are published, or found by recipe content;
   the tokenizer is trained on the baseline and frozen; the baseline's runs with seeds 0 and 1 (the search needs
   them anyway) measure the time of a training run, the recipe's own run the time of a curation run.
2. The estimate is printed; with `budget_minutes`, candidates are left out from the end of their order
   (curation/tuning.py) until the search fits, and the line names them.
3. Every candidate is published (or found) as a version whose parent is the baseline; candidates with the same
   content as an earlier one (or the baseline) are searched once.
4. Successive halving: round 1 ablates every candidate against the baseline with `seeds_start` seeds, paired by
   seed; the better half by mean Δloss goes on with twice the seeds (the earlier seeds' runs are found in the
   store), until two are left. Every run has the same tokenizer, token budget and evaluation sets.
5. Confirmation: the two finalists against the baseline with fresh seeds (`CONFIRM_SEED_BASE` and up, never trained
   by the search), Holm-adjusted as one family. The winner is the search's best, chosen before the confirmation,
   and its verdict is the confirmation's alone: the search's own numbers are biased by the choice.
6. `<store>/tunes/<name>/`: tune.json, report.html (and its JSON twin) with the ranked table and the frontier,
   winner.yaml (the winning recipe as it ran, its bounds written out), state.json; Prefect artifacts of the ranking
   and the frontier; with `publish`, winner.yaml run as a new version.

An interrupted search resumes when the same command runs again: versions are found by recipe content and
training runs by their key (a half-trained run from its checkpoint); state.json says how far it got, and a
rerun with other settings under the same name is refused instead of mixing two searches.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from curation import tuning
from curation.calibration import bound_text, calibrate
from curation.evalsets import evaluation_sets, read_info
from curation.recipe import Recipe, load_recipe, parse_recipe
from curation.reportkit import plain, write_report
from curation.store import VersionStore, check_name, write_json, write_text
from flows.ablate import plan_workers, publish_or_find, run_ablation, train_run_task, versions_by_recipe
from flows.cli_common import printer
from flows.curate import artifact_key, run_curation
from training.ablation import WORSE, AblationError, AblationSpec
from training.config import DEFAULT_VOCAB_SIZE, TUNE_CONFIRM_SEEDS, TUNE_SEEDS_START
from training.tokenizer import tokenizer_for_version
from training.tune_report import frontier_markdown, summary_rows, tune_report

TUNES_DIR = "tunes"
STATE_FILE = "state.json"
RESULT_FILE = "tune.json"
WINNER_FILE = "winner.yaml"


def tune_settings(recipe: Recipe, spec: AblationSpec, *, seeds_start: int, confirm: int, eval_sets: list[str],
                  vocab_size: int, reference: list[str] | None, per_rule: bool) -> dict[str, Any]:
    """What decides a search's numbers (not the time budget, which only decides how much of it runs)."""
    return {"recipe_hash": recipe.content_hash(),
            "tune": [p.model_dump(mode="json", by_alias=True) for p in recipe.tune or []],
            "spec": {k: v for k, v in asdict(spec).items() if k != "seeds"}, "vocab_size": vocab_size,
            "eval_sets": eval_sets, "seeds_start": seeds_start, "confirm_seeds": confirm,
            "reference": reference or None, "per_rule": per_rule}


def default_name(recipe_path: Path, recipe: Recipe, settings: dict[str, Any]) -> str:
    """The recipe's name and a digest of the settings: the same command finds its search again, other settings
    make another one."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{recipe.name or recipe_path.stem}-tune-{digest}"


@flow(name="tune", log_prints=True)
def tune_flow(recipe_path: str, store_url: str, name: str, spec: AblationSpec, *,
              seeds_start: int = TUNE_SEEDS_START, confirm: int = TUNE_CONFIRM_SEEDS,
              eval_sets: list[str] | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
              reference: list[str] | None = None, per_rule: bool = False, budget_minutes: float | None = None,
              publish: str | None = None, workers: int | None = None, parallel: int | None = None,
              show_progress: bool = False) -> dict[str, Any]:
    """Search the candidates of the recipe at `recipe_path`, confirm the winner, write `<store>/tunes/<name>/`."""
    started = time.perf_counter()
    say = printer(show_progress)
    store = VersionStore(store_url)
    check_name(name, "tune")
    recipe = load_recipe(recipe_path)
    found = tuning.candidates(recipe, reference, per_rule=per_rule)
    names = evaluation_sets(store, eval_sets)
    if not names:
        raise AblationError("no evaluation set is registered (`curate evalset register`): a search compares losses "
                            "on frozen held-out text")
    settings = tune_settings(recipe, spec, seeds_start=seeds_start, confirm=confirm, eval_sets=names,
                             vocab_size=vocab_size, reference=reference, per_rule=per_rule)
    folder = f"{store.root}/{TUNES_DIR}/{name}"
    state = _start_state(store, folder, name, settings, say)
    tuning.halving(len(found), seeds_start)  # a search too long for its seeds fails here, before any work
    say(f"tune {name}: {len(found)} candidate(s) of {recipe_path}, evaluated on {', '.join(names)}; "
        f"{spec.preset}, {spec.tokens or 'Chinchilla'} tokens per run")
    if tuning.reference_of(recipe, reference) is None:
        say("  no calibrated candidates: the recipe calibrates nothing and --reference names no trusted text")

    by_hash = versions_by_recipe(store)
    published = {c.key for c in found if c.recipe.content_hash() in by_hash}
    base_recipe = tuning.baseline_recipe(recipe)
    steps = ", ".join(s.instance_name for s in base_recipe.steps) or "ingestion only"
    baseline = publish_or_find(base_recipe, store.url, f"{name}.baseline", by_hash, f"baseline ({steps})",
                               workers=workers, show_progress=show_progress)
    versions = {found[0].key: _candidate_version(found[0], store.url, name, by_hash, baseline, workers, show_progress)}
    tok = tokenizer_for_version(store, baseline, vocab_size)
    # The baseline's first two seeds (every round needs them) time a run: the second, as the first run of a process
    # also pays for torch's start-up (12.8 s against 1.3 s for a 15,000-token run on 2 cores).
    # Timed with the threads each process of the ablations' pool gets (one per process on a CPU).
    pool, threads, devices = plan_workers(1 << 10, spec.device, parallel)
    measured = [train_run_task(store.url, baseline, spec.config(seed, tok.vocab_size), str(tok.path), names, threads)
                for seed in range(2)]
    per_run = min(float(run["seconds"]) for run in measured)
    per_curation = float(store.manifest(versions[found[0].key])["run_seconds"])
    speedup = pool * (1.0 if devices[0].startswith("cuda") else tuning.CPU_POOL_EFFICIENCY)
    budget = budget_minutes * 60 if budget_minutes is not None else None
    chosen, estimate = tuning.fit_budget(found, published, budget, per_curation, per_run, seeds_start, confirm,
                                         speedup)
    say(estimate.describe())
    warnings: list[str] = []
    if estimate.left_out:
        warnings.append(f"left out to fit --budget-minutes {budget_minutes:g}: {', '.join(estimate.left_out)}")
    if budget is not None and estimate.seconds > budget:
        warnings.append(f"the smallest search (the recipe as written and one change) needs ~{estimate.seconds / 60:.1f}"
                        f" min, more than --budget-minutes {budget_minutes:g}: it runs anyway")
    state.update(estimate=asdict(estimate), candidates=[_described(c) for c in chosen])
    _save_state(store, folder, state)

    for candidate in chosen[1:]:
        versions[candidate.key] = _candidate_version(candidate, store.url, name, by_hash, baseline, workers,
                                                     show_progress)
    manifests = {key: store.manifest(version) for key, version in versions.items()}
    base_manifest = store.manifest(baseline)
    same_as = _same_content(chosen, manifests, base_manifest["fingerprint"])
    searched = [c.key for c in chosen if c.key not in same_as]
    for key, twin in same_as.items():
        say(f"candidate {key}: the same content as {twin}, searched once")
    if not searched:
        raise tuning.TuneError("every candidate has the baseline's content: there is nothing to search (the recipe "
                               "changes nothing after its first stage)")
    state["candidates"] = [{**_described(c), "version": versions[c.key], "same_as": same_as.get(c.key)}
                           for c in chosen]

    ablate = dict(baseline=baseline, tokenizer=str(tok.path), eval_sets=names, parallel=parallel,
                  show_progress=show_progress)
    rounds = tuning.halving(len(searched), seeds_start)
    alive, reached, round_rows, tokens = list(searched), {}, [], {}
    stopped = None
    for index, plan in enumerate(rounds):
        if index and budget is not None:
            left = (sum(tuning.new_runs(rounds, i) for i in range(index, len(rounds)))
                    + (1 + tuning.FINALISTS) * confirm) * per_run / speedup
            if time.perf_counter() - started + left > budget:
                stopped = (f"stopped after round {index} of {len(rounds)}: the remaining rounds and the confirmation "
                           f"(~{left / 60:.1f} min) would pass --budget-minutes {budget_minutes:g}")
                warnings.append(stopped)
                break
        say(f"round {plan.number} of {len(rounds)}: {len(alive)} candidate(s) x {len(plan.seeds)} seed(s)")
        result = run_ablation(store.url, [baseline, *(versions[k] for k in alive)], replace(spec, seeds=plan.seeds),
                              f"{name}-round{plan.number}", **ablate)
        primary = result["primary"]
        comparisons = result["analysis"]["comparisons"]
        tokens.update({v: info["tokens"] for v, info in result["versions"].items()})
        deltas = {k: comparisons[versions[k]][primary]["loss"]["mean"] for k in alive}
        for key in alive:
            reached[key] = {"round": plan.number, "seeds": list(plan.seeds),
                            "search": {e: c["loss"] for e, c in comparisons[versions[key]].items()},
                            "loss": result["analysis"]["versions"][versions[key]]["eval"][primary]["loss"]["mean"]}
        ranked = tuning.rank(deltas, searched)
        alive = ranked[:plan.keep]
        round_rows.append({"number": plan.number, "seeds": list(plan.seeds), "ablation": result["name"],
                           "ranking": [{"key": k, "delta": deltas[k]} for k in ranked], "kept": alive})
        say(f"  kept: {', '.join(alive)}")
        state["rounds"] = round_rows
        _save_state(store, folder, state)

    finalists = alive[:tuning.FINALISTS]
    seeds = tuning.confirm_seeds(confirm)
    say(f"confirmation: {', '.join(finalists)} against the baseline with fresh seeds {seeds[0]}..{seeds[-1]}")
    checked = run_ablation(store.url, [baseline, *(versions[k] for k in finalists)], replace(spec, seeds=seeds),
                           f"{name}-confirm", **ablate)
    primary = checked["primary"]
    confirmed = {k: {e: c["loss"] for e, c in checked["analysis"]["comparisons"][versions[k]].items()}
                 for k in finalists}
    winner = next(c for c in chosen if c.key == finalists[0])
    verdict = confirmed[winner.key][primary]["verdict"]
    if verdict == WORSE:
        warnings.append(f"the search's best candidate ({winner.label}) is confirmed worse than the baseline: no "
                        "candidate of this recipe helped the model at this budget")
    warnings += [f"confirmation: {w}" for w in checked["warnings"]]
    state["confirmation"] = {"seeds": list(seeds), "finalists": finalists, "ablation": checked["name"]}
    _save_state(store, folder, state)

    recipe_file, recipe_hash, calibration = _write_winner(store, folder, winner, recipe, name, versions, verdict,
                                                          confirmed[winner.key][primary], publish)
    published_as = _publish(store, recipe_file, recipe_hash, publish, baseline, workers, show_progress, say) \
        if publish else None

    for key, twin in same_as.items():  # the same content: the same tokens
        tokens.setdefault(versions[key], tokens.get(baseline if twin == "baseline" else versions[twin]))
    entries = [_entry(c, versions[c.key], manifests[c.key], reached.get(c.key), same_as.get(c.key),
                      confirmed.get(c.key), tokens, base_manifest, len(base_recipe.steps)) for c in chosen]
    baseline_tokens = tokens.get(baseline)
    for entry in entries:
        entry["tokens_share"] = entry["tokens"] / baseline_tokens if entry["tokens"] and baseline_tokens else None
    on_front = tuning.frontier({e["key"]: (e["tokens"], e["search"][primary]["mean"]) for e in entries
                                if e["search"] and e["tokens"] is not None})
    for entry in entries:
        entry["frontier"] = entry["key"] in on_front
        entry["winner"] = entry["key"] == winner.key
    result = {
        "kind": "tune", "name": name, "created_at": _now(), "store": store.url, "recipe": str(recipe_path),
        "settings": settings, "budget_minutes": budget_minutes, "estimate": asdict(estimate),
        "baseline": {"version": baseline, "steps": [s.instance_name for s in base_recipe.steps],
                     "tokens": baseline_tokens, "rows": base_manifest["rows"],
                     "planted": tuning.planted_summary(base_manifest)},
        "tokenizer": {"hash": tok.hash, "vocab_size": tok.vocab_size, "trained_on": baseline},
        "eval_sets": {n: read_info(store, n).fingerprint for n in names}, "primary": primary,
        "domains": [k for k in checked["analysis"]["eval_keys"] if k != primary],
        "candidates": _ordered(entries, primary), "rounds": round_rows, "stopped": stopped,
        "confirmation": {"seeds": list(seeds), "finalists": finalists, "ablation": checked["name"],
                         "comparisons": confirmed},
        "winner": {"key": winner.key, "label": winner.label, "version": versions[winner.key], "verdict": verdict,
                   "delta": confirmed[winner.key][primary], "recipe_file": recipe_file, "recipe_hash": recipe_hash,
                   "calibration": calibration, "published": published_as},
        "warnings": warnings,
    }
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["paths"] = _save_result(store, folder, result)
    state["status"] = "done"
    _save_state(store, folder, state)
    _publish_artifacts(result)
    return result


def run_tune(recipe_path: Path, store_url: str, name: str | None, spec: AblationSpec, **kwargs: Any) -> dict[str, Any]:
    """`tune_flow` under the search's name (default: the recipe's name and a digest of its settings)."""
    if name is None:
        recipe = load_recipe(recipe_path)
        names = evaluation_sets(VersionStore(store_url), kwargs.get("eval_sets"))
        settings = tune_settings(recipe, spec, seeds_start=kwargs.get("seeds_start", TUNE_SEEDS_START),
                                 confirm=kwargs.get("confirm", TUNE_CONFIRM_SEEDS), eval_sets=names,
                                 vocab_size=kwargs.get("vocab_size", DEFAULT_VOCAB_SIZE),
                                 reference=kwargs.get("reference"), per_rule=kwargs.get("per_rule", False))
        name = default_name(Path(recipe_path), recipe, settings)
    return tune_flow(str(recipe_path), store_url, name, spec, **kwargs)


# ---- the steps of the flow ----------------------------------------------------------------------------


def _candidate_version(candidate: tuning.Candidate, store_url: str, name: str, by_hash: dict[str, str],
                       baseline: str, workers: int | None, show_progress: bool) -> str:
    return publish_or_find(candidate.recipe, store_url, f"{name}.{candidate.key}", by_hash,
                           f"candidate {candidate.key} ({candidate.label})", parents=[baseline], workers=workers,
                           show_progress=show_progress)


def _same_content(chosen: list[tuning.Candidate], manifests: dict[str, dict[str, Any]],
                  baseline_fingerprint: str) -> dict[str, str]:
    """key -> the earlier candidate (or "baseline") whose version has the same content: searched once."""
    first: dict[str, str] = {baseline_fingerprint: "baseline"}
    out: dict[str, str] = {}
    for candidate in chosen:
        fingerprint = manifests[candidate.key]["fingerprint"]
        if fingerprint in first:
            out[candidate.key] = first[fingerprint]
        else:
            first[fingerprint] = candidate.key
    return out


def _described(candidate: tuning.Candidate) -> dict[str, Any]:
    return {"key": candidate.key, "label": candidate.label, "kind": candidate.kind,
            "recipe_hash": candidate.recipe.content_hash()}


def _entry(candidate: tuning.Candidate, version: str, manifest: dict[str, Any], reached: dict[str, Any] | None,
           twin: str | None, confirmed: dict[str, Any] | None, tokens: dict[str, int], base: dict[str, Any],
           baseline_steps: int) -> dict[str, Any]:
    """One row of the ranked table: the search's numbers, the confirmation's, and what the version holds."""
    return {**_described(candidate), "version": version, "fingerprint": manifest["fingerprint"], "same_as": twin,
            "round": (reached or {}).get("round"), "seeds": (reached or {}).get("seeds", []),
            "search": (reached or {}).get("search", {}), "loss": (reached or {}).get("loss"),
            "confirmed": confirmed, "tokens": tokens.get(version), "rows": manifest["rows"],
            "rows_removed": base["rows"] - manifest["rows"], "removed": tuning.removals(manifest, baseline_steps),
            "planted": tuning.planted_summary(manifest)}


def _ordered(entries: list[dict[str, Any]], primary: str) -> list[dict[str, Any]]:
    """Ranked: the round reached (later first), then the search's mean Δloss; a candidate with the same content as
    another right after it, those with the baseline's content last."""
    searched = sorted((e for e in entries if e["same_as"] is None),
                      key=lambda e: (-e["round"], e["search"][primary]["mean"]))
    out: list[dict[str, Any]] = []
    for entry in searched:
        out += [entry, *(e for e in entries if e["same_as"] == entry["key"])]
    return out + [e for e in entries if e["same_as"] == "baseline"]


def _write_winner(store: VersionStore, folder: str, winner: tuning.Candidate, recipe: Recipe, name: str,
                  versions: dict[str, str], verdict: str, delta: dict[str, Any], publish: str | None
                  ) -> tuple[str, str, dict[str, Any] | None]:
    """winner.yaml: the winning recipe as it ran (calibrated bounds written out), with where it came from; returns
    its path, its recipe hash and the calibration report (None when it calibrates nothing)."""
    as_run, calibration = calibrate(winner.recipe, store.url)
    body = tuning.plain_recipe(as_run)
    body["name"] = publish or f"{recipe.name or 'recipe'}-tuned"
    body["description"] = f"{winner.label}: the winner of `curate tune` {name}"
    ci = "" if delta["ci_low"] is None else f" [{delta['ci_low']:+.4f}, {delta['ci_high']:+.4f}]"
    header = [f"The winner of `curate tune` {name}: {winner.label} (version {versions[winner.key]}).",
              f"Confirmed against the baseline with fresh seeds: Δloss {delta['mean']:+.4f}{ci}, {verdict}.",
              "The recipe as it ran: calibrated bounds are written out as parameters, paths are absolute."]
    for step, entry in ((calibration or {}).get("steps") or {}).items():
        moved = [f"{c['signal']} {c['op']} {bound_text(c, 'configured')} -> {bound_text(c, 'calibrated', 6)}"
                 for c in entry["checks"]
                 if c["calibrated"] != c["configured"]]
        if moved:
            header.append(f"{step}, calibrated on {', '.join(entry['reference'])} (keep {entry['keep']:g}): "
                          + "; ".join(moved))
    text = tuning.recipe_text(body, header)
    path = f"{folder}/{WINNER_FILE}"
    write_text(store.fs, path, text)
    return path, parse_recipe(yaml.safe_load(text), origin=path).content_hash(), calibration


def _publish(store: VersionStore, recipe_file: str, recipe_hash: str, publish: str, baseline: str,
             workers: int | None, show_progress: bool, say) -> str:
    """winner.yaml run as version `publish` (found again when an earlier run of the command published it)."""
    if store.exists(publish):
        if store.manifest(publish).get("recipe_hash") == recipe_hash:
            say(f"--publish: version {publish} (published by an earlier run of this search)")
            return publish
        raise tuning.TuneError(f"--publish {publish!r}: the store already has a version of that name made by another "
                               "recipe; versions are immutable, pick another name")
    with store.fs.open(recipe_file, "r", encoding="utf-8") as handle:
        recipe = parse_recipe(yaml.safe_load(handle.read()), origin=recipe_file)
    say(f"--publish: running {recipe_file} as version {publish}")
    run_curation(recipe, store.url, publish, parents=[baseline], workers=workers, show_progress=show_progress)
    return publish


# ---- state and results --------------------------------------------------------------------------------


def _start_state(store: VersionStore, folder: str, name: str, settings: dict[str, Any], say) -> dict[str, Any]:
    """The search's state: a fresh one, or the one an earlier run of the same search left (said so)."""
    path = f"{folder}/{STATE_FILE}"
    if store.fs.exists(path):
        with store.fs.open(path, "r", encoding="utf-8") as handle:
            state = json.load(handle)
        if state.get("settings") != _as_json(settings):
            raise tuning.TuneError(f"tune {name!r} in {store.url} was started with other settings (recipe, budget per "
                                   "run, seeds or evaluation sets): rerun it with the same ones, or pass another "
                                   "--name")
        done = len(state.get("rounds", []))
        say(f"tune {name}: resuming ({state.get('status', 'searching')}, {done} round(s) done before; versions and "
            "finished training runs are found in the store)")
        return {**state, "status": "searching"}
    return {"name": name, "created_at": _now(), "status": "searching", "settings": _as_json(settings), "rounds": []}


def _as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples as lists), to compare with what a file holds."""
    return json.loads(json.dumps(plain(value), default=str))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _save_state(store: VersionStore, folder: str, state: dict[str, Any]) -> None:
    store.fs.makedirs(folder, exist_ok=True)
    write_json(store.fs, f"{folder}/{STATE_FILE}", plain({**state, "updated_at": _now()}))


def _save_result(store: VersionStore, folder: str, result: dict[str, Any]) -> dict[str, str]:
    paths = {"folder": folder, "result": f"{folder}/{RESULT_FILE}", "winner": result["winner"]["recipe_file"]}
    write_json(store.fs, paths["result"], plain(result))
    html, twin = tune_report(result)
    paths["report"], paths["report_json"] = write_report(store.fs, folder, html, twin)
    return paths


def _publish_artifacts(result: dict[str, Any]) -> None:
    """The ranked table and the frontier, shown by the Prefect UI on the flow run."""
    create_table_artifact(summary_rows(result), key=artifact_key(f"tune-{result['name']}-ranking"),
                          description=f"Candidates of tune {result['name']}, ranked (Δloss against the baseline)")
    create_markdown_artifact(frontier_markdown(result), key=artifact_key(f"tune-{result['name']}-frontier"),
                             description=f"Loss against tokens kept, tune {result['name']}")
