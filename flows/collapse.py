"""The model-collapse experiment (`curate collapse-sim`): what training on a model's own samples does to
the next model, and whether the data guards see it before a training run does.

Shumailov et al. (2024, "AI models collapse when trained on recursively generated data") train each
generation only on text sampled from the one before: the tails of the human distribution go first and
the error on human text grows. Gerstgrasser et al. (2024, "Is model collapse inevitable?") keep the human
data and every earlier generation's samples (accumulate) instead of replacing them: the error stays
bounded. This flow runs both policies with the project's own tiny GPT, on the CPU, in minutes:

    generation 0   the tiny GPT trained on human text (the demo's docstrings and Bible chapters)
    generation g   trained on text sampled from generation g-1's model of the same chain
                   replace     only generation g's samples
                   accumulate  the human rows + the samples of generations 1..g of this chain

Generation 1's samples are drawn once per seed from generation 0's model, which both chains share, so at
generation 1 the two policies differ in nothing but the policy. Every run has the same preset, frozen
tokenizer (trained on the human version), token budget and seed, and is measured by its loss on frozen
held-out human text (an evaluation set in no training version). Seeds are independent chains; the
verdict compares replace with accumulate at the last generation, paired by seed (`training/ablation.py`).

Sizing (our choice; Gerstgrasser et al. add a human-sized sample per generation, which would make the mix
mostly synthetic): each generation draws about human tokens / (generations + 1) tokens, so the accumulate
mix at generation g holds at most g / (2g + 1) < 1/2 synthetic tokens, inside the guards' default synthetic
fraction bound at every generation, while replace is 100 % synthetic from generation 1 on. At a fixed token
budget replace therefore repeats a smaller data set more often (the result's notes give the epochs): part of
its loss rise is that over-fitting, which is part of what replacing costs. Samples are
drawn at temperature 1 with no top-k or top-p (both papers sample the model's full distribution), from
the end-of-text token (unconditional), `sample_tokens` tokens per stream; each stream is split at the
end-of-text tokens the model writes into documents. Streams are drawn in batches, each batch with a torch
generator seeded from (seed, chain, generation, batch index): a rerun draws the same text.

Each training version is checked by `curation.guards.version_guards` against its predecessor (and the
human version on its own, as every guard's generation-0 baseline), with the evaluation set as the frozen
human reference and the seed's generation-0 model as the perplexity reference. The experiment goes
`generations` deep on purpose, so its lineage guard is set to that depth (the generation histogram is
reported instead); every other guard keeps its default threshold.

Results go to `<store>/collapse/<name>/`: `collapse.json` (every run, loss per policy and generation with
its paired delta against generation 0, every guard value per policy, generation and seed, a sample text
per generation, the verdict), `collapse.png` and, on the flow run, Prefect table and markdown artifacts.
Runs, samples and versions already in the store are reused: a rerun trains nothing and samples only the
few streams that show the last generation's text.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from matplotlib.figure import Figure
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed

from curation.demo import KJV_FILE, STDLIB_FILE, build_demo_corpus
from curation.evalsets import evalset_exists, register_evalset
from curation.guards import GuardConfig, version_guards
from curation.store import VersionStore, check_name
from flows.ablate import plan_workers, train_run_task
from flows.cli_common import printer
from flows.collapse_spec import POLICIES, CollapseError, CollapseSpec, default_name
from flows.curate import artifact_key, task_runner
from flows.gpt import load_gpt, perplexity_scorer
from training.ablation import WORSE, compare, summarize
from training.data import tokenize_evalset, tokenize_version
from training.tokenizer import Tokenizer, tokenizer_for_version

SHARED = "shared"  # the chain label of generation 1's samples, drawn from the shared generation-0 model
COLLAPSE_DIR = "collapse"
RESULT_FILE = "collapse.json"
PLOT_FILE = "collapse.png"
SAMPLE_BATCH = 64  # streams per generate() call (our choice: ~1,400 new tokens/s on one core at 64 tokens)
PREVIEW_STREAMS = 2  # streams drawn from each last-generation model of seed 0, only to show its text
PREVIEW_CHARS = 300
SYNTHETIC_SOURCE = "synthetic-g{g}"  # the `source` of generation g's rows: token counts per generation
KEY_MARK = "collapse key "  # versions carry their content key in the description, so a rerun can reuse them
# Guards shown as columns of the tables and plotted (their values per seed are all in collapse.json).
TABLE_GUARDS = ("synthetic_fraction", "parent_human_kept", "unigram_js", "tail_mass", "perplexity_spread")
PLOT_GUARDS = ("unigram_js", "tail_mass", "perplexity_spread")


def version_name(name: str, seed: int, policy: str, generation: int, synthetic: bool = False) -> str:
    return f"{name}-s{seed}-{policy}-g{generation}" + ("-synthetic" if synthetic else "")


# ---- tasks (run in the process pool) ------------------------------------------------------------------


def _stream_seed(key: str, batch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}/{batch}".encode()).digest()[:8], "big") >> 1


def split_documents(ids: list[int], eot_id: int, decode) -> list[str]:
    """The documents of one sampled stream: its text between the end-of-text tokens the model wrote."""
    docs, current = [], []
    for token in [*ids, eot_id]:
        if token != eot_id:
            current.append(token)
            continue
        if current:
            text = decode(current)
            if text.strip():
                docs.append(text)
        current = []
    return docs


@task(name="collapse-sample")
def sample_task(checkpoint: str, streams: int, sample_tokens: int, temperature: float, key: str, threads: int,
                device: str = "cpu") -> dict[str, Any]:
    """`streams` unconditional samples of `sample_tokens` tokens from a checkpoint, split into documents."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model, tok = load_gpt(checkpoint, device)
    texts: list[str] = []
    tokens = 0
    for batch, start in enumerate(range(0, streams, SAMPLE_BATCH)):
        n = min(SAMPLE_BATCH, streams - start)
        generator = torch.Generator(device=device).manual_seed(_stream_seed(key, batch))
        prompt = torch.full((n, 1), tok.eot_id, dtype=torch.long, device=device)
        out = model.generate(prompt, sample_tokens, temperature=temperature, generator=generator)
        for row in out[:, 1:].tolist():
            tokens += sum(1 for t in row if t != tok.eot_id)
            texts.extend(split_documents(row, tok.eot_id, tok.decode))
    return {"texts": texts, "tokens": tokens, "streams": streams, "seconds": time.perf_counter() - started}


@task(name="collapse-guards")
def guards_task(store_url: str, version: str, parent: str | None, reference: str, reference_model: str,
                max_generation: int, threads: int) -> dict[str, Any]:
    """The data guards of one training version against its predecessor."""
    torch.set_num_threads(threads)
    config = GuardConfig(reference=reference, reference_model=reference_model, max_generation=max_generation)
    return version_guards(VersionStore(store_url), version, config, parent=parent,
                          perplexity=perplexity_scorer(reference_model))


# ---- versions -----------------------------------------------------------------------------------------


def _content_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _reusable(store: VersionStore, version: str, key: str) -> bool:
    """True when `version` exists and was made by the same inputs (its description holds `key`); an existing
    version made otherwise is an error, never overwritten."""
    if not store.exists(version):
        return False
    if f"{KEY_MARK}{key}" in (store.manifest(version).get("description") or ""):
        return True
    raise CollapseError(f"version {version!r} already exists in {store.url} but was made with other settings or "
                        "another human version; pass another --name")


def _records(rows: list[dict[str, Any]]):
    """Rows (id, text, source, origin, generation, generator) as an Arrow table in the record schema."""
    return pa.table({
        "id": [r["id"] for r in rows], "text": pa.array([r["text"] for r in rows], pa.large_string()),
        "source": [r["source"] for r in rows], "origin": [r["origin"] for r in rows],
        "generation": pa.array([r["generation"] for r in rows], pa.int32()),
        "generator": pa.array([r["generator"] for r in rows], pa.string())})


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def prepare_human(store: VersionStore, name: str, spec: CollapseSpec, say) -> tuple[str, str]:
    """The demo's human sources (docstrings and Bible chapters, not the web crawl; a seeded `human_share` of
    each source's documents) as version `<name>-human`, and its held-out human documents as evaluation set
    `<name>-heldout` (or an existing set of that name). Returns (version, evaluation set)."""
    version, evalset = f"{name}-human", f"{name}-heldout"
    key = _content_key("human", spec.scale, spec.human_share, 0)
    if _reusable(store, version, key) and evalset_exists(store, evalset):
        return version, evalset
    root = Path(store.root) / "demo-inputs" / f"collapse-seed0-scale{spec.scale:g}"
    corpus = build_demo_corpus(root, seed=0, scale=spec.scale)
    if not store.exists(version):
        rng = random.Random(0)
        rows = []
        for file in (STDLIB_FILE, KJV_FILE):
            docs = _read_jsonl(corpus.root / file)
            keep = sorted(rng.sample(range(len(docs)), max(1, round(spec.human_share * len(docs)))))
            rows += [{"id": docs[i]["id"], "text": docs[i]["text"], "source": file.split(".")[0], "origin": "human",
                      "generation": 0, "generator": None} for i in keep]
        store.publish_table(version, _records(rows), description=f"collapse-sim {name}: {spec.human_share:.0%} of "
                            f"the human documents of the demo corpus (seed 0, scale {spec.scale:g}); {KEY_MARK}{key}")
        say(f"published {version}: {len(rows):,} human documents (docstrings and Bible chapters)")
    if not evalset_exists(store, evalset):
        info = register_evalset(store, evalset, [str(p) for p in corpus.heldout_files])
        say(f"registered evaluation set {evalset}: {info.docs} held-out human documents")
    return version, evalset


def samples_per_generation(spec: CollapseSpec, human_tokens: int) -> int:
    """Streams per generation: the spec's, or human tokens / (generations + 1) / sample_tokens."""
    if spec.samples:
        return spec.samples
    return max(1, human_tokens // ((spec.generations + 1) * spec.sample_tokens))


# ---- the flow ---------------------------------------------------------------------------------------


Key = tuple[int, str, int]  # (seed, policy, generation)


@flow(name="collapse-sim", log_prints=True)
def collapse_flow(store_url: str, spec: CollapseSpec, name: str, *, human: str | None = None,
                  evalset: str | None = None, check_guards: bool = True, parallel: int | None = None,
                  show_progress: bool = False) -> dict[str, Any]:
    """Generation 0 on human text, then `spec.generations` generations of replace and accumulate per seed;
    held-out loss, guards and sample text per generation. Writes `<store>/collapse/<name>/`."""
    started = time.perf_counter()
    spec.check()
    say = printer(show_progress)
    store = VersionStore(store_url)
    if human is None:
        human, built = prepare_human(store, name, spec, say)
        evalset = evalset or built
    elif evalset is None:
        raise CollapseError("--human needs --eval-set: the frozen held-out human text every generation is "
                            "measured on")
    tok = tokenizer_for_version(store, human, spec.vocab_size)
    human_tokens = tokenize_version(store, human, tok)
    tokenize_evalset(store, evalset, tok)
    samples = samples_per_generation(spec, human_tokens.n_tokens)
    G = spec.generations
    workers, threads, devices = plan_workers(spec.runs(), spec.device, parallel)
    say(f"collapse-sim {name}: {spec.seeds} seed(s) x (generation 0 + {G} generation(s) x 2 policies) = "
        f"{spec.runs()} runs of {spec.preset} ({spec.tokens:,} tokens, block {spec.block_size}); human {human} "
        f"({human_tokens.n_tokens:,} tokens), {samples:,} samples x {spec.sample_tokens} tokens per generation, "
        f"evaluation set {evalset}; {workers} process(es) x {threads} thread(s)")
    experiment = CollapseScheduler(store, spec, name, human, evalset, tok, samples, check_guards=check_guards,
                                   slots=(workers, threads, devices), say=say)
    experiment.run()

    context = {"name": name, "store": store.url, "spec": spec.to_dict(), "human": human, "evalset": evalset,
               "tokenizer": {"hash": tok.hash, "vocab_size": tok.vocab_size, "path": str(tok.path)},
               "human_tokens": human_tokens.n_tokens, "samples_per_generation": samples, "check_guards": check_guards,
               "guard_settings": {"reference": evalset, "reference_model": "the seed's generation-0 checkpoint",
                                  "max_generation": G, "note": "the experiment goes `generations` deep on purpose: "
                                  "its lineage guard is set to that depth (the generation histogram is reported "
                                  "instead); every other guard keeps its default threshold"}}
    result = collapse_result(context, experiment.runs, experiment.versions, experiment.synthetic, experiment.mix,
                             experiment.guard_results, experiment.previews)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["paths"] = save_result(store, result)
    publish_artifacts(result)
    return result


class CollapseScheduler:
    """The experiment's tasks, each submitted as soon as what it needs has finished: every seed's generation 0,
    then per chain sample -> publish -> train, generation after generation. Guard tasks are off the chains'
    critical path: they wait in a queue and fill idle workers. What the tasks return is kept per
    (seed, policy, generation); generation 0 is stored under both policies."""

    def __init__(self, store: VersionStore, spec: CollapseSpec, name: str, human: str, evalset: str,
                 tok: Tokenizer, samples: int, *, check_guards: bool, slots: tuple[int, int, list[str]],
                 say: Callable[[str], None]) -> None:
        self.store, self.spec, self.name, self.human, self.evalset = store, spec, name, human, evalset
        self.tok, self.samples, self.check_guards, self.say = tok, samples, check_guards, say
        self.workers, self.threads, self.devices = slots  # processes, torch threads each, device of each slot
        self.sample_device = "cpu" if self.devices[0] == "cpu" else self.devices[0]
        self.training = spec.training()
        self.pending: dict[Any, tuple[str, tuple]] = {}  # future -> (kind, what it is for)
        self.waiting_guards: list[Key] = []
        self.trains_submitted = 0  # round-robin over the devices' slots
        self.trains_finished = 0
        self.runs: dict[Key, dict[str, Any]] = {}  # the run record
        self.versions: dict[Key, str] = {}  # the training version
        self.synthetic: dict[Key, dict[str, Any]] = {}  # the sampled version: name, content key, generator
        self.guard_results: dict[Key, dict[str, Any]] = {}
        self.previews: dict[tuple[str, int], str] = {}  # (policy, generation of the writing model) -> text
        self.mix: dict[str, dict[str, Any]] = {}  # training version -> tokens by origin

    # ---- the loop ----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Train every seed's generation 0, then handle each task as it finishes until none is left."""
        for seed in range(self.spec.seeds):
            for policy in POLICIES:
                self.versions[(seed, policy, 0)] = self.human
            self.record_mix(self.human)
            self.submit_train(seed, "human", 0, self.human)
        handlers = {"train": self.trained, "sample": self.sampled, "guards": self.guarded}
        while True:
            self.fill_idle_workers()  # the one place queued guards are submitted, whichever task finished last
            if not self.pending:
                break
            future = next(as_completed(list(self.pending)))
            kind, what = self.pending.pop(future)
            handlers[kind](what, future.result())

    def trained(self, what: Key, record: dict[str, Any]) -> None:
        seed, policy, g = what
        self.trains_finished += 1
        how = "found in the store" if record["cached"] else f"{record['seconds']:.0f} s"
        self.say(f"  run {self.trains_finished}/{self.spec.runs()}: seed {seed} {policy} generation {g}: "
                 f"loss {record['final_eval'][self.evalset]['loss']:.4f} ({how})")
        if g == 0:
            for p in POLICIES:
                self.runs[(seed, p, 0)] = record
            self.after_training(seed, SHARED, 0)
            self.queue_guards(seed, SHARED, 0)  # the human version's own values: the baseline of every guard
        else:
            self.runs[(seed, policy, g)] = record
            self.after_training(seed, policy, g)

    def sampled(self, what: tuple[int, str, int, str], value: dict[str, Any]) -> None:
        seed, chain, g, key = what
        if chain.startswith("preview-"):
            self.previews[(chain.removeprefix("preview-"), g - 1)] = preview(value["texts"])
            return
        self.say(f"  seed {seed} {chain} generation {g}: sampled {len(value['texts']):,} documents, "
                 f"{value['tokens']:,} tokens in {value['seconds']:.0f} s")
        if seed == 0:
            for p in _policies(chain):
                self.previews[(p, g - 1)] = preview(value["texts"])
        self.publish_generation(seed, chain, g, key, value)

    def guarded(self, what: Key, report: dict[str, Any]) -> None:
        seed, policy, g = what
        for p in _policies(policy):
            self.guard_results[(seed, p, g)] = report
        failed = ", ".join(report.get("failures", [])) or "none"
        self.say(f"  guards seed {seed} {'human' if g == 0 else policy} generation {g}: failed {failed}")

    # ---- what follows a finished task ------------------------------------------------------------------

    def after_training(self, seed: int, policy: str, g: int) -> None:
        """The next step of the chain: sample generation g+1 from this model (or a preview at the end)."""
        chain = SHARED if g == 0 else policy
        record = self.runs[(seed, POLICIES[0] if chain == SHARED else policy, g)]
        if g == self.spec.generations:
            if seed == 0:
                self.submit_sample(seed, f"preview-{policy}", g + 1, record, PREVIEW_STREAMS)
            return
        spec = self.spec
        key = _content_key("sample", record["key"], self.samples, spec.sample_tokens, spec.temperature, seed, chain,
                           g + 1)
        targets = _policies(chain)
        if not all(_reusable(self.store, version_name(self.name, seed, p, g + 1, synthetic=True), key)
                   for p in targets):
            self.submit_sample(seed, chain, g + 1, record, self.samples)
            return
        self.say(f"  seed {seed} {chain} generation {g + 1}: samples found in the store")
        self.publish_generation(seed, chain, g + 1, key, None)
        if seed == 0:
            for p in targets:
                texts = self.store.read_table(self.synthetic[(0, p, g + 1)]["version"], columns=["text"])
                self.previews[(p, g)] = preview(texts.column("text").to_pylist())

    def publish_generation(self, seed: int, chain: str, g: int, key: str, sampled: dict[str, Any] | None) -> None:
        """Generation g's synthetic version(s) and training version(s) of `chain`; train and guard them."""
        generator = f"gpt:{Path(self.runs[(seed, _policies(chain)[0], g - 1)]['dir']).name}"
        for policy in _policies(chain):
            self.publish_synthetic(seed, chain, policy, g, key, generator, sampled)
            train_name = self.publish_training(seed, policy, g)
            self.versions[(seed, policy, g)] = train_name
            self.record_mix(train_name)
            self.submit_train(seed, policy, g, train_name)
            self.queue_guards(seed, policy, g)

    def publish_synthetic(self, seed: int, chain: str, policy: str, g: int, key: str, generator: str,
                          sampled: dict[str, Any] | None) -> None:
        """The sampled documents as version `<name>-s<seed>-<policy>-g<g>-synthetic` (unless the store has it)."""
        syn_name = version_name(self.name, seed, policy, g, synthetic=True)
        if not _reusable(self.store, syn_name, key):
            assert sampled is not None
            rows = [{"id": f"{self.name}-s{seed}-{chain}-g{g}-{i:05d}", "text": text,
                     "source": SYNTHETIC_SOURCE.format(g=g), "origin": "synthetic", "generation": g,
                     "generator": generator} for i, text in enumerate(sampled["texts"])]
            self.store.publish_table(syn_name, _records(rows), parents=[self.versions[(seed, policy, g - 1)]],
                                     description=f"collapse-sim {self.name}: {len(rows):,} documents sampled from "
                                                 f"{generator} (seed {seed}, {chain}, generation {g}); "
                                                 f"{KEY_MARK}{key}")
        self.synthetic[(seed, policy, g)] = {"version": syn_name, "key": key, "generator": generator}

    def publish_training(self, seed: int, policy: str, g: int) -> str:
        """Generation g's training data under `policy` (replace: its samples; accumulate: the human rows and every
        generation's samples so far) as a version, unless the store has it; returns its name."""
        train_name = version_name(self.name, seed, policy, g)
        accumulate = policy == "accumulate"
        sampled = [self.synthetic[(seed, policy, k)] for k in (range(1, g + 1) if accumulate else (g,))]
        train_key = _content_key("train", policy, self.human if accumulate else None, [s["key"] for s in sampled])
        if not _reusable(self.store, train_name, train_key):
            members = ([self.human] if accumulate else []) + [s["version"] for s in sampled]
            table = pa.concat_tables([self.store.read_table(v) for v in members], promote_options="permissive")
            self.store.publish_table(train_name, table, parents=[self.versions[(seed, policy, g - 1)]],
                                     description=f"collapse-sim {self.name}: {policy} training data of generation "
                                                 f"{g} (seed {seed}): {' + '.join(members)}; {KEY_MARK}{train_key}")
        return train_name

    def record_mix(self, version: str) -> None:
        token_file = tokenize_version(self.store, version, self.tok)  # cached; the training tasks only read it
        by_source = {s: int(e["tokens"]) for s, e in token_file.meta["by_source"].items()}
        synthetic_tokens = sum(v for s, v in by_source.items() if s.startswith("synthetic-"))
        self.mix[version] = {"tokens": token_file.n_tokens, "synthetic_tokens": synthetic_tokens,
                             "synthetic_fraction": synthetic_tokens / max(1, token_file.n_tokens),
                             "tokens_by_source": by_source}

    # ---- submitting tasks ------------------------------------------------------------------------------

    def submit_train(self, seed: int, policy: str, g: int, version: str) -> None:
        cfg = self.training.config(seed, self.tok.vocab_size)
        device = self.devices[self.trains_submitted % self.workers]
        self.trains_submitted += 1
        if device != cfg.device:
            cfg = type(cfg)(**{**cfg.to_dict(), "device": device})
        future = train_run_task.submit(self.store.url, version, cfg, str(self.tok.path), [self.evalset], self.threads)
        self.pending[future] = ("train", (seed, policy, g))

    def submit_sample(self, seed: int, chain: str, g: int, source: dict[str, Any], streams: int) -> None:
        spec = self.spec
        key = _content_key("sample", source["key"], streams, spec.sample_tokens, spec.temperature, seed, chain, g)
        future = sample_task.submit(str(Path(source["dir"]) / "checkpoint.pt"), streams, spec.sample_tokens,
                                    spec.temperature, key, self.threads, self.sample_device)
        self.pending[future] = ("sample", (seed, chain, g, key))

    def queue_guards(self, seed: int, policy: str, g: int) -> None:
        if self.check_guards:
            self.waiting_guards.append((seed, policy, g))

    def fill_idle_workers(self) -> None:
        """Submit queued guard tasks while a worker is idle, or all of them once nothing else is running."""
        store, evalset, G, threads = self.store, self.evalset, self.spec.generations, self.threads
        while self.waiting_guards and (len(self.pending) < self.workers or not self.pending):
            seed, policy, g = self.waiting_guards.pop(0)
            reference_model = str(Path(self.runs[(seed, POLICIES[0], 0)]["dir"]) / "checkpoint.pt")
            version, parent = (self.human, None) if g == 0 else (self.versions[(seed, policy, g)],
                                                                 self.versions[(seed, policy, g - 1)])
            self.pending[guards_task.submit(store.url, version, parent, evalset, reference_model, G, threads)] = \
                ("guards", (seed, policy, g))


def _policies(chain: str) -> tuple[str, ...]:
    """The policies a chain's samples or guard report belong to: both for the shared generation 0 -> 1."""
    return POLICIES if chain == SHARED else (chain,)


def preview(texts: list[str]) -> str:
    """The first sampled document of at least 100 characters (else the longest), cut to PREVIEW_CHARS."""
    if not texts:
        return ""
    text = next((t for t in texts if len(t.strip()) >= 100), max(texts, key=len))
    return text.strip()[:PREVIEW_CHARS]


def run_collapse(store_url: str, *, human: str | None = None, evalset: str | None = None, name: str | None = None,
                 workers: int | None = None, check_guards: bool = True, show_progress: bool = False,
                 **spec_fields: Any) -> dict[str, Any]:
    """Run the collapse experiment (`collapse_flow`) on a process pool and return its result.
    `spec_fields`: any `CollapseSpec` field (generations, seeds, tokens, samples, block_size, ...); the others
    keep the spec's defaults."""
    spec = CollapseSpec(**spec_fields)
    spec.check()
    name = name or default_name(spec, human)
    n_workers, _, _ = plan_workers(spec.runs(), spec.device, workers)
    return collapse_flow.with_options(task_runner=task_runner(n_workers))(
        store_url, spec, name, human=human, evalset=evalset, check_guards=check_guards, parallel=workers,
        show_progress=show_progress)


# ---- the result -------------------------------------------------------------------------------------


def _guard_index(report: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in (report or {}).get("guards", [])}


def collapse_result(context: dict[str, Any], runs: dict[tuple[int, str, int], dict[str, Any]],
                    versions: dict[tuple[int, str, int], str], synthetic: dict[tuple[int, str, int], dict[str, Any]],
                    mix: dict[str, dict[str, Any]], guard_results: dict[tuple[int, str, int], dict[str, Any]],
                    previews: dict[tuple[str, int], str]) -> dict[str, Any]:
    """Every number of the experiment: runs, loss per (policy, generation) with its paired delta against
    generation 0, guards per (policy, generation, seed) and their summary, samples and the verdict."""
    G = context["spec"]["generations"]
    seeds = list(range(context["spec"]["seeds"]))
    evalset = context["evalset"]
    run_rows = []
    for (seed, policy, g), record in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        version = versions[(seed, policy, g)]
        run_rows.append({"policy": policy, "seed": seed, "generation": g, "version": version,
                         "loss": record["final_eval"][evalset]["loss"], "bpb": record["final_eval"][evalset]["bpb"],
                         "per_source": {k.split("/", 1)[1]: v["loss"] for k, v in record["final_eval"].items()
                                        if k.startswith(f"{evalset}/")},
                         "dir": record["dir"], "cached": record["cached"], "seconds": record["seconds"],
                         "epochs": record["epochs"], "unique_tokens": record["unique_tokens"],
                         "synthetic": (synthetic.get((seed, policy, g)) or {}).get("version"),
                         "generator": (synthetic.get((seed, policy, g)) or {}).get("generator")})

    def losses(policy: str, g: int) -> dict[int, float]:
        return {seed: runs[(seed, policy, g)]["final_eval"][evalset]["loss"] for seed in seeds}

    guards_rows = []
    for (seed, policy, g), report in sorted(guard_results.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        guards_rows.append({"policy": policy, "seed": seed, "generation": g, "version": versions[(seed, policy, g)],
                            "parent": versions.get((seed, policy, g - 1)), "passed": report.get("passed"),
                            "hard_failures": report.get("hard_failures", []), "failures": report.get("failures", []),
                            "guards": [dict(guard) for guard in report.get("guards", [])],
                            "generation_histogram": report.get("generation_histogram")})
    levels: dict[str, list[dict[str, Any]]] = {}
    fails_by_generation: dict[str, dict[str, Any]] = {}
    for policy in POLICIES:
        rows = []
        first_failure: dict[str, int] = {}
        for g in range(G + 1):
            values = losses(policy, g)
            row: dict[str, Any] = {"generation": g, "loss": summarize(values).to_dict(),
                                   "delta_vs_generation_0": None if g == 0 else compare(losses(policy, 0),
                                                                                         values).to_dict()}
            version_mix = [mix[versions[(s, policy, g)]] for s in seeds]
            row["synthetic_fraction_tokens"] = sum(m["synthetic_fraction"] for m in version_mix) / len(seeds)
            row["training_tokens"] = sum(m["tokens"] for m in version_mix) / len(seeds)
            row["epochs"] = sum(runs[(s, policy, g)]["epochs"] for s in seeds) / len(seeds)
            reports = [guard_results.get((s, policy, g)) for s in seeds]
            if any(reports):
                failed: dict[str, int] = {}
                for report in filter(None, reports):
                    for guard_name in report.get("failures", []):
                        failed[guard_name] = failed.get(guard_name, 0) + 1
                        first_failure.setdefault(guard_name, g)
                row["guards_failed"] = failed  # guard -> seeds whose version failed it
                row["guards_passed_all_seeds"] = all(r is not None and r.get("passed") for r in reports)
                row["guard_values"] = {}
                for guard_name in sorted({n for r in reports for n in _guard_index(r)}):
                    entries = [_guard_index(r).get(guard_name) for r in reports]
                    numbers = [e["value"] for e in entries if e and isinstance(e.get("value"), (int, float))]
                    first = next((e for e in entries if e), {})
                    row["guard_values"][guard_name] = {
                        "mean": sum(numbers) / len(numbers) if numbers else None,
                        "by_seed": {s: (e or {}).get("value") for s, e in zip(seeds, entries)},
                        "threshold": first.get("threshold"), "op": first.get("op"), "hard": first.get("hard")}
                row["generation_histogram"] = (reports[0] or {}).get("generation_histogram")  # seed 0's
            row["sample"] = previews.get((policy, g), "")
            rows.append(row)
        levels[policy] = rows
        fails_by_generation[policy] = {
            "first_failure": dict(sorted(first_failure.items(), key=lambda kv: (kv[1], kv[0]))),
            "by_generation": {row["generation"]: sorted(row.get("guards_failed", {})) for row in rows}}
    verdict = collapse_verdict(losses("accumulate", G), losses("replace", G), levels, G)
    replace_last, accumulate_last = levels["replace"][G], levels["accumulate"][G]
    notes = [f"every run trains {context['spec']['tokens']:,} tokens: generation 0 repeats its "
             f"{levels['replace'][0]['training_tokens']:,.0f} human tokens {levels['replace'][0]['epochs']:.1f} times, "
             f"replace at generation {G} its {replace_last['training_tokens']:,.0f} sampled tokens "
             f"{replace_last['epochs']:.1f} times, accumulate its {accumulate_last['training_tokens']:,.0f} tokens "
             f"{accumulate_last['epochs']:.1f} times: part of replace's loss is over-fitting to less data, which is "
             "what replacing costs at a fixed budget"]
    if accumulate_last["synthetic_fraction_tokens"] >= 0.5:
        notes.append(f"accumulate's data is {accumulate_last['synthetic_fraction_tokens']:.0%} synthetic at "
                     f"generation {G}: over the synthetic_fraction guard's 0.5 (use fewer --samples)")
    return {"kind": "collapse", **context, "runs": run_rows, "levels": levels, "guards": guards_rows,
            "fails_by_generation": fails_by_generation, "verdict": verdict, "notes": notes,
            "samples": {policy: {row["generation"]: row["sample"] for row in levels[policy]} for policy in POLICIES}}


def collapse_verdict(accumulate: dict[int, float], replace: dict[int, float], levels: dict[str, list[dict[str, Any]]],
                     generations: int) -> dict[str, Any]:
    """Replace against accumulate at the last generation, paired by seed (delta = replace - accumulate)."""
    c = compare(accumulate, replace).to_dict()
    last = {p: levels[p][generations]["delta_vs_generation_0"] for p in POLICIES}
    interval = "" if c["ci_low"] is None else f" [95% CI {c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
    head = (f"at generation {generations}, replace minus accumulate: {c['mean']:+.4f} nats{interval} over "
            f"{c['n']} seed(s)")
    if c["ci_low"] is None:
        text = f"{head}: one seed gives no interval, so no verdict (use --seeds 2 or more)"
    elif c["verdict"] == WORSE:
        text = f"replace is worse than accumulate: {head}, the interval excludes zero"
    else:
        text = f"not detectable: {head}, the interval contains zero"
        if c["mean"] < 0:
            text += " (replace came out lower)"
    for policy in POLICIES:
        d = last[policy]
        ci = "" if d["ci_low"] is None else f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        text += f"; {policy} vs generation 0: {d['mean']:+.4f}{ci} ({d['verdict']})"
    return {"replace_minus_accumulate": c, "replace_worse": c["verdict"] == WORSE, "text": text,
            "vs_generation_0": last}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (policy, generation): loss, delta against generation 0, guards failed, guard values."""
    out = []
    for policy in POLICIES:
        for row in result["levels"][policy]:
            loss, d = row["loss"], row["delta_vs_generation_0"]
            sd = f" ± {loss['std']:.4f}" if loss["std"] is not None else ""
            if d is None:
                delta = "baseline"
            else:
                ci = "" if d["ci_low"] is None else f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                delta = f"{d['mean']:+.4f}{ci}"
            failed = row.get("guards_failed")
            out_row = {"policy": policy, "generation": row["generation"], "loss": f"{loss['mean']:.4f}{sd}",
                       "Δ vs generation 0 [95% CI]": delta,
                       "guards failed": "-" if failed is None else ", ".join(failed) or "none",
                       "synthetic tokens": f"{row['synthetic_fraction_tokens']:.1%}"}
            for guard_name in TABLE_GUARDS:
                value = (row.get("guard_values") or {}).get(guard_name)
                out_row[guard_name] = "-" if value is None else _fmt(value["mean"])
            out.append(out_row)
    return out


def summary_markdown(result: dict[str, Any]) -> str:
    rows = summary_rows(result)
    columns = list(rows[0])
    spec = result["spec"]
    lines = [f"# Collapse experiment `{result['name']}`", "",
             f"- human `{result['human']}` ({result['human_tokens']:,} tokens), evaluation set `{result['evalset']}`; "
             f"{spec['preset']}, {spec['tokens']:,} tokens per run, block {spec['block_size']}, seeds "
             f"{list(range(spec['seeds']))}; {result['samples_per_generation']:,} samples x {spec['sample_tokens']} "
             f"tokens per generation at temperature {spec['temperature']:g}",
             f"- verdict: {result['verdict']['text']}",
             f"- guards: {result['guard_settings']['note']}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    lines += ["", "## Sample text per generation (seed 0)", ""]
    for policy in POLICIES:
        for g, text in result["samples"][policy].items():
            lines.append(f"- {policy} generation {g}: {json.dumps(text[:200])}")
    return "\n".join(lines)


def publish_artifacts(result: dict[str, Any]) -> None:
    """The experiment's table and summary, shown by the Prefect UI on the flow run."""
    create_table_artifact(summary_rows(result), key=artifact_key(f"collapse-{result['name']}-table"),
                          description=f"Held-out loss and guards per policy and generation of {result['name']}")
    create_markdown_artifact(summary_markdown(result), key=artifact_key(f"collapse-{result['name']}-summary"),
                             description=f"Summary of collapse experiment {result['name']}")


def collapse_png(result: dict[str, Any]) -> bytes:
    """Held-out loss per generation (mean and every seed) per policy, and guard values per generation (mean over
    seeds, with the guard's threshold)."""
    colours = {"replace": "tab:red", "accumulate": "tab:blue"}
    generations = range(result["spec"]["generations"] + 1)
    guards = [n for n in PLOT_GUARDS if any((row.get("guard_values") or {}).get(n, {}).get("mean") is not None
                                            for p in POLICIES for row in result["levels"][p])]
    columns = 2 if guards else 1
    rows_of_panels = math.ceil((1 + len(guards)) / columns)
    fig = Figure(figsize=(6 * columns, 4 * rows_of_panels))  # no pyplot: no global figure registry
    axes = fig.subplots(rows_of_panels, columns, squeeze=False)
    panels = [ax for row in axes for ax in row]
    ax = panels[0]
    for policy in POLICIES:
        levels = result["levels"][policy]
        ax.plot([row["generation"] for row in levels], [row["loss"]["mean"] for row in levels], marker="o",
                color=colours[policy], label=policy)
        for row in levels:
            values = list(row["loss"]["values"].values())
            ax.scatter([row["generation"]] * len(values), values, color=colours[policy], alpha=0.35, s=14)
            if len(values) > 1:
                ax.vlines(row["generation"], min(values), max(values), color=colours[policy], alpha=0.35)
    ax.set_ylabel("nats per token")
    ax.set_title("loss on held-out human text (line: mean; dots: seeds)")
    for guard_name, ax in zip(guards, panels[1:]):
        threshold = None
        for policy in POLICIES:
            entries = [(row["generation"], row["guard_values"][guard_name]) for row in result["levels"][policy]
                       if (row.get("guard_values") or {}).get(guard_name, {}).get("mean") is not None]
            if entries:
                ax.plot([g for g, _ in entries], [e["mean"] for _, e in entries], marker="o", color=colours[policy],
                        label=policy)
                threshold = threshold if threshold is not None else entries[0][1]["threshold"]
        if isinstance(threshold, (int, float)):
            ax.axhline(threshold, color="grey", linestyle="--", label="threshold")
        ax.set_title(f"guard {guard_name} (mean over seeds)")
    for ax in panels[1 + len(guards):]:
        ax.axis("off")
    for ax in panels[:1 + len(guards)]:
        ax.set_xlabel("generation")
        ax.set_xticks(list(generations))
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def save_result(store: VersionStore, result: dict[str, Any]) -> dict[str, str]:
    """Write `<store>/collapse/<name>/collapse.json` and `collapse.png`, each moved into place."""
    folder = f"{store.root}/{COLLAPSE_DIR}/{check_name(result['name'], 'collapse experiment')}"
    store.fs.makedirs(folder, exist_ok=True)
    paths = {"folder": folder, "result": f"{folder}/{RESULT_FILE}", "plot": f"{folder}/{PLOT_FILE}"}

    def put(path: str, payload: bytes) -> None:
        tmp = f"{path}.tmp"
        with store.fs.open(tmp, "wb") as handle:
            handle.write(payload)
        store.fs.mv(tmp, path)

    put(paths["plot"], collapse_png(result))
    put(paths["result"], json.dumps({**result, "paths": paths}, indent=2, default=str).encode("utf-8"))
    return paths
