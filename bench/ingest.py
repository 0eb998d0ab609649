"""Ingestion throughput: N MB of JSONL (~3 KB documents) to Parquet shards.

    python bench/ingest.py --mb 200 --files 2 --workers 2

Prints MB/s and documents/s of input, and the peak resident memory of the ingesting processes
(streaming means it should not grow with --mb). Runs the same library functions the flow's
ingest tasks run, without Prefect's scheduling overhead.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson

from curation.pipeline import ingest_unit, plan_ingest
from curation.recipe import parse_recipe
from curation.store import VersionStore

WORDS = ("data model training corpus filter quality token language the of and to in is that for it with as on "
         "was by this be are from at or an have not which but all were when we there can more if has will one "
         "their been would so what about out up into time only new some could these may then do first any "
         "like now my such make over our even most after also did many before must through back years where").split()


def make_corpus(folder: Path, mb: float, files: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    paths = [folder / f"part-{i}.jsonl" for i in range(files)]
    target = mb * 1e6 / files
    for index, path in enumerate(paths):
        written = 0
        with open(path, "wb") as handle:
            n = 0
            while written < target:
                words = rng.choices(WORDS, k=rng.randint(350, 650))  # ~3 KB
                line = orjson.dumps({"id": f"{index}-{n}", "text": " ".join(words), "url": f"https://e.x/{n}"})
                handle.write(line + b"\n")
                written += len(line) + 1
                n += 1
    return paths


def _ingest(args: tuple) -> tuple[int, int, int]:
    recipe, unit, url, staging = args
    result = ingest_unit(recipe, unit, url, staging)
    return result.records, len(result.shards), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200.0, help="MB of JSONL to ingest")
    parser.add_argument("--files", type=int, default=2, help="input files (ingest runs one task per file)")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument("--shard-mb", type=float, default=64.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="curate-bench-ingest-"))
    try:
        (work / "in").mkdir()
        paths = make_corpus(work / "in", args.mb, args.files)
        size = sum(p.stat().st_size for p in paths)
        recipe = parse_recipe({"inputs": [{"path": str(work / "in"), "format": "jsonl", "glob": "*.jsonl"}],
                               "shard_size_mb": args.shard_mb})
        units = plan_ingest(recipe).units  # files of >= a shard's size get a task each
        store = VersionStore(work / "store")
        staging = store.begin("bench")
        start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(_ingest, [(recipe, u, store.url, staging.path) for u in units]))
        seconds = time.perf_counter() - start
        docs = sum(r[0] for r in results)
        shards = sum(r[1] for r in results)
        peak = max(r[2] for r in results) / 1024
        print(f"input          {size / 1e6:,.1f} MB JSONL in {len(paths)} file(s), {docs:,} documents")
        print(f"workers        {args.workers}")
        print(f"time           {seconds:,.2f} s")
        print(f"throughput     {size / 1e6 / seconds:,.1f} MB/s   {docs / seconds:,.0f} docs/s   "
              f"({size / 1e6 / seconds / args.workers:,.1f} MB/s per worker)")
        print(f"output         {shards} Parquet shard(s) of <= {args.shard_mb:g} MB")
        print(f"peak RSS       {peak:,.0f} MB per ingest process")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
