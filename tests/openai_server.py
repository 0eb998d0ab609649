"""A real loopback HTTP server that speaks the OpenAI chat-completions API, for tests.

It is a plain `http.server.ThreadingHTTPServer`, so clients exercise their real transport: sockets,
status codes, headers, timeouts and concurrency. What it answers is chosen per request by a
*directive*, a token like `[[error500]]` in the content of the last user message:

    valid             finish_reason "stop", content a JSON object (the default when no directive is given)
    invalid_json      a cut JSON document (`{"instruction": "Name three`), finish_reason "stop"
    prose             prose without any JSON, finish_reason "stop"
    schema_violation  valid JSON missing required fields (only "instruction"), finish_reason "stop"
    truncated         a cut JSON document, finish_reason "length"
    whitespace_flood  a JSON prefix followed by thousands of newlines and spaces, finish_reason "length"
    empty             content ""
    null_content      content null
    not_json          HTTP 200 whose body is not JSON (an HTML error page from a proxy)
    no_choices        HTTP 200 with `"choices": []`
    error500          always HTTP 500
    flaky500          HTTP 500 on the first call for that prompt, then valid
    rate_limited      HTTP 429 with `Retry-After: 0` on the first call for that prompt, then valid
    slow              sleeps `slow_s` seconds, then valid
    trickle           valid, but the whole response (status line, headers, body) goes out one byte every
                      `trickle_s` seconds, as from a stalled proxy: each read gets a byte long before a
                      per-read timeout (stops when the server stops)

Unknown `[[...]]` tokens are ignored (seed documents may contain wiki links).

"valid" content follows `response_format.json_schema.schema` when the request has one: a value for
every property, strings being English sentences of 8-20 words derived from a hash of the prompt (so
different prompts give different records, and the same prompt the same record; `fake_record`
computes it), a `messages` array being one user and one assistant message. Without a schema it is
`{"instruction": ..., "input": "", "output": ...}`.

Options: `supports_json_schema=False` answers 400 (mentioning `response_format`) to any request with
a json_schema `response_format`; `require_api_key` answers 401 unless `Authorization: Bearer <key>`;
`handler` takes over chat completions (request JSON -> (status, body, headers), or None for the
default behaviour). Every request is recorded in `.requests` as (path, JSON body); `.calls(prompt)`
counts chat calls per prompt; `.max_in_flight` is the largest number of chat requests handled at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[[dict], "tuple[int, dict | str, dict] | None"]  # request JSON -> (status, body, headers)

DIRECTIVES = frozenset({
    "valid", "invalid_json", "prose", "schema_violation", "truncated", "whitespace_flood", "empty",
    "null_content", "not_json", "no_choices", "error500", "flaky500", "rate_limited", "slow", "trickle",
})
_DIRECTIVE = re.compile(r"\[\[([a-z0-9_]+)\]\]")

_ADJECTIVES = ("small", "quiet", "old", "bright", "careful", "local", "simple", "busy", "patient", "early",
               "curious", "steady", "narrow", "warm", "modern", "gentle")
_NOUNS = ("teacher", "river", "garden", "engineer", "library", "market", "student", "village", "recipe",
          "bridge", "farmer", "museum", "letter", "budget", "report", "kitchen", "station", "painter", "team",
          "forest", "doctor", "computer", "harbor", "journal")
_PLURALS = ("friends", "neighbors", "tools", "numbers", "stories", "maps", "notes", "visitors", "seeds",
            "questions", "details", "examples")
_VERBS = ("explains", "protects", "describes", "improves", "visits", "follows", "supports", "changes",
          "measures", "prepares", "shapes", "records", "connects", "organizes")
_PREPOSITIONS = ("near", "behind", "beside", "across", "around", "within", "beyond", "after", "before")
_WITH = ("with", "without", "for", "about")
_ADVERBS = ("today", "slowly", "carefully", "together", "again", "quickly", "quietly", "easily")
_ASK = ("Explain", "Describe", "Summarize", "Discuss", "Outline", "Compare")
_WH = ("how", "why", "when", "whether")
_QUESTION_FIELDS = ("instruction", "question", "prompt", "query", "task", "input_text", "user")


def _rng(*parts: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big"))


def sentence(seed: str, *, request: bool = False) -> str:
    """An English sentence of 8-20 words chosen by `seed`; an imperative request when `request`."""
    rng = _rng(seed)
    target = rng.randint(8, 20)
    words = [rng.choice(_ASK), rng.choice(_WH), "the"] if request else ["The"]
    words += [rng.choice(_ADJECTIVES), rng.choice(_NOUNS), rng.choice(_VERBS), "the", rng.choice(_NOUNS)]
    while len(words) < target:
        left = target - len(words)
        size = min(left, rng.randint(2, 4)) if left > 1 else 1
        if size == 1:
            words.append(rng.choice(_ADVERBS))
        elif size == 2:
            words += [rng.choice(_WITH), rng.choice(_PLURALS)]
        elif size == 3:
            words += [rng.choice(_PREPOSITIONS), "the", rng.choice(_NOUNS)]
        else:
            words += [rng.choice(_PREPOSITIONS), "the", rng.choice(_ADJECTIVES), rng.choice(_NOUNS)]
    return " ".join(words) + "."


def _first_type(schema: dict) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None and "properties" in schema:
        kind = "object"
    return kind


def _is_message_list(name: str, schema: dict) -> bool:
    items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
    props = items.get("properties", {})
    return name == "messages" or ("role" in props and "content" in props)


def fake_value(schema: dict, seed: str, name: str = "") -> Any:
    """A value conforming to (the common subset of) JSON Schema `schema`, derived from `seed`."""
    if "enum" in schema and schema["enum"]:
        return schema["enum"][_rng(seed, "enum").randrange(len(schema["enum"]))]
    if "const" in schema:
        return schema["const"]
    kind = _first_type(schema)
    if kind == "object":
        return {key: fake_value(sub if isinstance(sub, dict) else {}, f"{seed}/{key}", key)
                for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        if _is_message_list(name, schema):
            return [{"role": "user", "content": sentence(f"{seed}/user", request=True)},
                    {"role": "assistant", "content": sentence(f"{seed}/assistant")}]
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {"type": "string"}
        count = max(int(schema.get("minItems", 2)), 1)
        return [fake_value(items, f"{seed}/{i}", name) for i in range(count)]
    if kind == "integer":
        low, high = int(schema.get("minimum", 1)), int(schema.get("maximum", 100))
        return _rng(seed).randint(low, max(low, high))
    if kind == "number":
        return round(_rng(seed).uniform(float(schema.get("minimum", 0.0)), float(schema.get("maximum", 1.0))), 3)
    if kind == "boolean":
        return _rng(seed).random() < 0.5
    if kind == "null":
        return None
    text = sentence(seed, request=name.lower() in _QUESTION_FIELDS)
    if "maxLength" in schema:
        text = text[: int(schema["maxLength"])].rstrip() or "x"
    return text


def fake_record(prompt: str, schema: dict | None = None) -> dict:
    """The object a "valid" answer to `prompt` carries (as `[[valid]]` gives it), with or without a schema."""
    if schema and schema.get("properties"):
        return fake_value(schema, prompt)
    return {"instruction": sentence(f"{prompt}/instruction", request=True), "input": "",
            "output": sentence(f"{prompt}/output")}


def last_user_content(body: dict) -> str:
    """The content of the last user message ("" when there is none)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def directive(prompt: str) -> str:
    """The first known `[[directive]]` in `prompt`, "valid" when there is none."""
    return next((m for m in _DIRECTIVE.findall(prompt) if m in DIRECTIVES), "valid")


def _error(status: int, message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


class FakeOpenAIServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 (a free port); see the module docstring."""

    def __init__(
        self,
        *,
        supports_json_schema: bool = True,
        require_api_key: str | None = None,
        slow_s: float = 2.0,
        trickle_s: float = 0.05,
        handler: Handler | None = None,
        model: str = "fake-model",
    ) -> None:
        self.supports_json_schema = supports_json_schema
        self.require_api_key = require_api_key
        self.slow_s = slow_s
        self.trickle_s = trickle_s
        self.handler = handler
        self.model = model
        self._lock = threading.Lock()
        self._requests: list[tuple[str, Any]] = []
        self._headers: list[dict[str, str]] = []
        self._calls: Counter[str] = Counter()
        self._served: Counter[tuple[str, str]] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()  # ends trickling answers, so no handler outlives the server

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        server = self

        class _Handler(_RequestHandler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- what was received --------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, Any]]:
        """Every request received, in arrival order: (path, JSON body or None)."""
        with self._lock:
            return list(self._requests)

    @property
    def headers(self) -> list[dict[str, str]]:
        """The headers of every request, parallel to `requests` (names lower-cased)."""
        with self._lock:
            return list(self._headers)

    @property
    def chat_bodies(self) -> list[dict]:
        """The JSON bodies of the chat-completions calls, in arrival order."""
        return [body for path, body in self.requests if path.endswith("/chat/completions")]

    def calls(self, prompt: str | None = None) -> int:
        """Chat calls whose last user message was `prompt` (all chat calls when None)."""
        with self._lock:
            return sum(self._calls.values()) if prompt is None else self._calls[prompt]

    def reset(self) -> None:
        """Forget recorded requests, counts and flaky/rate-limit state."""
        with self._lock:
            self._requests.clear()
            self._headers.clear()
            self._calls.clear()
            self._served.clear()
            self.max_in_flight = self.in_flight

    # -- behaviour ----------------------------------------------------------------------------------

    def _record(self, path: str, body: Any, headers: dict[str, str]) -> None:
        with self._lock:
            self._requests.append((path, body))
            self._headers.append(headers)
            if path.endswith("/chat/completions") and isinstance(body, dict):
                self._calls[last_user_content(body)] += 1

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _authorized(self, headers: dict[str, str]) -> bool:
        return self.require_api_key is None or headers.get("authorization") == f"Bearer {self.require_api_key}"

    def chat_completion(self, body: dict) -> tuple[int, dict | str, dict]:
        """(status, body, headers) for one chat-completions request (auth is checked by the caller)."""
        if self.handler is not None:
            custom = self.handler(body)
            if custom is not None:
                return custom
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema" and not self.supports_json_schema:
            return 400, _error(400, "response_format of type json_schema is not supported by this server",
                               "BadRequestError", "response_format"), {}
        prompt = last_user_content(body)
        name = directive(prompt)
        with self._lock:
            self._served[(name, prompt)] += 1
            first = self._served[(name, prompt)] == 1
        schema = (response_format.get("json_schema") or {}).get("schema")
        record = fake_record(prompt, schema if isinstance(schema, dict) else None)
        valid = json.dumps(record)
        if name == "error500" or (name == "flaky500" and first):
            return 500, _error(500, "Internal server error (fake)", "server_error"), {}
        if name == "rate_limited" and first:
            return 429, _error(429, "Rate limit reached (fake)", "rate_limit_error"), {"Retry-After": "0"}
        if name == "slow":
            time.sleep(self.slow_s)
        if name == "not_json":
            return 200, "<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"}
        if name == "no_choices":
            return 200, self._completion(body, None, None, choices=[]), {}
        content, finish = {
            "invalid_json": ('{"instruction": "Name three', "stop"),
            "prose": ("Sure! Here is a question about rivers and the people who live near them.", "stop"),
            "schema_violation": (json.dumps({"instruction": sentence(f"{prompt}/instruction", request=True)}),
                                 "stop"),
            "truncated": (valid[: max(1, len(valid) // 2)], "length"),
            "whitespace_flood": (valid[: (valid.find(",") + 1) or len(valid) // 2] + "\n" * 3000 + " " * 3000,
                                 "length"),
            "empty": ("", "stop"),
            "null_content": (None, "stop"),
        }.get(name, (valid, "stop"))
        return 200, self._completion(body, content, finish), {}

    def _completion(self, request: dict, content: str | None, finish: str | None, choices: list | None = None) -> dict:
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.get("messages") or []
                            if isinstance(m, dict))
        completion_tokens = len(content.split()) if content else 0
        if choices is None:
            choices = [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]
        return {
            "id": f"chatcmpl-{hashlib.sha256(repr((request, time.time_ns())).encode()).hexdigest()[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model") or self.model,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    owner: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, status: int, body: dict | str, headers: dict | None = None, trickle_s: float = 0.0) -> None:
        """The response at once, or with `trickle_s` one byte at a time (status line and headers included)."""
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        socket_writer, self.wfile = self.wfile, io.BytesIO()  # collect the head that send_* would write
        try:
            self.send_response(status)
            headers = dict(headers or {})
            headers.setdefault("Content-Type", "application/json")
            for key, value in headers.items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            response = self.wfile.getvalue() + data
        finally:
            self.wfile = socket_writer
        try:
            if not trickle_s:
                self.wfile.write(response)
                return
            for i in range(len(response)):
                if self.owner._stopped.wait(trickle_s):
                    self.close_connection = True
                    return
                self.wfile.write(response[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a timeout): nothing to tell it

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def do_GET(self) -> None:  # noqa: N802
        self.owner._record(self.path, None, self._headers())
        if not self.owner._authorized(self._headers()):
            return self._send(401, _error(401, "Incorrect API key provided", "invalid_request_error"))
        if self.path.rstrip("/") == "/v1/models":
            return self._send(200, {"object": "list", "data": [
                {"id": self.owner.model, "object": "model", "created": 0, "owned_by": "fake"}]})
        self._send(404, _error(404, f"no route {self.path}", "not_found_error"))

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = self._headers()
        self.owner._record(self.path, body, headers)
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send(404, _error(404, f"no route {self.path}", "not_found_error"))
        if not self.owner._authorized(headers):
            return self._send(401, _error(401, "Incorrect API key provided", "invalid_request_error"))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._send(400, _error(400, "body must be a JSON object with messages", "BadRequestError"))
        self.owner._enter()
        try:
            status, payload, extra = self.owner.chat_completion(body)
        finally:
            self.owner._leave()
        trickle_s = self.owner.trickle_s if directive(last_user_content(body)) == "trickle" else 0.0
        self._send(status, payload, extra, trickle_s)
