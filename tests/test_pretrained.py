"""training.pretrained: GPT-2 weights saved by transformers load into our GPT and give the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

from training.config import GPTConfig
from training.pretrained import PretrainedError, load_gpt2

VOCAB = 101
BLOCK = 64


def save_tiny_gpt2(folder: Path, vocab_size: int = VOCAB) -> GPT2LMHeadModel:
    """A random 2-layer GPT-2 saved as save_pretrained does. Weights are redrawn with a large spread (and
    LayerNorms made non-trivial) so that a misplaced or untransposed tensor changes the logits visibly."""
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab_size, n_positions=BLOCK,
                                    bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.normal_(0.0, 0.3)
    hf.save_pretrained(folder, safe_serialization=True)
    return hf


def test_logits_match_transformers(tmp_path: Path) -> None:
    hf = save_tiny_gpt2(tmp_path)
    model, tokenizer = load_gpt2(tmp_path)
    model.eval()
    idx = torch.randint(0, VOCAB, (3, BLOCK), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = model(idx, targets=idx)
    assert tokenizer is None  # the folder has no tokenizer.json
    assert model.config.gelu_approximate == "tanh"
    assert expected.abs().max() > 1.0  # logits large enough for a wrong tensor to show
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_tokenizer_json_in_the_folder_is_loaded(tmp_path: Path) -> None:
    hf_tokenizer = Tokenizer(models.BPE())
    hf_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tokenizer.decoder = decoders.ByteLevel()
    hf_tokenizer.train_from_iterator(["hello world, hello model"] * 20, trainers.BpeTrainer(
        vocab_size=270, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tokenizer.save(str(tmp_path / "tokenizer.json"))
    save_tiny_gpt2(tmp_path, vocab_size=300)
    _, tokenizer = load_gpt2(tmp_path)
    assert tokenizer is not None
    assert tokenizer.decode(tokenizer.encode("hello world")) == "hello world"
    assert tokenizer.eot_id == 0


def _one_line_error(folder: Path, *fragments: str) -> None:
    with pytest.raises(PretrainedError) as info:
        load_gpt2(folder)
    message = str(info.value)
    assert "\n" not in message
    for fragment in (str(folder), *fragments):
        assert fragment in message


@pytest.mark.parametrize("damage", ["missing", "misshaped"])
def test_missing_or_misshaped_tensor_is_named(tmp_path: Path, damage: str) -> None:
    save_tiny_gpt2(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    key = "transformer.h.1.attn.c_attn.weight"
    if damage == "missing":
        del weights[key]
    else:
        weights[key] = weights[key].t().contiguous()
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _one_line_error(tmp_path, key, damage if damage == "missing" else "shape")


def test_pickled_weights_are_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf = save_tiny_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    _one_line_error(tmp_path, "pytorch_model.bin", "safetensors is needed")


@pytest.mark.parametrize("setting", [{"activation_function": "relu"}, {"layer_norm_epsilon": 1e-6},
                                     {"n_inner": 64}, {"tie_word_embeddings": False}])
def test_settings_our_gpt_cannot_reproduce_are_refused(tmp_path: Path, setting: dict) -> None:
    save_tiny_gpt2(tmp_path)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **setting}))
    _one_line_error(tmp_path, *setting)


def test_gelu_approximate_is_validated() -> None:
    with pytest.raises(ValueError, match="gelu_approximate"):
        GPTConfig(gelu_approximate="fast")
