"""What a training run and an ablation are configured with, and the defaults' one home.

Torch-free on purpose: the CLI builds its options from these dataclasses at start-up without paying for
importing torch (~2 s). The modules that used to define these names still export them: `training.model`
(GPTConfig, PRESETS), `training.trainer` (TrainConfig, TOKENS_PER_PARAM, MAX_EPOCHS_BEFORE_WARNING,
config_for_key), `training.ablation` (AblationSpec) and `training.tokenizer` (DEFAULT_VOCAB_SIZE).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Full model configurations; `GPTConfig.from_preset` applies overrides on top.
PRESETS: dict[str, dict] = {
    # ~1 M parameters: CPU-sized ablations.
    "tiny": {"vocab_size": 8192, "block_size": 256, "n_layer": 4, "n_head": 4, "n_embd": 80},
    # ~10 M parameters: a single GPU (or a patient CPU).
    "small": {"vocab_size": 8192, "block_size": 256, "n_layer": 6, "n_head": 5, "n_embd": 320},
    # GPT-2 small, 124 M; 50257 tokens padded up to a multiple of 128.
    "gpt2": {"vocab_size": 50304, "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768},
}
DEFAULT_PRESET = "tiny"
_DEFAULT_MODEL = PRESETS[DEFAULT_PRESET]
# A tokenizer trained for a run has the default preset's vocabulary (8K: stable merges from ~50 MB of text,
# and an embedding table a CPU-sized model can afford).
DEFAULT_VOCAB_SIZE: int = _DEFAULT_MODEL["vocab_size"]
# Chinchilla (Hoffmann et al. 2022): ~20 training tokens per parameter is compute-optimal.
TOKENS_PER_PARAM = 20
# More passes than this over the unique tokens start to over-fit (the course's 1-2 epochs).
MAX_EPOCHS_BEFORE_WARNING = 2.0
# AdamW's beta1 (GPT-3). Not a TrainConfig field: a new field would change the key of every stored run.
ADAM_BETA1 = 0.9
CURVE_POINTS = 10  # evaluations per ablation run when its spec leaves eval_every out (our choice: a readable curve)


@dataclass
class GPTConfig:
    """Hyper-parameters of `training.model.GPT`. The defaults are the default preset's."""

    vocab_size: int = _DEFAULT_MODEL["vocab_size"]
    block_size: int = _DEFAULT_MODEL["block_size"]  # longest context the model accepts
    n_layer: int = _DEFAULT_MODEL["n_layer"]
    n_head: int = _DEFAULT_MODEL["n_head"]
    n_embd: int = _DEFAULT_MODEL["n_embd"]
    dropout: float = 0.0  # embeddings, attention weights, residual branches; active in training only
    bias: bool = True  # False: no bias in any Linear or LayerNorm
    rope: bool = False  # rotary position embeddings instead of a learned position table
    # GELU of the MLP: "none" (exact erf form, our default) or "tanh" (the approximation GPT-2's released
    # weights were trained with, Hendrycks & Gimpel 2016); `training.pretrained` sets it when loading them.
    gelu_approximate: str = "none"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.rope and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rope needs an even head size, got {self.n_embd // self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got {self.gelu_approximate!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        """The named preset with `overrides` (any config field) applied on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(valid))}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class TrainConfig:
    """One training run. The field defaults are the project's training defaults (CLI options and flow
    parameters read them from here)."""

    preset: str = DEFAULT_PRESET
    model: dict[str, Any] = field(default_factory=dict)  # GPTConfig overrides (block_size, rope, bias...)
    tokens: int | None = None  # token budget; default TOKENS_PER_PARAM x parameters
    batch_size: int = 16  # sequences per optimiser step, over all processes and micro-steps
    grad_accum: int = 1  # micro-steps per optimiser step (per process)
    learning_rate: float = 2e-3  # our choice for the ~1 M-parameter preset; nanoGPT's GPT-2 uses 6e-4
    min_lr_ratio: float = 0.1  # cosine decays to 10 % of the peak (Chinchilla)
    warmup_fraction: float = 0.02  # linear warm-up over the first 2 % of steps (our choice)
    weight_decay: float = 0.1  # GPT-3
    beta2: float = 0.95  # GPT-3
    grad_clip: float = 1.0  # GPT-3
    seed: int = 0
    eval_every: int = 50  # optimiser steps
    eval_tokens: int = 32_768  # fixed evaluation tokens per evaluation set
    checkpoint_every: int = 200
    device: str = "auto"  # auto: cuda, else mps, else cpu
    dtype: str = "auto"  # auto: bf16 autocast on a GPU that has it, else fp32
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# TrainConfig fields that change how a run is executed, not what it computes: left out of a run's key
# (training/runs.py) and free to change when a run resumes. `compile` is not one of them: compiled kernels
# fuse and reorder floating-point operations, so a compiled run's numbers differ from an eager one's.
NOT_IN_KEY = ("device", "checkpoint_every")


def config_for_key(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """The configuration fields that decide a run's numbers (a TrainConfig, or one as a checkpoint stores it)."""
    values = config.to_dict() if isinstance(config, TrainConfig) else config
    return {k: v for k, v in values.items() if k not in NOT_IN_KEY}


@dataclass(frozen=True)
class AblationSpec:
    """What every run of an ablation shares; only the version and the seed change between runs. The
    training defaults are TrainConfig's."""

    preset: str = TrainConfig.preset
    tokens: int | None = TrainConfig.tokens  # token budget per run; None: TOKENS_PER_PARAM per parameter
    # Three seeds (our choice): with two, the paired t interval has one degree of freedom (t = 12.7).
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = TrainConfig.batch_size
    learning_rate: float = TrainConfig.learning_rate
    block_size: int | None = None  # None: the preset's
    eval_tokens: int = TrainConfig.eval_tokens  # the same fixed evaluation windows for every run
    eval_every: int | None = None  # None: about CURVE_POINTS evaluations per run
    device: str = TrainConfig.device
    compile: bool = TrainConfig.compile

    def model_overrides(self) -> dict[str, Any]:
        return {"block_size": self.block_size} if self.block_size else {}

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig.from_preset(self.preset, vocab_size=vocab_size, **self.model_overrides())

    def steps(self, vocab_size: int) -> int:
        """Optimiser steps of each run (the trainer's own plan: tokens / (batch x block), rounded up)."""
        model_cfg = self.model_config(vocab_size)
        tokens = self.tokens
        if tokens is None:
            # torch (~2 s to import) only when the budget depends on the parameter count.
            import torch

            from training.model import GPT

            with torch.device("meta"):  # parameter count without allocating the weights
                tokens = TOKENS_PER_PARAM * GPT(model_cfg).num_params()
        return max(1, math.ceil(tokens / (self.batch_size * model_cfg.block_size)))

    def config(self, seed: int, vocab_size: int) -> TrainConfig:
        eval_every = self.eval_every or self.default_eval_every(vocab_size)
        return TrainConfig(preset=self.preset, model=self.model_overrides(), tokens=self.tokens,
                           batch_size=self.batch_size, learning_rate=self.learning_rate, seed=seed,
                           eval_every=eval_every, eval_tokens=self.eval_tokens, device=self.device,
                           compile=self.compile)

    def default_eval_every(self, vocab_size: int) -> int:
        """About CURVE_POINTS evaluations per run, but never more evaluated than trained tokens between two
        of them (a short run is evaluated once, at its end)."""
        block = self.model_config(vocab_size).block_size
        return max(math.ceil(self.steps(vocab_size) / CURVE_POINTS),
                   math.ceil(self.eval_tokens / (self.batch_size * block)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneConfig:
    """What a supervised fine-tune adds to a `TrainConfig`: the pre-trained base it starts from, how records
    become text, how long it trains and whether only LoRA adapters train. Plain values (torch-free): a run's
    key is computed from them, and `training.lora.LoRAConfig` is built from the `lora_*` fields."""

    base: str  # a checkpoint.pt written by `curate train` (tokenizer.json beside it) or a GPT-2 folder
    template: str = "alpaca"  # alpaca, chat, or a format string ending with {output} (`training.sft`)
    # Passes over the instruction records. Alpaca (Taori et al. 2023) and LIMA (Zhou et al. 2023) fine-tune
    # for 3 epochs; we do the same.
    epochs: float = 3.0
    lora: bool = False  # train LoRA adapters only (the base stays frozen) instead of every weight
    lora_r: int = 8  # training.lora.LoRAConfig's defaults (peft's rank; alpaca-lora's alpha and dropout)
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("qkv", "proj", "fc")

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")

    def steps(self, examples: int, batch_size: int) -> int:
        """Optimiser steps: `epochs` passes over `examples`, rounded up to whole batches."""
        return max(1, math.ceil(self.epochs * examples / batch_size))

    def for_key(self) -> dict[str, Any]:
        """What decides a fine-tune's numbers besides the data: the base is identified by its weights' hash
        (added by the caller), not its path; LoRA settings only when LoRA is on."""
        out: dict[str, Any] = {"template": self.template, "epochs": self.epochs, "lora": self.lora}
        if self.lora:
            out.update(lora_r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                       lora_targets=list(self.lora_targets))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Peak learning rate of a fine-tune (our choice, measured on the tiny preset: see docs/finetuning.md): lower than
# pre-training's 2e-3 for full fine-tuning, higher with LoRA, whose update is scaled by alpha / r.
FINETUNE_LEARNING_RATE = 5e-4
LORA_LEARNING_RATE = 2e-3


# `curate tune` (flows/tune.py): seeds of the search's first round (the fewest a paired interval is computed from;
# each later round doubles them), the fresh seeds the finalists are confirmed with (the ablation's default count),
# and the token budget of every run (the demo's ablation budget, `curate demo --train-tokens`: small enough for a
# search of a dozen candidates on a CPU).
TUNE_SEEDS_START = 2
TUNE_CONFIRM_SEEDS = len(AblationSpec.seeds)
TUNE_TOKENS = 409_600
