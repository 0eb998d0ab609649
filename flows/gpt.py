"""The project's own GPT (`training/`) as the models `curation/` takes: a perplexity scorer for the
model-collapse guards, a completion backend for synthesis, and the "gpt" quality-classifier backend.

`curation/` never imports `training/`: the flows build these from a checkpoint path and pass them in
(`compute_guards(..., perplexity=)`, `make_backend(..., gpt_backend=)`), and importing this module registers
the "gpt" classifier backend with `curation.classifier` (flows/curate.py imports it, so the curation flow's
worker processes have it too).

torch, and `training/` which imports it, load when a model is first used rather than with this module:
they take seconds to import, and most commands never load a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curation.classifier import Scorer, register_backend
from curation.guards import PerplexityScorer
from curation.synth.backends import Completion, CompletionRequest

PERPLEXITY_BATCH = 32  # full-block documents scored per forward pass
# A block of tokens is rarely more than 4 characters per token: encoding 8 characters per position is enough,
# and no whole book is encoded to score its first block.
CHARS_PER_POSITION = 8


def checked_checkpoint(checkpoint: str | Path) -> Path:
    """The checkpoint's path, once it and the tokenizer.json beside it are known to exist."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such GPT checkpoint (train one with `curate train`)")
    if not (checkpoint.parent / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{checkpoint.parent}: the checkpoint's folder has no tokenizer.json")
    return checkpoint


def load_gpt(checkpoint: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) of a checkpoint written by `curate train` or `curate ablate` (tokenizer.json beside it)."""
    from training.tokenizer import load_tokenizer  # torch: see the module docstring
    from training.trainer import load_model

    checkpoint = checked_checkpoint(checkpoint)
    tokenizer = load_tokenizer(checkpoint.parent / "tokenizer.json")
    model, _ = load_model(checkpoint, device)
    return model, tokenizer


# ---- the "gpt" quality-classifier backend ---------------------------------------------------------


def load_gpt_classifier(folder: Path) -> Scorer:
    """A classifier folder written by `curate classifier train --backend gpt` (torch loads here, on first use)."""
    from training.classify import GPTQualityModel  # torch: see the module docstring

    return GPTQualityModel.load(folder)


register_backend("gpt", load_gpt_classifier)


# ---- perplexity, for the guards -------------------------------------------------------------------


class GPTPerplexity:
    """Mean next-token negative log-likelihood of each text's first block under a GPT checkpoint (texts of a
    full block are scored `PERPLEXITY_BATCH` at a time; a text of fewer than 2 tokens is left out). The files
    are checked at once; the model loads on the first call, so a run whose guards never reach the perplexity
    guard does not load it."""

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = checked_checkpoint(checkpoint)
        self._loaded: tuple[Any, Any] | None = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch  # see the module docstring

        if self._loaded is None:
            self._loaded = load_gpt(self.checkpoint)
        model, tok = self._loaded
        block = model.config.block_size
        encoded = [([tok.eot_id] + tok.encode(text[:CHARS_PER_POSITION * block]))[:block + 1] for text in texts]
        out = np.full(len(texts), np.nan)
        full = [i for i, ids in enumerate(encoded) if len(ids) == block + 1]
        with torch.no_grad():
            for start in range(0, len(full), PERPLEXITY_BATCH):
                rows = full[start:start + PERPLEXITY_BATCH]
                ids = torch.tensor([encoded[i] for i in rows])
                _, losses = model(ids[:, :-1], ids[:, 1:], reduction="none")
                out[rows] = losses.float().mean(dim=1).numpy()
            for i, ids in enumerate(encoded):
                if len(ids) < block + 1 and len(ids) >= 3:
                    _, loss = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
                    out[i] = float(loss)
        return out[~np.isnan(out)]


def perplexity_scorer(checkpoint: str | Path | None) -> PerplexityScorer | None:
    """The guards' perplexity scorer for a `reference_model` checkpoint (None without one)."""
    return GPTPerplexity(checkpoint) if checkpoint else None


# ---- completion, for synthesis --------------------------------------------------------------------


class GPTCompletionBackend:
    """The project's own GPT checkpoint as a completion backend: works offline, on the CPU.

    A model trained by `curate train` or `curate ablate` writes poor but real text; it is what the demo
    synthesises with. Each request is sampled on its own with a generator seeded from the request, so
    the same request gives the same text whatever else is in the batch (a resumed run regenerates the
    same batch). The model has no key-value cache; prompts longer than its context keep their last
    `block_size - max_tokens` tokens.
    """

    def __init__(self, checkpoint: str | Path, generation: int = 1, name: str | None = None, device: str = "cpu"):
        checkpoint = Path(checkpoint)
        self.model, self.tokenizer = load_gpt(checkpoint, device)
        self.device = device
        self.generation = generation
        self.name = name or f"gpt:{checkpoint.parent.name}"

    def complete(self, requests: list[CompletionRequest]) -> list[Completion]:
        return [self._one(r) for r in requests]

    def _one(self, request: CompletionRequest) -> Completion:
        try:
            return self._sample(request)
        except Exception as exc:  # noqa: BLE001 - one failed request is a reject, not a crashed run
            return Completion(None, error=f"generation_error={type(exc).__name__}: {exc}")

    def _sample(self, request: CompletionRequest) -> Completion:
        import torch  # see the module docstring

        tok, model = self.tokenizer, self.model
        room = max(1, model.config.block_size - request.max_tokens)
        ids = (tok.encode(request.prompt) or [tok.eot_id])[-room:]
        generator = torch.Generator(device=self.device).manual_seed(request.seed)
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        new: list[int] = []
        text = ""
        with torch.no_grad():
            for _ in range(request.max_tokens):
                out = model.generate(idx, 1, temperature=request.temperature, top_k=request.top_k,
                                     top_p=request.top_p, generator=generator)
                token = int(out[0, -1])
                if token == tok.eot_id:
                    return Completion(text, "stop", usage=_usage(ids, new))
                new.append(token)
                idx = out[:, -model.config.block_size:]
                text = tok.decode(new)
                cut = _first_stop(text, request.stop)
                if cut is not None:
                    return Completion(text[:cut], "stop", usage=_usage(ids, new))
        return Completion(text, "length", usage=_usage(ids, new))


def _usage(prompt: list[int], completion: list[int]) -> dict[str, int]:
    return {"prompt_tokens": len(prompt), "completion_tokens": len(completion)}


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
