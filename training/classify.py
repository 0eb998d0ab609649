"""A classification head on the project's GPT: the "gpt" quality-classifier backend, beside fastText.

FineWeb-Edu scores its documents with a model-based classifier; this is the same idea on our own GPT. A
`GPTClassifier` is a `GPT` body (token and position embeddings, blocks, final LayerNorm; the LM head is not
used) whose hidden states are pooled into one vector per document and fed to a Linear layer with two outputs
(lq, hq):

* pooling `last`: the hidden state of the last real token. The attention is causal and padding goes at the
  end, so that token has read the whole document and nothing of the padding;
* pooling `mean`: the mean hidden state over the real tokens.

It is built from a base model (a `curate train` checkpoint.pt with its tokenizer.json, or a GPT-2 folder read
by `training.pretrained.load_gpt2`) and fine-tuned on the labelled documents `curation.classifier.labelled_data`
reads, balances and splits exactly as it does for fastText, so both backends are measured on the same held-out
documents with the same `binary_metrics`. With `head_only` the body is frozen: its pooled features are computed
once and only the head is trained, the cheap option on a CPU.

Each document is encoded as EOT followed by its first tokens, at most `max_tokens` (default: the base's
block_size) in all: the base was trained on documents that follow an EOT, so the first token has a context the
model knows, and an empty document still has one token. A document with no text scores 0, as with fastText.

Saved folder (`curation.classifier.read_info` reads its classifier.json as it reads fastText's):

    model.safetensors   the whole classifier's weights (safetensors: loading it never runs code)
    tokenizer.json      a copy of the base's tokenizer
    classifier.json     backend "gpt", pooling, the base (path, sha256), sources, counts, held-out metrics

Importing this module registers the "gpt" backend with `curation.classifier`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from curation.classifier import (
    HQ_LABEL,
    ClassifierError,
    ClassifierInfo,
    TextSource,
    binary_metrics,
    check_out_dir,
    file_sha256,
    labelled_data,
    read_info,
    register_backend,
    staged_folder,
    verified_model_path,
    write_info,
)
from curation.store import VersionStore
from training.config import GPTConfig
from training.model import GPT
from training.pretrained import BaseModelError, load_base
from training.tokenizer import TOKENIZER_FILE, Tokenizer, TokenizerError, load_tokenizer

BACKEND = "gpt"
MODEL_FILE = "model.safetensors"
POOLINGS = ("last", "mean")
# Defaults, our choice for a CPU: a few epochs over a few thousand documents in minutes.
DEFAULT_EPOCHS = 3  # BERT fine-tunes for 2-4 epochs (Devlin et al. 2019, appendix A.3)
DEFAULT_BATCH_SIZE = 16  # BERT's smaller fine-tuning batch (16 or 32): shorter CPU steps
# Learning rates: the whole model at 1e-4 (BERT's grid is 2e-5..5e-5 for 110 M parameters; a ~1 M parameter
# base takes a larger step); the head alone, a linear model over fixed features, at 1e-3 (AdamW's usual 1e-3).
DEFAULT_LR = 1e-4
DEFAULT_HEAD_LR = 1e-3
SCORE_BATCH = 32  # documents per forward pass when scoring
# Characters read per token position: a block of tokens is rarely more than 4 characters per token, so 8 is
# enough and a whole book is never encoded to keep its first block (flows/gpt.py's CHARS_PER_POSITION).
CHARS_PER_TOKEN = 8


# ---------------------------------------------------------------------------------------------
# The model


class GPTClassifier(nn.Module):
    """A GPT body, a pooling of its final hidden states and a Linear head: logits (B, 2), index 1 is hq."""

    def __init__(self, config: GPTConfig, pooling: str = "last") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ClassifierError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.body = GPT(config)
        self.head = nn.Linear(config.n_embd, 2)

    def pooled(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One vector (B, n_embd) per row of `idx` (B, T), of which the first `lengths` (B,) tokens are real."""
        hidden = self.body.hidden_states(idx)
        if self.pooling == "last":
            return hidden[torch.arange(idx.size(0), device=idx.device), lengths - 1]
        real = (torch.arange(idx.size(1), device=idx.device)[None, :] < lengths[:, None]).to(hidden.dtype)
        return (hidden * real[:, :, None]).sum(dim=1) / lengths[:, None].to(hidden.dtype)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(idx, lengths))


def encode(tokenizer: Tokenizer, texts: Sequence[str | None], max_tokens: int) -> list[list[int]]:
    """EOT + the first tokens of each text, `max_tokens` ids at most; [] for a text that is empty or None."""
    present = [i for i, text in enumerate(texts) if text and text.strip()]
    encoded = tokenizer.encode_batch([texts[i][:CHARS_PER_TOKEN * max_tokens] for i in present])  # type: ignore[index]
    out: list[list[int]] = [[] for _ in texts]
    for i, ids in zip(present, encoded):
        out[i] = ([tokenizer.eot_id] + ids)[:max_tokens]
    return out


def pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, longest row), padded at the end with `pad_id`, and each row's length (B,)."""
    longest = max(len(row) for row in rows)
    idx = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        idx[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return idx, torch.tensor([len(row) for row in rows], dtype=torch.long)


@torch.no_grad()
def predict_hq(model: GPTClassifier, tokenizer: Tokenizer, texts: Sequence[str | None], max_tokens: int,
               batch_size: int = SCORE_BATCH) -> np.ndarray:
    """P(hq) = softmax(logits)[:, 1] per text, float64, in batches of similar length (less padding); 0 for a text
    with no tokens."""
    was_training = model.training
    model.eval()
    try:
        encoded = encode(tokenizer, texts, max_tokens)
        out = np.zeros(len(texts), dtype=np.float64)
        order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            idx, lengths = pad([encoded[i] for i in rows], tokenizer.eot_id)
            out[rows] = F.softmax(model(idx, lengths).float(), dim=-1)[:, 1].double().numpy()
        return out
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# The base


# ---------------------------------------------------------------------------------------------
# Training


def train_gpt_classifier(
    positive: Sequence[TextSource | str],
    negative: Sequence[TextSource | str],
    out_dir: str | Path,
    *,
    base: str | Path,
    pooling: str = "last",
    epochs: int = DEFAULT_EPOCHS,
    lr: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    head_only: bool = False,
    max_tokens: int | None = None,
    seed: int = 0,
    max_docs_per_class: int | None = None,
    balance: bool = True,
    holdout: float = 0.1,
    store: VersionStore | str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> ClassifierInfo:
    """Fine-tune a classification head on `base` (AdamW, `epochs` passes in seeded order, cross entropy) and
    write the classifier into `out_dir` atomically. `lr` defaults to DEFAULT_HEAD_LR with `head_only`, else
    DEFAULT_LR. The sources, sampling, balance and held-out split are `train_quality_classifier`'s."""
    if pooling not in POOLINGS:
        raise ClassifierError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    if epochs < 1 or batch_size < 1:
        raise ClassifierError(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}")
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    started = time.perf_counter()
    try:
        loaded = load_base(base)
    except BaseModelError as exc:
        raise ClassifierError(str(exc)) from exc
    config = loaded.model.config
    max_tokens = min(max_tokens or config.block_size, config.block_size)
    if max_tokens < 1:
        raise ClassifierError(f"max_tokens must be at least 1, got {max_tokens}")
    lr = lr if lr is not None else (DEFAULT_HEAD_LR if head_only else DEFAULT_LR)
    # The cut encode() makes anyway, applied when reading: bounded memory; whitespace-only texts are skipped.
    data = labelled_data(positive, negative, lambda text: text[:CHARS_PER_TOKEN * max_tokens] if text.strip() else "",
                         seed=seed, max_docs_per_class=max_docs_per_class, balance=balance, holdout=holdout,
                         store=store)
    torch.manual_seed(seed)
    model = GPTClassifier(config, pooling)
    model.body.load_state_dict(loaded.model.state_dict())
    texts = [text for _, text in data.rows]
    labels = torch.tensor([label == HQ_LABEL for label, _ in data.rows], dtype=torch.long)
    encoded = encode(loaded.tokenizer, texts, max_tokens)
    fit = _fit_head if head_only else _fit_all
    losses = fit(model, encoded, labels, loaded.tokenizer.eot_id, epochs, lr, batch_size, seed, log or (lambda _: None))
    scores = predict_hq(model, loaded.tokenizer, data.test_texts, max_tokens)
    metrics = binary_metrics(scores, data.test_labels) if data.test_texts else {}
    params = {"pooling": pooling, "epochs": epochs, "lr": lr, "batch_size": batch_size, "head_only": head_only,
              "optimizer": "AdamW (torch defaults: weight_decay 0.01, betas 0.9/0.999)", "max_tokens": max_tokens,
              "holdout": holdout, "max_docs_per_class": max_docs_per_class, "balance": balance,
              "train_loss_per_epoch": [round(x, 5) for x in losses], "model_config": asdict(config)}
    with staged_folder(out) as staging:
        save_model(model, str(staging / MODEL_FILE))
        shutil.copyfile(loaded.tokenizer.path, staging / TOKENIZER_FILE)
        info = ClassifierInfo(
            directory=out, model_file=MODEL_FILE, sha256=file_sha256(staging / MODEL_FILE),
            size_bytes=(staging / MODEL_FILE).stat().st_size, counts=data.counts, metrics=metrics, params=params,
            seed=seed, sources=data.sources, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            fasttext_version=None, train_seconds=round(time.perf_counter() - started, 3),
            preprocessing={"tokenizer_sha256": loaded.tokenizer.hash, "prepend_eot": True, "max_tokens": max_tokens,
                           "truncation": "first tokens"},
            extra={"backend": BACKEND, "pooling": pooling, "base": loaded.describe(),
                   "torch_version": torch.__version__},
        )
        write_info(staging, info)
    return info


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


def _fit_all(model: GPTClassifier, encoded: list[list[int]], labels: torch.Tensor, pad_id: int, epochs: int,
             lr: float, batch_size: int, seed: int, log: Callable[[str], None]) -> list[float]:
    """Fine-tune body and head together; the mean training loss of each epoch."""
    model.train()

    def logits(rows: torch.Tensor) -> torch.Tensor:
        return model(*pad([encoded[i] for i in rows.tolist()], pad_id))

    losses = _epochs(logits, model.parameters(), labels, epochs, lr, batch_size, seed, log, "")
    model.eval()
    return losses


def _fit_head(model: GPTClassifier, encoded: list[list[int]], labels: torch.Tensor, pad_id: int, epochs: int,
              lr: float, batch_size: int, seed: int, log: Callable[[str], None]) -> list[float]:
    """Train the head alone on the frozen body's pooled features, computed once (the body never changes)."""
    model.body.requires_grad_(False)
    model.eval()
    with torch.no_grad():
        features = torch.cat([model.pooled(*pad([encoded[i] for i in rows], pad_id))
                              for rows in _chunks(len(encoded), SCORE_BATCH)])
    return _epochs(lambda rows: model.head(features[rows]), model.head.parameters(), labels, epochs, lr, batch_size,
                   seed, log, " (head only)")


def _epochs(logits: Callable[[torch.Tensor], torch.Tensor], parameters, labels: torch.Tensor, epochs: int, lr: float,
            batch_size: int, seed: int, log: Callable[[str], None], what: str) -> list[float]:
    """AdamW over seeded shuffled batches of example indices; the mean training loss of each epoch."""
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(epochs):
        total = 0.0
        for rows in _batches(len(labels), batch_size, generator):
            loss = F.cross_entropy(logits(rows), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        losses.append(total / len(labels))
        log(f"epoch {epoch + 1}/{epochs}{what}: train loss {losses[-1]:.4f}")
    return losses


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, n))) for start in range(0, n, size)]


# ---------------------------------------------------------------------------------------------
# Loading and scoring


class GPTQualityModel:
    """A saved GPT classifier, loaded and verified: `score(texts)` gives P(hq) per text (the `Scorer` protocol)."""

    def __init__(self, model: GPTClassifier, tokenizer: Tokenizer, info: ClassifierInfo) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info

    @classmethod
    def load(cls, path: str | Path) -> GPTQualityModel:
        """From a classifier folder (or its model file): sha256 of model and tokenizer checked, safetensors only."""
        info = read_info(path)
        if info.backend != BACKEND:
            raise ClassifierError(f"{info.metadata_path}: backend {info.backend!r}, not {BACKEND!r}")
        model_path = verified_model_path(info)
        config = info.params.get("model_config")
        pooling = info.extra.get("pooling")
        if not isinstance(config, dict) or pooling not in POOLINGS:
            raise ClassifierError(f"{info.metadata_path}: params.model_config or pooling missing or invalid; "
                                  "retrain with `curate classifier train --backend gpt`")
        try:
            tokenizer = load_tokenizer(info.directory / TOKENIZER_FILE)
            model = GPTClassifier(GPTConfig(**config), pooling)
            load_model(model, str(model_path))
        except (TokenizerError, SafetensorError, RuntimeError, TypeError, ValueError) as exc:
            raise ClassifierError(f"{model_path}: cannot be loaded as a GPT classifier: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        if tokenizer.hash != info.preprocessing.get("tokenizer_sha256"):
            raise ClassifierError(f"{tokenizer.path}: not the tokenizer recorded in {info.metadata_path} "
                                  "(tokenizer_sha256 differs); the folder was changed")
        return cls(model.eval(), tokenizer, info)

    def score(self, texts: Sequence[str | None]) -> np.ndarray:
        return predict_hq(self.model, self.tokenizer, texts, int(self.info.preprocessing["max_tokens"]))


register_backend(BACKEND, GPTQualityModel.load)
