"""Ablations: are the verdicts honest (false positives on null comparisons), do they catch a planted
defect, and how many runs per hour does the flow get out of the machine?

    .venv/bin/python bench/ablation.py                 # --twins 20 --seeds 3 --steps 200 --junk 0.1 0.3
    .venv/bin/python bench/ablation.py --twins 10 --json bench/out/ablation.json

Real human text (the demo corpus's standard-library docstrings and King James Bible chapters, scale 0.15,
~170k tokens) is published as `clean`, together with:
- `--twins` null versions: the same documents in another random order each (a different token stream and
  data order, the same distribution). An honest 95 % interval calls about 5 % of them "better" or "worse".
  The twins share `clean`'s runs as their baseline, so their verdicts are not independent of each other;
  the printed Wilson interval assumes they are and is therefore optimistic;
- `junk-X` for each `--junk` share X: that share of documents replaced by their own words shuffled.
All of them go through one real ablation (`flows.ablate.run_ablation`: Prefect flow, process pool of a
process per core) against `clean`, with the tiny preset at block 64, batches of 8, `--steps` steps and a
1,024-token tokenizer trained on `clean`, evaluated on the corpus's held-out documents.

Printed: the false-positive rate with its Wilson 95 % interval, the spread of the null deltas, each junk
version's delta, interval and verdict, and the wall time per run with the flow's pool.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.demo import build_demo_corpus  # noqa: E402
from curation.evalsets import register_evalset  # noqa: E402
from curation.store import VersionStore  # noqa: E402
from training.ablation import NO_EFFECT  # noqa: E402
from training.config import AblationSpec  # noqa: E402


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--twins", type=int, default=20, help="null versions (same documents, other order)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per run (batch 8 x block 64)")
    parser.add_argument("--junk", type=float, nargs="*", default=[0.1, 0.3], help="shares of word-shuffled documents")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    from flows.ablate import run_ablation  # Prefect reads its settings when imported: after the lines above

    def publish_rows(store: VersionStore, name: str, rows: list[tuple[str, str]], ids: list[str]) -> None:
        n = len(rows)
        store.publish_table(name, pa.table({
            "id": ids, "text": pa.array([t for _, t in rows], pa.large_string()), "source": [s for s, _ in rows],
            "origin": ["human"] * n, "generation": pa.array([0] * n, pa.int32()),
            "generator": pa.array([None] * n, pa.string())}))

    root = Path(tempfile.mkdtemp(prefix="bench-ablation-"))
    corpus = build_demo_corpus(root / "corpus", seed=0, scale=0.15)
    rows = [(path.name.split(".")[0], r["text"]) for path in corpus.inputs[:2] for r in _jsonl(path)]
    store = VersionStore(root / "store")
    register_evalset(store, "held", [str(p) for p in corpus.heldout_files])
    publish_rows(store, "clean", rows, [f"doc-{i}" for i in range(len(rows))])
    rng = random.Random(0)
    versions = ["clean"]
    for k in range(args.twins):
        order = list(range(len(rows)))
        rng.shuffle(order)
        publish_rows(store, f"twin-{k}", [rows[i] for i in order], [f"doc-{i}" for i in order])
        versions.append(f"twin-{k}")
    for share in args.junk:
        chosen = set(rng.sample(range(len(rows)), round(share * len(rows))))
        junk = []
        for i, (source, text) in enumerate(rows):
            words = text.split()
            if i in chosen:
                rng.shuffle(words)
            junk.append((source, " ".join(words)))
        publish_rows(store, f"junk-{share:g}", junk, [f"doc-{i}" for i in range(len(rows))])
        versions.append(f"junk-{share:g}")

    spec = AblationSpec(tokens=args.steps * 8 * 64, seeds=tuple(range(args.seeds)), batch_size=8, block_size=64,
                        eval_tokens=4096)
    started = time.perf_counter()
    result = run_ablation(store.url, versions, spec, "bench", vocab_size=1024, eval_sets=["held"])
    wall = time.perf_counter() - started
    comparisons = result["analysis"]["comparisons"]
    null = [comparisons[v]["held"]["loss"] for v in versions if v.startswith("twin-")]
    false_positives = sum(c["verdict"] != NO_EFFECT for c in null)
    low, high = wilson(false_positives, len(null))
    runs = len(result["runs"])
    per_run = [r["seconds"] for r in result["runs"]]
    tokens = result["versions"]["clean"]["tokens"]
    figures = {
        "corpus_tokens": tokens, "steps": args.steps, "seeds": args.seeds, "runs": runs,
        "null": {"comparisons": len(null), "false_positives": false_positives,
                 "rate": false_positives / max(len(null), 1), "wilson95": [low, high],
                 "mean_abs_delta": sum(abs(c["mean"]) for c in null) / max(len(null), 1),
                 "sd_of_mean_deltas": float(np.std([c["mean"] for c in null], ddof=1)) if len(null) > 1 else None,
                 "mean_mde": sum(c["mde"] or 0 for c in null) / max(len(null), 1)},
        "junk": {v: {k: comparisons[v]["held"]["loss"][k] for k in ("mean", "ci_low", "ci_high", "p_value",
                                                                     "verdict")}
                 for v in versions if v.startswith("junk-")},
        "wall_seconds": wall, "seconds_per_run_in_process": sum(per_run) / len(per_run),
        "wall_seconds_per_run": wall / runs, "runs_per_hour": 3600 * runs / wall,
    }
    print(f"corpus: {tokens:,} tokens; {runs} runs of {args.steps} steps ({args.steps * 8 * 64:,} tokens), "
          f"{args.seeds} seeds per version")
    print(f"null comparisons (same documents, other order): {false_positives}/{len(null)} called better or worse "
          f"= {figures['null']['rate']:.1%} (Wilson 95 % [{low:.1%}, {high:.1%}]; 5 % expected); mean |delta| "
          f"{figures['null']['mean_abs_delta']:.4f}, mean MDE {figures['null']['mean_mde']:.4f}")
    for version, c in figures["junk"].items():
        print(f"{version}: delta {c['mean']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] p {c['p_value']:.4f} "
              f"-> {c['verdict']}")
    print(f"wall {wall:.0f} s: {wall / runs:.1f} s per run with the flow's pool ({figures['runs_per_hour']:.0f} "
          f"runs/hour); {figures['seconds_per_run_in_process']:.1f} s per run inside its process")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
