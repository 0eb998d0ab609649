"""Supervised fine-tuning: a pre-trained GPT trained further on instruction records, measured on held-out ones.

    base = load_base("runs/.../checkpoint.pt")          # training.pretrained: or a GPT-2 folder
    data = examples_from_version(store, "instruct", "alpaca", base.tokenizer, base.model.config.block_size)
    finetune(TrainConfig(learning_rate=5e-4), FinetuneConfig(base=...), base, data, {"held-out": evals}, out)

The run is pre-training's loop (`training.trainer.run_loop`: same seeded sampler, learning-rate schedule, GPU
fast path, checkpoints, resume and metrics.jsonl) on different data and a different measurement: examples
are masked records (`training.sft`: loss on response tokens only, one example per padded row) and the
evaluation is the response loss on instruction evaluation sets, overall and per task type (`set/task_type`
keys, the ablation's per-domain keys). The base's tokenizer is used as it is (frozen): it was trained with it.

With LoRA only the adapters train and a checkpoint holds them alone (`adapters_only`); the base is rebuilt from
the path the run recorded, after checking its sha256, when the run resumes or its model is loaded
(`merged_model`, which folds the adapters into plain weights for generation and export).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from training.config import ADAM_BETA1, FinetuneConfig, TrainConfig
from training.lora import LoRAConfig, apply_lora, load_lora_state_dict, merge_lora
from training.model import GPT
from training.pretrained import Base, BaseModelError, load_base
from training.sft import SFTData, response_loss
from training.trainer import (
    TrainResult,
    _Run,
    _set_up_device,
    autocast_context,
    compute_precision,
    plan,
    run_loop,
)


def lora_config(ft: FinetuneConfig) -> LoRAConfig:
    return LoRAConfig(r=ft.lora_r, alpha=ft.lora_alpha, dropout=ft.lora_dropout, targets=tuple(ft.lora_targets))


def merged_model(state: dict[str, Any], device: str = "cpu") -> GPT:
    """The model of a LoRA fine-tune's checkpoint: its base (checked against the recorded sha256) with the
    adapters folded in."""
    extra = state["extra"]
    recorded = extra["base"]
    base = load_base(recorded["path"])
    if base.sha256 != recorded["sha256"]:
        raise BaseModelError(f"{recorded['path']}: the base's weights changed since the fine-tune (sha256 "
                             f"{base.sha256[:12]}, the run recorded {recorded['sha256'][:12]}); its adapters only "
                             "fit the base they were trained on")
    model = apply_lora(base.model, lora_config(FinetuneConfig(**extra["finetune"])))
    load_lora_state_dict(model, state["model"])
    return merge_lora(model).to(device).eval()


class SFTEvaluator:
    """Response loss and bits per response byte on instruction evaluation sets; `set/task_type` per task type."""

    def __init__(self, run: _Run, eval_sets: dict[str, SFTData]):
        self.run, self.eval_sets = run, eval_sets

    def _losses(self, data: SFTData) -> dict[str, Any]:
        with self.run.ctx:
            return response_loss(self.run.model, data, ddp=self.run.ddp)

    def overall(self) -> dict[str, dict[str, float]]:
        return {name: _metrics(self._losses(data)) for name, data in self.eval_sets.items()}

    def everything(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, data in self.eval_sets.items():
            losses = self._losses(data)
            out[name] = _metrics(losses)
            for task, by_task in losses["by_task_type"].items():
                out[f"{name}/{task or 'untyped'}"] = _metrics(by_task)
        return out


def _metrics(losses: dict[str, Any]) -> dict[str, float]:
    return {"loss": losses["loss"], "bpb": losses["bits_per_byte"], "tokens": losses["tokens"]}


def finetune(cfg: TrainConfig, ft: FinetuneConfig, base: Base, data: SFTData, eval_sets: dict[str, SFTData],
             out_dir: Path, meta: dict[str, Any] | None = None, stop_at_step: int | None = None,
             log=print) -> TrainResult:
    """Fine-tune `base` on `data` for `ft.epochs` and measure the response loss on `eval_sets`. Resumes from
    `out_dir/checkpoint.pt`; `meta` (the version, its fingerprint) joins what the checkpoint records.
    `base.model` is trained in place: load a fresh base for another run."""
    if not len(data):
        raise ValueError(f"no fine-tuning examples: every record was skipped ({data.skipped})")
    empty = [name for name, evals in eval_sets.items() if not len(evals)]
    if empty:
        raise ValueError(f"instruction set(s) {', '.join(empty)}: every record was skipped; nothing to measure")
    device, ddp = _set_up_device(cfg.device)
    out_dir = Path(out_dir)
    if ddp.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # LoRA's initial A, dropout: the same on every rank and in every run with this seed
    model = base.model
    if ft.lora:
        apply_lora(model, lora_config(ft))
    else:
        model.requires_grad_(True)
    model = model.to(device).train()
    if cfg.batch_size % (ddp.world_size * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by processes x grad_accum "
                         f"({ddp.world_size} x {cfg.grad_accum})")
    steps = ft.steps(len(data), cfg.batch_size)
    budget = plan(model, cfg, data.n_tokens, ddp.world_size, steps=steps,
                  step_tokens=max(1, math.ceil(data.n_tokens / len(data) * cfg.batch_size)))
    budget.update(examples=len(data), skipped=data.skipped,
                  trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad))
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (ADAM_BETA1, cfg.beta2),
                                          device.split(":")[0])
    run_meta = {**(meta or {}), "tokenizer_hash": base.tokenizer.hash, "device": device, "world_size": ddp.world_size,
                "precision": compute_precision(device, cfg.dtype), "model": asdict(model.config),
                "base": base.describe(), "base_sha256": base.sha256, "finetune": ft.to_dict()}
    run = _Run(cfg, out_dir, device, ddp, autocast_context(device, cfg.dtype), model, optimizer, data, budget,
               run_meta, adapters_only=ft.lora)
    return run_loop(run, SFTEvaluator(run, eval_sets), stop_at_step, log)
