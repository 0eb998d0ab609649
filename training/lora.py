"""LoRA (Hu et al. 2021): fine-tune a frozen model through small low-rank updates of its Linear layers.

    model = apply_lora(model, LoRAConfig())        # every qkv/proj/fc Linear gains adapters; all else frozen
    ...train (only the adapters have requires_grad)...
    torch.save(lora_state_dict(model), path)       # the adapters alone: a few hundred KB, not the model
    load_lora_state_dict(apply_lora(base, config), torch.load(path, weights_only=True))
    merge_lora(model)                              # plain Linears again, for generation and export

A wrapped Linear computes ``W x + b + (alpha / r) * B A dropout(x)`` with A (r x in) drawn Kaiming-uniform
and B (out x r) zero, so a freshly wrapped model computes exactly what the base model does. The adapters'
settings (`LoRAConfig`) are not part of their state dict: keep them alongside it to rebuild the model.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_NAMES = ("lora_A", "lora_B")


@dataclass(frozen=True)
class LoRAConfig:
    """Which Linear layers get adapters, and their size. ``targets`` are attribute names of
    `training.model.GPT`'s Linears: ``qkv`` (fused attention input), ``proj`` (attention and MLP outputs),
    ``fc`` (MLP input)."""

    r: int = 8  # rank of the update; peft's LoraConfig default
    # alpha 16 (an update scale alpha / r of 2) and dropout 0.05: the values of widely used peft fine-tuning
    # examples such as alpaca-lora (peft's own defaults are alpha 8 and dropout 0).
    alpha: float = 16.0
    dropout: float = 0.05
    # Every projection of attention and MLP: Hu et al. 2021 (section 7.1) find adapting more matrices at a
    # lower rank beats adapting few at a higher one.
    targets: tuple[str, ...] = ("qkv", "proj", "fc")

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("LoRA targets is empty; name at least one Linear (e.g. qkv, proj, fc)")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``base(x) + scaling * B A dropout(x)``."""

    def __init__(self, base: nn.Linear, config: LoRAConfig) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(config.r, base.in_features, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, config.r, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation, as peft does
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The update this adapter adds to the base weight: scaling * B @ A, (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Wrap every ``nn.Linear`` named in ``config.targets`` in a `LoRALinear`, in place, and freeze every
    other parameter. Returns ``model``. A target that names no Linear, a model that already has adapters,
    or a target whose weight is shared (GPT's LM head is the token embedding) is refused."""
    if any(isinstance(module, LoRALinear) for module in model.modules()):
        raise ValueError("the model already has LoRA adapters; merge_lora it first or start from the base model")
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    model.requires_grad_(False)
    wrapped: set[str] = set()
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if name not in config.targets or not isinstance(child, nn.Linear):
                continue
            if uses[id(child.weight)] > 1:
                raise ValueError(f"LoRA target {parent_name}.{name} shares its weight with another layer; "
                                 "merging would change both: leave it out of targets")
            setattr(parent, name, LoRALinear(child, config))
            wrapped.add(name)
    unmatched = [name for name in config.targets if name not in wrapped]
    if unmatched:
        linears = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"LoRA target(s) {', '.join(unmatched)} name no nn.Linear of the model; "
                         f"its Linear names: {', '.join(linears)}")
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (what a fine-tune checkpoint stores), keyed as in ``model.state_dict()``."""
    return {key: tensor for key, tensor in model.state_dict().items() if key.endswith(ADAPTER_NAMES)}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors from ``state`` into a model prepared by `apply_lora` with the same config.

    Every adapter must be present with its shape; anything else in ``state`` is refused."""
    current = lora_state_dict(model)
    missing = sorted(current.keys() - state.keys())
    unexpected = sorted(state.keys() - current.keys())
    if missing or unexpected:
        raise ValueError(f"LoRA state does not fit the model: {len(missing)} adapter tensor(s) missing "
                         f"({', '.join(missing[:3])}), {len(unexpected)} unexpected ({', '.join(unexpected[:3])}); "
                         "apply_lora with the config the adapters were trained with")
    for key, tensor in state.items():
        if tensor.shape != current[key].shape:
            raise ValueError(f"LoRA tensor {key} has shape {tuple(tensor.shape)}, the model's is "
                             f"{tuple(current[key].shape)}; apply_lora with the rank the adapters were trained with")
    with torch.no_grad():
        for key, tensor in state.items():
            current[key].copy_(tensor)  # state_dict tensors share storage with the parameters


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its Linear (W + scaling * B @ A) and put the plain Linear back, in place.

    Returns ``model``, whose parameter names are then the base model's again (loadable by a plain GPT). Its
    parameters stay frozen; call ``requires_grad_(True)`` to train it further."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                with torch.no_grad():
                    child.base.weight += child.delta_weight().to(child.base.weight.dtype)
                setattr(parent, name, child.base)
    return model
