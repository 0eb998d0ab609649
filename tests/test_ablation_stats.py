"""Ablation maths: intervals that cover, p-values that match scipy, MDEs with the power they claim,
verdicts that read the interval, and waterfalls whose stages add up."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from training.ablation import (
    BETTER,
    NEEDS_SEEDS,
    NO_EFFECT,
    NOT_INFORMATIVE,
    WORSE,
    AblationSpec,
    ablation_result,
    analyse,
    compare,
    holm,
    minimum_detectable_effect,
    noise_floor,
    power,
    seeds_needed,
    summary_rows,
    waterfall,
)
from training.ablation_report import ablation_report


def test_paired_comparison_matches_scipy_and_the_t_interval():
    base = {0: 5.10, 1: 5.25, 2: 5.02, 3: 5.18}
    other = {0: 5.01, 1: 5.20, 2: 4.90, 3: 5.12}
    c = compare(base, other)
    deltas = np.array([other[s] - base[s] for s in range(4)])
    assert c.mean == pytest.approx(deltas.mean())
    assert c.p_value == pytest.approx(stats.ttest_rel(list(other.values()), list(base.values())).pvalue)
    half = stats.t.ppf(0.975, 3) * deltas.std(ddof=1) / 2
    assert (c.ci_low, c.ci_high) == pytest.approx((deltas.mean() - half, deltas.mean() + half))
    assert c.verdict == BETTER and c.ci_high < 0


def test_verdicts_read_the_interval():
    base = {s: 5.0 for s in range(3)}
    assert compare(base, {0: 5.2, 1: 5.25, 2: 5.18}).verdict == WORSE
    assert compare(base, {0: 4.8, 1: 4.78, 2: 4.83}).verdict == BETTER
    unclear = compare(base, {0: 5.1, 1: 4.9, 2: 5.02})
    assert unclear.verdict == NO_EFFECT and unclear.ci_low < 0 < unclear.ci_high
    assert unclear.mde > abs(unclear.mean)
    one = compare({0: 5.0}, {0: 4.0})
    assert one.verdict == NEEDS_SEEDS and one.ci_low is None and one.mean == -1.0


def test_identical_runs_are_no_effect_not_a_division_by_zero():
    values = {0: 5.1, 1: 5.3, 2: 5.2}
    c = compare(values, dict(values))
    assert c.identical and c.verdict == NO_EFFECT and c.p_value == 1.0 and c.ci_low == c.ci_high == 0.0


@pytest.mark.parametrize("base", [{0: 5.1, 1: 5.3, 2: 5.2},
                                  {0: 4.036, 1: 4.132, 2: 3.999}])  # + 0.013: deltas 1e-16 apart after rounding
def test_the_same_nonzero_delta_on_every_seed_is_not_informative(base):
    shifted = compare(base, {s: v + 0.013 for s, v in base.items()})  # a constant shift: no spread to measure
    assert shifted.verdict == NOT_INFORMATIVE and not shifted.identical
    assert shifted.p_value is None and shifted.ci_low is None and shifted.ci_high is None and shifted.mde is None
    assert shifted.mean == pytest.approx(0.013) and "add seeds" in shifted.notes[-1]


def test_only_common_seeds_are_paired():
    c = compare({0: 1.0, 1: 2.0, 2: 3.0}, {1: 2.5, 2: 3.5, 5: 9.0})
    assert c.seeds == [1, 2] and c.deltas == [0.5, 0.5] and "[0, 5]" in c.notes[0]
    with pytest.raises(ValueError, match="share no seed"):
        compare({0: 1.0}, {1: 1.0})


def test_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    covered, trials = 0, 2000
    for _ in range(trials):
        base = rng.normal(5.0, 0.05, 4)
        other = base + 0.02 + rng.normal(0.0, 0.03, 4)  # true paired difference 0.02
        c = compare(dict(enumerate(base)), dict(enumerate(other)))
        covered += c.ci_low <= 0.02 <= c.ci_high
    assert 0.93 <= covered / trials <= 0.97


def test_minimum_detectable_effect_has_the_power_it_claims():
    rng = np.random.default_rng(3)
    for n in (3, 5):
        mde = minimum_detectable_effect(0.04, n)
        assert power(mde, 0.04, n) == pytest.approx(0.8, abs=1e-6)
        draws = rng.normal(mde, 0.04, (20_000, n))
        hits = (stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05).mean()
        assert hits == pytest.approx(0.8, abs=0.015)
    assert minimum_detectable_effect(0.04, 1) is None
    assert minimum_detectable_effect(0.04, 10) < minimum_detectable_effect(0.04, 3)


def test_seeds_needed_is_the_first_count_with_enough_power():
    n = seeds_needed(0.05, 0.03)
    assert power(0.03, 0.05, n) >= 0.8 > power(0.03, 0.05, n - 1)
    assert seeds_needed(0.05, 0.3) < n  # a larger effect needs fewer seeds
    assert seeds_needed(0.05, 0.0) is None


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_noise_floor_from_one_versions_seeds():
    values = {0: 5.00, 1: 5.04, 2: 4.97, 3: 5.02, 4: 4.99}
    floor = noise_floor(values, seeds=3, effect=0.01)
    sd = float(np.std(list(values.values()), ddof=1))
    assert floor["sd_paired_delta_bound"] == pytest.approx(math.sqrt(2) * sd)
    assert floor["mde"] == pytest.approx(minimum_detectable_effect(math.sqrt(2) * sd, 3))
    assert floor["detectable"] is False and floor["seeds_needed"] > 3
    assert floor["mde_by_seeds"][20] < floor["mde_by_seeds"][2]


def test_waterfall_steps_add_up_to_the_total():
    losses = {"raw": {0: 5.0, 1: 5.1, 2: 4.9}, "filtered": {0: 4.8, 1: 4.95, 2: 4.72},
              "deduped": {0: 4.85, 1: 4.97, 2: 4.8}}
    rows = waterfall(["raw", "filtered", "deduped"], losses)
    assert rows[0]["step"] is None and rows[0]["level"] == pytest.approx(5.0)
    assert sum(r["step"]["mean"] for r in rows[1:]) == pytest.approx(rows[-1]["cumulative"]["mean"])
    assert rows[1]["step"]["verdict"] == BETTER and rows[2]["step"]["mean"] > 0


def _run(version: str, seed: int, held: float, kjv: float, docs: float) -> dict:
    return {"version": version, "seed": seed, "epochs": 0.5, "fingerprint": version,
            "final_eval": {"held": {"loss": held, "bpb": held / 2}, "held/kjv": {"loss": kjv, "bpb": kjv / 2},
                           "held/docs": {"loss": docs, "bpb": docs / 2}}}


def test_analyse_compares_every_evaluation_key_and_adjusts_the_family():
    runs = [_run("a", s, 5.0 + d, 5.2 + d, 4.8 + d) for s, d in enumerate((0.0, 0.03, -0.02))]
    runs += [_run("b", s, 4.9 + d, 5.0 + d, 4.85 + d) for s, d in enumerate((0.0, 0.031, -0.018))]
    runs += [_run("c", s, 5.0 + d, 5.2 + d, 4.8 + d) for s, d in enumerate((0.01, 0.02, -0.01))]
    out = analyse(runs, ["a", "b", "c"], "a")
    assert out["primary"] == "held" and out["eval_keys"] == ["held", "held/kjv", "held/docs"]
    b = out["comparisons"]["b"]
    assert b["held"]["loss"]["verdict"] == BETTER and b["held/kjv"]["loss"]["mean"] == pytest.approx(-0.2, abs=0.01)
    assert b["held"]["bpb"]["mean"] == pytest.approx(b["held"]["loss"]["mean"] / 2)
    assert b["held"]["loss"]["p_adjusted"] >= b["held"]["loss"]["p_value"]
    assert out["comparisons"]["c"]["held"]["loss"]["verdict"] == NO_EFFECT
    assert out["versions"]["a"]["eval"]["held"]["loss"]["n"] == 3
    with pytest.raises(ValueError, match="no finished runs for d"):
        analyse(runs, ["a", "d"], "a")


def test_a_version_with_the_baselines_content_stays_out_of_the_holm_family():
    runs = [_run("a", s, 5.0 + d, 5.2 + d, 4.8 + d) for s, d in enumerate((0.0, 0.03, -0.02))]
    runs += [_run("b", s, 4.9 + d, 5.0 + d, 4.85 + d) for s, d in enumerate((0.0, 0.031, -0.018))]
    runs += [_run("d", s, 5.02 + d, 5.2 + d, 4.8 + d) for s, d in enumerate((0.01, 0.02, -0.01))]
    without = analyse(runs, ["a", "b", "d"], "a")["comparisons"]
    copy = [{**r, "version": "a-copy"} for r in runs if r["version"] == "a"]  # same fingerprint: the same runs
    out = analyse(runs + copy, ["a", "b", "a-copy", "d"], "a")["comparisons"]
    assert out["a-copy"]["held"]["loss"]["identical"] and out["a-copy"]["held"]["loss"]["p_adjusted"] is None
    expected = holm([without[v]["held"]["loss"]["p_value"] for v in ("b", "d")])  # a family of two, not three
    assert [out[v]["held"]["loss"]["p_adjusted"] for v in ("b", "d")] == expected
    assert expected[0] == pytest.approx(2 * out["b"]["held"]["loss"]["p_value"])


def test_report_shows_a_not_informative_verdict_with_its_reason():
    runs = [_run("a", s, 5.0 + d, 5.2 + d, 4.8 + d) for s, d in enumerate((0.0, 0.25, -0.25))]
    runs += [_run("b", s, 5.125 + d, 5.2 + d, 4.8 + d) for s, d in enumerate((0.0, 0.25, -0.25))]
    for run in runs:
        run.update(key="k", dir="", cached=True, tokens_trained=1, unique_tokens=1, seconds=0.0, tokens_per_second=0.0,
                   device="cpu")
    versions = {v: {"fingerprint": v, "rows": 1, "parents": [], "tokens": 100, "tokens_by_source": {"web": 100},
                    "overlap": None} for v in ("a", "b")}
    context = {"device_type": "cpu", "name": "n", "store": "s", "effect": None, "eval_sets": {"held": "e" * 64},
               "spec": AblationSpec(seeds=(0, 1, 2)).to_dict(), "versions": versions, "diffs": [], "stages": None,
               "tokenizer": {"hash": "t" * 64, "vocab_size": 512, "path": "", "trained_on": "a"}}
    result = ablation_result(context, runs, "a")
    row = summary_rows(result)[1]
    assert row["verdict"] == NOT_INFORMATIVE and row["p"] == "-" and row["95% CI"] == "-"
    assert any(w.startswith("b: all seeds gave the same delta") and "add seeds" in w for w in result["warnings"])
    page, twin = ablation_report(result)
    assert ">not informative<" in page and "all seeds gave the same delta" in page and "<0.001" not in page
    assert twin["results"]["comparisons"]["b"]["held"]["loss"]["p_value"] is None


def test_single_source_sets_are_not_split_per_domain():
    runs = [{"version": v, "seed": s, "final_eval": {"held": {"loss": 5.0 + s, "bpb": 2.0},
                                                       "held/heldout": {"loss": 5.0 + s, "bpb": 2.0}}}
            for v in ("a", "b") for s in range(2)]
    assert analyse(runs, ["a", "b"], "a")["eval_keys"] == ["held"]


def test_spec_budget_and_curve_points():
    spec = AblationSpec(tokens=409_600, batch_size=8)
    assert spec.steps(4096) == 200  # 409,600 / (8 x 256)
    cfg = spec.config(seed=2, vocab_size=4096)
    assert cfg.seed == 2 and cfg.eval_every == 20 and cfg.tokens == 409_600 and cfg.eval_tokens == spec.eval_tokens
    short = AblationSpec(tokens=8 * 8 * 256, batch_size=8)  # 8 steps: evaluating 32,768 tokens each would dwarf them
    assert short.config(0, 4096).eval_every == 16
    assert AblationSpec(tokens=None).steps(8192) == math.ceil(20 * 987_360 / (16 * 256))  # Chinchilla default
