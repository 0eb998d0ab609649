"""The GPT model: shapes, loss, causality, weight tying, optimizer groups, parameter counts, sampling."""

from __future__ import annotations

import math

import pytest
import torch

from training.model import GPT, IGNORE_INDEX, PRESETS, GPTConfig

VOCAB, BLOCK = 64, 16


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(**{"vocab_size": VOCAB, "block_size": BLOCK, "n_layer": 2, "n_head": 4, "n_embd": 32,
                          **overrides})
    return GPT(config)


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rope", [False, True])
def test_shapes(rope):
    model = tiny_model(rope=rope)
    idx = tokens(3, BLOCK)
    logits, loss = model(idx)
    assert logits.shape == (3, 1, VOCAB) and loss is None
    logits, loss = model(idx, tokens(3, BLOCK, seed=2))
    assert logits.shape == (3, BLOCK, VOCAB) and loss.shape == ()
    assert model.token_losses(idx, tokens(3, BLOCK, seed=2)).shape == (3, BLOCK)
    assert model(idx[:, :5])[0].shape == (3, 1, VOCAB)
    with pytest.raises(ValueError, match="block_size"):
        model(tokens(1, BLOCK + 1))


@pytest.mark.parametrize("rope", [False, True])
def test_loss_at_init_is_uniform(rope):
    model = tiny_model(rope=rope)
    _, loss = model(tokens(8, BLOCK), tokens(8, BLOCK, seed=2))
    assert abs(loss.item() - math.log(VOCAB)) < 0.05


def test_token_losses_mean_equals_forward_loss():
    model = tiny_model()
    idx, targets = tokens(4, BLOCK), tokens(4, BLOCK, seed=2)
    targets[0, :5] = IGNORE_INDEX  # ignored positions
    targets[2, -3:] = IGNORE_INDEX
    per_token = model.token_losses(idx, targets)
    assert torch.all(per_token[targets == IGNORE_INDEX] == 0)
    _, loss = model(idx, targets)
    assert torch.allclose(per_token.sum() / (targets != IGNORE_INDEX).sum(), loss, atol=1e-6)
    _, summed = model(idx, targets, reduction="sum")
    assert torch.allclose(per_token.sum(), summed, atol=1e-4)


@pytest.mark.parametrize("rope", [False, True])
def test_overfits_one_batch(rope):
    model = tiny_model(rope=rope)
    idx = tokens(4, BLOCK + 1)
    idx[:, 0] = torch.arange(4)  # distinct first tokens, so every prefix (and its next token) is unique
    x, y = idx[:, :-1], idx[:, 1:]
    optimizer = model.configure_optimizer(weight_decay=0.0, learning_rate=1e-2)
    for _ in range(150):
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


@pytest.mark.parametrize("rope", [False, True])
def test_future_tokens_do_not_change_earlier_logits(rope):
    model = tiny_model(rope=rope).eval()
    idx = tokens(2, BLOCK)
    changed = idx.clone()
    t = 9
    changed[:, t] = (changed[:, t] + 1) % VOCAB
    dummy = torch.zeros_like(idx)
    before, _ = model(idx, dummy)
    after, _ = model(changed, dummy)
    assert torch.allclose(before[:, :t], after[:, :t], atol=1e-6)
    assert not torch.allclose(before[:, t:], after[:, t:])


def test_rope_has_no_position_table_and_sees_order():
    learned, rotary = tiny_model(), tiny_model(rope=True)
    assert learned.pos_emb is not None and rotary.pos_emb is None
    assert learned.num_params() - rotary.num_params() == BLOCK * 32
    # Without any position signal, attention would be permutation-invariant over the context; rope is not.
    rotary.eval()
    idx = torch.tensor([[5, 9, 11, 3]])
    swapped = torch.tensor([[9, 5, 11, 3]])
    assert not torch.allclose(rotary(idx)[0], rotary(swapped)[0])


def test_tied_weights_are_one_tensor():
    model = tiny_model()
    assert model.lm_head.weight is model.tok_emb.weight
    names = [name for name, _ in model.named_parameters()]
    assert "tok_emb.weight" in names and "lm_head.weight" not in names  # listed (and optimised) once


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=16, n_layer=8, n_head=4, n_embd=128))
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    expected = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[3].attn.proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[3].mlp.proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.all(model.blocks[3].mlp.fc.bias == 0)


def test_no_bias_config_has_no_biases():
    model = tiny_model(bias=False)
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]
    assert tiny_model().num_params() > model.num_params()


def test_weight_decay_groups():
    model = tiny_model()
    optimizer = model.configure_optimizer(weight_decay=0.1, learning_rate=1e-3)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert any(p is model.tok_emb.weight for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert optimizer.defaults["betas"] == (0.9, 0.95)


@pytest.mark.parametrize("name, expected", [("tiny", 987_360), ("small", 10_101_760), ("gpt2", 124_475_904)])
def test_preset_parameter_counts(name, expected):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset(name))
    assert model.num_params() == expected
    config = model.config
    embeddings = config.vocab_size * config.n_embd + config.block_size * config.n_embd
    assert model.num_params(non_embedding=True) == expected - embeddings


def test_presets_and_overrides():
    assert GPTConfig() == GPTConfig.from_preset("tiny")
    config = GPTConfig.from_preset("gpt2", rope=True, dropout=0.1)
    assert (config.n_layer, config.n_head, config.n_embd, config.vocab_size, config.block_size) == (
        12, 12, 768, 50304, 1024)
    assert config.rope and config.dropout == 0.1
    assert set(PRESETS) == {"tiny", "small", "gpt2"}
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.from_preset("huge")
    with pytest.raises(ValueError, match="unknown config field"):
        GPTConfig.from_preset("tiny", n_layers=3)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_flops_per_token_and_mfu():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2"))
    n = 124_475_904 - 1024 * 768  # everything but the position table
    assert model.flops_per_token() == 6 * n + 12 * 12 * 1024 * 768
    assert model.flops_per_token(seq_len=512) == 6 * n + 12 * 12 * 512 * 768
    assert model.estimate_mfu(1000.0, peak_flops=model.flops_per_token() * 4000.0) == pytest.approx(0.25)


# ---- generation ------------------------------------------------------------------------------------------


def greedy_reference(model: GPT, idx: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


def test_greedy_decoding_agrees_across_settings():
    model = tiny_model().eval()
    prompt = tokens(3, 4)
    steps = 20  # past block_size: the context is cropped
    reference = greedy_reference(model, prompt, steps)
    assert reference.shape == (3, 4 + steps)
    assert torch.equal(model.generate(prompt, steps, temperature=0.0), reference)
    assert torch.equal(model.generate(prompt, steps, top_k=1), reference)
    assert torch.equal(model.generate(prompt, steps, top_p=1e-6), reference)


def test_same_generator_seed_same_samples():
    model = tiny_model().eval()
    prompt = tokens(2, 3)

    def sample(seed: int, **kwargs) -> torch.Tensor:
        return model.generate(prompt, 12, generator=torch.Generator().manual_seed(seed), **kwargs)

    assert torch.equal(sample(7), sample(7))
    assert torch.equal(sample(7, top_k=10, top_p=0.9, temperature=0.8),
                       sample(7, top_k=10, top_p=0.9, temperature=0.8))
    assert not torch.equal(sample(7), sample(8))  # untrained model: near-uniform over 64 tokens


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda **kw: torch.isfinite(GPT._filter_logits(logits, **kw))[0].tolist()  # noqa: E731
    assert keep(top_k=2, top_p=None) == [True, True, False, False]
    assert keep(top_k=None, top_p=0.5) == [True, False, False, False]
    assert keep(top_k=None, top_p=0.6) == [True, True, False, False]
    assert keep(top_k=None, top_p=0.75) == [True, True, False, False]
    assert keep(top_k=None, top_p=0.85) == [True, True, True, False]
    assert keep(top_k=3, top_p=0.99) == [True, True, True, False]
    assert keep(top_k=None, top_p=1.0) == [True, True, True, True]


def test_eot_stops_early_and_pads_finished_rows():
    model = tiny_model().eval()
    prompt = tokens(2, 3)
    greedy = greedy_reference(model, prompt, 1)
    eot = int(greedy[0, -1])  # row 0's first greedy token
    out = model.generate(prompt, 10, temperature=0.0, eot_id=eot)
    assert out[0, 3] == eot and torch.all(out[0, 3:] == eot)  # row 0 is padded once finished
    if out.shape[1] < 13:  # stopped early: every row has produced eot
        assert all(eot in row[3:].tolist() for row in out)
    # With both rows' first token as eot the loop stops after one step.
    both = model.generate(greedy[:1, :3].repeat(2, 1), 10, temperature=0.0, eot_id=eot)
    assert both.shape == (2, 4)


def test_generate_restores_training_mode():
    model = tiny_model(dropout=0.1).train()
    model.generate(tokens(1, 2), 3, temperature=0.0)
    assert model.training
