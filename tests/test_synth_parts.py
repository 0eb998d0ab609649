"""The parts of synthesis: decoding and schemas, ROUGE-L novelty, the instruction checks, and the methods."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from curation.steps import Collected
from curation.steps.instruction import InstructionFilter, RougeNovelty
from curation.synth.backends import Completion, CompletionRequest
from curation.synth.generate import attempts_table, make_backend, run_jobs
from curation.synth.methods import (
    NO_INPUT,
    grounded_jobs,
    load_seed_tasks,
    passage_of,
    programmatic_fields,
    sample_documents,
    self_instruct_job,
)
from curation.synth.rouge import NoveltyPool, rouge_l_matrix, rouge_tokens
from curation.synth.schemas import ALPACA, CHAT, Rejected, SchemaError, load_schema
from curation.synth.spec import SynthSpec


def _reject_key(schema, text):
    with pytest.raises(Rejected) as caught:
        schema.decode(text)
    return caught.value.key


def test_decoding_is_strict_and_never_coerces():
    good = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    assert ALPACA.decode(json.dumps(good)) == good
    assert ALPACA.decode("```json\n" + json.dumps(good) + "\n```") == good
    assert ALPACA.decode(json.dumps({"instruction": "Name a colour.", "output": "Blue."}))["input"] == ""
    assert _reject_key(ALPACA, '{"instruction": "Name a colour", "output": ') == "invalid_json"
    assert _reject_key(ALPACA, 'Sure! {"instruction": "x", "output": "y"}') == "invalid_json"
    assert _reject_key(ALPACA, "   \n") == "empty_output"
    assert _reject_key(ALPACA, "[1, 2]") == "schema"
    assert _reject_key(ALPACA, json.dumps({**good, "output": 42})) == "schema"  # no int -> str coercion
    assert _reject_key(ALPACA, json.dumps({**good, "output": "   "})) == "schema"
    assert _reject_key(ALPACA, json.dumps({**good, "extra": "x"})) == "schema"
    with pytest.raises(Rejected, match="instruction"):
        ALPACA.decode(json.dumps({"output": "Blue."}))


def test_chat_records_must_alternate_from_the_user_and_end_with_the_assistant():
    def msgs(*roles):
        return json.dumps({"messages": [{"role": r, "content": f"{r} says hi"} for r in roles]})

    assert CHAT.decode(msgs("system", "user", "assistant"))["messages"][0]["role"] == "system"
    for bad in (msgs("assistant", "user"), msgs("user", "user", "assistant"), msgs("user", "assistant", "user"),
                msgs("user", "system", "assistant"), msgs("user")):
        assert _reject_key(CHAT, bad) == "schema"
    assert _reject_key(CHAT, json.dumps({"messages": [{"role": "robot", "content": "x"},
                                                      {"role": "assistant", "content": "y"}]})) == "schema"


def test_user_json_schema_is_checked_when_loaded_and_on_every_record(tmp_path):
    schema = load_schema({"json_schema": {"type": "object", "required": ["question", "answer"],
                                          "properties": {"question": {"type": "string"},
                                                         "answer": {"type": "string", "minLength": 2}}}})
    assert schema.decode('{"question": "Why?", "answer": "Because."}')["answer"] == "Because."
    with pytest.raises(Rejected, match="answer"):
        schema.decode('{"question": "Why?", "answer": "B"}')
    assert schema.flat({"question": "Why?", "answer": "Because."}) == {
        "instruction": "Why?", "input": None, "output": "Because."}
    (tmp_path / "bad.json").write_text('{"type": "object", "properties": {"a": {"type": "strnig"}}}')
    with pytest.raises(SchemaError, match="bad.json: not a valid JSON Schema"):
        load_schema({"json_schema": "bad.json"}, tmp_path)
    with pytest.raises(SchemaError, match="missing.json"):
        load_schema({"json_schema": "missing.json"}, tmp_path)
    with pytest.raises(SchemaError, match="alpaca"):
        load_schema("alpaka")


def test_the_strict_response_schema_requires_every_field():
    sent = ALPACA.json_schema()
    assert sent["required"] == ["instruction", "input", "output"] and sent["additionalProperties"] is False


def _lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_rouge_l_matches_a_dynamic_programming_lcs():
    rng = random.Random(0)
    words = "the a river mill grain news road price health family morning trade".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 15))) for _ in range(30)]
    pool = NoveltyPool()
    encoded = [pool.codec.encode(t) for t in texts]
    matrix = rouge_l_matrix(encoded, encoded)
    for i in range(len(texts)):
        for j in range(len(texts)):
            a, b = rouge_tokens(texts[i]), rouge_tokens(texts[j])
            assert matrix[i, j] == pytest.approx(2 * _lcs(a, b) / (len(a) + len(b)))


def test_novelty_pool_admits_in_order_and_names_the_closest_task():
    pool = NoveltyPool(["Write a poem about the sea."], ["seed-0"])
    verdicts = pool.admit(["Write a short poem about the sea.", "List three primary colours.",
                           "List the three primary colours.", "Explain how tides work."], ["a", "b", "c", "d"])
    assert [v[1] for v in verdicts] == ["seed-0", "seed-0", "b", "seed-0"]
    assert verdicts[0][0] > 0.7 and verdicts[2][0] > 0.7 and verdicts[1][0] <= 0.7 and verdicts[3][0] <= 0.7
    assert pool.ids == ["seed-0", "b", "d"]


def _records(rows):
    n = len(rows)
    return pa.table({"id": [f"r{i}" for i in range(n)], "text": [f"{r[0]} {r[2]}" for r in rows],
                     "instruction": [r[0] for r in rows], "input": [r[1] for r in rows],
                     "output": [r[2] for r in rows],
                     "record": [json.dumps({"instruction": r[0], "input": r[1], "output": r[2]}) for r in rows]})


def test_instruction_filter_rejects_each_failure_with_its_rule():
    rows = [
        ("Describe a walk along the river.", "", "The path follows the water past the mill."),  # kept
        ("Summarise.", "", "Fine."),
        ("Draw a map of the village.", "", "Here it is."),
        ("1. List the fruits.", "", "Apples, pears."),
        ("Tell me a joke about cats.", "", "As an AI language model, I cannot tell jokes."),
        ("Write a letter to the council.", "", "Dear [Your Name], I am writing about the road."),
        ("Repeat the sentence exactly as given.", "The mill is old.", "The mill is old."),
        ("Write one word about rivers.", "", ""),
    ]
    out = InstructionFilter().apply(_records(rows))
    assert out.kept.column("id").to_pylist() == ["r0"]
    reasons = dict(zip(out.rejected.column("id").to_pylist(), out.rejected.column("reason").to_pylist()))
    assert reasons["r1"] == "instruction_filter:task_words=1<3"
    assert reasons["r2"] == "instruction_filter:blacklist=draw"
    assert reasons["r3"].startswith("instruction_filter:non_alpha_start=")
    assert reasons["r4"] == "instruction_filter:refusal=as an ai language model"
    assert reasons["r5"] == "instruction_filter:boilerplate=[your name]"
    assert reasons["r6"].startswith("instruction_filter:echo=")
    assert reasons["r7"] == "instruction_filter:response_words=0<1"


def test_rouge_novelty_step_keeps_the_first_of_near_duplicate_tasks_whatever_the_sharding():
    rows = [("Name three rivers in Europe.", "", "Rhine, Danube, Loire."),
            ("Name three rivers in Africa.", "", "Nile, Congo, Niger."),
            ("Explain why bread rises.", "", "Yeast makes gas."),
            ("Name three large rivers in Europe.", "", "Volga, Rhine, Danube.")]
    table = _records(rows)
    step = RougeNovelty()
    whole = step.decide([Collected(step.collect(table), "", "")])
    split = step.decide([Collected(step.collect(table.slice(0, 2)), "", ""),
                         Collected(step.collect(table.slice(2)), "", "")])
    assert whole == split
    step.bind(whole)
    out = step.apply(table)
    assert out.kept.column("id").to_pylist() == ["r0", "r2"]
    reasons = out.rejected.column("reason").to_pylist()
    assert reasons[0].startswith("rouge_novelty:rouge_l=") and reasons[0].endswith("closest r0")


def test_sampling_documents_does_not_depend_on_batching():
    table = pa.table({"id": [f"d{i}" for i in range(50)], "text": [" ".join(["word"] * 40)] * 50})
    one = sample_documents([table], 10, seed=3)
    many = sample_documents([table.slice(i, 7) for i in range(0, 50, 7)], 10, seed=3)
    assert one == many and len(one) == 10
    assert sample_documents([table], 10, seed=4) != one


def test_passages_leave_a_continuation_and_programmatic_answers_come_from_the_document():
    text = ". ".join(f"Sentence number {i} speaks of the river and the mill" for i in range(12)) + "."
    taken, after = passage_of(text, 30, random.Random(1))
    assert taken and after and sum(len(s.split()) for s in taken) <= 30 + 12
    jobs = grounded_jobs([("doc-1", text)] * 4, 0, ALPACA, ["continue", "summarize", "keywords", "cloze"], 30)
    fields = [programmatic_fields(job) for job in jobs]
    assert fields[0]["output"] == jobs[0].following and fields[0]["output"] in text
    assert fields[1]["output"] in jobs[1].passage
    assert "river" in fields[2]["output"].split(", ")
    assert "____" in fields[3]["input"] and fields[3]["output"] in jobs[3].passage
    assert all(job.parents == ("doc-1",) for job in jobs)


class ScriptedModel:
    """A stand-in for an external language model: answers are scripted by the label the prompt ends with."""

    name, generation = "scripted", 1

    def __init__(self, answers):
        self.answers, self.prompts = answers, []

    def complete(self, requests: list[CompletionRequest]) -> list[Completion]:
        self.prompts += [r.prompt for r in requests]
        return [self.answers[r.prompt.rsplit("\n", 1)[-1]] for r in requests]


def test_completion_backends_fill_fields_in_turn_and_a_cut_field_rejects_the_record():
    seeds = load_seed_tasks(None, ALPACA)
    assert len(seeds) == 24
    spec = SynthSpec(method="self_instruct", records=2, backend={"kind": "hf", "path": "unused"})
    jobs = [self_instruct_job(i, 0, ALPACA, seeds, [], 6, 2) for i in range(2)]
    assert jobs[0].prefix.count("\nInstruction:") == 8 and jobs[0].prefix.endswith("Task 9\n")
    model = ScriptedModel({"Instruction:": Completion(" Name two seasons.", "stop"),
                           "Input:": Completion(f" {NO_INPUT}", "stop"),
                           "Output:": Completion(" Summer and winter.", "stop")})
    attempts = run_jobs(jobs, spec, ALPACA, model)
    assert [a.record for a in attempts] == [{"instruction": "Name two seasons.", "input": "",
                                             "output": "Summer and winter."}] * 2
    assert model.prompts[-1].endswith("Instruction: Name two seasons.\nInput: <noinput>\nOutput:")
    model.answers["Output:"] = Completion(" Summer and", "length", usage={"completion_tokens": 3})
    attempts = run_jobs(jobs, spec, ALPACA, model)
    assert [a.reason for a in attempts] == ["truncated=finish_reason length after 3 tokens; field output"] * 2
    table = attempts_table(attempts, ALPACA, "scripted", 1)
    assert table.column("generate_reject").to_pylist()[0].startswith("generate:truncated=")
    assert table.column("record").to_pylist() == [None, None]


def tiny_gpt(folder: Path) -> Path:
    """A randomly initialised GPT checkpoint with its tokenizer, written as `curate train` writes one: the real
    model code in a second, without a training run."""
    import torch

    from training.model import GPT, GPTConfig
    from training.tokenizer import train_tokenizer
    from training.trainer import TrainConfig, save_checkpoint

    rng = random.Random(0)
    words = "the river ran past old stone walls and green fields under a grey sky".split()
    tok = train_tokenizer([" ".join(rng.choice(words) for _ in range(60)) for _ in range(200)], folder, vocab_size=300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(folder / "checkpoint.pt", model, torch.optim.AdamW(model.parameters()), 0, TrainConfig(), {})
    return folder / "checkpoint.pt"


def test_a_gpt_backend_is_made_by_the_factory_the_caller_passes_in():
    spec = SynthSpec(method="self_instruct", records=2,
                     backend={"kind": "gpt", "checkpoint": "runs/r/checkpoint.pt", "generation": 2})
    made = []

    def factory(checkpoint: str, *, generation: int) -> str:
        made.append((checkpoint, generation))
        return "backend"

    assert make_backend(spec, gpt_backend=factory) == "backend"
    assert made == [("runs/r/checkpoint.pt", 2)]
    with pytest.raises(ValueError, match=r"kind 'gpt' \(checkpoint runs/r/checkpoint.pt\) needs .*gpt_backend="):
        make_backend(spec)


def test_the_projects_gpt_backend_answers_each_request_by_its_own_seed(tmp_path):
    from flows.gpt import GPTCompletionBackend

    backend = GPTCompletionBackend(tiny_gpt(tmp_path), generation=2)
    assert (backend.name, backend.generation) == (f"gpt:{tmp_path.name}", 2)
    request = CompletionRequest("the river", max_tokens=6, seed=7)
    alone = backend.complete([request])[0]
    batched = backend.complete([CompletionRequest("old stone", max_tokens=6, seed=1), request])[1]
    assert alone.text == batched.text and alone.finish_reason == "length"
    assert alone.usage["completion_tokens"] == 6 and alone.usage["prompt_tokens"] > 0
    with pytest.raises(FileNotFoundError, match="no such GPT checkpoint"):
        GPTCompletionBackend(tmp_path / "nope.pt")
