"""Training runs kept beside the versions, and found again by what they computed.

A run's key is a sha256 over everything that decides its numbers: the version's content fingerprint
(not its name: a renamed or re-published identical version reuses the run), the tokenizer hash, the
training configuration (every `TrainConfig` field but the execution plumbing `config.NOT_IN_KEY`:
`device`, `checkpoint_every`; `compile` is in), the evaluation sets' fingerprints, the device type and
the precision the run computes in (a CPU run, an fp32 GPU run and a bf16 GPU run are not the same
computation; `dtype="auto"` means bf16 on one GPU and fp32 on another). The run lives in

    <cache root>/runs/<fingerprint[:16]>/<preset>-t<tokens>-s<seed>-<key[:12]>/
        run.json         the key and what it was computed from (written first)
        plan.json, metrics.jsonl, checkpoint.pt, loss.png, tokenizer.json
        result.json      written by the trainer after the last step: the run is finished

A fine-tune (`finetune_version`) adds its base's sha256 and its settings (template, epochs, LoRA) to the key
and lives in `ft-<base sha256[:8]>-s<seed>-<key[:12]>/`; its evaluation sets are instruction sets.

A folder with `result.json` is reused without training, and a folder with only a checkpoint (a
crashed or interrupted run) resumes from it. The cache root is the store's folder (or `cache_dir` for
a remote store, as for token files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curation.evalsets import evaluation_sets, load_evalset, read_info
from curation.evalsets import instruction_sets as find_instruction_sets
from curation.store import VersionStore
from training.config import FinetuneConfig
from training.data import tokenize_evalset, tokenize_version
from training.sft import examples_from_table, examples_from_version
from training.tokenizer import Tokenizer, cache_root
from training.trainer import TrainConfig, TrainResult, compute_precision, config_for_key, pick_device, train

RUNS_DIR = "runs"
RUN_FILE = "run.json"
RESULT_FILE = "result.json"


@dataclass
class RunRecord:
    """One finished run: what it trained on and what it measured."""

    version: str
    fingerprint: str
    seed: int
    key: str
    dir: str
    cached: bool  # found finished in the store; nothing was trained
    final_eval: dict[str, dict[str, float]]
    epochs: float
    tokens_trained: int
    unique_tokens: int
    seconds: float
    tokens_per_second: float
    device: str
    tokenizer_hash: str
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_key(fingerprint: str, tokenizer_hash: str, cfg: TrainConfig, eval_fingerprints: dict[str, str],
            device_type: str, precision: str, finetune: dict[str, Any] | None = None) -> str:
    """`finetune`: a fine-tune's base sha256 and settings (`FinetuneConfig.for_key`); pre-training keys have none,
    so they are unchanged by its existence."""
    body = {"fingerprint": fingerprint, "tokenizer": tokenizer_hash, "config": config_for_key(cfg),
            "eval_sets": dict(sorted(eval_fingerprints.items())), "device_type": device_type,
            "precision": precision}
    if finetune is not None:
        body["finetune"] = finetune
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def run_dir(root: Path, fingerprint: str, cfg: TrainConfig, key: str, finetune_of: str | None = None) -> Path:
    """`finetune_of`: the base's sha256; a fine-tune's folder is named after it (`ft-<base[:8]>`)."""
    budget = f"t{cfg.tokens}" if cfg.tokens else "tchinchilla"
    what = f"ft-{finetune_of[:8]}" if finetune_of else f"{cfg.preset}-{budget}"
    return Path(root) / RUNS_DIR / fingerprint[:16] / f"{what}-s{cfg.seed}-{key[:12]}"


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def find_run(folder: Path, key: str) -> dict[str, Any] | None:
    """The finished run's result.json in `folder` when its key is `key`, else None."""
    try:
        stored = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        result = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if stored.get("key") == key and result.get("final_eval") is not None else None


def train_version(store: VersionStore, version: str, cfg: TrainConfig, tok: Tokenizer,
                  eval_sets: list[str] | None = None, *, cache_dir: str | os.PathLike[str] | None = None,
                  log=print) -> RunRecord:
    """Train `cfg` on `version` with tokenizer `tok` and evaluate on the frozen `eval_sets` (default:
    every registered set), or return the finished run with the same key from the store."""
    manifest = store.manifest(version)
    fingerprint = manifest["fingerprint"]
    train_tokens = tokenize_version(store, version, tok, cache_dir=cache_dir)
    names = evaluation_sets(store, eval_sets) if eval_sets is None or eval_sets else []
    evals = {name: tokenize_evalset(store, name, tok, cache_dir=cache_dir) for name in names}
    eval_fingerprints = {name: read_info(store, name).fingerprint for name in names}
    device = pick_device(cfg.device)
    precision = compute_precision(device, cfg.dtype)
    key = run_key(fingerprint, tok.hash, cfg, eval_fingerprints, device.split(":")[0], precision)
    out = run_dir(cache_root(store, cache_dir), fingerprint, cfg, key)
    described = {"eval_sets": eval_fingerprints, "device_type": device.split(":")[0], "precision": precision}
    return _train_or_reuse(out, key, version, fingerprint, cfg, tok, described, train_tokens.n_tokens, device,
                           lambda: train(cfg, train_tokens, evals, out, log=log if _is_main() else _silent))


def finetune_version(store: VersionStore, version: str, cfg: TrainConfig, ft: FinetuneConfig,
                     instruction_sets: list[str] | None = None, *, cache_dir: str | os.PathLike[str] | None = None,
                     log=print) -> RunRecord:
    """Fine-tune the base `ft.base` on the instruction version `version` and measure its response loss on the
    held-out `instruction_sets` (default: every registered instruction set), or return the finished run with
    the same key from the store. The key holds the base's sha256 and the fine-tune's settings."""
    from training.finetune import finetune  # torch-heavy fine-tuning code: only for a fine-tune
    from training.pretrained import load_base

    manifest = store.manifest(version)
    fingerprint = manifest["fingerprint"]
    base = load_base(ft.base)
    block = base.model.config.block_size
    data = examples_from_version(store, version, ft.template, base.tokenizer, block)
    names = find_instruction_sets(store, instruction_sets)
    evals = {name: examples_from_table(load_evalset(store, name)[0], ft.template, base.tokenizer, block,
                                       f"instruction set {name!r}") for name in names}
    eval_fingerprints = {name: read_info(store, name).fingerprint for name in names}
    device = pick_device(cfg.device)
    precision = compute_precision(device, cfg.dtype)
    key = run_key(fingerprint, base.tokenizer.hash, cfg, eval_fingerprints, device.split(":")[0], precision,
                  finetune={"base_sha256": base.sha256, **ft.for_key()})
    out = run_dir(cache_root(store, cache_dir), fingerprint, cfg, key, finetune_of=base.sha256)
    described = {"eval_sets": eval_fingerprints, "device_type": device.split(":")[0], "precision": precision,
                 "base": base.describe(), "finetune": ft.to_dict(), "examples": len(data), "skipped": data.skipped}
    meta = {"version": version, "fingerprint": fingerprint,
            "eval_sets": eval_fingerprints}
    return _train_or_reuse(out, key, version, fingerprint, cfg, base.tokenizer, described, data.n_tokens, device,
                           lambda: finetune(cfg, ft, base, data, evals, out, meta=meta,
                                            log=log if _is_main() else _silent))


def _silent(*_: Any) -> None:
    return None


def _train_or_reuse(out: Path, key: str, version: str, fingerprint: str, cfg: TrainConfig, tok: Tokenizer,
                    described: dict[str, Any], unique_tokens: int, device: str,
                    run: Callable[[], TrainResult]) -> RunRecord:
    """The finished run in `out` when its key is `key`; else `run()` there (resuming its checkpoint), after
    writing run.json (what the key was computed from) and the tokenizer beside the checkpoint."""

    def record(result: dict[str, Any], cached: bool) -> RunRecord:
        return RunRecord(version=version, fingerprint=fingerprint, seed=cfg.seed, key=key, dir=str(out), cached=cached,
                         final_eval=result["final_eval"], epochs=float(result["epochs"]),
                         tokens_trained=int(result["tokens_trained"]), unique_tokens=unique_tokens,
                         seconds=float(result["seconds"]), tokens_per_second=float(result["tokens_per_second"]),
                         device=str(result.get("meta", {}).get("device", device)), tokenizer_hash=tok.hash,
                         config=cfg.to_dict())

    found = find_run(out, key)
    if found is not None:
        return record(found, cached=True)
    if _is_main():
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / RUN_FILE, {"key": key, "version": version, "fingerprint": fingerprint,
                                     "tokenizer_hash": tok.hash, "config": config_for_key(cfg), **described})
        shutil.copyfile(tok.path, out / "tokenizer.json")
    return record(run().to_dict(), cached=False)
