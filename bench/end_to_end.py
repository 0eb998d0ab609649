"""End to end: a generated corpus of ~3 KB documents through ingest -> filters -> dedup -> stats -> publish.

    .venv/bin/python bench/end_to_end.py                       # 1,000,000 documents, every core
    .venv/bin/python bench/end_to_end.py --docs 100000 --json bench/out/end_to_end.json

Prints docs/s per stage (from the manifest's timings), total wall time, the peak resident memory of
the whole process tree (the flow, its worker processes and Prefect's local API server, sampled every
0.5 s), the peak disk the store used, and the run's own estimate next to them. Targets for 1 M
documents on 2 cores: <= 30 minutes, peak RSS <= 8 GB (`--check` exits 1 when missed).

The corpus is English-like text built from a pool of generated sentences (Zipf-distributed common
words), written once as JSONL files of 50,000 documents and reused while --docs and --seed are the
same. It plants 4 % exact copies (new id), 4 % near copies (1 % of the words replaced) and 3 % short
fragments, so every filter and both dedup steps have work to do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILE_DOCS = 50_000
COMMON = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
          "they you were her she there would their we him been has when who will more no if out so said what up its "
          "about into than them can only other new some could time these two may then do first any my now such like "
          "our over man me even most made after also did many before must through back years where much your way "
          "well down should because each just those people how too little state good very make world still own see "
          "men work long get here between both life being under never day same another know while last might us "
          "great old year off come since against go came right used take three").split()


def _vocabulary(rng: np.random.Generator, size: int = 6000) -> list[str]:
    letters = np.array(list("etaoinshrdlucmfwypvbgkqjxz"))
    weights = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.2, 2.4, 2.0, 2.0,
                        1.0, 1.5, 2.0, 0.8, 0.2, 0.2, 0.2, 0.1])
    weights /= weights.sum()
    words = list(COMMON)
    while len(words) < size:
        words.append("".join(rng.choice(letters, size=int(rng.integers(3, 10)), p=weights)))
    return words


def _sentences(seed: int, count: int = 100_000) -> list[str]:
    rng = np.random.default_rng(seed)
    words = np.array(_vocabulary(rng))
    ranks = np.arange(1, len(words) + 1)
    p = 1 / ranks ** 1.05
    p /= p.sum()
    out = []
    for length in rng.integers(8, 22, size=count):
        ids = rng.choice(len(words), size=int(length), p=p)
        text = " ".join(words[ids])
        out.append(text[0].upper() + text[1:] + ".")
    return out


def _write_file(args: tuple[int, int, int, int, str]) -> str:
    """One JSONL file of documents [start, start + n), deterministic for (seed, start)."""
    seed, start, n, target_bytes, path = args
    pool = _sentences(seed)
    rng = np.random.default_rng([seed, start])
    kind = rng.random(n)
    recent: list[str] = []
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for offset in range(n):
            doc_id = f"doc-{start + offset:08d}"
            if kind[offset] < 0.04 and recent:  # exact copy of an earlier document
                text = recent[int(rng.integers(len(recent)))]
            elif kind[offset] < 0.08 and recent:  # near copy: 1 % of the words replaced (Jaccard ~0.9)
                words = recent[int(rng.integers(len(recent)))].split(" ")
                for k in rng.choice(len(words), size=max(1, len(words) // 100), replace=False):
                    words[k] = pool[int(rng.integers(len(pool)))].split(" ")[0].lower()
                text = " ".join(words)
            elif kind[offset] < 0.11:  # a fragment the length filter removes
                text = pool[int(rng.integers(len(pool)))]
            else:
                paragraphs, size = [], 0
                while size < target_bytes:
                    picks = rng.integers(len(pool), size=int(rng.integers(3, 7)))
                    paragraph = " ".join(pool[k] for k in picks)
                    paragraphs.append(paragraph)
                    size += len(paragraph) + 1
                text = "\n".join(paragraphs)
                recent.append(text)
                if len(recent) > 2000:
                    recent.pop(0)
            handle.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    os.replace(tmp, path)
    return path


def make_corpus(folder: Path, docs: int, seed: int, target_bytes: int, workers: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "corpus.json"
    wanted = {"docs": docs, "seed": seed, "target_bytes": target_bytes, "file_docs": FILE_DOCS}
    files = [str(folder / f"part-{i:04d}.jsonl") for i in range((docs + FILE_DOCS - 1) // FILE_DOCS)]
    if stamp.exists() and json.loads(stamp.read_text()) == wanted and all(os.path.exists(f) for f in files):
        return files
    jobs = [(seed, i * FILE_DOCS, min(FILE_DOCS, docs - i * FILE_DOCS), target_bytes, f) for i, f in enumerate(files)]
    with Pool(workers) as pool:
        pool.map(_write_file, jobs)
    stamp.write_text(json.dumps(wanted))
    return files


def exit_with_check(problems: list[str]) -> None:
    """What a benchmark's `--check` prints and how it exits: each missed target, then PASS or FAIL."""
    for problem in problems:
        print(f"CHECK FAILED: {problem}")
    print("check:", "FAIL" if problems else "PASS")
    sys.exit(1 if problems else 0)


class Peak:
    """Peak RSS of a process (default: this one) and all its descendants, and peak bytes under a folder; and the
    CPU seconds the tree used (`cpu_seconds`: each process's own user + system time as last sampled, so a
    process's last interval, or one that lived less than an interval, is missed)."""

    def __init__(self, folder: Path, interval: float = 0.5, pid: int | None = None):
        self.folder, self.interval, self.pid = folder, interval, pid
        self.rss = self.disk = 0
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree_rss(self) -> int:
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in tree:
            try:
                total += p.memory_info().rss
                times = p.cpu_times()
                self._cpu[(p.pid, p.create_time())] = times.user + times.system
            except psutil.Error:
                pass
        return total

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def _disk(self) -> int:
        total = 0
        for base, _, names in os.walk(self.folder):
            for name in names:
                try:
                    total += os.lstat(os.path.join(base, name)).st_blocks * 512
                except OSError:
                    pass
        return total

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self.rss = max(self.rss, self._tree_rss())
            if tick % 10 == 0:  # walking the store is slower: every 5 s
                self.disk = max(self.disk, self._disk())
            tick += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.disk = max(self.disk, self._disk())


RECIPE = """\
name: bench
inputs: [{path: corpus, glob: "part-*.jsonl", source: web}]
steps:
  - {step: length_filter, min_chars: 200, min_words: 30, max_chars: 200000}
  - {step: gopher_repetition}
  - {step: gopher_quality}
  - {step: c4_quality}
  - {step: fineweb_quality}
  - {step: exact_dedup}
  - {step: minhash_dedup}
shard_size_mb: 64
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--doc-bytes", type=int, default=3000, help="target size of a full document")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/curate-bench-e2e"), help="corpus and store folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--check", action="store_true", help="exit 1 if the 1 M-document targets are missed")
    args = parser.parse_args()

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    clock = time.perf_counter()
    files = make_corpus(args.dir / "corpus", args.docs, args.seed, args.doc_bytes, args.workers)
    corpus_bytes = sum(os.path.getsize(f) for f in files)
    print(f"corpus: {args.docs:,} documents in {len(files)} files, {corpus_bytes / 1e9:.2f} GB "
          f"(ready in {time.perf_counter() - clock:.0f} s)")
    recipe_path = args.dir / "bench.yaml"
    recipe_path.write_text(RECIPE)
    store = args.dir / "store"
    shutil.rmtree(store, ignore_errors=True)

    from curation.pipeline import estimate, plan_ingest
    from curation.recipe import load_recipe
    from flows.curate import run_curation

    recipe = load_recipe(recipe_path)
    forecast = estimate(recipe, plan_ingest(recipe))
    print(forecast.describe(args.workers))
    started = time.perf_counter()
    with Peak(store) as peak:
        manifest = run_curation(recipe, str(store), "bench", workers=args.workers)
    wall = time.perf_counter() - started

    print(f"\n{'stage':<16}{'seconds':>10}{'docs':>12}{'docs/s':>10}")
    for stage, t in manifest["timings"].items():
        print(f"{stage:<16}{t['seconds']:>10.1f}{t['docs']:>12,}{(t['docs_per_s'] or 0):>10,.0f}")
    minutes = wall / 60
    print(f"\n{args.docs:,} documents -> {manifest['rows']:,} kept in {minutes:.1f} min "
          f"({args.docs / wall:,.0f} docs/s overall) on {args.workers} workers")
    print(f"peak RSS (flow + workers + Prefect API): {peak.rss / 1e9:.2f} GB; estimate: dedup decisions "
          f"{forecast.dedup_memory_bytes / 1e9:.2f} GB + {args.workers} x {forecast.worker_memory_bytes / 1e9:.2f} GB")
    print(f"peak store disk: {peak.disk / 1e9:.2f} GB; estimate {forecast.disk_bytes / 1e9:.2f} GB; "
          f"estimated documents {forecast.documents:,}")
    for step in manifest["steps"]:
        top = sorted(step["rejected_by_reason"].items(), key=lambda kv: -kv[1])[:3]
        print(f"  {step['name']:<18} in {step['in']:>9,}  kept {step['kept']:>9,}  "
              + ", ".join(f"{k} {v:,}" for k, v in top))
    figures = {"docs": args.docs, "corpus_bytes": corpus_bytes, "workers": args.workers, "cpu_count": os.cpu_count(),
               "wall_s": round(wall, 1), "docs_per_s": round(args.docs / wall, 1), "kept": manifest["rows"],
               "peak_rss_bytes": peak.rss, "peak_disk_bytes": peak.disk, "timings": manifest["timings"],
               "estimate": vars(forecast)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
    if args.check:
        scale = 1_000_000 / args.docs
        ok = wall * scale <= 30 * 60 and peak.rss <= 8e9
        print(f"check (scaled to 1 M documents: {wall * scale / 60:.1f} min): {'ok' if ok else 'MISSED'}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
