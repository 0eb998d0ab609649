"""Small helpers every part of the demo shares: seeded RNGs, safe text, JSON lines, atomic writes, phrase tables."""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


def rng_for(seed: int, part: str) -> random.Random:
    """An independent RNG per component, so changing one generator does not reshuffle the others."""
    return random.Random(f"demo:{seed}:{part}")


def clean_text(text: str) -> str:
    """Make human text safe to ship as a *clean* document: no control characters, no lone surrogates."""
    text = _SURROGATE_RE.sub("\ufffd", text)
    text = _CONTROL_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.strip()


def json_line(obj: Any) -> str:
    """One JSON line. Unicode line separators are escaped so that no line-splitting reader breaks a record."""
    s = json.dumps(obj, ensure_ascii=False)
    return s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to ``<name>.tmp`` then rename, so readers never see a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def scaled(n: int, scale: float) -> int:
    """`n` at `scale`, never below one."""
    return max(1, math.ceil(n * scale))


def capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


@functools.cache
def phrases(name: str) -> dict[str, Any]:
    """The phrase table ``data/<name>.json`` (package data; read once per process)."""
    return json.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))


def fill(template: str, **values: Any) -> str:
    """`template` with each ``{key}`` replaced by its value. Other braces stay as they are: phrase tables
    hold leaked template code (``{{ user.name }}``, ``${title}``) that `str.format` would choke on."""
    for key, value in values.items():
        template = template.replace(f"{{{key}}}", str(value))
    return template
