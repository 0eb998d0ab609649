"""The `synthesize:` block of a recipe: what to generate, with which model, how many attempts.

    synthesize:
      method: grounded            # or self_instruct
      source: demo                # grounded: the curated version whose documents ground the tasks
      records: 200                # generation attempts (each ends as a record or a reject)
      schema: alpaca              # chat, or {json_schema: schema.json}
      backend: {kind: gpt, checkpoint: runs/.../checkpoint.pt}
      # or {kind: openai, base_url: http://127.0.0.1:8000/v1, model: qwen2.5-7b-instruct}
      # or {kind: hf, path: ./my-model}   or {kind: programmatic}
      tasks: [continue]           # grounded task types
      sampling: {temperature: 0.8, max_tokens: 96}

Validated like the rest of the recipe: an unknown key is an error naming the valid ones.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAIBackendSpec(_Spec):
    kind: Literal["openai"]
    base_url: str
    model: str
    # The API key is read from this environment variable, never written in a recipe or manifest.
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    concurrency: int = Field(8, ge=1)
    json_schema: Literal["auto", "always", "never"] = "auto"
    extra_body: dict[str, Any] | None = None
    generation: int = Field(1, ge=1)  # an external model counts as trained on human data unless told otherwise


class GPTBackendSpec(_Spec):
    kind: Literal["gpt"]
    checkpoint: str
    # Default: one more than the highest `generation` in the version the checkpoint was trained on.
    generation: int | None = Field(None, ge=1)


class HFBackendSpec(_Spec):
    kind: Literal["hf"]
    path: str
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = Field(8, ge=1)
    generation: int = Field(1, ge=1)


class ProgrammaticBackendSpec(_Spec):
    """Deterministic, document-grounded tasks whose answers come from the document itself."""

    kind: Literal["programmatic"]


BackendSpec = Annotated[OpenAIBackendSpec | GPTBackendSpec | HFBackendSpec | ProgrammaticBackendSpec,
                        Field(discriminator="kind")]


class SamplingSpec(_Spec):
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int | None = Field(40, ge=1)  # completion backends only (the OpenAI API has no top_k)
    # Chat backends: the whole JSON answer. Completion backends: each field.
    max_tokens: int = Field(256, ge=1)


class SynthSpec(_Spec):
    method: Literal["self_instruct", "grounded"]
    backend: BackendSpec
    records: int = Field(ge=1, le=10_000_000)
    schema_: str | dict[str, Any] = Field("alpaca", alias="schema")
    # grounded: the version whose documents ground the tasks, and the task types (round-robin).
    source: str | None = None
    tasks: list[Literal["continue", "summarize", "keywords", "cloze", "question"]] = Field(
        default_factory=lambda: ["continue"], min_length=1)
    passage_words: int = Field(120, ge=10)
    # self_instruct: seed tasks (JSONL in the schema's shape; default: the 24 built-in Alpaca tasks), and the
    # in-context mix of Self-Instruct (Wang et al. 2023): 8 examples, 6 human seed tasks and 2 generated.
    seed_tasks: str | None = None
    seed_examples: int = Field(6, ge=1)
    generated_examples: int = Field(2, ge=0)
    sampling: SamplingSpec = SamplingSpec()
    batch_size: int = Field(32, ge=1)  # attempts per task (and per persisted batch file)
    seed: int = 0

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> SynthSpec:
        if self.method == "grounded" and not self.source:
            raise ValueError("method grounded needs `source:` (the version whose documents ground the tasks)")
        if self.method == "self_instruct" and self.backend.kind == "programmatic":
            raise ValueError("the programmatic backend makes grounded tasks only (method: grounded)")
        if self.backend.kind == "programmatic" and "question" in self.tasks:
            raise ValueError("task `question` needs a model; the programmatic backend makes continue, summarize, "
                             "keywords and cloze tasks")
        return self

    def content_hash(self) -> str:
        """What the generation computes (the backend's plumbing, e.g. concurrency, excluded)."""
        body = self.model_dump(mode="json", by_alias=True,
                               exclude={"backend": {"concurrency", "timeout_s", "max_retries", "backoff_s",
                                                    "batch_size", "device", "api_key_env"}})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
