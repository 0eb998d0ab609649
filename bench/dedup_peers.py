"""Exact then near-duplicate dedup at 2 worker processes: `curate run` against text-dedup 0.4.1.

    .venv/bin/python bench/dedup_peers.py                  # 75,000 documents of ~1 KB
    .venv/bin/python bench/dedup_peers.py --docs 3000 --json bench/out/dedup_peers.json --check

The corpus is `scaling.py`'s: sentences of the installed technical prose drawn into ~1 KB documents, 4 % exact
and 4 % near copies (one word in a hundred changed) planted, in JSONL files. Ours: `curate run` (a user's command:
its own process, Prefect, ingest, publish) on a recipe of `exact_dedup` then `minhash_dedup` with their defaults,
`--workers 2`, into a fresh store. text-dedup: its own commands as its README runs them, each from a folder
holding its `config.toml`: `python -m text_dedup.bloom_filter` (exact copies) and then `python -m
text_dedup.minhash` on the first one's output, `num_proc = 2`, with our shingle size, permutations, threshold and
bands x rows, verification on, in `bench/.venv-textdedup` (a fresh Hugging Face cache each run, offline):

    python3.12 -m venv bench/.venv-textdedup          # text-dedup 0.4.1 needs Python >= 3.12
    bench/.venv-textdedup/bin/pip install text-dedup==0.4.1 "datasets==4.0.0"

(datasets 4.8.5 and 5.2.0 run a `map(num_proc=1)` in a process pool, which must pickle the Bloom filter of
`text_dedup.bloom_filter`: TypeError; 4.0.0, the oldest text-dedup allows, runs it in the process.)

Each command's wall time and the peak resident memory of its whole process tree (sampled every 0.2 s) are
measured from outside; text-dedup's two commands add up. Then, untimed, the removals are judged with the
library's own shingling (`curation.dedup.shingles`, word 5-grams of lower-cased `\\w+` words): a removal is right
when the document the tool names as kept is within Jaccard 0.8 of it, following a named document that was itself
removed to the one kept in its place (ours: `dup_of` in the version's rejects; text-dedup: the cluster's kept row
in its `clusters.pickle` for MinHash, the first document of the same text for the Bloom filter), or when any kept
document is (every pair with J >= 0.8 among the candidates of a 32 x 4 LSH, which proposes a pair at J = 0.8 with
probability > 0.9999999). Recall is over the same pairs: a pair is caught when at least one of its two documents
was removed. `--check` exits 1 unless ours runs >= 1.5x text-dedup's docs/s with precision >= 0.99.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from end_to_end import Peak, exit_with_check  # noqa: E402
from scaling import make_corpus, run_layout  # noqa: E402

from curation import dedup as D  # noqa: E402
from curation.store import VersionStore  # noqa: E402

TEXT_DEDUP_PYTHON = BENCH / ".venv-textdedup" / "bin" / "python"
WORKERS = 2
TARGET_SPEEDUP = 1.5  # the benchmark's targets: ours >= 1.5x text-dedup's docs/s ...
TARGET_PRECISION = 0.99  # ... with >= 99 % of our removals right
# A pair at J = 0.8 is a candidate with probability 1 - (1 - 0.8^4)^32 > 0.9999999: the pairs judged are every
# pair at or above the threshold, in practice.
TRUTH_BANDS, TRUTH_ROWS = 32, 4
BLOOM_ERROR_RATE = 1e-5  # text-dedup README's bloom_filter example
SHINGLE_CHUNK = 2000  # documents shingled at once: shingling holds ~15x their text in temporaries
RECIPE = """\
name: dedup-peers
inputs:
{inputs}
steps:
  - {{step: exact_dedup}}
  - {{step: minhash_dedup}}
"""
# text-dedup reads `config.toml` from the folder it runs in (pydantic-settings, TOML only).
EXACT_TOML = """\
[input]
input_type = "local_files"
file_type = "json"

[input.read_arguments]
path = "json"
data_files = {files}
split = "train"

[algorithm]
algorithm_name = "bloom_filter"
text_column = "text"
num_proc = {workers}
error_rate = {error_rate}
max_elements = {docs}

[output]
output_dir = {output}

[debug]
"""
NEAR_TOML = """\
[input]
input_type = "local_hf_dataset"

[input.read_arguments]
dataset_path = {input}

[algorithm]
algorithm_name = "minhash"
text_column = "text"
num_proc = {workers}
num_perm = {num_perm}
ngram_size = {ngram}
threshold = {threshold}
bands = {bands}
rows = {rows}
check_false_positive = true

[output]
output_dir = {output}
save_clusters = true

[debug]
"""
# Asked of text-dedup's own code, so the table shows what it would choose and what it runs with.
TEXT_DEDUP_FACTS = """\
import importlib.metadata as m, json, sys
from text_dedup.config.algorithms.minhash import optimal_param
print(json.dumps({"python": sys.version.split()[0], "text_dedup": m.version("text-dedup"),
                  "datasets": m.version("datasets"), "default_bands_rows": optimal_param(%r, %r)}))
"""


def read_jsonl(files: list[Path]) -> tuple[list[str], list[str]]:
    """Ids and texts in corpus order (the order both tools read)."""
    ids, texts = [], []
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                ids.append(record["id"])
                texts.append(record["text"])
    return ids, texts


def run_ours(files: list[Path], folder: Path) -> dict[str, Any]:
    """`curate run` with `--workers 2`; which documents it removed and the one each names as kept."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "dedup-peers.yaml"
    recipe.write_text(RECIPE.format(inputs="\n".join(f"  - {{path: {p}, source: technical}}" for p in files)))
    env = {**os.environ, "PREFECT_HOME": str(folder / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    result = run_layout(recipe, folder, ["--workers", str(WORKERS)], env)
    store = VersionStore(folder / "store")
    (version,) = store.names()
    rejects = store.read_table(version, "rejects", columns=["id", "reason", "dup_of"]).to_pylist()
    steps = {"exact": sum(r["reason"].startswith("exact_dedup") for r in rejects),
             "near": sum(r["reason"].startswith("minhash_dedup") for r in rejects)}
    return {"wall_s": result["wall_s"], "peak_rss": result["peak_rss"], "stages": result["timings"],
            "removed_by_step": steps, "named": {r["id"]: r["dup_of"] for r in rejects}}


def _run_text_dedup_command(module: str, folder: Path, config: str, env: dict[str, str]) -> tuple[float, int]:
    """One of text-dedup's commands from a folder holding its config: wall seconds, peak RSS of its tree."""
    workdir = folder / module
    workdir.mkdir()
    (workdir / "config.toml").write_text(config)
    started = time.perf_counter()
    proc = subprocess.Popen([str(TEXT_DEDUP_PYTHON), "-m", f"text_dedup.{module}"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with Peak(folder, interval=0.2, pid=proc.pid) as peak:
        out, _ = proc.communicate()
    wall = time.perf_counter() - started
    (workdir / "log.txt").write_text(out)
    if proc.returncode:
        sys.exit(f"text_dedup.{module} failed (log: {workdir / 'log.txt'}):\n{out[-2000:]}")
    return wall, peak.rss


def read_saved(folder: Path) -> pa.Table:
    """A dataset `save_to_disk` wrote: its Arrow stream files in the order its state.json lists."""
    state = json.loads((folder / "state.json").read_text())
    tables = []
    for part in state["_data_files"]:
        with pa.ipc.open_stream(folder / part["filename"]) as reader:
            tables.append(reader.read_all())
    return pa.concat_tables(tables)


def run_text_dedup(files: list[Path], folder: Path, ids: list[str], texts: list[str]) -> dict[str, Any]:
    """text-dedup's Bloom filter, then its MinHash on what the filter kept, as two commands; which documents
    they removed and the one each names as kept."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = {**os.environ, "HF_HOME": str(folder / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    exact_out, near_out = folder / "exact-out", folder / "near-out"
    bands, rows = D.choose_bands()
    configs = {
        "bloom_filter": EXACT_TOML.format(files=json.dumps([str(p) for p in files]), workers=WORKERS, docs=len(ids),
                                          error_rate=BLOOM_ERROR_RATE, output=json.dumps(str(exact_out))),
        "minhash": NEAR_TOML.format(input=json.dumps(str(exact_out)), workers=WORKERS, num_perm=D.NUM_PERM,
                                    ngram=D.SHINGLE_WORDS, threshold=D.THRESHOLD, bands=bands, rows=rows,
                                    output=json.dumps(str(near_out))),
    }
    walls, peak_rss = {}, 0
    for module, config in configs.items():
        walls[module], rss = _run_text_dedup_command(module, folder, config, env)
        peak_rss = max(peak_rss, rss)

    # The Bloom filter read the corpus in order and kept the first of each text; MinHash numbered what it kept
    # 0.. in order, and its clusters map a duplicate's number to its cluster's kept (smallest) number.
    after_exact = read_saved(exact_out).column("id").to_pylist()
    kept = set(read_saved(near_out).column("id").to_pylist())
    first_of_text: dict[str, str] = {}
    survivors = set(after_exact)
    for doc_id, text in zip(ids, texts):
        if doc_id in survivors:
            first_of_text.setdefault(text, doc_id)
    named: dict[str, str | None] = {doc_id: first_of_text.get(text) for doc_id, text in zip(ids, texts)
                                    if doc_id not in survivors}
    with open(near_out / "clusters.pickle", "rb") as handle:
        clusters: dict[int, int] = pickle.load(handle)
    for number, doc_id in enumerate(after_exact):
        if doc_id not in kept:
            named[doc_id] = after_exact[clusters[number]] if number in clusters else None
    return {"wall_s": sum(walls.values()), "peak_rss": peak_rss, "stages": walls,
            "removed_by_step": {"exact": len(ids) - len(after_exact), "near": len(after_exact) - len(kept)},
            "named": named}


class Judge:
    """Exact Jaccard of any two documents' shingle sets, and every pair of the corpus at or above the threshold."""

    def __init__(self, ids: list[str], texts: list[str]):
        self.position = {doc_id: i for i, doc_id in enumerate(ids)}
        parts, offsets, base = [], [np.zeros(1, np.int64)], 0
        for start in range(0, len(texts), SHINGLE_CHUNK):
            hashes, chunk_offsets = D.shingles(texts[start:start + SHINGLE_CHUNK])
            parts.append(hashes)
            offsets.append(chunk_offsets[1:] + base)
            base += len(hashes)
        self.hashes, self.offsets = np.concatenate(parts), np.concatenate(offsets)
        bands = D.band_hashes(D.signatures(self.hashes, self.offsets), TRUTH_BANDS, TRUTH_ROWS)
        candidates = D.candidate_pairs(bands)
        self.pairs = [(i, j) for i, j in candidates.tolist() if self.jaccard(i, j) >= D.THRESHOLD]
        self.partners: dict[int, list[int]] = {}
        for i, j in self.pairs:
            self.partners.setdefault(i, []).append(j)
            self.partners.setdefault(j, []).append(i)

    def jaccard(self, i: int, j: int) -> float:
        return D.jaccard(D.shingle_set(self.hashes, self.offsets, i), D.shingle_set(self.hashes, self.offsets, j))

    def judge(self, named: dict[str, str | None]) -> dict[str, Any]:
        """Precision of the removals (against the named kept document; against any kept one) and recall."""
        removed = {self.position[r] for r in named}
        target = {self.position[r]: None if t is None else self.position[t] for r, t in named.items()}
        right_named = right_any = 0
        for doc in removed:
            kept_one, hops = target[doc], 0
            while kept_one in removed and hops < len(removed):  # a named document removed in its turn
                kept_one, hops = target[kept_one], hops + 1
            named_ok = kept_one is not None and kept_one not in removed and self.jaccard(doc, kept_one) >= D.THRESHOLD
            right_named += named_ok
            right_any += named_ok or any(p not in removed for p in self.partners.get(doc, ()))
        caught = sum(i in removed or j in removed for i, j in self.pairs)
        return {"removed": len(removed), "precision": right_any / max(len(removed), 1),
                "precision_named": right_named / max(len(removed), 1),
                "recall": caught / max(len(self.pairs), 1), "true_pairs": len(self.pairs)}


def text_dedup_facts() -> dict[str, Any]:
    out = subprocess.run([str(TEXT_DEDUP_PYTHON), "-c", TEXT_DEDUP_FACTS % (D.THRESHOLD, D.NUM_PERM)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def print_settings(facts: dict[str, Any]) -> None:
    bands, rows = D.choose_bands()
    default_bands, default_rows = facts["default_bands_rows"]
    print(f"text-dedup {facts['text_dedup']} (datasets {facts['datasets']}, Python {facts['python']}); "
          f"ours on Python {sys.version.split()[0]}")
    settings = [
        ("words", r"re \w+ of lower-cased text", r"regex split on \W of lower-cased text (same words)"),
        ("shingles", f"word {D.SHINGLE_WORDS}-grams, 64-bit xxh3 word hashes combined",
         f"word {D.SHINGLE_WORDS}-grams joined by spaces, 32-bit xxh3 (seed 42)"),
        ("MinHash", f"{D.NUM_PERM} permutations, datasketch affine32 (seed {D.SEED})",
         f"{D.NUM_PERM} permutations, (a*h + b) mod (2^61 - 1), low 32 bits (seed 42)"),
        ("bands x rows", f"{bands} x {rows} (choose_bands)", f"{bands} x {rows} set (its default: {default_bands} x "
                                                             f"{default_rows})"),
        ("verification", f"every candidate pair, exact Jaccard >= {D.THRESHOLD}",
         f"every pair inside a candidate cluster, exact Jaccard >= {D.THRESHOLD}"),
        ("kept copy", "keep policy: source, quality, longest, smallest id", "smallest row number of the cluster"),
        ("exact step", "xxh3-128 of lower-cased, space-collapsed text, on the workers",
         f"Bloom filter of the raw text (error rate {BLOOM_ERROR_RATE:g}), in one process (its code)"),
        ("short texts", "kept, one shingle", "fewer than 5 words: dropped before MinHash"),
    ]
    width = max(len(ours) for _, ours, _ in settings) + 2
    print(f"{'setting':<14}{'ours':<{width}}text-dedup")
    for name, ours, theirs in settings:
        print(f"{name:<14}{ours:<{width}}{theirs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=75_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/curate-bench-dedup-peers"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless ours >= {TARGET_SPEEDUP}x text-dedup's "
                                                            f"docs/s with precision >= {TARGET_PRECISION}")
    args = parser.parse_args()
    if not TEXT_DEDUP_PYTHON.exists():
        sys.exit(f"{TEXT_DEDUP_PYTHON} is missing: create it as this file's docstring says")

    facts = text_dedup_facts()
    files = make_corpus(args.dir / "corpus", args.docs, args.seed)
    ids, texts = read_jsonl(files)
    runs = {"ours": run_ours(files, args.dir / "ours")}
    print(f"ours: {runs['ours']['wall_s']:.1f} s", flush=True)
    runs["text-dedup"] = run_text_dedup(files, args.dir / "text-dedup", ids, texts)
    print(f"text-dedup: {runs['text-dedup']['wall_s']:.1f} s", flush=True)
    judge = Judge(ids, texts)

    print(f"\n{args.docs:,} documents of ~1 KB, {WORKERS} worker processes, {len(judge.pairs):,} pairs with "
          f"J >= {D.THRESHOLD}")
    print_settings(facts)
    print(f"\n{'tool':<12}{'wall s':>8}{'docs/s':>9}{'peak RSS':>10}{'removed':>9}{'exact':>7}{'near':>7}"
          f"{'precision':>11}{'(named)':>9}{'recall':>8}")
    figures: dict[str, Any] = {"docs": args.docs, "workers": WORKERS, "text_dedup": facts, "tools": {}}
    for name, run in runs.items():
        quality = judge.judge(run["named"])
        figures["tools"][name] = {"wall_s": run["wall_s"], "docs_per_s": args.docs / run["wall_s"],
                                  "peak_rss_bytes": run["peak_rss"], "removed_by_step": run["removed_by_step"],
                                  "stages_s": run["stages"], **quality}
        steps = run["removed_by_step"]
        print(f"{name:<12}{run['wall_s']:>8.1f}{args.docs / run['wall_s']:>9,.0f}{run['peak_rss'] / 1e9:>7.2f} GB"
              f"{quality['removed']:>9,}{steps['exact']:>7,}{steps['near']:>7,}{quality['precision']:>11.4f}"
              f"{quality['precision_named']:>9.4f}{quality['recall']:>8.4f}")
    for name, run in runs.items():
        print(f"{name} stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in run["stages"].items()))
    ours, theirs = figures["tools"]["ours"], figures["tools"]["text-dedup"]
    figures["speedup"] = ours["docs_per_s"] / theirs["docs_per_s"]
    print(f"ours / text-dedup docs/s: {figures['speedup']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
    if args.check:
        problems = []
        if figures["speedup"] < TARGET_SPEEDUP:
            problems.append(f"ours ran {figures['speedup']:.2f}x text-dedup's docs/s (target >= {TARGET_SPEEDUP}x)")
        if ours["precision"] < TARGET_PRECISION:
            problems.append(f"our precision {ours['precision']:.4f} (target >= {TARGET_PRECISION})")
        exit_with_check(problems)


if __name__ == "__main__":
    main()
