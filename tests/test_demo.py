"""Tests for the built-in demo corpus: real sources, determinism, and ground truth of planted defects."""

from __future__ import annotations

import collections
import difflib
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import ftfy
import pytest

from curation.demo import DEFECT_COUNTS, DemoCorpus, build_demo_corpus, load_labels
from curation.demo.defects import mojibake, typographic
from curation.demo.web import build_web

SCALE = 0.05
REPO = Path(__file__).resolve().parents[1]
FILES = ("stdlib_docs.jsonl", "kjv.jsonl.gz", "web_crawl.jsonl", "labels.jsonl")
# Ingest-level defects whose line cannot be parsed as a JSON object, so the label carries no id.
UNPARSEABLE = {"malformed_json", "invalid_utf8", "blank_line"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> DemoCorpus:
    return build_demo_corpus(tmp_path_factory.mktemp("demo"), seed=0, scale=SCALE)


@pytest.fixture(scope="module")
def web_lines(corpus: DemoCorpus) -> list[bytes]:
    data = (corpus.root / "web_crawl.jsonl").read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


@pytest.fixture(scope="module")
def labels(corpus: DemoCorpus) -> list[dict]:
    return load_labels(corpus.labels_path)


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def clean(corpus: DemoCorpus) -> dict[str, list[dict]]:
    return {
        "stdlib_docs": _read_jsonl(corpus.root / "stdlib_docs.jsonl"),
        "kjv": _read_jsonl(corpus.root / "kjv.jsonl.gz"),
    }


@pytest.fixture(scope="module")
def originals(clean: dict[str, list[dict]]) -> dict[str, str]:
    return {r["id"]: r["text"] for recs in clean.values() for r in recs}


def _record(web_lines: list[bytes], label: dict) -> dict:
    return json.loads(web_lines[label["line"] - 1])


def _of(labels: list[dict], defect: str) -> list[dict]:
    found = [lab for lab in labels if lab["defect"] == defect]
    assert found, f"no {defect} planted"
    return found


def _try_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + k]) for i in range(max(1, len(words) - k + 1))}


# -- layout and determinism --------------------------------------------------------------------------


def test_layout(corpus: DemoCorpus) -> None:
    assert [p.name for p in corpus.inputs] == list(FILES[:3])
    assert corpus.labels_path == corpus.root / "labels.jsonl"
    for name in FILES:
        assert (corpus.root / name).stat().st_size > 0
    assert not list(corpus.root.glob("*.tmp")), "atomic writes must not leave temp files"
    with gzip.open(corpus.root / "kjv.jsonl.gz", "rb") as fh:  # really gzip-compressed
        assert fh.read(1) == b"{"


def test_same_seed_is_byte_identical_even_across_processes(corpus: DemoCorpus, tmp_path: Path) -> None:
    again = build_demo_corpus(tmp_path / "again", seed=0, scale=SCALE)
    code = "import sys; from pathlib import Path; from curation.demo import build_demo_corpus; " \
           f"build_demo_corpus(Path(sys.argv[1]), seed=0, scale={SCALE})"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "proc")], cwd=REPO, env=env, check=True)
    for name in FILES:
        ref = (corpus.root / name).read_bytes()
        assert (again.root / name).read_bytes() == ref, name
        assert (tmp_path / "proc" / name).read_bytes() == ref, name
    assert again.counts == corpus.counts


def test_crawl_generation_is_pinned() -> None:
    """The crawl's bytes and labels for a fixed pool of documents (independent of the installed Python): a change
    to the generators' draws changes every demo version's fingerprint, so it must be deliberate."""
    rng = random.Random(7)
    words = "alpha beta gamma délta epsilon zeta eta theta iota kappa lambda mu \"quoted\" it's -- ...".split()
    pool = [(f"doc:{i}", " ".join(rng.choice(words) for _ in range(rng.randint(60, 200)))) for i in range(40)]
    held = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(8)]
    counts = {k: 2 for k in DEFECT_COUNTS} | {"blank_line": 1, "too_long": 1}
    data, labels = build_web(0, pool, held, counts)
    assert len(labels) == 34  # 2 per class (too_long: 1) and the blank line
    digest = hashlib.sha256(data + json.dumps(labels).encode()).hexdigest()
    assert digest == "e5e7443c71360f3e79e50aaee97416da06e856eaee85400c5332a8ada59d3775"


def test_other_seed_differs(corpus: DemoCorpus, tmp_path: Path) -> None:
    other = build_demo_corpus(tmp_path, seed=1, scale=SCALE)
    assert (other.root / "web_crawl.jsonl").read_bytes() != (corpus.root / "web_crawl.jsonl").read_bytes()


def test_bad_scale_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_demo_corpus(tmp_path, scale=0)


# -- clean sources -----------------------------------------------------------------------------------


def test_clean_sources(corpus: DemoCorpus, clean: dict[str, list[dict]]) -> None:
    for source, recs in clean.items():
        assert recs, source
        assert len(recs) == corpus.counts[f"clean_{source}"]
        ids = [r["id"] for r in recs]
        assert len(ids) == len(set(ids)), f"duplicate ids in {source}"
        for r in recs:
            assert set(r) == {"id", "text"}
            assert isinstance(r["text"], str) and r["text"].strip(), r["id"]
            assert "\x00" not in r["text"]
    assert all(r["id"].startswith("stdlib:") for r in clean["stdlib_docs"])
    assert all(re.fullmatch(r"kjv:[a-z0-9-]+:\d+", r["id"]) for r in clean["kjv"])
    # Module docs are long enough to be worth training on; chapters open with their book and number.
    assert all(len(r["text"].split()) >= 50 for r in clean["stdlib_docs"])
    assert all(re.match(r"[1-3]? ?[A-Z][A-Za-z ]+ \d+\n\n\S", r["text"]) for r in clean["kjv"])


def test_scale_controls_size(corpus: DemoCorpus, tmp_path: Path) -> None:
    bigger = build_demo_corpus(tmp_path, scale=SCALE * 2)
    assert bigger.counts["exact_dup"] > corpus.counts["exact_dup"]
    assert bigger.counts["clean_kjv"] > corpus.counts["clean_kjv"]


# -- labels ------------------------------------------------------------------------------------------


def test_counts_match_labels(corpus: DemoCorpus, labels: list[dict]) -> None:
    got = collections.Counter(lab["defect"] for lab in labels)
    planted = {k: v for k, v in corpus.counts.items() if not k.startswith("clean_") and k != "evalset_docs"}
    assert dict(got) == planted
    assert corpus.heldout_files and {p.name for p in corpus.heldout_files} <= {"stdlib_docs.jsonl", "kjv.jsonl"}
    heldout = [json.loads(line) for p in corpus.heldout_files for line in p.read_text(encoding="utf-8").splitlines()]
    assert len(heldout) == corpus.counts["evalset_docs"] > 0
    input_ids = {r["id"] for path in corpus.inputs[:2] for r in _read_jsonl(path)}
    assert input_ids and not input_ids & {doc["id"] for doc in heldout}  # held out: in no input file
    assert set(DEFECT_COUNTS) | {"blank_line", "contaminated"} == set(got)
    assert all(v >= 1 for v in got.values())
    for lab in labels:
        assert set(lab) == {"id", "defect", "of", "file", "line"} and lab["file"] == "web_crawl.jsonl"


def test_every_label_points_at_its_line(corpus: DemoCorpus, web_lines: list[bytes], labels: list[dict]) -> None:
    lines_seen = [lab["line"] for lab in labels]
    assert len(lines_seen) == len(set(lines_seen))
    for lab in labels:
        raw = web_lines[lab["line"] - 1]
        if lab["id"] is None:
            assert lab["defect"] in UNPARSEABLE | {"nul_byte"}
            with pytest.raises(ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                json.loads(raw)
        else:
            assert json.loads(raw)["id"] == lab["id"]
    unlabelled = set(range(1, len(web_lines) + 1)) - set(lines_seen)
    assert len(unlabelled) == corpus.counts["clean_web_crawl"]
    for n in unlabelled:  # held-out human documents: clean, with an extra url column
        rec = json.loads(web_lines[n - 1])
        assert rec["id"].startswith("web:") and rec["url"].startswith("https://")
        assert isinstance(rec["text"], str) and rec["text"].strip()


def test_of_points_at_clean_documents(labels: list[dict], originals: dict[str, str]) -> None:
    for lab in labels:
        if lab["defect"] in ("exact_dup", "near_dup", "mojibake", "pii"):
            assert lab["of"] in originals, lab


# -- content defects ---------------------------------------------------------------------------------


def test_exact_dups(web_lines: list[bytes], labels: list[dict], originals: dict[str, str]) -> None:
    for lab in _of(labels, "exact_dup"):
        rec = _record(web_lines, lab)
        assert rec["text"] == originals[lab["of"]]
        assert rec["id"] != lab["of"]


def test_near_dups(web_lines: list[bytes], labels: list[dict], originals: dict[str, str]) -> None:
    for lab in _of(labels, "near_dup"):
        text, orig = _record(web_lines, lab)["text"], originals[lab["of"]]
        assert text != orig
        a, b = _shingles(orig), _shingles(text)
        shared = len(a & b) / max(len(a), len(b))
        assert shared >= 0.8, (lab, shared)
        assert shared < 1.0
        ratio = difflib.SequenceMatcher(None, orig.split(), text.split(), autojunk=False).ratio()
        assert 0.8 <= ratio < 0.99, (lab, ratio)


def _uncurl(text: str) -> str:
    for a, b in (("\u2014", "--"), ("\u2026", "..."), ("\u2019", "'"), ("\u201c", '"'), ("\u201d", '"')):
        text = text.replace(a, b)
    return text


def test_mojibake_is_repaired_by_ftfy(web_lines: list[bytes], labels: list[dict],
                                      originals: dict[str, str]) -> None:
    for lab in _of(labels, "mojibake"):
        text, orig = _record(web_lines, lab)["text"], originals[lab["of"]]
        assert text != orig
        assert re.search("[\u00c2\u00c3\u00e2][\u0080-\u00ff\u0152-\u2122]", text), "no mojibake pattern"
        fixed = ftfy.fix_text(text)
        assert fixed != text
        ratio = difflib.SequenceMatcher(None, _uncurl(fixed), _uncurl(orig), autojunk=False).ratio()
        assert ratio >= 0.97, (lab, ratio)


def test_typographic_mojibake_path() -> None:
    """ASCII-only originals get curly quotes/dashes/accents first; ftfy must still undo the damage."""
    rng = random.Random(0)
    for orig in ("He said \"stop\" -- and it's done...", "plain words only " * 20):
        typo = typographic(rng, orig)
        assert not typo.isascii()
        broken = mojibake(typo)
        assert broken != typo and ftfy.fix_text(broken) == ftfy.fix_text(typo)


def test_pii(web_lines: list[bytes], labels: list[dict], originals: dict[str, str]) -> None:
    email = re.compile(r"[\w.]+@example\.(com|org)")
    ip = re.compile(r"\b(192\.0\.2|198\.51\.100|203\.0\.113)\.\d{1,3}\b")
    phone = re.compile(r"555[- ]01\d\d")
    for lab in _of(labels, "pii"):
        text = _record(web_lines, lab)["text"]
        assert email.search(text) or ip.search(text) or phone.search(text)
        assert len(text) > len(originals[lab["of"]])


def test_generated_noise(web_lines: list[bytes], labels: list[dict]) -> None:
    def texts(defect: str) -> list[str]:
        return [_record(web_lines, lab)["text"] for lab in _of(labels, defect)]

    for t in texts("too_short"):
        assert 1 <= len(t.split()) <= 8
    for t in texts("too_long"):
        assert len(t.encode("utf-8")) >= 600_000
    for t in texts("keyword_spam"):
        words = re.findall(r"\w+", t.lower())
        top = collections.Counter(words).most_common(6)
        assert len(words) >= 200 and sum(c for _, c in top) / len(words) > 0.6
    for t in texts("lorem_ipsum"):
        assert sum(w in ("dolor", "sit", "amet", "ipsum", "lorem", "ut", "et") for w in t.lower().split()) >= 3
    markers = ("Privacy Policy", "Terms of", "rights reserved", "Rights Reserved", "JavaScript", "cookies",
               "Sign in", "Log in", "Subscribe", "{{", "Categories")
    for t in texts("boilerplate"):
        assert sum(m in t for m in markers) >= 2
    english = {"the", "and", "of", "to", "is", "that", "with", "you", "it"}
    romance_germanic = {"le", "la", "les", "une", "der", "die", "das", "und", "el", "los", "una", "il", "che",
                        "o", "um", "uma", "que", "de", "di", "et", "y", "e", "ein", "einen"}
    for t in texts("non_english"):
        words = re.findall(r"\w+", t.lower())
        assert len(words) >= 30
        assert sum(w in english for w in words) / len(words) < 0.02
        assert sum(w in romance_germanic for w in words) / len(words) > 0.1


def test_ingest_defects(web_lines: list[bytes], labels: list[dict]) -> None:
    for lab in _of(labels, "invalid_utf8"):
        raw = web_lines[lab["line"] - 1]
        assert b"\xff\xfe" in raw
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
    nul = _of(labels, "nul_byte")
    assert nul and all(lab["id"] is None and b"\x00" in web_lines[lab["line"] - 1] for lab in nul)
    for lab in _of(labels, "malformed_json"):
        raw = web_lines[lab["line"] - 1]
        raw.decode("utf-8")  # valid UTF-8, invalid JSON
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
    for lab in _of(labels, "missing_text"):
        assert "text" not in _record(web_lines, lab)
    for lab in _of(labels, "non_string_text"):
        assert not isinstance(_record(web_lines, lab)["text"], str)
    for lab in _of(labels, "empty_text"):
        text = _record(web_lines, lab)["text"]
        assert isinstance(text, str) and not text.strip()
    for lab in _of(labels, "blank_line"):
        assert web_lines[lab["line"] - 1] == b""
    for lab in _of(labels, "duplicate_id"):
        rec = _record(web_lines, lab)
        earlier = [_try_json(raw) for raw in web_lines[: lab["line"] - 1]]
        same = [r for r in earlier if isinstance(r, dict) and r.get("id") == rec["id"]]
        assert same and all(r.get("text") != rec["text"] for r in same)
