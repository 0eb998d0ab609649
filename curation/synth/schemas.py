"""Record schemas for instruction data, and the one decoding path every generated answer goes through.

A generated answer is text. `decode` turns it into a record or raises `Rejected` with a reason:
the JSON is parsed strictly (one JSON object, optionally inside a single ```json fence) and then
validated against the schema with no coercion: a number where a string belongs, a missing field or
an extra key is a schema violation, never silently fixed.

Three schemas:
- `alpaca`: {"instruction", "input", "output"} (Taori et al. 2023; `input` may be empty);
- `chat`: {"messages": [{"role", "content"}, ...]}: an optional system message, then user and
  assistant turns alternating, starting with the user and ending with the assistant;
- a user-supplied JSON Schema (validated with `jsonschema`), for any other record shape.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Rejected(Exception):
    """A generation attempt that did not produce a usable record; `reason` reads `key=detail`."""

    def __init__(self, key: str, detail: str = ""):
        super().__init__(f"{key}={detail}" if detail else key)
        self.key, self.detail = key, detail

    @property
    def reason(self) -> str:
        return str(self)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class AlpacaRecord(_Strict):
    instruction: str = Field(min_length=1)
    input: str = ""
    output: str = Field(min_length=1)

    @field_validator("instruction", "output")
    @classmethod
    def _check(cls, value: str) -> str:
        return _not_blank(value)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)

    @field_validator("content")
    @classmethod
    def _check(cls, value: str) -> str:
        return _not_blank(value)


class ChatRecord(_Strict):
    messages: list[Message] = Field(min_length=2)

    @model_validator(mode="after")
    def _turns(self) -> ChatRecord:
        roles = [m.role for m in self.messages]
        if roles[0] == "system":
            roles = roles[1:]
        if not roles or any(r == "system" for r in roles):
            raise ValueError("a system message may only come first, and at least one turn must follow it")
        expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
        if roles != expected:
            raise ValueError(f"turns must alternate user/assistant from the user; got {roles}")
        if roles[-1] != "assistant":
            raise ValueError("the last message must be the assistant's")
        return self


def _strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema in the form OpenAI-compatible `strict` structured output accepts: every
    property required, no additional properties (also inside nested objects)."""
    schema = model.model_json_schema()

    def tighten(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["required"] = list(node["properties"])
                node["additionalProperties"] = False
                for prop in node["properties"].values():
                    prop.pop("default", None)
            for value in node.values():
                tighten(value)
        elif isinstance(node, list):
            for value in node:
                tighten(value)

    tighten(schema)
    return schema


_FENCE = re.compile(r"\A\s*```(?:json)?\s*\n(.*?)\n?```\s*\Z", re.S)


def parse_json_object(text: str | None) -> dict[str, Any]:
    """Strict: the whole answer is one JSON object (a single ```json fence around it is allowed)."""
    if text is None or not text.strip():
        raise Rejected("empty_output")
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise Rejected("invalid_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(value, dict):
        raise Rejected("schema", f"expected a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class RecordSchema:
    """One record shape: how to validate it, how completion models fill it, and how it reads as text."""

    name: str
    model: type[BaseModel] | None = None
    user_schema: dict[str, Any] | None = None

    # ---- validation ------------------------------------------------------------------------
    def json_schema(self) -> dict[str, Any]:
        """The schema sent as `response_format` to servers that support structured output."""
        return self.user_schema if self.user_schema is not None else _strict_json_schema(self.model)

    def validate(self, value: dict[str, Any]) -> dict[str, Any]:
        """The record as validated (never coerced); raises `Rejected("schema", ...)`."""
        if self.model is not None:
            try:
                return self.model.model_validate(value).model_dump()
            except ValidationError as exc:
                raise Rejected("schema", _pydantic_message(exc)) from None
        validator = jsonschema.validators.validator_for(self.user_schema)(self.user_schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "(record)"
            raise Rejected("schema", f"{where}: {error.message}")
        return value

    def decode(self, text: str | None) -> dict[str, Any]:
        return self.validate(parse_json_object(text))

    # ---- completion models fill string fields one at a time ---------------------------------
    def fill_fields(self) -> tuple[str, ...]:
        """The fields a completion model writes, in order (chat records are filled as one
        user/assistant exchange: the `instruction`/`input`/`output` of an Alpaca record)."""
        if self.model is not None:
            return ("instruction", "input", "output")
        props = self.user_schema.get("properties", {})
        return tuple(k for k, v in props.items() if v.get("type") == "string")

    def from_fields(self, fields: dict[str, str]) -> dict[str, Any]:
        """The record made of filled fields (before validation)."""
        if self.model is ChatRecord:
            user = fields.get("instruction", "")
            if fields.get("input"):
                user = f"{user}\n\n{fields['input']}"
            return {"messages": [{"role": "user", "content": user},
                                 {"role": "assistant", "content": fields.get("output", "")}]}
        return dict(fields)

    # ---- how a record reads ------------------------------------------------------------------
    def flat(self, record: dict[str, Any]) -> dict[str, str | None]:
        """The record as `instruction`, `input` and `output` columns, whatever its shape: the fields the
        instruction checks and the statistics read (a chat record: its user and assistant turns; a custom
        schema: its instruction/prompt/question and output/response/answer fields, when it has them)."""
        if self.model is AlpacaRecord:
            return {k: record[k] for k in ("instruction", "input", "output")}
        if self.model is ChatRecord:
            turns = record["messages"]
            return {"instruction": "\n".join(m["content"] for m in turns if m["role"] == "user"), "input": "",
                    "output": "\n".join(m["content"] for m in turns if m["role"] == "assistant")}

        def first(*keys: str) -> str | None:
            return next((record[k] for k in keys if isinstance(record.get(k), str)), None)

        return {"instruction": first("instruction", "prompt", "question", "task"), "input": first("input", "context"),
                "output": first("output", "response", "answer", "completion")}

    def render(self, record: dict[str, Any]) -> str:
        """The record as training text (the `text` column)."""
        if self.model is None:
            return json.dumps(record, ensure_ascii=False, sort_keys=True)
        return "".join(text for text, _ in self.segments(record))

    def segments(self, record: dict[str, Any]) -> list[tuple[str, bool]]:
        """The rendered text in pieces, each marked True when it is response (what fine-tuning trains a model
        to write) and False when it is prompt (only read); `render` joins them, so both see the same text.
        Alpaca: everything through `### Response:\n` is prompt. Chat: role markers, system and user turns are
        prompt, every assistant turn's content is response."""
        if self.model is AlpacaRecord:
            prompt = f"### Instruction:\n{record['instruction']}\n\n"
            if record["input"]:
                prompt += f"### Input:\n{record['input']}\n\n"
            return [(prompt + "### Response:\n", False), (record["output"], True)]
        if self.model is ChatRecord:
            pieces: list[tuple[str, bool]] = []
            prompt = ""
            for i, message in enumerate(record["messages"]):
                separator = "\n\n" if i else ""
                prompt += f"{separator}<|{message['role']}|>\n"
                if message["role"] == "assistant":
                    pieces += [(prompt, False), (message["content"], True)]
                    prompt = ""
                else:
                    prompt += message["content"]
            return pieces + [(prompt, False)] if prompt else pieces
        raise SchemaError(f"schema {self.name}: custom JSON-schema records have no prompt/response split; "
                          "fine-tune on alpaca or chat records")

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.json_schema(), sort_keys=True).encode()).hexdigest()[:16]


ALPACA = RecordSchema("alpaca", AlpacaRecord)
CHAT = RecordSchema("chat", ChatRecord)


class SchemaError(ValueError):
    """A user-supplied JSON Schema that cannot be used."""


def load_schema(spec: str | dict[str, Any], base: Path | None = None) -> RecordSchema:
    """`alpaca`, `chat`, or `{json_schema: PATH_OR_SCHEMA}` from a recipe."""
    if spec == "alpaca":
        return ALPACA
    if spec == "chat":
        return CHAT
    if isinstance(spec, dict) and set(spec) == {"json_schema"}:
        value = spec["json_schema"]
        where = "json_schema"
        if isinstance(value, str):
            path = Path(value) if Path(value).is_absolute() or base is None else base / value
            where = str(path)
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise SchemaError(f"{where}: cannot read a JSON Schema: {exc}") from None
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: a JSON Schema is an object")
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.exceptions.SchemaError as exc:
            raise SchemaError(f"{where}: not a valid JSON Schema: {exc.message}") from None
        if value.get("type") != "object":
            raise SchemaError(f"{where}: records are JSON objects; the schema's type must be \"object\"")
        digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]
        return RecordSchema(f"json_schema:{digest}", user_schema=value)
    raise SchemaError(f"schema: expected 'alpaca', 'chat' or {{json_schema: PATH}}, got {spec!r}")


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
