"""`curate tune`'s search space and bookkeeping: the candidate recipes, the successive-halving schedule, the time
budget, the ranked table and the winning recipe as a file. Plain recipes and result dictionaries in, plain values
out; the search itself (curation runs, training runs, Prefect) is `flows/tune.py`.

The candidates vary the recipe as written one factor at a time, in this order (the order the time budget trims
from the end):

1. the recipe as written;
2. the papers' bounds (no calibration), when the recipe calibrates;
3. the recipe's own `tune:` candidates (a list of named patches: `drop` steps, `set` step keys, `calibrate`);
4. each filter after the baseline switched off, in recipe order (never a step that reads the evaluation sets:
   without decontamination the evaluation loss is flattered, so the search would pick it for the wrong reason);
5. every scope removed (each step on every source), when the recipe has scopes;
6. recipe-wide calibration at each of `KEEPS`, when the recipe or `--reference` names a reference;
7. with `per_rule`: each calibratable filter alone calibrated at each of `KEEPS`.

Candidates with the same recipe content as an earlier one are left out (e.g. calibration at the keep the recipe
already uses). The baseline is the recipe's first stage (ingestion and the steps labelled `raw`), as in
`curate ablate --steps`; every candidate keeps it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from curation.recall import REPAIRED_CLASSES
from curation.recipe import Calibration, Recipe, StepSpec, TunePatch, parse_recipe
from curation.steps import FilterStep

# The shares of trusted text each rule alone must keep that the search tries (our choice): from "a rule may drop a
# tenth of clean text" to "half a percent"; 0.98 is the project's default keep (curation/recipe.py, Calibration).
KEEPS = (0.9, 0.95, 0.98, 0.995)
# The search keeps halving until this many candidates are left; both are confirmed (our choice: the runner-up's
# confirmation shows whether the choice between the last two was close), Holm-adjusted as one family.
FINALISTS = 2
# Confirmation seeds start here, far above any seed the search uses, so the verdict never reuses a run that chose
# the winner (our choice of number; `halving` refuses a search that would reach it).
CONFIRM_SEED_BASE = 1000
# The share of a perfect speed-up a pool of one-thread CPU runs reaches (measured: the demo's ablation trained 16
# runs of ~44 s each, two at a time on 2 cores, in 375 s: 1.88 of 2). The estimate times a run with the threads
# each process of the pool gets and divides by the processes times this; GPU runs count as parallel per device.
CPU_POOL_EFFICIENCY = 0.94
CPU_POOL_SPEEDUP = 1.0  # what the estimate assumes when it is not told the pool

AS_WRITTEN, PAPER, USER, OFF, UNSCOPED, CALIBRATED, PER_RULE = (
    "as written", "paper bounds", "user", "filter off", "unscoped", "calibrated", "one rule calibrated")


class TuneError(ValueError):
    """A search that cannot run as asked; the message says why and what to change."""


@dataclass(frozen=True)
class Candidate:
    """One recipe the search tries: `key` names its version, `label` says what differs from the recipe as written."""

    key: str
    label: str
    kind: str
    recipe: Recipe


# ---- candidates -----------------------------------------------------------------------------------


def baseline_recipe(recipe: Recipe) -> Recipe:
    """What every candidate is compared with: the recipe's first stage (as `curate ablate --steps`)."""
    return recipe.prefix(recipe.stages()[0].end)


def candidates(recipe: Recipe, reference: Sequence[str] | None = None, keeps: Sequence[float] = KEEPS,
               per_rule: bool = False) -> list[Candidate]:
    """The recipes the search tries, in the order of the module docstring; `reference` names trusted text for the
    calibration candidates when the recipe names none."""
    if recipe.synthesize is not None:
        raise TuneError("a synthesis recipe cannot be tuned: its candidates would each call the generator")
    first = recipe.stages()[0].end
    found: list[tuple[str, str, str, Recipe]] = [(AS_WRITTEN, "as-written", "as written",
                                                  _rebuilt(recipe, recipe.steps))]
    if _calibrated(recipe):
        found.append((PAPER, "paper", "paper bounds (no calibration)", _uncalibrated(recipe)))
    for i, patch in enumerate(recipe.tune or []):
        found.append((USER, patch.name, f"tune: {patch.name}", _patched(recipe, patch, i)))
    for i in _switchable(recipe):
        name = recipe.steps[i].instance_name
        found.append((OFF, f"no-{name}", f"without {name}",
                      _rebuilt(recipe, [s for j, s in enumerate(recipe.steps) if j != i])))
    if any(not s.scope.everywhere for s in recipe.steps[first:]):
        found.append((UNSCOPED, "unscoped", "unscoped (every step on every source)",
                      _rebuilt(recipe, [_edit(s, sources=None, skip_sources=None, where=None) for s in recipe.steps])))
    ref = reference_of(recipe, reference)
    if ref is not None:
        for keep in keeps:
            found.append((CALIBRATED, f"keep-{keep:g}", f"calibrated, keep {keep:g}",
                          _rebuilt(recipe, recipe.steps, calibrate=ref.model_copy(update={"keep": keep}))))
        if per_rule:
            for i in _calibratable(recipe):
                name = recipe.steps[i].instance_name
                for keep in keeps:
                    steps = list(recipe.steps)
                    steps[i] = _edit(steps[i], calibrate=ref.model_copy(update={"keep": keep}))
                    found.append((PER_RULE, f"{name}-keep-{keep:g}", f"{name} calibrated, keep {keep:g}",
                                  _rebuilt(recipe, steps)))
    out: list[Candidate] = []
    seen: set[str] = set()
    for kind, slug, label, candidate in found:
        digest = candidate.content_hash()
        if digest in seen:
            continue
        seen.add(digest)
        out.append(Candidate(f"c{len(out):02d}-{_slug(slug)}", label, kind, candidate))
    return out


def reference_of(recipe: Recipe, reference: Sequence[str] | None = None) -> Calibration | None:
    """The calibration the calibrated candidates vary the keep of: the recipe's own (recipe-wide, else the first
    step's), with `reference` in place of its reference when given."""
    own = recipe.calibrate or next((s.calibrate for s in recipe.steps if s.calibrate), None)
    if reference:
        return (own or Calibration(reference=list(reference))).model_copy(update={"reference": list(reference)})
    return own


def _calibrated(recipe: Recipe) -> bool:
    return recipe.calibrate is not None or any(s.calibrate for s in recipe.steps)


def _uncalibrated(recipe: Recipe) -> Recipe:
    return _rebuilt(recipe, [_edit(s, calibrate=None) for s in recipe.steps], calibrate=None)


def _switchable(recipe: Recipe) -> list[int]:
    """Filters after the baseline that a candidate may switch off: not one that reads the evaluation sets."""
    first = recipe.stages()[0].end
    return [i for i, s in enumerate(recipe.steps) if i >= first and s.step_class.category == "filter"
            and "evalsets" not in s.step_class.Params.model_fields]


def _calibratable(recipe: Recipe) -> list[int]:
    return [i for i in _switchable(recipe) if issubclass(recipe.steps[i].step_class, FilterStep)
            and recipe.steps[i].step_class.calibratable]


def _patched(recipe: Recipe, patch: TunePatch, index: int) -> Recipe:
    """The recipe with a `tune:` entry's changes."""
    steps = [_edit(s, **patch.assign.get(s.instance_name, {})) for s in recipe.steps
             if s.instance_name not in patch.drop]
    if "calibrate" not in patch.model_fields_set:
        return _rebuilt(recipe, steps, origin=f"tune[{index}] ({patch.name})")
    if patch.calibrate is None:
        steps = [_edit(s, calibrate=None) for s in steps]
    return _rebuilt(recipe, steps, calibrate=patch.calibrate, origin=f"tune[{index}] ({patch.name})")


def _edit(spec: StepSpec, **keys: Any) -> StepSpec:
    """The step with `keys` replaced (None removes a scope or calibration key)."""
    body = {**spec.model_dump(mode="json", exclude_unset=True), **keys}
    return StepSpec(**{k: v for k, v in body.items() if not (v is None and k in _UNSET_BY_NONE)})


_UNSET_BY_NONE = ("name", "stage", "sources", "skip_sources", "where", "calibrate")


def _rebuilt(recipe: Recipe, steps: Sequence[StepSpec], origin: str = "candidate", **updates: Any) -> Recipe:
    """A validated recipe like `recipe` with these steps (and top-level `updates`), without a `tune:` block."""
    body = recipe.model_dump(mode="json", by_alias=True, exclude={"tune"})
    body.update({k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in updates.items()})
    body["steps"] = [s.model_dump(mode="json", exclude_unset=True) for s in steps]
    return parse_recipe(body, recipe.base, origin=origin)


def _slug(text: str) -> str:
    """`text` as part of a version name (letters, digits, '.', '_', '-'; numbered before it, so always unique)."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")[:60] or "candidate"


# ---- the schedule ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One round of successive halving: `candidates` trained with `seeds`, the best `keep` go on."""

    number: int
    candidates: int
    seeds: tuple[int, ...]
    keep: int


def halving(n: int, seeds_start: int, finalists: int = FINALISTS) -> list[Round]:
    """Rounds until at most `finalists` are left (one round at least, to rank them): each keeps the better half,
    and the next trains twice the seeds (the earlier seeds' runs are found again)."""
    if n < 1 or seeds_start < 1:
        raise TuneError(f"a search needs a candidate and a seed (got {n} candidate(s), {seeds_start} seed(s))")
    rounds: list[Round] = []
    alive, seeds = n, seeds_start
    while True:
        keep = max(finalists, math.ceil(alive / 2)) if alive > finalists else alive
        rounds.append(Round(len(rounds) + 1, alive, tuple(range(seeds)), keep))
        if keep <= finalists:
            break
        alive, seeds = keep, seeds * 2
    if seeds > CONFIRM_SEED_BASE:
        raise TuneError(f"{n} candidates from {seeds_start} seeds reach {seeds} seeds, past the confirmation's seeds "
                        f"({CONFIRM_SEED_BASE}+): start with fewer seeds or candidates")
    return rounds


def confirm_seeds(count: int) -> tuple[int, ...]:
    """Seeds no search round trains: the confirmation's verdict is independent of the selection."""
    return tuple(range(CONFIRM_SEED_BASE, CONFIRM_SEED_BASE + count))


def new_runs(rounds: Sequence[Round], index: int) -> int:
    """Training runs round `index` adds: its seeds the survivors (and the baseline) have not trained yet."""
    before = len(rounds[index - 1].seeds) if index else 0
    return (rounds[index].candidates + 1) * (len(rounds[index].seeds) - before)


def training_runs(rounds: Sequence[Round], confirm: int, finalists: int = FINALISTS) -> int:
    """Distinct training runs of the search's rounds and of its confirmation (the baseline and the finalists)."""
    return (sum(new_runs(rounds, i) for i in range(len(rounds)))
            + (1 + min(finalists, rounds[-1].keep)) * confirm)


@dataclass
class Estimate:
    """What the search will cost, and what the budget left out."""

    candidates: int
    curation_runs: int
    training_runs: int
    seconds_per_curation: float
    seconds_per_run: float
    speedup: float
    seconds: float
    left_out: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = (f"estimate: {self.candidates} candidate(s); {self.curation_runs} curation run(s) x ~"
                f"{self.seconds_per_curation:.0f} s + {self.training_runs} training run(s) x "
                f"~{self.seconds_per_run:.0f} s"
                + (f" / {self.speedup:g} at once" if self.speedup != 1 else "")
                + f" = ~{self.seconds / 60:.1f} min (runs and versions found in the store cost nothing)")
        if self.left_out:
            text += f"; left out to fit the budget: {', '.join(self.left_out)}"
        return text


def estimate(n: int, unpublished: int, seconds_per_curation: float, seconds_per_run: float, seeds_start: int,
             confirm: int, speedup: float = CPU_POOL_SPEEDUP, finalists: int = FINALISTS) -> Estimate:
    """The seconds a search of `n` candidates takes (`unpublished` of them still to be curated)."""
    runs = training_runs(halving(n, seeds_start, finalists), confirm, finalists)
    seconds = unpublished * seconds_per_curation + runs * seconds_per_run / speedup
    return Estimate(n, unpublished, runs, seconds_per_curation, seconds_per_run, speedup, seconds)


def fit_budget(found: Sequence[Candidate], published: set[str], budget_seconds: float | None,
               seconds_per_curation: float, seconds_per_run: float, seeds_start: int, confirm: int,
               speedup: float = CPU_POOL_SPEEDUP) -> tuple[list[Candidate], Estimate]:
    """The longest head of `found` (at least two candidates, the recipe as written and one change) whose search fits
    `budget_seconds`, and its estimate naming what was left out. `published`: keys of candidates already curated."""
    def cost(k: int) -> Estimate:
        head = found[:k]
        return estimate(k, sum(1 for c in head if c.key not in published), seconds_per_curation, seconds_per_run,
                        seeds_start, confirm, speedup)

    k = len(found)
    if budget_seconds is not None:
        while k > min(2, len(found)) and cost(k).seconds > budget_seconds:
            k -= 1
    out = cost(k)
    out.left_out = [c.label for c in found[k:]]
    return list(found[:k]), out


def rank(deltas: Mapping[str, float], order: Sequence[str]) -> list[str]:
    """Candidates by mean paired Δloss against the baseline (lowest first); ties keep the candidates' order."""
    return sorted(deltas, key=lambda key: (deltas[key], order.index(key)))


# ---- what a candidate's version holds -------------------------------------------------------------


def removals(manifest: Mapping[str, Any], baseline_steps: int, top: int = 3) -> dict[str, Any]:
    """Documents the candidate's own steps removed (the baseline's steps and ingestion left out), by step:reason,
    the `top` most frequent named."""
    counts: Counter[str] = Counter()
    for step in manifest["steps"][1 + baseline_steps:]:
        for reason, n in step["rejected_by_reason"].items():
            counts[reason if reason.startswith(step["name"]) else f"{step['name']}:{reason}"] += n
    return {"documents": sum(counts.values()), "top": counts.most_common(top),
            "other": sum(counts.values()) - sum(n for _, n in counts.most_common(top))}


def planted_summary(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The recipe's planted or labelled defects that must go (not those a transform repairs): caught of planted, the
    worst class, and the clean documents removed (false drops); None without `labels:`."""
    report = manifest.get("planted_defects")
    if not report:
        return None
    classes = {name: c for name, c in report["classes"].items() if name not in REPAIRED_CLASSES}
    planted = sum(c["planted"] for c in classes.values())
    caught = sum(c["caught"] for c in classes.values())
    worst = min(((name, c["recall"]) for name, c in classes.items() if c["recall"] is not None),
                key=lambda kv: kv[1], default=(None, None))
    return {"planted": planted, "caught": caught, "recall": caught / planted if planted else None,
            "worst_class": worst[0], "worst_recall": worst[1],
            "clean_docs": report["clean"]["docs"], "clean_dropped": report["clean"]["rejected"],
            "clean_false_drops": report["clean"]["false_positive_rate"]}


def frontier(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """The points no other beats on both axes (more tokens kept and lower Δloss), most tokens first."""
    ordered = sorted(points, key=lambda k: (-points[k][0], points[k][1]))
    out: list[str] = []
    best = math.inf
    for key in ordered:
        if points[key][1] < best:
            out.append(key)
            best = points[key][1]
    return out


# ---- the winner as a recipe file ------------------------------------------------------------------


def plain_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as it ran as one self-standing file: bounds as parameters (pass the calibrated recipe, from
    `curation.calibration.calibrate`), no `calibrate:` or `tune:` block, every path absolute (so it runs from the
    folder it is written to), defaults left out."""
    body = recipe.model_dump(mode="json", by_alias=True, exclude_defaults=True,
                             exclude={"tune", "calibrate", "inputs", "steps", "labels", "guards"})
    body["inputs"] = []
    for spec in recipe.inputs:
        entry = spec.model_dump(mode="json", exclude_defaults=True)
        local = recipe.resolve(spec.path)
        if spec.format != "hf" or local.exists():
            entry["path"] = str(local)
        body["inputs"].append(entry)
    body["steps"] = [{**s.model_dump(mode="json", exclude_unset=True, exclude={"calibrate"}), **s.paths(recipe.base)}
                     for s in recipe.steps]
    if recipe.labels:
        body["labels"] = str(recipe.resolve(recipe.labels))
    guards = recipe.resolved_guards.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    if guards:
        body["guards"] = guards
    return body


def recipe_text(body: Mapping[str, Any], header: Sequence[str]) -> str:
    """YAML of `body` under `header` comment lines."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header)
    return comments + yaml.safe_dump(dict(body), sort_keys=False, allow_unicode=True)

