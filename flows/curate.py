"""The curation flow: ingest -> steps -> publish, one Prefect task per input group and per shard.

Runs in Prefect's embedded mode by default (a temporary local API; no server to start); the tasks record the
work with Prefect in the flow's threads and hand it to the command's worker processes (`flows/process_pool.py`),
or run on a Dask cluster's workers.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from curation import pipeline
from curation.calibration import calibrate
from curation.guards import gate
from curation.recipe import Recipe
from curation.steps.base import Workers
from curation.store import VersionStore
from flows import process_pool
from flows.gpt import perplexity_scorer  # also registers the "gpt" classifier backend, in every worker
from flows.printing import accounting, guard_rows
from flows.progress import RunProgress

T = TypeVar("T")


@dataclass
class WorkerPeak:
    """The largest peak resident memory any task's process reported, for the manifest's estimate-vs-actual."""

    rss_bytes: int = 0

    def take(self, reported: tuple[T, int]) -> T:
        """A task's result, noting the peak its process reported with it."""
        result, peak = reported
        self.rss_bytes = max(self.rss_bytes, peak)
        return result


class Whole(Generic[T]):
    """A task argument Prefect hands over without walking into it: for each task it submits, it would visit every
    element of a large one (the decisions: thousands of removals) looking for futures. Prefect's own `quote` and
    `opaque` are tuples, and on a Dask cluster they reached the workers as plain tuples."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


# The tasks' results are kept by the run itself (markers in the staging folder, for a resume): Prefect's cache
# would only hash every argument (the decisions) for each task.
@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(recipe: Recipe, unit: pipeline.IngestUnit, store_url: str, staging: str
                ) -> tuple[pipeline.IngestResult, int]:
    return process_pool.run(pipeline.ingest_unit, recipe, unit, store_url, staging)


@task(name="process-shard", cache_policy=NO_CACHE)
def shard_task(recipe: Recipe, shard: str, drops: Whole[list[tuple[int, str]]], store_url: str, staging: str,
               start: int, stop: int, decisions: Whole[dict[int, Any]], source_shard: str
               ) -> tuple[pipeline.ShardResult, int]:
    return process_pool.run(pipeline.process_shard, recipe, shard, drops.value, store_url, staging, start, stop,
                            decisions.value, source_shard)


@task(name="part", task_run_name="part-{fn.__name__}", cache_policy=NO_CACHE)
def part_task(fn: Callable[..., T], args: Whole[tuple]) -> tuple[T, int]:
    """One piece of a decision or of the statistics' pass, or the guards."""
    return process_pool.run(fn, *args.value)


@dataclass
class TaskMap:
    """How the pieces of a decision or of the statistics' pass run: as tasks on the run's workers, or here when
    there is only one (a task's start-up would cost more than the piece). Counts the tasks it started."""

    peak: WorkerPeak
    tasks: int = 0

    def __call__(self, fn: Callable[..., T], arguments: list[tuple]) -> list[T]:
        if len(arguments) <= 1:
            return [fn(*args) for args in arguments]
        futures = [part_task.submit(fn, Whole(args)) for args in arguments]
        self.tasks += len(futures)
        return [self.peak.take(future.result()) for future in futures]


class DecisionMemory:
    """How much this process's resident memory grew while a decision ran here: Linux's peak (VmHWM) is reset
    through /proc/self/clear_refs before, read after. The process's peak over the run is kept apart."""

    def __init__(self) -> None:
        self.run_peak = 0

    def measure(self, work: Callable[..., T], *args: Any) -> tuple[T, int | None]:
        before, peak = process_pool.memory_status("VmRSS"), process_pool.memory_status("VmHWM")
        self.run_peak = max(self.run_peak, peak or 0)
        if not process_pool.reset_peak():
            before = None
        result = work(*args)
        after = process_pool.memory_status("VmHWM")
        if after is not None:
            self.run_peak = max(self.run_peak, after)
        return result, (max(after - before, 0) if before is not None and after is not None else None)

    def peak(self) -> int:
        return max(self.run_peak, process_pool.peak_rss_bytes())


@flow(name="curate", log_prints=True)
def curate_flow(recipe: Recipe, store_url: str, name: str, parents: list[str] | None = None,
                show_progress: bool = False, manifest_extra: dict[str, Any] | None = None,
                override_guards: str | None = None, synthesis: bool = False,
                seen: dict[str, list[int]] | None = None, carry: str | None = None,
                forecast: dict[str, int] | None = None, partitions: int = 1,
                decision_min_docs: int = Workers.min_docs,
                stats_min_docs: int = pipeline.STATS_MIN_DOCS) -> dict[str, Any]:
    """Run `recipe` over its inputs and publish the result as version `name` of the store
    (`manifest_extra`: entries a calling flow adds to, or puts in place of, the manifest's own). A version
    that fails a hard model-collapse guard is not published unless `override_guards` gives a reason.
    `seen`: input files an earlier run ingested (path -> [size, mtime_ns]), skipped unless changed;
    `carry`: a version whose records the new one holds too (an incremental run; its ids stay taken);
    `partitions`: how many pieces a global decision's heavy parts may be cut into (about the worker count), each
    of at least `decision_min_docs` documents (`stats_min_docs` for the statistics' pass).

    Every finished task persists its result in the staging directory, which is named by the run's
    key: after a crash (even kill -9) the same command finds them and redoes only the rest."""
    started = time.perf_counter()
    store = VersionStore(store_url)
    recipe.preflight(store.url)  # what the steps need from the store and from files, before any work
    written = recipe
    recipe, calibration = calibrate(recipe, store.url)  # the bounds the run uses (part of its key)
    recipe = pipeline.sized_for(recipe)  # several shards for a small input, unless the recipe says otherwise
    plan = pipeline.plan_ingest(recipe, seen)  # bad inputs and name clashes fail here, before any work
    # What `curate run` printed (`forecast`), or estimated here: kept to compare with what the run used.
    estimated = pipeline.Estimate(**forecast) if forecast else pipeline.estimate(recipe, plan)
    staging = store.begin(name, pipeline.run_key(recipe, plan, parents or [],
                                                 extra=f"synthesis={synthesis} carry={carry}"))
    timings: dict[str, dict[str, float]] = {}
    peak = WorkerPeak()
    memory = DecisionMemory()
    try:
        with RunProgress(show_progress) as progress:
            if staging.resumed:
                progress.note(f"resuming an interrupted run of {name!r}: finished tasks in {staging.path} are reused")
            ingested, drops = _ingest(recipe, plan, store.url, staging.path, carry, progress, timings, peak)
            task_map = TaskMap(peak)
            workers = Workers(map=task_map, partitions=partitions, min_docs=decision_min_docs)
            processed, reports = _process_shards(recipe, ingested, drops, store.url, staging.path, progress, timings,
                                                 peak, workers, task_map, memory)

        clock, tasks = time.perf_counter(), task_map.tasks
        store.harmonise(staging)  # the staged parts read as one table for the guards and statistics alike
        guarded = _guards_beside(recipe, store.url, staging.path, parents or [], synthesis, partitions)
        planted = pipeline.planted_defects(recipe, store.url, staging.path)
        manifest = pipeline.build_manifest(written, plan, ingested, sum(len(d) for d in drops.values()), processed,
                                           parents or [], time.perf_counter() - started, planted, reports)
        if calibration:
            manifest["calibration"] = calibration
        if carry:
            manifest["carried"] = pipeline.carry_over(store.url, staging.path, carry)
        resumed = {"ingest_tasks": sum(r.resumed for r in ingested), "shard_tasks": sum(r.resumed for r in processed)}
        if any(resumed.values()):
            manifest["resumed"] = {**resumed, "of_ingest_tasks": len(ingested), "of_shard_tasks": len(processed)}
        manifest.update(manifest_extra or {})
        if guarded is None:  # here, before the statistics: a version that fails its guards costs no statistics
            manifest["guards"] = pipeline.version_guards(
                store.url, staging.path, recipe, parents or [], synthesis,
                perplexity=perplexity_scorer(recipe.resolved_guards.reference_model))
            override = gate(manifest["guards"], name, override_guards)
        computed = pipeline.version_stats(store.url, staging.path, parents or [], workers, stats_min_docs)
        if guarded is not None:
            manifest["guards"] = peak.take(guarded.result())
            override = gate(manifest["guards"], name, override_guards)
        if override:
            manifest["guard_override"] = override
        timings["guards+stats"] = {**_timing(clock, manifest["steps"][-1]["kept"] if manifest["steps"] else 0),
                                   "tasks": task_map.tasks - tasks + (guarded is not None)}
        clock = time.perf_counter()
        manifest["timings"] = timings
        # Before publishing removes the intermediates: the staging folder holds the most it will hold.
        actual = pipeline.run_actuals(ingested, peak.rss_bytes, store.fs.du(staging.path))

        def extras(staged, final: dict[str, Any]) -> list[str]:  # the statistics' files and report
            written = pipeline.version_extras(store.url, computed)(staged, final)
            final["timings"]["publish"] = _timing(clock, final["rows"])
            final["run_seconds"] = round(time.perf_counter() - started, 3)
            # After statistics, the flow process's last large step; not part of the content fingerprint.
            final.update(estimated.versus({**actual, "flow_peak_rss_bytes": memory.peak()}))
            return written

        path = store.publish(staging, manifest, extras=extras)
    except BaseException:
        store.release(staging)  # the finished tasks stay, for a rerun of the same command to resume
        raise
    result = store.manifest(name)
    result["path"] = path
    publish_artifacts(result)
    return result


def _guards_beside(recipe: Recipe, store_url: str, staging: str, parents: list[str], synthesis: bool,
                   partitions: int) -> Any:
    """The guards as a task on a worker, to run while the flow computes the statistics: with more than one worker,
    and no reference model to score perplexity with (loaded where it scores); else None, to run them here."""
    if partitions <= 1 or recipe.resolved_guards.reference_model:
        return None
    return part_task.submit(pipeline.version_guards, Whole((store_url, staging, recipe, parents, synthesis)))


def _ingest(recipe: Recipe, plan: pipeline.Plan, store_url: str, staging: str, carry: str | None,
            progress: RunProgress, timings: dict[str, dict[str, float]], peak: WorkerPeak
            ) -> tuple[list[pipeline.IngestResult], dict[str, list[tuple[int, str]]]]:
    """Ingest every input unit (a task each) and find the duplicate ids; returns the results in unit order and
    the rows to drop per raw shard."""
    clock = time.perf_counter()
    stage = progress.stage("ingest", total=max(plan.nbytes, 1), unit="bytes")
    futures = [ingest_task.submit(recipe, unit, store_url, staging) for unit in plan.units]
    ingested = []
    for future in as_completed(futures):
        result = peak.take(future.result())
        ingested.append(result)
        progress.advance(stage, result.bytes_read, result.records)
    ingested.sort(key=lambda r: r.unit)
    if plan.quarantined:
        pipeline.write_quarantine(store_url, staging, plan.quarantined)
    drops = pipeline.duplicate_ids(store_url, [s for r in ingested for s in r.shards], carried=carry)
    timings["ingest"] = _timing(clock, sum(r.lines_read for r in ingested), plan.nbytes)
    return ingested, drops


def _process_shards(recipe: Recipe, ingested: list[pipeline.IngestResult], drops: dict[str, list[tuple[int, str]]],
                    store_url: str, staging: str, progress: RunProgress, timings: dict[str, dict[str, float]],
                    peak: WorkerPeak, workers: Workers, task_map: TaskMap, memory: DecisionMemory
                    ) -> tuple[list[pipeline.ShardResult], dict[str, dict[str, Any]]]:
    """Run the steps over every shard (a task each), in rounds: a round starts at a global step, decided from
    every shard's summary of the round before (its heavy parts on the workers). Returns the shard results in
    shard order and the global steps' reports; each round's timing records how much the flow's own memory grew
    while it decided."""
    shards = [s for r in ingested for s in r.shards]
    processed: list[pipeline.ShardResult] = []
    decisions: dict[int, Any] = {}
    reports: dict[str, dict[str, Any]] = {}
    inputs = {s: s for s in shards}  # raw shard -> the shard the next round reads
    previous: list[pipeline.ShardResult] = []
    for number, (start, stop) in enumerate(pipeline.rounds(recipe)):
        clock = time.perf_counter()
        decision_costs: dict[str, int] = {}
        if previous:  # the round starts at a global step: decide from every shard's summary
            tasks = task_map.tasks
            (decisions[start], report), growth = memory.measure(pipeline.decide, recipe, start, previous, store_url,
                                                                workers)
            decision_costs["decide_tasks"] = task_map.tasks - tasks
            if growth is not None:
                decision_costs["decide_flow_memory_growth_bytes"] = growth
            if report is not None:
                reports[recipe.build_steps()[start][0]] = report
        decided = time.perf_counter() - clock
        label = "steps" if number == 0 else f"steps {number + 1}"
        stage = progress.stage(label, total=sum(r.records for r in ingested) or 1)
        futures = [shard_task.submit(recipe, inputs[s], Whole(drops.get(s, []) if number == 0 else []), store_url,
                                     staging, start, stop, Whole(decisions), s) for s in shards]
        previous = []
        docs = 0
        for future in as_completed(futures):
            result = peak.take(future.result())
            processed.append(result)
            if result.output:
                inputs[result.shard] = result.output
                previous.append(result)
            n = next(iter(result.steps.values()))["in"] if result.steps else result.rows_out
            docs += n + result.duplicate_id_rejects
            progress.advance(stage, n + result.duplicate_id_rejects, n + result.duplicate_id_rejects)
        timings[label] = _timing(clock, docs)
        timings[label].update(steps=[n for n, _ in recipe.build_steps()[start:stop]],
                              decide_seconds=round(decided, 3), **decision_costs)
    processed.sort(key=lambda r: r.shard)
    return processed, reports


def _timing(since: float, docs: int, nbytes: int | None = None) -> dict[str, float]:
    """Seconds and documents per second of one stage of the run."""
    seconds = time.perf_counter() - since
    out = {"seconds": round(seconds, 3), "docs": docs, "docs_per_s": round(docs / seconds, 1) if seconds > 0 else None}
    if nbytes is not None:
        out["mb_per_s"] = round(nbytes / 1e6 / seconds, 2) if seconds > 0 else None
    return out


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
             f"(accounting {accounting(manifest)})",
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


def task_runner(workers: int | None, cluster: str | None = None):
    """Where the tasks run: a process per core by default; one worker runs them in-process (handy for
    debugging); `local:N` starts a Dask LocalCluster of N single-threaded worker processes and
    `tcp://host:8786` uses an existing Dask scheduler, both through Prefect's DaskTaskRunner."""
    if cluster:
        # Only with --cluster: dask.distributed adds ~0.6 s to every flow start and to each pool worker.
        from prefect_dask import DaskTaskRunner

        if cluster.startswith("local:"):
            count = cluster.removeprefix("local:")
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"--cluster {cluster!r}: expected local:N with N >= 1 worker processes")
            return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                                  cluster_kwargs={"n_workers": int(count), "threads_per_worker": 1,
                                                  "processes": True, "dashboard_address": None})
        if cluster.startswith(("tcp://", "tls://", "ucx://")):
            return DaskTaskRunner(address=cluster)
        raise ValueError(f"--cluster {cluster!r}: expected local:N or a scheduler address such as tcp://host:8786")
    workers = workers or os.cpu_count() or 1
    return ThreadPoolTaskRunner(max_workers=1) if workers == 1 else ProcessPoolTaskRunner(max_workers=workers)


def curation_runner(workers: int | None, cluster: str | None = None):
    """Where a curation flow's tasks run: as `task_runner`, except that on this machine with several workers the
    tasks run in the flow's threads and hand their work to the command's worker processes (`flows/process_pool.py`),
    with twice as many task threads as workers so that each worker has its next call queued."""
    workers = workers or os.cpu_count() or 1
    if cluster or workers == 1:
        process_pool.stop()  # an earlier run's pool: this one's tasks run here, or on the cluster
        return task_runner(workers, cluster)
    process_pool.start(workers)
    return ThreadPoolTaskRunner(max_workers=2 * workers)


def run_curation(recipe: Recipe, store_url: str, name: str, parents: list[str] | None = None,
                 workers: int | None = None, show_progress: bool = False,
                 manifest_extra: dict[str, Any] | None = None, override_guards: str | None = None,
                 cluster: str | None = None, seen: dict[str, list[int]] | None = None,
                 carry: str | None = None, forecast: pipeline.Estimate | None = None,
                 decision_min_docs: int = Workers.min_docs,
                 stats_min_docs: int = pipeline.STATS_MIN_DOCS) -> dict[str, Any]:
    """`forecast`: the estimate the caller already made and printed (else the flow makes one);
    `decision_min_docs` (`stats_min_docs`): the fewest documents per piece of a global decision (of the
    statistics' pass) sent to a worker."""
    return curate_flow.with_options(task_runner=curation_runner(workers, cluster))(
        recipe, store_url, name, parents=parents, show_progress=show_progress, manifest_extra=manifest_extra,
        override_guards=override_guards, seen=seen, carry=carry, forecast=asdict(forecast) if forecast else None,
        partitions=pipeline.parallelism(workers, cluster), decision_min_docs=decision_min_docs,
        stats_min_docs=stats_min_docs)
