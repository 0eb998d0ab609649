"""Heuristic quality filters: our stack vs datatrove's, speed per core and keep/drop agreement.

    .venv/bin/python bench/filters.py --docs 2000                  # both corpora, 2,000 documents each
    .venv/bin/python bench/filters.py --corpus technical --check
    .venv/bin/python bench/filters.py --docs 20000 --workers 2 --json bench/out/filters.json

Compares, on the same documents, each of our filters with datatrove's filter of the same rules
(default parameters on both sides):

    gopher_quality    <-> GopherQualityFilter       gopher_repetition <-> GopherRepetitionFilter
    c4_quality        <-> C4QualityFilter           fineweb_quality   <-> FineWebQualityFilter

and prints, per filter: our docs/s and datatrove's docs/s on ONE core (each process is pinned to a
single CPU), the speed ratio, the share of documents on which both make the same keep/drop decision,
and the largest groups of disagreements (our reason vs datatrove's, with example document ids), so
the rules can be brought in line. C4 rewrites the text of the documents it keeps (it drops lines);
for documents both sides keep, the share with identical rewritten text is reported too. The
"stack" row runs the four filters in sequence, each on the survivors of the previous one, in the
FineWeb order (gopher_repetition, gopher_quality, c4_quality, fineweb_quality). `--workers N` also
runs ours over N processes and reports aggregate docs/s.

Documents (`--corpus demo|technical|both`, default both; each corpus is sampled, run and reported on
its own), `--docs` of them in a seeded sample, repeated (with suffixed ids) when more are asked for than
the corpus holds; the mean document size is reported:

* demo: the demo corpus (`curation.demo.build_demo_corpus`: stdlib docstrings, KJV chapters, a
  simulated crawl with planted defects; malformed lines, non-string / empty texts and documents over
  100 KB are skipped), about 3 KB a document;
* technical: technical prose from what is installed in the project's environment, built the same way
  on every run with the same packages: one document per module of TECHNICAL_PACKAGES (numpy, scipy,
  pandas, pyarrow, torch, datasets, httpx, pydantic, rich, typer: those installed), made of its
  docstring and those of its public classes, functions and methods (source parsed with `ast` as the
  demo does for the standard library, never imported), and one per installed distribution's long
  description (its README, from `importlib.metadata`), skipping documents under 50 words or over
  100 KB; about 6 KB a document (median 2.4 KB), code-heavy: roles, signatures, URLs, tables.

datatrove runs in its own virtual environment, never in the project's (it is not a dependency):

    python3 -m venv bench/.venv-datatrove
    bench/.venv-datatrove/bin/pip install datatrove spacy regex

(English word and sentence splitting in datatrove is `spacy.blank("en")` plus spaCy's rule-based
sentencizer: no model download.) The harness writes a small runner script and the documents to a
temporary folder and runs it with that venv's python (`--datatrove-python` to use another).

Our filters are imported when the comparison starts; if they are not registered yet in
`curation.steps.REGISTRY`, the harness polls every 60 s for up to `--wait-minutes` (default 50).

Targets (`--check` exits 1 when missed): our full stack >= 1,500 docs/s per core on the demo corpus's
~3 KB documents, and >= 99 % keep/drop agreement with datatrove for every filter on every corpus run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from corpora import DATATROVE_SETUP, DEFAULT_DT_PYTHON, FILTERS, MAX_DOC_BYTES, REPO, run_datatrove, technical_corpus

CORPORA = ("demo", "technical")
TARGET_DOCS_PER_S = 1500.0
TARGET_AGREEMENT = 99.0
CHECK_REGISTRY = ("from curation.steps import REGISTRY; "
                  f"missing = [k for k in {FILTERS!r} if k not in REGISTRY]; "
                  "assert not missing, f'not registered yet: {missing}'")


# ------------------------------------------------------------------------------------------------
# Corpus


def _read_demo_corpus(folder: Path) -> tuple[list[dict], dict]:
    """Build the demo corpus in `folder` and read its documents (skipping what ingest would drop)."""
    from curation.demo import build_demo_corpus

    corpus = build_demo_corpus(folder, scale=1.0)
    docs: list[dict] = []
    skipped: Counter = Counter()
    seen: Counter = Counter()
    for path in corpus.inputs:
        opener = gzip.open if path.name.endswith(".gz") else open
        source = path.name.split(".")[0]
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    record = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    skipped["malformed"] += 1
                    continue
                text = record.get("text") if isinstance(record, dict) else None
                if not isinstance(text, str) or not text.strip():
                    skipped["no_text"] += 1
                    continue
                if len(text.encode("utf-8")) > MAX_DOC_BYTES:
                    skipped["over_100KB"] += 1
                    continue
                doc_id = str(record.get("id") or f"{source}:{number}")
                seen[doc_id] += 1
                if seen[doc_id] > 1:
                    doc_id = f"{doc_id}#{seen[doc_id]}"
                docs.append({"id": doc_id, "text": text, "source": source})
    return docs, dict(skipped)


def load_corpus(name: str, folder: Path) -> tuple[list[dict], dict]:
    """The documents of corpus `name` ("demo" or "technical") and what was skipped, by reason."""
    return _read_demo_corpus(folder) if name == "demo" else technical_corpus()


def sample_docs(pool: list[dict], n: int, seed: int) -> list[dict]:
    """`n` documents: a seeded sample, or whole shuffled copies of the pool (ids suffixed) and a sample."""
    rng = random.Random(seed)
    out: list[dict] = []
    copy = 0
    while len(out) < n:
        take = min(n - len(out), len(pool))
        chosen = rng.sample(pool, take)
        if copy:
            chosen = [{**d, "id": f"{d['id']}~{copy}"} for d in chosen]
        out.extend(chosen)
        copy += 1
    return out


# ------------------------------------------------------------------------------------------------
# Our side


def wait_for_filters(minutes: float) -> None:
    """Poll (in a fresh interpreter each time: the files may be mid-edit) until all four are registered."""
    deadline = time.monotonic() + minutes * 60
    while True:
        proc = subprocess.run([sys.executable, "-c", CHECK_REGISTRY], cwd=REPO, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        if time.monotonic() + 60 > deadline:
            raise SystemExit(f"our filters are not importable/registered after {minutes:g} min: {last}")
        print(f"  waiting for our filters ({last}); retrying in 60 s", flush=True)
        time.sleep(60)


def make_table(docs: list[dict]):
    import pyarrow as pa

    return pa.table({"id": pa.array([d["id"] for d in docs], pa.string()),
                     "text": pa.array([d["text"] for d in docs], pa.large_string())})


def build_steps() -> dict:
    from curation.steps import REGISTRY

    return {name: REGISTRY[name]() for name in FILTERS}


def batches(table, size: int):
    if size <= 0 or size >= table.num_rows:
        yield table
        return
    for start in range(0, table.num_rows, size):
        yield table.slice(start, size)


def run_one(step, table, batch_size: int) -> int:
    kept = 0
    for batch in batches(table, batch_size):
        kept += step.apply(batch).kept.num_rows
    return kept


def run_stack(steps: list, table, batch_size: int) -> int:
    kept = 0
    for batch in batches(table, batch_size):
        for step in steps:
            if batch.num_rows == 0:
                break
            batch = step.apply(batch).kept
        kept += batch.num_rows
    return kept


def clear_caches() -> None:
    """Empty process-wide caches in curation.* (functools caches, and dict attributes named *cache* of
    module-level objects, e.g. a token cache), so that every timed run tokenizes every document from
    scratch, as a pipeline that sees each document once does. Sharing within one run (steps of the
    stack reusing one tokenization) is kept; datatrove's lru_cache is cleared the same way."""
    for name, module in list(sys.modules.items()):
        if not (name == "curation" or name.startswith("curation.")) or module is None:
            continue
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
            elif not isinstance(value, (type, types.ModuleType)) and hasattr(value, "__dict__"):
                for attr, inner in vars(value).items():
                    if "cache" in attr.lower() and isinstance(inner, dict):
                        inner.clear()


def best_time(fn, repeat: int) -> tuple[tuple[float, float], int]:
    """((best wall seconds, best CPU seconds of this process), result) over `repeat` runs."""
    best, result = None, 0
    for _ in range(max(1, repeat)):
        clear_caches()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        took = (time.perf_counter() - start, time.process_time() - cpu_start)
        best = took if best is None else (min(best[0], took[0]), min(best[1], took[1]))
    return best, result


def ours_single_core(docs: list[dict], repeat: int, batch_size: int) -> dict:
    """Timings (best of `repeat`) and row-aligned verdicts of our filters, in this (pinned) process."""
    table = make_table(docs)
    steps = build_steps()
    warm = table.slice(0, min(50, table.num_rows))
    for step in steps.values():
        step.apply(warm)
    out: dict = {"seconds": {}, "reasons": {}, "c4_text": {}}
    for name, step in steps.items():
        out["seconds"][name], _ = best_time(lambda s=step: run_one(s, table, batch_size), repeat)
        reasons: list = []
        for batch in batches(table, batch_size):
            reasons.extend(step.measure(batch).reasons.to_pylist())
        out["reasons"][name] = reasons
    c4_kept = steps["c4_quality"].apply(table).kept
    out["c4_text"] = dict(zip(c4_kept.column("id").to_pylist(), c4_kept.column("text").to_pylist()))
    ordered = [steps[n] for n in FILTERS]
    out["stack_seconds"], out["stack_kept"] = best_time(lambda: run_stack(ordered, table, batch_size), repeat)
    return out


_WORKER: dict = {}


def _worker_init(path: str) -> None:
    import pyarrow.feather as feather

    _WORKER["table"] = feather.read_table(path)
    _WORKER["steps"] = build_steps()
    warm = _WORKER["table"].slice(0, 50)
    for step in _WORKER["steps"].values():
        step.apply(warm)


def _worker_task(task: tuple) -> int:
    what, start, length, batch_size = task
    if what == "ready":
        time.sleep(0.2)  # hold this worker so that the pool starts all of them
        return 0
    clear_caches()
    table = _WORKER["table"].slice(start, length)
    steps = _WORKER["steps"]
    if what == "stack":
        return run_stack([steps[n] for n in FILTERS], table, batch_size)
    return run_one(steps[what], table, batch_size)


def ours_workers(docs: list[dict], workers: int, repeat: int, batch_size: int, folder: Path) -> dict:
    import pyarrow.feather as feather

    path = folder / "docs.arrow"
    feather.write_feather(make_table(docs), path)
    n = len(docs)
    bounds = [(i * n // workers, (i + 1) * n // workers) for i in range(workers)]
    seconds: dict = {}
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(str(path),)) as pool:
        list(pool.map(_worker_task, [("ready", 0, 0, 0)] * workers))
        for what in (*FILTERS, "stack"):
            tasks = [(what, lo, hi - lo, batch_size) for lo, hi in bounds]
            (seconds[what], _), _ = best_time(lambda t=tasks: sum(pool.map(_worker_task, t)), repeat)
    return seconds


# ------------------------------------------------------------------------------------------------
# datatrove side


# ------------------------------------------------------------------------------------------------
# Comparison and report


def reason_key(reason: str | None) -> str:
    return "keep" if reason is None else reason.split("=", 1)[0]


def compare(docs: list[dict], ours: dict, theirs: dict, examples: int) -> dict:
    results: dict = {}
    n = len(docs)
    for name in FILTERS:
        our_reasons = ours["reasons"][name]
        groups: dict = defaultdict(list)
        agree = 0
        for doc, mine in zip(docs, our_reasons):
            dt = theirs[doc["id"]]["r"][name]
            if (mine is None) == (dt is None):
                agree += 1
            else:
                groups[(reason_key(mine), dt or "keep")].append((doc, mine, dt))
        disagreements = []
        for (mine_key, dt_key), rows in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            disagreements.append({
                "ours": mine_key, "datatrove": dt_key, "count": len(rows),
                "examples": [{"id": d["id"], "ours": m, "datatrove": t, "chars": len(d["text"]),
                              "text_head": d["text"][:300]} for d, m, t in rows[:examples]],
            })
        results[name] = {
            "agreement_pct": 100.0 * agree / n,
            "ours_dropped": sum(r is not None for r in our_reasons),
            "datatrove_dropped": sum(theirs[d["id"]]["r"][name] is not None for d in docs),
            "ours_reasons": dict(Counter(reason_key(r) for r in our_reasons if r is not None).most_common()),
            "datatrove_reasons": dict(Counter(theirs[d["id"]]["r"][name] for d in docs
                                              if theirs[d["id"]]["r"][name] is not None).most_common()),
            "disagreements": disagreements,
        }
    # C4 rewrites kept documents: compare the texts where both keep.
    both, same, mismatches = 0, 0, []
    for doc in docs:
        dt_text = theirs[doc["id"]]["c4_text"]
        our_text = ours["c4_text"].get(doc["id"])
        if dt_text is not None and our_text is not None:
            both += 1
            if dt_text == our_text:
                same += 1
            elif len(mismatches) < examples:
                mismatches.append(doc["id"])
    results["c4_quality"]["text_match"] = {"both_kept": both, "identical": same,
                                           "pct": 100.0 * same / both if both else None,
                                           "mismatch_examples": mismatches}
    return results


def fmt_rate(docs: int, seconds: float | None) -> str:
    return f"{docs / seconds:,.0f}" if seconds else "-"


def print_report(report: dict, args: argparse.Namespace) -> None:
    n = report["corpus"]["docs"]
    c = report["corpus"]
    print(f"\n=== corpus {c['name']}: {n:,} documents (mean {c['mean_bytes']:,.0f} B, median "
          f"{c['median_bytes']:,.0f} B; sources {c['sources']}); best of {args.repeat} (ours), "
          f"{args.dt_repeat} (datatrove {report.get('datatrove_version', '-')})")
    head = (f"{'filter':<18} {'ours docs/s':>11} {'(wall)':>8} {'datatrove':>10} {'(wall)':>7} {'speed x':>8} "
            f"{'agree %':>8} {'ours drop':>10} {'dt drop':>8}")
    print(head)
    print("-" * len(head))
    for name in (*FILTERS, "stack"):
        f = report["filters"].get(name, {})
        ours_s, dt_s = f.get("ours_cpu_s"), f.get("datatrove_cpu_s")
        ratio = f"{dt_s / ours_s:,.1f}" if ours_s and dt_s else "-"
        agree = f"{f['agreement_pct']:.2f}" if "agreement_pct" in f else "-"
        od = f.get("ours_dropped", f.get("ours_stack_dropped", "-"))
        dd = f.get("datatrove_dropped", f.get("datatrove_stack_dropped", "-"))
        print(f"{name:<18} {fmt_rate(n, ours_s):>11} {fmt_rate(n, f.get('ours_wall_s')):>8} {fmt_rate(n, dt_s):>10} "
              f"{fmt_rate(n, f.get('datatrove_wall_s')):>7} {ratio:>8} {agree:>8} {od:>10} {dd:>8}")
    print("docs/s per core = documents / CPU seconds of the (single-CPU-pinned) process; (wall) = by wall clock; "
          "speed x = datatrove CPU time / ours; stack = the 4 in sequence on survivors; "
          f"load average at start {report['loadavg']}")
    if report.get("workers"):
        w = report["workers"]
        print(f"\nours over {w['workers']} processes (aggregate docs/s): "
              + ", ".join(f"{k} {fmt_rate(n, v)}" for k, v in w["seconds"].items()))
    tm = report["filters"].get("c4_quality", {}).get("text_match")
    if tm and tm["pct"] is not None:
        print(f"\nc4_quality rewritten text identical where both keep: {tm['identical']:,}/{tm['both_kept']:,} "
              f"({tm['pct']:.2f} %)" + (f"; e.g. {', '.join(tm['mismatch_examples'])}" if tm["mismatch_examples"]
                                        else ""))
    for name in FILTERS:
        dis = report["filters"].get(name, {}).get("disagreements") or []
        if not dis:
            continue
        total = sum(g["count"] for g in dis)
        print(f"\n{name}: {total} disagreement(s)  (ours reason key  vs  datatrove reason)")
        for g in dis[:args.top]:
            print(f"  {g['count']:>5}  ours {g['ours']:<40} datatrove {g['datatrove']}")
            for ex in g["examples"]:
                print(f"         {ex['id']}: ours={ex['ours']!s}  datatrove={ex['datatrove']!s}")


def run_corpus(name: str, args: argparse.Namespace, work: Path, cpus: list[int]) -> dict:
    """Sample corpus `name`, run datatrove and ours on it (pinned to one CPU) and compare: its report."""
    cpu = cpus[-1]
    pool, skipped = load_corpus(name, work / f"corpus-{name}")
    docs = sample_docs(pool, args.docs, args.seed)
    sizes = [len(d["text"].encode("utf-8")) for d in docs]
    report: dict = {
        "corpus": {"name": name, "docs": len(docs), "pool": len(pool), "skipped": skipped,
                   "mean_bytes": statistics.fmean(sizes), "median_bytes": statistics.median(sizes),
                   "mean_chars": statistics.fmean(len(d["text"]) for d in docs),
                   "sources": dict(Counter(d["source"] for d in docs))},
        "filters": {f: {} for f in (*FILTERS, "stack")},
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    print(f"\n== corpus {name}: {len(docs):,} docs sampled from {len(pool):,} (skipped {skipped}), "
          f"mean {report['corpus']['mean_bytes']:,.0f} B", flush=True)
    folder = work / f"run-{name}"
    folder.mkdir()
    theirs = None
    if not args.skip_datatrove:
        print(f"datatrove: running on cpu {cpu} ...", flush=True)
        theirs, summary = run_datatrove(args.datatrove_python, docs, folder, cpu, args.dt_repeat)
        report["datatrove_version"] = summary["version"]
        for f in FILTERS:
            report["filters"][f]["datatrove_wall_s"], report["filters"][f]["datatrove_cpu_s"] = summary["seconds"][f]
        report["filters"]["stack"]["datatrove_wall_s"], report["filters"]["stack"]["datatrove_cpu_s"] = \
            summary["stack_seconds"]
        report["filters"]["stack"]["datatrove_stack_dropped"] = len(docs) - summary["stack_kept"]

    print(f"ours: running on cpu {cpu} ...", flush=True)
    import pyarrow as pa

    threads = pa.cpu_count()
    os.sched_setaffinity(0, {cpu})
    pa.set_cpu_count(1)  # Arrow's compute threads too: one core
    try:
        ours = ours_single_core(docs, args.repeat, args.batch_size)
    finally:
        os.sched_setaffinity(0, cpus)
        pa.set_cpu_count(threads)
    for f in FILTERS:
        report["filters"][f]["ours_wall_s"], report["filters"][f]["ours_cpu_s"] = ours["seconds"][f]
        report["filters"][f]["ours_dropped"] = sum(r is not None for r in ours["reasons"][f])
    report["filters"]["stack"]["ours_wall_s"], report["filters"]["stack"]["ours_cpu_s"] = ours["stack_seconds"]
    report["filters"]["stack"]["ours_stack_dropped"] = len(docs) - ours["stack_kept"]
    if theirs is not None:
        for f, result in compare(docs, ours, theirs, args.examples).items():
            report["filters"][f].update(result)
    if args.workers > 1:
        print(f"ours: {args.workers} processes ...", flush=True)
        report["workers"] = {"workers": args.workers,
                             "seconds": ours_workers(docs, args.workers, args.repeat, args.batch_size, folder)}
    return report


def targets_for(reports: dict[str, dict]) -> dict:
    """The speed target on the demo corpus (the ~3 KB documents it was set for) and the agreement target
    for every filter on every corpus."""
    targets: dict = {}
    if "demo" in reports:
        demo = reports["demo"]
        rate = demo["corpus"]["docs"] / demo["filters"]["stack"]["ours_cpu_s"]
        targets["demo: ours stack docs/s per core >= 1,500"] = {"value": f"{rate:,.0f}",
                                                                "ok": rate >= TARGET_DOCS_PER_S}
    for name, report in reports.items():
        agreements = {f: report["filters"][f].get("agreement_pct") for f in FILTERS}
        if None in agreements.values():
            continue  # --skip-datatrove
        worst = min(agreements, key=agreements.get)
        targets[f"{name}: agreement >= 99 % on every filter (lowest: {worst})"] = {
            "value": f"{agreements[worst]:.2f} %", "ok": agreements[worst] >= TARGET_AGREEMENT}
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=(*CORPORA, "both"), default="both",
                        help="demo, technical, or both (default), each sampled and reported on its own")
    parser.add_argument("--docs", type=int, default=2000, help="documents to filter per corpus (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--workers", type=int, default=1, help="also run ours over N processes (N > 1)")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs of ours; the best is reported")
    parser.add_argument("--dt-repeat", type=int, default=1, help="timing runs of datatrove")
    parser.add_argument("--batch-size", type=int, default=0, help="rows per apply() call (0: all in one batch)")
    parser.add_argument("--json", type=Path, help="also save the full report (with disagreement examples) here")
    parser.add_argument("--top", type=int, default=8, help="disagreement groups printed per filter")
    parser.add_argument("--examples", type=int, default=3, help="example documents per disagreement group")
    parser.add_argument("--datatrove-python", type=Path, default=DEFAULT_DT_PYTHON)
    parser.add_argument("--skip-datatrove", action="store_true", help="time ours only")
    parser.add_argument("--wait-minutes", type=float, default=50.0,
                        help="poll this long for our filters to be registered (0: do not poll)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    if not args.skip_datatrove and not args.datatrove_python.exists():
        raise SystemExit(f"{args.datatrove_python} not found; set it up with\n  {DATATROVE_SETUP}\n"
                         "or pass --skip-datatrove")
    if args.wait_minutes > 0:
        wait_for_filters(args.wait_minutes)
    cpus = sorted(os.sched_getaffinity(0))
    corpora = CORPORA if args.corpus == "both" else (args.corpus,)
    reports: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="curate-bench-filters-") as tmp:
        for name in corpora:
            reports[name] = run_corpus(name, args, Path(tmp), cpus)
    targets = targets_for(reports)
    for report in reports.values():
        print_report(report, args)
    print("\ntargets: " + ("; ".join(f"{k}: {v['value']} ({'PASS' if v['ok'] else 'FAIL'})" for k, v in targets.items())
                            or "none here (agreement needs datatrove; the speed target is the demo corpus's)"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        full = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "cpus": len(cpus), "corpora": reports, "targets": targets}
        args.json.write_text(json.dumps(full, indent=2, ensure_ascii=False), encoding="utf-8")
        print(f"\nsaved {args.json}")
    if args.check and not all(t["ok"] for t in targets.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
