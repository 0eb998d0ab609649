"""The recipes the demo runs, written next to its corpus (so their relative input paths resolve there),
and its quality classifier."""

from __future__ import annotations

from pathlib import Path

import yaml

from curation.demo.common import write_atomic
from curation.demo.corpus import KJV_FILE, STDLIB_FILE, DemoCorpus
from curation.demo.web import WEB_FILE

_PACKAGED = Path(__file__).parent.parent / "recipes"  # curation/recipes/, package data
DEMO_RECIPE = _PACKAGED / "demo.yaml"
DEMO_SYNTH_RECIPE = _PACKAGED / "demo-instruct.yaml"


def _with_evalset(step: dict, evalset: str | None) -> dict | None:
    """A decontaminate step pointed at `evalset` (None: the step is dropped); any other step unchanged."""
    if step["step"] != "decontaminate":
        return step
    return None if evalset is None else {**step, "evalsets": [evalset]}


def write_demo_recipe(corpus: DemoCorpus, quality_model: Path | None = None, evalset: str | None = None) -> Path:
    """Copy the packaged demo recipe next to the corpus, pointing its quality classifier at `quality_model`
    and decontamination at the registered `evalset` (each step is dropped when there is none)."""
    recipe = yaml.safe_load(DEMO_RECIPE.read_text(encoding="utf-8"))
    steps = []
    for step in recipe["steps"]:
        if step["step"] == "quality_classifier":
            if quality_model is None:
                continue
            step = {**step, "model": str(quality_model)}
        step = _with_evalset(step, evalset)
        if step is not None:
            steps.append(step)
    recipe["steps"] = steps
    target = corpus.root / "recipe.yaml"
    header = "".join(line + "\n" for line in DEMO_RECIPE.read_text(encoding="utf-8").splitlines()
                     if line.startswith("#") and not line.startswith("# ---"))
    write_atomic(target, (header + yaml.safe_dump(recipe, sort_keys=False)).encode("utf-8"))
    return target


def write_synth_recipe(corpus: DemoCorpus, source: str, checkpoint: Path | None, evalset: str | None,
                       records: int) -> Path:
    """The packaged synthesis recipe, grounded in `source`, written by the GPT `checkpoint` (the programmatic
    backend when there is none), decontaminated against `evalset` (the step is dropped when there is none)."""
    recipe = yaml.safe_load(DEMO_SYNTH_RECIPE.read_text(encoding="utf-8"))
    synth = recipe["synthesize"]
    synth.update(source=source, records=records)
    if checkpoint is None:
        synth["backend"] = {"kind": "programmatic"}
        synth["tasks"] = ["continue", "summarize", "keywords", "cloze"]
    else:
        synth["backend"] = {**synth["backend"], "checkpoint": str(checkpoint)}
    steps = []
    for step in recipe["steps"]:
        step = _with_evalset(step, evalset)
        if step is None:
            continue
        if step["step"] == "minhash_dedup":
            step = {**step, "against": [source]}
        steps.append(step)
    recipe["steps"] = steps
    target = corpus.root / "recipe-instruct.yaml"
    lines = DEMO_SYNTH_RECIPE.read_text(encoding="utf-8").splitlines()
    header = "".join(line + "\n" for line in lines[:next(i for i, x in enumerate(lines) if not x.startswith("#"))])
    write_atomic(target, (header + yaml.safe_dump(recipe, sort_keys=False)).encode("utf-8"))
    return target


def write_raw_recipe(recipe_path: Path) -> Path:
    """The baseline the curated version is compared with (diff, coverage, the loss ablation): the recipe's
    `raw` stage only, Unicode normalisation and decontamination against the evaluation set. The same recipe
    content as the stage `curate ablate --steps` starts from, so the ablation finds this version."""
    recipe = yaml.safe_load(Path(recipe_path).read_text(encoding="utf-8"))
    recipe["name"] = f"{recipe.get('name', 'demo')}-raw"
    recipe["description"] = "The demo inputs, normalised and decontaminated: no curation."
    recipe["steps"] = [step for step in recipe["steps"] if step.get("stage") == "raw"]
    return _write(recipe, Path(recipe_path).with_name("recipe-raw.yaml"))


def write_web_recipe(recipe_path: Path) -> Path:
    """The same recipe as the web's defaults would run it: every step on every source, no calibration. What
    the demo compares its scoped, calibrated curation with."""
    recipe = yaml.safe_load(Path(recipe_path).read_text(encoding="utf-8"))
    recipe["name"] = f"{recipe.get('name', 'demo')}-web"
    recipe["description"] = "The demo's steps with the papers' bounds, on every source (the web defaults)."
    recipe.pop("calibrate", None)
    recipe["steps"] = [{k: v for k, v in step.items() if k not in ("sources", "skip_sources", "where", "calibrate")}
                       for step in recipe["steps"]]
    return _write(recipe, Path(recipe_path).with_name("recipe-web.yaml"))


def _write(recipe: dict, target: Path) -> Path:
    write_atomic(target, yaml.safe_dump(recipe, sort_keys=False).encode("utf-8"))
    return target


def write_daily_recipe(recipe_path: Path) -> Path:
    """The curated recipe watching every drop of the crawl (`web_crawl*.jsonl`) for `curate increment`;
    without the planted-defect labels, which describe the first drop only."""
    recipe = yaml.safe_load(Path(recipe_path).read_text(encoding="utf-8"))
    recipe["inputs"] = [{**spec, "path": "web_crawl*.jsonl"} if spec.get("source") == "web_crawl" else spec
                        for spec in recipe["inputs"]]
    recipe.pop("labels", None)
    recipe["description"] = "The demo recipe over every crawl drop, run as an incremental series."
    return _write(recipe, Path(recipe_path).with_name("recipe-daily.yaml"))


def train_demo_classifier(corpus: DemoCorpus, out_dir: Path, seed: int = 0) -> Path:
    """DCLM-style quality classifier for the demo: the human sources are the positives, the raw
    crawl the negatives. Trained once per corpus (the folder is reused when it exists)."""
    # fastText and the ingest stack (~0.6 s to import) only when the classifier is trained.
    from curation.classifier import TextSource, train_quality_classifier

    if (out_dir / "classifier.json").exists():
        return out_dir
    positives = [TextSource.parse(str(corpus.root / STDLIB_FILE)), TextSource.parse(str(corpus.root / KJV_FILE))]
    train_quality_classifier(positives, [TextSource.parse(str(corpus.root / WEB_FILE))], out_dir, seed=seed)
    return out_dir
