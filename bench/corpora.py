"""What the benchmarks share: the technical-prose corpus built from what is installed, and datatrove's four
heuristic filters run in their own virtual environment.

Used by `bench/filters.py` (speed and keep/drop agreement per filter) and `bench/calibration.py` (recall and
clean false drops of the paper's, calibrated and datatrove's bounds on a labelled corpus). Both scripts run as
`python bench/NAME.py`, so this folder is on their import path.

datatrove is not a dependency of the project; it lives in its own virtual environment:

    python3 -m venv bench/.venv-datatrove
    bench/.venv-datatrove/bin/pip install datatrove spacy regex
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DT_PYTHON = REPO / "bench" / ".venv-datatrove" / "bin" / "python"
DATATROVE_SETUP = ("python3 -m venv bench/.venv-datatrove && "
                   "bench/.venv-datatrove/bin/pip install datatrove spacy regex")
# Our filter -> datatrove's filter of the same rules, in FineWeb's order (also the order of the stack).
DATATROVE_FILTERS = {
    "gopher_repetition": "GopherRepetitionFilter",
    "gopher_quality": "GopherQualityFilter",
    "c4_quality": "C4QualityFilter",
    "fineweb_quality": "FineWebQualityFilter",
}
FILTERS = tuple(DATATROVE_FILTERS)
MAX_DOC_BYTES = 100_000
# The technical corpus's docstrings: widely used third-party packages (those installed are used).
TECHNICAL_PACKAGES = ("numpy", "scipy", "pandas", "pyarrow", "torch", "datasets", "httpx", "pydantic", "rich",
                      "typer")
OUR_DISTRIBUTION = "curate"  # pyproject.toml's name: its README is not another package's text

# The datatrove side: run in bench/.venv-datatrove by subprocess. Reads docs JSONL, writes one JSON
# line per document with each filter's verdict (null = keep, else the reason), the stack's verdict (the
# first filter that drops it, "NAME:reason", null when all four keep it), C4's rewritten text, and a
# summary line with the timings.
DT_RUNNER = r'''
import json, os, sys, time

cpu = int(sys.argv[3])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
from loguru import logger
logger.remove()
from datatrove.data import Document
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter)
from datatrove.utils import text as dt_text
from datatrove.utils.word_tokenizers import load_word_tokenizer
from importlib.metadata import version

names = json.loads(sys.argv[4])
repeat = int(sys.argv[5])
classes = {"gopher_repetition": GopherRepetitionFilter, "gopher_quality": GopherQualityFilter,
           "c4_quality": C4QualityFilter, "fineweb_quality": FineWebQualityFilter}
docs = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
filters = {name: classes[name]() for name in names}
load_word_tokenizer("eng").tokenizer  # load spaCy once, outside the timings


def verdict(flt, doc):
    try:
        res = flt.filter(doc)
    except Exception as exc:  # datatrove would crash the pipeline; record it as a drop
        return "exception:" + type(exc).__name__
    keep, reason = (res if isinstance(res, tuple) else (res, None))
    return None if keep else (reason or "dropped")


for flt in filters.values():  # warm up
    for d in docs[:20]:
        verdict(flt, Document(text=d["text"], id=d["id"]))

results = {name: [] for name in names}
c4_text = [None] * len(docs)
timings = {}
for name, flt in filters.items():
    best = None
    for r in range(repeat):
        dt_text.split_into_parts.cache_clear()
        out = []
        start, cpu_start = time.perf_counter(), time.process_time()
        for i, d in enumerate(docs):
            doc = Document(text=d["text"], id=d["id"])
            out.append(verdict(flt, doc))
            if name == "c4_quality" and out[-1] is None and r == 0:
                c4_text[i] = doc.text
        took = (time.perf_counter() - start, time.process_time() - cpu_start)
        best = took if best is None else (min(best[0], took[0]), min(best[1], took[1]))
        if r == 0:
            results[name] = out
    timings[name] = best

# The stack as a datatrove pipeline: each filter sees the survivors of the previous one, C4's
# rewritten text included (and shares the lru-cached tokenization of the same text, as in datatrove).
stack_best, survivors = None, 0
stack = [None] * len(docs)
for r in range(repeat):
    dt_text.split_into_parts.cache_clear()
    kept = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, d in enumerate(docs):
        doc = Document(text=d["text"], id=d["id"])
        for name, flt in filters.items():
            reason = verdict(flt, doc)
            if reason is not None:
                if r == 0:
                    stack[i] = name + ":" + reason
                break
        else:
            kept += 1
    took = (time.perf_counter() - start, time.process_time() - cpu_start)
    stack_best = took if stack_best is None else (min(stack_best[0], took[0]), min(stack_best[1], took[1]))
    survivors = kept

with open(sys.argv[2], "w", encoding="utf-8") as out:
    for i, d in enumerate(docs):
        out.write(json.dumps({"id": d["id"], "r": {n: results[n][i] for n in names}, "stack": stack[i],
                              "c4_text": c4_text[i]}) + "\n")
    out.write(json.dumps({"summary": {"seconds": timings, "stack_seconds": stack_best, "stack_kept": survivors,
                                      "version": version("datatrove")}}) + "\n")
'''


def package_modules(package: str) -> list[tuple[str, Path]]:
    """(dotted name, source file) of an installed package's non-test modules, sorted; found without
    importing the package (find_spec of a top-level name only locates it)."""
    from curation.demo.sources import _stdlib_candidates  # the demo's walk: sorted, test folders skipped

    spec = importlib.util.find_spec(package)
    out: list[tuple[str, Path]] = []
    for location in (spec.submodule_search_locations or []) if spec else []:
        root = Path(location)
        if (root / "__init__.py").is_file():
            out.append((package, root / "__init__.py"))
        out.extend((f"{package}.{name}", path) for name, path in _stdlib_candidates(root))
    return out


def technical_corpus() -> tuple[list[dict], dict]:
    """Technical prose from what is installed in this environment, deterministically: one document per
    module of the TECHNICAL_PACKAGES (its docstring and those of its public classes, functions and
    methods, parsed with `ast` as the demo does for the standard library, never imported), and one per
    installed distribution's long description (its README, from `importlib.metadata`; ours excluded).
    Documents under the demo's 50 words or over 100 KB are skipped. Returns the documents ({id, text,
    source}) and what was skipped, by reason."""
    from curation.demo.common import clean_text
    from curation.demo.sources import _module_doc  # the demo's docstring extraction (>= 50 words)

    docs: list[dict] = []
    skipped: Counter = Counter()
    for package in TECHNICAL_PACKAGES:
        modules = package_modules(package)
        if not modules:
            skipped[f"not_installed:{package}"] += 1
        for name, path in modules:
            text = _module_doc(path)
            if text is None:
                skipped["docstrings_under_50_words"] += 1
            elif len(text.encode("utf-8")) > MAX_DOC_BYTES:
                skipped["over_100KB"] += 1
            else:
                docs.append({"id": f"docstrings:{name}", "text": text, "source": "docstrings"})
    readmes: dict[str, str] = {}
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata["Name"] or "", d.version)):
        name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "")).lower()
        if name and name != OUR_DISTRIBUTION and name not in readmes:  # one per name, should two be installed
            readmes[name] = clean_text(dist.metadata.get_payload() or "")
    for name, text in sorted(readmes.items()):
        if len(text.split()) < 50:
            skipped["readme_under_50_words"] += 1
        elif len(text.encode("utf-8")) > MAX_DOC_BYTES:
            skipped["over_100KB"] += 1
        else:
            docs.append({"id": f"readme:{name}", "text": text, "source": "readmes"})
    return docs, dict(skipped)


def run_datatrove(python: Path, docs: list[dict], folder: Path, cpu: int, repeat: int) -> tuple[dict, dict]:
    """datatrove's four filters (default parameters) on `docs` ({id, text}), in `python`'s environment, pinned to
    `cpu` (-1: not pinned): per document id, its row (`r`: each filter's verdict, `stack`, `c4_text`), and the
    summary (timings, version)."""
    runner = folder / "datatrove_runner.py"
    runner.write_text(DT_RUNNER, encoding="utf-8")
    docs_path = folder / "docs.jsonl"
    with open(docs_path, "w", encoding="utf-8") as handle:
        for d in docs:
            handle.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
    out_path = folder / "datatrove_results.jsonl"
    proc = subprocess.run([str(python), str(runner), str(docs_path), str(out_path), str(cpu), json.dumps(FILTERS),
                           str(repeat)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"datatrove runner failed ({python}):\n{proc.stderr[-4000:]}")
    per_doc: dict = {}
    summary: dict = {}
    with open(out_path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if "summary" in row:
                summary = row["summary"]
            else:
                per_doc[row["id"]] = row
    return per_doc, summary
