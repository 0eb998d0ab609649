"""Ingestion: every format reads, every bad-input class becomes a reject naming file and line."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard
from conftest import doc, write_jsonl

from curation.ingest import RAW_PREVIEW_BYTES, IngestError, InputSpec, preflight, read_input, resolve_files
from curation.pipeline import plan_ingest
from curation.recipe import Recipe, load_recipe
from curation.record import concat
from curation.steps.normalize import Normalize


def read_all(spec: InputSpec, file: str | Path, chunk_bytes: int = 1 << 20) -> tuple[pa.Table | None, list[dict], int]:
    records, rejects, lines = [], [], 0
    for chunk in read_input(spec, str(file), chunk_bytes=chunk_bytes):
        lines += chunk.lines_read
        if chunk.records is not None:
            records.append(chunk.records)
        if chunk.rejects is not None:
            rejects.extend(chunk.rejects.to_pylist())
    table = concat(records) if records else None
    return table, rejects, lines


def reasons(rejects: list[dict]) -> dict[int, str]:
    return {r["source_line"]: r["reason"].split("=", 1)[0] for r in rejects}


def test_jsonl_keeps_unknown_columns_and_derives_missing_ids(tmp_path):
    path = write_jsonl(tmp_path / "web.jsonl", [
        {"id": "a", "text": doc(1), "url": "http://a", "meta": {"lang": "en"}},
        {"text": doc(2), "url": "http://b"},
    ])
    table, rejects, lines = read_all(InputSpec(path=str(path)), path)
    assert rejects == [] and lines == 2
    assert table.column("id").to_pylist() == ["a", "web:web.jsonl:2"]
    assert table.column("source").to_pylist() == ["web", "web"]
    assert table.column("url").to_pylist() == ["http://a", "http://b"]
    assert table.column("meta").to_pylist()[0] == {"lang": "en"}
    assert table.column("origin").to_pylist() == ["human", "human"]
    assert table.column("generation").to_pylist() == [0, 0]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl(tmp_path, suffix):
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": str(i), "text": doc(i)} for i in range(5)])
    path = tmp_path / f"docs{suffix}"
    data = plain.read_bytes()
    path.write_bytes(gzip.compress(data) if suffix.endswith("gz") else zstandard.ZstdCompressor().compress(data))
    table, rejects, _ = read_all(InputSpec(path=str(path)), path)
    assert table.num_rows == 5 and not rejects
    assert table.column("source")[0].as_py() == "docs"


def test_every_bad_jsonl_line_is_a_reject_with_its_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"id": "ok1", "text": doc(1)},
        b'{"id": "trunc", "text": "no end',  # 2 malformed
        b'{"id": "u", "text": "bad \xff\xfe bytes"}',  # 3 invalid UTF-8
        b'{"id": "nul", "text": "a\x00b"}',  # 4 raw NUL byte: binary garbage
        {"id": "miss", "body": "no text"},  # 5 missing
        {"id": "num", "text": 12345},  # 6 non-string
        {"id": "empty", "text": "   \n "},  # 7 empty
        b"[1, 2, 3]",  # 8 not an object
        b"",  # 9 blank: a separator, not a record
        {"id": "gen", "text": doc(2), "generation": "two"},  # 10 bad provenance type
        {"id": "ok2", "text": doc(3)},
    ])
    table, rejects, lines = read_all(InputSpec(path=str(path)), path)
    assert table.column("id").to_pylist() == ["ok1", "ok2"]
    assert reasons(rejects) == {2: "malformed_json", 3: "invalid_utf8", 4: "nul_byte", 5: "missing_field",
                                6: "non_string_text", 7: "empty_text", 8: "not_an_object", 10: "bad_field"}
    assert lines == 10  # every non-blank line is either kept or rejected
    assert all(r["source_file"] == str(path) and r["step"] == "ingest" for r in rejects)
    malformed = next(r for r in rejects if r["source_line"] == 2)
    assert malformed["raw"] == b'{"id": "trunc", "text": "no end\n'


def test_huge_document_is_rejected_without_reading_it_whole(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [{"id": "big", "text": "x" * 5000}, {"id": "small", "text": doc(1)}])
    table, rejects, lines = read_all(InputSpec(path=str(path), max_doc_bytes=1000), path)
    assert table.column("id").to_pylist() == ["small"]
    assert reasons(rejects) == {1: "too_large"} and lines == 2
    assert len(rejects[0]["raw"]) <= 1001


def test_truncated_gzip_stream_keeps_what_was_read(tmp_path):
    plain = write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "text": doc(i, 200)} for i in range(200)]).read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(plain)[: len(gzip.compress(plain)) // 2])
    table, rejects, _ = read_all(InputSpec(path=str(path)), path)
    assert 0 < table.num_rows < 200
    assert rejects[-1]["reason"].startswith("truncated_stream=")


def test_empty_file_yields_nothing_and_does_not_fail(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    table, rejects, lines = read_all(InputSpec(path=str(path)), path)
    assert table is None and rejects == [] and lines == 0


def test_parquet_reads_rejects_null_and_empty_rows_and_keeps_nul_characters_for_normalize(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b", "c", "d"], "body": [doc(1), None, " ", "x\x00y"],
                             "score": [1.0, 2.0, 3.0, 4.0]}), path, row_group_size=2)
    spec = InputSpec(path=str(path), text_field="body", id_field="doc_id")
    table, rejects, lines = read_all(spec, path)
    assert table.column("id").to_pylist() == ["a", "d"] and table.column("score").to_pylist() == [1.0, 4.0]
    assert table.column("text").to_pylist()[1] == "x\x00y"  # a string value's NUL character: normalize's to remove
    assert reasons(rejects) == {2: "missing_field", 3: "empty_text"}
    assert lines == 4


def test_parquet_with_non_string_text_column_is_a_clear_error(tmp_path):
    path = tmp_path / "nums.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(IngestError, match=r"nums.parquet.*'text' has type int64"):
        preflight(InputSpec(path=str(path)), str(path))


def test_truncated_parquet_is_named_before_any_work(tmp_path):
    path = tmp_path / "cut.parquet"
    pq.write_table(pa.table({"text": [doc(i) for i in range(100)]}), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(IngestError, match="cut.parquet"):
        preflight(InputSpec(path=str(path)), str(path))


def test_csv_rows_and_bad_rows(tmp_path):
    path = tmp_path / "docs.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "lang"])
        writer.writerow(["a", doc(1), "en"])
        writer.writerow(["b", "multi\nline text " + doc(2), "en"])
        writer.writerow(["c", "only two fields"])
        writer.writerow(["d", "", "en"])
    with open(path, "ab") as handle:
        handle.write(b"e,bad \xff bytes,en\n")
    table, rejects, lines = read_all(InputSpec(path=str(path)), path)
    assert table.column("id").to_pylist() == ["a", "b"]
    assert table.column("lang").to_pylist() == ["en", "en"]
    assert reasons(rejects) == {5: "malformed_csv", 6: "empty_text", 7: "invalid_utf8"}
    assert lines == 5


def test_text_file_per_document_and_per_paragraph(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(doc(1), encoding="utf-8")
    (folder / "b.txt").write_text("First para line one.\nline two.\n\n\n  \nSecond para.\n\nThird.", encoding="utf-8")
    (folder / "c.txt").write_bytes(b"not \xff utf8")
    spec = InputSpec(path=str(folder), format="text")
    files = resolve_files(spec)
    assert [Path(f).name for f in files] == ["a.txt", "b.txt", "c.txt"]
    table, rejects, _ = read_all(spec, files[0])
    assert table.column("id").to_pylist() == ["texts:a.txt:1"]
    _, rejects, _ = read_all(spec, files[2])
    assert reasons(rejects) == {1: "invalid_utf8"}

    para = InputSpec(path=str(folder), format="text", text_mode="paragraph")
    table, rejects, lines = read_all(para, files[1])
    assert table.column("text").to_pylist() == ["First para line one.\nline two.", "Second para.", "Third."]
    assert table.column("_source_line").to_pylist() == [1, 6, 8]
    assert lines == 3


def test_missing_input_and_unknown_format_are_named(tmp_path):
    with pytest.raises(IngestError, match="nope.jsonl: input file does not exist"):
        resolve_files(InputSpec(path=str(tmp_path / "nope.jsonl")))
    odd = tmp_path / "data.bin"
    odd.write_bytes(b"x")
    with pytest.raises(IngestError, match="data.bin: cannot tell the format"):
        preflight(InputSpec(path=str(odd)), str(odd))


def test_hf_datasets_local_path(tmp_path):
    folder = tmp_path / "hfdata"
    folder.mkdir()
    pq.write_table(pa.table({"text": [doc(i) for i in range(3)] + [""], "label": [0, 1, 0, 1]}),
                   folder / "train.parquet")
    spec = InputSpec(path=str(folder), format="hf", source="hf_local")
    table, rejects, lines = read_all(spec, str(folder))
    assert table.num_rows == 3 and table.column("label").to_pylist() == [0, 1, 0]
    assert reasons(rejects) == {4: "empty_text"} and lines == 4
    streamed, _, _ = read_all(spec.model_copy(update={"streaming": True}), str(folder))
    assert streamed.column("text").to_pylist() == table.column("text").to_pylist()


def test_hf_hub_name_offline_fails_clearly():
    spec = InputSpec(path="some-org/some-dataset-that-is-not-here", format="hf")
    with pytest.raises(IngestError, match=r"hf:some-org/some-dataset-that-is-not-here: cannot load dataset.*offline"):
        preflight(spec, spec.path)


def test_reader_memory_is_bounded_by_chunk_size(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", [{"id": str(i), "text": doc(i, 100)} for i in range(500)])
    chunks = list(read_input(InputSpec(path=str(path)), str(path), chunk_bytes=20_000))
    assert len(chunks) > 5
    assert max(c.records.column("text").nbytes for c in chunks if c.records is not None) < 40_000
    assert sum(c.records.num_rows for c in chunks if c.records is not None) == 500


# ---- every reject keeps a bounded preview and says how large it was ----------------------------------


def test_escaped_nul_character_keeps_the_document_and_normalize_removes_it(tmp_path):
    path = write_jsonl(tmp_path / "docstrings.jsonl", [{"id": "d", "text": "Pad with \x00 bytes.\x00"}])
    assert b"\\u0000" in path.read_bytes()  # valid JSON: the escape, not a raw NUL byte
    table, rejects, _ = read_all(InputSpec(path=str(path)), path)
    assert rejects == [] and table.column("id").to_pylist() == ["d"]
    out = Normalize().apply(table)
    assert out.kept.column("text").to_pylist() == ["Pad with bytes."]
    assert out.counters["nul_chars_removed"] == 2 and out.rejected.num_rows == 0


def test_normalize_rejects_a_document_of_nul_characters_as_empty():
    table = pa.table({"id": ["n"], "text": pa.array(["\x00 \x00"], pa.large_string())})
    out = Normalize().apply(table)
    assert out.rejected.column("reason").to_pylist() == ["normalize:empty"]
    assert out.counters["nul_chars_removed"] == 2


def test_long_reject_keeps_a_preview_and_its_byte_count(tmp_path):
    line = b'{"id": "x", "text": "' + b"y" * 100_000  # malformed: no closing quote
    path = write_jsonl(tmp_path / "long.jsonl", [line])
    _, [reject], _ = read_all(InputSpec(path=str(path)), path)
    assert len(reject["raw"]) == RAW_PREVIEW_BYTES
    assert reject["reason"].startswith("malformed_json=")
    assert reject["reason"].endswith(f"; {len(line) + 1} bytes, first {RAW_PREVIEW_BYTES} kept")


def test_text_file_limit_applies_to_decompressed_bytes(tmp_path):
    path = tmp_path / "small.txt.gz"
    path.write_bytes(gzip.compress(b"word " * 1000))  # ~60 bytes on disk, 5,000 decompressed
    table, [reject], lines = read_all(InputSpec(path=str(path), format="text", max_doc_bytes=1000), path)
    assert table is None and lines == 1
    assert reject["reason"] == "too_large=5000 bytes > max_doc_bytes 1000"
    assert reject["raw"] == (b"word " * 1000)[:1001]  # as JSONL: what was read up to the limit, at most 64 KB


def test_text_file_with_raw_nul_bytes_is_a_bounded_reject(tmp_path):
    path = tmp_path / "binary.txt"
    path.write_bytes(b"ok" + bytes(200_000))
    _, [reject], _ = read_all(InputSpec(path=str(path), format="text"), path)
    assert reject["reason"] == f"nul_byte=byte 2; 200002 bytes, first {RAW_PREVIEW_BYTES} kept"
    assert len(reject["raw"]) == RAW_PREVIEW_BYTES and reject["text"] is None


def test_paragraphs_are_checked_one_by_one_with_their_lines(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(b"Intro line.\n\n" + b"long " * 400 + b"\nstill long\n \t\n"
                     + b"bad \xff utf8\n\nnul \x00 here\n\n\nLast one.")
    spec = InputSpec(path=str(path), format="text", text_mode="paragraph", max_doc_bytes=1000)
    table, rejects, lines = read_all(spec, path)
    assert table.column("text").to_pylist() == ["Intro line.", "Last one."]
    assert table.column("_source_line").to_pylist() == [1, 11]
    assert {r["source_line"]: r["reason"] for r in rejects} == {
        3: "too_large=2011 bytes > max_doc_bytes 1000", 6: "invalid_utf8=byte 4", 8: "nul_byte=byte 4"}
    assert lines == 5


@pytest.mark.parametrize("mode", ["file", "paragraph"])
def test_truncated_gzip_text_keeps_what_was_read(tmp_path, mode):
    data = b"".join(f"Paragraph {i} {doc(i, 30)}\n\n".encode() for i in range(400))
    compressed = gzip.compress(data)
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    table, rejects, _ = read_all(InputSpec(path=str(path), format="text", text_mode=mode), path)
    assert rejects[-1]["reason"].startswith("truncated_stream=EOFError")
    assert len(rejects[-1]["raw"] or b"") <= RAW_PREVIEW_BYTES
    if mode == "paragraph":
        assert 0 < table.num_rows < 400


def test_csv_row_longer_than_the_limit_is_rejected_and_the_next_rows_read(tmp_path):
    path = tmp_path / "docs.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "notes"])
        writer.writerow(["a", doc(1), "n" * 5000])
        writer.writerow(["b", doc(2), "short"])
        writer.writerow(["c", "a \x00 b", "short"])
    table, rejects, lines = read_all(InputSpec(path=str(path), max_doc_bytes=1000), path)
    assert table.column("id").to_pylist() == ["b"] and table.column("_source_line").to_pylist() == [3]
    size = len(f"a,{doc(1)},{'n' * 5000}\r\n".encode())
    assert {r["source_line"]: r["reason"] for r in rejects} == {
        2: f"too_large={size} bytes > max_doc_bytes 1000", 4: "nul_byte=field 'text'"}
    assert lines == 3


def test_columnar_reject_text_is_cut_to_the_preview_in_bytes(tmp_path):
    path = tmp_path / "wide.parquet"
    wide = "é" * 60_000  # 120,000 bytes in 60,000 characters
    pq.write_table(pa.table({"text": [wide, doc(1), wide], "failed": ["model_refused", None, None]}), path)
    spec = InputSpec(path=str(path), max_doc_bytes=100_000, reject_field="failed")
    table, rejects, _ = read_all(spec, path)
    assert table.num_rows == 1
    assert {r["source_line"]: r["reason"] for r in rejects} == {
        1: f"model_refused=120000 bytes, first {RAW_PREVIEW_BYTES} kept",
        3: "too_large=120000 bytes > max_doc_bytes 100000"}
    assert all(len(r["text"].encode()) <= RAW_PREVIEW_BYTES for r in rejects)


# ---- Hugging Face datasets as users hold them ----------------------------------------------------------


def _hf_recipe(tmp_path: Path, **entry) -> Recipe:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "hf", "inputs": [{"format": "hf", **entry}]}), encoding="utf-8")
    return load_recipe(recipe)


def _ingest_plan(recipe: Recipe) -> tuple[list[str], pa.Table]:
    files = [file for unit in plan_ingest(recipe).units for file in unit.files]
    [spec] = recipe.inputs
    tables = [read_all(spec, file)[0] for file in files]
    return files, concat(tables)


def test_hf_save_to_disk_folder_next_to_the_recipe(tmp_path, monkeypatch):
    datasets.Dataset.from_dict({"text": [doc(1), doc(2)], "label": [0, 1]}).save_to_disk(tmp_path / "hfds")
    monkeypatch.chdir(tmp_path.parent)  # the relative path is the recipe's, not the working folder's
    files, table = _ingest_plan(_hf_recipe(tmp_path, path="hfds"))
    assert files == [str((tmp_path / "hfds").resolve())]
    assert table.column("label").to_pylist() == [0, 1] and table.column("source").to_pylist() == ["hfds"] * 2
    spec = InputSpec(path=files[0], format="hf", streaming=True)
    assert read_all(spec, files[0])[0].column("text").to_pylist() == [doc(1), doc(2)]


def test_hf_saved_dataset_dict_reads_the_named_split(tmp_path):
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [doc(1)]}),
        "test": datasets.Dataset.from_dict({"text": [doc(2), doc(3)]}),
    }).save_to_disk(tmp_path / "splits")
    _, table = _ingest_plan(_hf_recipe(tmp_path, path="splits", split="test"))
    assert table.column("text").to_pylist() == [doc(2), doc(3)]
    with pytest.raises(IngestError) as caught:
        plan_ingest(_hf_recipe(tmp_path, path="splits", split="validation"))
    assert "\n" not in str(caught.value)
    assert str(caught.value).endswith("no split 'validation' (splits: train, test); set `split:` to one of them")


def test_hf_local_folder_that_load_dataset_reads_next_to_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"text": [doc(4), doc(5)]}), tmp_path / "pq" / "train.parquet")
    monkeypatch.chdir(tmp_path.parent)
    files, table = _ingest_plan(_hf_recipe(tmp_path, path="pq"))
    assert files == [str((tmp_path / "pq").resolve())]
    assert table.column("text").to_pylist() == [doc(4), doc(5)]


def test_hf_hub_name_offline_is_one_line_naming_it(tmp_path):
    with pytest.raises(IngestError) as caught:
        plan_ingest(_hf_recipe(tmp_path, path="some-org/not-here"))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("hf:some-org/not-here: cannot load dataset")
    assert "offline" in message
