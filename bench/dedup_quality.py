"""Near-duplicate detection quality: planted duplicates of known Jaccard, precision and recall of PAIRS.

    .venv/bin/python bench/dedup_quality.py                       # --docs 5000 base documents
    .venv/bin/python bench/dedup_quality.py --docs 2000 --json bench/out/dedup_quality.json --check

Corpus. Base documents are real text: paragraphs (runs of 2-8 consecutive sentences or lines) drawn
at random from the demo corpus's human sources (`stdlib_docs.jsonl`: standard-library docstrings,
`kjv.jsonl.gz`: King James Bible chapters; `curation.demo.build_demo_corpus`) and joined until a
log-normal target length (mean ~3 KB) is reached. Every base document then gets, by a seeded draw:

    10 %  an exact copy (half byte-identical, half with case and white space changed)
    50 %  one near copy          30 %  nothing
    10 %  a family of 2-3 near copies (so copy-copy "sibling" pairs and transitive clusters occur;
          `--family-rate`, taken from "nothing")

A near copy edits 1-20 % of the words (uniform, whole percents), each edit a replace, insert or
delete (a word from the corpus vocabulary), either scattered over the document or in 1-3 contiguous
blocks (half each: scattered edits break up to 5 shingles each, blocks far fewer, so together they
cover Jaccard 0.2-1.0). The Jaccard of every pair is MEASURED with the library's own shingling
(`curation.dedup.shingles` -> `shingle_set` -> `jaccard`: word 5-grams of normalised text); pairs are
bucketed by that, not by edit rate.

Ground truth = every pair with true Jaccard >= the threshold. Planted pairs (base-copy and
copy-copy) are known; to catch pairs nobody planted (two base documents sharing paragraphs, repeated
passages in the sources), every pair sharing a band of a very permissive LSH over the same 128
MinHash values (64 bands x 2 rows: P(candidate) = 0.998 at J = 0.3, 1 - 1e-8 at J = 0.5) has its
Jaccard computed exactly too; such unplanted pairs are reported and counted in the truth.

The steps run as the flow runs them, without Prefect: the shuffled corpus is split into `--batches`
pyarrow tables (id, text), each written to a Parquet file, `collect(batch)` on each, `decide` on the
list of `Collected(value, path, store_url)` (verification re-reads candidate texts from those files),
then `bind(decision)` and `apply(batch)` on each batch (its rejects must equal `decision.removals`).
`minhash_dedup` runs twice, with `verify: true` (the default) and `verify: false` (LSH candidates
only), and `exact_dedup` once. A true pair (a, b) is CAUGHT when it does not survive twice (at
least one of a, b is removed), and a removal is RIGHT when the document it names as kept (`dup_of`,
the number in its reject reason) is truly within the threshold of it: deduplication's own terms.
For comparison a pair is also counted FOUND when a and b end in the same cluster.

Printed: per Jaccard bucket (< 0.5 counts only planted/permissive-LSH pairs; 0.5-0.6 ... 0.9-1.0;
exact = identical shingle sets), the true pairs, how many were planted, the S-curve probability
`candidate_probability` at the bucket midpoint and averaged over the bucket's pairs (the recall LSH
alone should give), and found/recall with and without verification (below the threshold, "found"
pairs are false merges). Then precision for J >= threshold: over every member pair of every cluster
(strict: a pair whose own Jaccard is below the threshold is false even when the union-find chain that
joined them is made of true pairs), and over pairs joined by a chain of true pairs; and document-level
removals (justified = its cluster holds a document it is truly a near-duplicate of).

Targets (`--check` exits 1 when missed), with verification on: precision of removals >= 0.97 and
recall (caught true pairs) >= 0.95 for pairs with J >= the threshold (0.8 by default).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import dedup as D
from curation.steps.base import Collected
from curation.steps.dedup import ExactDedup, MinHashDedup

TARGET_PRECISION = 0.97
TARGET_RECALL = 0.95
BUCKETS = [(0.0, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0)]  # [lo, hi); then "exact"
PERMISSIVE_BANDS, PERMISSIVE_ROWS = 64, 2
SHOWN_REPORT_KEYS = ("bands", "rows", "candidate_pairs", "verified_pairs", "rejected_by_verification", "removed",
                     "index_bytes_per_doc")
_UNIT_SPLIT = re.compile(r"(?<=[.!?;:])\s+|\n+")
_TOKEN = re.compile(r"(\S+)(\s*)")


# ------------------------------------------------------------------------------------------------
# Corpus


def load_units(folder: Path) -> list[list[str]]:
    """The demo corpus's human sources, each document as a list of sentences/lines."""
    from curation.demo import KJV_FILE, STDLIB_FILE, build_demo_corpus

    build_demo_corpus(folder, scale=1.0)
    docs: list[list[str]] = []
    for name in (STDLIB_FILE, KJV_FILE):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(folder / name, "rt", encoding="utf-8") as handle:
            for line in handle:
                units = [u.strip() for u in _UNIT_SPLIT.split(json.loads(line)["text"]) if u and u.strip()]
                if len(units) >= 2:
                    docs.append(units)
    return docs


def make_base_docs(sources: list[list[str]], n: int, rng: random.Random, mean_chars: float = 3000.0) -> list[str]:
    """`n` documents of paragraphs drawn from random places of random source documents."""
    weights = [sum(len(u) for u in units) for units in sources]
    sigma = 0.5
    mu = math.log(mean_chars) - sigma * sigma / 2  # log-normal with the asked mean
    docs = []
    for _ in range(n):
        target = min(max(rng.lognormvariate(mu, sigma), 600.0), 15000.0)
        paragraphs: list[str] = []
        size = 0
        while size < target:
            units = rng.choices(sources, weights)[0]
            k = rng.randint(2, 8)
            start = rng.randrange(max(1, len(units) - k + 1))
            paragraph = " ".join(units[start:start + k])
            paragraphs.append(paragraph)
            size += len(paragraph) + 2
        docs.append("\n\n".join(paragraphs))
    return docs


def edit_words(text: str, rate: float, mode: str, vocab: list[str], rng: random.Random) -> str:
    """Edit round(rate x words) words (at least one): replace, insert or delete, each with a corpus word;
    positions scattered uniformly or in 1-3 contiguous blocks."""
    tokens = [[m.group(1), m.group(2) or " "] for m in _TOKEN.finditer(text)]
    n_edits = max(1, round(rate * len(tokens)))
    if mode == "scattered":
        positions = rng.sample(range(len(tokens)), min(n_edits, len(tokens)))
    else:
        blocks = rng.randint(1, 3)
        sizes = [n_edits // blocks + (1 if b < n_edits % blocks else 0) for b in range(blocks)]
        chosen: set[int] = set()
        for size in sizes:
            start = rng.randrange(max(1, len(tokens) - size + 1))
            chosen.update(range(start, min(start + size, len(tokens))))
        positions = list(chosen)
    for pos in sorted(positions, reverse=True):  # from the end: earlier positions stay valid
        op = rng.choice(("replace", "insert", "delete"))
        if op == "replace":
            tokens[pos][0] = rng.choice(vocab)
        elif op == "insert":
            tokens.insert(pos, [rng.choice(vocab), " "])
        elif len(tokens) > 1:
            del tokens[pos]
    return "".join(w + s for w, s in tokens).strip()


def case_space_variant(text: str, rng: random.Random) -> str:
    """The same normalised text: upper-cased words and doubled spaces/newlines here and there."""
    out = []
    for m in _TOKEN.finditer(text):
        word, space = m.group(1), m.group(2) or " "
        r = rng.random()
        if r < 0.05:
            word = word.upper()
        elif r < 0.08:
            space = space + " "
        elif r < 0.10:
            space = "\n"
        out.append(word + space)
    return "".join(out).strip()


@dataclass
class Doc:
    id: str
    text: str
    base: int  # index of the base document it derives from
    kind: str  # base | exact | exact_variant | near
    edit: str = ""  # e.g. "scattered 7%"


@dataclass
class Corpus:
    docs: list[Doc]
    planted: list[tuple[int, int, str]] = field(default_factory=list)  # (doc index, doc index, relation)
    n_base: int = 0
    roles: dict[str, int] = field(default_factory=dict)


def build_corpus(sources: list[list[str]], n_base: int, seed: int, family_rate: float = 0.10) -> Corpus:
    """Base documents plus planted exact and near copies; documents in a seeded shuffled order."""
    rng = random.Random(seed)
    bases = make_base_docs(sources, n_base, rng)
    vocab = sorted({w for units in sources for u in units for w in u.split() if w.isalpha()})
    docs: list[Doc] = [Doc(f"b{i:05d}", t, i, "base") for i, t in enumerate(bases)]
    families: dict[int, list[int]] = defaultdict(list)
    roles: Counter = Counter()
    for i, text in enumerate(bases):
        r = rng.random()
        if r < 0.10:
            roles["exact copy"] += 1
            if rng.random() < 0.5:
                docs.append(Doc(f"b{i:05d}-x", text, i, "exact"))
            else:
                docs.append(Doc(f"b{i:05d}-x", case_space_variant(text, rng), i, "exact_variant"))
            families[i].append(len(docs) - 1)
        elif r < 0.60 + family_rate:
            copies = 1 if r < 0.60 else rng.randint(2, 3)
            roles["one near copy" if copies == 1 else "family of 2-3 near copies"] += 1
            for k in range(copies):
                rate = rng.randint(1, 20) / 100
                mode = rng.choice(("scattered", "block"))
                docs.append(Doc(f"b{i:05d}-n{k}", edit_words(text, rate, mode, vocab, rng), i, "near",
                                f"{mode} {rate:.0%}"))
                families[i].append(len(docs) - 1)
        else:
            roles["nothing"] += 1
    planted: list[tuple[int, int, str]] = []
    for i, copies in families.items():
        planted.extend((i, c, "base-copy") for c in copies)
        planted.extend((a, b, "copy-copy") for x, a in enumerate(copies) for b in copies[x + 1:])
    order = list(range(len(docs)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    shuffled = [docs[old] for old in order]
    planted = [(min(position[a], position[b]), max(position[a], position[b]), rel) for a, b, rel in planted]
    return Corpus(shuffled, planted, n_base, dict(roles))


# ------------------------------------------------------------------------------------------------
# Ground truth


def shingle_sets(texts: list[str]) -> list[np.ndarray]:
    hashes, offsets = D.shingles(texts)
    return [D.shingle_set(hashes, offsets, k) for k in range(len(texts))]


def ground_truth(corpus: Corpus, sets: list[np.ndarray]) -> tuple[dict[tuple[int, int], float], dict, dict]:
    """Exact Jaccard of every planted pair and of every pair a permissive LSH proposes."""
    sim: dict[tuple[int, int], float] = {}
    relation: dict[tuple[int, int], str] = {}
    for a, b, rel in corpus.planted:
        sim[(a, b)] = D.jaccard(sets[a], sets[b])
        relation[(a, b)] = rel
    start = time.perf_counter()
    hashes, offsets = D.shingles([d.text for d in corpus.docs])
    sigs = D.signatures(hashes, offsets)
    bands = D.band_hashes(sigs, PERMISSIVE_BANDS, PERMISSIVE_ROWS)
    candidates = D.candidate_pairs(bands, max_group=len(corpus.docs))  # every pair of every group
    for a, b in candidates.tolist():
        if (a, b) not in sim:
            sim[(a, b)] = D.jaccard(sets[a], sets[b])
            relation[(a, b)] = "unplanted"
    info = {"permissive_bands": PERMISSIVE_BANDS, "permissive_rows": PERMISSIVE_ROWS,
            "permissive_candidates": int(len(candidates)), "seconds": round(time.perf_counter() - start, 2),
            "p_candidate_at": {f"{s:g}": float(D.candidate_probability(s, PERMISSIVE_BANDS, PERMISSIVE_ROWS))
                               for s in (0.2, 0.3, 0.5)}}
    return sim, relation, info


# ------------------------------------------------------------------------------------------------
# Running the steps as the flow does


def write_batches(corpus: Corpus, folder: Path, n_batches: int) -> list[tuple[pa.Table, str]]:
    out = []
    n = len(corpus.docs)
    for k in range(n_batches):
        part = corpus.docs[k * n // n_batches:(k + 1) * n // n_batches]
        table = pa.table({"id": pa.array([d.id for d in part], pa.string()),
                          "text": pa.array([d.text for d in part], pa.large_string())})
        path = folder / f"batch-{k:03d}.parquet"
        pq.write_table(table, path)
        out.append((table, str(path)))
    return out


def run_step(step, batches: list[tuple[pa.Table, str]], store_url: str) -> dict:
    """collect on every batch, decide once, bind, apply on every batch; the clusters that came out."""
    start = time.perf_counter()
    collected = [Collected(step.collect(table), path, store_url) for table, path in batches]
    collect_s = time.perf_counter() - start
    start = time.perf_counter()
    decision = step.decide(collected)
    decide_s = time.perf_counter() - start
    step.bind(decision)
    rejected: list[str] = []
    for table, _ in batches:
        rejected.extend(step.apply(table).rejected.column("id").to_pylist())
    if sorted(rejected) != sorted(decision.removals):
        raise SystemExit(f"{step.name}: apply() rejected {len(rejected)} rows but the decision removes "
                         f"{len(decision.removals)}")
    cluster: dict[str, str] = {}
    for doc_id in decision.cluster_sizes:
        removal = decision.removals.get(doc_id)
        cluster[doc_id] = removal.cluster if removal else doc_id
    report = {k: v for k, v in decision.report.items() if k != "examples"}
    return {"cluster": cluster, "removed": set(decision.removals), "report": report,
            "dup_of": {doc_id: (r.dup_of, r.jaccard) for doc_id, r in decision.removals.items()},
            "collect_s": round(collect_s, 2), "decide_s": round(decide_s, 2)}


# ------------------------------------------------------------------------------------------------
# Evaluation


def bucket_of(j: float) -> str:
    if j >= 1.0:
        return "exact"
    for lo, hi in BUCKETS:
        if lo <= j < hi:
            return f"{lo:.1f}-{hi:.1f}" if lo > 0 else "< 0.5"
    return "< 0.5"


def bucket_names() -> list[str]:
    return [bucket_of(lo) for lo, _ in BUCKETS] + ["exact"]


def bucket_mid(name: str) -> float:
    if name == "exact":
        return 1.0
    if name == "< 0.5":
        return 0.45  # shown as "<=": P at 0.5 bounds the whole bucket
    lo, hi = (float(x) for x in name.split("-"))
    return (lo + hi) / 2


def evaluate(corpus: Corpus, sets: list[np.ndarray], sim: dict, relation: dict, run: dict, threshold: float) -> dict:
    ids = [d.id for d in corpus.docs]
    index = {doc_id: k for k, doc_id in enumerate(ids)}
    cluster = run["cluster"]
    extra: dict[tuple[int, int], float] = {}  # pairs outside the ground truth (below J 0.3, or missed by it)

    def jac(a: int, b: int) -> float:
        j = sim.get((a, b))
        if j is None:
            j = extra.get((a, b))
            if j is None:
                j = extra[(a, b)] = D.jaccard(sets[a], sets[b])
        return j

    def found(a: int, b: int) -> bool:
        ca = cluster.get(ids[a])
        return ca is not None and ca == cluster.get(ids[b])

    removed_ids = set(run["removed"])
    per_bucket: dict[str, dict] = {name: {"pairs": 0, "found": 0} for name in bucket_names()}
    true_pairs = found_true = resolved_true = 0
    for (a, b), j in sim.items():
        name = bucket_of(j)
        per_bucket[name]["pairs"] += 1
        hit = found(a, b)
        per_bucket[name]["found"] += hit
        if j >= threshold:
            true_pairs += 1
            found_true += hit
            # What deduplication is for: the pair does not survive twice (at least one was removed).
            resolved_true += ids[a] in removed_ids or ids[b] in removed_ids
    # Truth components: documents joined by chains of pairs with J >= threshold.
    uf = D.UnionFind(len(ids))
    for (a, b), j in sim.items():
        if j >= threshold:
            uf.union(a, b)
    groups: dict[str, list[int]] = defaultdict(list)
    for doc_id, c in cluster.items():
        groups[c].append(index[doc_id])
    member_pairs = good = chained = 0
    false_examples: list[dict] = []
    for members in groups.values():
        members.sort()
        for x, a in enumerate(members):
            for b in members[x + 1:]:
                member_pairs += 1
                j = jac(a, b)
                if j >= threshold:
                    good += 1
                    chained += 1
                else:
                    chained += uf.find(a) == uf.find(b)
                    if len(false_examples) < 5:
                        false_examples.append({"a": ids[a], "b": ids[b], "jaccard": round(j, 4),
                                               "relation": relation.get((a, b), "outside ground truth"),
                                               "cluster_size": len(members)})
    removed = run["removed"]
    justified = sum(1 for doc_id in removed
                    if any(uf.find(index[doc_id]) == uf.find(m) and m != index[doc_id]
                           for m in groups[cluster[doc_id]]))
    should_remove = len(ids) - len({uf.find(k) for k in range(len(ids))})
    # Each removal names the kept document it duplicates and a Jaccard (the number in the reject reason):
    # is the removed document really a near-duplicate of THAT document, and is the recorded number right?
    dup_ok = recorded_nan = recorded_wrong = 0
    dup_examples: list[dict] = []
    for doc_id, (dup_of, recorded) in run["dup_of"].items():
        a, b = sorted((index[doc_id], index[dup_of]))
        j = jac(a, b)
        dup_ok += j >= threshold
        if recorded != recorded:
            recorded_nan += 1
        elif abs(recorded - j) > 1e-9:
            recorded_wrong += 1
        if j < threshold and len(dup_examples) < 5:
            dup_examples.append({"removed": doc_id, "dup_of": dup_of, "true_jaccard": round(j, 4),
                                 "recorded_jaccard": recorded if recorded != recorded else round(recorded, 4)})
    return {
        "buckets": per_bucket,
        "recall": found_true / true_pairs if true_pairs else 1.0, "true_pairs": true_pairs, "found_true": found_true,
        "recall_resolved": resolved_true / true_pairs if true_pairs else 1.0, "resolved_true": resolved_true,
        "precision_removals": dup_ok / len(run["dup_of"]) if run["dup_of"] else 1.0,
        "precision_strict": good / member_pairs if member_pairs else 1.0,
        "precision_chained": chained / member_pairs if member_pairs else 1.0,
        "cluster_member_pairs": member_pairs, "false_pairs_strict": member_pairs - good,
        "false_pairs_chained": member_pairs - chained, "false_examples": false_examples,
        "removed": len(removed), "removed_justified": justified, "should_remove": should_remove,
        "clusters": len(groups),
        "removals_dup_of_ge_threshold": dup_ok, "removals_recorded_nan": recorded_nan,
        "removals_recorded_wrong": recorded_wrong, "dup_of_examples": dup_examples,
        "pairs_outside_ground_truth": len(extra),
        "pairs_outside_ground_truth_ge_threshold": sum(j >= threshold for j in extra.values()),
    }


def missed_examples(corpus: Corpus, sim: dict, run: dict, threshold: float, limit: int = 5) -> list[dict]:
    ids = [d.id for d in corpus.docs]
    cluster = run["cluster"]
    out = []
    for (a, b), j in sorted(sim.items(), key=lambda kv: -kv[1]):
        if j < threshold or len(out) >= limit:
            continue
        ca = cluster.get(ids[a])
        if ca is None or ca != cluster.get(ids[b]):
            out.append({"a": ids[a], "b": ids[b], "jaccard": round(j, 4),
                        "edit": corpus.docs[a].edit or corpus.docs[b].edit})
    return out


# ------------------------------------------------------------------------------------------------
# Report


def print_table(results: dict, sim: dict, relation: dict, threshold: float, bands: int, rows: int) -> None:
    planted_per = Counter(bucket_of(j) for pair, j in sim.items() if relation[pair] != "unplanted")
    js_per: dict[str, list[float]] = defaultdict(list)
    for j in sim.values():
        js_per[bucket_of(j)].append(j)
    verify, raw, exact = results["minhash_verify"], results["minhash_no_verify"], results["exact_dedup"]
    header = (f"{'Jaccard':<8} {'pairs':>7} {'planted':>7} {'P(cand)':>8} {'E[P]':>6} │ {'verify: true':>17} │ "
              f"{'verify: false':>17} │ {'exact_dedup':>17}")
    print(header)
    print(f"{'':<8} {'':>7} {'':>7} {'mid':>8} {'pairs':>6} │ {'found   recall':>17} │ "
          f"{'found   recall':>17} │ {'found   recall':>17}")
    print("─" * len(header))
    for name in bucket_names():
        n = verify["buckets"][name]["pairs"]
        p_mid = float(D.candidate_probability(0.5 if name == "< 0.5" else bucket_mid(name), bands, rows))
        mean_p = (statistics.fmean(float(D.candidate_probability(j, bands, rows)) for j in js_per[name])
                  if js_per[name] else float("nan"))
        cells = []
        for res in (verify, raw, exact):
            f = res["buckets"][name]["found"]
            cells.append(f"{f:>7,} {f / n if n else float('nan'):>8.1%}")
        mid = f"{'<=' if name == '< 0.5' else ''}{p_mid:.3f}"
        print(f"{name:<8} {n:>7,} {planted_per[name]:>7,} {mid:>8} {mean_p:>6.3f} │ {cells[0]:>17} │ "
              f"{cells[1]:>17} │ {cells[2]:>17}")
    print("─" * len(header))
    print(f"below {threshold:g} 'found' = merged although not a duplicate at the threshold; P(cand) = "
          f"candidate_probability at the bucket midpoint (b={bands}, r={rows}); E[P] = its mean over the "
          "bucket's pairs")
    print()
    print(f"{'J >= ' + format(threshold, 'g'):<26} {'verify: true':>14} {'verify: false':>14} {'exact_dedup':>14}")
    rows_out = [
        ("recall (not both kept)", lambda r: f"{r['recall_resolved']:.4f}"),
        ("precision (removal vs dup_of)", lambda r: f"{r['precision_removals']:.4f}"),
        ("recall (same cluster)", lambda r: f"{r['recall']:.4f}"),
        ("found / true pairs", lambda r: f"{r['found_true']:,}/{r['true_pairs']:,}"),
        ("precision, strict", lambda r: f"{r['precision_strict']:.4f}"),
        ("precision, chained", lambda r: f"{r['precision_chained']:.4f}"),
        ("cluster member pairs", lambda r: f"{r['cluster_member_pairs']:,}"),
        ("false pairs, strict", lambda r: f"{r['false_pairs_strict']:,}"),
        ("false pairs, chained", lambda r: f"{r['false_pairs_chained']:,}"),
        ("  outside ground truth", lambda r: f"{r['pairs_outside_ground_truth']:,} "
                                              f"({r['pairs_outside_ground_truth_ge_threshold']} >= t)"),
        ("clusters", lambda r: f"{r['clusters']:,}"),
        ("documents removed", lambda r: f"{r['removed']:,}"),
        ("  of which justified", lambda r: f"{r['removed_justified']:,}"),
        ("should be removed", lambda r: f"{r['should_remove']:,}"),
        ("  J(removed, dup_of) >= t", lambda r: f"{r['removals_dup_of_ge_threshold']:,}"),
        ("  recorded jaccard NaN", lambda r: f"{r['removals_recorded_nan']:,}"),
        ("  recorded jaccard wrong", lambda r: f"{r['removals_recorded_wrong']:,}"),
    ]
    for label, fmt in rows_out:
        print(f"{label:<26} {fmt(verify):>14} {fmt(raw):>14} {fmt(exact):>14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=5000, help="base documents (copies come on top; default 5000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=4, help="Parquet batches (shards) the corpus is split into")
    parser.add_argument("--family-rate", type=float, default=0.10,
                        help="share of base documents given a family of 2-3 near copies (default 0.10; 0 to 0.40)")
    parser.add_argument("--threshold", type=float, default=D.THRESHOLD, help="minhash_dedup threshold (default 0.8)")
    parser.add_argument("--json", type=Path, help="also save the full report here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="curate-bench-dedup-quality-") as tmp:
        work = Path(tmp)
        sources = load_units(work / "demo")
        corpus = build_corpus(sources, args.docs, args.seed, args.family_rate)
        texts = [d.text for d in corpus.docs]
        sizes = [len(t.encode("utf-8")) for t in texts]
        kinds = Counter(d.kind for d in corpus.docs)
        print(f"corpus: {len(texts):,} documents = {corpus.n_base:,} base + {len(texts) - corpus.n_base:,} planted "
              f"copies ({', '.join(f'{k} {v:,}' for k, v in sorted(kinds.items()) if k != 'base')}); "
              f"mean {statistics.fmean(sizes):,.0f} B, median {statistics.median(sizes):,.0f} B; "
              f"base roles: {', '.join(f'{k} {v:,}' for k, v in corpus.roles.items())}", flush=True)

        sets = shingle_sets(texts)
        sim, relation, truth_info = ground_truth(corpus, sets)
        unplanted = [(pair, j) for pair, j in sim.items() if relation[pair] == "unplanted"]
        accidental = sorted((j for _, j in unplanted), reverse=True)
        print(f"ground truth: {len(corpus.planted):,} planted pairs + {len(unplanted):,} unplanted pairs from a "
              f"permissive LSH ({PERMISSIVE_BANDS} bands x {PERMISSIVE_ROWS} rows, P(cand)=0.998 at J=0.3), "
              f"Jaccard measured exactly; unplanted pairs with J >= 0.5: {sum(j >= 0.5 for j in accidental)}, "
              f"max unplanted J {accidental[0] if accidental else 0:.3f}", flush=True)

        batches = write_batches(corpus, work, args.batches)
        store_url = str(work)
        results: dict[str, dict] = {}
        runs: dict[str, dict] = {}
        for label, step in (("minhash_verify", MinHashDedup(threshold=args.threshold)),
                            ("minhash_no_verify", MinHashDedup(threshold=args.threshold, verify=False)),
                            ("exact_dedup", ExactDedup())):
            runs[label] = run_step(step, batches, store_url)
            shown = {k: v for k, v in runs[label]["report"].items() if k in SHOWN_REPORT_KEYS}
            print(f"{label}: collect {runs[label]['collect_s']} s, decide {runs[label]['decide_s']} s; "
                  f"{json.dumps(shown)}", flush=True)
        for label, run in runs.items():
            results[label] = evaluate(corpus, sets, sim, relation, run, args.threshold)
        bands, rows = runs["minhash_verify"]["report"]["bands"], runs["minhash_verify"]["report"]["rows"]

        print()
        print(f"dedup quality: {len(texts):,} documents in {args.batches} batches, threshold {args.threshold:g}, "
              f"{D.NUM_PERM} permutations, {bands} bands x {rows} rows, word {D.SHINGLE_WORDS}-grams; "
              f"pairs by measured Jaccard")
        print()
        print_table(results, sim, relation, args.threshold, bands, rows)
        missed = missed_examples(corpus, sim, runs["minhash_verify"], args.threshold)
        if missed:
            print(f"\nmissed pairs with J >= {args.threshold:g} (verify: true), highest J first:")
            for m in missed:
                print(f"  {m}")
        if results["minhash_verify"]["dup_of_examples"]:
            print(f"\nremovals (verify: true) whose dup_of is NOT within J >= {args.threshold:g} of them "
                  "(the reject reason still reads 'jaccard=<recorded> >= threshold'):")
            for m in results["minhash_verify"]["dup_of_examples"]:
                print(f"  {m}")
        if results["minhash_verify"]["false_examples"]:
            print("\nstrict false pairs (verify: true), examples:")
            for m in results["minhash_verify"]["false_examples"]:
                print(f"  {m}")

        v = results["minhash_verify"]
        # Targets in deduplication's own terms: a removal is right when the document it names as kept
        # really is within the threshold of it; a true pair is caught when it does not survive twice.
        ok_precision = v["precision_removals"] >= TARGET_PRECISION
        ok_recall = v["recall_resolved"] >= TARGET_RECALL
        print(f"\ntargets (verify: true, J >= {args.threshold:g}): precision {v['precision_removals']:.4f} "
              f"(>= {TARGET_PRECISION}) {'ok' if ok_precision else 'MISSED'}, recall {v['recall_resolved']:.4f} "
              f"(>= {TARGET_RECALL}) {'ok' if ok_recall else 'MISSED'}; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {time.perf_counter() - t0:,.0f} s in all")

        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            report = {
                "config": {k: (str(w) if isinstance(w, Path) else w) for k, w in vars(args).items()},
                "corpus": {"documents": len(texts), "base": corpus.n_base, "kinds": dict(kinds),
                           "roles": corpus.roles, "mean_bytes": statistics.fmean(sizes),
                           "median_bytes": statistics.median(sizes)},
                "ground_truth": {**truth_info, "planted_pairs": len(corpus.planted), "unplanted_pairs": len(unplanted),
                                 "unplanted_ge_0.5": sum(j >= 0.5 for j in accidental)},
                "steps": {k: {kk: vv for kk, vv in r.items() if kk not in ("cluster", "removed")}
                          for k, r in runs.items()},
                "results": results, "missed_examples": missed,
                "targets": {"precision": TARGET_PRECISION, "recall": TARGET_RECALL,
                            "precision_ok": ok_precision, "recall_ok": ok_recall},
                "loadavg": os.getloadavg(),
            }
            args.json.write_text(json.dumps(report, indent=2, default=str))
        if args.check and not (ok_precision and ok_recall):
            sys.exit(1)


if __name__ == "__main__":
    main()
