"""What every generator backend takes and returns.

Two kinds of backend, because two kinds of model exist:
- *chat* backends (an OpenAI-compatible server) answer a list of messages and can be asked for a
  JSON document that follows a schema;
- *completion* backends (the project's own GPT checkpoint, in `flows/gpt.py` because it runs
  `training/` code; a local Hugging Face causal LM) continue a text prompt. They cannot follow
  instructions, so methods ask them for one field at a time and our code assembles the JSON: the
  structure never depends on the model (no runaway whitespace, no unclosed braces).

A backend never raises for one failed request: the failure is in `Completion.error`, so it becomes
a counted reject instead of a crashed run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completions call."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    # JSON Schema for `response_format` when the server supports it (None: free text).
    json_schema: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    schema_name: str = "record"
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompletionRequest:
    """Continue `prompt` for at most `max_tokens` tokens, stopping at any of `stop` (excluded).
    temperature 0 is greedy; top_k None and top_p 1.0 switch those filters off."""

    prompt: str
    max_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int | None = 40
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class Completion:
    """A backend's answer to one request.

    `finish_reason` follows the OpenAI API: "stop" (natural end or a stop sequence), "length" (cut at
    `max_tokens`: the output is incomplete and must be rejected), or whatever else the server said.
    `error` is set, and `text` is None, when no usable answer came back: it reads `key=detail`
    (`http_error=503 after 5 attempts`, `timeout=30s deadline exceeded after 5 attempts`, `bad_response=no choices`,
    `generation_error=RuntimeError: ...`; attempts count every HTTP call), and the part before `=` is the
    reject reason's key. `usage` uses the OpenAI names (`prompt_tokens`, `completion_tokens`).
    """

    text: str | None
    finish_reason: str | None = None
    error: str | None = None
    cached: bool = False
    usage: dict[str, int] = field(default_factory=dict)


class ChatBackend(Protocol):
    name: str  # the generator id written on every record, e.g. "openai:<model>@<base_url>"

    def chat(self, requests: list[ChatRequest]) -> list[Completion]:
        """One Completion per request, in order; runs requests concurrently where it can."""
        ...


class CompletionBackend(Protocol):
    name: str
    generation: int  # generation of the data the model was trained on + 1

    def complete(self, requests: list[CompletionRequest]) -> list[Completion]:
        """One Completion per request, in order."""
        ...


def request_key(*parts: Any) -> str:
    """A stable cache key for a request (sha256 of its canonical JSON)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
