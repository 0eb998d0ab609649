"""`curate train` and `curate generate`: thin calls into training/.

Runs live in the store and are found again by what they computed (`training/runs.py`): training the
same version, tokenizer and configuration twice reuses the finished run. Launch with
`torchrun --nproc_per_node N -m flows.cli train ...` for DDP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

# The rest of training/ (torch) and curation/ are imported inside the commands, so that every start stays fast
# (flows/cli_common.py); training.config is torch-free and is where the options' defaults live.
from flows.cli_common import DEFAULT_STORE, StoreOption, console, fail, require_version
from training.config import DEFAULT_VOCAB_SIZE, TrainConfig

if TYPE_CHECKING:
    from curation.store import VersionStore
    from training.runs import RunRecord

PRESET_HELP = "Model preset: tiny (~1 M), small (~10 M), gpt2 (124 M)."
VOCAB_HELP = "Vocabulary of the trained tokenizer."


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train_command(
    version: Annotated[str, typer.Argument(help="Version to train on.")],
    store: StoreOption = DEFAULT_STORE,
    preset: Annotated[str, typer.Option(help=PRESET_HELP)] = TrainConfig.preset,
    tokens: Annotated[int | None, typer.Option(help="Token budget (default: 20 per parameter).")] = TrainConfig.tokens,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and the data order.")] = TrainConfig.seed,
    eval_set: Annotated[list[str] | None, typer.Option(help="Registered evaluation set(s) (default: all).")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="A tokenizer.json to use instead of training one.")] = None,
    vocab_size: Annotated[int, typer.Option(help=VOCAB_HELP)] = DEFAULT_VOCAB_SIZE,
    batch_size: Annotated[int, typer.Option(help="Sequences per optimiser step.")] = TrainConfig.batch_size,
    block_size: Annotated[int | None, typer.Option(help="Context length (default: the preset's).")] = None,
    grad_accum: Annotated[int, typer.Option(help="Micro-steps per optimiser step.")] = TrainConfig.grad_accum,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate.")] = TrainConfig.learning_rate,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps.")] = TrainConfig.eval_every,
    compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = TrainConfig.compile,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = TrainConfig.device,
) -> None:
    """Train a GPT on a version and evaluate it on the frozen evaluation sets."""
    from curation.store import VersionStore

    target = VersionStore(store)
    require_version(target, version)
    cfg = TrainConfig(preset=preset, tokens=tokens, seed=seed, batch_size=batch_size, grad_accum=grad_accum,
                      learning_rate=learning_rate, eval_every=eval_every, compile=compile, device=device,
                      model={"block_size": block_size} if block_size else {})
    train_version(target, version, cfg, eval_sets=eval_set, tokenizer=tokenizer, vocab_size=vocab_size)


def train_version(target: VersionStore, version: str, cfg: TrainConfig, *, eval_sets: list[str] | None = None,
                  tokenizer: Path | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE) -> RunRecord:
    """Tokenise (cached), train and evaluate, or reuse the finished run; prints the results."""
    from curation.evalsets import EvalSetError, evaluation_sets
    from training.runs import train_version as train_or_reuse
    from training.tokenizer import load_tokenizer, tokenizer_for_version
    from training.trainer import CheckpointMismatch

    tok = load_tokenizer(tokenizer) if tokenizer else tokenizer_for_version(target, version, vocab_size)
    try:
        names = evaluation_sets(target, eval_sets)
    except EvalSetError as exc:
        fail(str(exc))
    if not names and _is_main():
        console.print("[yellow]warning:[/] no evaluation set is registered (`curate evalset register`): "
                      "only the training loss will be reported")
    try:
        run = train_or_reuse(target, version, cfg, tok, names, log=console.print)
    except CheckpointMismatch as exc:  # a run folder whose checkpoint was made by another configuration
        fail(str(exc))
    if _is_main():
        for name, values in run.final_eval.items():
            console.print(f"eval {name}: loss {values['loss']:.4f}, {values['bpb']:.4f} bits/byte")
        how = "found finished in the store (same data, tokenizer and config)" if run.cached else (
            f"in {run.seconds:.1f} s ({run.tokens_per_second:,.0f} tokens/s)")
        console.print(f"trained {run.tokens_trained:,} tokens ({run.epochs:.2f} epochs) {how}; run: {run.dir}")
    return run


def sample(checkpoint: Path, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
           top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> str:
    """The prompt continued by a trained model (its folder holds the tokenizer)."""
    import torch  # ~2 s: only when sampling, not at every start

    from flows.gpt import load_gpt

    model, tok = load_gpt(checkpoint)
    generator = torch.Generator().manual_seed(seed)
    idx = torch.tensor([tok.encode(prompt) or [tok.eot_id]], dtype=torch.long)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eot_id=tok.eot_id, generator=generator)
    return prompt + tok.decode([i for i in out[0, idx.shape[1]:].tolist() if i != tok.eot_id])


def generate_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint.pt (its folder holds the tokenizer).")],
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 100,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k most likely tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling: smallest set with probability >= p.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Continue a prompt with a trained model; stops at end-of-text."""
    if not checkpoint.exists():
        fail(f"{checkpoint}: no such checkpoint (`curate train` writes <run>/checkpoint.pt)")
    text = sample(checkpoint, prompt, max_new_tokens, temperature, top_k, top_p, seed)
    console.print(text, markup=False, highlight=False)
