"""training.lora: adapters start as a no-op, train alone, save alone, and merge into plain Linears."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from training.lora import LoRAConfig, LoRALinear, apply_lora, load_lora_state_dict, lora_state_dict, merge_lora
from training.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
TARGETED_PER_LAYER = 4  # attn.qkv, attn.proj, mlp.fc, mlp.proj


def base_model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, CONFIG.vocab_size, (4, CONFIG.block_size + 1), generator=torch.Generator().manual_seed(1))
    return tokens[:, :-1], tokens[:, 1:]


def lora_model_with_nonzero_updates(base: GPT, seed: int = 2) -> GPT:
    """A LoRA model whose B matrices are random, as after training."""
    model = apply_lora(copy.deepcopy(base), LoRAConfig()).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * 0.1)
    return model


def test_fresh_adapters_leave_the_logits_unchanged() -> None:
    base = base_model()
    model = apply_lora(copy.deepcopy(base), LoRAConfig()).eval()
    idx, targets = batch()
    with torch.no_grad():
        assert torch.equal(model(idx, targets)[0], base(idx, targets)[0])


def test_only_adapter_parameters_are_trainable() -> None:
    model = apply_lora(base_model(), LoRAConfig())
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * TARGETED_PER_LAYER * CONFIG.n_layer
    assert all(name.endswith(("lora_A", "lora_B")) for name in trainable)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == TARGETED_PER_LAYER * CONFIG.n_layer


def test_training_lowers_the_loss_and_leaves_the_base_weights_untouched() -> None:
    model = apply_lora(base_model(), LoRAConfig()).train()
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = model.configure_optimizer(weight_decay=0.0, learning_rate=1e-2)
    idx, targets = batch()
    losses = []
    for _ in range(20):
        _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # The frozen LM head (the small random embedding) bounds how far the loss can fall; 0.1 nats is clear.
    assert losses[-1] < losses[0] - 0.1
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


def test_adapter_state_dict_holds_only_adapters_and_round_trips() -> None:
    base = base_model()
    trained = lora_model_with_nonzero_updates(base)
    state = lora_state_dict(trained)
    assert len(state) == 2 * TARGETED_PER_LAYER * CONFIG.n_layer
    assert all(key.endswith(("lora_A", "lora_B")) for key in state)

    restored = apply_lora(copy.deepcopy(base), LoRAConfig()).eval()
    load_lora_state_dict(restored, {key: tensor.clone() for key, tensor in state.items()})
    idx, targets = batch()
    with torch.no_grad():
        assert torch.equal(restored(idx, targets)[0], trained(idx, targets)[0])

    other_rank = apply_lora(copy.deepcopy(base), LoRAConfig(r=4))
    with pytest.raises(ValueError, match="rank") as info:
        load_lora_state_dict(other_rank, state)
    assert "\n" not in str(info.value)


def test_merged_model_computes_the_same_with_plain_linears() -> None:
    base = base_model()
    model = lora_model_with_nonzero_updates(base)
    scaling = LoRAConfig().scaling
    expected_weights = {name: (m.base.weight + scaling * m.lora_B @ m.lora_A).detach().clone()
                        for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    idx, targets = batch()
    with torch.no_grad():
        lora_logits = model(idx, targets)[0]
        merged = merge_lora(model)
        merged_logits = merged(idx, targets)[0]

    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    for name, weight in expected_weights.items():
        layer = merged.get_submodule(name)
        assert type(layer) is nn.Linear
        torch.testing.assert_close(layer.weight, weight)
    torch.testing.assert_close(merged_logits, lora_logits, atol=1e-5, rtol=0)
    GPT(CONFIG).load_state_dict(merged.state_dict())  # exportable: a plain GPT's parameter names


def test_a_target_that_names_no_linear_is_refused() -> None:
    with pytest.raises(ValueError, match="c_attn"):
        apply_lora(base_model(), LoRAConfig(targets=("c_attn",)))
    with pytest.raises(ValueError, match="shares its weight"):
        apply_lora(base_model(), LoRAConfig(targets=("lm_head",)))
