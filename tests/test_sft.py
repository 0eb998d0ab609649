"""Fine-tuning data: what a model is trained on, token by token, and the loss on the responses."""

from __future__ import annotations

import math
from collections import Counter

import pyarrow as pa
import pytest
import torch
from conftest import TWO_TURNS, publish_instructions

from curation.store import VersionStore
from curation.synth.schemas import ALPACA, CHAT, SchemaError, load_schema
from training.data import EpochSampler
from training.model import GPT, IGNORE_INDEX, GPTConfig
from training.sft import (
    Example,
    SFTData,
    SFTError,
    collate,
    encode_example,
    examples_from_version,
    load_template,
    response_loss,
)
from training.tokenizer import EOT

M = IGNORE_INDEX
WITH_INPUT = {"instruction": "Name the river.", "input": "The river ran past the mill.", "output": "The river."}
NO_INPUT = {"instruction": "Say where people met.", "input": "", "output": "At the old mill, each morning."}


@pytest.fixture(scope="module")
def tok(instruction_tok):
    return instruction_tok


def tiny_gpt(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=16)).eval()


def encode(segments, tok, block_size=256, task_type=""):
    skipped: Counter[str] = Counter()
    example = encode_example(segments, tok, block_size, skipped, task_type=task_type)
    assert not skipped
    return example


def trained_text(example: Example, tok) -> str:
    return tok.decode([t for t in example.targets if t != M])


# ---- segments: one rendering -----------------------------------------------------------------


@pytest.mark.parametrize("schema, record", [(ALPACA, WITH_INPUT), (ALPACA, NO_INPUT), (CHAT, TWO_TURNS)])
def test_segments_join_to_the_rendered_text(schema, record):
    assert "".join(text for text, _ in schema.segments(record)) == schema.render(record)


def test_segments_mark_the_responses():
    assert ALPACA.render(WITH_INPUT) == ("### Instruction:\nName the river.\n\n### Input:\nThe river ran past the mill."
                                         "\n\n### Response:\nThe river.")
    assert ALPACA.segments(NO_INPUT) == [("### Instruction:\nSay where people met.\n\n### Response:\n", False),
                                         ("At the old mill, each morning.", True)]
    assert CHAT.segments(TWO_TURNS) == [
        ("<|system|>\nBe brief.\n\n<|user|>\nWhere is the mill?\n\n<|assistant|>\n", False), ("By the river.", True),
        ("\n\n<|user|>\nAnd the fields?\n\n<|assistant|>\n", False), ("Under a grey sky.", True)]


def test_custom_schema_records_cannot_be_split():
    custom = load_schema({"json_schema": {"type": "object"}})
    with pytest.raises(SchemaError, match="no prompt/response split") as err:
        custom.segments({"question": "q", "answer": "a"})
    assert "\n" not in str(err.value)


# ---- masking, position by position ------------------------------------------------------------


@pytest.mark.parametrize("record", [WITH_INPUT, NO_INPUT], ids=["with input", "without input"])
def test_alpaca_trains_on_the_response_and_eot_only(tok, record):
    example = encode(ALPACA.segments(record), tok)
    [(prompt, _), (response, _)] = ALPACA.segments(record)
    p, r = tok.encode(prompt), tok.encode(response)
    assert example.input_ids == p + r
    assert example.targets == [M] * (len(p) - 1) + r + [tok.eot_id]
    assert tok.decode(example.input_ids) == ALPACA.render(record)
    assert trained_text(example, tok) == record["output"] + EOT
    assert example.response_bytes == len(record["output"].encode())
    assert not example.truncated


def test_chat_trains_on_every_assistant_turn(tok):
    example = encode(CHAT.segments(TWO_TURNS), tok)
    p1, r1, p2, r2 = (tok.encode(text) for text, _ in CHAT.segments(TWO_TURNS))
    assert example.input_ids == p1 + r1 + p2 + r2
    assert example.targets == [M] * (len(p1) - 1) + r1 + [M] * len(p2) + r2 + [tok.eot_id]
    assert trained_text(example, tok) == "By the river.Under a grey sky." + EOT


def test_a_format_string_template(tok):
    template = load_template("Q: {instruction}\nContext: {input}\nA: {output}")
    segments = template.segments(WITH_INPUT)
    assert segments == [("Q: Name the river.\nContext: The river ran past the mill.\nA: ", False), ("The river.", True)]
    example = encode(segments, tok)
    p, r = tok.encode(segments[0][0]), tok.encode("The river.")
    assert example.targets == [M] * (len(p) - 1) + r + [tok.eot_id]
    assert load_template("{{literal}} {instruction} {output}").segments(NO_INPUT)[0] == (
        "{literal} Say where people met. ", False)


def test_a_long_response_is_cut_never_the_prompt(tok):
    segments = ALPACA.segments(WITH_INPUT)
    p, r = tok.encode(segments[0][0]), tok.encode(segments[1][0])
    block_size = len(p) + 1  # room for two response tokens: one input position past the prompt
    example = encode(segments, tok, block_size)
    assert example.input_ids == p + r[:1]
    assert example.targets == [M] * (len(p) - 1) + r[:2]  # no EOT: the answer did not end here
    assert example.truncated


def test_a_conversation_that_does_not_fit_ends_on_its_last_response_token(tok):
    p1, r1, p2, _ = (tok.encode(text) for text, _ in CHAT.segments(TWO_TURNS))
    example = encode(CHAT.segments(TWO_TURNS), tok, block_size=len(p1 + r1) + 2)  # cut inside the second prompt
    assert example.input_ids == p1 + r1[:-1]
    assert example.targets == [M] * (len(p1) - 1) + r1
    assert example.truncated


def test_skipped_records_are_counted_by_reason(tok):
    segments = ALPACA.segments(NO_INPUT)
    prompt_tokens = len(tok.encode(segments[0][0]))
    skipped: Counter[str] = Counter()
    assert encode_example(segments, tok, prompt_tokens - 1, skipped) is None
    assert encode_example([("Q: a\nA: ", False), ("", True)], tok, 64, skipped) is None
    assert skipped == {"prompt_too_long": 1, "empty_response": 1}
    # A prompt of exactly block_size tokens still leaves room for one response token.
    example = encode_example(segments, tok, prompt_tokens, skipped)
    assert example.response_tokens == 1 and example.truncated and sum(skipped.values()) == 2


@pytest.mark.parametrize("spec, message", [
    ("{instruction}", "needs {output} exactly once, at the very end"),
    ("{output} {output}", "needs {output} exactly once"),
    ("{output}\nthanks", "at the very end"),
    ("Q: {question}\nA: {output}", "unknown placeholder {question}"),
    ("{instruction.__class__} {output}", "unknown placeholder {instruction.__class__}"),
    ("{} {output}", "unknown placeholder {}"),
    ("{instruction!r} {output}", "no conversion or format spec"),
    ("{instruction:>10} {output}", "no conversion or format spec"),
    ("{instruction\nA: {output}", "literal brace"),
    ("}\n{output}", "literal brace"),
])
def test_bad_format_strings_are_one_line_errors(spec, message):
    with pytest.raises(SFTError) as err:
        load_template(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


# ---- batches ----------------------------------------------------------------------------------


def test_padding_does_not_change_an_examples_logits_or_loss(tok):
    short = encode(ALPACA.segments(NO_INPUT), tok)
    long = encode(CHAT.segments(TWO_TURNS), tok)
    assert len(long.input_ids) > len(short.input_ids)
    model = tiny_gpt(tok.vocab_size)
    alone_x, alone_y = collate([short], tok.eot_id)
    batch_x, batch_y = collate([short, long], tok.eot_id)
    assert batch_x.shape == (2, len(long.input_ids))
    assert (batch_x[0, len(short.input_ids):] == tok.eot_id).all() and (batch_y[0, len(short.targets):] == M).all()
    with torch.no_grad():
        alone_logits, alone_loss = model(alone_x, alone_y)
        batch_logits, _ = model(batch_x, batch_y)
        batch_loss = model.token_losses(batch_x, batch_y)[0].sum() / short.response_tokens
    torch.testing.assert_close(batch_logits[0, :len(short.input_ids)], alone_logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch_loss, alone_loss, rtol=1e-5, atol=1e-6)


def test_batches_are_a_function_of_seed_and_step_and_cover_each_epoch(tok):
    examples = [encode(ALPACA.segments({**NO_INPUT, "output": "the river " * (i + 1)}), tok) for i in range(12)]
    data = SFTData(examples, {}, tok.eot_id)
    again = SFTData(list(examples), {}, tok.eot_id)
    sampler = EpochSampler(len(data), seed=3)  # what the trainer draws each step's examples with
    for step in range(7):
        indices = sampler.global_batch(step, 4)
        assert indices.tolist() == EpochSampler(len(again), seed=3).global_batch(step, 4).tolist()
        x, y = data.batch(indices)
        assert torch.equal(x, again.batch(indices)[0]) and torch.equal(y, again.batch(indices)[1])
        assert x.shape[1] == max(len(examples[i].input_ids) for i in indices)
    for epoch in range(2):
        seen = [i for step in range(3 * epoch, 3 * epoch + 3) for i in sampler.global_batch(step, 4)]
        assert sorted(seen) == list(range(12))
    first_epoch = [sampler.global_batch(s, 4).tolist() for s in range(3)]
    assert first_epoch != [EpochSampler(12, seed=4).global_batch(s, 4).tolist() for s in range(3)]
    assert data.n_tokens == sum(len(e.input_ids) for e in examples)
    with pytest.raises(SFTError, match="every record was skipped"):
        SFTData([], {"prompt_too_long": 2}, tok.eot_id).batch([0])


# ---- response loss ----------------------------------------------------------------------------


def test_response_loss_is_the_mean_over_response_tokens(tok):
    records = [("rewrite", ALPACA.segments(WITH_INPUT), WITH_INPUT["output"]),
               ("question", ALPACA.segments(NO_INPUT), NO_INPUT["output"]),
               ("question", CHAT.segments(TWO_TURNS), "By the river.Under a grey sky.")]
    examples = [encode(segments, tok, task_type=task) for task, segments, _ in records]
    model = tiny_gpt(tok.vocab_size)
    by_hand: dict[str, list[float]] = {}
    for (task, _, response), example in zip(records, examples):
        x, y = torch.tensor([example.input_ids]), example.targets
        with torch.no_grad():
            log_probs = torch.log_softmax(model(x, torch.tensor([y]))[0][0].double(), dim=-1)
        trained = [t for t in range(len(y)) if y[t] != M]
        nats = -sum(float(log_probs[t, y[t]]) for t in trained)
        totals = by_hand.setdefault(task, [0.0, 0, 0])
        totals[0] += nats
        totals[1] += len(trained)
        totals[2] += len(response.encode())
    model.train()
    result = response_loss(model, SFTData(examples, {}, tok.eot_id), batch_size=2)
    assert model.training  # evaluated in eval mode, then given back as it came
    nats, tokens, nbytes = (sum(v[k] for v in by_hand.values()) for k in range(3))
    assert result["tokens"] == tokens
    assert result["loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)
    assert set(result["by_task_type"]) == {"rewrite", "question"}
    for task, (task_nats, task_tokens, task_bytes) in by_hand.items():
        assert result["by_task_type"][task] == pytest.approx(
            {"loss": task_nats / task_tokens, "tokens": task_tokens,
             "bits_per_byte": task_nats / math.log(2) / task_bytes}, rel=1e-5)


def test_response_loss_shared_between_processes_equals_one_process(tok):
    """Under DDP each process measures its own batches; the sums added over the processes give the one-process
    numbers (the all-reduce is played here by adding the two processes' exchanged values)."""
    from training.trainer import Distributed

    examples = [encode(ALPACA.segments({**NO_INPUT, "output": "the river " * (i + 1)}), tok,
                       task_type=("a", "b")[i % 2]) for i in range(9)]
    data = SFTData(examples, {}, tok.eot_id)
    model = tiny_gpt(tok.vocab_size)
    alone = response_loss(model, data, batch_size=2)
    sent: dict[int, list[float]] = {}

    class Rank(Distributed):
        def sum_over_processes(self, values, device):
            sent[self.rank] = values
            return values

    for rank in (0, 1):
        response_loss(model, data, batch_size=2, ddp=Rank(rank=rank, world_size=2))
    assert sent[0] != sent[1]  # each did a share of the work
    added = [a + b for a, b in zip(sent[0], sent[1])]
    nats = added[0::3]
    tokens = added[1::3]
    assert sum(tokens) == alone["tokens"]
    assert sum(nats) / sum(tokens) == pytest.approx(alone["loss"], rel=1e-12)
    assert added[0] / added[1] == pytest.approx(alone["by_task_type"]["a"]["loss"], rel=1e-12)


# ---- from the store ---------------------------------------------------------------------------


def test_examples_from_a_version(tok, tmp_path):
    store = VersionStore(str(tmp_path / "store"))
    long = {**NO_INPUT, "instruction": "the river " * 200}
    publish_instructions(store, "instruct", [("alpaca", "rewrite", WITH_INPUT), ("chat", "question", TWO_TURNS),
                                             ("alpaca", "question", long)])
    data = examples_from_version(store, "instruct", "alpaca", tok, block_size=128)
    assert data.skipped == {"prompt_too_long": 1} and data.pad_id == tok.eot_id
    assert [e.task_type for e in data.examples] == ["rewrite", "question"]
    assert tok.decode(data.examples[0].input_ids) == ALPACA.render(WITH_INPUT)
    assert trained_text(data.examples[1], tok) == "By the river.\nUnder a grey sky." + EOT  # the flat columns

    chat = examples_from_version(store, "instruct", "chat", tok, block_size=128)
    alpaca_as_chat = CHAT.from_fields(WITH_INPUT)
    assert tok.decode(chat.examples[0].input_ids) == CHAT.render(alpaca_as_chat)
    assert chat.examples[1] == encode(CHAT.segments(TWO_TURNS), tok, task_type="question")

    custom = examples_from_version(store, "instruct", "{instruction}\n=> {output}", tok, block_size=128)
    assert trained_text(custom.examples[0], tok) == WITH_INPUT["output"] + EOT


def test_versions_that_cannot_be_fine_tuned_on_are_one_line_errors(tok, tmp_path):
    store = VersionStore(str(tmp_path / "store"))
    publish_instructions(store, "custom", [("alpaca", "rewrite", NO_INPUT),
                                           ("json_schema:0123abcd", "qa", {"question": "q", "answer": "a"})])
    with pytest.raises(SFTError, match=r"record custom-1: schema 'json_schema:0123abcd' has no prompt/response"):
        examples_from_version(store, "custom", "alpaca", tok, block_size=64)
    store.publish_table("plain", pa.table({
        "id": ["p-0"], "text": ["the river"], "source": ["web"], "origin": ["human"],
        "generation": pa.array([0], pa.int32()), "generator": pa.array([None], pa.string())}))
    with pytest.raises(SFTError, match="has no schema, task_type, instruction, input, output column") as err:
        examples_from_version(store, "plain", "alpaca", tok, block_size=64)
    assert "\n" not in str(err.value)
