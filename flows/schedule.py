"""Scheduled, incremental curation: one flow run per schedule tick, each publishing the next version
of a series from the input files that are new since the last one (curation/series.py).

`serve` registers the flow as a Prefect deployment with a cron schedule on the Prefect server that
PREFECT_API_URL names, then runs the scheduled flow runs until stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType

from curation import series as S
from curation.diff import diff_versions, summarize_diff
from curation.pipeline import parallelism, plan_ingest
from curation.recipe import load_recipe
from curation.store import VersionStore
from flows.curate import artifact_key, curate_flow, curation_runner


@flow(name="curate-increment", log_prints=True)
def increment_flow(recipe_path: str, store_url: str, series: str, workers: int | None = None,
                   cluster: str | None = None, show_progress: bool = False, start: str | None = None) -> dict[str, Any]:
    """Publish the series' next version if new input files arrived; returns its manifest, or
    {"published": None, ...} when there was nothing new. `start`: the version a new series continues."""
    recipe = load_recipe(recipe_path)
    store = VersionStore(store_url)
    step = S.next_increment(store, series, recipe, start)
    plan = plan_ingest(step.recipe, step.seen)
    if not plan.units and not plan.quarantined:
        S.record(store, series)  # repairs a summary that a run killed after publishing left behind
        message = (f"series {series}: no new input files since {step.parent or 'the start'} "
                   f"({len(step.seen)} already ingested); nothing published")
        print(message)
        create_markdown_artifact(f"# Series `{series}`\n\n{message}", key=artifact_key(f"{series}-latest"),
                                 description=f"Latest run of series {series}")
        return {"published": None, "series": series, "parent": step.parent, "message": message}
    new_files = [f for unit in plan.units for f in unit.files]
    print(f"series {series}: {len(new_files)} new input file(s) -> {step.name} (parent {step.parent or 'none'})")
    # The served flow is loaded from source by Prefect's runner, where the subflow's pydantic parameter model
    # cannot resolve `Recipe`; the recipe was validated by load_recipe above, so Prefect need not do it again.
    manifest = curate_flow.with_options(task_runner=curation_runner(workers, cluster), validate_parameters=False)(
        step.recipe, store.url, step.name, parents=[step.parent] if step.parent else [], show_progress=show_progress,
        manifest_extra={"series": {"name": series, "sequence": step.sequence, "new_files": len(new_files),
                                   "recipe_path": str(recipe_path)}},
        seen=step.seen, carry=step.parent, partitions=parallelism(workers, cluster))
    S.record(store, series)
    manifest["published"] = manifest["name"]
    if step.parent:
        manifest["diff"] = publish_diff(store, step.parent, manifest["name"])
    return manifest


def publish_diff(store: VersionStore, a: str, b: str) -> dict[str, Any]:
    """What the increment changed, as a Prefect table artifact (and returned for the caller)."""
    summary = summarize_diff(diff_versions(store, a, b, examples=3))
    rows = [{"measure": k, "value": summary[k]} for k in ("added", "removed", "changed")]
    rows += [{"measure": f"removed by {r['step']}: {r['reason']}", "value": r["count"]} for r in summary["top_reasons"]]
    rows += [{"measure": k, "value": f"{v}"} for k, v in (summary.get("stats") or {}).items()]
    create_table_artifact(rows, key=artifact_key(f"{b}-diff"), description=f"curate diff {a} {b}")
    return summary


def serve(recipe_path: Path, store_url: str, series: str, cron: str, workers: int | None = None,
          cluster: str | None = None, timezone: str | None = None, start: str | None = None) -> None:
    """Register the deployment `curate-increment/<series>` with its cron schedule and serve its runs
    (blocks until interrupted)."""
    store = VersionStore(store_url)
    parameters = {"recipe_path": str(recipe_path.resolve()), "store_url": store.url if not store.local else store.root,
                  "series": series, "workers": workers, "cluster": cluster, "start": start}
    increment_flow.serve(name=series, schedules=[CronSchedule(cron=cron, timezone=timezone)], parameters=parameters,
                         description=f"Incremental curation of {recipe_path.name} into series {series}",
                         tags=["curate", f"series:{series}"], limit=1,  # one increment at a time
                         entrypoint_type=EntrypointType.MODULE_PATH)  # importable wherever curate is installed
