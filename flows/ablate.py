"""The ablation flow: the same model, tokenizer, token budget and seeds on each version; loss deltas
with their uncertainty, stored next to the versions.

One Prefect task per (version content, seed) run. Runs are found finished in the store when they
exist (`training/runs.py`), so re-running an ablation, or adding a version to it, trains only what is
missing, and an interrupted run resumes from its checkpoint. Runs go to a process pool: on the CPU a
process per core with one torch thread each (for the ~1 M-parameter preset on 2 cores this trained two
runs in 91 s against 2 x 58 s one after the other with two threads each); on GPUs a process per device.

`curate ablate --steps RECIPE` first publishes the recipe's cumulative stages as versions (reusing any
version of the store with the same recipe content), then ablates them with a waterfall per stage.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed

from curation.diff import diff_versions, summarize_diff
from curation.evalsets import evaluation_sets, instruction_sets, read_info
from curation.recipe import Recipe, load_recipe
from curation.steps.decontaminate import version_overlap
from curation.store import VersionStore
from flows.cli_common import printer
from flows.curate import artifact_key, run_curation, task_runner
from training import ablation
from training.ablation import AblationSpec
from training.config import CURVE_POINTS, DEFAULT_VOCAB_SIZE, FinetuneConfig
from training.data import tokenize_evalset, tokenize_version
from training.pretrained import load_base
from training.runs import finetune_version, train_version
from training.sft import examples_from_version
from training.tokenizer import Tokenizer, load_tokenizer, tokenizer_for_version
from training.trainer import TrainConfig, pick_device


@task(name="train-run")
def train_run_task(store_url: str, version: str, cfg: TrainConfig, tokenizer_path: str, eval_sets: list[str],
                   threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    record = train_version(VersionStore(store_url), version, cfg, load_tokenizer(tokenizer_path), eval_sets,
                           log=lambda *_: None)
    return record.to_dict()


@task(name="finetune-run")
def finetune_run_task(store_url: str, version: str, cfg: TrainConfig, ft: FinetuneConfig, eval_sets: list[str],
                      threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    record = finetune_version(VersionStore(store_url), version, cfg, ft, eval_sets, log=lambda *_: None)
    return record.to_dict()


@task(name="evalset-overlap")
def overlap_task(store_url: str, version: str, eval_sets: list[str]) -> dict[str, int]:
    return version_overlap(VersionStore(store_url), version, eval_sets)


@task(name="diff")
def diff_task(store_url: str, a: str, b: str) -> dict[str, Any]:
    return summarize_diff(diff_versions(VersionStore(store_url), a, b, examples=0))


def plan_workers(runs: int, device: str, parallel: int | None = None) -> tuple[int, int, list[str]]:
    """(processes, torch threads per process, device of each slot)."""
    resolved = pick_device(device)
    if resolved.startswith("cuda") and ":" not in resolved:
        gpus = max(1, torch.cuda.device_count())
        workers = max(1, min(runs, parallel or gpus))
        return workers, 1, [f"cuda:{i % gpus}" for i in range(workers)]
    cores = os.cpu_count() or 1
    workers = max(1, min(runs, parallel or cores))
    return workers, max(1, cores // workers), [resolved] * workers


@flow(name="ablate", log_prints=True)
def ablate_flow(store_url: str, versions: list[str], spec: AblationSpec, name: str, *, baseline: str | None = None,
                tokenizer: str | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE, eval_sets: list[str] | None = None,
                effect: float | None = None, stages: list[dict[str, Any]] | None = None, calibrate: bool = False,
                parallel: int | None = None, show_progress: bool = False,
                finetune: FinetuneConfig | None = None) -> dict[str, Any]:
    """Train `spec` on every version with every seed; compare each version with `baseline` (default:
    the first), and with `stages`, each stage with the one before it. `calibrate`: one version, its
    seed-to-seed noise. `finetune`: each run fine-tunes its base on the (instruction) version and is measured
    on the instruction sets. Writes `<store>/ablations/<name>/` and returns the result."""
    started = time.perf_counter()
    say = printer(show_progress)
    store = VersionStore(store_url)
    baseline = baseline or versions[0]
    manifests = {v: store.manifest(v) for v in versions}
    if finetune is not None:
        sizes, jobs, names, tok = _finetune_runs(store, versions, manifests, spec, finetune, eval_sets)
        steps = ", ".join(f"{v}: {sizes[v][2]:,}" for v in versions)
        what = f"fine-tunes of {finetune.base} (steps: {steps})"
    else:
        tok = load_tokenizer(tokenizer) if tokenizer else tokenizer_for_version(store, baseline, vocab_size)
        names = evaluation_sets(store, eval_sets)
        if not names:
            raise ablation.AblationError("no evaluation set is registered (`curate evalset register`): an ablation "
                                         "compares losses on frozen held-out text")
        token_files = {v: tokenize_version(store, v, tok) for v in versions}  # cached; tasks only read them
        sizes = {v: (tf.n_tokens, {s: int(e["tokens"]) for s, e in tf.meta["by_source"].items()}, None)
                 for v, tf in token_files.items()}
        for n in names:
            tokenize_evalset(store, n, tok)
        jobs = _distinct_runs(versions, manifests, spec, tok)
        what = f"{spec.preset} ({spec.steps(tok.vocab_size):,} steps each)"
    eval_fingerprints = {n: read_info(store, n).fingerprint for n in names}
    workers, threads, devices = plan_workers(len(jobs), spec.device, parallel)
    say(f"ablation {name}: {len(versions)} version(s) x {len(spec.seeds)} seed(s) = {len(jobs)} distinct run(s) of "
        f"{what}, tokenizer {tok.hash[:12]}, eval sets {', '.join(names)}; {workers} process(es) x {threads} "
        f"thread(s) on {devices[0]}")

    overlaps = {v: overlap_task.submit(store.url, v, names) for v in versions}
    staged = [s["version"] for s in stages or []]
    pairs = [*zip(staged, staged[1:]), *((baseline, v) for v in versions if v != baseline and v not in staged)]
    diffs = {pair: diff_task.submit(store.url, *pair) for pair in pairs}
    futures = []
    for i, (version, cfg) in enumerate(jobs):
        if devices[i % workers] != cfg.device:
            cfg = TrainConfig(**{**cfg.to_dict(), "device": devices[i % workers]})
        if finetune is not None:
            futures.append(finetune_run_task.submit(store.url, version, cfg, finetune, names, threads))
        else:
            futures.append(train_run_task.submit(store.url, version, cfg, str(tok.path), names, threads))
    finished = _collect_runs(futures, names[0], say)
    runs = [{**finished[(manifests[version]["fingerprint"], seed)], "version": version}
            for version in versions for seed in spec.seeds]

    context = {
        "device_type": runs[0]["device"].split(":")[0],
        "name": name, "store": store.url, "spec": spec.to_dict(), "effect": effect,
        "tokenizer": {"hash": tok.hash, "vocab_size": tok.vocab_size, "path": str(tok.path),
                      "trained_on": "the base model's" if finetune else tokenizer or baseline},
        "eval_sets": eval_fingerprints,
        "versions": {v: _version_context(manifests[v], sizes[v], overlaps[v].result()) for v in versions},
        "diffs": [diffs[pair].result() for pair in pairs],
        "stages": stages,
        **({"finetune": finetune.to_dict()} if finetune else {}),
    }
    if calibrate:
        result = ablation.calibration_result(context, runs, effect)
    else:
        result = ablation.ablation_result(context, runs, baseline, ablation.find_calibration(store, context))
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["paths"] = ablation.save_result(store, result)
    publish_artifacts(result)
    return result


def _distinct_runs(versions: list[str], manifests: dict[str, dict[str, Any]], spec: AblationSpec,
                   tok: Tokenizer) -> list[tuple[str, TrainConfig]]:
    """One run per (content, seed): versions with the same fingerprint share their runs."""
    by_content: dict[tuple[str, int], str] = {}  # (fingerprint, seed) -> the version whose run is trained
    jobs: list[tuple[str, TrainConfig]] = []
    for version in versions:
        for seed in spec.seeds:
            content = (manifests[version]["fingerprint"], seed)
            if content not in by_content:
                by_content[content] = version
                jobs.append((version, spec.config(seed, tok.vocab_size)))
    return jobs


def _collect_runs(futures: list[Any], primary: str, say) -> dict[tuple[str, int], dict[str, Any]]:
    """The run records by (fingerprint, seed), each reported as it finishes."""
    finished: dict[tuple[str, int], dict[str, Any]] = {}
    for done, future in enumerate(as_completed(futures), 1):
        record = future.result()
        finished[(record["fingerprint"], record["seed"])] = record
        loss = record["final_eval"][primary]["loss"]
        how = "found in the store" if record["cached"] else f"{record['seconds']:.0f} s"
        say(f"  run {done}/{len(futures)}: {record['version']} seed {record['seed']}: {primary} loss {loss:.4f} "
            f"({how})")
    return finished


def _finetune_runs(store: VersionStore, versions: list[str], manifests: dict[str, dict[str, Any]], spec: AblationSpec,
                   ft: FinetuneConfig, eval_sets: list[str] | None
                   ) -> tuple[dict[str, tuple[int, dict[str, int], int]], list[tuple[str, TrainConfig]], list[str],
                              Tokenizer]:
    """A fine-tuning ablation's plan: per version (tokens, tokens by task type, steps), one run per (content, seed)
    with about CURVE_POINTS evaluations each, the instruction sets and the base's tokenizer. Every version is read
    here, so a version that cannot be fine-tuned on fails before any run starts."""
    base = load_base(ft.base)
    names = instruction_sets(store, eval_sets)
    if not names:
        raise ablation.AblationError("no instruction set is registered (`curate evalset register NAME "
                                     "version:HELD_OUT --role instruction`): a fine-tuning ablation compares response "
                                     "losses on held-out instructions")
    block = base.model.config.block_size
    sizes: dict[str, tuple[int, dict[str, int], int]] = {}
    jobs: list[tuple[str, TrainConfig]] = []
    seen: set[tuple[str, int]] = set()
    for version in versions:
        data = examples_from_version(store, version, ft.template, base.tokenizer, block)
        if not len(data):
            raise ablation.AblationError(f"version {version!r}: no record makes a fine-tuning example "
                                         f"({data.skipped})")
        by_task: dict[str, int] = {}
        for example in data.examples:
            by_task[example.task_type] = by_task.get(example.task_type, 0) + len(example.input_ids)
        steps = ft.steps(len(data), spec.batch_size)
        sizes[version] = (data.n_tokens, by_task, steps)
        for seed in spec.seeds:
            if (manifests[version]["fingerprint"], seed) not in seen:
                seen.add((manifests[version]["fingerprint"], seed))
                jobs.append((version, TrainConfig(seed=seed, batch_size=spec.batch_size,
                                                  learning_rate=spec.learning_rate,
                                                  eval_every=spec.eval_every or max(1, math.ceil(steps / CURVE_POINTS)),
                                                  device=spec.device, compile=spec.compile)))
    return sizes, jobs, names, base.tokenizer


def _version_context(manifest: dict[str, Any], size: tuple[int, dict[str, int], int | None],
                     overlap: dict[str, int]) -> dict[str, Any]:
    tokens, by_source, steps = size
    return {"fingerprint": manifest["fingerprint"], "rows": manifest["rows"], "parents": manifest.get("parents", []),
            "tokens": tokens, "tokens_by_source": by_source, "overlap": overlap,
            **({"steps": steps} if steps is not None else {})}


def publish_artifacts(result: dict[str, Any]) -> None:
    """The ablation's table and summary, shown by the Prefect UI on the flow run."""
    create_table_artifact(ablation.summary_rows(result), key=artifact_key(f"ablation-{result['name']}-table"),
                          description=f"Loss per version and paired deltas of ablation {result['name']}")
    create_markdown_artifact(ablation.summary_markdown(result), key=artifact_key(f"ablation-{result['name']}-summary"),
                             description=f"Summary of ablation {result['name']}")


def run_ablation(store_url: str, versions: list[str], spec: AblationSpec, name: str, *, parallel: int | None = None,
                 **kwargs: Any) -> dict[str, Any]:
    """Run `ablate_flow` on a pool of a process per run at once (at most a core, or a GPU, each)."""
    workers, _, _ = plan_workers(len(versions) * len(spec.seeds), spec.device, parallel)
    return ablate_flow.with_options(task_runner=task_runner(workers))(store_url, versions, spec, name,
                                                                      parallel=parallel, **kwargs)


# ---- a recipe's cumulative stages as versions -------------------------------------------------------


def stage_versions(recipe_path: Path, store_url: str, prefix: str | None = None, workers: int | None = None,
                   show_progress: bool = False, each_step: bool = False) -> tuple[list[str], list[dict[str, Any]]]:
    """Publish (or find) a version for each cumulative stage of the recipe: the baseline (ingestion and
    the steps labelled `raw`), then each stage added. A version of the store made by the same recipe
    content is reused whatever its name; new ones are named `<prefix>.<i>-<label>`, each the parent of
    the next. Returns the version names and the stages (label, steps, version)."""
    recipe = load_recipe(recipe_path)
    prefix = prefix or recipe.name or Path(recipe_path).stem
    by_hash = versions_by_recipe(VersionStore(store_url))
    names: list[str] = []
    described: list[dict[str, Any]] = []
    for i, stage in enumerate(recipe.stages(each_step)):
        steps = ", ".join(stage.steps) or "ingestion only"
        version = publish_or_find(recipe.prefix(stage.end), store_url, f"{prefix}.{i}-{stage.label}", by_hash,
                                  f"stage {i} {stage.label} ({steps})", parents=names[-1:], workers=workers,
                                  show_progress=show_progress)
        names.append(version)
        described.append({"label": stage.label, "steps": list(stage.steps), "version": version})
    return names, described


def versions_by_recipe(store: VersionStore) -> dict[str, str]:
    """Recipe content hash -> the store's oldest fully accounted version made by it (what a recipe finds again)."""
    by_hash: dict[str, str] = {}
    for manifest in store.versions():  # oldest first: the first version with a recipe hash wins
        if manifest.get("accounting", {}).get("ok"):
            by_hash.setdefault(manifest.get("recipe_hash", ""), manifest["name"])
    return by_hash


def publish_or_find(recipe: Recipe, store_url: str, name: str, by_hash: dict[str, str], what: str, *,
                    parents: list[str] | None = None, workers: int | None = None,
                    show_progress: bool = False) -> str:
    """The version of `by_hash` made by the same recipe content, whatever its name; else `recipe` run and published
    as `name` (and added to `by_hash`). `what` introduces the line saying which."""
    say = printer(show_progress)
    existing = by_hash.get(recipe.content_hash())
    if existing is not None:
        say(f"{what}: version {existing} (same recipe content)")
        return existing
    say(f"{what}: publishing {name}")
    manifest = run_curation(recipe, store_url, name, parents=parents, workers=workers, show_progress=show_progress)
    say(f"  {name}: {manifest['rows']:,} records, {manifest['rejected_rows']:,} rejects")
    by_hash[recipe.content_hash()] = name
    return name
