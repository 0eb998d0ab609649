"""`curate classifier ...`: train a quality classifier into the store (fastText, or with `--backend gpt` a
classification head fine-tuned on a GPT checkpoint: `training/classify.py`), and score text with either.

Mounted in `flows/cli.py` with `app.add_typer(classifier_app, name="classifier")`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

# curation/ (fastText, pyarrow) is imported inside the commands, so that every start stays fast
# (flows/cli_common.py).
from flows.cli_common import DEFAULT_STORE, StoreOption, console, fail

classifier_app = typer.Typer(help="Train and use quality classifiers: fastText (DCLM-style) or a GPT head.",
                             no_args_is_help=True, pretty_exceptions_enable=False)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@classifier_app.command()
def train(
    name: Annotated[str, typer.Option("--name", "-n", help="Model name: stored in <store>/models/quality/NAME.")],
    positive: Annotated[list[str], typer.Option("--positive", "-p", help="High-quality text: version:NAME, a file, "
                                                "folder or glob (JSONL, Parquet, CSV, text). Repeatable.")],
    negative: Annotated[list[str], typer.Option("--negative", "-N", help="Low-quality text, as --positive.")],
    store: StoreOption = DEFAULT_STORE,
    seed: Annotated[int, typer.Option(help="Seed for sampling, the held-out split and training.")] = 0,
    max_docs: Annotated[int | None, typer.Option("--max-docs", help="At most N documents per class.")] = None,
    holdout: Annotated[float, typer.Option(help="Fraction of each class held out for the metrics.")] = 0.1,
    epoch: Annotated[int | None, typer.Option("--epoch", "--epochs", help="Training epochs (default: the "
                                              "backend's: fastText 5, gpt 3).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the backend's).")] = None,
    dim: Annotated[int | None, typer.Option(help="fastText embedding size (default: the library's).")] = None,
    no_quantize: Annotated[bool, typer.Option("--no-quantize", help="fastText: save the full .bin instead of "
                                              ".ftz.")] = False,
    threads: Annotated[int, typer.Option(help="fastText threads (1 is reproducible).")] = 1,
    backend: Annotated[str, typer.Option(help="fasttext, or gpt: a classification head on the GPT --base.")
                       ] = "fasttext",
    base: Annotated[str | None, typer.Option(help="gpt: the base model, a `curate train` checkpoint.pt (or its "
                                             "run folder) or a GPT-2 folder.")] = None,
    pooling: Annotated[str, typer.Option(help="gpt: last (the last token's hidden state) or mean.")] = "last",
    head_only: Annotated[bool, typer.Option("--head-only", help="gpt: freeze the GPT, train the head alone "
                                            "(cheap on a CPU).")] = False,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="gpt: tokens read per document "
                                                   "(default: the base's block size).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model of that name.")] = False,
) -> None:
    """Train a quality classifier (positive = high quality, negative = low quality) and report held-out metrics."""
    from curation.classifier import ClassifierError, model_dir, train_quality_classifier
    from curation.ingest import IngestError
    from curation.store import StoreError, VersionStore

    _check_backend_options(backend, base, dim=dim, no_quantize=no_quantize, threads=threads, head_only=head_only,
                           pooling=pooling, max_tokens=max_tokens)
    try:
        target = VersionStore(store)
        out = model_dir(target, name)
        console.print(f"[bold]classifier[/] {name}: {len(positive)} positive, {len(negative)} negative source(s)")
        if backend == "gpt":
            from training.classify import train_gpt_classifier  # torch: only for this backend

            info = train_gpt_classifier(positive, negative, out, base=base, pooling=pooling, head_only=head_only,
                                        max_tokens=max_tokens, lr=lr, seed=seed, max_docs_per_class=max_docs,
                                        holdout=holdout, store=target, overwrite=overwrite, log=console.print,
                                        **({"epochs": epoch} if epoch is not None else {}))
        else:
            options = {k: v for k, v in (("epoch", epoch), ("lr", lr), ("dim", dim)) if v is not None}
            info = train_quality_classifier(positive, negative, out, seed=seed, max_docs_per_class=max_docs,
                                            holdout=holdout, quantize=not no_quantize, threads=threads,
                                            store=target, overwrite=overwrite, **options)
    except (ClassifierError, IngestError, StoreError) as exc:
        fail(str(exc))
    m = info.metrics
    table = Table(title=f"classifier {name}: held out, threshold 0.5", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, key in (("precision", "precision"), ("recall", "recall"), ("F1", "f1"), ("ROC AUC", "roc_auc"),
                       ("mean score hq", "mean_score_hq"), ("mean score lq", "mean_score_lq")):
        table.add_row(label, _fmt(m.get(key)))
    c = info.counts
    table.add_row("docs available hq / lq", f"{c['available']['hq']:,} / {c['available']['lq']:,}")
    table.add_row("docs train hq / lq", f"{c['train']['hq']:,} / {c['train']['lq']:,}")
    table.add_row("docs held out hq / lq", f"{c['heldout']['hq']:,} / {c['heldout']['lq']:,}")
    table.add_row("model size", f"{info.size_bytes / 1e6:,.2f} MB ({info.model_file})")
    table.add_row("time", f"{info.train_seconds:,.1f} s")
    console.print(table)
    console.print(f"path: {info.model_path}")


def _check_backend_options(backend: str, base: str | None, *, dim: int | None, no_quantize: bool, threads: int,
                           head_only: bool, pooling: str, max_tokens: int | None) -> None:
    """One-line errors for an unknown backend, a gpt backend without --base, and options of the other backend."""
    if backend not in ("fasttext", "gpt"):
        fail(f"--backend {backend!r}: expected fasttext or gpt")
    if backend == "gpt":
        if not base:
            fail("--backend gpt needs --base: a `curate train` checkpoint.pt (or its run folder) or a GPT-2 folder")
        wrong = [flag for flag, given in (("--dim", dim is not None), ("--no-quantize", no_quantize),
                                          ("--threads", threads != 1)) if given]
    else:
        wrong = [flag for flag, given in (("--base", base is not None), ("--pooling", pooling != "last"),
                                          ("--head-only", head_only), ("--max-tokens", max_tokens is not None))
                 if given]
    if wrong:
        fail(f"{', '.join(wrong)}: not an option of the {backend} backend; leave it out")


@classifier_app.command()
def score(
    model: Annotated[str, typer.Argument(help="Model name in the store, or a classifier folder / model file.")],
    texts: Annotated[list[str], typer.Argument(help="Text(s) to score.")],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Print P(high quality) for each text (one per line; with several texts, followed by the text's start)."""
    import flows.gpt  # noqa: F401 - registers the "gpt" backend (torch loads only for a gpt classifier)
    from curation.classifier import ClassifierError, load_classifier, model_dir

    try:
        path = Path(model) if Path(model).exists() else model_dir(store, model)
        scores = load_classifier(path).score(texts)
    except ClassifierError as exc:
        fail(str(exc))
    if len(texts) == 1:
        typer.echo(f"{scores[0]:.4f}")
        return
    for value, text in zip(scores, texts):
        preview = " ".join(text.split())
        typer.echo(f"{value:.4f}\t{preview[:60]}{'…' if len(preview) > 60 else ''}")
