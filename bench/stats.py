"""Version statistics: time per million documents and peak memory of `curation.stats.compute_stats`.

    .venv/bin/python bench/stats.py                      # --docs 200000 --mean-chars 1000 --batch 10000
    .venv/bin/python bench/stats.py --docs 50000 --json bench/out/stats.json

Corpus: real text recycled. Runs of 2-8 consecutive sentences/lines of the demo corpus's human sources
(`stdlib_docs.jsonl`: standard-library docstrings, `kjv.jsonl.gz`: King James Bible chapters;
`curation.demo.build_demo_corpus`) are joined into documents of log-normal length (mean `--mean-chars`,
sigma 0.8, 50-50,000 characters), with sources "stdlib"/"kjv"/"web" and `lang`, `lang_score`,
`quality_score` and `dup_cluster_size` columns like a curated version's. Batches of `--batch` documents are
generated lazily, so the corpus never sits in memory: the peak RSS is what the statistics hold.

Printed: generation time (excluded), `compute_stats` wall time, docs/s and MB/s over it; the fixed cost of the
sample-based metrics (lexical + semantic fit on the sample, timed again alone on the same sample), and the
extrapolated seconds per 1 M documents = fixed + streaming time per document x 1 M; the peak RSS of the run
(VmHWM, reset just before it, so building the demo corpus does not count; ru_maxrss where that cannot be reset)
and the RSS before the run. The statistics are computed with the defaults (sample 2,000, 200 words per document,
k 16, dims 64), with a coverage pass against the model of a first, smaller run when `--coverage` is given.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import stats as S  # noqa: E402
from flows.process_pool import memory_status, peak_rss_bytes, reset_peak  # noqa: E402

_UNIT_SPLIT = re.compile(r"(?<=[.!?;:])\s+|\n+")


def load_units(folder: Path) -> tuple[list[list[str]], list[str]]:
    """The demo corpus's human documents as lists of sentences/lines, and the source of each."""
    from curation.demo import KJV_FILE, STDLIB_FILE, build_demo_corpus

    build_demo_corpus(folder, scale=1.0)
    docs, sources = [], []
    for name, source in ((STDLIB_FILE, "stdlib"), (KJV_FILE, "kjv")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(folder / name, "rt", encoding="utf-8") as handle:
            for line in handle:
                units = [u.strip() for u in _UNIT_SPLIT.split(json.loads(line)["text"]) if u and u.strip()]
                if len(units) >= 2:
                    docs.append(units)
                    sources.append(source)
    return docs, sources


def batches(units: list[list[str]], sources: list[str], n_docs: int, batch: int, mean_chars: float,
            seed: int, timer: dict[str, float], rare_words: float = 0.0) -> Iterator[pa.Table]:
    """Lazily generated batches; the time spent generating is added to timer['generate']. `rare_words`: that
    share of extra words per document drawn from 10^9 random tokens (a web-like, ever-growing vocabulary)."""
    rng = random.Random(seed)
    sigma = 0.8
    mu = math.log(mean_chars) - sigma * sigma / 2
    made = 0
    while made < n_docs:
        start = time.perf_counter()
        rows: dict[str, list] = {k: [] for k in ("id", "text", "source", "lang", "lang_score", "quality_score",
                                                  "dup_cluster_size")}
        for i in range(made, min(made + batch, n_docs)):
            target = min(max(rng.lognormvariate(mu, sigma), 50.0), 50_000.0)
            parts, size, source = [], 0, None
            while size < target:
                d = rng.randrange(len(units))
                source = source or sources[d]
                k = rng.randint(2, 8)
                first = rng.randrange(max(1, len(units[d]) - k + 1))
                paragraph = " ".join(units[d][first:first + k])
                parts.append(paragraph)
                size += len(paragraph) + 2
            text = "\n\n".join(parts)
            if rare_words:
                extra = int(rare_words * size / 6 + rng.random())
                text += " " + " ".join(f"z{rng.randrange(10**9):x}" for _ in range(extra))
            rows["id"].append(f"doc-{i}")
            rows["text"].append(text)
            rows["source"].append(source if rng.random() < 0.7 else "web")
            rows["lang"].append("en")
            rows["lang_score"].append(0.65 + 0.35 * rng.random())
            rows["quality_score"].append(rng.random())
            rows["dup_cluster_size"].append(1 if rng.random() < 0.9 else rng.randint(2, 5))
        made += len(rows["id"])
        table = pa.table(rows)
        timer["bytes"] += sum(len(t.encode("utf-8")) for t in rows["text"])
        timer["generate"] += time.perf_counter() - start
        yield table


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, MB (Linux; else the lifetime peak)."""
    value = memory_status(field)
    return value / 2**20 if value is not None else peak_rss_bytes() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--mean-chars", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rare-words", type=float, default=0.0,
                        help="extra random tokens per document, as a share of its words (0.02: web-like vocabulary)")
    parser.add_argument("--coverage", action="store_true", help="also measure coverage against a first run's model")
    parser.add_argument("--json", type=Path, help="write the figures (and the stats dict) here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmp:
        units, sources = load_units(Path(tmp) / "demo")
        reference = None
        if args.coverage:
            timer = {"generate": 0.0, "bytes": 0}
            _, model = S.compute_stats(batches(units, sources, 20_000, args.batch, args.mean_chars, args.seed + 1,
                                               timer))
            reference = Path(tmp) / "ref" / "stats_model.npz"
            model.save(reference)
        gc.collect()
        peak_reset = reset_peak()  # building the demo corpus had its own peak
        rss_before = status_mb("VmRSS")
        load_before = os.getloadavg()[0]
        timer = {"generate": 0.0, "bytes": 0}
        start = time.perf_counter()
        stats, model = S.compute_stats(batches(units, sources, args.docs, args.batch, args.mean_chars, args.seed,
                                               timer, args.rare_words), reference_model=reference)
        total = time.perf_counter() - start - timer["generate"]
        peak = status_mb("VmHWM") if peak_reset else peak_rss_bytes() / 2**20

    # The fixed cost: the sample-based metrics alone, on a sample of the same documents.
    timer2 = {"generate": 0.0, "bytes": 0}
    sample = next(batches(units, sources, 2000, 2000, args.mean_chars, args.seed + 7, timer2)).column("text")
    sample = [t[:S.SAMPLE_CHARS] for t in sample.to_pylist()]
    start = time.perf_counter()
    S.lexical_stats(sample, 200)
    lexical = time.perf_counter() - start
    start = time.perf_counter()
    S.fit_semantic(sample, k=16, dims=64, seed=0)
    semantic = time.perf_counter() - start
    fixed = lexical + semantic
    per_doc = max(total - fixed, 0.0) / args.docs
    figures = {
        "docs": args.docs, "mean_chars": round(stats["size"]["chars"] / max(args.docs, 1), 1),
        "mb": round(timer["bytes"] / 1e6, 1), "generate_s": round(timer["generate"], 2),
        "compute_stats_s": round(total, 2), "docs_per_s": round(args.docs / total), "mb_per_s": round(
            timer["bytes"] / 1e6 / total, 1),
        "sample_metrics_s": {"lexical": round(lexical, 2), "semantic_fit": round(semantic, 2)},
        "streaming_docs_per_s": round(1 / per_doc) if per_doc else None,
        "s_per_million_docs": round(fixed + per_doc * 1e6, 1),
        "rss_before_mb": round(rss_before), "peak_rss_mb": round(peak),
        "distinct_words_in_top": len(stats["unigrams"]["top"]), "rare_words": args.rare_words,
        "cpu": os.cpu_count(), "load_before": load_before, "coverage": stats["coverage"] is not None,
    }
    print(f"corpus: {args.docs:,} docs, {figures['mb']} MB, mean {figures['mean_chars']:,} chars "
          f"(generated lazily in {figures['generate_s']} s, not counted)")
    print(f"compute_stats: {total:.2f} s = {figures['docs_per_s']:,} docs/s, {figures['mb_per_s']} MB/s "
          f"(sample metrics alone: lexical {lexical:.2f} s, semantic fit {semantic:.2f} s)")
    print(f"streaming: {figures['streaming_docs_per_s'] or 0:,} docs/s; extrapolated: "
          f"{figures['s_per_million_docs']:,} s per 1 M docs")
    print(f"machine: {os.cpu_count()} CPUs, load average {figures['load_before']:.2f} before the run")
    print(f"memory: peak RSS {figures['peak_rss_mb']:,} MB (RSS before the run {figures['rss_before_mb']:,} MB)")
    print(f"semantic: k={stats['semantic']['k']} dims={stats['semantic']['dims']} "
          f"entropy={stats['semantic']['cluster_entropy']} vendi={stats['semantic']['vendi_score']}; lexical: "
          f"distinct_2={stats['lexical']['distinct_2']} compression={stats['lexical']['compression_ratio']} "
          f"near_dup={stats['lexical']['near_dup_density']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"figures": figures, "stats": stats}, indent=2))


if __name__ == "__main__":
    main()
