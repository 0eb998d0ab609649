"""Model-collapse guards: is this version drifting from human data the way self-consuming data does?

Models trained on generated data lose the tails of the distribution and degrade over generations
(Shumailov et al. 2024); keeping the real data and adding synthetic data keeps the error bounded, while
replacing it does not (Gerstgrasser et al. 2024). Every version gets these measurements; a *hard* guard
that fails stops the flow from publishing (unless overridden with a reason, which the manifest keeps).

Provenance guards (read from the records' `origin` / `generation` columns):
- synthetic_fraction: synthetic share of the words, overall and per source. Hard cap 0.5 for
  pre-training mixes (the issue's default: no more synthetic than human text; our choice). Instruction
  sets are synthetic by design: the share is reported, not capped.
- parent_human_kept: share of the parent version's human records that are still present, or were removed
  by a named step of this run (a reject with its reason): accumulate, do not replace. >= 0.99 (our choice:
  a few ids may be re-keyed). Applied to versions that hold synthetic records (an all-human version, such as
  an incremental batch of new documents, replaces nothing with generated text), and not to instruction
  sets, whose parent is the grounding corpus.
- lineage_depth: the histogram of `generation`; by default no record deeper than generation 1 (data made
  by a model trained on human data) enters training data (our choice, after Shumailov et al.).

Distribution guards, against a frozen human reference (a registered evaluation set), on equal-size word
samples (the project's token pattern, `curation.analysis.tokenize`, lower-cased). The reference is split
into two halves A and B; the version's sample V has B's size. Each guard compares V with B and scales by
what A, a second sample of human text, gives: the noise floor of sampling alone.
- unigram_js / bigram_js: Jensen-Shannon divergence JS(V, B) / JS(A, B); fails above 4 (our choice).
- tail_coverage: B's probability mass of the word types V contains, over the same for A (collapse
  forgets rare words first); fails below 0.8 (our choice).
- tail_mass: V's mass on words ranked below `tail_rank` (1,000) in the reference, over A's; fails below 0.5
  (our choice).
- distinct_2: distinct bigrams / bigrams in V over the same in A; fails below 0.7 (our choice). Gibberish
  raises it, which is why it is read with the next guard.
- perplexity_spread (needs a perplexity scorer: `reference_model`, a GPT trained on human data, which the
  caller loads and passes in as `perplexity`, so that this module needs no model code): per-document
  log-perplexity of V's documents against A's; fails when more than 30 % of V's documents fall outside A's
  5th-95th percentile range (10 % expected; 30 % is our choice). The std ratio is reported too.
- near_dup_cliff: clusters of near duplicates, and documents beyond the first of their cluster, per 1,000
  documents at Jaccard 0.7, 0.6, 0.5 and 0.4 (MinHash LSH, verified); fails when the version's duplicate
  documents rise above 3x the reference's (floor: 20 per 1,000) at any threshold (our choice): a flood of
  paraphrases, the way collapsed generators repeat themselves.

By default only the provenance guards are hard; the distribution guards warn (`hard:` lists the hard ones).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from curation.analysis import tokenize
from curation.evalsets import evalset_names, load_evalset
from curation.stats import near_dup_components

GUARD_NAMES = ("synthetic_fraction", "parent_human_kept", "lineage_depth", "unigram_js", "bigram_js",
               "tail_coverage", "tail_mass", "distinct_2", "perplexity_spread", "near_dup_cliff")
NEAR_DUP_THRESHOLDS = (0.7, 0.6, 0.5, 0.4)
DOC_WORDS = 1000  # words of each document that enter a sample, so that no giant document dominates (our choice)
NEAR_DUP_WORDS = 200  # words of each document compared for near duplicates (as the statistics' lexical sample)
MIN_PERPLEXITY_DOCS = 10  # reference documents the perplexity guard needs for its percentiles (our choice)

PerplexityScorer = Callable[[list[str]], Sequence[float]]
"""Scores texts under a reference model trained on human data: the log-perplexity (mean next-token negative
log-likelihood) of each text it can score; texts too short to score are left out, so the result may be
shorter than the input."""


class GuardError(Exception):
    """A version that fails a hard guard: not published."""


class GuardConfig(BaseModel):
    """The recipe's `guards:` block (every key optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A registered evaluation set: the frozen human reference (default: the recipe's decontamination set,
    # else the store's first registered set; no set, no distribution guards).
    reference: str | None = None
    reference_model: str | None = None  # a GPT checkpoint.pt trained on human data
    # Default: "instruction" for synthesis recipes, "pretraining" otherwise.
    mix: Literal["pretraining", "instruction"] | None = None
    max_synthetic_fraction: float | None = Field(0.5, ge=0, le=1)
    min_parent_human_kept: float | None = Field(0.99, ge=0, le=1)
    max_generation: int | None = Field(1, ge=0)
    max_js_ratio: float | None = Field(4.0, gt=0)
    min_tail_coverage_ratio: float | None = Field(0.8, ge=0)
    min_tail_mass_ratio: float | None = Field(0.5, ge=0)
    tail_rank: int = Field(1000, ge=1)
    min_distinct_ratio: float | None = Field(0.7, ge=0)
    max_ppl_outside: float | None = Field(0.3, ge=0, le=1)
    max_near_dup_ratio: float | None = Field(3.0, gt=0)
    # Duplicate documents per 1,000 below which no rise counts (our choice); the ratio's denominator, so > 0.
    near_dup_floor: float = Field(20.0, gt=0)
    sample_words: int = Field(100_000, ge=1000)  # per sample (B and V); A is the rest of the reference
    sample_docs: int = Field(1000, ge=10)  # documents of V for the near-duplicate and perplexity guards
    hard: list[str] = Field(default_factory=lambda: ["synthetic_fraction", "parent_human_kept", "lineage_depth"])
    seed: int = 0

    def resolved_mix(self, synthesis: bool) -> str:
        return self.mix or ("instruction" if synthesis else "pretraining")


# ---- samples ------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return [t.lower() for t in tokenize(text)]


def _split_reference(texts: list[str], seed: int, limit: int) -> tuple[list[str], list[list[str]],
                                                                       list[list[str]]]:
    """Two halves of the reference by document (seeded): A's texts and words, and B's words, each cut to
    at most `limit` words."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    a_texts = [texts[i] for k, i in enumerate(order) if k % 2]
    b_texts = [texts[i] for k, i in enumerate(order) if not k % 2]
    a = _sample_words(a_texts, limit)
    return a_texts[:len(a)], a, _sample_words(b_texts, limit)


def _sample_words(texts: Iterable[str], limit: int) -> list[list[str]]:
    """Each text's first DOC_WORDS words, in order, until `limit` words are taken."""
    out, total = [], 0
    for text in texts:
        if total >= limit:
            break
        words = _words(" ".join(text.split()[:DOC_WORDS]))[:DOC_WORDS]
        out.append(words[:limit - total])
        total += len(out[-1])
    return out


def _head(text: str, words: int = NEAR_DUP_WORDS) -> str:
    return " ".join(text.split()[:words])


def _count(docs: list[list[str]], n: int) -> Counter:
    counts: Counter = Counter()
    for words in docs:
        if n == 1:
            counts.update(words)
        else:
            counts.update(zip(*(words[k:] for k in range(n))))
    return counts


def js_divergence(p: Counter, q: Counter) -> float:
    """Jensen-Shannon divergence in bits (0 for identical distributions, at most 1)."""
    keys = list(set(p) | set(q))
    if not keys:
        return 0.0
    pv = np.array([p.get(k, 0) for k in keys], dtype=np.float64)
    qv = np.array([q.get(k, 0) for k in keys], dtype=np.float64)
    pv, qv = pv / max(pv.sum(), 1), qv / max(qv.sum(), 1)
    m = 0.5 * (pv + qv)

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float((x[mask] * np.log2(x[mask] / m[mask])).sum())

    return 0.5 * kl(pv) + 0.5 * kl(qv)


def _mass(counts: Counter, types: Iterable[Any]) -> float:
    total = sum(counts.values())
    return sum(counts.get(t, 0) for t in types) / total if total else 0.0


def _distinct(counts: Counter) -> float:
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def _ratio(value: float, floor: float) -> float | None:
    return value / floor if floor > 0 else None


def near_dup_curve_point(texts: list[str], threshold: float) -> tuple[float, float]:
    """(near-duplicate clusters, documents beyond the first of their cluster) per 1,000 documents."""
    if len(texts) < 2:
        return 0.0, 0.0
    labels = near_dup_components(texts, threshold)
    _, counts = np.unique(labels, return_counts=True)
    per = 1000.0 / len(texts)
    return float((counts > 1).sum()) * per, float((counts[counts > 1] - 1).sum()) * per


# ---- the guards ---------------------------------------------------------------------------------


def _guard(name: str, value: float | None, threshold: float | None, op: str, config: GuardConfig, source: str,
           detail: str = "", applies: bool = True) -> dict[str, Any]:
    if value is None or threshold is None or not applies:
        passed = None  # not measured or not applicable: neither passes nor fails
    elif op == "<=":
        passed = value <= threshold
    else:
        passed = value >= threshold
    return {"name": name, "value": None if value is None else round(float(value), 4), "threshold": threshold,
            "op": op, "passed": passed, "hard": name in config.hard, "source": source, "detail": detail}


@dataclass
class _Scan:
    """What one pass over the version's records gathers."""

    words_by: Counter = field(default_factory=Counter)  # (source, origin) -> words
    generations: Counter = field(default_factory=Counter)
    present: set[str] = field(default_factory=set)  # the parent's human ids still present
    texts: list[str] = field(default_factory=list)  # the sampled documents, in a seeded order

    @property
    def total_words(self) -> int:
        return sum(self.words_by.values())

    @property
    def synthetic_words(self) -> int:
        return sum(n for (_, origin), n in self.words_by.items() if origin == "synthetic")

    def by_source(self) -> dict[str, dict[str, float]]:
        """Words, synthetic words and synthetic share per source."""
        out: dict[str, dict[str, float]] = {}
        for (source, origin), n in self.words_by.items():
            entry = out.setdefault(source, {"words": 0, "synthetic_words": 0})
            entry["words"] += n
            entry["synthetic_words"] += n if origin == "synthetic" else 0
        for entry in out.values():
            entry["synthetic_fraction"] = round(entry["synthetic_words"] / entry["words"], 4) if entry["words"] else 0.0
        return out


def _scan(batches: Iterable[pa.Table], config: GuardConfig, parent_human_ids: set[str] | None) -> _Scan:
    """Words by source and origin, generations, the parent's human ids present, and a seeded sample of at most
    4 x `sample_docs` documents (the smallest id hashes)."""
    scan = _Scan()
    sample: list[tuple[int, str]] = []  # (id hash, text)
    for table in batches:
        if table.num_rows == 0:
            continue
        words = pc.count_substring_regex(table.column("text"), r"\S+").to_pylist()
        for source, origin, n in zip(table.column("source").to_pylist(), table.column("origin").to_pylist(), words):
            scan.words_by[(source, origin)] += n
        scan.generations.update(table.column("generation").to_pylist())
        ids = table.column("id").to_pylist()
        if parent_human_ids:
            scan.present.update(i for i in ids if i in parent_human_ids)
        for rid, text in zip(ids, table.column("text").to_pylist()):
            sample.append((xxhash.xxh64_intdigest(f"{config.seed}:{rid}".encode()), text))
            if len(sample) > 4 * config.sample_docs + 4096:  # keep the smallest hashes: a seeded sample
                sample.sort(key=lambda kv: kv[0])
                del sample[4 * config.sample_docs:]
    sample.sort(key=lambda kv: kv[0])
    scan.texts = [t for _, t in sample]
    return scan


def compute_guards(batches: Iterable[pa.Table], config: GuardConfig, *, synthesis: bool = False,
                   reference_name: str | None = None, reference_texts: list[str] | None = None,
                   parent: str | None = None, parent_human_ids: set[str] | None = None,
                   excused_ids: set[str] | None = None, perplexity: PerplexityScorer | None = None) -> dict[str, Any]:
    """The guard report of the records in `batches` (columns id, text, source, origin, generation).

    `perplexity` scores documents under the reference model (`config.reference_model`, loaded by the caller);
    without it the perplexity guard is not measured."""
    if config.reference_model and perplexity is None:
        raise ValueError(f"guards: reference_model = {config.reference_model!r} is set but no perplexity scorer was "
                         "given; pass `perplexity=`, a callable that scores texts under that model")
    mix = config.resolved_mix(synthesis)
    scan = _scan(batches, config, parent_human_ids)
    by_source = scan.by_source()
    guards = _provenance_guards(scan, by_source, config, mix, parent, parent_human_ids, excused_ids)
    reference_info = None
    if reference_texts:
        samples = _Samples.draw(reference_texts, scan.texts, config)
        reference_info = {"name": reference_name, "a_words": samples.words("a"), "b_words": samples.words("b"),
                          "version_words": samples.words("v")}
        guards += _distribution_guards(samples, config)
        guards.append(_perplexity_guard(samples, config, perplexity))
        guards.append(_near_dup_guard(reference_texts, scan.texts, config))
    else:
        guards += [_guard(name, None, None, "", config, "needs a reference set", "no reference")
                   for name in GUARD_NAMES[3:]]
    failures = [g["name"] for g in guards if g["passed"] is False]
    hard = [g["name"] for g in guards if g["passed"] is False and g["hard"]]
    return {"mix": mix, "reference": reference_info,
            "generation_histogram": {str(g): n for g, n in sorted(scan.generations.items())},
            "synthetic_by_source": by_source, "guards": guards, "failures": failures, "hard_failures": hard,
            "passed": not hard}


def _provenance_guards(scan: _Scan, by_source: dict[str, dict[str, float]], config: GuardConfig, mix: str,
                       parent: str | None, parent_human_ids: set[str] | None,
                       excused_ids: set[str] | None) -> list[dict[str, Any]]:
    """synthetic_fraction, parent_human_kept and lineage_depth, read from the records' provenance columns."""
    synthetic_words = scan.synthetic_words
    fraction = synthetic_words / scan.total_words if scan.total_words else 0.0
    guards = [_guard("synthetic_fraction", fraction, config.max_synthetic_fraction, "<=", config,
                     "cap 0.5 for pre-training mixes (our choice; Gerstgrasser et al. 2024: keep real data)",
                     ", ".join(f"{s} {e['synthetic_fraction']:.2f}" for s, e in sorted(by_source.items())),
                     applies=mix == "pretraining")]
    kept = None
    if parent_human_ids:
        excused = len((excused_ids or set()) & (parent_human_ids - scan.present))
        kept = (len(scan.present) + excused) / len(parent_human_ids)
        detail = f"{len(scan.present):,} of {len(parent_human_ids):,} human records of {parent} present, " \
                 f"{excused:,} removed by a named step"
    else:
        detail = "no parent with human records"
    if synthetic_words == 0:
        detail += "; not applied: no synthetic records replace them (an incremental or filtered human version)"
    guards.append(_guard("parent_human_kept", kept, config.min_parent_human_kept, ">=", config,
                         "accumulate, do not replace (Gerstgrasser et al. 2024); 0.99 our choice", detail,
                         applies=mix == "pretraining" and synthetic_words > 0))
    deepest = max(scan.generations) if scan.generations else 0
    guards.append(_guard("lineage_depth", deepest, config.max_generation, "<=", config,
                         "no data from models trained on generated data (after Shumailov et al. 2024); our choice",
                         ", ".join(f"generation {g}: {n:,}" for g, n in sorted(scan.generations.items()))))
    return guards


@dataclass
class _Samples:
    """The reference's halves A (texts and words) and B (words), and the version's sample V (texts and words)
    of B's size."""

    a_texts: list[str]
    a: list[list[str]]
    b: list[list[str]]
    v_texts: list[str]
    v: list[list[str]]

    @classmethod
    def draw(cls, reference_texts: list[str], version_texts: list[str], config: GuardConfig) -> _Samples:
        a_texts, a, b = _split_reference(reference_texts, config.seed, config.sample_words)
        v = _sample_words(version_texts, sum(len(w) for w in b))
        return cls(a_texts, a, b, version_texts, v)

    def words(self, name: str) -> int:
        return sum(len(w) for w in getattr(self, name))


def _distribution_guards(samples: _Samples, config: GuardConfig) -> list[dict[str, Any]]:
    """unigram_js, bigram_js, tail_coverage, tail_mass and distinct_2: V and A each against B."""
    a, b, v = samples.a, samples.b, samples.v
    size, v_size = samples.words("b"), samples.words("v")
    note = f" (the version has only {v_size:,} words against {size:,})" if v_size < 0.5 * size else ""
    guards = []
    for n, name in ((1, "unigram_js"), (2, "bigram_js")):
        ca, cb, cv = _count(a, n), _count(b, n), _count(v, n)
        floor, value = js_divergence(ca, cb), js_divergence(cv, cb)
        guards.append(_guard(name, _ratio(value, floor), config.max_js_ratio, "<=", config,
                             "JS(version, reference) over JS between two halves of the reference; 4 our choice",
                             f"JS {value:.4f} bits, reference halves {floor:.4f}{note}"))
    ca, cb, cv = _count(a, 1), _count(b, 1), _count(v, 1)
    cov_v, cov_a = _mass(cb, cv.keys()), _mass(cb, ca.keys())
    guards.append(_guard("tail_coverage", _ratio(cov_v, cov_a), config.min_tail_coverage_ratio, ">=", config,
                         "reference mass of the word types present (Shumailov et al.: tails vanish first); "
                         "0.8 our choice",
                         f"covers {cov_v:.3f} of the reference's mass, a human sample {cov_a:.3f}"))
    ranked = [w for w, _ in (ca + cb).most_common()]
    tail = set(ranked[config.tail_rank:])
    tail_v, tail_a = _mass(cv, tail), _mass(ca, tail)
    guards.append(_guard("tail_mass", _ratio(tail_v, tail_a), config.min_tail_mass_ratio, ">=", config,
                         f"mass on words ranked > {config.tail_rank} in the reference; 0.5 our choice",
                         f"{tail_v:.3f} against a human sample's {tail_a:.3f}"))
    da, dv = _distinct(_count(a, 2)), _distinct(_count(v, 2))
    guards.append(_guard("distinct_2", _ratio(dv, da), config.min_distinct_ratio, ">=", config,
                         "distinct bigrams per bigram (Li et al. 2016); 0.7 our choice",
                         f"{dv:.3f} against a human sample's {da:.3f}"))
    return guards


def _perplexity_guard(samples: _Samples, config: GuardConfig, perplexity: PerplexityScorer | None) -> dict[str, Any]:
    """perplexity_spread: the share of V's documents whose log-perplexity falls outside A's 5th-95th percentiles."""
    if perplexity is None:
        return _guard("perplexity_spread", None, config.max_ppl_outside, "<=", config,
                      "needs `reference_model`", "no reference model configured")
    ref_ppl = np.asarray(perplexity(samples.a_texts[:config.sample_docs]), dtype=np.float64)
    ver_ppl = np.asarray(perplexity(samples.v_texts[:config.sample_docs]), dtype=np.float64)
    if len(ref_ppl) < MIN_PERPLEXITY_DOCS or not len(ver_ppl):
        return _guard("perplexity_spread", None, config.max_ppl_outside, "<=", config,
                      f"needs {MIN_PERPLEXITY_DOCS} reference documents", "too few documents")
    lo, hi = np.percentile(ref_ppl, [5, 95])
    below, above = float((ver_ppl < lo).mean()), float((ver_ppl > hi).mean())
    spread = float(ver_ppl.std() / ref_ppl.std()) if ref_ppl.std() > 0 else math.nan
    return _guard("perplexity_spread", below + above, config.max_ppl_outside, "<=", config,
                  "log-perplexity under a GPT trained on human data outside the reference's "
                  "5th-95th percentiles (10 % expected); 0.3 our choice",
                  f"{below:.2f} below, {above:.2f} above; std ratio {spread:.2f}; mean "
                  f"{ver_ppl.mean():.2f} against {ref_ppl.mean():.2f}")


def _near_dup_guard(reference_texts: list[str], version_texts: list[str], config: GuardConfig) -> dict[str, Any]:
    """near_dup_cliff: the version's near-duplicate curve over the reference's, at the worst threshold."""
    ref_docs = [_head(t) for t in reference_texts[:config.sample_docs]]
    ver_docs = [_head(t) for t in version_texts[:config.sample_docs]]
    curve_v = {t: near_dup_curve_point(ver_docs, t) for t in NEAR_DUP_THRESHOLDS}
    curve_r = {t: near_dup_curve_point(ref_docs, t) for t in NEAR_DUP_THRESHOLDS}
    worst = max(curve_v[t][1] / max(curve_r[t][1], config.near_dup_floor) for t in NEAR_DUP_THRESHOLDS)

    def curve(points: dict[float, tuple[float, float]]) -> str:
        return " / ".join(f"{points[t][0]:.0f} ({points[t][1]:.0f})" for t in NEAR_DUP_THRESHOLDS)

    return _guard("near_dup_cliff", worst, config.max_near_dup_ratio, "<=", config,
                  "near duplicates per 1,000 documents at Jaccard 0.7/0.6/0.5/0.4 against the reference's; "
                  "3x our choice",
                  f"clusters (duplicates) per 1,000: version {curve(curve_v)}; reference {curve(curve_r)}")


def describe_failures(report: dict[str, Any], hard_only: bool = True) -> str:
    """One line naming each failed guard with its value, threshold and detail (hard ones only by default)."""
    parts = []
    for g in report["guards"]:
        if g["passed"] is False and (g["hard"] or not hard_only):
            parts.append(f"{g['name']} = {g['value']} (threshold {g['op']} {g['threshold']}; {g['detail']})")
    return "; ".join(parts)


# ---- inputs from the store -----------------------------------------------------------------------


def resolve_reference(store: Any, config: GuardConfig, recipe: Any = None) -> str | None:
    """The human reference set: the configured one, else the recipe's decontamination set, else the store's first."""
    if config.reference:
        return config.reference
    if recipe is not None:
        for spec in recipe.steps:
            if spec.step == "decontaminate" and spec.params.get("evalsets"):
                return spec.params["evalsets"][0]
    names = evalset_names(store, "evaluation")
    return names[0] if names else None


def reference_texts(store: Any, name: str | None) -> list[str] | None:
    """The non-empty texts of a registered evaluation set (None without a name)."""
    if not name:
        return None
    table, _ = load_evalset(store, name)
    return [t for t in table.column("text").to_pylist() if t]


def human_ids(store: Any, version: str) -> set[str]:
    """Ids of a version's human records: what `parent_human_kept` looks for in the next version."""
    table = store.read_table(version, columns=["id", "origin"])
    return set(table.filter(pc.equal(table.column("origin"), "human")).column("id").to_pylist())


GUARD_COLUMNS = ["id", "text", "source", "origin", "generation"]


def version_guards(store: Any, version: str, config: GuardConfig | None = None, parent: str | None = None,
                   synthesis: bool | None = None, perplexity: PerplexityScorer | None = None) -> dict[str, Any]:
    """The guard report of a published version (parent: default its manifest's first parent; `perplexity`: see
    `compute_guards`)."""
    config = config or GuardConfig()
    manifest = store.manifest(version)
    parent = parent if parent is not None else (manifest.get("parents") or [None])[0]
    if synthesis is None:
        synthesis = bool((manifest.get("recipe") or {}).get("synthesize"))
    reference = resolve_reference(store, config)
    rejected = store.read_table(version, "rejects", columns=["id"]).column("id").to_pylist() \
        if store.files(version, "rejects") else []
    return compute_guards(store.iter_batches(version, GUARD_COLUMNS, batch_rows=4096), config, synthesis=synthesis,
                          reference_name=reference, reference_texts=reference_texts(store, reference), parent=parent,
                          parent_human_ids=human_ids(store, parent) if parent and store.exists(parent) else None,
                          excused_ids={i for i in rejected if i}, perplexity=perplexity)


def staged_guards(store: Any, staging_path: str, config: GuardConfig, *, recipe: Any = None,
                  parents: list[str] | None = None, synthesis: bool = False,
                  perplexity: PerplexityScorer | None = None) -> dict[str, Any]:
    """The guard report of a version before it is published (its staged data and rejects parts; `perplexity`:
    see `compute_guards`)."""
    fs = store.fs
    data = sorted(p for p in fs.ls(f"{staging_path}/data", detail=False) if p.endswith(".parquet"))
    rejects = sorted(p for p in fs.ls(f"{staging_path}/rejects", detail=False) if p.endswith(".parquet"))

    def batches() -> Iterable[pa.Table]:
        for part in data:
            yield pq.read_table(part, columns=GUARD_COLUMNS, filesystem=fs)

    excused = {i for part in rejects
               for i in pq.read_table(part, columns=["id"], filesystem=fs).column("id").to_pylist() if i}
    parent = (parents or [None])[0]
    reference = resolve_reference(store, config, recipe)
    return compute_guards(batches(), config, synthesis=synthesis, reference_name=reference,
                          reference_texts=reference_texts(store, reference), parent=parent,
                          parent_human_ids=human_ids(store, parent) if parent and store.exists(parent) else None,
                          excused_ids=excused, perplexity=perplexity)


def gate(report: dict[str, Any], name: str, override: str | None) -> dict[str, Any] | None:
    """Refuse a version whose hard guards fail, unless `override` gives a reason (returned for the manifest)."""
    if report["passed"]:
        return None
    if not override:
        raise GuardError(f"version {name!r} not published: hard guard(s) failed: {describe_failures(report)}. "
                         "Fix the data, change the thresholds in the recipe's `guards:`, or publish anyway with "
                         "--override-guards REASON (the reason is recorded in the manifest)")
    return {"reason": override, "overridden": list(report["hard_failures"])}
