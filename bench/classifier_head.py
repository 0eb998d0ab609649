"""The GPT classification head against the fastText classifier, on the same labels and held-out documents.

    .venv/bin/python bench/classifier_head.py                     # build, pre-train, train, print (~3 min, 2 cores)
    .venv/bin/python bench/classifier_head.py --base RUN/checkpoint.pt --json bench/out/classifier_head.json

Labels as the demo trains its classifier (`curation.demo.train_demo_classifier`): the demo corpus's human
sources (stdlib docstrings, KJV chapters) are hq, its raw simulated crawl lq; `--max-docs` per class, balanced,
10 % of each held out by the same seeded split for every model (`curation.classifier.labelled_data`).

The base, unless `--base` names a checkpoint (ours or a GPT-2 folder): a small GPT pre-trained briefly by the
project's trainer on the hq documents only (a byte-level BPE of `--vocab` tokens trained on them, then
`--pretrain-tokens` tokens of `training.trainer.train`), the way a base would have seen clean text and never the
crawl. Then, each from that base: fastText (the defaults of `curate classifier train`), and the GPT head with
`last` and `mean` pooling, the body frozen (`--head-only` training) and fine-tuned with it.

Printed (and written with `--json PATH`): held-out ROC AUC, F1 at 0.5, training seconds and scoring docs/s on
the held-out documents (scoring repeated until at least a second has passed; fastText on one thread, torch on
its default threads). Figures measured with this command are in docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from curation.classifier import TextSource, labelled_data, load_classifier, train_quality_classifier
from curation.demo import KJV_FILE, STDLIB_FILE, WEB_FILE, build_demo_corpus
from curation.store import VersionStore
from training.classify import train_gpt_classifier
from training.data import tokenize_version
from training.tokenizer import train_tokenizer
from training.trainer import TrainConfig, train

# The pre-trained base: ~0.4 M parameters, small enough to pre-train in about a minute on 2 cores (our choice).
BASE_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128}
HOLDOUT = 0.1  # curate classifier train's default


def docs_per_second(score: Callable[[Sequence[str]], Any], texts: list[str], min_seconds: float = 1.0) -> float:
    """Documents scored per second, repeating the whole list until `min_seconds` have passed."""
    done, started = 0, time.perf_counter()
    while True:
        score(texts)
        done += len(texts)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def pretrain_base(texts: list[str], folder: Path, vocab: int, tokens: int, seed: int) -> Path:
    """A small GPT trained by the project's trainer on `texts` (published as a store version): checkpoint.pt."""
    store = VersionStore(folder / "store")
    n = len(texts)
    store.publish_table("human", pa.table({
        "id": [f"h{i}" for i in range(n)], "text": pa.array(texts, pa.large_string()), "source": ["human"] * n,
        "origin": ["human"] * n, "generation": pa.array([0] * n, pa.int32()), "generator": pa.array([None] * n,
                                                                                                    pa.string())}))
    run = folder / "base"
    tokenizer = train_tokenizer(texts, run, vocab_size=vocab)
    config = TrainConfig(model=BASE_MODEL, tokens=tokens, batch_size=16, seed=seed, eval_every=10**9,
                         checkpoint_every=10**9, device="cpu")
    train(config, tokenize_version(store, "human", tokenizer), {}, run, log=lambda *_: None)
    return run / "checkpoint.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", help="a checkpoint.pt (its run folder) or a GPT-2 folder; default: pre-train one")
    parser.add_argument("--scale", type=float, default=1.0, help="demo corpus scale (1.0: the demo's)")
    parser.add_argument("--max-docs", type=int, default=800, help="documents per class at most")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=2048, help="the pre-trained base's vocabulary")
    parser.add_argument("--pretrain-tokens", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-classifier-head-") as tmp:
        root = Path(tmp)
        clock = time.perf_counter()
        corpus = build_demo_corpus(root / "corpus", seed=args.seed, scale=args.scale)
        positive = [TextSource.parse(str(corpus.root / STDLIB_FILE)), TextSource.parse(str(corpus.root / KJV_FILE))]
        negative = [TextSource.parse(str(corpus.root / WEB_FILE))]
        split = dict(seed=args.seed, max_docs_per_class=args.max_docs, holdout=HOLDOUT)
        data = labelled_data(positive, negative, lambda text: text if text.strip() else "", **split)
        print(f"demo corpus (scale {args.scale}) in {time.perf_counter() - clock:.1f} s: {data.counts}")

        base = args.base
        if base is None:
            clock = time.perf_counter()
            hq = [text for label, text in data.rows if label == "__label__hq"]
            base = str(pretrain_base(hq, root / "pretrain", args.vocab, args.pretrain_tokens, args.seed))
            print(f"base pre-trained on {len(hq)} hq training documents, {args.pretrain_tokens:,} tokens: "
                  f"{time.perf_counter() - clock:.1f} s")

        def record(name: str, folder: Path, seconds: float, metrics: dict[str, Any]) -> None:
            rate = docs_per_second(load_classifier(folder).score, data.test_texts)
            rows.append({"model": name, "roc_auc": metrics["roc_auc"], "f1": metrics["f1"],
                         "train_seconds": round(seconds, 1), "docs_per_s": round(rate, 1)})
            print(f"  {name}: AUC {metrics['roc_auc']:.4f}, {seconds:.1f} s, {rate:,.0f} docs/s")

        clock = time.perf_counter()
        info = train_quality_classifier(positive, negative, root / "fasttext", **split)
        record("fastText (defaults)", root / "fasttext", time.perf_counter() - clock, info.metrics)
        for head_only in (True, False):
            for pooling in ("last", "mean"):
                name = f"gpt {pooling}, {'head only' if head_only else 'fine-tuned'}"
                folder = root / name.replace(" ", "-").replace(",", "")
                clock = time.perf_counter()
                info = train_gpt_classifier(positive, negative, folder, base=base, pooling=pooling,
                                            head_only=head_only, epochs=args.epochs, **split)
                record(name, folder, time.perf_counter() - clock, info.metrics)

    print(f"\nheld out: {data.counts['heldout']}; torch threads {torch.get_num_threads()}\n")
    print(f"| {'model':<26} | held-out AUC | F1 @0.5 | train s | docs/s |")
    print(f"|{'-' * 28}|--------------|---------|---------|--------|")
    for row in rows:
        print(f"| {row['model']:<26} | {row['roc_auc']:.4f}       | {row['f1']:.4f}  | {row['train_seconds']:>7} "
              f"| {row['docs_per_s']:>6,.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "counts": data.counts,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
