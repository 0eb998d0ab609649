"""`curate synthesize` end to end against a real loopback server speaking the OpenAI chat API.

Every attempt must end as a schema-valid record or as a reject with the reason its failure deserves, no
record may be empty, and a rerun must resume without paying again for what already succeeded.
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from conftest import doc, publish_rows
from openai_server import FakeOpenAIServer

from curation.recipe import parse_recipe
from curation.store import VersionStore
from curation.synth.schemas import ALPACA, CHAT, load_schema

# What each server behaviour must become: accepted, or the reject reason's key.
EXPECTED = {
    "valid": "accepted", "flaky500": "accepted", "rate_limited": "accepted",
    "invalid_json": "generate:invalid_json", "prose": "generate:invalid_json",
    "schema_violation": "generate:schema",
    "truncated": "generate:truncated", "whitespace_flood": "generate:truncated",
    "empty": "generate:empty_output",
    "null_content": "generate:bad_response", "not_json": "generate:bad_response", "no_choices": "generate:bad_response",
    "error500": "generate:http_error",
    "slow": "generate:timeout",
}


def _recipe(server: FakeOpenAIServer, records: int, method: str = "grounded", schema: object = "alpaca",
            steps: list | None = None, **synth: object) -> object:
    return parse_recipe({"synthesize": {
        "method": method, "records": records, "schema": schema, "batch_size": 5,
        "backend": {"kind": "openai", "base_url": server.base_url, "model": "fake", "timeout_s": 0.6,
                    "max_retries": 1, "backoff_s": 0.01, "concurrency": 4},
        **({"source": "docs"} if method == "grounded" else {}), **synth}, "steps": steps or []})


def _fates(store: VersionStore, name: str) -> dict[str, str]:
    """Attempt id -> "accepted" or its reject reason's key."""
    fates = {i: "accepted" for i in store.read_table(name, columns=["id"]).column("id").to_pylist()}
    for row in store.read_table(name, "rejects", columns=["id", "reason"]).to_pylist():
        fates[row["id"]] = row["reason"].split("=", 1)[0]
    return fates


def _attempt_parents(manifest: dict) -> dict[str, list[str]]:
    work = manifest["synthesis"]["work_dir"]
    from pathlib import Path

    out = {}
    for path in sorted(Path(work).glob("batch-*.parquet")):
        for row in pq.read_table(path, columns=["id", "parent_ids"]).to_pylist():
            out[row["id"]] = row["parent_ids"]
    return out


@pytest.mark.e2e
def test_every_failure_class_is_a_counted_reject_and_a_rerun_resumes(tmp_path, prefect_harness):
    from flows.synthesize import run_synthesis

    store = VersionStore(tmp_path / "store")
    behaviours = ["valid"] * 4 + [b for b in EXPECTED if b != "valid"]
    # One sentence per document, so the whole document (and its directive) is the passage.
    publish_rows(store, "docs", [("web", f"[[{b}]] {doc(i)}") for i, b in enumerate(behaviours)],
                 ids=[f"doc-{b}-{i}" for i, b in enumerate(behaviours)])
    with FakeOpenAIServer(slow_s=1.5) as server:
        manifest = run_synthesis(_recipe(server, len(behaviours)), store.url, "syn", workers=1)
        first_calls = server.calls()

        assert manifest["accounting"]["ok"]
        assert manifest["synthesis"]["attempts"] == len(behaviours)
        assert manifest["rows"] + manifest["rejected_rows"] == len(behaviours)  # nothing lost
        parents = _attempt_parents(manifest)
        fates = _fates(store, "syn")
        assert len(fates) == len(behaviours)
        seen = {parents[i][0].split("-")[1]: fate for i, fate in fates.items()}
        assert seen == EXPECTED

        # The records are schema-valid, carry provenance, and none is empty.
        table = store.read_table("syn").to_pylist()
        for row in table:
            record = ALPACA.decode(row["record"])
            assert record["instruction"].strip() and record["output"].strip()
            assert row["text"].startswith("### Instruction:\n" + record["instruction"])
            assert (row["origin"], row["generation"], row["method"]) == ("synthetic", 1, "grounded")
            assert row["generator"] == f"openai:fake@{server.base_url}"
            assert len(row["prompt_template"]) == 16 and row["parent_ids"][0].startswith("doc-")
        assert manifest["parents"] == ["docs"]

        # Rerun under another name: every batch file is found, no request is sent again.
        again = run_synthesis(_recipe(server, len(behaviours)), store.url, "syn-again", workers=1)
        assert server.calls() == first_calls
        assert again["synthesis"]["batches_resumed"] == again["synthesis"]["batches"]
        assert again["fingerprint"] == manifest["fingerprint"]

        # A crash that lost the batch files: the request cache answers what had succeeded; only the failed
        # requests go to the server again.
        for path in (tmp_path / "store" / "synth").glob("*/batch-*.parquet"):
            path.unlink()
        before = server.calls()
        resumed = run_synthesis(_recipe(server, len(behaviours)), store.url, "syn-resumed", workers=1)
        retried = server.calls() - before
        assert resumed["fingerprint"] == manifest["fingerprint"]
        assert resumed["synthesis"]["cached_requests"] >= 4 + 2  # valid, flaky and rate-limited ones
        # Requests without a usable answer are not cached: transient failures are retried (max_retries=1: two
        # calls each), unusable 200 answers are asked once.
        assert retried == sum({"error500": 2, "slow": 2, "not_json": 1, "null_content": 1, "no_choices": 1}.values())
        assert Counter(_fates(store, "syn-resumed").values()) == Counter(fates.values())


@pytest.mark.e2e
def test_self_instruct_prompts_mix_six_seed_and_two_generated_tasks(tmp_path, prefect_harness):
    from flows.synthesize import run_synthesis

    store = VersionStore(tmp_path / "store")
    with FakeOpenAIServer() as server:
        recipe = _recipe(server, 12, method="self_instruct",
                         steps=[{"step": "rouge_novelty", "field": "instruction"}])
        manifest = run_synthesis(recipe, store.url, "si", workers=1)
        bodies = server.chat_bodies
    assert manifest["accounting"]["ok"] and manifest["rows"] >= 10
    parents = _attempt_parents(manifest)
    for job_id, ids in parents.items():
        assert len(ids) == 8
        generated = [i for i in ids if i.startswith("si-")]
        first_round = int(job_id.removeprefix("si-")) < 5
        assert len(generated) == (0 if first_round else 2), (job_id, ids)
        assert all(int(g.removeprefix("si-")) < int(job_id.removeprefix("si-")) for g in generated)
    prompt = bodies[-1]["messages"][-1]["content"]
    assert "Example 8:" in prompt and "Example 9:" not in prompt
    assert bodies[-1]["response_format"]["json_schema"]["schema"] == ALPACA.json_schema()
    rows = store.read_table("si").to_pylist()
    assert all(r["method"] == "self_instruct" and r["task_type"] == "new_task" for r in rows)


@pytest.mark.e2e
def test_chat_and_user_json_schemas_are_enforced(tmp_path, prefect_harness):
    from flows.synthesize import run_synthesis

    store = VersionStore(tmp_path / "store")
    publish_rows(store, "docs", [("web", doc(i)) for i in range(6)])
    schema_file = tmp_path / "qa.json"
    qa = {"type": "object", "required": ["question", "answer"], "additionalProperties": False,
          "properties": {"question": {"type": "string", "minLength": 5}, "answer": {"type": "string"}}}
    schema_file.write_text(json.dumps(qa))
    with FakeOpenAIServer() as server:
        chat = run_synthesis(_recipe(server, 6, schema="chat"), store.url, "chat", workers=1)
        custom = run_synthesis(_recipe(server, 6, schema={"json_schema": str(schema_file)}), store.url, "qa",
                               workers=1)
        sent = [b["response_format"]["json_schema"]["schema"] for b in server.chat_bodies]
    assert chat["rows"] == 6 and custom["rows"] == 6
    for row in store.read_table("chat").to_pylist():
        record = CHAT.decode(row["record"])
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
        assert row["instruction"] == record["messages"][0]["content"]
    user_schema = load_schema({"json_schema": str(schema_file)})
    for row in store.read_table("qa").to_pylist():
        record = user_schema.decode(row["record"])
        assert row["instruction"] == record["question"] and row["output"] == record["answer"]
    assert qa in sent and CHAT.json_schema() in sent
