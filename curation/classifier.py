"""A DCLM-style fastText quality classifier: train on "high quality" vs "low quality" text, score documents.

DCLM (Li et al., 2024) keeps the documents a bigram fastText classifier scores as most like curated
reference text (OpenHermes + ELI5 vs RefinedWeb). This module trains such a classifier from our own
sources and stores it next to the versions it was trained from:

    <store root>/models/quality/<name>/model.ftz        quantized fastText model (`model.bin` unquantized)
                                      /classifier.json   sources with hashes, counts, hyper-parameters,
                                                         held-out metrics, model sha256

Training text comes from `TextSource`s: a store version (`version:NAME` on the command line) or
files/folders/globs read with the project's own ingestion (lines that are not records are skipped).

Text is preprocessed the fastText way, identically for training and scoring: lowercased, every
run of whitespace (newlines included) collapsed to one space, truncated to the first 5,000 words
(our choice: enough to judge a document, bounds the cost of very long ones), and the fastText
label prefix `__label__` neutralised inside the text so a document cannot inject a label.

Labels are `__label__hq` (positive) and `__label__lq` (negative); a score is P(`__label__hq`).
Nothing here imports Prefect.

Backends. `classifier.json`'s `backend` says what kind of model a folder holds: "fasttext" (this module's,
also when the key is absent, as in every folder written before backends existed) or "gpt" (a classification
head on the project's GPT, `training/classify.py`). `load_classifier`/`cached_model` look the backend up in a
registry of loaders (name -> callable(folder) -> object with `.score(texts)`); fastText is registered here,
"gpt" by `training.classify` when imported (and lazily by `flows/gpt.py`, which the curation flow's worker
processes import), since `curation/` never imports `training/`. The held-out split (`labelled_data`), the
metrics and the folder's writing are shared by both.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

import fasttext
import numpy as np

from curation.glibc import M_PERTURB, mallopt
from curation.ingest import IngestError, InputSpec, preflight, read_input, resolve_files
from curation.store import StoreError, VersionStore, check_name, file_sha256

HQ_LABEL = "__label__hq"
LQ_LABEL = "__label__lq"
METADATA_FILE = "classifier.json"
FORMAT_VERSION = 1
VERSION_PREFIX = "version:"
# The backend of a classifier.json without a `backend` key: every folder written before backends existed, and
# every fastText one (its classifier.json is unchanged).
DEFAULT_BACKEND = "fasttext"

# Preprocessing. Our choice: the first 5,000 words are plenty to judge a document and bound the cost
# of very long ones. Text is also cut at 100 characters per allowed word *before* splitting, so a
# multi-megabyte document costs no more to score than a long one (real words are far shorter).
MAX_WORDS = 5_000
CHARS_PER_WORD_CAP = 100

# Defaults: small, fast models (our choice; DCLM's released classifier also uses bigrams, wordNgrams 2).
# Measured on this repo's demo corpus (stdlib docstrings + KJV chapters vs the simulated web crawl: 900
# training docs per class of ~1,250 words; shared 2-core machine; thread=1), dim 64, 200k buckets, 5 epochs:
#   model: 2.4 MB .ftz quantized (cutoff 50k); the unquantized .bin is 64 MB.
#   training: 15 s wall, of which ~1 s is fastText training and ~13 s quantization (k-means, a fixed cost);
#             1.5 s unquantized.
#   scoring (`QualityModel.score`, preprocessing included, one core): ~6,800 docs/s for ~1,200-word
#             documents (~8 M words/s), ~33,000 docs/s for 100-word documents.
# lr 0.5 (the top of the fastText paper's grid, 0.05-0.5): with a few thousand documents fastText's default
# lr 0.1 ranks junk below clean text just as well but leaves every score within 0.01 of 0.5, useless for a
# threshold; lr 0.5 puts held-out junk at ~0.2 and clean text at ~0.57.
DEFAULT_DIM = 64
DEFAULT_WORD_NGRAMS = 2
DEFAULT_BUCKET = 200_000
DEFAULT_EPOCH = 5
DEFAULT_LR = 0.5
DEFAULT_MIN_COUNT = 1  # fastText's supervised default
# Quantization (product quantization, 2 dims per byte, norms quantized) keeps the `cutoff` embeddings
# (words + n-gram buckets) with the largest norm. Its k-means costs up to ~20 s once, whatever the data size.
DEFAULT_QUANTIZE_CUTOFF = 50_000


class ClassifierError(Exception):
    """A classifier that cannot be trained or loaded; the message names the file or source and why."""


# ---------------------------------------------------------------------------------------------
# Preprocessing


def preprocess(text: str, max_words: int = MAX_WORDS) -> str:
    """Lowercase, collapse whitespace/newlines to single spaces, keep the first `max_words` words."""
    words = text[: max_words * CHARS_PER_WORD_CAP].lower().split()
    if len(words) > max_words:
        words = words[:max_words]
    return " ".join(words).replace("__label__", "_label_")


# ---------------------------------------------------------------------------------------------
# Where training text comes from


@dataclass(frozen=True)
class TextSource:
    """Training text: a version in a store (`kind="version"`) or files, a folder or a glob (`kind="path"`).

    Path sources are read with `curation.ingest` (JSONL, Parquet, CSV, text; format from the file name
    unless `format` is given); lines that do not parse into a record are skipped (they are not text).
    """

    kind: Literal["version", "path"]
    value: str
    text_field: str = "text"
    format: Literal["auto", "jsonl", "parquet", "csv", "text"] = "auto"

    @classmethod
    def parse(cls, spec: str) -> TextSource:
        """`version:NAME` is a store version; anything else is a path (file, folder or glob).
        (A file literally called `version:x` can be written `./version:x`.)"""
        if spec.startswith(VERSION_PREFIX):
            name = spec[len(VERSION_PREFIX):]
            if not name:
                raise ClassifierError(f"{spec!r}: `version:` needs a version name, e.g. version:demo")
            return cls("version", name)
        if not spec:
            raise ClassifierError("empty source: give a path, folder, glob or version:NAME")
        return cls("path", spec)

    def __str__(self) -> str:
        return f"{VERSION_PREFIX}{self.value}" if self.kind == "version" else self.value

    def _spec(self) -> InputSpec:
        return InputSpec(path=self.value, format=self.format, text_field=self.text_field)

    def files(self) -> list[str]:
        """The files a path source names (checked to be readable), sorted."""
        try:
            spec = self._spec()
            files = resolve_files(spec)
            for file in files:
                preflight(spec, file)
        except IngestError as exc:
            raise ClassifierError(f"source {self}: {exc}") from exc
        return files

    def texts(self, store: VersionStore | None = None) -> Iterator[str]:
        """Raw document texts, in source order."""
        if self.kind == "version":
            table = _need_store(store, self).read_table(self.value, columns=["text"])
            for chunk in table.column("text").chunks:
                yield from (t for t in chunk.to_pylist() if t)
            return
        spec = self._spec()
        for file in self.files():
            for chunk in read_input(spec, file):
                if chunk.records is not None:
                    yield from chunk.records.column("text").to_pylist()

    def provenance(self, store: VersionStore | None = None) -> dict[str, Any]:
        """What this source is, precisely enough to tell whether the same data would be read again."""
        if self.kind == "version":
            target = _need_store(store, self)
            manifest = target.manifest(self.value)
            return {"kind": "version", "name": self.value, "store": target.url,
                    "fingerprint": manifest.get("fingerprint"), "rows": manifest.get("rows")}
        return {"kind": "path", "path": self.value, "text_field": self.text_field, "format": self.format,
                "files": [{"path": f, "bytes": os.path.getsize(f), "sha256": file_sha256(f)} for f in self.files()]}


def _need_store(store: VersionStore | None, source: TextSource) -> VersionStore:
    if store is None:
        raise ClassifierError(f"source {source} is a store version but no store was given")
    return store


def parse_sources(specs: Sequence[str | TextSource]) -> list[TextSource]:
    return [s if isinstance(s, TextSource) else TextSource.parse(s) for s in specs]


# ---------------------------------------------------------------------------------------------
# Where models live


def model_dir(store: VersionStore | str | os.PathLike[str], name: str) -> Path:
    """`<store root>/models/quality/<name>/`. fastText reads local files only, so the store must be local."""
    target = store if isinstance(store, VersionStore) else VersionStore(store)
    if not target.local:
        raise ClassifierError(f"store {target.url}: classifier models need a local store (fastText reads "
                              "local files); train into a folder and copy it")
    try:
        check_name(name, "classifier")
    except StoreError as exc:
        raise ClassifierError(str(exc)) from None
    return Path(target.root) / "models" / "quality" / name


# ---------------------------------------------------------------------------------------------
# Metrics (numpy only)


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney U statistic: P(score of a random positive > a random negative), ties
    counting one half (average ranks). None when one class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(len(s))
    ranks[order] = average_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Precision/recall/F1 of `hq` at `threshold` (score >= threshold predicts hq), ROC AUC, confusion counts."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": threshold, "precision": precision, "recall": recall, "f1": f1,
            "accuracy": (tp + tn) / len(y) if len(y) else 0.0, "roc_auc": roc_auc(s, y),
            "n": int(len(y)), "n_hq": int(y.sum()), "n_lq": int((~y).sum()),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "mean_score_hq": float(s[y].mean()) if y.any() else None,
            "mean_score_lq": float(s[~y].mean()) if (~y).any() else None}


# ---------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class ClassifierInfo:
    """What `classifier.json` says about a trained classifier (`directory` is where it lies)."""

    directory: Path
    model_file: str
    sha256: str
    size_bytes: int
    counts: dict[str, dict[str, int]]
    metrics: dict[str, Any]
    params: dict[str, Any]
    seed: int
    sources: dict[str, list[dict[str, Any]]]
    created_at: str
    fasttext_version: str | None  # None for a backend that is not fastText
    train_seconds: float  # wall time of the whole call: reading, hashing, training, quantizing, evaluating
    preprocessing: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.directory / self.model_file

    @property
    def backend(self) -> str:
        return str(self.extra.get("backend", DEFAULT_BACKEND))

    @property
    def metadata_path(self) -> Path:
        return self.directory / METADATA_FILE

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("directory")
        extra = body.pop("extra")
        return {"format_version": FORMAT_VERSION, "kind": "quality_classifier",
                "labels": {"positive": HQ_LABEL, "negative": LQ_LABEL}, **body, **extra}

    @classmethod
    def from_json(cls, directory: Path, data: dict[str, Any]) -> ClassifierInfo:
        known = {f for f in cls.__dataclass_fields__ if f not in ("directory", "extra")}
        missing = [k for k in ("model_file", "sha256") if k not in data]
        if missing:
            raise ClassifierError(f"{directory / METADATA_FILE}: missing key(s) {', '.join(missing)}")
        values = {k: data.get(k) for k in known}
        values = {k: ({} if v is None and k in ("counts", "metrics", "params", "sources", "preprocessing") else v)
                  for k, v in values.items()}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(directory=directory, extra=extra, **values)  # type: ignore[arg-type]


def _read_class(sources: list[TextSource], store: VersionStore | None, cap: int | None,
                rng: random.Random, prepare: Callable[[str], str]) -> tuple[list[tuple[int, str]], list[int]]:
    """(source index, `prepare`d text) pairs of one class (texts `prepare` empties are skipped); at most `cap`
    kept by seeded reservoir sampling so memory stays bounded however large the sources are. Also returns the
    documents read per source."""
    kept: list[tuple[int, str]] = []
    read = [0] * len(sources)
    seen = 0
    for i, source in enumerate(sources):
        for raw in source.texts(store):
            text = prepare(raw)
            if not text:
                continue
            read[i] += 1
            seen += 1
            if cap is None or len(kept) < cap:
                kept.append((i, text))
            else:
                j = rng.randrange(seen)
                if j < cap:
                    kept[j] = (i, text)
    return kept, read


def _split(docs: list[tuple[int, str]], holdout: float, rng: random.Random, what: str
           ) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    docs = list(docs)
    rng.shuffle(docs)
    n_test = int(round(holdout * len(docs))) if holdout > 0 else 0
    if holdout > 0:
        n_test = max(1, n_test)
    if len(docs) - n_test < 1:
        raise ClassifierError(f"{what}: {len(docs)} document(s) are too few to hold out {holdout:.0%} and train")
    return docs[n_test:], docs[:n_test]


def train_quality_classifier(
    positive: Sequence[TextSource | str],
    negative: Sequence[TextSource | str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    max_docs_per_class: int | None = None,
    balance: bool = True,
    holdout: float = 0.1,
    dim: int = DEFAULT_DIM,
    word_ngrams: int = DEFAULT_WORD_NGRAMS,
    bucket: int = DEFAULT_BUCKET,
    epoch: int = DEFAULT_EPOCH,
    lr: float = DEFAULT_LR,
    min_count: int = DEFAULT_MIN_COUNT,
    loss: str = "softmax",
    quantize: bool = True,
    quantize_cutoff: int = DEFAULT_QUANTIZE_CUTOFF,
    threads: int = 1,
    max_words: int = MAX_WORDS,
    store: VersionStore | str | None = None,
    overwrite: bool = False,
) -> ClassifierInfo:
    """Train a fastText hq/lq classifier and write it, with `classifier.json`, atomically into `out_dir`.

    `positive`/`negative`: sources of high-/low-quality text (`TextSource` or CLI strings, `version:NAME`
    or a path). `max_docs_per_class` caps each class (seeded reservoir sample). With `balance` the larger
    class is down-sampled (seeded) to the size of the smaller. `holdout` of each class is kept out of
    training and scored to give the metrics. `threads=1` makes training reproducible: the same inputs
    and seed give the same model file. `out_dir` must not hold a classifier unless `overwrite`.
    """
    _check_options(positive, negative, holdout, max_docs_per_class, quantize, dim)
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    started = time.perf_counter()
    data = labelled_data(positive, negative, functools.partial(preprocess, max_words=max_words), seed=seed,
                         max_docs_per_class=max_docs_per_class, balance=balance, holdout=holdout, store=store)
    params = {"dim": dim, "word_ngrams": word_ngrams, "bucket": bucket, "epoch": epoch, "lr": lr,
              "min_count": min_count, "loss": loss, "threads": threads, "quantize": quantize,
              "quantize_cutoff": quantize_cutoff if quantize else None, "qnorm": quantize if quantize else None,
              "holdout": holdout, "max_docs_per_class": max_docs_per_class, "balance": balance}
    with staged_folder(out) as staging:
        model, extra = _fit(data, params, seed)
        model_file = "model.ftz" if quantize else "model.bin"
        model.save_model(str(staging / model_file))
        metrics = binary_metrics(_predict_hq(model, data.test_texts), data.test_labels) if data.test_texts else {}
        info = ClassifierInfo(
            directory=out, model_file=model_file, sha256=file_sha256(staging / model_file),
            size_bytes=(staging / model_file).stat().st_size, counts=data.counts, metrics=metrics, params=params,
            seed=seed, sources=data.sources, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            fasttext_version=_fasttext_version(), train_seconds=round(time.perf_counter() - started, 3),
            preprocessing={"lowercase": True, "collapse_whitespace": True, "max_words": max_words,
                           "label_prefix_in_text": "__label__ -> _label_"},
            extra=extra,
        )
        write_info(staging, info)
    return info


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to train into a folder that already holds something, unless `overwrite`."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ClassifierError(f"{out}: already holds a classifier; pick another name or overwrite")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out` to write a classifier into; when the block succeeds it becomes `out` in one
    rename (so a reader never sees half a classifier), otherwise it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        _move_into_place(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_info(folder: Path, info: ClassifierInfo) -> None:
    """`classifier.json` of `info`, written into `folder` (the staged one) atomically."""
    _write_json(folder / METADATA_FILE, info.to_json())


def _check_options(positive: Sequence[Any], negative: Sequence[Any], holdout: float, max_docs_per_class: int | None,
                   quantize: bool, dim: int) -> None:
    _check_split_options(positive, negative, holdout, max_docs_per_class)
    if quantize and dim % 2:
        raise ClassifierError(f"dim must be even to quantize (product quantization, dsub 2), got {dim}")


def _check_split_options(positive: Sequence[Any], negative: Sequence[Any], holdout: float,
                         max_docs_per_class: int | None) -> None:
    if not positive or not negative:
        raise ClassifierError("need at least one positive and one negative source")
    if not 0 <= holdout < 1:
        raise ClassifierError(f"holdout must be in [0, 1), got {holdout}")
    if max_docs_per_class is not None and max_docs_per_class < 2:
        raise ClassifierError(f"max_docs_per_class must be at least 2, got {max_docs_per_class}")


@dataclass
class LabelledData:
    """The shuffled training rows (label, text), the held-out texts with their labels (True: hq), and what the
    metadata records (`counts`, `sources`)."""

    rows: list[tuple[str, str]]
    test_texts: list[str]
    test_labels: np.ndarray
    counts: dict[str, dict[str, int]]
    sources: dict[str, list[dict[str, Any]]]


def labelled_data(
    positive: Sequence[TextSource | str],
    negative: Sequence[TextSource | str],
    prepare: Callable[[str], str],
    *,
    seed: int = 0,
    max_docs_per_class: int | None = None,
    balance: bool = True,
    holdout: float = 0.1,
    store: VersionStore | str | None = None,
) -> LabelledData:
    """Both classes read, each text `prepare`d, balanced and split as `train_quality_classifier` does (same
    options, same seeded draws): the split another backend trains and is evaluated on."""
    _check_split_options(positive, negative, holdout, max_docs_per_class)
    target = VersionStore(store) if isinstance(store, (str, os.PathLike)) else store
    return _training_data(parse_sources(positive), parse_sources(negative), target, random.Random(seed),
                          max_docs_per_class, balance, holdout, prepare)


def _training_data(pos_sources: list[TextSource], neg_sources: list[TextSource], target: VersionStore | None,
                   rng: random.Random, max_docs_per_class: int | None, balance: bool, holdout: float,
                   prepare: Callable[[str], str]) -> LabelledData:
    """Read, balance and split both classes; every draw comes from `rng` in a fixed order (reproducible)."""
    # Provenance first: it hashes the files and fails early on unreadable sources or missing versions.
    sources: dict[str, list[dict[str, Any]]] = {
        "positive": [s.provenance(target) for s in pos_sources],
        "negative": [s.provenance(target) for s in neg_sources],
    }
    pos, pos_read = _read_class(pos_sources, target, max_docs_per_class, rng, prepare)
    neg, neg_read = _read_class(neg_sources, target, max_docs_per_class, rng, prepare)
    for what, docs in (("positive", pos), ("negative", neg)):
        if len(docs) < 2:
            raise ClassifierError(f"{what} sources hold {len(docs)} usable document(s); need at least 2")
    available = {"hq": len(pos), "lq": len(neg)}
    if balance and len(pos) != len(neg):
        n = min(len(pos), len(neg))
        pos = rng.sample(pos, n) if len(pos) > n else pos
        neg = rng.sample(neg, n) if len(neg) > n else neg
    pos_train, pos_test = _split(pos, holdout, rng, "positive")
    neg_train, neg_test = _split(neg, holdout, rng, "negative")
    for group, read, train, test in ((sources["positive"], pos_read, pos_train, pos_test),
                                     (sources["negative"], neg_read, neg_train, neg_test)):
        for i, entry in enumerate(group):
            entry["docs_read"] = read[i]
            entry["docs_train"] = sum(1 for j, _ in train if j == i)
            entry["docs_heldout"] = sum(1 for j, _ in test if j == i)
    rows = [(HQ_LABEL, t) for _, t in pos_train] + [(LQ_LABEL, t) for _, t in neg_train]
    rng.shuffle(rows)
    counts = {"available": available, "train": {"hq": len(pos_train), "lq": len(neg_train)},
              "heldout": {"hq": len(pos_test), "lq": len(neg_test)}}
    return LabelledData(rows, [t for _, t in pos_test] + [t for _, t in neg_test],
                         np.array([True] * len(pos_test) + [False] * len(neg_test)), counts, sources)


def _fit(data: LabelledData, params: dict[str, Any], seed: int) -> tuple[Any, dict[str, Any]]:
    """The trained (and, if asked, quantized) fastText model, and the unquantized held-out metrics."""
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="curate-fasttext-") as tmp:
        train_file = Path(tmp) / "train.txt"
        with open(train_file, "w", encoding="utf-8") as handle:
            for label, text in data.rows:
                handle.write(f"{label} {text}\n")
        try:
            with _zeroed_allocations():
                model = fasttext.train_supervised(
                    input=str(train_file), dim=params["dim"], wordNgrams=params["word_ngrams"],
                    bucket=params["bucket"], epoch=params["epoch"], lr=params["lr"], minCount=params["min_count"],
                    loss=params["loss"], thread=params["threads"], seed=seed, verbose=0)
        except RuntimeError as exc:  # "Encountered NaN."
            raise ClassifierError(f"fastText training failed ({exc}); lower lr (was {params['lr']})") from exc
        _check_finite(model)
        if params["quantize"]:
            if data.test_texts:
                extra["heldout_metrics_unquantized"] = binary_metrics(_predict_hq(model, data.test_texts),
                                                                      data.test_labels)
            try:
                with _zeroed_allocations():
                    model.quantize(input=str(train_file), retrain=False, qnorm=True,
                                   cutoff=params["quantize_cutoff"])
            except RuntimeError as exc:
                raise ClassifierError(f"fastText quantization failed ({exc})") from exc
    return model, extra


def _move_into_place(staging: Path, out: Path) -> None:
    """Make the staged folder `out` in one rename (an existing `out` is moved aside first, then removed)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _fasttext_version() -> str:
    for dist in ("fasttext-modern", "fasttext", "fasttext-wheel", "fasttext-numpy2"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return f"fasttext {getattr(fasttext, '__version__', 'unknown')}"


# fasttext-modern 0.10 trains from uninitialised memory: fastText's uniform initialisation writes only
# `thread`/10 of the input matrix (upstream relies on std::vector zero-filling the rest), and this build
# does not zero its allocations. Large matrices come from fresh (zeroed) mmap pages, but small ones reuse
# heap memory, so training then starts from leftover bytes and fails at random ("Encountered NaN.", weights
# of 1e14). Measured here: 26-30 of 30 runs broken for a 5-word model, 0 of 30 with the fix. On glibc,
# M_PERTURB=0xff makes malloc hand out zero-filled memory (allocated bytes are set to ~0xff), which restores
# upstream's behaviour; it is switched on only while fastText allocates, and costs nothing measurable.
_ALLOC_LOCK = threading.RLock()


@contextlib.contextmanager
def _zeroed_allocations() -> Iterator[None]:
    with _ALLOC_LOCK:
        mallopt(M_PERTURB, 0xFF)
        try:
            yield
        finally:
            mallopt(M_PERTURB, int(os.environ.get("MALLOC_PERTURB_") or 0))


def _check_finite(model: Any) -> None:
    """Refuse a model whose weights blew up (too high a learning rate, or the allocation problem above)."""
    matrices = [("output", model.get_output_matrix())]
    if _input_size(model) <= 1 << 26:  # get_input_matrix copies: skipped above 2^26 weights (256 MB)
        matrices.append(("input", model.get_input_matrix()))
    for what, matrix in matrices:
        if not np.isfinite(matrix).all() or np.abs(matrix).max(initial=0.0) > 1e4:
            raise ClassifierError(f"training diverged: the {what} matrix has non-finite or huge weights; "
                                  "lower lr")


def _input_size(model: Any) -> int:
    args = model.f.getArgs()
    return (len(model.words) + (args.bucket if args.wordNgrams > 1 or args.maxn > 0 else 0)) * args.dim


def _predict_hq(model: Any, texts: list[str]) -> np.ndarray:
    """P(hq) for preprocessed texts, one batched `predict` call. Empty texts (no words) score 0."""
    out = np.zeros(len(texts), dtype=np.float64)
    rows = [i for i, text in enumerate(texts) if text]
    if not rows:
        return out
    # k=-1: every label with its probability, so P(hq) is there even when hq is not the top label.
    labels, probs = model.predict([texts[i] for i in rows] if len(rows) < len(texts) else texts, k=-1)
    for i, row_labels, row_probs in zip(rows, labels, probs):
        for label, prob in zip(row_labels, row_probs):
            if label == HQ_LABEL:
                out[i] = prob
                break
    return np.clip(out, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Loading and scoring


class QualityModel:
    """A trained classifier, loaded and verified: `score(texts)` gives P(hq) per text."""

    def __init__(self, model: Any, info: ClassifierInfo):
        self.model = model
        self.info = info

    @property
    def sha256(self) -> str:
        return self.info.sha256

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QualityModel:
        """Load from a classifier folder or its model file; the file's sha256 must match `classifier.json`."""
        info = read_info(path)
        if info.backend != DEFAULT_BACKEND:
            raise ClassifierError(f"{info.metadata_path}: a {info.backend!r} classifier, not a fastText one; "
                                  "load it with curation.classifier.load_classifier")
        model_path = verified_model_path(info)
        try:
            model = fasttext.load_model(str(model_path))
        except Exception as exc:  # noqa: BLE001 - fastText raises ValueError/RuntimeError for bad files
            raise ClassifierError(f"{model_path}: cannot be loaded by fastText: {exc}") from exc
        if HQ_LABEL not in model.get_labels():
            raise ClassifierError(f"{model_path}: has no {HQ_LABEL} label (labels: {model.get_labels()})")
        return cls(model, info)

    def score(self, texts: Sequence[str | None]) -> np.ndarray:
        """P(`__label__hq`) per text (float64), preprocessed as in training, predicted in one batch.
        A text with no words (or None) scores 0."""
        max_words = int(self.info.preprocessing.get("max_words", MAX_WORDS))
        return _predict_hq(self.model, [preprocess(t, max_words) if t else "" for t in texts])


def verified_model_path(info: ClassifierInfo) -> Path:
    """The model file `info` names, once it exists and its sha256 matches the one recorded."""
    model_path = info.model_path
    if not model_path.is_file():
        raise ClassifierError(f"{model_path}: model file missing (named by {info.metadata_path})")
    actual = file_sha256(model_path)
    if actual != info.sha256:
        raise ClassifierError(f"{model_path}: sha256 {actual[:16]}… does not match {info.sha256[:16]}… "
                              f"recorded in {info.metadata_path}; the model file was changed or corrupted")
    return model_path


def read_info(path: str | os.PathLike[str]) -> ClassifierInfo:
    """The metadata of a classifier folder (or of the folder holding the given model file)."""
    p = Path(path)
    if p.is_dir():
        directory, named = p, None
    elif p.is_file():
        directory, named = p.parent, p.name
    else:
        raise ClassifierError(f"{p}: no such classifier folder or model file")
    meta = directory / METADATA_FILE
    if not meta.is_file():
        raise ClassifierError(f"{meta}: metadata file missing; a classifier folder holds the model and "
                              f"{METADATA_FILE} (train one with `curate classifier train`)")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"{meta}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ClassifierError(f"{meta}: expected a JSON object")
    info = ClassifierInfo.from_json(directory, data)
    if named is not None and named != info.model_file:
        raise ClassifierError(f"{p}: {meta} describes {info.model_file}, not {named}")
    return info


# ---------------------------------------------------------------------------------------------
# Backends


class Scorer(Protocol):
    """What a backend's loader returns: P(hq) per text, float64; a text with nothing to score (or None) gets 0."""

    info: ClassifierInfo

    def score(self, texts: Sequence[str | None]) -> np.ndarray: ...


BackendLoader = Callable[[Path], Scorer]  # classifier folder -> loaded, verified model
_BACKENDS: dict[str, BackendLoader] = {DEFAULT_BACKEND: QualityModel.load}
# How to make a known backend available, for the error message only (curation/ never imports training/).
_BACKEND_HINTS = {"gpt": "import training.classify first (the curate CLI and the curation flow's workers do)"}


def register_backend(name: str, loader: BackendLoader) -> None:
    """Make `load_classifier` load folders whose classifier.json says `backend: name` with `loader`."""
    _BACKENDS[name] = loader


def backend_loader(info: ClassifierInfo) -> BackendLoader:
    """The loader of `info`'s backend, or a one-line error naming the folder and how to make it available."""
    loader = _BACKENDS.get(info.backend)
    if loader is None:
        hint = _BACKEND_HINTS.get(info.backend, f"the backends available are {', '.join(sorted(_BACKENDS))}")
        raise ClassifierError(f"{info.metadata_path}: classifier backend {info.backend!r} is not registered in "
                              f"this process; {hint}")
    return loader


def load_classifier(path: str | os.PathLike[str]) -> Scorer:
    """A classifier folder (or its model file), loaded and verified by the loader of its backend."""
    info = read_info(path)
    return backend_loader(info)(info.directory)


_CACHE: dict[tuple[str, str, str], Scorer] = {}
_CACHE_LOCK = threading.Lock()


def cached_model(path: str | os.PathLike[str]) -> Scorer:
    """One loaded model per (backend, model file, sha256) per process: reads only the small JSON on a hit, so
    a retrained model at the same path is picked up and verified again."""
    info = read_info(path)
    key = (info.backend, str(info.model_path.resolve()), info.sha256)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = _CACHE[key] = load_classifier(path)
        return model
