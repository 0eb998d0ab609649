"""`curate collapse-sim`: the model-collapse experiment on the CPU (registered in `flows/cli.py`).

Generation 0 is the tiny GPT trained on human text; each later generation trains on text sampled from the
one before, under *replace* (only the newest samples) and *accumulate* (human text + every earlier
sample). The command prints the held-out human loss and the data guards per policy and generation, the
verdict (replace against accumulate at the last generation, paired by seed), a sample of each generation's
text and where the report went. The experiment itself is `flows/collapse.py`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

# curation/, training/ and flows.collapse (Prefect, torch) are imported inside the command: Prefect must wait for
# `prefect_env`, and they would slow every start (flows/cli_common.py). flows.collapse_spec imports neither: the
# options take their defaults from CollapseSpec, where their reasons are.
from flows.cli_common import DEFAULT_STORE, StoreOption, console, fail, prefect_env, require_version, valid_name
from flows.collapse_spec import CollapseSpec

SAMPLE_CHARS = 160  # characters of each generation's sample shown in the terminal (collapse.json has 300)


def _value(row: dict[str, Any], guard: str, fmt: str = "{:.2f}") -> str:
    value = (row.get("guard_values") or {}).get(guard)
    return "-" if value is None or value["mean"] is None else fmt.format(value["mean"])


def print_result(result: dict[str, Any]) -> None:
    """The experiment as one table (policy x generation), the verdict, samples and paths."""
    spec = result["spec"]
    console.print(f"human {escape(result['human'])}: {result['human_tokens']:,} tokens; "
                  f"{result['samples_per_generation']:,} samples x {spec['sample_tokens']} tokens per generation at "
                  f"temperature {spec['temperature']:g}; {spec['preset']}, {spec['tokens']:,} tokens per run, "
                  f"block {spec['block_size']}, {spec['seeds']} seed(s)", highlight=False)
    console.print(_loss_table(result))
    if result["guards"]:
        _print_guards(result)
    for note in result["notes"]:
        console.print(f"note: {escape(note)}", highlight=False)
    verdict = result["verdict"]
    colour = "bold red" if verdict["replace_worse"] else "bold"
    console.print(f"[{colour}]verdict:[/] {escape(verdict['text'])}")
    console.print("sample text per generation (seed 0; written by that generation's model, temperature "
                  f"{spec['temperature']:g}):")
    for policy, by_generation in result["samples"].items():
        for g, text in by_generation.items():
            snippet = " ".join(text.split())[:SAMPLE_CHARS]
            console.print(f"  {policy} {g}: {snippet!r}", markup=False, highlight=False)
    console.print(f"report: {result['paths']['result']}, {result['paths']['plot']} ({result['wall_seconds']:.0f} s)",
                  highlight=False)


def _loss_table(result: dict[str, Any]) -> Table:
    """Held-out loss per policy and generation, with its paired delta against generation 0."""
    table = Table(title=escape(f"held-out loss on {result['evalset']} (mean ± sd over seeds; Δ against "
                               "generation 0, paired by seed, 95% CI)"), title_justify="left")
    for column in ("policy", "gen", "loss", "Δ vs gen 0 [95% CI]", "verdict", "synthetic tokens", "epochs"):
        table.add_column(column, justify="left" if column in ("policy", "verdict") else "right")
    for policy, rows in result["levels"].items():  # the policies in the experiment's order
        for row in rows:
            loss, d = row["loss"], row["delta_vs_generation_0"]
            sd = f" ± {loss['std']:.4f}" if loss["std"] is not None else ""
            if d is None:
                delta, verdict = "baseline", ""
            else:
                ci = "" if d["ci_low"] is None else f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                delta, verdict = f"{d['mean']:+.4f}{ci}", d["verdict"]
            table.add_row(policy, str(row["generation"]), f"{loss['mean']:.4f}{sd}", delta, verdict,
                          f"{row['synthetic_fraction_tokens']:.1%}", f"{row['epochs']:.1f}")
        table.add_section()
    return table


def _print_guards(result: dict[str, Any]) -> None:
    """The data guards per policy and generation: which failed on how many seeds, and their mean values."""
    table = Table(title="data guards (failed: seeds whose version failed; values: mean over seeds)",
                  title_justify="left")
    for column in ("policy", "gen", "guards failed (seeds)", "synthetic", "human kept", "unigram JS", "tail mass",
                   "ppl outside"):
        table.add_column(column, justify="left" if column in ("policy", "guards failed (seeds)") else "right")
    for policy, rows in result["levels"].items():
        for row in rows:
            failed = row.get("guards_failed")
            if failed is None:
                continue
            hard = {n for n, v in (row.get("guard_values") or {}).items() if v.get("hard")}
            failed_text = ", ".join(f"{n}{'*' if n in hard else ''} ({k})" for n, k in failed.items()) or "none"
            table.add_row(policy, str(row["generation"]), escape(failed_text),
                          _value(row, "synthetic_fraction", "{:.1%}"), _value(row, "parent_human_kept"),
                          _value(row, "unigram_js"), _value(row, "tail_mass"), _value(row, "perplexity_spread"))
        table.add_section()
    console.print(table)
    console.print("guards: * a hard guard (its failure blocks publishing), the others warn; "
                  f"{escape(result['guard_settings']['note'])}. Columns: the guards' values (synthetic: word "
                  "share; unigram JS, tail mass: ratios to a second human sample; ppl outside: share of documents "
                  "outside the human 5-95 % log-perplexity range under the seed's generation-0 model; the human "
                  "version's own values are generation 0's)",
                  highlight=False)
    for policy, summary in result["fails_by_generation"].items():
        first = ", ".join(f"{n} at generation {g}" for n, g in summary["first_failure"].items()) or "none"
        console.print(f"  {policy}: first failure per guard: {escape(first)}", highlight=False)
    for policy, rows in result["levels"].items():
        histogram = rows[-1].get("generation_histogram")
        if histogram:
            console.print(f"  {policy} generation {result['spec']['generations']} (seed 0) records by generation: "
                          + ", ".join(f"{g}: {n:,}" for g, n in histogram.items()), highlight=False)


def collapse_command(
    store: StoreOption = DEFAULT_STORE,
    generations: Annotated[int, typer.Option(help="Generations after generation 0 (each trained on samples of "
                                                  "the one before).")] = CollapseSpec.generations,
    seeds: Annotated[int, typer.Option(help="Seeds: independent chains (0 .. N-1), paired across policies.")
                     ] = CollapseSpec.seeds,
    tokens: Annotated[int, typer.Option(help="Token budget of every training run.")] = CollapseSpec.tokens,
    samples: Annotated[int | None, typer.Option(help="Sampled streams per generation (default: human tokens / "
                                                     "(generations + 1) / sample tokens).")] = CollapseSpec.samples,
    sample_tokens: Annotated[int, typer.Option(help="New tokens per sampled stream.")] = CollapseSpec.sample_tokens,
    human: Annotated[str | None, typer.Option(help="A human version as generation 0's data (default: the demo's "
                                                   "human text).")] = None,
    eval_set: Annotated[str | None, typer.Option(help="Registered evaluation set of held-out human text (needed "
                                                      "with --human; default: the demo's held-out documents).")
                        ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the experiment: its versions and <store>/collapse/NAME/.")
                    ] = None,
    workers: Annotated[int | None, typer.Option(help="Runs at once (default: one per core, or per GPU).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Model collapse: replace (newest samples only) against accumulate (human + all samples) over generations;
    held-out human loss, data guards and sample text per generation."""
    collapse(store, generations=generations, seeds=seeds, tokens=tokens, samples=samples, sample_tokens=sample_tokens,
             human=human, eval_set=eval_set, name=name, workers=workers, verbose=verbose)


def collapse(store: str, *, generations: int = CollapseSpec.generations, seeds: int = CollapseSpec.seeds,
             tokens: int = CollapseSpec.tokens, samples: int | None = CollapseSpec.samples,
             sample_tokens: int = CollapseSpec.sample_tokens, human: str | None = None, eval_set: str | None = None,
             name: str | None = None, workers: int | None = None, verbose: bool = False) -> dict[str, Any]:
    """The command's body: run the experiment, print it, return its result."""
    prefect_env(verbose)
    from curation.evalsets import EvalSetError, evalset_exists
    from curation.store import StoreError, VersionStore
    from flows.collapse import CollapseError, run_collapse
    from training.tokenizer import TokenizerError

    valid_name(name, "collapse experiment")
    if human is not None and eval_set is None:
        fail("--human needs --eval-set: the frozen held-out human text every generation is measured on")
    target = VersionStore(store)
    try:
        if human is not None:
            require_version(target, human)
        if eval_set is not None and not evalset_exists(target, eval_set):
            fail(f"no evaluation set {eval_set!r} in {target.url} (`curate evalset register`)")
        result = run_collapse(target.url, generations=generations, seeds=seeds, tokens=tokens, samples=samples,
                              sample_tokens=sample_tokens, human=human, evalset=eval_set, name=name, workers=workers,
                              show_progress=True)
    except (CollapseError, StoreError, EvalSetError, TokenizerError) as exc:
        fail(str(exc))
    print_result(result)
    return result
