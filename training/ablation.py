"""Ablation maths: is the loss difference between two data versions real, and how large could it be?

Design. Every version is trained with the same preset, tokenizer, token budget and list of seeds; a
seed fixes the initial weights (and, for versions with the same number of windows, the data order),
so the run of version B with seed s is *paired* with the run of the baseline A with seed s. The
statistic is the per-seed difference d_s = loss(B, s) - loss(A, s) on the same frozen evaluation
windows; pairing removes the share of seed noise both runs have in common.

For n paired seeds with mean difference d and sample standard deviation s_d:

* the 95 % confidence interval is d ± t(0.975, n-1) · s_d / sqrt(n) (Student's t: with 3-5 seeds a
  normal or a bootstrap interval would be far too narrow; a bootstrap over 3 values has only 10
  distinct resamples, so we use t, which is exact when the seed noise is normal);
* the p-value is the two-sided paired t-test's;
* the minimum detectable effect (MDE) is the true mean difference that this test, at this noise level
  (s_d) and n, detects with probability 0.8 (Cohen 1988's conventional power), from the noncentral t
  distribution, not the normal approximation;
* the verdict reads the interval: "better" when it lies below zero (lower loss), "worse" when above,
  "no detectable effect" when it contains zero (then, at this noise level, an effect smaller than the
  MDE may still exist). With one seed there is no interval: "needs >= 2 seeds". When every seed gives
  the same non-zero delta, s_d is 0 and the t statistic infinite: no interval or p-value says anything
  from n such seeds, so the verdict is "not informative" (not better or worse), with no p-value.

With several versions compared to one baseline, each interval holds at 95 % on its own; the
Holm-Bonferroni adjusted p-values (Holm 1979) are given beside them for a family-wise reading. A version
with the baseline's content (the same runs serve both: every delta exactly 0) tests nothing and stays
out of the family, so it does not inflate the others' adjusted p-values.

No Prefect, no store: plain numbers in, plain numbers out.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy import optimize, stats

from curation.reportkit import write_report
from curation.store import check_name
from training.ablation_report import ablation_report, curves_png

# AblationSpec lives in the torch-free training.config (the CLI reads its defaults at start-up); importing it
# from here keeps working.
from training.config import MAX_EPOCHS_BEFORE_WARNING
from training.config import AblationSpec as AblationSpec

ALPHA = 0.05  # two-sided: 95 % intervals (convention)
POWER = 0.8  # the power at which the minimum detectable effect is quoted (Cohen 1988)
MAX_SEEDS = 1000  # `seeds_needed` gives up beyond this
# Deltas that differ only by the rounding of float64 arithmetic are equal: a spread of at most this many
# units in the last place of the largest |loss| (our margin over the 1-2 ulps a subtraction can add) is none.
ROUNDING_ULPS = 4

BETTER, WORSE, NO_EFFECT, NEEDS_SEEDS = "better", "worse", "no detectable effect", "needs >= 2 seeds"
NOT_INFORMATIVE = "not informative"
NOT_INFORMATIVE_REASON = "all seeds gave the same delta, so no interval or p-value can be computed; add seeds"


@dataclass
class Summary:
    """Mean and sample standard deviation of one version's values over its seeds."""

    n: int
    mean: float
    std: float | None  # None with one seed
    values: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(values: Mapping[int, float]) -> Summary:
    if not values:
        raise ValueError("no values to summarise")
    array = np.array([values[k] for k in sorted(values)], dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return Summary(len(array), float(array.mean()), std, {int(k): float(values[k]) for k in sorted(values)})


@dataclass
class Comparison:
    """Version B against baseline A over the seeds both were trained with (delta = B - A)."""

    n: int
    seeds: list[int]
    deltas: list[float]
    mean: float
    std: float | None  # of the per-seed deltas
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    mde: float | None  # minimum detectable |delta| at ALPHA and POWER for this n and noise
    verdict: str
    identical: bool = False  # every delta exactly 0: the same runs (same content, same seeds)
    relative: float | None = None  # mean delta / mean baseline value
    p_adjusted: float | None = None  # Holm-Bonferroni over the comparisons of one family
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _t_quantile(q: float, df: int) -> float:
    return float(stats.t.ppf(q, df))


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Probability that a two-sided paired t-test at `alpha` with `n` pairs rejects "no difference"
    when the true mean difference is `effect` and the differences' standard deviation is `sd`."""
    if n < 2:
        return 0.0
    if sd <= 0:
        return 1.0 if effect != 0 else alpha
    df = n - 1
    crit = _t_quantile(1 - alpha / 2, df)
    nc = abs(effect) * math.sqrt(n) / sd
    upper = float(stats.nct.sf(crit, df, nc))
    lower = float(stats.nct.cdf(-crit, df, nc))  # the wrong-sign tail: negligible, and NaN in scipy far out
    if math.isnan(upper):
        upper = 1.0 if nc > crit else 0.0
    return min(1.0, upper + (0.0 if math.isnan(lower) else lower))


def minimum_detectable_effect(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float | None:
    """The smallest |mean difference| detected with probability `target` (None below 2 seeds)."""
    if n < 2:
        return None
    if sd <= 0:
        return 0.0
    upper = sd
    while power(upper, sd, n, alpha) < target:
        upper *= 2
    return float(optimize.brentq(lambda e: power(e, sd, n, alpha) - target, 0.0, upper, xtol=sd * 1e-9))


def seeds_needed(sd: float, effect: float, alpha: float = ALPHA, target: float = POWER,
                 max_seeds: int = MAX_SEEDS) -> int | None:
    """Fewest paired seeds (>= 2) that detect a true difference of `effect` with probability `target`
    at noise `sd`; None when even `max_seeds` would not."""
    if effect == 0:
        return None
    for n in range(2, max_seeds + 1):
        if power(effect, sd, n, alpha) >= target:
            return n
    return None


def compare(baseline: Mapping[int, float], other: Mapping[int, float], alpha: float = ALPHA,
            target_power: float = POWER) -> Comparison:
    """Paired comparison of `other` against `baseline` over their common seeds (delta = other - base;
    for a loss, negative is better)."""
    seeds = sorted(set(baseline) & set(other))
    notes: list[str] = []
    missing = sorted((set(baseline) | set(other)) - set(seeds))
    if missing:
        notes.append(f"seeds {missing} were trained for only one of the two versions and are not compared")
    if not seeds:
        raise ValueError("the two versions share no seed: nothing to pair")
    deltas = np.array([other[s] - baseline[s] for s in seeds], dtype=np.float64)
    n = len(deltas)
    mean = float(deltas.mean())
    base_mean = float(np.mean([baseline[s] for s in seeds]))
    relative = mean / base_mean if base_mean else None
    common = dict(n=n, seeds=seeds, deltas=[float(d) for d in deltas], mean=mean, relative=relative, notes=notes)
    if n < 2:
        return Comparison(**common, std=None, ci_low=None, ci_high=None, p_value=None, mde=None, verdict=NEEDS_SEEDS)
    sd = float(deltas.std(ddof=1))
    largest = max(abs(v) for seed in seeds for v in (baseline[seed], other[seed]))
    if sd <= ROUNDING_ULPS * np.finfo(np.float64).eps * largest and np.any(deltas != 0.0):
        notes.append(NOT_INFORMATIVE_REASON)
        return Comparison(**common, std=sd, ci_low=None, ci_high=None, p_value=None, mde=None,
                          verdict=NOT_INFORMATIVE)
    if sd == 0.0:  # every delta exactly 0
        notes.append("every seed gave exactly the same loss: the runs are the same computation")
        return Comparison(**common, std=0.0, ci_low=0.0, ci_high=0.0, p_value=1.0, mde=0.0, verdict=NO_EFFECT,
                          identical=True)
    half = _t_quantile(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    t_stat = mean / (sd / math.sqrt(n))
    p = float(2 * stats.t.sf(abs(t_stat), n - 1))
    low, high = mean - half, mean + half
    verdict = BETTER if high < 0 else WORSE if low > 0 else NO_EFFECT
    return Comparison(**common, std=sd, ci_low=low, ci_high=high, p_value=p,
                      mde=minimum_detectable_effect(sd, n, alpha, target_power), verdict=verdict)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone); None stays None."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(indexed)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def noise_floor(values: Mapping[int, float], seeds: int, effect: float | None = None, alpha: float = ALPHA,
                target: float = POWER) -> dict[str, Any]:
    """What `seeds` paired seeds can detect, from the seed-to-seed spread of one version's runs.

    The spread of a paired difference is not measurable from one version; sqrt(2) x the single-run
    standard deviation is what it would be with no correlation between paired runs, an upper bound
    whenever pairing shares any noise (the ablation itself then reports the measured value)."""
    summary = summarize(values)
    if summary.std is None:
        raise ValueError("calibration needs at least 2 seeds")
    sd_delta = math.sqrt(2) * summary.std
    out: dict[str, Any] = {"runs": summary.to_dict(), "sd_single_run": summary.std, "sd_paired_delta_bound": sd_delta,
                           "seeds": seeds, "mde": minimum_detectable_effect(sd_delta, seeds, alpha, target),
                           "alpha": alpha, "power": target,
                           "mde_by_seeds": {k: minimum_detectable_effect(sd_delta, k, alpha, target)
                                            for k in (2, 3, 5, 10, 20)}}
    if effect is not None:
        out["effect"] = effect
        out["seeds_needed"] = seeds_needed(sd_delta, effect, alpha, target)
        out["detectable"] = out["mde"] is not None and out["mde"] <= abs(effect)
    return out


def waterfall(stages: Sequence[str], values: Mapping[str, Mapping[int, float]]) -> list[dict[str, Any]]:
    """The loss change each stage caused: stage i against stage i-1, paired by seed, and the running
    total against the first stage. `values[stage][seed]` is the final loss of that run."""
    if not stages:
        return []
    first = summarize(values[stages[0]])
    rows: list[dict[str, Any]] = [{"stage": stages[0], "level": first.mean, "std": first.std, "step": None,
                                   "cumulative": None}]
    for previous, stage in zip(stages, stages[1:]):
        level = summarize(values[stage])
        rows.append({"stage": stage, "level": level.mean, "std": level.std,
                     "step": compare(values[previous], values[stage]).to_dict(),
                     "cumulative": compare(values[stages[0]], values[stage]).to_dict()})
    return rows


def analyse(runs: Sequence[Mapping[str, Any]], versions: Sequence[str], baseline: str,
            alpha: float = ALPHA) -> dict[str, Any]:
    """Per-version summaries and paired comparisons against `baseline` for every evaluation key the
    runs report (each evaluation set overall, and `set/source` per domain), for loss and bits per byte.

    `runs`: one mapping per (version, seed) with `version`, `seed`, `final_eval` ({key: {loss, bpb}}),
    and optionally `epochs`, `unique_tokens` and `fingerprint`."""
    if baseline not in versions:
        raise ValueError(f"baseline {baseline!r} is not among the versions {list(versions)}")
    by_version: dict[str, list[Mapping[str, Any]]] = {v: [] for v in versions}
    for run in runs:
        if run["version"] in by_version:
            by_version[run["version"]].append(run)
    empty = [v for v, rs in by_version.items() if not rs]
    if empty:
        raise ValueError(f"no finished runs for {', '.join(empty)}")
    reported = list(by_version[baseline][0]["final_eval"])
    # Per-source keys (`set/source`) only for sets with two or more sources: one source is the set itself.
    sources = {k.split("/", 1)[0]: sum(1 for j in reported if j.startswith(k.split("/", 1)[0] + "/")) for k in reported}
    keys = [k for k in reported if "/" not in k or sources[k.split("/", 1)[0]] >= 2]
    values: dict[str, dict[str, dict[str, dict[int, float]]]] = {}  # version -> key -> metric -> seed -> value
    out_versions: dict[str, Any] = {}
    for version, rs in by_version.items():
        values[version] = {k: {"loss": {}, "bpb": {}} for k in keys}
        for run in rs:
            for key in keys:
                entry = run["final_eval"].get(key)
                if entry is not None:
                    values[version][key]["loss"][int(run["seed"])] = float(entry["loss"])
                    values[version][key]["bpb"][int(run["seed"])] = float(entry["bpb"])
        out_versions[version] = {
            "fingerprint": rs[0].get("fingerprint"),
            "seeds": sorted(int(r["seed"]) for r in rs),
            "epochs": float(np.mean([r.get("epochs", float("nan")) for r in rs])),
            "unique_tokens": rs[0].get("unique_tokens"),
            "eval": {k: {m: summarize(values[version][k][m]).to_dict() for m in ("loss", "bpb")}
                     for k in keys if values[version][k]["loss"]},
        }
    comparisons: dict[str, Any] = {}
    for version in versions:
        if version == baseline:
            continue
        comparisons[version] = {}
        for key in keys:
            if not values[version][key]["loss"]:
                continue
            comparisons[version][key] = {m: compare(values[baseline][key][m], values[version][key][m], alpha)
                                         for m in ("loss", "bpb")}
    primary = keys[0] if keys else None
    if primary is not None:  # one family: every version against the baseline on the primary metric
        family = [comparisons[v][primary]["loss"] for v in comparisons
                  if primary in comparisons[v] and not comparisons[v][primary]["loss"].identical]
        for comparison, adjusted in zip(family, holm([c.p_value for c in family])):
            comparison.p_adjusted = adjusted
    return {
        "baseline": baseline, "versions_order": list(versions), "primary": primary, "eval_keys": keys,
        "alpha": alpha, "power": POWER, "versions": out_versions,
        "comparisons": {v: {k: {m: c.to_dict() for m, c in per.items()} for k, per in by_key.items()}
                        for v, by_key in comparisons.items()},
        "values": values,
    }


# ---- results: assembled, judged, stored ---------------------------------------------------------

ABLATIONS_DIR = "ablations"
CALIBRATIONS_DIR = "calibrations"
RESULT_FILE = "ablation.json"


class AblationError(ValueError):
    """An ablation that cannot run as asked; the message says why and what to change."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def calibration_key(context: Mapping[str, Any]) -> str:
    """What a noise floor depends on: the training setup (not the seeds), the vocabulary size, the
    evaluation sets and the device type. The version it was measured on is recorded, not matched: the
    floor of one version of a corpus is the estimate for its siblings."""
    spec = {k: v for k, v in context["spec"].items() if k not in ("seeds", "device", "compile", "eval_every")}
    body = {"spec": spec, "vocab_size": context["tokenizer"]["vocab_size"], "eval_sets": context["eval_sets"],
            "device_type": context["device_type"]}
    if context.get("finetune"):  # a fine-tune's noise is its base's and settings' (pre-training keys unchanged)
        body["finetune"] = context["finetune"]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _primary_loss(runs: Sequence[Mapping[str, Any]], version: str, key: str) -> dict[int, float]:
    return {int(r["seed"]): float(r["final_eval"][key]["loss"]) for r in runs if r["version"] == version}


def _run_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    keep = ("version", "seed", "fingerprint", "key", "dir", "cached", "final_eval", "epochs", "tokens_trained",
            "unique_tokens", "seconds", "tokens_per_second", "device")
    return [{k: r.get(k) for k in keep} for r in runs]


def calibration_result(context: Mapping[str, Any], runs: Sequence[Mapping[str, Any]],
                       effect: float | None) -> dict[str, Any]:
    """The seed-to-seed noise of one version, and what an ablation with k seeds can detect at it."""
    versions = list(context["versions"])
    if len(versions) != 1:
        raise AblationError(f"calibration measures one version; got {', '.join(versions)}")
    primary = next(iter(context["eval_sets"]))
    values = _primary_loss(runs, versions[0], primary)
    if len(values) < 2:
        raise AblationError("calibration needs at least 2 seeds (--seeds 5 is a good start)")
    floor = noise_floor(values, len(values), effect)
    warnings = []
    if effect is not None and floor.get("seeds_needed") is None:
        warnings.append(f"no number of seeds up to {MAX_SEEDS} detects an effect of {effect:g} at this noise")
    return {**context, "kind": "calibration", "created_at": _now(), "version": versions[0], "primary": primary,
            "calibration_key": calibration_key(context), "noise": floor, "runs": _run_rows(runs),
            "warnings": warnings}


def find_calibration(store, context: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored calibration with the same training setup, evaluation sets and device type, if any."""
    path = f"{store.root}/{ABLATIONS_DIR}/{CALIBRATIONS_DIR}/{calibration_key(context)[:16]}.json"
    if not store.fs.exists(path):
        return None
    with store.fs.open(path, "r") as handle:
        return json.load(handle)


def ablation_result(context: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], baseline: str,
                    calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the report shows: per-version summaries, paired deltas against the baseline, the
    waterfall of stages, the ranking, noise and the warnings that qualify the numbers."""
    versions = list(context["versions"])
    analysis = analyse(runs, versions, baseline)
    primary = analysis["primary"]
    warnings: list[str] = []
    seeds = list(context["spec"]["seeds"])
    if len(seeds) < 2:
        warnings.append("one seed: no confidence interval, no verdict; use --seeds 3 or more")
    for version, info in context["versions"].items():
        epochs = analysis["versions"][version]["epochs"]
        if epochs > MAX_EPOCHS_BEFORE_WARNING:
            warnings.append(f"{version}: the budget repeats its {info['tokens']:,} tokens {epochs:.1f} times "
                            f"(> {MAX_EPOCHS_BEFORE_WARNING:g} epochs): repeated data, not only its content, "
                            "shapes this loss")
        overlap = info.get("overlap") or {}
        if overlap.get("contaminated"):
            warnings.append(f"{version}: {overlap['contaminated']:,} of {overlap['docs']:,} documents share a "
                            f"{overlap['ngram']}-gram with the evaluation sets: its evaluation loss is flattered "
                            "(decontaminate it to compare fairly)")
    seen: dict[str, str] = {}
    for version, info in context["versions"].items():
        if info["fingerprint"] in seen:
            warnings.append(f"{version} has the same content as {seen[info['fingerprint']]} (same fingerprint): "
                            "the same runs serve both, so their difference is exactly 0")
        seen.setdefault(info["fingerprint"], version)
    for version, by_key in analysis["comparisons"].items():
        if by_key[primary]["loss"]["verdict"] == NOT_INFORMATIVE:
            warnings.append(f"{version}: {NOT_INFORMATIVE_REASON}")
    ranking = sorted(versions, key=lambda v: analysis["versions"][v]["eval"][primary]["loss"]["mean"])
    noise: dict[str, Any] = {"effect": context.get("effect"), "calibration": None}
    effect = context.get("effect")
    if calibration is not None:
        sd = calibration["noise"]["sd_paired_delta_bound"]
        noise["calibration"] = {"version": calibration["version"], "created_at": calibration["created_at"],
                                "sd_single_run": calibration["noise"]["sd_single_run"],
                                "sd_paired_delta_bound": sd, "mde": minimum_detectable_effect(sd, len(seeds))}
        if effect is not None:
            needed = seeds_needed(sd, effect)
            noise["calibration"]["seeds_needed"] = needed
            mde = noise["calibration"]["mde"]
            if mde is None or mde > abs(effect):
                warnings.append(f"with {len(seeds)} seed(s), the calibrated noise ({calibration['version']}: "
                                f"single-run sd {calibration['noise']['sd_single_run']:.4g}) lets this ablation "
                                f"detect effects of about {mde if mde is not None else float('inf'):.4g} nats, not "
                                f"{effect:g}: " + (f"use --seeds {needed}" if needed else "no seed count will do"))
    elif effect is not None:
        noise["note"] = ("no calibration for this setup (`curate ablate --calibrate VERSION --seeds 5`): "
                         "judged from the noise measured in this ablation")
        for version, by_key in analysis["comparisons"].items():
            c = by_key[primary]["loss"]
            if c["mde"] is not None and c["mde"] > abs(effect) and c["verdict"] == NO_EFFECT:
                needed = seeds_needed(c["std"], effect) if c["std"] else None
                warnings.append(f"{version}: at the measured noise, {len(seeds)} seeds detect effects of about "
                                f"{c['mde']:.4g} nats, not {effect:g}"
                                + (f": use --seeds {needed}" if needed else ""))
    result: dict[str, Any] = {**context, "kind": "ablation", "created_at": _now(), "baseline": baseline,
                              "primary": primary, "analysis": analysis, "ranking": ranking, "noise": noise,
                              "runs": _run_rows(runs), "warnings": warnings}
    if context.get("stages"):
        stage_versions = [s["version"] for s in context["stages"]]
        losses = {v: _primary_loss(runs, v, primary) for v in stage_versions}
        rows = waterfall(stage_versions, losses)
        for row, stage in zip(rows, context["stages"]):
            row.update(label=stage["label"], steps=stage["steps"])
        result["waterfall"] = rows
    return result


def save_result(store, result: dict[str, Any]) -> dict[str, str]:
    """Write `<store>/ablations/<name>/`: ablation.json, report.html and its JSON twin, curves.png (and
    the calibration under `ablations/calibrations/`, where later ablations with the same setup find it).
    Each file is written under a temporary name and moved into place."""
    folder = f"{store.root}/{ABLATIONS_DIR}/{check_name(result['name'], 'ablation')}"
    store.fs.makedirs(folder, exist_ok=True)
    paths = {"folder": folder if store.local else store.fs.unstrip_protocol(folder)}

    def put(path: str, payload: bytes) -> None:
        tmp = f"{path}.tmp"
        with store.fs.open(tmp, "wb") as handle:
            handle.write(payload)
        store.fs.mv(tmp, path)

    put(f"{folder}/{RESULT_FILE}", json.dumps(_json_ready(result), indent=2, default=str).encode("utf-8"))
    paths["result"] = f"{folder}/{RESULT_FILE}"
    png = curves_png(result)
    if png:
        put(f"{folder}/curves.png", png)
        paths["curves"] = f"{folder}/curves.png"
    html, twin = ablation_report(result)
    paths["report"], paths["report_json"] = write_report(store.fs, folder, html, twin)
    if result["kind"] == "calibration":
        path = f"{store.root}/{ABLATIONS_DIR}/{CALIBRATIONS_DIR}/{result['calibration_key'][:16]}.json"
        store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        put(path, json.dumps(_json_ready(result), indent=2, default=str).encode("utf-8"))
        paths["calibration"] = path
    return paths


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- summaries for terminals and Prefect artifacts --------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per version: loss, bits per byte, the paired delta against the baseline and its verdict."""
    if result["kind"] == "calibration":
        noise = result["noise"]
        return [{"version": result["version"], "seed": seed, "loss": _fmt(value)}
                for seed, value in noise["runs"]["values"].items()]
    analysis = result["analysis"]
    primary = result["primary"]
    rows = []
    for version in analysis["versions_order"]:
        info = analysis["versions"][version]["eval"][primary]
        loss, bpb = info["loss"], info["bpb"]
        row = {"version": version, "seeds": loss["n"],
               "loss": f"{loss['mean']:.4f} ± {_fmt(loss['std'])}", "bits/byte": f"{bpb['mean']:.4f}",
               "epochs": f"{analysis['versions'][version]['epochs']:.2f}",
               "eval overlap docs": (result["versions"][version].get("overlap") or {}).get("contaminated", "-")}
        c = analysis["comparisons"].get(version, {}).get(primary, {}).get("loss")
        if c is None:
            row.update({"Δ loss": "baseline", "95% CI": "", "p": "", "verdict": ""})
        else:
            ci = f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]" if c["ci_low"] is not None else "-"
            row.update({"Δ loss": f"{c['mean']:+.4f}", "95% CI": ci, "p": _fmt(c["p_value"], 3),
                        "verdict": c["verdict"]})
        rows.append(row)
    return rows


def summary_markdown(result: Mapping[str, Any]) -> str:
    name = result["name"]
    if result["kind"] == "calibration":
        noise = result["noise"]
        lines = [f"# Noise floor `{name}`", "",
                 f"- version `{result['version']}`, {noise['runs']['n']} seeds: loss {noise['runs']['mean']:.4f}, "
                 f"single-run sd {noise['sd_single_run']:.4g}",
                 "- minimum detectable effect (95 %, power 0.8) by seeds: "
                 + ", ".join(f"{k}: {_fmt(v)}" for k, v in noise["mde_by_seeds"].items())]
        return "\n".join(lines + [f"- warning: {w}" for w in result["warnings"]])
    lines = [f"# Ablation `{name}`", "",
             f"- baseline `{result['baseline']}`; preset {result['spec']['preset']}, "
             f"{result['spec']['tokens'] or 'Chinchilla'} tokens, seeds {result['spec']['seeds']}; "
             f"evaluation: `{result['primary']}`",
             f"- ranking (lowest loss first): {', '.join(f'`{v}`' for v in result['ranking'])}", "",
             "| version | loss | Δ vs baseline | 95% CI | verdict |", "|---|---|---|---|---|"]
    for row in summary_rows(result):
        lines.append(f"| {row['version']} | {row['loss']} | {row['Δ loss']} | {row['95% CI']} | {row['verdict']} |")
    if result.get("waterfall"):
        lines += ["", "## Waterfall (each stage against the one before)", ""]
        for row in result["waterfall"][1:]:
            step = row["step"]
            lines.append(f"- +{row['label']} ({', '.join(row['steps'])}): Δ {step['mean']:+.4f} "
                         f"[{_fmt(step['ci_low'])}, {_fmt(step['ci_high'])}] {step['verdict']}")
    lines += [f"- warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)
