"""Supervised fine-tuning data: instruction records as masked token sequences, batches and a response loss.

    data = examples_from_version(store, "instruct-v1", "alpaca", tok, block_size=256)
    data.skipped                         # {"prompt_too_long": 3}: every record is kept or counted
    x, y = data.batch(EpochSampler(len(data), seed).global_batch(step, batch_size))
    response_loss(model, data)           # {"loss", "tokens", "bits_per_byte", "by_task_type": {...}}

A record becomes text pieces marked prompt or response (`RecordSchema.segments`, the same pieces the
`text` column joins, or a user format string). Each piece is encoded on its own, so no token straddles
the prompt/response boundary, and `<|endoftext|>` follows the last response: the model learns to stop.
Targets are next tokens as in pre-training, except that a target inside a prompt is IGNORE_INDEX: the
loss and its gradient come from the response and that final EOT only.

A sequence longer than block_size + 1 tokens keeps its whole first prompt and loses the end of its
response (and the EOT, since the answer did not end there); a conversation ends on the last response
token that fits. A record whose prompt leaves no room for one response token is skipped as
`prompt_too_long`, one with no response tokens as `empty_response`.

A batch holds one example per row, padded at the end to its longest row (inputs with EOT, targets with
IGNORE_INDEX). Attention is causal, so the padding after an example cannot change its logits: rows never
see one another and never see another example.
"""

from __future__ import annotations

import json
import math
import os
import string
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from curation.store import VersionStore
from curation.synth.schemas import ALPACA, CHAT, RecordSchema
from training.model import GPT, IGNORE_INDEX
from training.tokenizer import Tokenizer

if TYPE_CHECKING:
    from training.trainer import Distributed

FIELDS = ("instruction", "input", "output")
# The instruction version's columns (as `curate synthesize` writes them) every template reads.
BASE_COLUMNS = ["id", "schema", "task_type", *FIELDS]


class SFTError(ValueError):
    """Records or a template that cannot make fine-tuning examples; the message names which and what to do."""


# ---------------------------------------------------------------------------------------------
# Templates


@dataclass(frozen=True)
class FormatTemplate:
    """A user format string such as "Q: {instruction}\\n{input}\\nA: {output}": everything before `{output}`
    is the prompt, the output the response. Only parsed (never formatted), so nothing in it runs."""

    name: str  # the format string itself
    prompt: tuple[tuple[str, str | None], ...]  # (literal text, then the placeholder's field or None)

    def segments(self, record: dict[str, str]) -> list[tuple[str, bool]]:
        prompt = "".join(literal + (record[field] if field else "") for literal, field in self.prompt)
        return [(prompt, False), (record["output"], True)]


def load_template(spec: str) -> RecordSchema | FormatTemplate:
    """`alpaca` or `chat` (the schemas' own rendering: what the `text` column holds) or a format string
    with `{instruction}`, `{input}` and `{output}` placeholders, ending with `{output}`."""
    schemas = {ALPACA.name: ALPACA, CHAT.name: CHAT}
    if spec in schemas:
        return schemas[spec]
    try:
        parsed = list(string.Formatter().parse(spec))
    except ValueError as exc:
        raise SFTError(f"template {spec!r}: {exc}; write a literal brace as {{{{ or }}}}") from None
    for _, field, format_spec, conversion in parsed:
        if field is not None and field not in FIELDS:
            raise SFTError(f"template {spec!r}: unknown placeholder {{{field}}}; use {{instruction}}, {{input}} "
                           "and {output}")
        if format_spec or conversion:
            raise SFTError(f"template {spec!r}: placeholder {{{field}}} takes no conversion or format spec; "
                           f"write {{{field}}}")
    fields = [field for _, field, _, _ in parsed]
    if fields.count("output") != 1 or fields[-1] != "output":
        raise SFTError(f"template {spec!r}: needs {{output}} exactly once, at the very end (the response is "
                       "what follows the prompt)")
    prompt = tuple((literal, field) for literal, field, _, _ in parsed[:-1]) + ((parsed[-1][0], None),)
    return FormatTemplate(spec, prompt)


def prompt_text(template: str, instruction: str, input_text: str = "") -> str:
    """What a fine-tuned model reads before it answers: the template's prompt for this instruction, exactly as
    the training examples had it (the response would follow)."""
    chosen = load_template(template)
    fields = {"instruction": instruction, "input": input_text, "output": ""}
    record = CHAT.from_fields(fields) if chosen is CHAT else fields
    return chosen.segments(record)[0][0]


# ---------------------------------------------------------------------------------------------
# Examples


@dataclass(frozen=True)
class Example:
    """One record's tokens: `targets[t]` is the token after `input_ids[t]`, or IGNORE_INDEX in a prompt."""

    input_ids: list[int]
    targets: list[int]
    task_type: str
    response_bytes: int  # UTF-8 bytes of the trained targets (EOT has none): bits per byte's denominator
    truncated: bool  # the response did not fit in block_size + 1 tokens and was cut

    @property
    def response_tokens(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.targets)


def encode_example(segments: Sequence[tuple[str, bool]], tokenizer: Tokenizer, block_size: int,
                   skipped: Counter[str], task_type: str = "") -> Example | None:
    """The example of `segments` (text, is response) in at most block_size positions, or None after adding
    the reason to `skipped`: the caller cannot drop a record without counting it."""
    tokens: list[int] = []
    trained: list[bool] = []
    for text, is_response in segments:
        ids = tokenizer.encode(text)
        tokens += ids
        trained += [is_response] * len(ids)
    if not any(trained):
        skipped["empty_response"] += 1
        return None
    tokens.append(tokenizer.eot_id)
    trained.append(True)
    # Trained targets inside the window (position 0 is never a target: nothing precedes it).
    fitting = [i for i in range(1, min(len(tokens), block_size + 1)) if trained[i]]
    if not fitting:
        skipped["prompt_too_long"] += 1
        return None
    keep = fitting[-1] + 1
    truncated = keep < len(tokens)
    tokens, trained = tokens[:keep], trained[:keep]
    targets = [token if is_trained else IGNORE_INDEX for token, is_trained in zip(tokens[1:], trained[1:])]
    response_bytes = int(tokenizer.token_bytes()[[t for t in targets if t != IGNORE_INDEX]].sum())
    return Example(tokens[:-1], targets, task_type, response_bytes, truncated)


def collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 tensors, one example per row, padded at the end to the longest row: inputs with
    `pad_id`, targets with IGNORE_INDEX (so padding adds nothing to any loss)."""
    width = max(len(e.input_ids) for e in examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        x[row, :len(example.input_ids)] = torch.tensor(example.input_ids)
        y[row, :len(example.targets)] = torch.tensor(example.targets)
    return x, y


@dataclass(frozen=True)
class SFTData:
    """Examples, the count of skipped records by reason, and the id that pads a batch's inputs. Batches are
    taken by index, as the trainer takes token windows: its seeded `EpochSampler` picks the examples of each
    step, so a step's batch is a pure function of (seed, step) and a resumed run continues exactly."""

    examples: list[Example]
    skipped: dict[str, int]
    pad_id: int  # the tokenizer's EOT id

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def n_tokens(self) -> int:
        """Input tokens over every example (an epoch's tokens; padding aside)."""
        return sum(len(e.input_ids) for e in self.examples)

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.examples:
            raise SFTError(f"no examples to batch: every record was skipped ({self.skipped})")
        return collate([self.examples[int(i)] for i in indices], self.pad_id)


# ---------------------------------------------------------------------------------------------
# Loss on the responses


@torch.no_grad()
def response_loss(model: GPT, data: SFTData, batch_size: int = 16, ddp: Distributed | None = None) -> dict[str, Any]:
    """Mean loss (nats) over response tokens only, their count and bits per response byte, overall and by
    task type: how well the model writes the answers, not how well it predicts the prompts. Under DDP (`ddp`)
    each process measures its own whole batches and the sums are added over the processes: every process gets
    the whole set's numbers for 1/world_size of the work."""
    if not data.examples:
        raise SFTError(f"no examples to evaluate: every record was skipped ({data.skipped})")
    device = next(model.parameters()).device
    nats: dict[str, float] = defaultdict(float)
    tokens: Counter[str] = Counter()
    response_bytes: Counter[str] = Counter()
    # Similar lengths share a batch (less padding); the order cannot change any example's loss.
    order = sorted(data.examples, key=lambda e: len(e.input_ids))
    mine = ddp.shard(len(order), batch_size) if ddp is not None else range(len(order))
    was_training = model.training
    model.eval()
    try:
        for start in range(mine.start, mine.stop, batch_size):
            chunk = order[start:min(start + batch_size, mine.stop)]
            x, y = collate(chunk, data.pad_id)
            row_nats = model.token_losses(x.to(device), y.to(device)).double().sum(dim=1).tolist()
            for example, value in zip(chunk, row_nats):
                nats[example.task_type] += value
                tokens[example.task_type] += example.response_tokens
                response_bytes[example.task_type] += example.response_bytes
    finally:
        model.train(was_training)
    tasks = sorted({e.task_type for e in data.examples})  # every process's keys, in one order
    if ddp is not None and ddp.world_size > 1:
        sums = ddp.sum_over_processes([v for t in tasks for v in (nats[t], tokens[t], response_bytes[t])],
                                      str(device))
        for i, task in enumerate(tasks):
            nats[task], tokens[task], response_bytes[task] = sums[3 * i], int(sums[3 * i + 1]), int(sums[3 * i + 2])

    def summary(total_nats: float, total_tokens: int, total_bytes: int) -> dict[str, float]:
        # max(bytes, 1): the trainer's convention for a text of no bytes.
        return {"loss": total_nats / total_tokens, "tokens": total_tokens,
                "bits_per_byte": total_nats / math.log(2) / max(total_bytes, 1)}

    overall = summary(sum(nats[t] for t in tasks), sum(tokens[t] for t in tasks),
                      sum(response_bytes[t] for t in tasks))
    by_task = {task: summary(nats[task], tokens[task], response_bytes[task]) for task in tasks}
    return {**overall, "by_task_type": by_task}


# ---------------------------------------------------------------------------------------------
# From the store


def _record(row: dict[str, Any], template: RecordSchema | FormatTemplate) -> dict[str, Any]:
    """The record a template reads: a chat's own messages for `chat` (an Alpaca record as one exchange);
    the instruction/input/output columns otherwise (a chat's user turns and assistant turns, each joined)."""
    if row["schema"] not in (ALPACA.name, CHAT.name):
        raise SFTError(f"record {row['id']}: schema {row['schema']!r} has no prompt/response split; fine-tune "
                       "on a version of alpaca or chat records")
    fields = {"instruction": row["instruction"], "input": row["input"] or "", "output": row["output"]}
    if template is not CHAT:
        return fields
    return json.loads(row["record"]) if row["schema"] == CHAT.name else CHAT.from_fields(fields)


def columns_for(template: str) -> list[str]:
    """The instruction columns a template reads (`record` too for chat)."""
    return BASE_COLUMNS + (["record"] if load_template(template) is CHAT else [])


def examples_from_table(table: pa.Table, template: str, tokenizer: Tokenizer, block_size: int, what: str) -> SFTData:
    """Every row of an instruction table (a version's or an instruction evaluation set's) as an example, or
    counted in `skipped` by reason; `what` names the table in errors."""
    chosen = load_template(template)
    missing = [c for c in columns_for(template) if c not in table.column_names]
    if missing:
        raise SFTError(f"{what} has no {', '.join(missing)} column(s); fine-tuning reads instruction records (made by "
                       "`curate synthesize`, or ingested with `records: alpaca` or `records: chat`)")
    skipped: Counter[str] = Counter()
    examples = []
    for row in table.select(columns_for(template)).to_pylist():
        example = encode_example(chosen.segments(_record(row, chosen)), tokenizer, block_size, skipped,
                                 task_type=row["task_type"] or "")
        if example is not None:
            examples.append(example)
    return SFTData(examples, dict(skipped), tokenizer.eot_id)


def examples_from_version(store: VersionStore | str | os.PathLike[str], version: str, template: str,
                          tokenizer: Tokenizer, block_size: int) -> SFTData:
    """Every record of an instruction version as an example, or counted in `skipped` by reason."""
    store = store if isinstance(store, VersionStore) else VersionStore(store)
    names = store.schema(version).names
    columns = [c for c in columns_for(template) if c in names]
    return examples_from_table(store.read_table(version, columns=columns), template, tokenizer, block_size,
                               f"version {version!r}")
