"""The `curate` command line: thin calls into the flows and the version store."""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

# curation/, training/ (but its torch-free config) and the Prefect flows are imported inside the commands:
# Prefect must wait for `prefect_env`, and they would slow every start (flows/cli_common.py).
from flows.cli_ablate import ablate, ablate_command
from flows.cli_classifier import classifier_app
from flows.cli_collapse import collapse_command
from flows.cli_common import (
    DEFAULT_STORE,
    DEMO_BATCH_SIZE,
    DEMO_SEEDS,
    DEMO_VOCAB_SIZE,
    ClusterOption,
    StoreOption,
    console,
    crash,
    fail,
    prefect_api_ready,
    prefect_env,
    require_version,
    route_logs,
    valid_name,
)
from flows.cli_evalsets import evalset_app
from flows.cli_inspect import diff_command, guards_command, why_command
from flows.cli_ops import increment_command, serve_command, server_command
from flows.cli_synthesize import synthesize_command
from flows.cli_train import finetune_command, generate_command, sample, train_command
from flows.cli_tune import tune_command
from flows.printing import (
    accounting,
    calibration_table,
    planted_table,
    print_dedup_reports,
    print_guards,
    steps_table,
)

if TYPE_CHECKING:
    from curation.pipeline import Estimate, Plan
    from curation.recipe import Recipe


class _App(typer.Typer):
    """The command line: an error nothing caught is still one line, its traceback in the log file."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the last resort: one line instead of a traceback
            crash(exc)


app = _App(help="Curate LLM training data into versioned, fully accounted datasets.",
           no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", envvar="CURATE_DEBUG",
                                                 help="Show Prefect's logs and tracebacks on the terminal "
                                                      "instead of in the log file.")] = False) -> None:
    route_logs(debug)


# The commands defined in other modules, in the order `curate --help` lists them (before this module's own).
app.add_typer(classifier_app, name="classifier", help="Train and use fastText quality classifiers.")
app.add_typer(evalset_app, name="evalset", help="Frozen evaluation sets: register and list.")
app.command(name="train")(train_command)
app.command(name="finetune")(finetune_command)
app.command(name="generate")(generate_command)
app.command(name="ablate")(ablate_command)
app.command(name="tune")(tune_command)
app.command(name="synthesize")(synthesize_command)
app.command(name="guards")(guards_command)
app.command(name="collapse-sim")(collapse_command)
app.command(name="increment")(increment_command)
app.command(name="serve")(serve_command)
app.command(name="server")(server_command)
app.command(name="diff")(diff_command)
app.command(name="why")(why_command)


def _run(recipe_path: Path, store: str, name: str | None, parents: list[str], workers: int | None,
         verbose: bool, override_guards: str | None = None, cluster: str | None = None) -> dict[str, Any]:
    """`curate run`'s body, also called by `curate demo`: check and plan, curate, show what was published."""
    prefect_env(verbose, wait=False)  # Prefect's temporary server starts while the run is planned and forecast
    recipe, name, plan = _plan(recipe_path, store, name, parents)  # a mistake ends the command before any work
    from curation.guards import GuardError
    from curation.ingest import IngestError
    from curation.pipeline import ShardError
    from curation.recipe import RecipeError
    from curation.reportkit import import_plotting
    from curation.store import StoreError
    from flows import process_pool
    from flows.curate import run_curation

    forecast, workers = _forecast(recipe, plan, workers, cluster)
    if not cluster and workers and workers > 1:
        process_pool.start(workers)  # the worker processes start while the server does
    import_plotting()  # what publishing needs, imported while the server is still starting
    prefect_api_ready()
    try:
        manifest = run_curation(recipe, store, name, parents=parents, workers=workers, show_progress=True,
                                override_guards=override_guards, cluster=cluster, forecast=forecast)
    except (RecipeError, IngestError, StoreError, GuardError, ValueError, ShardError) as exc:
        fail(f"{exc} (finished tasks are kept: rerun the same command to resume)" if isinstance(exc, ShardError)
             else str(exc))
    _print_published(manifest)
    return manifest


def _plan(recipe_path: Path, store: str, name: str | None, parents: list[str]) -> tuple[Recipe, str, Plan]:
    """The recipe, the version's name and the ingest plan, every mistake in them (a clash, a missing parent, what
    a step needs) found before any work; prints the plan."""
    from curation.ingest import IngestError
    from curation.pipeline import plan_ingest
    from curation.recipe import RecipeError, load_recipe
    from curation.store import StoreError, VersionStore

    try:
        recipe = load_recipe(recipe_path)
        if recipe.synthesize is not None:
            fail(f"{recipe_path}: a synthesis recipe; run it with `curate synthesize`")
        name = name or recipe.name
        if not name:
            fail(f"{recipe_path}: the recipe has no `name:`; pass --name")
        valid_name(name, "version")
        target = VersionStore(store)
        if target.exists(name):
            fail(f"version {name!r} already exists in {target.url}; versions are immutable, pick another name")
        for parent in parents:
            require_version(target, parent)
        recipe.preflight(target.url)
        plan = plan_ingest(recipe)
    except (RecipeError, IngestError, StoreError) as exc:
        fail(str(exc))
    console.print(f"[bold]curate[/] {name}: {len(recipe.inputs)} input(s), {len(plan.units)} ingest task(s), "
                  f"{plan.nbytes / 1e6:,.1f} MB, steps: {', '.join(s.instance_name for s in recipe.steps) or 'none'}")
    return recipe, name, plan


def _forecast(recipe: Recipe, plan: Plan, workers: int | None,
              cluster: str | None) -> tuple[Estimate, int | None]:
    """Prints what the run will need (documents, memory, disk), from samples spread over each input's files, and
    returns it (the manifest records it next to what the run used) with the worker processes to start: without a
    cluster, no more than the tasks that can run at once (`pipeline.pool_size`)."""
    from curation.ingest import IngestError
    from curation.pipeline import estimate, parallelism, pool_size, sized_for
    from curation.recipe import RecipeError
    from curation.store import StoreError

    try:
        sized = sized_for(recipe)
        forecast = estimate(sized, plan)
    except (RecipeError, IngestError, StoreError) as exc:
        fail(str(exc))
    if not cluster:
        workers = pool_size(parallelism(workers), sized, plan, forecast)
    console.print(forecast.describe(parallelism(workers, cluster)))
    return forecast, workers


def _print_published(manifest: dict[str, Any]) -> None:
    resumed = manifest.get("resumed")
    if resumed:
        console.print(f"resumed: {resumed['ingest_tasks']} of {resumed['of_ingest_tasks']} ingest tasks and "
                      f"{resumed['shard_tasks']} of {resumed['of_shard_tasks']} shard tasks were already done")
    console.print(steps_table(manifest))
    if (calibrated := calibration_table(manifest)) is not None:
        console.print(calibrated)
    if "planted_defects" in manifest:
        console.print(planted_table(manifest["planted_defects"]))
    print_guards(manifest)
    size = manifest["size"]
    console.print(f"[green]published[/] {manifest['name']}: {manifest['rows']:,} records, {size['chars']:,} chars, "
                  f"{manifest['rejected_rows']:,} rejects, in {manifest['run_seconds']:.1f} s, "
                  f"accounting {accounting(manifest)}")
    console.print(f"path: {manifest['path']}")


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    store: StoreOption = DEFAULT_STORE,
    name: Annotated[str | None, typer.Option(help="Version name (default: the recipe's name).")] = None,
    parent: Annotated[list[str] | None, typer.Option(help="Parent version(s) this one derives from.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: every core).")] = None,
    override_guards: Annotated[str | None, typer.Option(help="Publish even if a hard model-collapse guard fails; "
                                                             "the reason is recorded in the manifest.")] = None,
    cluster: ClusterOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Run a recipe: ingest -> steps -> publish a new version. Rerunning a command that was interrupted
    (even by kill -9) resumes it: finished ingest and shard tasks are not redone."""
    _run(recipe, store, name, parent or [], workers, verbose, override_guards, cluster)


@app.command()
def demo(
    store: StoreOption = DEFAULT_STORE,
    scale: Annotated[float, typer.Option(help="Corpus size multiplier (1.0: ~5,000 documents).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the noise injector.")] = 0,
    name: Annotated[str | None, typer.Option(help="Version name (default: demo, demo-2, ...).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: every core).")] = None,
    train_tokens: Annotated[int, typer.Option(help="Token budget of each ablation run: the tiny GPT trained on "
                                                   "every stage of the recipe (0: skip the ablation).")] = 409_600,
    seeds: Annotated[int, typer.Option(help="Seeds of the ablation (each stage is trained with every seed).")
                     ] = DEMO_SEEDS,
    synth_records: Annotated[int, typer.Option(help="Instruction records to synthesise from the curated version "
                                                    "with the trained GPT (0: skip).")] = 96,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Build the built-in demo corpus (real installed text + planted defects), curate it with the web's default
    rules and with the same rules scoped and calibrated on its trusted sources, and measure what each did to a
    tiny GPT's held-out loss."""
    from curation.demo import write_raw_recipe, write_web_recipe
    from curation.store import VersionStore

    target = VersionStore(store)
    corpus, recipe_path, evalset = _demo_inputs(target, seed, scale)
    name = name or _free_demo_name(target)
    console.rule(f"{name}-raw: the baseline (the inputs normalised and decontaminated against the held-out set)")
    _run(write_raw_recipe(recipe_path), store, f"{name}-raw", [], workers, verbose)
    console.rule(f"{name}-web: the papers' rules with their bounds, on every source (the web defaults)")
    _run(write_web_recipe(recipe_path), store, f"{name}-web", [f"{name}-raw"], workers, verbose)
    console.rule(f"{name}: the same rules scoped to the crawl and calibrated on the trusted sources")
    _run(recipe_path, store, name, [f"{name}-raw"], workers, verbose)
    console.rule(f"what curation changed: curate diff {name}-raw {name}")
    diff_command(f"{name}-raw", name, store, False, 3)
    console.print(f"reports: {target.version_path(name)}/report.html, {target.version_path(name + '-raw')}/report.html")
    _next_drop(corpus, recipe_path, target, name, seed, workers, verbose)
    checkpoint = _demo_ablation(store, recipe_path, evalset, name, train_tokens, seeds, workers, verbose) \
        if train_tokens else None
    if synth_records:
        _demo_synthesis(corpus, store, name, checkpoint, evalset, synth_records, workers, verbose)


def _demo_inputs(target, seed: int, scale: float) -> tuple[Any, Path, str]:
    """The demo corpus, its quality classifier, its held-out evaluation set (registered once) and its recipe."""
    from curation.classifier import model_dir
    from curation.demo import build_demo_corpus, train_demo_classifier, write_demo_recipe
    from curation.evalsets import evalset_exists, register_evalset

    root = Path(target.root) / "demo-inputs" / f"seed{seed}-scale{scale:g}"
    corpus = build_demo_corpus(root, seed=seed, scale=scale)
    console.print("training the demo's fastText quality classifier (human sources vs. the raw crawl) ...")
    model = train_demo_classifier(corpus, model_dir(target, f"demo-seed{seed}-scale{scale:g}"), seed=seed)
    evalset = f"demo-heldout-seed{seed}-scale{scale:g}"
    if not evalset_exists(target, evalset):
        info = register_evalset(target, evalset, [str(p) for p in corpus.heldout_files])
        console.print(f"registered evaluation set {evalset}: {info.docs} held-out human documents, "
                      f"fingerprint {info.fingerprint[:12]}")
    recipe_path = write_demo_recipe(corpus, model, evalset)
    console.print(f"demo corpus: {root} ({', '.join(f'{k} {v}' for k, v in sorted(corpus.counts.items()))})")
    return corpus, recipe_path, evalset


def _free_demo_name(target) -> str:
    """demo, demo-2, ...: the first name whose version and raw version are both free."""
    taken = set(target.names())
    return next(n for n in ("demo", *(f"demo-{i}" for i in range(2, 10_000)))
                if not {n, f"{n}-raw", f"{n}-web"} & taken)


def _next_drop(corpus, recipe_path: Path, target, name: str, seed: int, workers: int | None, verbose: bool) -> None:
    """The crawl's next drop, curated incrementally on top of the curated version (what a scheduled
    `curate serve` run does each night)."""
    import pyarrow.compute as pc

    from curation.demo import write_daily_recipe, write_next_crawl

    table = target.read_table(name, columns=["id", "text", "source"])
    table = table.filter(pc.equal(table.column("source"), "web_crawl"))
    drop, counts = write_next_crawl(corpus, list(zip(table.column("id").to_pylist(), table.column("text").to_pylist())),
                                    seed)
    console.rule(f"{name}-daily-0001: the crawl's next drop on top of {name}: "
                 f"curate increment {write_daily_recipe(recipe_path).name} --from {name}")
    console.print(f"{drop.name}: {', '.join(f'{v} {k}' for k, v in counts.items())}")
    increment_command(recipe_path.with_name("recipe-daily.yaml"), target.url, f"{name}-daily", workers=workers,
                      cluster=None, start=name, verbose=verbose)


def _demo_ablation(store: str, recipe_path: Path, evalset: str, name: str, train_tokens: int, seeds: int,
                   workers: int | None, verbose: bool) -> Path:
    """What each stage of the recipe, and the web defaults, did to the loss; returns the checkpoint of the last
    stage's seed-0 run."""
    console.rule(f"what each stage did to the loss, and the web defaults: curate ablate --steps {recipe_path.name} "
                 f"{name}-web ({seeds} seeds x {train_tokens:,} tokens per version)")
    result = ablate([f"{name}-web"], store, steps=recipe_path, tokens=train_tokens, seeds=seeds,
                    vocab_size=DEMO_VOCAB_SIZE, batch_size=DEMO_BATCH_SIZE, eval_set=[evalset], name=f"{name}-stages",
                    workers=workers, verbose=verbose, stage_prefix=name)
    final = result["waterfall"][-1]["stage"]
    run = next(r for r in result["runs"] if r["version"] == final and r["seed"] == 0)
    checkpoint = Path(run["dir"]) / "checkpoint.pt"
    console.print(f"sample from the model trained on {final} (seed 0): "
                  + sample(checkpoint, "And God said", 40, temperature=0.8, top_k=40),
                  markup=False, highlight=False)
    return checkpoint


def _demo_synthesis(corpus, store: str, name: str, checkpoint: Path | None, evalset: str, records: int,
                    workers: int | None, verbose: bool) -> None:
    """Instruction records grounded in the curated version, written by the GPT the ablation trained."""
    from curation.demo import write_synth_recipe

    synth_path = write_synth_recipe(corpus, name, checkpoint, evalset, records)
    who = "the GPT trained on it" if checkpoint else "the programmatic backend (no trained model)"
    console.rule(f"{name}-instruct: instruction records grounded in {name}, written by {who}: "
                 f"curate synthesize {synth_path.name}")
    synthesize_command(synth_path, store, f"{name}-instruct", workers=workers, verbose=verbose)


@app.command()
def versions(store: StoreOption = DEFAULT_STORE) -> None:
    """List the versions in the store, oldest first."""
    from curation.store import VersionStore

    target = VersionStore(store)
    table = Table(title=f"versions in {target.url}", title_justify="left")
    for column in ("name", "created", "records", "rejects", "chars", "parents", "fingerprint"):
        table.add_column(column, justify="right" if column in ("records", "rejects", "chars") else "left")
    for m in target.versions():
        table.add_row(m["name"], m["created_at"], f"{m['rows']:,}", f"{m['rejected_rows']:,}",
                      f"{m['size']['chars']:,}", ", ".join(m["parents"]) or "-", m["fingerprint"][:12])
    console.print(table)


@app.command()
def show(
    version: Annotated[str, typer.Argument(help="Version name.")],
    store: StoreOption = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.")] = False,
) -> None:
    """Show a version: what made it, what each step did, what it holds."""
    from curation.store import VersionStore

    target = VersionStore(store)
    manifest = require_version(target, version)
    if as_json:
        json.dump(manifest, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    console.print(f"[bold]{manifest['name']}[/]  created {manifest['created_at']}  "
                  f"parents: {', '.join(manifest['parents']) or '-'}")
    console.print(f"recipe hash {manifest['recipe_hash'][:12]}  fingerprint {manifest['fingerprint'][:12]}  "
                  f"accounting {accounting(manifest)}")
    console.print(steps_table(manifest))
    synthesis = manifest.get("synthesis")
    if synthesis:
        console.print(f"synthesised: {synthesis['attempts']:,} attempts by {synthesis['generator']} (method "
                      f"{synthesis['method']}, schema {synthesis['schema']}, generation {synthesis['generation']}, "
                      f"prompt templates {', '.join(synthesis['prompt_templates'])}); {manifest['rows']:,} accepted")
    sources = Table(title="by source", title_justify="left")
    for column in ("source", "records", "chars", "bytes"):
        sources.add_column(column, justify="left" if column == "source" else "right")
    for source, s in manifest["size"]["by_source"].items():
        sources.add_row(source, f"{s['rows']:,}", f"{s['chars']:,}", f"{s['bytes']:,}")
    console.print(sources)
    if "planted_defects" in manifest:
        console.print(planted_table(manifest["planted_defects"]))
    if (calibrated := calibration_table(manifest)) is not None:
        console.print(calibrated)
    print_dedup_reports(manifest)
    if "estimate" in manifest:
        console.print(_estimate_versus_actual(manifest))
    data = [f for f in manifest["files"] if f["kind"] == "data"]
    console.print(f"{len(data)} data file(s), {sum(f['bytes'] for f in data) / 1e6:,.2f} MB; "
                  f"path: {target.version_path(version)}")


def _estimate_versus_actual(manifest: dict[str, Any]) -> str:
    """One line: each estimated quantity, what the run really used and the estimate's error."""
    def size(n: float) -> str:
        return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.0f} MB"

    estimate, actual = manifest["estimate"], manifest["actual"]
    parts = []
    for label, key, measured, unit in (("documents", "documents", "documents", "{:,}".format),
                                       ("text", "text_bytes", "text_bytes", size),
                                       ("worker memory", "worker_memory_bytes", "worker_peak_rss_bytes", size),
                                       ("disk", "disk_bytes", "disk_peak_bytes", size)):
        ratio = manifest.get("estimate_ratio", {}).get(key)
        versus = f"{unit(actual[measured])} ({ratio - 1:+.0%})" if ratio else "not measured"
        parts.append(f"{label} {unit(estimate[key])} vs {versus}")
    return (f"estimate vs actual: {', '.join(parts)}; flow process peak {size(actual['flow_peak_rss_bytes'])} "
            f"(dedup decisions estimate {size(estimate['dedup_memory_bytes'])})")


@app.command()
def thresholds(
    version: Annotated[str, typer.Argument(help="A version whose filter ran with `mode: annotate`.")],
    rule: Annotated[str, typer.Argument(help="Rule (step) name, e.g. gopher_quality.")],
    signal: Annotated[list[str] | None, typer.Option(help="Only these signals (default: all of the rule's).")] = None,
    store: StoreOption = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the curves as JSON.")] = False,
) -> None:
    """Documents and tokens a threshold would keep, per signal, with percentile and k-sigma suggestions; the
    bounds the version ran with (calibrated ones included) and, for a version with planted or labelled defects,
    what the paper's bounds and those would remove of each class."""
    from curation.store import StoreError, VersionStore
    from curation.thresholds import defect_classes, recipe_params, rule_retention

    target = VersionStore(store)
    manifest = require_version(target, version)
    try:
        names = [c for c in target.schema(version).names if c.startswith(f"{rule}__")]
        table = target.read_table(version, columns=["id", "text", *names])
        params = recipe_params(manifest["recipe"], rule, manifest.get("calibration"))
        curves = rule_retention(table, rule, signal or None, params, classes=defect_classes(manifest, table))
    except (StoreError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        json.dump([c.as_dict() for c in curves], sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
        return
    for curve in curves:
        bounds = ", ".join(f"{side} (kept if {curve.ops.get(side, '')} {value:g})"
                           for side, value in curve.current.items()) or "none"
        docs, tokens = curve.kept_at_current
        console.print(f"[bold]{rule}.{curve.signal}[/]  {curve.docs:,} docs, {curve.tokens:,} tokens  "
                      f"mean {curve.mean:.4g}  sd {curve.std:.4g}  current bounds: {bounds} "
                      f"-> keeps {docs:.1%} of docs, {tokens:.1%} of tokens")
        table = Table(title_justify="left")
        for column in ("threshold", "docs kept (as min)", "tokens kept (as min)", "docs kept (as max)",
                       "tokens kept (as max)"):
            table.add_column(column, justify="right")
        for row in curve.rows:
            table.add_row(f"{row['threshold']:.4g}", *(f"{row[k]:.1%}" for k in (
                "docs_kept_as_min", "tokens_kept_as_min", "docs_kept_as_max", "tokens_kept_as_max")))
        console.print(table)
        console.print("suggestions: " + ", ".join(f"{k} = {v:.4g}" for k, v in curve.suggestions.items()))
        if curve.by_class:
            caught = Table(title=f"{rule}.{curve.signal}: what the bounds would remove, per class",
                           title_justify="left")
            for column in ("class", "docs", "paper's bounds", "as run"):
                caught.add_column(column, justify="left" if column == "class" else "right")
            for label, counts in curve.by_class.items():
                caught.add_row(label, f"{counts['docs']:,}", *(f"{counts[k]:,} ({counts[k] / counts['docs']:.0%})"
                                                               for k in ("paper", "as run")))
            console.print(caught)


@app.command()
def stats(
    version: Annotated[str, typer.Argument(help="Version name.")],
    store: StoreOption = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json as it is.")] = False,
) -> None:
    """A version's statistics: size, lengths, lexical and semantic diversity, coverage."""
    from curation.store import VersionStore

    target = VersionStore(store)
    require_version(target, version)
    try:
        with target.fs.open(f"{target.version_path(version)}/stats.json") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        fail(f"version {version!r} has no stats.json (published before statistics existed)")
    if as_json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    size = data["size"]
    console.print(f"[bold]{version}[/]: {size['docs']:,} documents, {size['chars']:,} characters, "
                  f"{size['words']:,} words" + (f", {size['tokens']:,} tokens" if size.get("tokens") else ""))
    sources = Table(title="by source", title_justify="left")
    for column in ("source", "docs", "chars", "words"):
        sources.add_column(column, justify="left" if column == "source" else "right")
    for source, s in size["by_source"].items():
        sources.add_row(source, f"{s['docs']:,}", f"{s['chars']:,}", f"{s['words']:,}")
    console.print(sources)
    q = data["length"]["quantiles"]
    console.print("length (chars): " + ", ".join(f"p{k} {v:,.0f}" for k, v in q.items()))
    sampled = data.get("sample", {})
    lexical = data.get("lexical", {})
    console.print(f"lexical diversity (sample of {sampled.get('size')} docs, seed {sampled.get('seed')}, first "
                  f"{sampled.get('words_per_doc')} words): " + ", ".join(
                      f"{k} {v:.4g}" for k, v in lexical.items() if isinstance(v, int | float)))
    semantic = data.get("semantic") or {}
    if semantic:
        entropy, vendi = semantic.get("cluster_entropy", 0.0), semantic.get("vendi_score", 0.0)
        console.print(f"semantic ({semantic.get('method')}, k={semantic.get('k')}): cluster entropy "
                      f"{entropy:.3f} bits, Vendi score {vendi:.2f}")
        clusters = Table(title="topic clusters", title_justify="left")
        for column in ("id", "share", "top terms"):
            clusters.add_column(column, justify="right" if column != "top terms" else "left")
        for c in semantic.get("clusters", []):
            clusters.add_row(str(c["id"]), f"{c['share']:.1%}", ", ".join(c["top_terms"][:8]))
        console.print(clusters)
    coverage = data.get("coverage")
    if coverage:
        lost = "; ".join(f"#{c['id']} ({', '.join(c['top_terms'][:4])})" for c in coverage["lost"]) or "none"
        console.print(f"coverage of {coverage['reference']}'s clusters: {coverage['covered_share']:.0%}; lost: {lost}")


@app.command()
def report(
    version: Annotated[str, typer.Argument(help="Version name.")],
    store: StoreOption = DEFAULT_STORE,
    open_browser: Annotated[bool, typer.Option("--open", help="Open it in the default browser.")] = False,
) -> None:
    """Path of a version's self-contained HTML report (made when it was published)."""
    from curation.store import VersionStore

    target = VersionStore(store)
    require_version(target, version)
    path = f"{target.version_path(version)}/report.html"
    if not target.fs.exists(path):
        fail(f"version {version!r} has no report.html (published before reports existed)")
    console.print(path)
    if open_browser:
        webbrowser.open(Path(path).resolve().as_uri() if target.local else path)


def main() -> None:
    """The `curate` command. Once it is done and every exit handler has run (Prefect's, the temporary server's
    stop, logging's), the process ends at once: tearing down the ~3,500 modules a run imports took ~1 s of every
    command on 2 cores (bench/overhead.py), and nothing is left for that teardown to write."""
    try:
        app()
        code: int = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    # What the interpreter's own exit runs, in its order: the threads' exit hooks (executors' shutdown) and the
    # wait for non-daemon threads, then the exit handlers.
    threading._shutdown()  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
