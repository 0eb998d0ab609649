"""The project's own GPT checkpoint as a completion backend: works offline, on the CPU.

A model trained by `curate train` or `curate ablate` writes poor but real text; it is what the demo
synthesises with. Each request is sampled on its own with a generator seeded from the request, so
the same request gives the same text whatever else is in the batch (a resumed run regenerates the
same batch). The model has no key-value cache; prompts longer than its context keep their last
`block_size - max_tokens` tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from curation.synth.backends import Completion, CompletionRequest


class GPTCompletionBackend:
    def __init__(self, checkpoint: str | Path, generation: int = 1, name: str | None = None, device: str = "cpu"):
        from training.tokenizer import load_tokenizer
        from training.trainer import load_model

        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: no such GPT checkpoint (train one with `curate train`)")
        if not (checkpoint.parent / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{checkpoint.parent}: the checkpoint's folder has no tokenizer.json")
        self.tokenizer = load_tokenizer(checkpoint.parent / "tokenizer.json")
        self.model, _ = load_model(checkpoint, device)
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

    @torch.no_grad()
    def _sample(self, request: CompletionRequest) -> Completion:
        tok, model = self.tokenizer, self.model
        room = max(1, model.config.block_size - request.max_tokens)
        ids = (tok.encode(request.prompt) or [tok.eot_id])[-room:]
        generator = torch.Generator(device=self.device).manual_seed(request.seed)
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        new: list[int] = []
        text = ""
        for _ in range(request.max_tokens):
            out = model.generate(idx, 1, temperature=request.temperature, top_k=request.top_k,
                                 top_p=request.top_p, generator=generator)
            token = int(out[0, -1])
            if token == tok.eot_id:
                return Completion(text, "stop", usage={"prompt_tokens": len(ids), "completion_tokens": len(new)})
            new.append(token)
            idx = out[:, -model.config.block_size:]
            text = tok.decode(new)
            cut = _first_stop(text, request.stop)
            if cut is not None:
                return Completion(text[:cut], "stop", usage={"prompt_tokens": len(ids), "completion_tokens": len(new)})
        return Completion(text, "length", usage={"prompt_tokens": len(ids), "completion_tokens": len(new)})


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
