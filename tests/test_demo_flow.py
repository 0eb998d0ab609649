"""End to end: `curate demo` through the real CLI, Prefect flow and process pool, checked against
the planted, labelled defects of the demo corpus."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import datasets
import pytest
from conftest import curate

from curation.demo import load_labels
from curation.store import VersionStore

# The reason key each planted ingest-level defect must be rejected with.
INGEST_DEFECTS = {"malformed_json": "malformed_json", "invalid_utf8": "invalid_utf8", "nul_byte": "nul_byte",
                  "missing_text": "missing_field", "non_string_text": "non_string_text", "empty_text": "empty_text",
                  "duplicate_id": "duplicate_id"}


def _lines(path: Path) -> int:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


@pytest.mark.e2e
def test_demo_publishes_a_fully_accounted_version(demo_run):
    store_path, _, stdout = demo_run
    assert "published demo" in stdout and "accounting ok" in stdout
    store = VersionStore(store_path)
    manifest = store.manifest("demo")
    corpus = next((store_path / "demo-inputs").glob("*"))
    inputs = [corpus / i["path"] for i in manifest["recipe"]["inputs"]]
    assert manifest["accounting"] == {**manifest["accounting"], "ok": True, "failures": []}
    # Every non-blank input line is accounted for: kept in the data or rejected with a reason.
    assert manifest["accounting"]["records_in"] == sum(_lines(p) for p in inputs)
    assert manifest["rows"] + manifest["rejected_rows"] == manifest["accounting"]["records_in"]
    ds = datasets.load_dataset("parquet", data_files=store.files("demo"), split="train")
    assert ds.num_rows == manifest["rows"]
    assert set(ds.unique("source")) == {"stdlib_docs", "kjv", "web_crawl"}


@pytest.mark.e2e
def test_demo_rejects_every_planted_ingest_defect_at_its_line(demo_run):
    store_path, _, _ = demo_run
    store = VersionStore(store_path)
    corpus = next((store_path / "demo-inputs").glob("*"))
    labels = load_labels(corpus / "labels.jsonl")
    rejects = store.read_table("demo", "rejects").to_pylist()
    web = str(corpus / "web_crawl.jsonl")
    by_line = {r["source_line"]: r for r in rejects if r["source_file"] == web and r["step"] == "ingest"}
    planted = [lab for lab in labels if lab["defect"] in INGEST_DEFECTS]
    assert planted
    for label in planted:
        reject = by_line.get(label["line"])
        assert reject is not None, f"planted {label['defect']} at line {label['line']} was not rejected"
        assert reject["reason"].split("=", 1)[0] == INGEST_DEFECTS[label["defect"]], (label, reject["reason"])
    assert len(by_line) == len(planted)  # and nothing else was rejected at ingest

    rejected_ids = {r["id"]: r for r in rejects}
    for label in labels:  # removed: by the length rule, unless an earlier step (dedup, decontamination) got it first
        if label["defect"] in ("too_short", "too_long"):
            assert rejected_ids[label["id"]]["step"] in ("length_filter", "exact_dedup", "minhash_dedup",
                                                         "decontaminate"), label


MOJIBAKE_MARKERS = ("Ã", "â€", "Â")


@pytest.mark.e2e
def test_demo_repairs_planted_mojibake(demo_run):
    store_path, _, _ = demo_run
    store = VersionStore(store_path)
    corpus = next((store_path / "demo-inputs").glob("*"))
    lines = (corpus / "web_crawl.jsonl").read_bytes().split(b"\n")
    final = final_texts(store, after="normalize")
    mojibake = [lab for lab in load_labels(corpus / "labels.jsonl") if lab["defect"] == "mojibake"]
    assert mojibake and any(lab["id"] in final for lab in mojibake)
    for label in mojibake:
        planted = json.loads(lines[label["line"] - 1])["text"]
        assert any(m in planted for m in MOJIBAKE_MARKERS)
        if label["id"] in final:  # wherever it ended after normalize: kept, or removed by a later step
            assert not any(m in final[label["id"]] for m in MOJIBAKE_MARKERS), final[label["id"]][:200]


def final_texts(store: VersionStore, after: str) -> dict[str, str]:
    """Each document's text where it ended, if it got past the step `after`: kept data, or the
    rejects of a later step (rejects keep the text as the step saw it)."""
    order = [s["name"] for s in store.manifest("demo")["steps"]]
    later = set(order[order.index(after) + 1:])
    out = dict(zip(*store.read_table("demo", columns=["id", "text"]).to_pydict().values()))
    for row in store.read_table("demo", "rejects", columns=["id", "text", "step"]).to_pylist():
        if row["step"] in later and row["id"] is not None:
            out[row["id"]] = row["text"]
    return out


@pytest.mark.e2e
def test_cli_lists_shows_and_refuses_a_name_clash(demo_run):
    store_path, env, _ = demo_run
    listing = curate("versions", "--store", str(store_path), env=env)
    assert listing.returncode == 0 and "demo" in listing.stdout
    shown = curate("show", "demo", "--store", str(store_path), env=env)
    assert shown.returncode == 0 and "length_filter" in shown.stdout and "web_crawl" in shown.stdout
    recipe = next((store_path / "demo-inputs").glob("*/recipe.yaml"))
    clash = curate("run", str(recipe), "--store", str(store_path), "--name", "demo", env=env)
    assert clash.returncode == 2 and "'demo' already exists" in clash.stderr
    missing = curate("show", "nope", "--store", str(store_path), env=env)
    assert missing.returncode == 2 and "no version 'nope'" in missing.stderr


# Classes the demo's filter stack exists to remove: every planted one must be caught.
REMOVED_BY_FILTERS = ("boilerplate", "keyword_spam", "lorem_ipsum", "non_english", "too_short", "too_long",
                      *INGEST_DEFECTS)


@pytest.mark.e2e
def test_demo_filter_stack_catches_planted_defects_and_reports_it(demo_run):
    store_path, _, stdout = demo_run
    manifest = VersionStore(store_path).manifest("demo")
    report = manifest["planted_defects"]
    for defect in REMOVED_BY_FILTERS:
        entry = report["classes"][defect]
        assert entry["planted"] > 0 and entry["recall"] == 1.0, (defect, entry)
    non_english = report["classes"]["non_english"]
    assert non_english["by_step"] == {"language_filter": non_english["planted"]}
    assert 0 <= report["clean"]["false_positive_rate"] < 0.5
    assert "planted defects" in stdout
    steps = {s["name"]: s for s in manifest["steps"]}
    data = VersionStore(store_path).read_table("demo", columns=["id", "source", "quality_score", "lang"]).to_pylist()
    crawl = [r for r in data if r["source"] == "web_crawl"]
    assert crawl and {r["lang"] for r in crawl} == {"en"} and all(0 <= r["quality_score"] <= 1 for r in crawl)
    assert {r["lang"] for r in data if r["source"] != "web_crawl"} == {None}  # the scoped steps left them alone
    corpus = next((store_path / "demo-inputs").glob("*"))
    pii_ids = {lab["id"] for lab in load_labels(corpus / "labels.jsonl") if lab["defect"] == "pii"}
    reached = {i: t for i, t in final_texts(VersionStore(store_path), after="pii_redact").items() if i in pii_ids}
    # A planted PII page is a copy of a trusted document with addresses added: deduplication keeps the original
    # and removes it, or it reaches the redactor, which removes every planted address.
    removed = {r["id"] for r in VersionStore(store_path).read_table("demo", "rejects").to_pylist()
               if r["step"] in ("exact_dedup", "minhash_dedup")}
    assert pii_ids <= set(reached) | removed
    assert not reached or steps["pii_redact"]["counters"]["redacted:email"] > 0
    for doc_id, text in reached.items():
        assert "@example." not in text and "<EMAIL>" in text, (doc_id, text[:300])


@pytest.mark.e2e
def test_demo_measures_what_each_curation_stage_did_to_held_out_loss(demo_run):
    store_path, _, stdout = demo_run
    folder = store_path / "ablations" / "demo-stages"
    result = json.loads((folder / "ablation.json").read_text())
    assert [(r["label"], r["stage"]) for r in result["waterfall"]] == [
        ("raw", "demo-raw"), ("dedup", "demo.1-dedup"), ("quality", "demo")]
    assert VersionStore(store_path).manifest("demo.1-dedup")["parents"] == ["demo-raw"]
    assert set(result["versions"]) == {"demo-raw", "demo.1-dedup", "demo", "demo-web"}  # the web defaults beside
    assert len(result["runs"]) == 12 and {r["tokens_trained"] for r in result["runs"]} == {16384}
    evalset = result["primary"]
    assert evalset.startswith("demo-heldout")
    held = {p.stem for p in next((store_path / "demo-inputs").glob("*")).joinpath("heldout").glob("*.jsonl")}
    domains = [f"{evalset}/{s}" for s in ("stdlib_docs", "kjv") if s in held] if len(held) > 1 else []
    assert result["analysis"]["eval_keys"] == [evalset, *domains]  # per domain when the set has two sources
    assert not any("13-gram" in w for w in result["warnings"])  # every version, the baseline too, decontaminated
    assert {v["overlap"]["contaminated"] for v in result["versions"].values()} == {0}
    # demo reuses the full recipe's version (parent demo-raw); its rejects still explain the quality stage.
    quality = result["diffs"][1]
    assert (quality["a"], quality["b"], quality["lineage"]) == ("demo.1-dedup", "demo", "extends")
    assert quality["removed"] > 0 and {r["step"] for r in quality["top_reasons"]} <= {
        "length_filter", "language_filter", "gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality",
        "quality_classifier"}
    assert (result["diffs"][2]["a"], result["diffs"][2]["b"]) == ("demo-raw", "demo-web")
    assert (folder / "report.html").stat().st_size > 10_000 and (folder / "curves.png").exists()
    assert "waterfall" in stdout and "sample from the model trained on demo (seed 0): And God said" in stdout


@pytest.mark.e2e
def test_demo_publishes_raw_and_curated_versions_with_stats_diff_and_report(demo_run):
    store_path, env, stdout = demo_run
    store = VersionStore(store_path)
    assert store.manifest("demo")["parents"] == ["demo-raw"]
    for name in ("demo-raw", "demo"):
        files = {f["path"]: f for f in store.manifest(name)["files"] if f["kind"] == "report"}
        assert set(files) == {"stats.json", "stats_model.npz", "report.html", "report.json"}
    stats = json.loads((store_path / "versions" / "demo" / "stats.json").read_text())
    raw_stats = json.loads((store_path / "versions" / "demo-raw" / "stats.json").read_text())
    assert stats["size"]["docs"] == store.manifest("demo")["rows"]
    assert stats["coverage"]["reference"] == "demo-raw" and 0 < stats["coverage"]["covered_share"] <= 1
    assert stats["lexical"]["near_dup_density"] < raw_stats["lexical"]["near_dup_density"]  # dedup shows
    assert "what curation changed" in stdout and "removals by step and reason" in stdout
    diff = curate("diff", "demo-raw", "demo", "--store", str(store_path), "--json", "--html",
                  str(store_path / "diffs"), env=env)
    assert diff.returncode == 0, diff.stderr
    report = json.loads(diff.stdout)
    page = (store_path / "diffs" / "diff-demo-raw-demo.html").read_text()
    assert "demo-raw" in page and "exact_dedup:duplicate_of" in page  # removals with their reasons
    removed = set(store.read_table("demo-raw", columns=["id"]).column("id").to_pylist()) - set(
        store.read_table("demo", columns=["id"]).column("id").to_pylist())
    assert report["removed"]["count"] == len(removed) > 0
    assert sum(r["count"] for r in report["removed"]["by_reason"]) == len(removed)
    some = sorted(removed)[0]
    why = curate("why", "demo", some, "--store", str(store_path), "--json", env=env)
    assert why.returncode == 0 and json.loads(why.stdout)["status"] == "removed"
    html = (store_path / "versions" / "demo" / "report.html").read_text()
    assert "Planted defects" in html and "data:image/png;base64," in html


@pytest.mark.e2e
def test_demo_synthesizes_schema_valid_instructions_with_its_own_gpt(demo_run):
    from curation.synth.schemas import ALPACA

    store_path, _, stdout = demo_run
    store = VersionStore(store_path)
    manifest = store.manifest("demo-instruct")
    synthesis = manifest["synthesis"]
    assert (synthesis["backend"], synthesis["method"], synthesis["attempts"]) == ("gpt", "grounded", 24)
    assert synthesis["generation"] == 1  # the model was trained on human data (generation 0)
    assert manifest["accounting"]["ok"] and manifest["rows"] + manifest["rejected_rows"] == 24
    assert manifest["parents"] == ["demo"]
    demo_ids = set(store.read_table("demo", columns=["id"]).column("id").to_pylist())
    rows = store.read_table("demo-instruct").to_pylist()
    assert rows, "the tiny GPT wrote no usable record"
    for row in rows:
        record = ALPACA.decode(row["record"])  # every published record is schema-valid
        assert record["instruction"] == "Continue the passage." and record["output"].strip()
        assert len(record["output"].split()) >= 3  # the recipe's response_words bound
        assert (row["origin"], row["generation"]) == ("synthetic", 1) and row["generator"].startswith("gpt:")
        assert row["parent_ids"][0] in demo_ids
    reasons = store.read_table("demo-instruct", "rejects", columns=["step", "reason"]).to_pylist()
    assert all(r["reason"].startswith("generate:") for r in reasons if r["step"] == "ingest")
    files = {f["path"] for f in manifest["files"] if f["kind"] == "report"}
    assert {"stats.json", "report.html"} <= files
    assert "every attempt, accepted or rejected" in stdout


@pytest.mark.e2e
def test_the_gpt_backend_is_reproducible_and_honest_about_cuts(demo_run):
    from curation.synth.backends import CompletionRequest
    from flows.gpt import GPTCompletionBackend

    store_path, _, _ = demo_run
    checkpoint = next(store_path.glob("runs/*/*/checkpoint.pt"))
    backend = GPTCompletionBackend(checkpoint)
    request = CompletionRequest("And God said unto Moses", max_tokens=12, seed=7)
    first, again = backend.complete([request, request])
    assert first.text == again.text and first.finish_reason == "length"
    assert first.usage["completion_tokens"] == 12
    greedy = backend.complete([CompletionRequest("And God said", max_tokens=20, temperature=0.0)])[0]
    assert len(greedy.text) > 8
    stop = greedy.text[len(greedy.text) // 2:][:3]
    cut = backend.complete([CompletionRequest("And God said", max_tokens=20, temperature=0.0, stop=(stop,))])[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and greedy.text.startswith(cut.text)
    with pytest.raises(FileNotFoundError, match="no such GPT checkpoint"):
        GPTCompletionBackend(store_path / "nope.pt")


@pytest.mark.e2e
def test_every_demo_version_carries_guards_and_the_perplexity_guard_flags_degenerate_text(demo_run):
    import pyarrow as pa

    from curation.guards import GuardConfig

    store_path, _, stdout = demo_run
    store = VersionStore(store_path)
    for name in ("demo-raw", "demo", "demo-instruct"):
        report = store.manifest(name)["guards"]
        assert report["passed"] and report["reference"]["name"].startswith("demo-heldout")
    assert store.manifest("demo-instruct")["guards"]["mix"] == "instruction"
    assert "guards (pretraining mix" in stdout
    checkpoint = str(next(store_path.glob("runs/*/*/checkpoint.pt")))
    n = 40
    loop = pa.table({"id": [f"x{i}" for i in range(n)], "text": ["And the LORD said unto Moses, " * 40] * n,
                     "source": ["gen"] * n, "origin": ["synthetic"] * n, "generation": pa.array([1] * n, pa.int32())})
    # The scale-0.1 demo's held-out set is too small for the perplexity guard's reference half: the raw
    # version's text is the human reference here.
    from curation.guards import GUARD_COLUMNS, compute_guards
    from flows.gpt import perplexity_scorer

    reference = store.read_table("demo-raw", columns=["text"]).column("text").to_pylist()[:400]
    config = GuardConfig(reference_model=checkpoint)

    def guards(batches) -> dict:
        report = compute_guards(batches, config, reference_name="demo-raw", reference_texts=reference,
                                perplexity=perplexity_scorer(checkpoint))
        return {g["name"]: g for g in report["guards"]}

    degenerate = guards([loop])
    assert degenerate["perplexity_spread"]["passed"] is False  # far below the human reference's range
    assert degenerate["near_dup_cliff"]["passed"] is False and degenerate["distinct_2"]["passed"] is False
    human = guards(store.iter_batches("demo", GUARD_COLUMNS))
    assert human["perplexity_spread"]["value"] < degenerate["perplexity_spread"]["value"]


@pytest.mark.e2e
def test_demo_curates_the_next_crawl_drop_incrementally_on_top_of_the_curated_version(demo_run):
    store_path, _, stdout = demo_run
    store = VersionStore(store_path)
    demo, daily = store.manifest("demo"), store.manifest("demo-daily-0001")
    assert daily["parents"] == ["demo"] and daily["carried"]["rows"] == demo["rows"]
    assert [f["path"].rsplit("/", 1)[-1] for spec in daily["inputs"] for f in spec["files"]] == ["web_crawl-day2.jsonl"]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (new|recrawled|edited|reused_ids)", stdout)}
    rejects = store.read_table("demo-daily-0001", "rejects", columns=["id", "step", "reason"]).to_pylist()
    # Every copy of a page `demo` holds is removed: by dedup against `demo`, or by a filter first (the copies are
    # of curated text, and a filter that rewrites text, like C4's, can change what a later one measures).
    for kind, steps in (("recrawl", {"exact_dedup"}), ("edited", {"minhash_dedup"})):
        removed = [r for r in rejects if r["id"].startswith(f"web-day2-{kind}-")]
        by_dedup = [r for r in removed if r["step"] in steps]
        assert len(removed) == counts["recrawled" if kind == "recrawl" else "edited"]
        assert all(r["reason"].endswith("in demo") for r in by_dedup) and len(by_dedup) >= len(removed) / 2
    reused = [r for r in rejects if r["reason"].endswith("already in version demo")]
    assert len(reused) == counts["reused_ids"]
    ids = store.read_table("demo-daily-0001", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) and any(i.startswith("web-day2-") for i in ids)
