"""Instruction records as an input (`records: alpaca | chat`): each line or row is validated by its schema, its
text is the schema's rendering, and `curate run` publishes a version fine-tuning reads."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TWO_TURNS, write_jsonl
from test_ingest import read_all

from curation.ingest import IngestError, InputSpec, preflight
from curation.recipe import RecipeError, parse_recipe
from curation.store import VersionStore
from curation.synth.schemas import ALPACA, CHAT
from training.model import IGNORE_INDEX
from training.sft import examples_from_version
from training.tokenizer import EOT

SUMMARY = {"instruction": "Name the river.", "input": "The river ran past the mill.", "output": "The river."}
GREETING = {"instruction": "Say where people met.", "output": "At the old mill, each morning."}


@pytest.fixture(scope="module")
def tok(instruction_tok):
    return instruction_tok


def test_alpaca_lines_become_records_with_the_instruction_columns(tmp_path):
    path = write_jsonl(tmp_path / "dolly.jsonl", [
        {"id": "s1", "task_type": "summarize", **SUMMARY},
        {**GREETING, "origin": "synthetic", "generation": 1, "generator": "gpt:demo"},
    ])
    table, rejects, lines = read_all(InputSpec(path=str(path), records="alpaca"), path)
    assert rejects == [] and lines == 2
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["s1", "dolly:dolly.jsonl:2"]
    assert [r["text"] for r in rows] == [ALPACA.render(SUMMARY), ALPACA.render({**GREETING, "input": ""})]
    assert [r["schema"] for r in rows] == ["alpaca", "alpaca"]
    assert [r["task_type"] for r in rows] == ["summarize", "dolly"]  # else the input's source name
    assert json.loads(rows[1]["record"]) == {**GREETING, "input": ""}
    assert (rows[0]["instruction"], rows[0]["input"], rows[0]["output"]) == tuple(SUMMARY.values())
    assert [(r["origin"], r["generation"], r["generator"]) for r in rows] == [
        ("human", 0, None), ("synthetic", 1, "gpt:demo")]


def test_a_chat_record_renders_as_chat_renders(tmp_path):
    unicode_turns = {"messages": [{"role": "user", "content": "Où est le moulin ?"},
                                  {"role": "assistant", "content": "Près de la rivière."}]}
    path = write_jsonl(tmp_path / "talk.jsonl", [TWO_TURNS, unicode_turns])
    table, rejects, _ = read_all(InputSpec(path=str(path), records="chat"), path)
    assert rejects == []
    rows = table.to_pylist()
    assert [r["text"] for r in rows] == [CHAT.render(TWO_TURNS), CHAT.render(unicode_turns)]
    assert rows[0]["instruction"] == "Where is the mill?\nAnd the fields?"
    assert rows[0]["output"] == "By the river.\nUnder a grey sky."
    assert json.loads(rows[0]["record"]) == TWO_TURNS and rows[0]["schema"] == "chat"
    assert "Près de la rivière." in rows[1]["record"]  # JSON kept readable (ensure_ascii=False)


def test_malformed_records_are_rejects_naming_the_field_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        SUMMARY,
        {"instruction": "Name the river."},  # 2: no output
        {"instruction": 7, "output": "Seven."},  # 3: a number as instruction
        {**SUMMARY, "category": "closed_qa"},  # 4: a key the schema does not have
        {**SUMMARY, "task_type": 3},  # 5: a task type that is not text
        {**SUMMARY, "generation": "two"},  # 6: bad provenance, as in any input
        {"text": "### Instruction:\nhi", **GREETING},  # 7: a text field is not part of a record
        GREETING,
    ])
    table, rejects, lines = read_all(InputSpec(path=str(path), records="alpaca"), path)
    assert lines == 8 and table.num_rows == 2  # every line is a record or a reject
    assert {r["source_line"]: r["reason"] for r in rejects} == {
        2: "schema=output: Field required",
        3: "schema=instruction: Input should be a valid string",
        4: "schema=category: Extra inputs are not permitted",
        5: "bad_field=task_type is int, expected str",
        6: "bad_field=generation is str, expected int",
        7: "schema=text: Extra inputs are not permitted",
    }
    by_line = {r["source_line"]: r for r in rejects}
    assert json.loads(by_line[4]["raw"]) == {**SUMMARY, "category": "closed_qa"}  # the line is kept
    assert all(r["step"] == "ingest" and r["source_file"] == str(path) for r in rejects)


def test_parquet_rows_are_records_and_a_null_is_a_value_not_given(tmp_path):
    path = tmp_path / "alpaca.parquet"
    pq.write_table(pa.table({
        "instruction": ["Name the river.", "Say where people met.", "Name the mill."],
        "input": [SUMMARY["input"], None, ""],
        "output": [SUMMARY["output"], GREETING["output"], None],
        "task_type": ["summarize", None, "qa"],
        "failed": [None, None, None],
    }), path)
    spec = InputSpec(path=str(path), records="alpaca", reject_field="failed")
    preflight(spec, str(path))  # no `text` column is needed
    table, rejects, lines = read_all(spec, path)
    assert lines == 3
    assert table.column("text").to_pylist() == [ALPACA.render(SUMMARY), ALPACA.render({**GREETING, "input": ""})]
    assert table.column("task_type").to_pylist() == ["summarize", "alpaca"]
    assert [(r["source_line"], r["reason"]) for r in rejects] == [(3, "schema=output: Field required")]
    assert json.loads(rejects[0]["raw"]) == {"instruction": "Name the mill.", "input": "", "task_type": "qa"}


def test_parquet_rows_rejected_upstream_stay_rejects(tmp_path):
    path = tmp_path / "attempts.parquet"
    truncated = "generate:truncated=finish_reason length"
    pq.write_table(pa.table({"id": ["a1", "a2"], "instruction": ["Name the river.", None],
                             "output": ["The river.", None], "failed": [None, truncated]}), path)
    table, rejects, _ = read_all(InputSpec(path=str(path), records="alpaca", reject_field="failed"), path)
    assert table.column("id").to_pylist() == ["a1"] and "failed" not in table.column_names
    assert [(r["id"], r["source_line"], r["reason"]) for r in rejects] == [
        ("a2", 2, truncated)]


def test_parquet_chat_records(tmp_path):
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"id": ["c1"], "messages": [TWO_TURNS["messages"]]}), path)
    table, rejects, _ = read_all(InputSpec(path=str(path), records="chat"), path)
    assert rejects == [] and table.column("id").to_pylist() == ["c1"]
    assert table.column("text").to_pylist() == [CHAT.render(TWO_TURNS)]


def test_csv_alpaca_rows_are_records(tmp_path):
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "input", "output", "task_type"])
        writer.writerow([*SUMMARY.values(), "summarize"])
        writer.writerow([GREETING["instruction"], "", GREETING["output"], ""])
        writer.writerow(["", "", "An answer to nothing.", "qa"])
    table, rejects, _ = read_all(InputSpec(path=str(path), records="alpaca"), path)
    assert table.column("text").to_pylist() == [ALPACA.render(SUMMARY), ALPACA.render({**GREETING, "input": ""})]
    assert table.column("task_type").to_pylist() == ["summarize", "rows"]
    assert [(r["source_line"], r["reason"]) for r in rejects] == [
        (4, "schema=instruction: String should have at least 1 character")]


def test_formats_that_cannot_hold_records_are_named_before_any_work(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("one paragraph\n")
    with pytest.raises(IngestError, match=r"notes.txt: `records: alpaca` reads JSONL, Parquet or CSV"):
        preflight(InputSpec(path=str(text), records="alpaca"), str(text))
    table = tmp_path / "chat.csv"
    table.write_text("messages\nhi\n")
    with pytest.raises(IngestError, match=r"chat.csv: `records: chat` reads JSONL or Parquet"):
        preflight(InputSpec(path=str(table), records="chat"), str(table))
    with pytest.raises(RecipeError, match=r"`records: chat` reads JSONL or Parquet"):
        parse_recipe({"inputs": [{"path": "talk.csv", "format": "csv", "records": "chat"}]})


def test_records_and_text_field_together_are_refused_at_load():
    with pytest.raises(RecipeError) as info:
        parse_recipe({"inputs": [{"path": "dolly.jsonl", "records": "alpaca", "text_field": "body"}]})
    message = str(info.value)
    assert "\n" not in message
    assert "dolly.jsonl" in message and "records: alpaca" in message and "text_field: body" in message
    with pytest.raises(RecipeError, match=r"inputs\[0\].records"):
        parse_recipe({"inputs": [{"path": "dolly.jsonl", "records": "sharegpt"}]})
    # A recipe written back in full (as `curate tune` writes its candidates) gives the default text_field: allowed.
    recipe = parse_recipe({"inputs": [{"path": "dolly.jsonl", "records": "alpaca"}]})
    assert parse_recipe(recipe.model_dump(mode="json", by_alias=True)).inputs == recipe.inputs


def test_a_recipe_without_records_keeps_its_content_hash():
    """Versions published before the option existed are still found by their recipe's hash (`curate ablate
    --steps` reuses a stage's version by it): the hash below is what this recipe had before `records` existed."""
    plain = parse_recipe({"inputs": [{"path": "x.jsonl", "source": "a"}, {"path": "y.parquet", "reject_field": "f"}],
                          "steps": [{"step": "normalize"}, {"step": "exact_dedup"}]})
    assert plain.content_hash() == "951161b9a0edc6c2a9df00c84864cdb7e81bd46608b87d2bd11bffa07e6f1e7a"
    records = parse_recipe({"inputs": [{"path": "x.jsonl", "source": "a", "records": "alpaca"},
                                       {"path": "y.parquet", "reject_field": "f"}],
                            "steps": [{"step": "normalize"}, {"step": "exact_dedup"}]})
    assert records.content_hash() != plain.content_hash()


@pytest.mark.e2e
def test_curate_run_publishes_a_version_fine_tuning_reads(tmp_path, tok, prefect_harness):
    from flows.curate import run_curation

    path = write_jsonl(tmp_path / "dolly.jsonl", [
        {"id": "s1", "task_type": "summarize", **SUMMARY},
        {"id": "g1", **GREETING},
        {"id": "bad", "instruction": "Name the river."},
        {"id": "s2", "task_type": "summarize", **SUMMARY},  # the same record again: deduplicated
    ])
    recipe = parse_recipe({"inputs": [{"path": str(path), "records": "alpaca"}],
                           "steps": [{"step": "exact_dedup"}]})
    manifest = run_curation(recipe, str(tmp_path / "store"), "instruct", workers=1)
    assert manifest["rows"] == 2 and manifest["accounting"]["ok"]
    store = VersionStore(tmp_path / "store")
    reasons = {r.split("=", 1)[0]: r for r in store.load("instruct", "rejects")["reason"]}
    assert reasons.keys() == {"schema", "exact_dedup:duplicate_of"}
    assert reasons["schema"] == "schema=output: Field required"

    data = examples_from_version(store, "instruct", "alpaca", tok, block_size=128)
    assert data.skipped == {}
    assert sorted(e.task_type for e in data.examples) == ["dolly", "summarize"]
    by_task = {e.task_type: e for e in data.examples}
    assert tok.decode(by_task["summarize"].input_ids) == ALPACA.render(SUMMARY)
    trained = tok.decode([t for t in by_task["dolly"].targets if t != IGNORE_INDEX])
    assert trained == GREETING["output"] + EOT
