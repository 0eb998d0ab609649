"""Instruction tuning: does a small set of correct instructions beat the same set plus many bad ones?

    .venv/bin/python bench/sft.py            # ~10 min on 2 cores the first time; reruns reuse every finished run
    .venv/bin/python bench/sft.py --check    # exit 1 unless corrupted is worse (CI above 0) and the control is null

Everything goes through the product's commands (`curate run`, `curate train`, `curate evalset register`,
`curate ablate --finetune`), offline and on the CPU:

1. A base: the tiny GPT pre-trained on the demo corpus's human text (standard-library docstrings and King James
   Bible chapters, `curate run` + `curate train`).
2. Instruction records from installed documentation (`curation.demo.instructions`): "What does `json.dumps`
   do?" answered with its docstring's first sentence, for ~1,600 public APIs of the standard library, numpy and
   pyarrow.compute; a held-out share (split by the API's owner: a class's methods stay on one side) is registered
   as the instruction set every run is measured on (response loss per token, and bits per byte).
3. Versions, each published from JSONL with `records: alpaca`:
   - `curated`: `--records` correct records;
   - `corrupted`: the same records, half of them answered with another API's sentence (off-task);
   - `curated-plus-bad` (quality vs quantity): `curated` plus `--bad` times as many records from the other APIs,
     their answers swapped or garbled;
   - `control`: `curated` in the reverse order (identical content: any "effect" would be noise);
   - `more-correct`: `curated` plus as many correct records as `curated-plus-bad` adds (what the bad ones
     could have been);
   - `plus-synthetic` and `plus-synthetic-uncurated`: `curated` plus the records of a synthesis run of the base
     model itself (`curate synthesize`, tasks grounded in the pre-training text), as curated by the demo's
     instruction checks (instruction filter, ROUGE-L novelty, language), or every schema-valid attempt, the
     checks' rejects included.
4. One fine-tuning ablation against `curated`: same base, seeds, epochs and instruction set; deltas with 95 %
   intervals and Holm-adjusted p-values.

The store is kept in `--out` (default bench/out/sft): a rerun trains only what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from end_to_end import exit_with_check  # noqa: E402

from curation.demo import build_demo_corpus  # noqa: E402
from curation.demo.instructions import (  # noqa: E402
    DEFAULT_MODULES,
    api_fact_records,
    garble_outputs,
    split_records,
    swap_outputs,
    write_jsonl,
)
from curation.store import VersionStore  # noqa: E402
from training.ablation import compare  # noqa: E402

ABLATION = "sft-bench"


def curate(args: list[str], env: dict[str, str]) -> str:
    """The `curate` command in a subprocess; its stdout, or exit with its error."""
    cli = Path(sys.executable).with_name("curate")
    proc = subprocess.run([str(cli), *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"curate {' '.join(args[:2])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def publish_records(folder: Path, store: str, name: str, records: list[dict[str, Any]], env: dict[str, str]) -> None:
    """`records` as the instruction version `name` (ingested with `records: alpaca`), unless it exists."""
    if name in {m["name"] for m in VersionStore(store).versions()}:
        return
    data = folder / f"{name}.jsonl"
    write_jsonl(records, data)
    recipe = folder / f"{name}.yaml"
    recipe.write_text(json.dumps({"name": name, "inputs": [{"path": str(data), "records": "alpaca",
                                                             "source": "api-docs"}], "steps": []}))
    curate(["run", str(recipe), "--store", store, "--name", name], env)


def build_base(folder: Path, store: str, args: argparse.Namespace, env: dict[str, str]) -> Path:
    """The tiny GPT pre-trained on the demo corpus's human sources; its checkpoint."""
    if "pretrain" not in {m["name"] for m in VersionStore(store).versions()}:
        corpus = build_demo_corpus(folder / "corpus", seed=0, scale=args.scale)
        human = [str(p) for p in corpus.inputs if "web" not in p.name]
        recipe = folder / "pretrain.yaml"
        recipe.write_text(json.dumps({"name": "pretrain", "inputs": [{"path": p} for p in human],
                                      "steps": [{"step": "normalize"}, {"step": "exact_dedup"}]}))
        curate(["run", str(recipe), "--store", store, "--name", "pretrain"], env)
    out = curate(["train", "pretrain", "--store", store, "--preset", "tiny", "--tokens", str(args.pretrain_tokens),
                  "--block-size", "256", "--vocab-size", "4096", "--seed", "0"], env)
    run_dir = next(line.split("run: ", 1)[1].strip() for line in out.splitlines() if "run: " in line)
    return Path(run_dir) / "checkpoint.pt"


def synthesize(folder: Path, store: str, base: Path, args: argparse.Namespace, env: dict[str, str]
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A synthesis run of the base model (tasks grounded in the pre-training text, curated by the demo's
    instruction checks): the records it kept, and every schema-valid attempt, kept or rejected by a check."""
    if "synthetic" not in {m["name"] for m in VersionStore(store).versions()}:
        recipe = folder / "synthetic.yaml"
        recipe.write_text(json.dumps({
            "name": "synthetic",
            "synthesize": {"method": "grounded", "source": "pretrain", "records": args.synth_records,
                           "schema": "alpaca", "backend": {"kind": "gpt", "checkpoint": str(base)},
                           "tasks": ["continue"], "batch_size": 16, "seed": 0,
                           "sampling": {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "max_tokens": 64}},
            "steps": [{"step": "instruction_filter", "min_response_words": 3}, {"step": "rouge_novelty"},
                      {"step": "language_filter", "languages": ["en"]}]}))
        curate(["synthesize", str(recipe), "--store", store, "--name", "synthetic"], env)
    target = VersionStore(store)
    columns = ["id", "instruction", "input", "output", "task_type"]

    def rows(kind: str) -> list[dict[str, Any]]:
        table = target.read_table("synthetic", kind=kind, columns=columns if kind == "data" else None)
        return [{k: (r[k] or "") if k == "input" else r[k] for k in columns}
                for r in table.to_pylist() if r.get("output") and r.get("instruction")]

    kept = rows("data")
    return kept, kept + rows("rejects")


def build_versions(folder: Path, store: str, base: Path, args: argparse.Namespace, env: dict[str, str]
                   ) -> dict[str, int]:
    records = api_fact_records(DEFAULT_MODULES, seed=0)
    train, held = split_records(records, held_out_share=0.2, seed=0)
    rng = random.Random(0)
    rng.shuffle(train)
    n, n_bad = args.records, args.records * args.bad
    if n + 2 * n_bad > len(train):
        sys.exit(f"--records {n} and --bad {args.bad} need {n + 2 * n_bad} training records; there are {len(train)}")
    curated, others = train[:n], train[n:]
    bad_pool = others[:n_bad]
    bad = (swap_outputs(bad_pool[:n_bad // 2], share=1.0, seed=1)
           + garble_outputs(bad_pool[n_bad // 2:], share=1.0, seed=2))
    versions = {
        "curated": curated,
        "corrupted": swap_outputs(curated, share=0.5, seed=3),
        "curated-plus-bad": curated + bad,
        "control": list(reversed(curated)),
        "more-correct": curated + others[n_bad:2 * n_bad],
    }
    if args.synth_records:
        kept, attempts = synthesize(folder, store, base, args, env)
        versions["plus-synthetic"] = curated + kept
        versions["plus-synthetic-uncurated"] = curated + attempts
    for name, rows in versions.items():
        publish_records(folder, store, name, rows, env)
    publish_records(folder, store, "api-held", held, env)
    if "api-held" not in curate(["evalset", "list", "--store", store], env):
        curate(["evalset", "register", "api-held", "version:api-held", "--store", store, "--role", "instruction"],
               env)
    return {**{name: len(rows) for name, rows in versions.items()}, "api-held": len(held)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/sft"))
    parser.add_argument("--fresh", action="store_true", help="Start from an empty store.")
    parser.add_argument("--scale", type=float, default=0.5, help="Demo corpus scale of the pre-training text.")
    parser.add_argument("--pretrain-tokens", type=int, default=1_228_800)
    parser.add_argument("--records", type=int, default=240, help="Correct records of the curated version.")
    parser.add_argument("--bad", type=int, default=2, help="Bad records per curated record in curated-plus-bad.")
    parser.add_argument("--synth-records", type=int, default=160,
                        help="Attempts of the base model's synthesis run (0: no synthetic versions).")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lora", action="store_true", help="Fine-tune LoRA adapters instead of every weight.")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    args = parser.parse_args()

    started = time.perf_counter()
    folder = args.out.resolve()
    if args.fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    store = str(folder / "store")
    env = {**os.environ, "PREFECT_HOME": str(folder / "prefect"), "COLUMNS": "200"}
    base = build_base(folder, store, args, env)
    sizes = build_versions(folder, store, base, args, env)
    versions = [v for v in sizes if v != "api-held"]
    ablate = ["ablate", "--finetune", "--base", str(base), "--store", store, *versions, "--seeds", str(args.seeds),
              "--epochs", str(args.epochs), "--name", ABLATION + ("-lora" if args.lora else "")]
    curate(ablate + (["--lora"] if args.lora else []), env)
    result = json.loads((Path(store) / "ablations" / (ABLATION + ("-lora" if args.lora else "")) /
                         "ablation.json").read_text())
    figures = report(result, sizes, base, time.perf_counter() - started, base_loss(store, base))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.check:
        problems = check(figures)
        exit_with_check(problems)


def base_loss(store: str, base: Path) -> float:
    """The base model's response loss on the instruction set, before any fine-tuning."""
    from curation.evalsets import load_evalset
    from training.pretrained import load_base
    from training.sft import examples_from_table, response_loss

    loaded = load_base(base)
    held = examples_from_table(load_evalset(store, "api-held")[0], "alpaca", loaded.tokenizer,
                               loaded.model.config.block_size, "api-held")
    return response_loss(loaded.model, held)["loss"]


def report(result: dict[str, Any], sizes: dict[str, int], base: Path, seconds: float,
           before: float) -> dict[str, Any]:
    analysis = result["analysis"]
    primary = analysis["primary"]
    rows = []
    print(f"base {base}; instruction set api-held ({sizes['api-held']} records); {len(result['spec']['seeds'])} "
          f"seeds; {result['finetune']['epochs']:g} epochs; {'LoRA' if result['finetune']['lora'] else 'full'}")
    print(f"the base before fine-tuning: response loss {before:.4f}")
    print(f"{'version':<26}{'records':>8}{'loss':>9}{'bits/byte':>11}  {'Δ loss [95% CI]':<28}{'p (Holm)':>9}  verdict")
    for version in analysis["versions_order"]:
        info = analysis["versions"][version]["eval"][primary]
        c = analysis["comparisons"].get(version, {}).get(primary, {}).get("loss")
        delta = "baseline" if c is None else f"{c['mean']:+.4f}" + (
            f" [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" if c["ci_low"] is not None else "")
        p = "" if c is None or c.get("p_adjusted") is None else f"{c['p_adjusted']:.3f}"
        print(f"{version:<26}{sizes[version]:>8}{info['loss']['mean']:>9.4f}{info['bpb']['mean']:>11.4f}  "
              f"{delta:<28}{p:>9}  {'' if c is None else c['verdict']}")
        rows.append({"version": version, "records": sizes[version], "loss": info["loss"]["mean"],
                     "bpb": info["bpb"]["mean"], "comparison": c})
    # Quality at equal quantity: the same number of added records, bad or correct, paired by seed.
    values = {v: analysis["versions"][v]["eval"][primary]["loss"]["values"] for v in analysis["versions_order"]}
    direct = {}
    for worse, better in (("curated-plus-bad", "more-correct"), ("plus-synthetic-uncurated", "plus-synthetic")):
        if worse in values and better in values:
            c = compare({int(k): v for k, v in values[better].items()}, {int(k): v for k, v in values[worse].items()})
            direct[f"{worse} vs {better}"] = c.to_dict()
            print(f"{worse} against {better} (same seeds): {c.mean:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}] "
                  f"{c.verdict}")
    print(f"{seconds:.0f} s; report: {Path(result['store']) / 'ablations' / result['name'] / 'report.html'}")
    return {"rows": rows, "direct": direct, "base_loss": before, "seconds": seconds, "finetune": result["finetune"],
            "seeds": result["spec"]["seeds"]}


def check(figures: dict[str, Any]) -> list[str]:
    by_version = {row["version"]: row["comparison"] for row in figures["rows"]}
    problems = []
    corrupted, control = by_version["corrupted"], by_version["control"]
    if corrupted["verdict"] != "worse" or not corrupted["ci_low"] > 0:
        problems.append(f"corrupted: expected worse with a CI above 0, got {corrupted['verdict']} "
                        f"[{corrupted['ci_low']}, {corrupted['ci_high']}]")
    if control["verdict"] != "no detectable effect":
        problems.append(f"control (identical content, reversed order): expected no detectable effect, got "
                        f"{control['verdict']}")
    return problems


if __name__ == "__main__":
    main()
