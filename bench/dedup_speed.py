"""Near-duplicate detection speed and index size: ours vs naive datasketch, per core.

    .venv/bin/python bench/dedup_speed.py                         # --docs 5000 (~3 KB each)
    .venv/bin/python bench/dedup_speed.py --docs 20000 --json bench/out/dedup_speed.json --check

Documents: the corpus of `bench/dedup_quality.py` (paragraphs of the demo corpus's real text, ~3 KB
mean, with planted exact and near copies so the index has duplicates to find), its first `--docs`
documents. Every measurement runs in a fresh process (multiprocessing `spawn`) pinned to ONE CPU
(`os.sched_setaffinity`, Arrow's thread pool set to 1), one after another; docs/s per core =
documents / CPU seconds of that process (`time.process_time`, best of `--repeat`), so a busy machine
slows the wall clock more than the figures. The load average is printed before and after.

    ours, signatures    `curation.dedup.shingles` + `signatures` (word 5-gram xxh3 hashes, 128
                        affine32 MinHash values per document, numpy over the whole batch); the word
                        hash cache is emptied before every run, as for a process seeing new text
    ours, whole         `minhash_dedup` as the flow runs it: `collect` on each of `--batches` Parquet
                        batches (shingles, signatures, band hashes), `decide` on the `Collected` list
                        (candidate pairs by sorting each band, verification: candidate texts re-read
                        from the Parquet files and their exact shingle-set Jaccard, union-find)
    datasketch naive    per document `m = MinHash(num_perm=128)`, `m.update(shingle.encode())` for
                        every word 5-gram (the same words, joined by spaces; default SHA-1 hash);
                        whole = that + `MinHashLSH(threshold=0.8, num_perm=128)`: insert every
                        document, then query every document (candidate pairs; no verification)
    datasketch bulk     the batched API: `MinHash.bulk(list of shingle lists, num_perm=128)` (a copy
                        of one initialised MinHash + `update_batch` per document); whole as above

Index bytes per document: ours is the band matrix the step keeps (bands x 8 bytes: one uint64 per
band; also printed: `decision.report["index_bytes_per_doc"]` and the whole collected summary, with
ids, lengths and quality scores, measured with tracemalloc); datasketch's is the `MinHashLSH`
object after inserting every document, measured with tracemalloc (Python allocations while building
it; the RSS growth of the process while building it is printed too). Peak RSS is the process's
`ru_maxrss` (it includes the corpus, read in before timing: "base RSS").

Also printed: bands x rows of each LSH and its S-curve at the threshold (datasketch's `MinHashLSH`
picks (b, r) weighing false positives and negatives equally: 9 x 13 at 0.8, which proposes a pair
of Jaccard 0.8 with probability 0.40; ours picks >= 0.95 recall at the threshold: 18 x 7).

Targets (`--check` exits 1 when missed): ours >= 3,000 docs/s per core for signatures, and an index
of <= 300 bytes per document.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_SIG_DOCS_PER_S = 3000.0
TARGET_INDEX_BYTES = 300.0
THRESHOLD = 0.8
NUM_PERM = 128


# ------------------------------------------------------------------------------------------------
# Workers (each in a fresh, pinned process)


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _setup(cpu: int, corpus_path: str) -> list[str]:
    os.sched_setaffinity(0, {cpu})
    import pyarrow as pa
    import pyarrow.parquet as pq

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    return pq.read_table(corpus_path, columns=["text"]).column("text").to_pylist()


def _best(fn, repeat: int, before=None) -> tuple[float, float, object]:
    """(best CPU seconds, best wall seconds, last result) over `repeat` runs; `before` runs untimed first."""
    best_cpu = best_wall = math.inf
    result = None
    for _ in range(max(1, repeat)):
        if before:
            before()
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall, result


def word_shingles(text: str, n: int = 5) -> list[str]:
    """The same word 5-grams as `curation.dedup.shingles`, as strings (a short document: one of all its words)."""
    from curation.dedup import words

    tokens = words(text)
    if len(tokens) < n:
        return [" ".join(tokens)]
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def work_ours(cpu: int, corpus_path: str, batch_paths: list[str], repeat: int) -> dict:
    texts = _setup(cpu, corpus_path)
    import pyarrow.parquet as pq

    from curation import dedup as D
    from curation.steps.base import Collected
    from curation.steps.dedup import MinHashDedup

    base_rss = _rss_mb()
    out: dict = {"docs": len(texts)}

    def clear() -> None:
        D._VOCAB.hashes.clear()  # every run hashes its words from scratch

    D.signatures(*D.shingles(texts[:50]))  # warm up (imports, permutations)
    cpu_s, wall_s, shingled = _best(lambda: D.shingles(texts), repeat, clear)
    out["shingles_cpu_s"], out["shingles_wall_s"] = cpu_s, wall_s
    hashes, offsets = shingled
    out["signatures_only_cpu_s"], _, _ = _best(lambda h=hashes, o=offsets: D.signatures(h, o), repeat)
    out["sig_cpu_s"], out["sig_wall_s"], sigs = _best(lambda: D.signatures(*D.shingles(texts)), repeat, clear)
    out["shingles_per_doc"] = float(len(hashes) / len(texts))
    del hashes, offsets, shingled, sigs

    tables = [pq.read_table(p) for p in batch_paths]
    store_url = str(Path(batch_paths[0]).parent)

    def whole():
        step = MinHashDedup(threshold=THRESHOLD, num_perm=NUM_PERM)
        collected = [Collected(step.collect(t), p, store_url) for t, p in zip(tables, batch_paths)]
        return step.decide(collected), collected

    out["whole_cpu_s"], out["whole_wall_s"], (decision, collected) = _best(whole, repeat, clear)
    report = decision.report
    out.update({k: report[k] for k in ("bands", "rows", "index_bytes_per_doc", "candidate_pairs", "verified_pairs",
                                       "removed")})
    out["band_matrix_bytes_per_doc"] = sum(c.value["band"].nbytes for c in collected) / len(texts)
    del decision, collected
    gc.collect()
    # The whole per-shard summary (ids, lengths, quality, bands) as Python holds it, by tracemalloc.
    step = MinHashDedup(threshold=THRESHOLD, num_perm=NUM_PERM)
    tracemalloc.start()
    first = tracemalloc.get_traced_memory()[0]
    values = [step.collect(t) for t in tables]
    out["summary_bytes_per_doc"] = (tracemalloc.get_traced_memory()[0] - first) / len(texts)
    tracemalloc.stop()
    del values
    out["base_rss_mb"] = base_rss
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _lsh_whole(minhashes: list) -> tuple[object, int]:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for key, m in enumerate(minhashes):
        lsh.insert(key, m)
    pairs = set()
    for key, m in enumerate(minhashes):
        for other in lsh.query(m):
            if other != key:
                pairs.add((min(key, other), max(key, other)))
    return lsh, len(pairs)


def work_datasketch(cpu: int, corpus_path: str, mode: str, repeat: int) -> dict:
    texts = _setup(cpu, corpus_path)
    from datasketch import MinHash, MinHashLSH

    base_rss = _rss_mb()
    out: dict = {"docs": len(texts), "mode": mode}

    def naive() -> list:
        sigs = []
        for text in texts:
            m = MinHash(num_perm=NUM_PERM)
            for shingle in word_shingles(text):
                m.update(shingle.encode("utf-8"))
            sigs.append(m)
        return sigs

    def bulk() -> list:
        return MinHash.bulk([[s.encode("utf-8") for s in word_shingles(t)] for t in texts], num_perm=NUM_PERM)

    make = naive if mode == "naive" else bulk
    _ = [MinHash(num_perm=NUM_PERM).update(b"x") for _ in range(3)]  # warm up
    out["sig_cpu_s"], out["sig_wall_s"], minhashes = _best(make, repeat)
    # Memory of the index alone. First the process's RSS growth while inserting every document into
    # the first LSH this process builds (a lower bound: memory freed earlier may be reused), then
    # Python's allocations while building a second one (tracemalloc: the figure reported).
    gc.collect()
    rss = _rss_mb()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for key, m in enumerate(minhashes):
        lsh.insert(key, m)
    out["index_rss_bytes_per_doc"] = (_rss_mb() - rss) * 1024 * 1024 / len(texts)
    out["bands"], out["rows"] = lsh.b, lsh.r
    del lsh
    gc.collect()
    tracemalloc.start()
    first = tracemalloc.get_traced_memory()[0]
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for key, m in enumerate(minhashes):
        lsh.insert(key, m)
    gc.collect()
    out["index_bytes_per_doc"] = (tracemalloc.get_traced_memory()[0] - first) / len(texts)
    tracemalloc.stop()
    del lsh
    gc.collect()
    out["lsh_cpu_s"], out["lsh_wall_s"], (_, out["candidate_pairs"]) = _best(lambda: _lsh_whole(minhashes), repeat)
    out["whole_cpu_s"] = out["sig_cpu_s"] + out["lsh_cpu_s"]
    out["whole_wall_s"] = out["sig_wall_s"] + out["lsh_wall_s"]
    out["base_rss_mb"] = base_rss
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_pinned(fn, *args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


# ------------------------------------------------------------------------------------------------


def make_docs(n_docs: int, seed: int, folder: Path) -> list[str]:
    import dedup_quality as Q

    sources = Q.load_units(folder / "demo")
    corpus = Q.build_corpus(sources, max(1, math.ceil(n_docs / 1.7)) + 10, seed)
    while len(corpus.docs) < n_docs:  # very small --docs: the ratio may fall short
        corpus = Q.build_corpus(sources, len(corpus.docs) * 2, seed)
    return [d.text for d in corpus.docs[:n_docs]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=5000, help="documents (default 5000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=4, help="Parquet batches for the whole minhash_dedup run")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs of ours; the best is reported")
    parser.add_argument("--ds-repeat", type=int, default=1, help="timing runs of datasketch")
    parser.add_argument("--skip-naive", action="store_true", help="skip datasketch's per-shingle update (slow)")
    parser.add_argument("--cpu", type=int, help="CPU to pin to (default: the last one this process may use)")
    parser.add_argument("--json", type=Path, help="also save the full report here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation import dedup as D

    cpu = args.cpu if args.cpu is not None else sorted(os.sched_getaffinity(0))[-1]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="curate-bench-dedup-speed-") as tmp:
        work = Path(tmp)
        texts = make_docs(args.docs, args.seed, work)
        sizes = [len(t.encode("utf-8")) for t in texts]
        corpus_path = work / "corpus.parquet"
        ids = [f"d{k:07d}" for k in range(len(texts))]
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.large_string())}),
                       corpus_path)
        (work / "shards").mkdir()
        batch_paths = []
        n = len(texts)
        for k in range(args.batches):
            lo, hi = k * n // args.batches, (k + 1) * n // args.batches
            path = work / "shards" / f"batch-{k:03d}.parquet"
            pq.write_table(pa.table({"id": pa.array(ids[lo:hi], pa.string()),
                                     "text": pa.array(texts[lo:hi], pa.large_string())}), path)
            batch_paths.append(str(path))
        print(f"corpus: {len(texts):,} documents, mean {statistics.fmean(sizes):,.0f} B, "
              f"median {statistics.median(sizes):,.0f} B; pinned to cpu {cpu} of {os.cpu_count()}; "
              f"load average {' '.join(f'{x:.2f}' for x in load_before)}", flush=True)

        results: dict[str, dict] = {}
        print("ours ...", flush=True)
        results["ours"] = run_pinned(work_ours, cpu, str(corpus_path), batch_paths, args.repeat)
        print("datasketch MinHash.bulk ...", flush=True)
        results["datasketch_bulk"] = run_pinned(work_datasketch, cpu, str(corpus_path), "bulk", args.ds_repeat)
        if not args.skip_naive:
            print("datasketch naive (update per shingle) ...", flush=True)
            results["datasketch_naive"] = run_pinned(work_datasketch, cpu, str(corpus_path), "naive", args.ds_repeat)
        load_after = os.getloadavg()

    n = len(texts)
    ours = results["ours"]
    rows = [("ours: shingles + signatures / minhash_dedup", ours, ours["index_bytes_per_doc"], "bands x 8 B")]
    if "datasketch_naive" in results:
        rows.append(("datasketch: update() per shingle + MinHashLSH", results["datasketch_naive"],
                     results["datasketch_naive"]["index_bytes_per_doc"], "tracemalloc"))
    rows.append(("datasketch: MinHash.bulk + MinHashLSH", results["datasketch_bulk"],
                 results["datasketch_bulk"]["index_bytes_per_doc"], "tracemalloc"))
    print()
    print(f"dedup speed: {n:,} documents (mean {statistics.fmean(sizes):,.0f} B, "
          f"{ours['shingles_per_doc']:,.0f} shingles/doc), {NUM_PERM} permutations, threshold {THRESHOLD:g}, "
          f"one core (cpu {cpu}), docs/s = documents / CPU s")
    print()
    header = (f"{'method':<46} {'signatures':>11} {'whole':>9} {'ours is':>9} {'index':>8} {'b x r':>7} "
              f"{'P(0.8)':>7} {'cand.':>7} {'peak RSS':>9}")
    print(header)
    print(f"{'':<46} {'docs/s':>11} {'docs/s':>9} {'x faster':>9} {'B/doc':>8} {'':>7} {'':>7} "
          f"{'pairs':>7} {'MB':>9}")
    print("─" * len(header))
    for label, r, index_bytes, _how in rows:
        sig = n / r["sig_cpu_s"]
        whole = n / r["whole_cpu_s"]
        ratio = ("" if r is ours else
                 f"{r['sig_cpu_s'] / ours['sig_cpu_s']:.1f}/{r['whole_cpu_s'] / ours['whole_cpu_s']:.1f}")
        p08 = float(D.candidate_probability(THRESHOLD, r["bands"], r["rows"]))
        print(f"{label:<46} {sig:>11,.0f} {whole:>9,.0f} {ratio:>9} {index_bytes:>8,.0f} "
              f"{r['bands']:>3}x{r['rows']:<3} {p08:>7.3f} {r['candidate_pairs']:>7,} {r['peak_rss_mb']:>9,.0f}")
    print("─" * len(header))
    print(f"ours: shingles {n / ours['shingles_cpu_s']:,.0f} docs/s, signatures from shingles "
          f"{n / ours['signatures_only_cpu_s']:,.0f} docs/s; whole = collect on {args.batches} Parquet batches + "
          f"decide with verification ({ours['verified_pairs']:,} of {ours['candidate_pairs']:,} candidates verified "
          f">= {THRESHOLD:g}, {ours['removed']:,} removed), wall {ours['whole_wall_s']:.2f} s")
    print(f"ours index: band matrix {ours['band_matrix_bytes_per_doc']:,.0f} B/doc; the step reports "
          f"index_bytes_per_doc = {ours['index_bytes_per_doc']}; the whole collected summary (ids, lengths, quality, "
          f"bands) {ours['summary_bytes_per_doc']:,.0f} B/doc (tracemalloc)")
    for key in ("datasketch_naive", "datasketch_bulk"):
        if key in results:
            r = results[key]
            print(f"{key}: signatures {r['sig_cpu_s']:.2f} CPU s, LSH insert + query {r['lsh_cpu_s']:.2f} CPU s; "
                  f"index {r['index_bytes_per_doc']:,.0f} B/doc (tracemalloc), {r['index_rss_bytes_per_doc']:,.0f} "
                  f"B/doc (RSS growth while building); no verification")
    print(f"peak RSS includes the corpus read in before timing (base RSS: ours {ours['base_rss_mb']:,.0f} MB, "
          f"datasketch {results['datasketch_bulk']['base_rss_mb']:,.0f} MB)")
    sig_rate = n / ours["sig_cpu_s"]
    ok_sig = sig_rate >= TARGET_SIG_DOCS_PER_S
    ok_index = ours["index_bytes_per_doc"] <= TARGET_INDEX_BYTES
    print(f"\ntargets: signatures {sig_rate:,.0f} docs/s per core (>= {TARGET_SIG_DOCS_PER_S:,.0f}) "
          f"{'ok' if ok_sig else 'MISSED'}, index {ours['index_bytes_per_doc']} B/doc (<= {TARGET_INDEX_BYTES:.0f}) "
          f"{'ok' if ok_index else 'MISSED'}; load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "corpus": {"docs": n, "mean_bytes": statistics.fmean(sizes), "median_bytes": statistics.median(sizes)},
            "cpu": cpu, "loadavg_before": load_before, "loadavg_after": load_after, "results": results,
            "docs_per_s": {k: {"signatures": n / r["sig_cpu_s"], "whole": n / r["whole_cpu_s"]}
                           for k, r in results.items()},
            "targets": {"signatures_docs_per_s": TARGET_SIG_DOCS_PER_S, "index_bytes_per_doc": TARGET_INDEX_BYTES,
                        "signatures_ok": ok_sig, "index_ok": ok_index},
        }, indent=2))
    if args.check and not (ok_sig and ok_index):
        sys.exit(1)


if __name__ == "__main__":
    main()
