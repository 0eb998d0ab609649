"""A completion backend for a local Hugging Face causal LM (a folder written by `save_pretrained`).

Why: generation methods that continue text (one field at a time) should run on any open causal LM
checkpoint on disk, without a server. `HFCompletionBackend` loads the model and tokenizer from a
folder (never from the network) and answers `CompletionRequest`s with `Completion`s, like every other
`CompletionBackend`.

Reproducibility comes first: every request draws its tokens from its own random generator, seeded by
`request.seed`, so a request's text does not depend on which other requests shared its batch (see
`HFCompletionBackend.complete` for the one caveat, low-precision arithmetic).

`transformers` is an optional extra: `pip install 'curate[hf]'`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from curation.synth.backends import Completion, CompletionRequest

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# Tokenizers without a known context report a huge `model_max_length` (1e30): not a real limit.
_NO_LIMIT = 10**9


class HFCompletionBackend:
    """Continue prompts with a local Hugging Face causal LM.

    - `path`: the folder holding the model and its tokenizer (`save_pretrained` output); nothing is
      downloaded.
    - `device`: "auto" (cuda if available, else mps, else cpu) or any torch device string.
    - `dtype`: "auto" (bfloat16 on a CUDA device that supports it, else float32), "float32",
      "bfloat16" or "float16".
    - `batch_size`: how many requests run through the model together.
    - `generation`: the generation of the data the model was trained on + 1 (an external model: 1).
    - `name`: the generator id written on records; default `hf:<folder name>`.

    Prompts longer than the model's context are left-truncated: only their last
    `context - max_tokens` tokens are kept (a leading BOS token is kept too), so the continuation
    always fits. `context_length` is None when the model does not state a limit.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        generation: int = 1,
        name: str | None = None,
    ) -> None:
        try:  # an optional extra, and seconds to import: only when an HF model is loaded
            import transformers
        except ImportError as exc:
            raise ImportError("HFCompletionBackend needs the `transformers` package: pip install 'curate[hf]'") from exc
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"no Hugging Face model folder at {self.path}")
        self.device = torch.device(_resolve_device(device))
        self.dtype = _resolve_dtype(dtype, self.device)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                self.path, local_files_only=True, dtype=self.dtype
            )
        except Exception as exc:  # transformers raises OSError, ValueError or KeyError, depending on what is missing
            raise ValueError(
                f"{self.path} does not hold a Hugging Face causal LM and its tokenizer ({type(exc).__name__}: {exc})"
            ) from exc
        self.model = model.to(self.device).eval()

        self.batch_size = batch_size
        self.generation = generation
        self.name = name if name is not None else f"hf:{self.path.resolve().name}"

        self._eos_ids = _eos_token_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else (self._eos_ids[0] if self._eos_ids else 0)
        self.context_length = _context_length(self.model, self.tokenizer)

    def complete(self, requests: list[CompletionRequest]) -> list[Completion]:
        """One Completion per request, in order; never raises for a failed request.

        Requests with the same `max_tokens` are batched (left padding). Each request samples with its
        own `torch.Generator` seeded by `request.seed` (temperature 0: greedy), so the same request
        gives the same text whatever else is in its batch, on any device. Caveat: in bfloat16/float16
        the logits themselves can differ in their last bits between batch shapes, which can flip a
        near-tie; use `batch_size=1` (or float32) where bit-exact reruns matter.
        """
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
        for index, request in enumerate(requests):
            try:
                groups[request.max_tokens].append((index, self._prompt_ids(request)))
            except Exception as exc:
                results[index] = _failure(exc)
        for items in groups.values():
            items.sort(key=lambda item: len(item[1]))  # similar lengths together: less padding
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                answers = self._complete_batch([requests[i] for i, _ in chunk], [ids for _, ids in chunk])
                for (index, _), answer in zip(chunk, answers):
                    results[index] = answer
        return [result if result is not None else _failure(RuntimeError("no answer")) for result in results]

    def _prompt_ids(self, request: CompletionRequest) -> list[int]:
        """The prompt's token ids, left-truncated to leave `max_tokens` of room in the context."""
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        ids: list[int] = self.tokenizer(request.prompt, add_special_tokens=True, verbose=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if not ids:  # an empty prompt: start from BOS (or EOS, as GPT-2 does)
            start = bos if bos is not None else (self._eos_ids[0] if self._eos_ids else None)
            if start is None:
                raise ValueError("empty prompt and the tokenizer has no BOS or EOS token to start from")
            ids = [start]
        if self.context_length is None:
            return ids
        room = self.context_length - request.max_tokens
        if room < 1:
            raise ValueError(
                f"max_tokens={request.max_tokens} leaves no room for a prompt in the model's context of "
                f"{self.context_length} tokens"
            )
        if len(ids) > room:
            keep_bos = bos is not None and ids[0] == bos and room > 1
            ids = [bos, *ids[len(ids) - room + 1 :]] if keep_bos else ids[len(ids) - room :]
        return ids

    def _complete_batch(self, requests: list[CompletionRequest], prompts: list[list[int]]) -> list[Completion]:
        """Run one batch; if it fails, run its requests one at a time so only the failing one is lost."""
        try:
            return self._generate(requests, prompts)
        except Exception as exc:
            if len(requests) == 1:
                return [_failure(exc)]
        return [self._complete_batch([request], [ids])[0] for request, ids in zip(requests, prompts)]

    def _generate(self, requests: list[CompletionRequest], prompts: list[list[int]]) -> list[Completion]:
        """Generate for a batch of requests that share `max_tokens`."""
        from transformers import LogitsProcessorList, StoppingCriteriaList  # optional extra: see __init__

        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1

        max_tokens = requests[0].max_tokens
        stopper = _StopStrings(self.tokenizer, [request.stop for request in requests], width)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                do_sample=False,  # sampling happens in _PerRequestSampler; generate then takes its pick
                max_new_tokens=max_tokens,
                eos_token_id=self._eos_ids or None,
                pad_token_id=self._pad_id,
                logits_processor=LogitsProcessorList([_PerRequestSampler(requests)]),
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
        new_tokens = output[:, width:].tolist()
        return [
            self._finish(request, tokens, len(ids), stopper.stopped_at[row])
            for row, (request, tokens, ids) in enumerate(zip(requests, new_tokens, prompts))
        ]

    def _finish(
        self, request: CompletionRequest, tokens: list[int], prompt_tokens: int, stopped_at: int | None
    ) -> Completion:
        """Cut one row's tokens at EOS or at the first stop string, and say why it ended."""
        finish_reason = "length"
        eos = set(self._eos_ids)
        for position, token in enumerate(tokens):
            if token in eos:
                tokens, finish_reason = tokens[:position], "stop"
                break
        text = self._decode(tokens)
        cut = _first_stop(text, request.stop)
        if cut is not None:
            text, finish_reason = text[:cut], "stop"
            if stopped_at is not None:
                tokens = tokens[:stopped_at]
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens)}
        return Completion(text=text, finish_reason=finish_reason, usage=usage)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class _PerRequestSampler:
    """A logits processor that samples each row with its request's own seeded generator.

    It leaves greedy rows (temperature <= 0) alone and, for the others, masks every token but the
    one it drew, so `generate(do_sample=False)` picks exactly that token. Draws happen on the CPU, so
    they depend only on the request and its logits, not on the device or the other rows.
    """

    def __init__(self, requests: list[CompletionRequest]) -> None:
        self.requests = requests
        self.generators = [torch.Generator().manual_seed(request.seed) for request in requests]
        self.sampled_rows = [row for row, request in enumerate(requests) if request.temperature > 0]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.sampled_rows:
            return scores
        logits = scores[self.sampled_rows].float().cpu()
        picks = [
            _sample(logits[i], self.requests[row], self.generators[row]) for i, row in enumerate(self.sampled_rows)
        ]
        rows = torch.tensor(self.sampled_rows, device=scores.device)
        forced = scores.clone()
        forced[rows] = float("-inf")
        forced[rows, torch.tensor(picks, device=scores.device)] = 0.0
        return forced


def _sample(logits: torch.Tensor, request: CompletionRequest, generator: torch.Generator) -> int:
    """Draw one token id from `logits` (1-D) with temperature, top-k and top-p (nucleus) filtering."""
    logits = logits / request.temperature
    if request.top_k is not None and 0 < request.top_k < logits.numel():
        kth_best = torch.topk(logits, request.top_k).values[-1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if request.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop = mass_before >= request.top_p  # keep the smallest prefix holding top_p of the mass
        drop[0] = False
        logits = logits.index_fill(0, order[drop], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


class _StopStrings:
    """A stopping criterion: a row is done once its generated text contains one of its stop strings.

    `stopped_at[row]` is how many tokens the row had generated when that happened (None: never).
    """

    def __init__(self, tokenizer: Any, stops: list[tuple[str, ...]], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_width = prompt_width
        self.stopped_at: list[int | None] = [None] * len(stops)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_width
        for row, stops in enumerate(self.stops):
            if stops and self.stopped_at[row] is None:
                text = self.tokenizer.decode(
                    input_ids[row, self.prompt_width :].tolist(),
                    skip_special_tokens=True,
                    clean_up_tokenization_spaces=False,
                )
                if _first_stop(text, stops) is not None:
                    self.stopped_at[row] = generated
        done = [at is not None for at in self.stopped_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in `text` (None: none occurs)."""
    found = [position for stop in stops if stop and (position := text.find(stop)) >= 0]
    return min(found) if found else None


def _failure(exc: BaseException) -> Completion:
    message = " ".join(str(exc).split())[:500]
    return Completion(text=None, error=f"generation_error={type(exc).__name__}: {message}")


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a text: the generation config's (one or several) and the tokenizer's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [*ids, tokenizer.eos_token_id]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _context_length(model: Any, tokenizer: Any) -> int | None:
    """The model's context in tokens: its config's position limit, else the tokenizer's (None: unknown)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and 0 < value < _NO_LIMIT:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < _NO_LIMIT else None
