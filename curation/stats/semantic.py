"""The semantic model of a version's sample: hashed TF-IDF, truncated SVD, k-means clusters; coverage.

`fit_semantic` fits a `SemanticModel` on the sample; the model is saved next to the version
(`stats_model.npz`) so that a later version can measure which of its clusters it still covers
(`coverage`). docs/stats-schema.md says how each step is computed.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import scipy.sparse as sp
import xxhash
from scipy.linalg import eigh
from scipy.sparse.linalg import svds

from curation.stats.common import SAMPLE_CHARS, WORD, rounded

N_FEATURES = 2**18  # hashed feature space (our choice)
HASH_SEED = 0
TOP_TERMS = 10  # terms named per cluster
KMEANS_ITERS = 50  # Lloyd iterations at most
KMEANS_INITS = 4  # seeded k-means++ starts; the lowest inertia wins
COVERED_FRACTION = 0.2  # a reference cluster kept at a fifth of its expected documents is covered (our choice)

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are aren as at be because been before being below
between both but by can cannot could couldn did didn do does doesn doing don down during each either else
few for from further had hadn has hasn have haven having he her here hers herself him himself his how i if in
into is isn it its itself just let ll me might more most must my myself no nor not now of off on once only or
other ought our ours ourselves out over own re s same shall shan she should shouldn since so some such t than
that the their theirs them themselves then there these they this those though through thus to too under until
up upon us ve very was wasn we were weren what when where which while who whom whose why will with won would
wouldn yet you your yours yourself yourselves
""".split())


def _terms(text: str) -> list[str]:
    return [w for w in WORD.findall(text[:SAMPLE_CHARS].lower())
            if len(w) > 1 and w not in STOP_WORDS and not w.isdigit()]


def _feature(word: str) -> int:
    return xxhash.xxh3_64_intdigest(word.encode("utf-8"), seed=HASH_SEED) & (N_FEATURES - 1)


def _hashed_counts(texts: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray], Counter[str]]:
    """Per text: its distinct hashed features and their counts; and the word counts of all texts."""
    cache: dict[str, int] = {}
    words_seen: Counter[str] = Counter()
    feats, tfs = [], []
    for text in texts:
        terms = _terms(text)
        words_seen.update(terms)
        hashed = np.fromiter((cache[w] if w in cache else cache.setdefault(w, _feature(w)) for w in terms),
                             dtype=np.int64, count=len(terms))
        f, c = np.unique(hashed, return_counts=True)
        feats.append(f)
        tfs.append(c)
    return feats, tfs, words_seen


def _normalize_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)


@dataclass
class SemanticModel:
    """Hashed TF-IDF -> truncated SVD -> k-means centroids, fitted on a version's sample.

    `features` are the hashed feature ids seen in the sample (sorted), with their `idf`, their
    name (`words`: the sample's most frequent word hashing there) and their column in `components`
    (dims x features). `centroids` (k x dims) and `shares` (k) describe the clusters."""

    features: np.ndarray
    idf: np.ndarray
    words: np.ndarray
    components: np.ndarray
    centroids: np.ndarray
    shares: np.ndarray
    top_terms: list[list[str]]
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @staticmethod
    def default_spec(seed: int = 0) -> dict[str, Any]:
        return {"method": "tfidf-svd", "hash": "xxh3_64", "hash_seed": HASH_SEED, "n_features": N_FEATURES,
                "token": r"\w+ lowercase, 2+ chars, not all digits, stop words dropped", "max_chars": SAMPLE_CHARS,
                "stop_words": sorted(STOP_WORDS), "tf": "1+ln(tf)", "idf": "ln((1+n)/(1+df))+1", "seed": seed}

    def _check_spec(self) -> None:
        if self.spec.get("n_features", N_FEATURES) != N_FEATURES or self.spec.get("hash", "xxh3_64") != "xxh3_64":
            raise ValueError(f"semantic model spec {self.spec} differs from this code's hashing "
                             f"(xxh3_64, {N_FEATURES} features)")

    def _tfidf(self, feats: list[np.ndarray], tfs: list[np.ndarray]) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        for r, (f, c) in enumerate(zip(feats, tfs)):
            pos = np.searchsorted(self.features, f)
            pos = np.minimum(pos, max(len(self.features) - 1, 0))
            known = (self.features[pos] == f) if len(self.features) else np.zeros(len(f), bool)
            rows.append(np.full(int(known.sum()), r, dtype=np.int64))
            cols.append(pos[known])
            vals.append((1.0 + np.log(c[known])) * self.idf[pos[known]])
        n = len(feats)
        if not n:
            return sp.csr_matrix((0, len(self.features)))
        matrix = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(n, len(self.features)), dtype=np.float64)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        return sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ matrix

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings (texts x dims); a text with no known term embeds to zeros."""
        self._check_spec()
        feats, tfs, _ = _hashed_counts(texts)
        if not len(self.features) or not self.dims:
            return np.zeros((len(texts), self.dims), dtype=np.float64)
        return _normalize_rows(np.asarray(self._tfidf(feats, tfs) @ self.components.T.astype(np.float64)))

    def assign(self, texts: Sequence[str]) -> np.ndarray:
        """The nearest centroid of each text (-1 for a text with a zero embedding, or no clusters)."""
        return self.assign_embeddings(self.embed(texts))

    def assign_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        labels = np.full(len(embeddings), -1, dtype=np.int64)
        if not self.k or not len(embeddings):
            return labels
        nonzero = np.linalg.norm(embeddings, axis=1) > 0
        centroids = self.centroids.astype(np.float64)
        labels[nonzero] = _nearest(embeddings[nonzero], centroids)[0]
        return labels

    # ---- persistence --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, features=self.features.astype(np.int64), idf=self.idf.astype(np.float32),
            words=np.asarray(self.words, dtype=str), components=self.components.astype(np.float32),
            centroids=self.centroids.astype(np.float32), shares=self.shares.astype(np.float64),
            top_terms=np.array(json.dumps(self.top_terms)), spec=np.array(json.dumps(self.spec)))
        return buffer.getvalue()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model as `.npz`: atomically (temporary file + rename) on a local path; through
        fsspec in one write for a URL."""
        data = self.to_bytes()
        path = str(path)
        if "://" in path:
            with fsspec.open(path, "wb") as handle:
                handle.write(data)
            return
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".stats_model.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SemanticModel:
        path = str(path)
        if "://" in path:
            with fsspec.open(path, "rb") as handle:
                data = handle.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(features=z["features"], idf=z["idf"], words=z["words"], components=z["components"],
                       centroids=z["centroids"], shares=z["shares"], top_terms=json.loads(str(z["top_terms"])),
                       spec=json.loads(str(z["spec"])))


def _nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid (squared Euclidean) and the squared distance, per row."""
    d = (x * x).sum(axis=1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(axis=1)[None, :]
    labels = d.argmin(axis=1)
    return labels, np.maximum(d[np.arange(len(x)), labels], 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with greedy trials (2 + ln k candidates per centre, as scikit-learn)."""
    n = len(x)
    trials = 2 + int(math.log(k))
    centres = [x[rng.integers(n)]]
    closest = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            candidates = rng.integers(n, size=trials)
        else:
            candidates = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
            candidates = np.minimum(candidates, n - 1)
        best, best_pot, best_dist = None, math.inf, None
        for c in candidates:
            dist = np.minimum(closest, ((x - x[c]) ** 2).sum(axis=1))
            if dist.sum() < best_pot:
                best, best_pot, best_dist = c, dist.sum(), dist
        centres.append(x[best])
        closest = best_dist
    return np.array(centres)


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = KMEANS_ITERS,
           n_init: int = KMEANS_INITS) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, labels) of the best of `n_init` seeded k-means++ / Lloyd runs (lowest inertia)."""
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centroids = _kmeans_pp(x, k, rng)
        labels = None
        for _ in range(iters):
            new_labels, dist = _nearest(x, centroids)
            if labels is not None and np.array_equal(new_labels, labels):
                break
            labels = new_labels
            sums = np.zeros_like(centroids)
            np.add.at(sums, labels, x)
            sizes = np.bincount(labels, minlength=k)
            for empty in np.flatnonzero(sizes == 0):  # an empty cluster takes the worst-fitting point
                far = int(dist.argmax())
                sums[empty], sizes[empty], dist[far] = x[far], 1, 0.0
            centroids = sums / sizes[:, None]
        labels, dist = _nearest(x, centroids)
        inertia = float(dist.sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, centroids, labels)
    assert best is not None
    return best[1], best[2]


def _truncated_svd(matrix: sp.csr_matrix, dims: int, seed: int, method: str = "auto") -> np.ndarray:
    """The top right singular vectors (dims' x features) of a sparse matrix, signs fixed (largest entry positive).

    "arpack": scipy's `svds` with a seeded start vector (sparse products, no large dense algebra, so it stays
    fast when BLAS threads compete for cores); "gram": exact, from the eigendecomposition of the Gram matrix of
    the smaller side. "auto" takes ARPACK unless dims >= min(n, features) - 1, which it cannot do."""
    n, m = matrix.shape
    if n == 0 or m == 0 or matrix.nnz == 0:
        return np.zeros((0, m))
    if method == "gram" or (method == "auto" and dims >= min(n, m) - 1):
        small = min(n, m)
        gram = (matrix @ matrix.T if n <= m else matrix.T @ matrix).toarray()
        values, vectors = eigh(gram, subset_by_index=[max(small - dims, 0), small - 1])
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
        d = min(dims, int((values > max(values[0], 0) * 1e-10).sum()))
        if n <= m:
            components = np.asarray(matrix.T @ vectors[:, :d]).T / np.sqrt(values[:d])[:, None]
        else:
            components = vectors[:, :d].T.copy()
    else:
        d = min(dims, min(n, m) - 1)
        v0 = np.random.default_rng(seed).standard_normal(min(n, m))
        _, s, vt = svds(matrix, k=d, v0=v0, solver="arpack")
        order = np.argsort(s)[::-1]
        s, components = s[order], vt[order]
        components = components[s > s[0] * 1e-10]
    flip = components[np.arange(len(components)), np.abs(components).argmax(axis=1)] < 0
    components[flip] *= -1
    return components


def fit_semantic(texts: Sequence[str], *, k: int, dims: int, seed: int) -> tuple[SemanticModel, np.ndarray, np.ndarray]:
    """Fit the model on sample texts; returns it, the embeddings (texts x dims) and labels (-1: no terms)."""
    feats, tfs, words_seen = _hashed_counts(texts)
    n = len(texts)
    nonempty = [i for i in range(n) if len(feats[i])]
    active = np.unique(np.concatenate(feats)) if nonempty else np.empty(0, np.int64)
    df = np.zeros(len(active), dtype=np.int64)
    for f in feats:
        df[np.searchsorted(active, f)] += 1
    idf = np.log((1.0 + len(nonempty)) / (1.0 + df)) + 1.0
    # Name each feature by the sample's most frequent word hashing there (ties: alphabetical).
    names: dict[int, tuple[int, str]] = {}
    for word, count in words_seen.items():
        f = _feature(word)
        best = names.get(f)
        if best is None or (-count, word) < (-best[0], best[1]):
            names[f] = (count, word)
    words = np.array([names[int(f)][1] for f in active], dtype=str) if len(active) else np.empty(0, dtype="<U1")
    model = SemanticModel(features=active, idf=idf, words=words, components=np.zeros((0, len(active))),
                          centroids=np.zeros((0, 0)), shares=np.zeros(0), top_terms=[],
                          spec=SemanticModel.default_spec(seed))
    matrix = model._tfidf(feats, tfs)
    model.components = _truncated_svd(matrix, dims, seed)
    embeddings = _normalize_rows(np.asarray(matrix @ model.components.T)) if model.dims else np.zeros((n, 0))
    labels = np.full(n, -1, dtype=np.int64)
    embedded = np.flatnonzero(np.linalg.norm(embeddings, axis=1) > 0)
    k_eff = min(k, len(embedded))
    if k_eff == 0:
        model.centroids = np.zeros((0, model.dims))
        return model, embeddings, labels
    centroids, raw = kmeans(embeddings[embedded], k_eff, seed)
    sizes = np.bincount(raw, minlength=k_eff)
    order = np.lexsort((np.arange(k_eff), -sizes))  # clusters numbered by size, largest first
    relabel = np.empty(k_eff, dtype=np.int64)
    relabel[order] = np.arange(k_eff)
    labels[embedded] = relabel[raw]
    model.centroids = centroids[order]
    model.shares = sizes[order] / len(embedded)
    model.top_terms = _top_terms(model)
    return model, embeddings, labels


def _top_terms(model: SemanticModel, n: int = TOP_TERMS) -> list[list[str]]:
    weights = model.centroids @ model.components  # k x features: centroids back in the hashed space
    out = []
    for row in weights:
        best = np.argsort(-row, kind="stable")[:n]
        out.append([str(model.words[i]) for i in best if row[i] > 0])
    return out


def vendi_score(embeddings: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/n), K = X X^T for unit-length rows (cosine similarity). The non-zero
    eigenvalues of X X^T / n are those of X^T X / n (dims x dims), which is what is decomposed."""
    n = len(embeddings)
    if n == 0:
        return 0.0
    eig = np.linalg.eigvalsh(embeddings.T @ embeddings / n)
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def entropy_bits(shares: np.ndarray) -> float:
    p = shares[shares > 0]
    return float(-(p * np.log2(p)).sum()) if len(p) else 0.0


def coverage(reference: SemanticModel, texts: Sequence[str], name: str) -> dict[str, Any]:
    """Which clusters of a reference model this sample covers (docs/stats-schema.md)."""
    labels = reference.assign(texts)
    labels = labels[labels >= 0]
    counts = np.bincount(labels, minlength=reference.k) if reference.k else np.zeros(0, np.int64)
    covered, lost = [], []
    for cluster in range(reference.k):
        share = float(reference.shares[cluster])
        need = max(1, math.ceil(COVERED_FRACTION * share * len(labels)))
        if counts[cluster] >= need:
            covered.append(cluster)
        else:
            lost.append({"id": cluster, "share_in_reference": rounded(share),
                         "top_terms": list(reference.top_terms[cluster])})
    return {"reference": name, "covered_share": rounded(len(covered) / reference.k if reference.k else 0.0),
            "covered": covered, "lost": lost}
