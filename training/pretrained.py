"""GPT-2 weights from a local folder, in `training.model.GPT`: the starting point of a fine-tune.

    model, tokenizer = load_gpt2("models/gpt2")   # a folder written by transformers' save_pretrained
    base = load_base("models/gpt2")               # that, or a checkpoint of ours, identified by its sha256

The folder holds what Hugging Face's ``GPT2LMHeadModel.save_pretrained`` writes: ``config.json`` and
``model.safetensors`` (and, optionally, the ``tokenizer.json`` its tokenizer saves). Nothing is downloaded.
Weights are read with ``safetensors`` only: a pickled ``pytorch_model.bin`` can run code when unpickled, so
it is refused.

GPT-2 and our GPT have the same network; only names and one layout differ. Hugging Face's ``Conv1D`` keeps
its weight as (in, out), the transpose of ``nn.Linear``'s (out, in), so those four matrices per block are
transposed. GPT-2's MLP uses the tanh approximation of GELU (``gelu_new``), set through
``GPTConfig.gelu_approximate``; its LayerNorm epsilon (1e-5) is PyTorch's default, which ours use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from curation.store import file_sha256
from training.config import GPTConfig
from training.model import GPT
from training.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"  # what `curate train` writes into a run folder
PICKLED_WEIGHTS = ("pytorch_model.bin", "model.bin", "model.pt", "model.ckpt")

# config.json's activation_function -> GPTConfig.gelu_approximate ("gelu_new" is GPT-2's).
GELU_APPROXIMATE = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
# config.json settings our GPT has one fixed answer to: the value it must hold (Hugging Face's default, used
# when the key is absent). Anything else would load without error and compute something else.
FIXED_SETTINGS: dict[str, Any] = {
    "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default eps, which every LayerNorm of ours uses
    "scale_attn_weights": True,  # scores divided by sqrt(head_size), as scaled_dot_product_attention does
    "scale_attn_by_inverse_layer_idx": False,
    "tie_word_embeddings": True,  # our LM head is the token embedding
}
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions")


class PretrainedError(Exception):
    """A folder that does not hold GPT-2 weights we can load; the message names the folder, file or key."""


def load_gpt2(folder: str | os.PathLike[str]) -> tuple[GPT, Tokenizer | None]:
    """Our GPT with the GPT-2 weights saved in ``folder``, and the folder's tokenizer.

    The tokenizer is the folder's ``tokenizer.json`` loaded as a `training.tokenizer.Tokenizer`, or None
    when the folder has no tokenizer.json (then bring the one the weights were trained with). The model
    has no dropout and is in training mode, as a freshly built GPT is.
    """
    folder = Path(folder)
    config = model_config(folder)
    model = GPT(config)
    _copy_weights(folder, model)
    tokenizer = None
    if (folder / TOKENIZER_FILE).exists():
        tokenizer = load_tokenizer(folder / TOKENIZER_FILE)
        if tokenizer.vocab_size > config.vocab_size:
            raise PretrainedError(f"{folder}: {TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the model only "
                                  f"{config.vocab_size} embeddings; put the tokenizer saved with these weights there")
    return model, tokenizer


def model_config(folder: Path) -> GPTConfig:
    """The GPTConfig of the GPT-2 described by ``folder/config.json``; settings we cannot reproduce are refused."""
    path = folder / CONFIG_FILE
    try:
        hf_config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PretrainedError(f"{path}: cannot read the model's config.json ({exc}); save the model with "
                              "save_pretrained") from exc
    missing = [key for key in SHAPE_KEYS if not isinstance(hf_config.get(key), int)]
    if missing:
        raise PretrainedError(f"{path}: no integer {', '.join(missing)}; not a GPT-2 config.json")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in GELU_APPROXIMATE:
        raise PretrainedError(f"{path}: activation_function {activation!r} is not supported; "
                              f"supported: {', '.join(GELU_APPROXIMATE)}")
    n_embd = hf_config["n_embd"]
    if hf_config.get("n_inner") not in (None, 4 * n_embd):
        raise PretrainedError(f"{path}: n_inner {hf_config['n_inner']} is not supported; our MLP is 4 x n_embd "
                              f"({4 * n_embd}) wide")
    for key, value in FIXED_SETTINGS.items():
        if hf_config.get(key, value) != value:
            raise PretrainedError(f"{path}: {key} {hf_config[key]!r} is not supported; our GPT needs {value!r}")
    try:
        return GPTConfig(vocab_size=hf_config["vocab_size"], block_size=hf_config["n_positions"],
                         n_layer=hf_config["n_layer"], n_head=hf_config["n_head"], n_embd=n_embd,
                         gelu_approximate=GELU_APPROXIMATE[activation])
    except ValueError as exc:
        raise PretrainedError(f"{path}: {exc}") from exc


def hf_names(n_layer: int) -> dict[str, tuple[str, bool]]:
    """Our parameter name -> (GPT-2's tensor name without the ``transformer.`` prefix, stored transposed)."""
    names = {"tok_emb.weight": ("wte.weight", False), "pos_emb.weight": ("wpe.weight", False),
             "ln_final.weight": ("ln_f.weight", False), "ln_final.bias": ("ln_f.bias", False)}
    layers = {"ln_attn": ("ln_1", False), "attn.qkv": ("attn.c_attn", True), "attn.proj": ("attn.c_proj", True),
              "ln_mlp": ("ln_2", False), "mlp.fc": ("mlp.c_fc", True), "mlp.proj": ("mlp.c_proj", True)}
    for i in range(n_layer):
        for ours, (theirs, conv1d) in layers.items():
            names[f"blocks.{i}.{ours}.weight"] = (f"h.{i}.{theirs}.weight", conv1d)
            names[f"blocks.{i}.{ours}.bias"] = (f"h.{i}.{theirs}.bias", False)  # biases are 1-D either way
    return names


def _copy_weights(folder: Path, model: GPT) -> None:
    """Fill every parameter of ``model`` from ``folder/model.safetensors``, checking each name and shape.

    Tensors we have no parameter for (the attention-mask buffers ``attn.bias``/``attn.masked_bias`` older
    versions saved, a copy of the tied ``lm_head.weight``) are not read.
    """
    path = folder / WEIGHTS_FILE
    if not path.exists():
        pickled = [name for name in PICKLED_WEIGHTS if (folder / name).exists()]
        if pickled:
            raise PretrainedError(f"{folder}: only pickled weights ({', '.join(pickled)}); safetensors is needed "
                                  f"(pickles can run code): re-save with save_pretrained(..., safe_serialization=True)")
        raise PretrainedError(f"{folder}: no {WEIGHTS_FILE}; save the model there with save_pretrained")
    names = hf_names(model.config.n_layer)
    try:
        with safe_open(path, framework="pt") as weights, torch.no_grad():
            stored = set(weights.keys())
            prefix = "transformer." if any(key.startswith("transformer.") for key in stored) else ""
            for ours, param in model.named_parameters():  # the tied LM head is tok_emb.weight, yielded once
                theirs, conv1d = names[ours]
                key = prefix + theirs
                if key not in stored:
                    raise PretrainedError(f"{path}: tensor {key} is missing; the file does not hold this config's "
                                          "GPT-2")
                expected = tuple(param.shape[::-1]) if conv1d else tuple(param.shape)
                shape = tuple(weights.get_slice(key).get_shape())
                if shape != expected:
                    raise PretrainedError(f"{path}: tensor {key} has shape {shape}, config.json implies {expected}; "
                                          "the weights and config.json do not belong together")
                tensor = weights.get_tensor(key)
                param.copy_(tensor.t() if conv1d else tensor)
    except SafetensorError as exc:
        raise PretrainedError(f"{path}: not a readable safetensors file ({exc}); re-save it with "
                              "save_pretrained") from exc


# ---- a base model: ours or GPT-2's ---------------------------------------------------------------


class BaseModelError(ValueError):
    """A base that cannot start a fine-tune; the message names the path and what to give instead."""


@dataclass
class Base:
    """A pre-trained model, its tokenizer, and what identifies it (a fine-tune's key holds the sha256, not the
    path)."""

    model: GPT
    tokenizer: Tokenizer
    path: str  # absolute
    sha256: str  # of the weights file: checkpoint.pt, or the GPT-2 folder's model.safetensors
    kind: str  # "checkpoint" or "gpt2"

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256}


def load_base(path: str | os.PathLike[str]) -> Base:
    """A checkpoint.pt of ours (or the run folder holding it; tokenizer.json beside it; a LoRA fine-tune's is
    merged), read as the trainer reads it (`weights_only=True`), or a GPT-2 folder written by `save_pretrained`
    (model.safetensors, config.json and its tokenizer.json). The model is in training mode."""
    from training.tokenizer import TokenizerError
    from training.trainer import load_model  # the trainer imports this module

    path = Path(path).resolve()
    if path.is_dir() and (path / CHECKPOINT_FILE).is_file():
        path = path / CHECKPOINT_FILE
    try:
        if path.is_dir():
            model, tokenizer = load_gpt2(path)
            if tokenizer is None:
                raise BaseModelError(f"{path}: no {TOKENIZER_FILE}; save the tokenizer the weights were trained "
                                     "with into the same folder (tokenizer.save_pretrained)")
            return Base(model, tokenizer, str(path), file_sha256(path / WEIGHTS_FILE), "gpt2")
        if not path.is_file():
            raise BaseModelError(f"{path}: no such base model; give a checkpoint.pt written by `curate train` (or its "
                                 "run folder) or a folder holding a GPT-2 model saved with save_pretrained")
        if not (path.parent / TOKENIZER_FILE).is_file():
            raise BaseModelError(f"{path.parent}: the checkpoint's folder has no {TOKENIZER_FILE}; a `curate train` "
                                 "run folder holds both")
        model, _ = load_model(path)
        return Base(model.train(), load_tokenizer(path.parent / TOKENIZER_FILE), str(path), file_sha256(path),
                    "checkpoint")
    except (PretrainedError, TokenizerError) as exc:
        raise BaseModelError(str(exc)) from exc
    except (RuntimeError, OSError, KeyError, TypeError, EOFError) as exc:  # torch.load's and load_state_dict's
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise BaseModelError(f"{path}: not a checkpoint written by `curate train` ({type(exc).__name__}: {first})"
                             ) from exc
