"""The synthesis flow: generate attempts in batches (Prefect tasks), then curate them into a version.

Generation writes one attempts file per batch under `<store>/synth/<work key>/`; a batch whose file
exists is not generated again, and the OpenAI backend keeps a request cache in `<store>/synth/requests`,
so a rerun after a crash pays for neither finished batches nor finished requests. The attempts are then
an input of an ordinary curation run (`flows/curate.py`): failed attempts are ingest rejects with their
generation reason, and the recipe's steps (instruction checks, novelty, dedup, language, decontamination)
decide the rest, with the same manifest, statistics, report and artifacts as any version.

Self-Instruct runs in rounds: each round's prompts show 2 generated tasks from the pool, and only tasks
that pass the ROUGE-L novelty check join the pool. Grounded batches are independent and run in parallel.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from curation.ingest import InputSpec
from curation.pipeline import parallelism
from curation.recipe import Recipe
from curation.store import VersionExistsError, VersionStore
from curation.synth import generate as G
from curation.synth.methods import (
    Job,
    grounded_jobs,
    grounded_template,
    load_seed_tasks,
    sample_documents,
    self_instruct_job,
    self_instruct_template,
)
from curation.synth.rouge import NoveltyPool
from curation.synth.schemas import RecordSchema, load_schema
from curation.synth.spec import SynthSpec
from flows.curate import artifact_key, curate_flow, curation_runner, task_runner
from flows.gpt import GPTCompletionBackend
from flows.progress import RunProgress

SYNTH_DIR = "synth"
SMALL_RUN = 5000  # attempts curated in-process rather than in a process pool


@task(name="generate-batch")
def generate_task(spec: SynthSpec, schema: RecordSchema, jobs: list[Job], path: str, store_url: str,
                  generation: int, cache_dir: str | None, threads: int) -> dict[str, Any]:
    if spec.backend.kind in ("gpt", "hf"):
        import torch  # ~2 s per worker: only for the backends that run a model in this process

        torch.set_num_threads(threads)
    return G.generate_batch(spec, schema, jobs, path, store_url, generation, cache_dir,
                            gpt_backend=GPTCompletionBackend)


def work_key(spec: SynthSpec, schema: RecordSchema, seed_text: str) -> str:
    """Same key = same attempts: the attempts' format, the spec's, schema's, prompt templates' and seed tasks'
    content."""
    parts = [str(G.ATTEMPTS_FORMAT), spec.content_hash(), schema.fingerprint, *_templates(spec, schema), seed_text]
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]


def _generation(spec: SynthSpec, store: VersionStore) -> int:
    b = spec.backend
    if b.kind == "programmatic":
        return 0  # rearranged human text, made by no model
    if b.kind == "gpt" and b.generation is None:
        return G.checkpoint_generation(store, b.checkpoint)
    return b.generation


@flow(name="synthesize", log_prints=True)
def synthesize_flow(recipe: Recipe, store_url: str, name: str, workers: int | None = None,
                    show_progress: bool = False, override_guards: str | None = None) -> dict[str, Any]:
    """Generate `recipe.synthesize.records` attempts and publish the curated result as version `name`."""
    started = time.perf_counter()
    spec = recipe.synthesize
    assert spec is not None
    store = VersionStore(store_url)
    if store.exists(name):
        raise VersionExistsError(f"version {name!r} already exists in {store.url}; pick another name")
    schema = load_schema(spec.schema_, recipe.base)
    seed_path = recipe.resolve(spec.seed_tasks) if spec.seed_tasks else None
    seeds = load_seed_tasks(seed_path, schema) if spec.method == "self_instruct" else []
    generation = _generation(spec, store)
    key = work_key(spec, schema, repr(seeds))
    work_dir = f"{store.root}/{SYNTH_DIR}/{key}"
    store.fs.makedirs(work_dir, exist_ok=True)
    cache_dir = f"{store.root}/{SYNTH_DIR}/requests" if store.local and spec.backend.kind == "openai" else None
    workers = workers or os.cpu_count() or 1
    threads = max(1, (os.cpu_count() or 1) // workers)
    if spec.backend.kind in ("gpt", "hf", "programmatic"):
        # fail now (missing model), not per batch
        make_backend_once = G.make_backend(spec, None, generation, gpt_backend=GPTCompletionBackend)
        del make_backend_once

    with RunProgress(show_progress) as progress:
        stage = progress.stage("generate", total=spec.records)
        attempts = Attempts(spec, schema, store, work_dir, generation, cache_dir, threads)
        if spec.method == "grounded":
            batches = _generate_grounded(attempts, progress, stage)
        else:
            batches = _generate_self_instruct(attempts, seeds, progress, stage)
    batches.sort(key=lambda b: b["path"])
    summary = {
        "method": spec.method, "schema": schema.name, "backend": spec.backend.kind,
        "generator": G.generator_name(spec), "generation": generation, "work_dir": work_dir,
        "attempts": sum(b["attempts"] for b in batches), "valid_attempts": sum(b["valid"] for b in batches),
        "batches": len(batches), "batches_resumed": sum(b["resumed"] for b in batches),
        "cached_requests": sum(b["cached_requests"] for b in batches),
        "generation_seconds": round(time.perf_counter() - started, 3),
        "prompt_templates": _templates(spec, schema),
    }
    print(f"generated {summary['attempts']:,} attempts ({summary['valid_attempts']:,} schema-valid) in "
          f"{summary['generation_seconds']:.1f} s; {summary['batches_resumed']} of {summary['batches']} batches "
          f"resumed from an earlier run")
    manifest = _curate_attempts(recipe, store, name, summary, workers, show_progress, override_guards)
    publish_synthesis_artifact(manifest)
    return manifest


@dataclass(frozen=True)
class Attempts:
    """Where and how a run's attempts are generated: one `generate_task` per batch, into `work_dir`."""

    spec: SynthSpec
    schema: RecordSchema
    store: VersionStore
    work_dir: str
    generation: int
    cache_dir: str | None
    threads: int

    def submit(self, jobs: list[Job], number: int) -> PrefectFuture:
        """Batch `number`'s attempts (a batch whose file exists is read, not generated again)."""
        return generate_task.submit(self.spec, self.schema, jobs, G.batch_path(self.work_dir, number), self.store.url,
                                    self.generation, self.cache_dir, self.threads)


def _generate_grounded(attempts: Attempts, progress: RunProgress, stage: int | None) -> list[dict[str, Any]]:
    """Tasks grounded in documents of the source version: independent batches, generated in parallel."""
    spec, schema = attempts.spec, attempts.schema
    documents = sample_documents(attempts.store.iter_batches(spec.source, ["id", "text"]), spec.records, spec.seed)
    if not documents:
        raise ValueError(f"version {spec.source!r} has no document long enough to ground a task")
    chosen = [documents[i % len(documents)] for i in range(spec.records)]
    jobs = grounded_jobs(chosen, spec.seed, schema, list(spec.tasks), spec.passage_words)
    futures = [attempts.submit(jobs[start:start + spec.batch_size], number)
               for number, start in enumerate(range(0, len(jobs), spec.batch_size))]
    batches = []
    for future in as_completed(futures):
        result = future.result()
        batches.append(result)
        progress.advance(stage, result["attempts"], result["attempts"])
    return batches


def _generate_self_instruct(attempts: Attempts, seeds: list[tuple[str, dict[str, Any]]], progress: RunProgress,
                            stage: int | None) -> list[dict[str, Any]]:
    """Self-Instruct in rounds: each round's prompts show tasks from the pool, and only the generated tasks that
    pass the ROUGE-L novelty check join it."""
    spec, schema = attempts.spec, attempts.schema
    # Self-Instruct's pool compares instructions (the seed tasks' and the accepted generated ones').
    pool = NoveltyPool([schema.flat(rec)["instruction"] or "" for _, rec in seeds], [rid for rid, _ in seeds])
    generated: list[tuple[str, dict[str, Any]]] = []
    batches = []
    index = number = 0
    while index < spec.records:
        count = min(spec.batch_size, spec.records - index)
        jobs = [self_instruct_job(index + i, spec.seed, schema, seeds, generated, spec.seed_examples,
                                  spec.generated_examples) for i in range(count)]
        batches.append(attempts.submit(jobs, number).result())
        valid = G.read_valid(attempts.store.fs, G.batch_path(attempts.work_dir, number))
        verdicts = pool.admit([task_text for _, _, task_text in valid], [rid for rid, _, _ in valid])
        generated += [(rid, rec) for (rid, rec, _), (score, _) in zip(valid, verdicts) if score <= pool.threshold]
        progress.advance(stage, count, count)
        index += count
        number += 1
    return batches


def _curate_attempts(recipe: Recipe, store: VersionStore, name: str, summary: dict[str, Any], workers: int,
                     show_progress: bool, override_guards: str | None) -> dict[str, Any]:
    """The attempts as the input of an ordinary curation run with the recipe's steps and guards, published as
    version `name`: failed attempts are ingest rejects with their generation reason."""
    spec = recipe.synthesize
    assert spec is not None
    inputs = [InputSpec(path=summary["work_dir"], format="parquet", glob="batch-*.parquet",
                        source=f"synthetic-{spec.method}", reject_field=G.REJECT_COLUMN, origin="synthetic",
                        generation=summary["generation"], generator=summary["generator"])]
    curation = Recipe(name=name, inputs=inputs, steps=list(recipe.steps), shard_size_mb=recipe.shard_size_mb,
                      guards=recipe.guards, base_dir=recipe.base_dir)
    parents = [spec.source] if spec.method == "grounded" else []
    extra = {"recipe": recipe.model_dump(mode="json", by_alias=True), "recipe_hash": recipe.content_hash(),
             "synthesis": summary}
    # Our measurement: on 2 cores a process pool takes ~15 s to start, longer than curating a few thousand
    # records in this process.
    curation_workers = 1 if summary["attempts"] < SMALL_RUN else workers
    return curate_flow.with_options(task_runner=curation_runner(curation_workers))(
        curation, store.url, name, parents=parents, show_progress=show_progress, manifest_extra=extra,
        override_guards=override_guards, synthesis=True, partitions=parallelism(curation_workers))


def _templates(spec: SynthSpec, schema: RecordSchema) -> list[str]:
    if spec.method == "self_instruct":
        return [self_instruct_template(schema)]
    return sorted({grounded_template(kind, schema) for kind in spec.tasks})


def rejects_by_reason(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every attempt's fate: accepted, or the step and reason that rejected it."""
    rows = []
    for step in manifest["steps"]:
        for reason, count in sorted(step["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
            rows.append({"step": step["name"], "reason": reason, "records": count})
    return rows


def publish_synthesis_artifact(manifest: dict[str, Any]) -> None:
    rows = [{"step": "(accepted)", "reason": "", "records": manifest["rows"]}, *rejects_by_reason(manifest)]
    create_table_artifact(rows, key=artifact_key(f"{manifest['name']}-synthesis"),
                          description=f"Synthesis of {manifest['name']}: accepted records and rejects by reason")


def run_synthesis(recipe: Recipe, store_url: str, name: str, workers: int | None = None,
                  show_progress: bool = False, override_guards: str | None = None) -> dict[str, Any]:
    spec = recipe.synthesize
    assert spec is not None
    # An HTTP backend runs one batch at a time, its own `concurrency` requests in flight (so that bound holds);
    # local models and code use the cores (a process each).
    runner = ThreadPoolTaskRunner(max_workers=1) if spec.backend.kind == "openai" else task_runner(workers)
    return synthesize_flow.with_options(task_runner=runner)(recipe, store_url, name, workers=workers,
                                                            show_progress=show_progress,
                                                            override_guards=override_guards)
