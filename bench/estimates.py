"""The run's estimate against what the run really read and used, on three corpora of different document sizes.

    .venv/bin/python bench/estimates.py            # ~4 minutes on 2 cores
    .venv/bin/python bench/estimates.py --check    # exits 1 if any quantity is off by more than 25 %

Builds three corpora deterministically from the technical prose of `corpora.py` (docstrings and READMEs of what
is installed), its paragraphs drawn with a seeded generator into documents of ~1 KB, ~3 KB and ~20 KB, written
as JSONL files of 5,000 documents; runs `curate run` on each (length and Gopher filters, exact and MinHash dedup,
2 workers) and prints, per quantity, the estimate `curate run` printed, the manifest's actual and the error:
documents, text bytes, a worker's peak resident memory (max over workers), the staging folder's peak disk.
The flow process's peak and the dedup decisions' estimate are printed too, not checked (the flow also holds
Prefect's client and the statistics).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from corpora import technical_corpus  # noqa: E402

TOLERANCE = 0.25  # the estimate's promise (README, `curate run`)
FILE_DOCS = 5000
# (name, mean document bytes, documents, shard MB): short technical notes, pages, long articles; sizes keep the
# whole bench under ~5 minutes on 2 cores, and the shards small enough that each corpus has several.
CORPORA = (("short-1KB", 1000, 30_000, 8), ("medium-3KB", 3000, 20_000, 16), ("long-20KB", 20_000, 4000, 32))
RECIPE = """\
name: {name}
inputs: [{{path: {folder}, glob: "part-*.jsonl", source: technical}}]
steps:
  - {{step: length_filter, min_chars: 200, min_words: 30}}
  - {{step: gopher_quality}}
  - {{step: exact_dedup}}
  - {{step: minhash_dedup, threshold: 0.8}}
shard_size_mb: {shard_mb}
"""
QUANTITIES = (("documents", "documents", "documents"), ("text bytes", "text_bytes", "text_bytes"),
              ("worker memory", "worker_memory_bytes", "worker_peak_rss_bytes"),
              ("disk", "disk_bytes", "disk_peak_bytes"))


def paragraphs() -> list[str]:
    """The technical corpus's paragraphs of at least 40 characters, in the corpus's own (sorted) order."""
    docs, _ = technical_corpus()
    return [p.strip() for d in docs for p in d["text"].split("\n\n") if len(p.strip()) >= 40]


def write_corpus(folder: Path, pool: list[str], mean_bytes: int, documents: int, seed: int = 0) -> None:
    """Documents of paragraphs drawn at random until each reaches its length (uniform in 0.5-1.5 x the mean);
    a paragraph longer than the rest of a document is cut at a word."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for start in range(0, documents, FILE_DOCS):
        with open(folder / f"part-{start // FILE_DOCS:04d}.jsonl", "w", encoding="utf-8") as handle:
            for i in range(start, min(documents, start + FILE_DOCS)):
                want = int(mean_bytes * rng.uniform(0.5, 1.5))
                parts: list[str] = []
                size = 0
                while size < want:
                    paragraph = pool[int(rng.integers(len(pool)))][: want - size + 200].rsplit(" ", 1)[0]
                    parts.append(paragraph)
                    size += len(paragraph) + 2
                handle.write(json.dumps({"id": f"doc-{i}", "text": "\n\n".join(parts)}) + "\n")


def run(folder: Path, store: Path, name: str, shard_mb: int, workers: int) -> dict:
    recipe = folder.parent / f"{name}.yaml"
    recipe.write_text(RECIPE.format(name=name, folder=folder, shard_mb=shard_mb))
    cli = Path(sys.executable).with_name("curate")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(folder.parent / "prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    done = subprocess.run([str(cli), "run", str(recipe), "--store", str(store), "--workers", str(workers)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"curate run {recipe} failed:\n{done.stdout}\n{done.stderr}")
    shown = subprocess.run([str(cli), "show", name, "--store", str(store), "--json"], capture_output=True, text=True,
                           env=env, check=True)
    return json.loads(shown.stdout)


def _percent(error: float | None) -> str:
    return "not measured" if error is None else f"{error:+.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every corpus's documents")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if any error exceeds {TOLERANCE:.0%}")
    args = parser.parse_args()
    pool = paragraphs()
    results = []
    with tempfile.TemporaryDirectory(prefix="curate-estimates-") as tmp:
        for name, mean_bytes, documents, shard_mb in CORPORA:
            folder = Path(tmp) / name
            write_corpus(folder, pool, mean_bytes, int(documents * args.scale))
            manifest = run(folder, Path(tmp) / "store", name, shard_mb, args.workers)
            rows = []
            for label, key, measured in QUANTITIES:
                estimated, actual = manifest["estimate"][key], manifest["actual"][measured]
                rows.append({"quantity": label, "estimate": estimated, "actual": actual,
                             "error": estimated / actual - 1 if actual else None})
            results.append({"corpus": name, "shard_mb": shard_mb, "rows": rows,
                            "flow_peak_rss_bytes": manifest["actual"]["flow_peak_rss_bytes"],
                            "dedup_memory_bytes": manifest["estimate"]["dedup_memory_bytes"]})
            print(f"{name}: {int(documents * args.scale):,} documents, {shard_mb} MB shards, {args.workers} workers")
            for row in rows:
                print(f"  {row['quantity']:<14} estimate {row['estimate']:>15,}  actual {row['actual'] or 0:>15,}  "
                      f"error {_percent(row['error'])}")
            print(f"  flow process peak {manifest['actual']['flow_peak_rss_bytes']:,} bytes "
                  f"(dedup decisions estimate {manifest['estimate']['dedup_memory_bytes']:,})", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    off = [f"{r['corpus']} {row['quantity']} {_percent(row['error'])}" for r in results for row in r["rows"]
           if row["error"] is None or abs(row["error"]) > TOLERANCE]
    if off:
        print(f"off by more than {TOLERANCE:.0%}: " + "; ".join(off))
    if args.check and off:
        sys.exit(1)


if __name__ == "__main__":
    main()
