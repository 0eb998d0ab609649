"""The `curate` command line: thin calls into the flows and the version store."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flows.cli_common import (
    DEFAULT_STORE,
    ClusterOption,
    StoreOption,
    console,
    crash,
    fail,
    prefect_env,
    route_logs,
    valid_name,
)


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


def _mount_subcommands() -> None:
    from flows.cli_classifier import classifier_app
    from flows.cli_evalsets import evalset_app

    app.add_typer(classifier_app, name="classifier", help="Train and use fastText quality classifiers.")
    app.add_typer(evalset_app, name="evalset", help="Frozen evaluation sets: register and list.")
    from flows.cli_train import generate_command, train_command

    app.command(name="train")(train_command)
    app.command(name="generate")(generate_command)
    from flows.cli_ablate import ablate_command
    from flows.cli_inspect import diff_command, why_command

    app.command(name="ablate")(ablate_command)
    from flows.cli_synthesize import synthesize_command

    app.command(name="synthesize")(synthesize_command)
    from flows.cli_inspect import guards_command

    app.command(name="guards")(guards_command)
    from flows.cli_collapse import collapse_command

    app.command(name="collapse-sim")(collapse_command)

    from flows.cli_ops import increment_command, serve_command, server_command

    app.command(name="increment")(increment_command)
    app.command(name="serve")(serve_command)
    app.command(name="server")(server_command)
    app.command(name="diff")(diff_command)
    app.command(name="why")(why_command)


_mount_subcommands()





def _summary(manifest: dict[str, Any]) -> Table:
    table = Table(title=f"version {manifest['name']}", title_justify="left")
    for column in ("step", "in", "kept", "rejected", "top reasons"):
        table.add_column(column, justify="right" if column in ("in", "kept", "rejected") else "left")
    for step in manifest["steps"]:
        reasons = sorted(step["rejected_by_reason"].items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{k} {v:,}" for k, v in reasons[:4]) + (" …" if len(reasons) > 4 else "")
        table.add_row(step["name"], f"{step['in']:,}", f"{step['kept']:,}", f"{step['rejected']:,}", top)
    return table


def print_guards(manifest: dict[str, Any]) -> None:
    """The model-collapse guards: failures in full, the rest as one line."""
    from flows.curate import guard_rows

    report = manifest.get("guards")
    if not report:
        return
    rows = guard_rows(report)
    flagged = [r for r in rows if r["verdict"] not in ("pass", "not measured", "not applied")]
    passed = ", ".join(f"{r['guard']} {r['value']}" for r in rows if r["verdict"] == "pass")
    console.print(f"guards ({report['mix']} mix, reference {(report.get('reference') or {}).get('name') or 'none'}): "
                  f"passed {passed or 'none'}")
    for r in flagged:
        colour = "red" if r["verdict"].startswith("FAIL") else "yellow"
        console.print(f"  [{colour}]{r['verdict']}[/] {r['guard']} = {r['value']} ({r['threshold']}; {r['detail']})")
    override = manifest.get("guard_override")
    if override:
        console.print(f"  [red]published despite[/] {', '.join(override['overridden'])}: {override['reason']}")


def _planted_table(report: dict[str, Any]) -> Table:
    table = Table(title="planted defects: what each step caught", title_justify="left")
    for column in ("defect", "planted", "caught", "recall", "kept", "caught by"):
        table.add_column(column, justify="left" if column in ("defect", "caught by") else "right")
    for name, entry in report["classes"].items():
        by = ", ".join(f"{k} {v}" for k, v in sorted(entry["by_step"].items(), key=lambda kv: -kv[1]))
        table.add_row(name, str(entry["planted"]), str(entry["caught"]), f"{entry['recall']:.0%}", str(entry["kept"]),
                      by)
    clean = report["clean"]
    by = ", ".join(f"{k} {v}" for k, v in sorted(clean["by_step"].items(), key=lambda kv: -kv[1]))
    rate = clean["false_positive_rate"] or 0.0
    table.add_row("[italic]clean text[/]", str(clean["docs"]), str(clean["rejected"]), f"{rate:.1%} FP", "", by)
    return table


def _dedup_reports(manifest: dict[str, Any]) -> None:
    """Duplicate rate by kind, cluster sizes, the S-curve, and example clusters side by side."""
    for name, report in manifest.get("step_reports", {}).items():
        if "boilerplate_units" in report:
            top = ", ".join(f"{u.get('text') or u['hash']!r} ({u['documents']})" for u in report.get("top", [])[:3])
            console.print(f"[bold]{name}[/]: {report['boilerplate_units']:,} boilerplate {report.get('unit', 'unit')}s "
                          f"in {report.get('documents_with_boilerplate', 0):,} documents; most repeated: {top}")
            continue
        if "removed" not in report or "documents" not in report:
            continue
        rate = report["removed"] / report["documents"] if report["documents"] else 0.0
        earlier = (f", {report['removed_matching_earlier_versions']:,} matching {', '.join(report['against'])}"
                   if report.get("against") else "")
        sizes = ", ".join(f"{k}: {v}" for k, v in report.get("cluster_sizes", {}).items()) or "none"
        line = (f"[bold]{name}[/]: removed {report['removed']:,} of {report['documents']:,} ({rate:.1%}){earlier}; "
                f"cluster sizes {sizes}")
        console.print(line)
        if "bands" in report:
            curve = ", ".join(f"J={k} {v:.0%}" for k, v in report["s_curve"].items())
            console.print(f"  {report['bands']} bands x {report['rows']} rows ({report['index_bytes_per_doc']} B/doc); "
                          f"P(candidate): {curve}; {report['candidate_pairs']:,} candidates, "
                          f"{report['rejected_by_verification']:,} rejected by exact-Jaccard verification")
        for example in report.get("examples", [])[:2]:
            table = Table(title=f"cluster {example['cluster']} ({example['size']} documents)", title_justify="left",
                          show_lines=True)
            for member in example["members"][:2]:
                label = "kept" if member["kept"] else f"removed (J={member.get('jaccard', float('nan')):.2f})"
                table.add_column(f"{member['id']} - {label}", overflow="fold")
            table.add_row(*(m["text"][:160] for m in example["members"][:2]))
            console.print(table)


def _run(recipe_path: Path, store: str, name: str | None, parents: list[str], workers: int | None,
         verbose: bool, override_guards: str | None = None, cluster: str | None = None) -> dict[str, Any]:
    prefect_env(verbose)
    from curation.guards import GuardError
    from curation.ingest import IngestError
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
            target.manifest(parent)
        recipe.preflight(target.url)
        from curation.pipeline import ShardError, estimate, plan_ingest

        plan = plan_ingest(recipe)
        forecast = estimate(recipe, plan)
    except (RecipeError, IngestError, StoreError) as exc:
        fail(str(exc))
    console.print(f"[bold]curate[/] {name}: {len(recipe.inputs)} input(s), {len(plan.units)} ingest task(s), "
                  f"{plan.nbytes / 1e6:,.1f} MB, steps: {', '.join(s.instance_name for s in recipe.steps) or 'none'}")
    local = cluster.removeprefix("local:") if cluster and cluster.startswith("local:") else ""
    console.print(forecast.describe(int(local) if local.isdigit() else workers or os.cpu_count() or 1))
    from flows.curate import run_curation

    try:
        manifest = run_curation(recipe, store, name, parents=parents, workers=workers, show_progress=True,
                                override_guards=override_guards, cluster=cluster)
    except (RecipeError, IngestError, StoreError, GuardError, ValueError, ShardError) as exc:
        fail(f"{exc} (finished tasks are kept: rerun the same command to resume)" if isinstance(exc, ShardError)
             else str(exc))
    resumed = manifest.get("resumed")
    if resumed:
        console.print(f"resumed: {resumed['ingest_tasks']} of {resumed['of_ingest_tasks']} ingest tasks and "
                      f"{resumed['shard_tasks']} of {resumed['of_shard_tasks']} shard tasks were already done")
    console.print(_summary(manifest))
    if "planted_defects" in manifest:
        console.print(_planted_table(manifest["planted_defects"]))
    print_guards(manifest)
    size = manifest["size"]
    console.print(f"[green]published[/] {manifest['name']}: {manifest['rows']:,} records, {size['chars']:,} chars, "
                  f"{manifest['rejected_rows']:,} rejects, in {manifest['run_seconds']:.1f} s, "
                  f"accounting {'ok' if manifest['accounting']['ok'] else 'FAILED'}")
    console.print(f"path: {manifest['path']}")
    return manifest


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


def _next_drop(corpus, recipe_path: Path, target, name: str, seed: int, workers: int | None, verbose: bool) -> None:
    """The crawl's next drop, curated incrementally on top of the curated version (what a scheduled
    `curate serve` run does each night)."""
    import pyarrow.compute as pc

    from curation.demo import write_daily_recipe, write_next_crawl
    from flows.cli_ops import increment_command

    table = target.read_table(name, columns=["id", "text", "source"])
    table = table.filter(pc.equal(table.column("source"), "web_crawl"))
    drop, counts = write_next_crawl(corpus, list(zip(table.column("id").to_pylist(), table.column("text").to_pylist())),
                                    seed)
    console.rule(f"{name}-daily-0001: the crawl's next drop on top of {name}: "
                 f"curate increment {write_daily_recipe(recipe_path).name} --from {name}")
    console.print(f"{drop.name}: {', '.join(f'{v} {k}' for k, v in counts.items())}")
    increment_command(recipe_path.with_name("recipe-daily.yaml"), target.url, f"{name}-daily", workers=workers,
                      cluster=None, start=name, verbose=verbose)


@app.command()
def demo(
    store: StoreOption = DEFAULT_STORE,
    scale: Annotated[float, typer.Option(help="Corpus size multiplier (1.0: ~5,000 documents).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the noise injector.")] = 0,
    name: Annotated[str | None, typer.Option(help="Version name (default: demo, demo-2, ...).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: every core).")] = None,
    train_tokens: Annotated[int, typer.Option(help="Token budget of each ablation run: the tiny GPT trained on "
                                                   "every stage of the recipe (0: skip the ablation).")] = 409_600,
    seeds: Annotated[int, typer.Option(help="Seeds of the ablation (each stage is trained with every seed).")] = 3,
    synth_records: Annotated[int, typer.Option(help="Instruction records to synthesise from the curated version "
                                                    "with the trained GPT (0: skip).")] = 96,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Build the built-in demo corpus (real installed text + planted defects), curate it, and measure what each
    curation stage did to a tiny GPT's held-out loss."""
    from curation.classifier import model_dir
    from curation.demo import build_demo_corpus, train_demo_classifier, write_demo_recipe, write_raw_recipe
    from curation.evalsets import evalset_exists, register_evalset
    from curation.store import VersionStore

    target = VersionStore(store)
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
    if name is None:
        taken = set(target.names())
        name = next(n for n in ("demo", *(f"demo-{i}" for i in range(2, 10_000)))
                    if n not in taken and f"{n}-raw" not in taken)
    raw_path = write_raw_recipe(recipe_path)
    console.rule(f"{name}-raw: the inputs as they are (ingest and Unicode normalisation only)")
    _run(raw_path, store, f"{name}-raw", [], workers, verbose)
    console.rule(f"{name}: the curated version, derived from {name}-raw")
    _run(recipe_path, store, name, [f"{name}-raw"], workers, verbose)
    from flows.cli_inspect import diff_command

    console.rule(f"what curation changed: curate diff {name}-raw {name}")
    diff_command(f"{name}-raw", name, store, False, 3)
    console.print(f"reports: {target.version_path(name)}/report.html, {target.version_path(name + '-raw')}/report.html")
    _next_drop(corpus, recipe_path, target, name, seed, workers, verbose)
    if train_tokens:
        from flows.cli_ablate import ablate
        from flows.cli_train import sample

        console.rule(f"what each stage did to the loss: curate ablate --steps {recipe_path.name} "
                     f"({seeds} seeds x {train_tokens:,} tokens per stage)")
        # A 4,096-token vocabulary and batches of 8 are our choice for the demo: on 2 cores the tiny model then
        # trains ~1.5x faster, and 200 optimiser steps gave paired deltas 2.5x less noisy than 100 steps of 16.
        result = ablate([], store, steps=recipe_path, tokens=train_tokens, seeds=seeds, vocab_size=4096,
                        batch_size=8, eval_set=[evalset], name=f"{name}-stages", workers=workers, verbose=verbose,
                        stage_prefix=name)
        final = result["waterfall"][-1]["stage"]
        run = next(r for r in result["runs"] if r["version"] == final and r["seed"] == 0)
        checkpoint = Path(run["dir"]) / "checkpoint.pt"
        console.print(f"sample from the model trained on {final} (seed 0): "
                      + sample(checkpoint, "And God said", 40, temperature=0.8, top_k=40),
                      markup=False, highlight=False)
    else:
        checkpoint = None
    if synth_records:
        from curation.demo import write_synth_recipe
        from flows.cli_synthesize import synthesize_command

        synth_path = write_synth_recipe(corpus, name, checkpoint, evalset, synth_records)
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
    from curation.store import StoreError, VersionStore

    target = VersionStore(store)
    try:
        manifest = target.manifest(version)
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        json.dump(manifest, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    console.print(f"[bold]{manifest['name']}[/]  created {manifest['created_at']}  "
                  f"parents: {', '.join(manifest['parents']) or '-'}")
    console.print(f"recipe hash {manifest['recipe_hash'][:12]}  fingerprint {manifest['fingerprint'][:12]}  "
                  f"accounting {'ok' if manifest['accounting']['ok'] else 'FAILED'}")
    console.print(_summary(manifest))
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
        console.print(_planted_table(manifest["planted_defects"]))
    _dedup_reports(manifest)
    data = [f for f in manifest["files"] if f["kind"] == "data"]
    console.print(f"{len(data)} data file(s), {sum(f['bytes'] for f in data) / 1e6:,.2f} MB; "
                  f"path: {target.version_path(version)}")


@app.command()
def thresholds(
    version: Annotated[str, typer.Argument(help="A version whose filter ran with `mode: annotate`.")],
    rule: Annotated[str, typer.Argument(help="Rule (step) name, e.g. gopher_quality.")],
    signal: Annotated[list[str] | None, typer.Option(help="Only these signals (default: all of the rule's).")] = None,
    store: StoreOption = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the curves as JSON.")] = False,
) -> None:
    """Documents and tokens a threshold would keep, per signal, with percentile and k-sigma suggestions."""
    from curation.store import StoreError, VersionStore
    from curation.thresholds import recipe_params, rule_retention

    target = VersionStore(store)
    try:
        names = [c for c in target.schema(version).names if c.startswith(f"{rule}__")]
        table = target.read_table(version, columns=["text", *names])
        params = recipe_params(target.manifest(version)["recipe"], rule)
        curves = rule_retention(table, rule, signal or None, params)
    except (StoreError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        json.dump([c.as_dict() for c in curves], sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
        return
    for curve in curves:
        bounds = ", ".join(f"{side} {value:g}" for side, value in curve.current.items()) or "none"
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


@app.command()
def stats(
    version: Annotated[str, typer.Argument(help="Version name.")],
    store: StoreOption = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json as it is.")] = False,
) -> None:
    """A version's statistics: size, lengths, lexical and semantic diversity, coverage."""
    from curation.store import StoreError, VersionStore

    target = VersionStore(store)
    try:
        target.manifest(version)
        with target.fs.open(f"{target.version_path(version)}/stats.json") as handle:
            data = json.load(handle)
    except StoreError as exc:
        fail(str(exc))
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
    sample = data.get("sample", {})
    lexical = data.get("lexical", {})
    console.print(f"lexical diversity (sample of {sample.get('size')} docs, seed {sample.get('seed')}, first "
                  f"{sample.get('words_per_doc')} words): " + ", ".join(
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
    from curation.store import StoreError, VersionStore

    target = VersionStore(store)
    try:
        target.manifest(version)
    except StoreError as exc:
        fail(str(exc))
    path = f"{target.version_path(version)}/report.html"
    if not target.fs.exists(path):
        fail(f"version {version!r} has no report.html (published before reports existed)")
    console.print(path)
    if open_browser:
        import webbrowser

        webbrowser.open(Path(path).resolve().as_uri() if target.local else path)


if __name__ == "__main__":
    app()
