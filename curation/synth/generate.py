"""Running generation jobs: every job becomes one attempt row, a record or a reject with its reason.

The three ways a backend answers (chat JSON, completion field by field, programmatic) end in the same
`schema.decode`, so one set of rules decides what is a valid record. An attempt is rejected, in this
order, for: a transport failure (`http_error`, `timeout`, `connection_error`, `bad_response`,
`generation_error`), output cut at the token limit (`truncated`, finish_reason "length"), another
unusable finish (`finish_reason`), no text (`empty_output`), text that is not one JSON object
(`invalid_json`), or a record that breaks the schema (`schema`). Reasons read `generate:<key>=<detail>`.

Attempts are written in batches of `batch_size` jobs to `<store>/synth/<spec hash>/batch-NNNNN.parquet`
(atomically); a rerun of the same spec skips the batches already there, so a crashed run resumes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.synth.backends import ChatRequest, Completion, CompletionBackend, CompletionRequest
from curation.synth.methods import NO_INPUT, Job, programmatic_fields
from curation.synth.openai_backend import OpenAIChatBackend
from curation.synth.schemas import RecordSchema, Rejected
from curation.synth.spec import SynthSpec

REJECT_COLUMN = "generate_reject"
ATTEMPTS_FORMAT = 1  # bump when the attempts table changes, so older batch files are not resumed from
DETAIL_CHARS = 300


@dataclass
class Attempt:
    job: Job
    record: dict[str, Any] | None
    reason: str | None
    raw: str | None
    finish_reason: str | None
    cached: bool = False


class GPTBackendFactory(Protocol):
    """Makes the completion backend of a `gpt` checkpoint. The model code lives outside `curation/`: the caller
    (the synthesis flow) passes the project's GPT backend in."""

    def __call__(self, checkpoint: str, *, generation: int) -> CompletionBackend: ...


def make_backend(spec: SynthSpec, cache_dir: str | None = None, generation: int | None = None,
                 gpt_backend: GPTBackendFactory | None = None) -> Any:
    """The configured backend (loaded in the process that uses it); a `gpt` backend is made by `gpt_backend`."""
    b = spec.backend
    if b.kind == "openai":
        key = os.environ.get(b.api_key_env) if b.api_key_env else None
        return OpenAIChatBackend(base_url=b.base_url, model=b.model, api_key=key, timeout_s=b.timeout_s,
                                 max_retries=b.max_retries, backoff_s=b.backoff_s, concurrency=b.concurrency,
                                 json_schema=b.json_schema, cache_dir=cache_dir, extra_body=b.extra_body)
    if b.kind == "gpt":
        if gpt_backend is None:
            raise ValueError(f"synthesize.backend: kind 'gpt' (checkpoint {b.checkpoint}) needs a GPT backend "
                             "factory; pass `gpt_backend=`, a callable (checkpoint, generation=) -> CompletionBackend")
        return gpt_backend(b.checkpoint, generation=generation or b.generation or 1)
    if b.kind == "hf":
        # torch and transformers take seconds to import: only a run that uses the HF backend pays for them.
        from curation.synth.hf_backend import HFCompletionBackend

        return HFCompletionBackend(b.path, device=b.device, dtype=b.dtype, batch_size=b.batch_size,
                                   generation=b.generation)
    return None  # programmatic


def generator_name(spec: SynthSpec) -> str:
    b = spec.backend
    if b.kind == "openai":
        return f"openai:{b.model}@{b.base_url}"
    if b.kind == "gpt":
        return f"gpt:{Path(b.checkpoint).parent.name}"
    if b.kind == "hf":
        return f"hf:{Path(b.path).name}"
    return "programmatic:grounded"


def run_jobs(jobs: list[Job], spec: SynthSpec, schema: RecordSchema, backend: Any) -> list[Attempt]:
    if spec.backend.kind == "openai":
        return _chat_attempts(jobs, spec, schema, backend)
    if spec.backend.kind == "programmatic":
        return [_programmatic_attempt(job, schema) for job in jobs]
    return _completion_attempts(jobs, spec, schema, backend)


def _chat_attempts(jobs: list[Job], spec: SynthSpec, schema: RecordSchema, backend: Any) -> list[Attempt]:
    s = spec.sampling
    requests = [ChatRequest(messages=job.messages, max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                            seed=job.seed, json_schema=schema.json_schema(),
                            schema_name=schema.name.replace(":", "_")) for job in jobs]
    out = []
    for job, completion in zip(jobs, backend.chat(requests)):
        try:
            record = schema.decode(usable_text(completion))
            out.append(Attempt(job, record, None, completion.text, completion.finish_reason, completion.cached))
        except Rejected as exc:
            out.append(Attempt(job, None, exc.reason, completion.text, completion.finish_reason, completion.cached))
    return out


def _completion_attempts(jobs: list[Job], spec: SynthSpec, schema: RecordSchema, backend: Any) -> list[Attempt]:
    """Fill each job's slots in turn (all jobs' slot k in one call), then assemble and decode the record."""
    s = spec.sampling
    filled: list[dict[str, str]] = [dict() for _ in jobs]
    failed: dict[int, Attempt] = {}
    raw: list[str] = [job.prefix for job in jobs]
    depth = max((len(job.slots) for job in jobs), default=0)
    for k in range(depth):
        live = [i for i, job in enumerate(jobs) if i not in failed and k < len(job.slots)]
        requests = []
        for i in live:
            slot = jobs[i].slots[k]
            raw[i] += slot.label
            requests.append(CompletionRequest(prompt=raw[i], max_tokens=s.max_tokens, temperature=s.temperature,
                                              top_p=s.top_p, top_k=s.top_k, seed=jobs[i].seed + k, stop=slot.stop))
        for i, completion in zip(live, backend.complete(requests) if requests else []):
            slot = jobs[i].slots[k]
            try:
                text = usable_text(completion)
            except Rejected as exc:
                detail = "; ".join(p for p in (exc.detail, f"field {slot.field}") if p)
                failed[i] = Attempt(jobs[i], None, f"{exc.key}={detail}",
                                    raw[i] + (completion.text or ""), completion.finish_reason)
                continue
            value = text.strip()
            filled[i][slot.field] = "" if value == NO_INPUT else value
            raw[i] += text + "\n"  # what the model wrote after the label, as it wrote it
    out = []
    for i, job in enumerate(jobs):
        if i in failed:
            out.append(failed[i])
            continue
        fields = {**{k: v for k, v in job.fixed.items() if k in schema.fill_fields()}, **filled[i]}
        out.append(_assembled(job, schema, fields, raw[i][len(job.prefix):]))
    return out


def _programmatic_attempt(job: Job, schema: RecordSchema) -> Attempt:
    fields = {k: v for k, v in programmatic_fields(job).items() if k in schema.fill_fields()}
    return _assembled(job, schema, fields, None)


def _assembled(job: Job, schema: RecordSchema, fields: dict[str, str], raw: str | None) -> Attempt:
    text = json.dumps(schema.from_fields(fields), ensure_ascii=False)
    try:
        return Attempt(job, schema.decode(text), None, raw, "stop")
    except Rejected as exc:
        return Attempt(job, None, exc.reason, raw if raw is not None else text, "stop")


def usable_text(completion: Completion) -> str:
    """The completion's text, or `Rejected` saying why there is none worth decoding."""
    if completion.error:
        key, _, detail = completion.error.partition("=")
        raise Rejected(key, detail)
    if completion.finish_reason == "length":
        tokens = completion.usage.get("completion_tokens")
        raise Rejected("truncated", "finish_reason length" + (f" after {tokens} tokens" if tokens else ""))
    if completion.finish_reason not in (None, "stop", "eos", "end_turn"):
        raise Rejected("finish_reason", str(completion.finish_reason))
    if completion.text is None or not completion.text.strip():
        raise Rejected("empty_output")
    return completion.text


# ---- the attempts table -------------------------------------------------------------------------

def attempts_table(attempts: list[Attempt], schema: RecordSchema, generator: str, generation: int) -> pa.Table:
    """One row per attempt: the record's training text and fields, or the raw answer and the reject reason."""
    rows: dict[str, list[Any]] = {k: [] for k in (
        "id", "text", "origin", "generation", "generator", REJECT_COLUMN, "record", "instruction", "input", "output",
        "schema",
        "method", "task_type", "prompt_template", "parent_ids", "finish_reason", "cached")}
    for a in attempts:
        ok = a.record is not None
        rows["id"].append(a.job.id)
        rows["text"].append(schema.render(a.record) if ok else a.raw)
        rows["origin"].append("synthetic")
        rows["generation"].append(generation)
        rows["generator"].append(generator)
        rows[REJECT_COLUMN].append(None if ok else "generate:" + _clip(a.reason or "unknown"))
        rows["record"].append(json.dumps(a.record, ensure_ascii=False) if ok else None)
        flat = schema.flat(a.record) if ok else {}
        for key in ("instruction", "input", "output"):
            rows[key].append(flat.get(key))
        rows["schema"].append(schema.name)
        rows["method"].append(a.job.method)
        rows["task_type"].append(a.job.task_type)
        rows["prompt_template"].append(a.job.template)
        rows["parent_ids"].append(list(a.job.parents))
        rows["finish_reason"].append(a.finish_reason)
        rows["cached"].append(a.cached)
    types = {"generation": pa.int32(), "parent_ids": pa.list_(pa.string()), "cached": pa.bool_(),
             "text": pa.large_string()}
    return pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in rows.items()})


def _clip(reason: str) -> str:
    return reason if len(reason) <= DETAIL_CHARS else reason[:DETAIL_CHARS] + "…"


def batch_path(work_dir: str, index: int) -> str:
    return f"{work_dir}/batch-{index:05d}.parquet"


def write_batch(fs: fsspec.AbstractFileSystem, table: pa.Table, path: str) -> None:
    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, filesystem=fs, compression="zstd")
    fs.mv(tmp, path)


def generate_batch(spec: SynthSpec, schema: RecordSchema, jobs: list[Job], path: str, store_url: str,
                   generation: int, cache_dir: str | None = None,
                   gpt_backend: GPTBackendFactory | None = None) -> dict[str, Any]:
    """Run one batch of jobs into its attempts file, unless an earlier run already wrote it (`gpt_backend`: see
    `make_backend`)."""
    fs, _ = fsspec.core.url_to_fs(store_url)
    if fs.exists(path):
        table = pq.read_table(path, filesystem=fs, columns=[REJECT_COLUMN, "cached"])
        return {"path": path, "resumed": True, **_batch_counts(table)}
    backend = make_backend(spec, cache_dir, generation, gpt_backend)
    try:
        attempts = run_jobs(jobs, spec, schema, backend)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    table = attempts_table(attempts, schema, generator_name(spec), generation)
    write_batch(fs, table, path)
    return {"path": path, "resumed": False, **_batch_counts(table)}


def _batch_counts(table: pa.Table) -> dict[str, Any]:
    rejects = table.column(REJECT_COLUMN).to_pylist()
    return {"attempts": table.num_rows, "valid": sum(r is None for r in rejects),
            "cached_requests": sum(bool(c) for c in table.column("cached").to_pylist())}


def read_valid(fs: fsspec.AbstractFileSystem, path: str) -> list[tuple[str, dict[str, Any], str]]:
    """(id, record, instruction) of the valid attempts in a batch file."""
    table = pq.read_table(path, filesystem=fs, columns=["id", "record", "instruction", REJECT_COLUMN])
    return [(r["id"], json.loads(r["record"]), r["instruction"] or "") for r in table.to_pylist()
            if r[REJECT_COLUMN] is None]


def checkpoint_generation(store: Any, checkpoint: str) -> int:
    """One more than the highest `generation` in the version a checkpoint was trained on (its run.json)."""
    run_file = Path(checkpoint).parent / "run.json"
    if not run_file.is_file():
        raise ValueError(f"{checkpoint}: no run.json beside the checkpoint, so the generation of its training "
                         "data is unknown; set `generation:` in the backend")
    version = json.loads(run_file.read_text())["version"]
    if not store.exists(version):
        raise ValueError(f"{checkpoint}: trained on version {version!r}, which is not in {store.url}; "
                         "set `generation:` in the backend")
    generations = store.read_table(version, columns=["generation"]).column("generation")
    return int(pc.max(generations).as_py() or 0) + 1
