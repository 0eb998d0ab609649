"""The curation flow: ingest -> steps -> publish, one Prefect task per input group and per shard.

Runs in Prefect's embedded mode by default (a temporary local API; no server to start) and
spreads the shard tasks over every core with a process pool.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from curation import pipeline
from curation.guards import gate, staged_guards
from curation.recipe import Recipe
from curation.store import VersionStore
from flows.progress import RunProgress


@task(name="ingest")
def ingest_task(recipe: Recipe, unit: pipeline.IngestUnit, store_url: str, staging: str) -> pipeline.IngestResult:
    return pipeline.ingest_unit(recipe, unit, store_url, staging)


@task(name="process-shard")
def shard_task(recipe: Recipe, shard: str, drops: list[tuple[int, str]], store_url: str, staging: str, start: int,
               stop: int, decisions: dict[int, Any], source_shard: str) -> pipeline.ShardResult:
    return pipeline.process_shard(recipe, shard, drops, store_url, staging, start, stop, decisions, source_shard)


@flow(name="curate", log_prints=True)
def curate_flow(recipe: Recipe, store_url: str, name: str, parents: list[str] | None = None,
                show_progress: bool = False, manifest_extra: dict[str, Any] | None = None,
                override_guards: str | None = None, synthesis: bool = False) -> dict[str, Any]:
    """Run `recipe` over its inputs and publish the result as version `name` of the store
    (`manifest_extra`: entries a calling flow adds to, or puts in place of, the manifest's own). A version
    that fails a hard model-collapse guard is not published unless `override_guards` gives a reason."""
    started = time.perf_counter()
    store = VersionStore(store_url)
    plan = pipeline.plan_ingest(recipe)  # bad inputs and name clashes fail here, before any work
    staging = store.begin(name)
    try:
        with RunProgress(show_progress) as progress:
            stage = progress.stage("ingest", total=max(plan.nbytes, 1), unit="bytes")
            futures = [ingest_task.submit(recipe, unit, store.url, staging.path) for unit in plan.units]
            ingested = []
            for future in as_completed(futures):
                result = future.result()
                ingested.append(result)
                progress.advance(stage, result.bytes_read, result.records)
            ingested.sort(key=lambda r: r.unit)
            if plan.quarantined:
                pipeline.write_quarantine(store.url, staging.path, plan.quarantined)

            shards = [s for r in ingested for s in r.shards]
            drops = pipeline.duplicate_ids(store.url, shards)
            processed: list[pipeline.ShardResult] = []
            decisions: dict[int, Any] = {}
            reports: dict[str, dict[str, Any]] = {}
            inputs = {s: s for s in shards}  # raw shard -> the shard the next round reads
            previous: list[pipeline.ShardResult] = []
            for number, (start, stop) in enumerate(pipeline.rounds(recipe)):
                if previous:  # the round starts at a global step: decide from every shard's summary
                    decisions[start], report = pipeline.decide(recipe, start, previous, store.url)
                    if report is not None:
                        reports[recipe.build_steps()[start][0]] = report
                stage = progress.stage("steps" if number == 0 else f"steps {number + 1}",
                                       total=sum(r.records for r in ingested) or 1)
                futures = [shard_task.submit(recipe, inputs[s], drops.get(s, []) if number == 0 else [], store.url,
                                             staging.path, start, stop, decisions, s) for s in shards]
                previous = []
                for future in as_completed(futures):
                    result = future.result()
                    processed.append(result)
                    if result.output:
                        inputs[result.shard] = result.output
                        previous.append(result)
                    n = next(iter(result.steps.values()))["in"] if result.steps else result.rows_out
                    progress.advance(stage, n + result.duplicate_id_rejects, n + result.duplicate_id_rejects)
            processed.sort(key=lambda r: r.shard)

        planted = pipeline.planted_defects(recipe, store.url, staging.path)
        manifest = pipeline.build_manifest(recipe, plan, ingested, sum(len(d) for d in drops.values()), processed,
                                           parents or [], time.perf_counter() - started, planted, reports)
        manifest.update(manifest_extra or {})
        manifest["guards"] = staged_guards(store, staging.path, recipe.guards, recipe=recipe, parents=parents,
                                           synthesis=synthesis)
        override = gate(manifest["guards"], name, override_guards)
        if override:
            manifest["guard_override"] = override
        path = store.publish(staging, manifest, extras=pipeline.version_extras(store.url, parents or []))
    except BaseException:
        store.abandon(staging)
        raise
    result = store.manifest(name)
    result["path"] = path
    publish_artifacts(result)
    return result


def artifact_key(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", f"curate-{name}".lower()).strip("-")


def publish_artifacts(manifest: dict[str, Any]) -> None:
    """The version's summary and per-step table, shown by the Prefect UI on the flow run."""
    steps = [{"step": s["name"], "in": s["in"], "kept": s["kept"], "rejected": s["rejected"],
              "top reasons": ", ".join(f"{k} {v}" for k, v in sorted(s["rejected_by_reason"].items(),
                                                                    key=lambda kv: -kv[1])[:3])}
             for s in manifest["steps"]]
    create_table_artifact(steps, key=artifact_key(f"{manifest['name']}-steps"),
                          description=f"What each step of version {manifest['name']} kept and removed")
    lines = [f"# Version `{manifest['name']}`", "",
             f"- records: **{manifest['rows']:,}** kept, {manifest['rejected_rows']:,} rejected "
             f"(accounting {'ok' if manifest['accounting']['ok'] else 'FAILED'})",
             f"- characters: {manifest['size']['chars']:,}; fingerprint `{manifest['fingerprint'][:16]}`",
             f"- parents: {', '.join(manifest['parents']) or 'none'}; path: `{manifest.get('path', '')}`"]
    stats = manifest.get("stats_summary")
    if stats:
        lines += ["", "## Statistics", ""] + [f"- {k}: {v}" for k, v in stats.items()]
    planted = manifest.get("planted_defects")
    if planted:
        lines += ["", "## Planted defects", "", "| defect | planted | caught | recall |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['planted']} | {v['caught']} | {v['recall']:.0%} |"
                  for k, v in planted["classes"].items()]
        clean = planted["clean"]
        lines.append(f"| clean text (false positives) | {clean['docs']} | {clean['rejected']} | "
                     f"{(clean['false_positive_rate'] or 0):.1%} |")
    create_markdown_artifact("\n".join(lines), key=artifact_key(f"{manifest['name']}-summary"),
                             description=f"Summary of version {manifest['name']}")
    guards = manifest.get("guards")
    if guards:
        create_table_artifact(guard_rows(guards), key=artifact_key(f"{manifest['name']}-guards"),
                              description=f"Model-collapse guards of version {manifest['name']}")


def guard_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per guard: value, threshold, verdict (for artifacts and tables)."""
    def verdict(g: dict[str, Any]) -> str:
        if g["passed"] is None:
            return "not measured" if g["value"] is None else "not applied"
        return "pass" if g["passed"] else ("FAIL (hard)" if g["hard"] else "warn")

    return [{"guard": g["name"], "value": g["value"], "threshold": f"{g['op']} {g['threshold']}"
             if g["threshold"] is not None else "", "verdict": verdict(g), "detail": g["detail"]}
            for g in report["guards"]]


def task_runner(workers: int | None) -> ProcessPoolTaskRunner | ThreadPoolTaskRunner:
    """A process per core by default; one worker runs tasks in-process (handy for debugging)."""
    workers = workers or os.cpu_count() or 1
    return ThreadPoolTaskRunner(max_workers=1) if workers == 1 else ProcessPoolTaskRunner(max_workers=workers)


def run_curation(recipe: Recipe, store_url: str, name: str, parents: list[str] | None = None,
                 workers: int | None = None, show_progress: bool = False,
                 manifest_extra: dict[str, Any] | None = None, override_guards: str | None = None) -> dict[str, Any]:
    return curate_flow.with_options(task_runner=task_runner(workers))(
        recipe, store_url, name, parents=parents, show_progress=show_progress, manifest_extra=manifest_extra,
        override_guards=override_guards)
