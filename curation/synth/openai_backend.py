"""A `ChatBackend` for any server that speaks the OpenAI chat-completions API (vLLM, llama.cpp, TGI, OpenAI).

Why it looks the way it does:
- Synthesis sends thousands of requests; a single failure must become a counted reject, not a crashed
  run. So `chat` never raises for one request: transport and protocol failures land in
  `Completion.error` as `key=detail`, the key being the reject reason (`http_error`, `timeout`,
  `connection_error`, `bad_response`).
- A request has a deadline: `timeout_s` from sending it to the last byte of the answer, whatever the
  phase (connecting, waiting, reading). Per-read socket timeouts cannot give that: a server or proxy
  that trickles bytes restarts them with every byte. So the requests run on one asyncio event loop
  (a daemon thread), which cancels a request at its deadline; a request past it is a `timeout`.
- Servers are overloaded or restarted mid-run. Retryable failures (408, 409, 429, 5xx, timeouts,
  connection errors) are retried with capped exponential backoff and jitter, honouring `Retry-After`
  on 429/503; client errors (400, 401, 404...) are not, since resending cannot fix them.
- Not every server supports `response_format={"type": "json_schema", ...}`. In "auto" mode the first
  400 that complains about it switches it off for this backend (for all threads) and the request is
  resent without it; the caller's schema check still rejects what does not conform.
- Runs must be resumable and cheap to rerun: with `cache_dir`, every successful answer is stored on
  disk, keyed on the exact request body as the caller asked for it, and a rerun pays only for what
  failed. This holds for sampled requests too: with temperature > 0 and no seed a rerun reuses the
  earlier sample *by design*; to draw a new sample change the request (e.g. its seed) or the cache
  folder. Identical requests in one batch share one cache entry.
- Concurrency is bounded: one shared `httpx.AsyncClient` and one thread pool of `concurrency` workers
  (each waits for its request on the event loop) for the backend's lifetime, so at most `concurrency`
  requests are in flight even if `chat` is called from several threads at once.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import httpx

from curation.synth.backends import ChatRequest, Completion, request_key

log = logging.getLogger(__name__)

SchemaMode = Literal["auto", "always", "never"]

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# Statuses with which a server says "I do not understand response_format" (vLLM and OpenAI say 400;
# some FastAPI-based servers validate the body and say 422).
_SCHEMA_REJECT_STATUS = frozenset({400, 422})
_BODY_SNIPPET = 200


class OpenAIChatBackend:
    """Chat requests against `{base_url}/chat/completions`; see the module docstring.

    Use as a context manager (or call `close()`) to release the HTTP client, the event loop and the worker
    threads.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        concurrency: int = 8,
        json_schema: SchemaMode = "auto",
        cache_dir: str | Path | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if json_schema not in ("auto", "always", "never"):
            raise ValueError(f"json_schema must be 'auto', 'always' or 'never', not {json_schema!r}")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}@{self.base_url}"
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.concurrency = int(concurrency)
        self.json_schema = json_schema
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.extra_body = dict(extra_body or {})
        self._url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="openai-chat-io", daemon=True)
        self._loop_thread.start()
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=None,  # `_post`'s deadline bounds every phase, waiting for a free connection included
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-chat")
        self._lock = threading.Lock()
        self._schema_unsupported = False
        self._closed = False

    # -- public API -------------------------------------------------------------------------------

    @property
    def json_schema_supported(self) -> bool:
        """False once an "auto" backend has learned that the server rejects `response_format`."""
        with self._lock:
            return not self._schema_unsupported

    def chat(self, requests: list[ChatRequest]) -> list[Completion]:
        """One Completion per request, in order; at most `concurrency` requests in flight."""
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        return list(self._pool.map(self._one, requests))

    def close(self) -> None:
        """Wait for running requests, then release the worker threads, the HTTP client and the event loop."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()

    def __enter__(self) -> OpenAIChatBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body the caller's request asks for (also the cache key's content).

        `extra_body` is merged last, so it can add server-specific options (vLLM's `top_k`,
        `repetition_penalty`, `guided_json`...) or override a field.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": role, "content": content} for role, content in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        if request.json_schema is not None and self.json_schema != "never":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.json_schema, "strict": True},
            }
        body.update(self.extra_body)
        return body

    def cache_path(self, body: dict[str, Any]) -> Path | None:
        """Where the answer to `body` is (or would be) cached; None without `cache_dir`."""
        if self.cache_dir is None:
            return None
        key = request_key(self.base_url, self.model, body)
        return self.cache_dir / key[:2] / f"{key}.json"

    # -- one request ------------------------------------------------------------------------------

    def _one(self, request: ChatRequest) -> Completion:
        body = self.request_body(request)
        path = self.cache_path(body)
        if path is not None:
            cached = self._read_cache(path)
            if cached is not None:
                return cached
        completion, data = self._send(body)
        if path is not None and data is not None and completion.error is None:
            try:
                self._write_cache(path, body, data)
            except OSError as exc:  # a full disk must not lose the answer we already paid for
                log.warning("could not cache %s: %s", path, exc)
        return completion

    def _send(self, body: dict[str, Any]) -> tuple[Completion, Any]:
        """POST with retries: (completion, the response JSON when it was usable, else None)."""
        attempts = 0
        while True:
            payload = body
            if self.json_schema == "auto" and "response_format" in body and not self.json_schema_supported:
                payload = {k: v for k, v in body.items() if k != "response_format"}
            attempts += 1
            retry_after: float | None = None
            try:
                response = self._post(payload)
            except asyncio.TimeoutError:
                failure = f"timeout={self.timeout_s:g}s deadline exceeded after {attempts} attempts"
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                failure = f"connection_error={type(exc).__name__} after {attempts} attempts: {exc}"
            except httpx.HTTPError as exc:  # a bad URL or scheme, a local protocol error: resending won't help
                return Completion(None, error=f"connection_error={type(exc).__name__}: {exc}"), None
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return _parse(response)
                snippet = response.text[:_BODY_SNIPPET]
                if payload is body and self._rejects_schema(status, response.text, payload):
                    with self._lock:
                        first = not self._schema_unsupported
                        self._schema_unsupported = True
                    if first:
                        log.warning("%s rejected response_format (HTTP %d: %s); sending requests without it",
                                    self.name, status, snippet)
                    attempts -= 1  # the fallback resend is free: it is not a retry of a failure
                    continue
                if status not in RETRYABLE_STATUS:
                    return Completion(None, error=f"http_error={status}: {snippet}"), None
                failure = f"http_error={status} after {attempts} attempts: {snippet}"
                if status in (429, 503):
                    retry_after = _retry_after_s(response.headers.get("Retry-After"))
            if attempts > self.max_retries:
                return Completion(None, error=failure), None
            time.sleep(self._delay(attempts - 1, retry_after))

    def _post(self, payload: dict[str, Any]) -> httpx.Response:
        """One POST with its answer read in full, cancelled `timeout_s` after it started (asyncio.TimeoutError)."""
        post = asyncio.wait_for(self._client.post(self._url, json=payload), self.timeout_s)
        return asyncio.run_coroutine_threadsafe(post, self._loop).result()

    def _rejects_schema(self, status: int, text: str, payload: dict[str, Any]) -> bool:
        """An "auto" request whose `response_format` the server refused."""
        return (
            self.json_schema == "auto"
            and "response_format" in payload
            and status in _SCHEMA_REJECT_STATUS
            and ("response_format" in text or "json_schema" in text)
        )

    def _delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number `retry` (0-based): `Retry-After`, else backoff with jitter."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        base = min(self.backoff_s * 2**retry, self.max_backoff_s)
        return min(base * random.uniform(0.75, 1.25), self.max_backoff_s)

    # -- cache ------------------------------------------------------------------------------------

    def _read_cache(self, path: Path) -> Completion | None:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            completion = _completion_from(entry["response"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or unreadable (a torn write from another tool): ask the server again
        if completion.error is not None:
            return None
        completion.cached = True
        return completion

    def _write_cache(self, path: Path, body: dict[str, Any], data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        entry = {"base_url": self.base_url, "model": self.model, "request": body, "response": data}
        tmp.write_text(json.dumps(entry, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)


def _parse(response: httpx.Response) -> tuple[Completion, Any]:
    """A 2xx response as a Completion: (completion, the JSON when usable, else None)."""
    try:
        data = response.json()
    except ValueError:
        return Completion(None, error=f"bad_response=not JSON: {response.text[:_BODY_SNIPPET]}"), None
    completion = _completion_from(data)
    return completion, (data if completion.error is None else None)


def _completion_from(data: Any) -> Completion:
    """`choices[0].message.content` and friends; `bad_response=...` when they are missing."""
    if not isinstance(data, dict):
        return Completion(None, error="bad_response=not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return Completion(None, error="bad_response=no choices")
    choice = choices[0]
    finish = choice.get("finish_reason")
    finish_reason = finish if isinstance(finish, str) else None
    message = choice.get("message")
    if not isinstance(message, dict) or "content" not in message:
        return Completion(None, finish_reason=finish_reason, error="bad_response=no message.content")
    content = message["content"]
    if content is None:
        return Completion(None, finish_reason=finish_reason, error="bad_response=content is null")
    if not isinstance(content, str):
        return Completion(None, finish_reason=finish_reason, error="bad_response=content is not a string")
    usage = data.get("usage")
    counts = (
        {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
        if isinstance(usage, dict)
        else {}
    )
    return Completion(content, finish_reason=finish_reason, usage=counts)


def _retry_after_s(value: str | None) -> float | None:
    """`Retry-After` as seconds (it is either a number of seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
