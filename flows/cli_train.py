"""`curate train`, `curate finetune` and `curate generate`: thin calls into training/.

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
from training.config import (
    DEFAULT_VOCAB_SIZE,
    FINETUNE_LEARNING_RATE,
    LORA_LEARNING_RATE,
    FinetuneConfig,
    TrainConfig,
)

if TYPE_CHECKING:
    from curation.store import VersionStore
    from training.runs import RunRecord

PRESET_HELP = "Model preset: tiny (~1 M), small (~10 M), gpt2 (124 M)."
# Options `curate train`, `finetune` and `ablate` share.
EvalEveryOption = Annotated[int, typer.Option(help="Evaluate every N steps.")]
CompileOption = Annotated[bool, typer.Option(help="torch.compile the model.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")]
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
    eval_every: EvalEveryOption = TrainConfig.eval_every,
    compile: CompileOption = TrainConfig.compile,
    device: DeviceOption = TrainConfig.device,
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


def finetune_command(
    version: Annotated[str, typer.Argument(help="Instruction version to fine-tune on (alpaca or chat records).")],
    base: Annotated[Path, typer.Option(help="The pre-trained model: a checkpoint.pt of `curate train` (tokenizer.json "
                                            "beside it) or a GPT-2 folder saved with save_pretrained.")],
    store: StoreOption = DEFAULT_STORE,
    template: Annotated[str, typer.Option(help="alpaca, chat, or a format string such as "
                                               "'Q: {instruction} {input}\nA: {output}'.")] = FinetuneConfig.template,
    epochs: Annotated[float, typer.Option(help="Passes over the records.")] = FinetuneConfig.epochs,
    lora: Annotated[bool, typer.Option(help="Train LoRA adapters only; the base stays frozen.")] = FinetuneConfig.lora,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = FinetuneConfig.lora_r,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (the update is scaled by alpha / r).")
                          ] = FinetuneConfig.lora_alpha,
    seed: Annotated[int, typer.Option(help="Seed of the data order (and of LoRA's initialisation).")
                    ] = TrainConfig.seed,
    eval_set: Annotated[list[str] | None, typer.Option(help="Registered instruction set(s) (default: all).")] = None,
    batch_size: Annotated[int, typer.Option(help="Records per optimiser step.")] = TrainConfig.batch_size,
    learning_rate: Annotated[float | None, typer.Option(
        help=f"Peak learning rate (default: {FINETUNE_LEARNING_RATE:g}, {LORA_LEARNING_RATE:g} with --lora).")] = None,
    eval_every: EvalEveryOption = TrainConfig.eval_every,
    compile: CompileOption = TrainConfig.compile,
    device: DeviceOption = TrainConfig.device,
) -> None:
    """Fine-tune a pre-trained model on an instruction version; loss on held-out instructions' responses."""
    from curation.store import VersionStore

    target = VersionStore(store)
    require_version(target, version)
    ft, cfg = finetune_configs(base, template, epochs, lora, lora_r, lora_alpha, seed, batch_size, learning_rate,
                               eval_every, compile, device)
    finetune_version(target, version, cfg, ft, eval_sets=eval_set)


def finetune_configs(base: Path, template: str, epochs: float, lora: bool, lora_r: int, lora_alpha: float, seed: int,
                     batch_size: int, learning_rate: float | None, eval_every: int, compile: bool,
                     device: str) -> tuple[FinetuneConfig, TrainConfig]:
    """The fine-tune's settings from the command's options, each checked (one line and exit 2 before any work)."""
    from training.sft import SFTError, load_template

    if not base.exists():
        fail(f"--base {base}: no such file or folder; give a checkpoint.pt of `curate train` or a GPT-2 folder")
    try:
        load_template(template)
        ft = FinetuneConfig(base=str(base.resolve()), template=template, epochs=epochs, lora=lora, lora_r=lora_r,
                            lora_alpha=lora_alpha)
        from training.finetune import lora_config

        lora_config(ft)  # checks rank and alpha
    except (SFTError, ValueError) as exc:
        fail(str(exc))
    rate = learning_rate if learning_rate is not None else LORA_LEARNING_RATE if lora else FINETUNE_LEARNING_RATE
    cfg = TrainConfig(seed=seed, batch_size=batch_size, learning_rate=rate, eval_every=eval_every, compile=compile,
                      device=device)
    return ft, cfg


def finetune_version(target: VersionStore, version: str, cfg: TrainConfig, ft: FinetuneConfig, *,
                     eval_sets: list[str] | None = None) -> RunRecord:
    """Fine-tune, or reuse the finished run; prints the response losses."""
    from curation.evalsets import EvalSetError, instruction_sets
    from training.pretrained import BaseModelError
    from training.runs import finetune_version as finetune_or_reuse
    from training.sft import SFTError
    from training.trainer import CheckpointMismatch

    try:
        names = instruction_sets(target, eval_sets)
    except EvalSetError as exc:
        fail(str(exc))
    if not names and _is_main():
        console.print("[yellow]warning:[/] no instruction set is registered (`curate evalset register NAME "
                      "version:HELD_OUT --role instruction`): only the training loss will be reported")
    try:
        run = finetune_or_reuse(target, version, cfg, ft, names, log=console.print)
    except (CheckpointMismatch, BaseModelError, SFTError, EvalSetError, ValueError) as exc:
        fail(str(exc))
    if _is_main():
        for name, values in run.final_eval.items():
            console.print(f"eval {name}: response loss {values['loss']:.4f}, {values['bpb']:.4f} bits/byte "
                          f"({int(values['tokens']):,} response tokens)")
        how = "found finished in the store (same data, base and settings)" if run.cached else (
            f"in {run.seconds:.1f} s ({run.tokens_per_second:,.0f} tokens/s)")
        console.print(f"fine-tuned {run.epochs:.2f} epochs {how}; run: {run.dir}")
        console.print(f"try it: curate generate {run.dir}/checkpoint.pt 'INSTRUCTION' --template {ft.template!r}")
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
    prompt: Annotated[str, typer.Argument(help="Text to continue, or with --template the instruction to answer.")],
    template: Annotated[str | None, typer.Option(help="Answer PROMPT as an instruction in this fine-tuning template "
                                                      "(alpaca, chat or a format string); prints the answer only.")
                        ] = None,
    input_text: Annotated[str, typer.Option("--input", help="With --template: the instruction's input.")] = "",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 100,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k most likely tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling: smallest set with probability >= p.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Continue a prompt with a trained model, or answer an instruction with a fine-tuned one; stops at end-of-text."""
    if not checkpoint.exists():
        fail(f"{checkpoint}: no such checkpoint (`curate train` writes <run>/checkpoint.pt)")
    if template is None:
        console.print(sample(checkpoint, prompt, max_new_tokens, temperature, top_k, top_p, seed), markup=False,
                      highlight=False)
        return
    from training.sft import SFTError, prompt_text

    try:
        framed = prompt_text(template, prompt, input_text)
    except SFTError as exc:
        fail(str(exc))
    answer = sample(checkpoint, framed, max_new_tokens, temperature, top_k, top_p, seed)[len(framed):]
    console.print(answer, markup=False, highlight=False)
