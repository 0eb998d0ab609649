"""Scaling: does a second worker make the same run faster, and does every layout publish the same version?

    .venv/bin/python bench/scaling.py                # 75,000 documents; 1 worker, 2 workers, --cluster local:2
    .venv/bin/python bench/scaling.py --check        # exit 1 unless 2 workers >= 1.6x one, same fingerprints

The corpus is built deterministically from installed text: sentences of the technical prose `corpora.py` reads
(the docstrings of ten installed packages and the installed distributions' READMEs), drawn with a seeded
generator into documents of ~1 KB, with 4 % exact copies and 4 % near copies (one word in a hundred changed)
planted, in three JSONL files. Each layout runs `curate run` (a new user's command: its own process, imports,
Prefect, the estimate) on a recipe of length, Gopher repetition, C4 and FineWeb filters and exact and MinHash
dedup (Gopher's quality rules are left out: on technical prose they drop most documents, and the
dedup steps would have nothing to do), into a fresh store; `--repeat` runs per layout, alternating, the median
reported. Printed per layout: wall time, docs/s, the CPU seconds of the command's whole process tree and how many
cores that kept busy on average (CPU / wall: a layout's CPU time over the machine's cores is the least wall time
it can take, so the speed-up it allows is printed too), the peak resident memory of the command's whole process tree
(sampled every 0.2 s), the largest peak any worker task reported, how much the flow's own process grew per
document while a dedup step decided, the version's fingerprint, kept documents, each stage's seconds from the
manifest, and the shard rounds' seconds (with the decisions that start them) against the first layout's.

    .venv/bin/python bench/scaling.py --doc-bytes 3000 --layouts "1 worker" "2 workers"
                                                     # the same run with longer documents: fixed costs weigh less
    .venv/bin/python bench/scaling.py --layouts "1 worker" --local 1 2 4 8 --repeat 1
                                                     # N partitions taking turns on the cores: memory per worker
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpora import technical_corpus  # noqa: E402
from end_to_end import Peak, exit_with_check  # noqa: E402

FILE_DOCS = 25_000
RECIPE = """\
name: scaling
{shard_line}inputs:
{inputs}
steps:
  - {{step: length_filter}}
  - {{step: gopher_repetition}}
  - {{step: c4_quality}}
  - {{step: fineweb_quality}}
  - {{step: exact_dedup}}
  - {{step: minhash_dedup}}
"""
LAYOUTS = {"1 worker": ["--workers", "1"], "2 workers": ["--workers", "2"], "local:2": ["--cluster", "local:2"]}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences() -> list[str]:
    """Every sentence of 40-300 characters in the technical corpus, whitespace collapsed, in corpus order."""
    docs, _ = technical_corpus()
    out = []
    for doc in docs:
        for part in _SENTENCE_END.split(" ".join(doc["text"].split())):
            if 40 <= len(part) <= 300:
                out.append(part)
    return out


def make_corpus(folder: Path, docs: int, seed: int, doc_bytes: int = 1000) -> list[Path]:
    """`docs` documents in JSONL files of FILE_DOCS, written once per (docs, seed, doc_bytes)."""
    stamp = folder / f"corpus-{docs}-{seed}-{doc_bytes}.json"
    if stamp.exists():
        return [Path(p) for p in json.loads(stamp.read_text())]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pool = sentences()
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < docs:
        roll = rng.random()
        if texts and roll < 0.04:  # an exact copy of an earlier document
            texts.append(texts[rng.randrange(len(texts))])
        elif texts and roll < 0.08:  # a near copy: one word in a hundred replaced
            words = texts[rng.randrange(len(texts))].split()
            for _ in range(max(1, len(words) // 100)):
                words[rng.randrange(len(words))] = rng.choice(words)
            texts.append(" ".join(words))
        else:
            body, size = [], 0
            while size < doc_bytes:
                sentence = pool[rng.randrange(len(pool))]
                body.append(sentence)
                size += len(sentence) + 1
            texts.append(" ".join(body))
    files = []
    for start in range(0, docs, FILE_DOCS):
        path = folder / f"part-{start // FILE_DOCS:03d}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for i in range(start, min(start + FILE_DOCS, docs)):
                handle.write(json.dumps({"id": f"doc-{i:07d}", "text": texts[i]}) + "\n")
        files.append(path)
    stamp.write_text(json.dumps([str(p) for p in files]))
    return files


def run_layout(recipe: Path, folder: Path, options: list[str], env: dict[str, str]) -> dict[str, Any]:
    store = folder / "store"
    shutil.rmtree(store, ignore_errors=True)
    cli = Path(sys.executable).with_name("curate")
    started = time.perf_counter()
    proc = subprocess.Popen([str(cli), "run", str(recipe), "--store", str(store), "--name", "scaling", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with Peak(store, interval=0.2, pid=proc.pid) as peak:
        out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"curate run {' '.join(options)} failed:\n{out[-2000:]}\n{err[-2000:]}")
    manifest = json.loads(next((store / "versions").glob("scaling*/manifest.json")).read_text())
    rounds = [t for t in manifest["timings"].values() if "decide_tasks" in t]
    return {"wall_s": wall, "cpu_s": peak.cpu_seconds, "peak_rss": peak.rss, "fingerprint": manifest["fingerprint"],
            "kept": manifest["rows"],
            "timings": {k: v["seconds"] for k, v in manifest["timings"].items()},
            "worker_peak_rss": manifest["actual"]["worker_peak_rss_bytes"],
            "decide_tasks": sum(t["decide_tasks"] for t in rounds),
            "flow_decide_growth": max((t.get("decide_flow_memory_growth_bytes", 0) for t in rounds), default=0),
            "decided_docs": max((t["docs"] for t in rounds), default=0)}


def _steps_seconds(result: dict[str, Any]) -> float:
    """The stages that run on the workers: every shard round, with the decisions that start them."""
    return sum(v for k, v in result["timings"].items() if k.startswith("steps"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=75_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doc-bytes", type=int, default=1000, help="about how long each document is")
    parser.add_argument("--repeat", type=int, default=3, help="runs per layout (alternating); the median is reported")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--local", nargs="+", type=int, default=[], metavar="N",
                        help="also run --cluster local:N for each N (N > cores: partitions that take turns), to see "
                             "per-worker memory as the partitions grow")
    parser.add_argument("--shard-mb", type=float, help="the recipe's shard_size_mb (default: unset, so the run cuts "
                                                       "the input into about eight shards, at most 64 MB)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/curate-bench-scaling"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 unless 2 workers >= 1.6x one worker and every "
                                                            "layout publishes the same fingerprint")
    args = parser.parse_args()

    files = make_corpus(args.dir / "corpus", args.docs, args.seed, args.doc_bytes)
    recipe = args.dir / "scaling.yaml"
    inputs = "\n".join(f"  - {{path: {p}, source: technical}}" for p in files)
    shard_line = f"shard_size_mb: {args.shard_mb}\n" if args.shard_mb else ""
    recipe.write_text(RECIPE.format(shard_line=shard_line, inputs=inputs))
    env = {**os.environ, "PREFECT_HOME": str(args.dir / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    layouts = {name: LAYOUTS[name] for name in args.layouts}
    layouts.update({f"local:{n}": ["--cluster", f"local:{n}"] for n in args.local})
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
    for round_ in range(args.repeat):
        for name, options in layouts.items():
            result = run_layout(recipe, args.dir / name.replace(" ", "-").replace(":", "-"), options, env)
            runs[name].append(result)
            print(f"round {round_ + 1}: {name}: {result['wall_s']:.1f} s, peak RSS {result['peak_rss'] / 1e9:.2f} GB",
                  flush=True)

    shards = f"{args.shard_mb:g} MB" if args.shard_mb else "the run's choice"
    print(f"\n{args.docs:,} documents of ~{args.doc_bytes / 1000:g} KB, shards of {shards}; medians of {args.repeat} "
          "runs per layout")
    print(f"{'layout':<11}{'wall s':>8}{'docs/s':>9}{'speed-up':>10}{'CPU s':>7}{'cores':>6}{'peak RSS':>10}"
          f"{'worker':>9}{'flow B/doc':>11}  {'kept':>7}  fingerprint")
    first = next(iter(layouts))
    base = statistics.median(r["wall_s"] for r in runs[first])
    base_steps = statistics.median(_steps_seconds(r) for r in runs[first])
    figures = {"docs": args.docs, "layouts": {}}
    for name, results in runs.items():
        wall = statistics.median(r["wall_s"] for r in results)
        rss = statistics.median(r["peak_rss"] for r in results)
        fingerprints = {r["fingerprint"] for r in results}
        worker = statistics.median(r["worker_peak_rss"] or 0 for r in results)
        flow_per_doc = statistics.median(r["flow_decide_growth"] / max(r["decided_docs"], 1) for r in results)
        cpu = statistics.median(r["cpu_s"] for r in results)
        print(f"{name:<11}{wall:>8.1f}{args.docs / wall:>9,.0f}{base / wall:>9.2f}x{cpu:>7.1f}{cpu / wall:>6.2f}"
              f"{rss / 1e9:>8.2f} GB"
              f"{worker / 1e9:>6.2f} GB{flow_per_doc:>11,.0f}  {results[0]['kept']:>7,}  "
              f"{', '.join(f[:12] for f in sorted(fingerprints))}")
        stages = {k: statistics.median(r["timings"].get(k, 0.0) for r in results) for k in results[0]["timings"]}
        steps = statistics.median(_steps_seconds(r) for r in results)
        print("           " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
              + f"; steps and decisions {steps:.1f} s ({base_steps / steps:.2f}x), "
              f"{statistics.median(r['decide_tasks'] for r in results):.0f} decision tasks")
        figures["layouts"][name] = {"wall_s": wall, "docs_per_s": args.docs / wall, "speedup": base / wall,
                                    "cpu_s": cpu, "busy_cores": cpu / wall,
                                    "steps_s": steps, "steps_speedup": base_steps / steps, "peak_rss_bytes": rss,
                                    "worker_peak_rss_bytes": worker, "flow_decide_bytes_per_doc": flow_per_doc,
                                    "fingerprints": sorted(fingerprints), "stages": stages, "runs": results}
    cores = os.cpu_count() or 1
    for name, layout in figures["layouts"].items():
        if name != first and layout["busy_cores"] > 1.05:  # the most this layout's CPU time allows on these cores
            floor = layout["cpu_s"] / cores
            print(f"{name}: {layout['cpu_s']:.1f} CPU s on {cores} cores take at least {floor:.1f} s: at most "
                  f"{base / floor:.2f}x {first}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
    if args.check:
        problems = []
        all_prints = {f for layout in figures["layouts"].values() for f in layout["fingerprints"]}
        if len(all_prints) != 1:
            problems.append(f"layouts published {len(all_prints)} different fingerprints")
        two = figures["layouts"].get("2 workers")
        if two is not None and "1 worker" in figures["layouts"] and two["speedup"] < 1.6:
            problems.append(f"2 workers ran {two['speedup']:.2f}x one worker (target >= 1.6x)")
        exit_with_check(problems)


if __name__ == "__main__":
    main()
