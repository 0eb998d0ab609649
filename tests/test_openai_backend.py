"""OpenAIChatBackend against a real loopback server (tests/openai_server.py): what a user of a synthesis run sees."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import httpx
import pytest
from openai_server import FakeOpenAIServer, fake_record, sentence

from curation.synth.backends import ChatRequest, request_key
from curation.synth.openai_backend import OpenAIChatBackend

SCHEMA = {
    "type": "object",
    "properties": {"instruction": {"type": "string"}, "input": {"type": "string"}, "output": {"type": "string"}},
    "required": ["instruction", "input", "output"],
    "additionalProperties": False,
}
CHAT_SCHEMA = {
    "type": "object",
    "properties": {"messages": {"type": "array", "items": {
        "type": "object",
        "properties": {"role": {"type": "string", "enum": ["user", "assistant"]}, "content": {"type": "string"}},
        "required": ["role", "content"]}}},
    "required": ["messages"],
}


def req(prompt: str, **kwargs) -> ChatRequest:
    return ChatRequest(messages=(("system", "You write instruction data as JSON."), ("user", prompt)), **kwargs)


@pytest.fixture
def server():
    with FakeOpenAIServer(slow_s=0.5) as srv:
        yield srv


@pytest.fixture
def backends():
    """Makes backends (fast retries by default) and closes them after the test."""
    made: list[OpenAIChatBackend] = []

    def make(base_url: str, **kwargs) -> OpenAIChatBackend:
        options = {"model": "fake-model", "backoff_s": 0.01, "max_retries": 2, "timeout_s": 5.0, **kwargs}
        backend = OpenAIChatBackend(base_url=base_url, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def test_mixed_batch_answers_each_request_in_order(server, backends):
    prompts = ["Topic 0 [[valid]]", "Topic 1 [[empty]]", "Topic 2", "Topic 3 [[truncated]]", "Topic 4 [[valid]]",
               "Topic 5 [[invalid_json]]", "Topic 6 [[schema_violation]]", "Topic 7 [[valid]]"]
    results = backends(server.base_url, concurrency=4).chat([req(p) for p in prompts])

    assert len(results) == len(prompts) and server.calls() == len(prompts)
    for prompt in ("Topic 0 [[valid]]", "Topic 2", "Topic 4 [[valid]]", "Topic 7 [[valid]]"):
        result = results[prompts.index(prompt)]
        assert result.error is None and result.finish_reason == "stop" and not result.cached
        assert json.loads(result.text) == fake_record(prompt)  # this prompt's answer, in this slot
        assert result.usage["total_tokens"] == result.usage["prompt_tokens"] + result.usage["completion_tokens"] > 0
    instructions = {json.loads(results[i].text)["instruction"] for i in (0, 2, 4, 7)}
    assert len(instructions) == 4
    assert results[1].text == "" and results[1].error is None
    assert results[3].finish_reason == "length" and results[3].error is None
    with pytest.raises(json.JSONDecodeError):
        json.loads(results[3].text)
    assert results[5].finish_reason == "stop"
    with pytest.raises(json.JSONDecodeError):
        json.loads(results[5].text)
    assert set(json.loads(results[6].text)) == {"instruction"}


def test_request_body_carries_schema_sampling_options_and_extra_body(server, backends):
    backend = backends(server.base_url, extra_body={"top_k": 20})
    with_schema = req("Cooking [[valid]]", json_schema=SCHEMA, schema_name="instruction", seed=7, stop=("\n\n",),
                      max_tokens=300, temperature=0.2, top_p=0.9)
    chat = req("Travel", json_schema=CHAT_SCHEMA, schema_name="chat")
    plain = req("Gardening")
    results = backend.chat([with_schema, chat, plain])

    bodies = {body["messages"][-1]["content"]: body for body in server.chat_bodies}
    assert bodies["Cooking [[valid]]"] == {
        "model": "fake-model",
        "messages": [{"role": "system", "content": "You write instruction data as JSON."},
                     {"role": "user", "content": "Cooking [[valid]]"}],
        "max_tokens": 300, "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["\n\n"],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "instruction", "schema": SCHEMA, "strict": True}},
        "top_k": 20,
    }
    assert "seed" not in bodies["Travel"] and "stop" not in bodies["Travel"]
    assert bodies["Travel"]["response_format"]["json_schema"]["name"] == "chat"
    assert "response_format" not in bodies["Gardening"]

    record = json.loads(results[0].text)
    assert record == fake_record("Cooking [[valid]]", SCHEMA) and all(record[k] for k in SCHEMA["required"])
    messages = json.loads(results[1].text)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and all(m["content"] for m in messages)
    assert set(json.loads(results[2].text)) == {"instruction", "input", "output"}
    assert backend.name == f"openai:fake-model@{server.base_url}"


def test_auto_mode_falls_back_once_when_server_lacks_json_schema(backends):
    with FakeOpenAIServer(supports_json_schema=False) as server:
        backend = backends(server.base_url, json_schema="auto")
        first = backend.chat([req("Birds", json_schema=SCHEMA)])
        assert first[0].error is None and json.loads(first[0].text)["instruction"]
        bodies = server.chat_bodies
        assert len(bodies) == 2 and "response_format" in bodies[0] and "response_format" not in bodies[1]
        assert backend.json_schema_supported is False

        later = backend.chat([req(f"Fish {i}", json_schema=SCHEMA) for i in range(3)])
        assert all(c.error is None for c in later)
        assert len(server.chat_bodies) == 5
        assert all("response_format" not in body for body in server.chat_bodies[2:])

    with FakeOpenAIServer(supports_json_schema=False) as server:  # the fallback resend is not a retry
        [failed] = backends(server.base_url, max_retries=1).chat([req("Moles [[error500]]", json_schema=SCHEMA)])
        assert failed.error.startswith("http_error=500 after 2 attempts") and server.calls() == 3


def test_auto_mode_keeps_schema_when_supported(server, backends):
    backend = backends(server.base_url, json_schema="auto")
    assert backend.chat([req("Bees", json_schema=SCHEMA)])[0].error is None
    assert server.calls() == 1 and backend.json_schema_supported


def test_always_mode_reports_the_400_and_never_mode_omits_the_schema(backends):
    with FakeOpenAIServer(supports_json_schema=False) as server:
        [result] = backends(server.base_url, json_schema="always").chat([req("Cats", json_schema=SCHEMA)])
        assert result.text is None and result.error.startswith("http_error=400: ")
        assert "response_format" in result.error and server.calls() == 1

        [result] = backends(server.base_url, json_schema="never").chat([req("Dogs", json_schema=SCHEMA)])
        assert result.error is None and "response_format" not in server.chat_bodies[-1]


@pytest.mark.parametrize("max_retries", [0, 2])
def test_server_errors_are_retried_then_reported(server, backends, max_retries):
    prompt = "Broken [[error500]]"
    [result] = backends(server.base_url, max_retries=max_retries).chat([req(prompt)])
    attempts = max_retries + 1
    assert result.text is None
    assert result.error.startswith(f"http_error=500 after {attempts} attempts: ")
    assert "Internal server error" in result.error
    assert server.calls(prompt) == attempts


def test_client_errors_are_not_retried_and_api_key_is_sent(backends):
    with FakeOpenAIServer(require_api_key="sk-right") as server:
        [wrong] = backends(server.base_url, api_key="sk-wrong", max_retries=3).chat([req("Owls")])
        assert wrong.error.startswith("http_error=401: ") and server.calls("Owls") == 1

        [right] = backends(server.base_url, api_key="sk-right").chat([req("Owls")])
        assert right.error is None and server.headers[-1]["authorization"] == "Bearer sk-right"


def test_transient_failures_succeed_after_one_retry(server, backends):
    prompts = ["Wobbly [[flaky500]]", "Busy [[rate_limited]]"]
    results = backends(server.base_url).chat([req(p) for p in prompts])
    for prompt, result in zip(prompts, results):
        assert result.error is None and json.loads(result.text) == fake_record(prompt)
        assert server.calls(prompt) == 2


def test_retry_after_header_overrides_backoff(server, backends, monkeypatch):
    import curation.synth.openai_backend as module

    waits: list[float] = []
    monkeypatch.setattr(module.time, "sleep", waits.append)  # record the waits instead of taking them
    [result] = backends(server.base_url, backoff_s=5.0).chat([req("Queue [[rate_limited]]")])
    assert result.error is None and waits == [0]  # waited Retry-After: 0, not the 5 s backoff


def test_slow_server_times_out_and_succeeds_with_a_longer_timeout(server, backends):
    prompt = "Glacier [[slow]]"
    [result] = backends(server.base_url, timeout_s=0.1, max_retries=1).chat([req(prompt)])
    assert result.text is None and result.error == "timeout=0.1s deadline exceeded after 2 attempts"
    assert server.calls(prompt) == 2

    [result] = backends(server.base_url, timeout_s=3.0).chat([req(prompt)])
    assert result.error is None and json.loads(result.text) == fake_record(prompt)


def test_trickling_server_cannot_hold_a_request_past_its_deadline(backends):
    # Each byte comes long before a per-read timeout, so only a whole-request deadline ends the request;
    # the bound is generous (5x the deadline) and far below the ~37 s the whole trickled answer (~740 bytes) takes.
    deadline_s, bound_s = 1.0, 5.0
    with FakeOpenAIServer(trickle_s=0.05) as server:
        backend = backends(server.base_url, timeout_s=deadline_s, max_retries=0)
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.extend(backend.chat([req("Drip [[trickle]]")])))
        worker.start()
        worker.join(timeout=bound_s)
        assert not worker.is_alive(), f"a trickling answer held the request past {bound_s:g} s"
    [result] = outcome
    assert result.text is None and result.error == "timeout=1s deadline exceeded after 1 attempts"
    assert server.calls("Drip [[trickle]]") == 1


def test_connection_refused_is_a_connection_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with OpenAIChatBackend(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, backoff_s=0.01) as b:
        [result] = b.chat([req("Anyone there?")])
    assert result.text is None and result.error.startswith("connection_error=")
    assert "after 2 attempts" in result.error


def test_length_cut_output_is_passed_through_unaltered(server, backends):
    results = backends(server.base_url).chat([req("Long [[truncated]]"), req("Spaces [[whitespace_flood]]")])
    assert all(r.error is None and r.finish_reason == "length" for r in results)
    full = json.dumps(fake_record("Long [[truncated]]"))
    assert results[0].text == full[: len(full) // 2]
    flood = results[1].text
    assert flood.startswith("{") and flood.endswith(" " * 3000) and "\n" * 3000 in flood


def test_unusable_responses_are_bad_response_and_not_retried(backends):
    def handler(body: dict):
        if "[[no_message]]" in body["messages"][-1]["content"]:
            return 200, {"choices": [{"index": 0, "finish_reason": "stop"}]}, {}
        return None  # default behaviour

    with FakeOpenAIServer(handler=handler) as server:
        prompts = ["A [[null_content]]", "B [[not_json]]", "C [[no_choices]]", "D [[no_message]]", "E [[empty]]"]
        results = backends(server.base_url).chat([req(p) for p in prompts])
        assert results[0].error == "bad_response=content is null" and results[0].text is None
        assert results[1].error.startswith("bad_response=not JSON: <html>")
        assert results[2].error == "bad_response=no choices"
        assert results[3].error == "bad_response=no message.content"
        assert results[4].error is None and results[4].text == ""
        assert all(server.calls(p) == 1 for p in prompts)


def test_cache_rerun_costs_nothing_for_successes_and_retries_errors(server, backends, tmp_path):
    cache = tmp_path / "cache"
    requests = [req("Alpha", json_schema=SCHEMA), req("Beta", temperature=0.9), req("Gamma [[truncated]]"),
                req("Delta [[error500]]")]
    first = backends(server.base_url, cache_dir=cache).chat(requests)
    assert [c.cached for c in first] == [False] * 4 and first[3].error

    files = sorted(cache.rglob("*.json"))
    assert len(files) == 3 and not list(cache.rglob("*.tmp"))
    for path in files:
        entry = json.loads(path.read_text())
        assert path.stem == request_key(server.base_url, "fake-model", entry["request"])
        assert path.parent.name == path.stem[:2]
        assert entry["response"]["choices"][0]["message"]["content"]

    server.reset()
    second = backends(server.base_url, cache_dir=cache).chat(requests)  # a new process, the same cache
    assert [c.cached for c in second] == [True, True, True, False]
    for old, new in zip(first[:3], second[:3]):
        assert (new.text, new.finish_reason, new.usage, new.error) == (old.text, old.finish_reason, old.usage, None)
    assert server.calls() == 3 and server.calls("Delta [[error500]]") == 3  # only the error was asked again
    assert second[3].error.startswith("http_error=500 after 3 attempts")

    [changed] = backends(server.base_url, cache_dir=cache).chat([req("Beta", temperature=0.5)])
    assert not changed.cached and server.calls("Beta") == 1  # a different request is a different key


def test_cache_after_outage_pays_only_for_what_failed(backends, tmp_path):
    outage = threading.Event()

    def handler(body: dict):
        if outage.is_set() and "down" in body["messages"][-1]["content"]:
            return 503, {"error": {"message": "overloaded"}}, {}
        return None

    with FakeOpenAIServer(handler=handler) as server:
        requests = [req("up 1"), req("down 2"), req("up 3"), req("down 4")]
        outage.set()
        first = backends(server.base_url, cache_dir=tmp_path, max_retries=1).chat(requests)
        assert [c.error is None for c in first] == [True, False, True, False]
        assert first[1].error.startswith("http_error=503 after 2 attempts: ")

        outage.clear()
        server.reset()
        second = backends(server.base_url, cache_dir=tmp_path).chat(requests)
        assert all(c.error is None for c in second)
        assert [c.cached for c in second] == [True, False, True, False]
        assert server.calls() == 2


def test_cache_keys_on_the_request_as_asked_despite_fallback(backends, tmp_path):
    with FakeOpenAIServer(supports_json_schema=False) as server:
        [first] = backends(server.base_url, cache_dir=tmp_path).chat([req("Kites", json_schema=SCHEMA)])
        assert first.error is None and server.calls() == 2
        [entry] = [json.loads(p.read_text()) for p in Path(tmp_path).rglob("*.json")]
        assert "response_format" in entry["request"]

        [again] = backends(server.base_url, cache_dir=tmp_path).chat([req("Kites", json_schema=SCHEMA)])
        assert again.cached and again.text == first.text and server.calls() == 2


def test_concurrency_is_bounded_even_across_threads(backends):
    with FakeOpenAIServer(slow_s=0.25) as server:
        backend = backends(server.base_url, concurrency=2, timeout_s=5.0)
        outputs: list = []

        def run(tag: str) -> None:
            outputs.extend(backend.chat([req(f"{tag} {i} [[slow]]") for i in range(3)]))

        threads = [threading.Thread(target=run, args=(tag,)) for tag in ("left", "right")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(outputs) == 6 and all(c.error is None for c in outputs)
        assert server.max_in_flight == 2


def test_closed_backend_refuses_work(server):
    with OpenAIChatBackend(base_url=server.base_url + "/", model="fake-model") as backend:
        assert backend.name == f"openai:fake-model@{server.base_url}"
        assert backend.chat([req("x")])[0].error is None
    with pytest.raises(RuntimeError):
        backend.chat([req("y")])


def test_fake_server_models_route_and_distinct_realistic_records(server):
    models = httpx.get(f"{server.base_url}/models").json()
    assert models["data"][0]["id"] == "fake-model"

    records = [fake_record(f"Seed document {i}", SCHEMA) for i in range(200)]
    assert len({r["instruction"] for r in records}) == 200 and len({r["output"] for r in records}) == 200
    for i in range(200):
        words = sentence(f"s{i}").split()
        assert 8 <= len(words) <= 20 and words[0][0].isupper() and words[-1].endswith(".")
    # unknown [[tokens]] (wiki links in seed text) do not change behaviour
    wiki = {"model": "m", "messages": [{"role": "user", "content": "See [[paris]] and [[new_york]]"}]}
    response = httpx.post(f"{server.base_url}/chat/completions", json=wiki)
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] == "stop"
