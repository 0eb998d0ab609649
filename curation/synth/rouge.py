"""ROUGE-L novelty: is a new task too close to one already in the pool?

Self-Instruct (Wang et al. 2023, §2.2) adds a generated instruction to the pool only when its ROUGE-L
F-measure against every instruction already there is below 0.7. ROUGE-L F between token sequences
a and b is 2·LCS(a, b) / (|a| + |b|) (β = 1; Lin 2004). Tokens are lower-cased alphanumeric runs, as
in the reference `rouge_score` tokenizer without stemming, which Self-Instruct used.

The LCS of every (new, pool) pair comes from rapidfuzz's C++ `LCSseq` over all cores: each distinct
token is mapped to one Unicode character, so token sequences become short strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

# Self-Instruct's rule: reject a task whose ROUGE-L against the pool exceeds 0.7.
NOVELTY_THRESHOLD = 0.7
_TOKEN = re.compile(r"[a-z0-9]+")
_BLOCK = 512


def rouge_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class TokenCodec:
    """Maps each distinct token to one code point (skipping the surrogates), so LCS runs on strings."""

    def __init__(self) -> None:
        self.codes: dict[str, str] = {}

    def encode(self, text: str) -> str:
        out = []
        for token in rouge_tokens(text):
            code = self.codes.get(token)
            if code is None:
                n = 0x100 + len(self.codes)
                code = self.codes[token] = chr(n if n < 0xD800 else n + 0x800)
            out.append(code)
        return "".join(out)


def rouge_l_matrix(a: list[str], b: list[str]) -> np.ndarray:
    """ROUGE-L F of every encoded sequence in `a` against every one in `b` (|a| x |b|)."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    lcs = process.cdist(a, b, scorer=LCSseq.similarity, dtype=np.int32, workers=-1).astype(np.float64)
    la = np.fromiter((len(s) for s in a), np.float64, len(a))[:, None]
    lb = np.fromiter((len(s) for s in b), np.float64, len(b))[None, :]
    total = la + lb
    return np.divide(2.0 * lcs, total, out=np.zeros_like(lcs), where=total > 0)


class NoveltyPool:
    """Tasks accepted so far; `admit` keeps, in order, the candidates whose ROUGE-L against the pool and
    against the candidates admitted before them is at most the threshold."""

    def __init__(self, tasks: Iterable[str] = (), ids: Iterable[str] = (), threshold: float = NOVELTY_THRESHOLD):
        self.codec = TokenCodec()
        self.threshold = threshold
        self.encoded: list[str] = []
        self.ids: list[str] = []
        for task, rid in zip(tasks, ids):
            self.encoded.append(self.codec.encode(task))
            self.ids.append(rid)

    def __len__(self) -> int:
        return len(self.encoded)

    def admit(self, tasks: list[str], ids: list[str]) -> list[tuple[float, str | None]]:
        """Per candidate: (highest ROUGE-L met, id of that closest task); admitted candidates join the pool."""
        out: list[tuple[float, str | None]] = []
        for start in range(0, len(tasks), _BLOCK):
            block = [self.codec.encode(t) for t in tasks[start:start + _BLOCK]]
            block_ids = ids[start:start + _BLOCK]
            against_pool = rouge_l_matrix(block, self.encoded)
            within = rouge_l_matrix(block, block)
            admitted: list[int] = []
            for i, seq in enumerate(block):
                best, best_id = 0.0, None
                if against_pool.shape[1]:
                    j = int(against_pool[i].argmax())
                    best, best_id = float(against_pool[i, j]), self.ids[j]
                for k in admitted:
                    if within[i, k] > best:
                        best, best_id = float(within[i, k]), block_ids[k]
                out.append((best, best_id))
                if best <= self.threshold and seq:
                    admitted.append(i)
            for k in admitted:
                self.encoded.append(block[k])
                self.ids.append(block_ids[k])
        return out
