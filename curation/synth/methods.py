"""Generation methods: what each attempt asks a model for.

- Self-Instruct (Wang et al. 2023): each prompt shows 8 tasks, 6 human seed tasks and 2 generated ones
  that passed the novelty check, and asks for one more. Chat models get the examples as JSON and answer
  with a JSON record; base models get the paper's plain "Task k / Instruction / Input / Output" list and
  continue it one field at a time.
- Document-grounded generation: each attempt gets a passage from a curated version and a task type
  (continue, summarize, keywords, cloze, question), the idea of instruction back-translation (Li et al.
  2024): the human document grounds the task. Chat models write the whole record; base models write
  the output of a fixed instruction; the programmatic backend answers from the document alone (a
  deterministic baseline: the true continuation, the most central sentence, the most frequent content
  words, the missing word).

A `Job` carries every form of the request, so the backend decides which one it uses.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import xxhash

from curation.synth.schemas import ALPACA, RecordSchema, Rejected

NO_INPUT = "<noinput>"  # Self-Instruct's marker for a task without input


@dataclass(frozen=True)
class Slot:
    """A field a completion model writes: the prompt so far, then `label`, then the model's text until a stop."""

    field: str
    label: str
    stop: tuple[str, ...] = ("\n",)


@dataclass(frozen=True)
class Job:
    id: str
    method: str
    task_type: str
    template: str  # hash of the prompt template (not of the filled-in prompt)
    parents: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]  # chat backends
    prefix: str = ""  # completion backends: text before the first slot
    slots: tuple[Slot, ...] = ()
    fixed: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    passage: str | None = None
    following: str = ""  # the sentences after the passage in its document (the programmatic continuation)
    seed: int = 0


def template_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def job_seed(seed: int, job_id: str) -> int:
    return xxhash.xxh64_intdigest(f"{seed}:{job_id}".encode()) & 0x7FFFFFFF


# ---- Self-Instruct ------------------------------------------------------------------------------

SI_SYSTEM = "You write tasks for training an instruction-following assistant."
SI_USER = ("Come up with a new task that differs from the examples below in topic and in form. A task has an "
           "instruction, an input that the instruction refers to (empty when the instruction stands alone), and "
           "a correct, helpful output.\n\n{examples}\n\nAnswer with the new task only, as one JSON object that "
           "follows the same schema as the examples.")
SI_COMPLETION = "Come up with a series of tasks:\n\n"


def load_seed_tasks(path: str | Path | None, schema: RecordSchema) -> list[tuple[str, dict[str, Any]]]:
    """(id, record) per line; every seed task must already be valid under the schema."""
    if path is None:
        if schema is not ALPACA:
            raise ValueError("the built-in seed tasks are Alpaca records; give `seed_tasks:` in the schema's shape")
        text = files("curation.synth").joinpath("seed_tasks.jsonl").read_text(encoding="utf-8")
        where = "built-in seed_tasks.jsonl"
    else:
        where = str(path)
        text = Path(path).read_text(encoding="utf-8")
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}:{number}: not valid JSON: {exc.msg}") from None
        if not isinstance(value, dict):
            raise ValueError(f"{where}:{number}: a seed task is a JSON object")
        rid = str(value.pop("id", f"seed-{number}"))
        try:
            out.append((rid, schema.validate(value)))
        except Rejected as exc:
            raise ValueError(f"{where}:{number}: seed task does not follow the schema: {exc.detail}") from None
    if not out:
        raise ValueError(f"{where}: no seed tasks")
    return out


def self_instruct_job(index: int, seed: int, schema: RecordSchema, seeds: list[tuple[str, dict[str, Any]]],
                      generated: list[tuple[str, dict[str, Any]]], n_seed: int, n_generated: int) -> Job:
    job_id = f"si-{index:07d}"
    rng = random.Random(job_seed(seed, job_id))
    from_generated = rng.sample(generated, min(n_generated, len(generated)))
    examples = rng.sample(seeds, min(n_seed + n_generated - len(from_generated), len(seeds))) + from_generated
    rng.shuffle(examples)
    shown = "\n".join(f"Example {i}: {json.dumps(rec, ensure_ascii=False)}" for i, (_, rec) in enumerate(examples, 1))
    messages = (("system", SI_SYSTEM), ("user", SI_USER.format(examples=shown)))
    fields = schema.fill_fields()
    prefix = SI_COMPLETION
    for i, (_, rec) in enumerate(examples, 1):
        flat = _as_fields(schema, rec)
        prefix += f"Task {i}\n" + "".join(f"{_label(f)} {flat.get(f) or NO_INPUT}\n" for f in fields) + "\n"
    prefix += f"Task {len(examples) + 1}\n"
    slots = tuple(Slot(f, _label(f), ("\n\n", "\nTask") if k == len(fields) - 1 else ("\n",))
                  for k, f in enumerate(fields))
    return Job(job_id, "self_instruct", "new_task", self_instruct_template(schema),
               tuple(rid for rid, _ in examples), messages, prefix, slots, seed=job_seed(seed, job_id))


def _label(field_name: str) -> str:
    return field_name[:1].upper() + field_name[1:] + ":"


def _as_fields(schema: RecordSchema, record: dict[str, Any]) -> dict[str, str]:
    """A record as the flat fields a completion model sees (a chat record as instruction/output)."""
    if schema.name == "chat":
        return {k: v or "" for k, v in schema.flat(record).items()}
    return {k: str(v) for k, v in record.items()}


# ---- document-grounded --------------------------------------------------------------------------

GROUNDED_SYSTEM = "You write instruction-tuning data grounded in a given passage."
GROUNDED_USER = ("Passage:\n\"\"\"\n{passage}\n\"\"\"\n\nWrite one {kind} task based on this passage: an instruction "
                 "a user might give, the input it needs (the passage or the part of it that matters), and a correct "
                 "output that relies only on the passage. Answer with one JSON object with the keys {keys}.")
GROUNDED_KINDS = {
    "continue": "continuation (the output continues the text in the same style)",
    "summarize": "summarisation",
    "keywords": "key-term extraction",
    "cloze": "fill-in-the-blank",
    "question": "question-answering",
}
# Fixed instructions for models that cannot follow instructions (completion and programmatic backends).
GROUNDED_INSTRUCTIONS = {
    "continue": "Continue the passage.",
    "summarize": "Quote the sentence that best sums up the passage.",
    "keywords": "List the five most important terms in the passage.",
    "cloze": "Fill in the blank marked ____ in the passage.",
    "question": "Answer a question about the passage.",
}
# Completion backends: the label before the output and where it stops. A base model continues a passage
# itself, to the end of its line; other tasks get the instruction after the passage and an "Answer:".
GROUNDED_COMPLETION = {kind: ("", ("\n",)) if kind == "continue" else ("Answer:", ("\n\n",))
                       for kind in GROUNDED_KINDS}


def grounded_template(kind: str, schema: RecordSchema) -> str:
    return template_hash(GROUNDED_SYSTEM, GROUNDED_USER, GROUNDED_INSTRUCTIONS[kind], repr(GROUNDED_COMPLETION[kind]),
                         kind, schema.name)


def self_instruct_template(schema: RecordSchema) -> str:
    return template_hash(SI_SYSTEM, SI_USER, SI_COMPLETION, NO_INPUT, schema.name)


_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
# A short English function-word list (our choice) so that "key terms" are content words.
_STOP = frozenset("""a an and are as at be been but by for from had has have he her his i if in into is it its
of on or our she so that the their them then there these they this to unto upon was we were which who will with
would ye you your shall not all him me my thou thee thy hath said also any can may when what""".split())


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def passage_of(text: str, words: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """A run of whole sentences of about `words` words from a seeded position, and the sentences after it
    (at least one is left after the passage when the document has two or more)."""
    parts = sentences(text)
    if not parts:
        return [], []
    limit = len(parts) - 1 if len(parts) > 1 else 1
    start = rng.randrange(limit)
    # Start early enough that the passage can reach its length before the limit.
    while start > 0 and sum(len(p.split()) for p in parts[start:limit]) < words:
        start -= 1
    taken, count = [], 0
    for sentence in parts[start:limit]:
        if taken and count + len(sentence.split()) > words:
            break
        taken.append(sentence)
        count += len(sentence.split())
    return taken, parts[start + len(taken):]


def grounded_jobs(documents: list[tuple[str, str]], seed: int, schema: RecordSchema, tasks: list[str],
                  passage_words: int, start_index: int = 0) -> list[Job]:
    out = []
    keys = ", ".join(schema.fill_fields()) if schema.name != "chat" else "messages"
    for offset, (doc_id, text) in enumerate(documents):
        index = start_index + offset
        job_id = f"gr-{index:07d}"
        rng = random.Random(job_seed(seed, job_id))
        kind = tasks[index % len(tasks)]
        taken, after = passage_of(text, passage_words, rng)
        passage = " ".join(taken)
        messages = (("system", GROUNDED_SYSTEM),
                    ("user", GROUNDED_USER.format(passage=passage, kind=GROUNDED_KINDS[kind], keys=keys)))
        fixed = {"instruction": GROUNDED_INSTRUCTIONS[kind], "input": passage}
        label, stop = GROUNDED_COMPLETION[kind]
        prefix = passage if kind == "continue" else f"{passage}\n\n{GROUNDED_INSTRUCTIONS[kind]}\n"
        slots = (Slot("output", label, stop),)
        out.append(Job(job_id, "grounded", kind, grounded_template(kind, schema),
                       (doc_id,), messages, prefix, slots, fixed, passage, " ".join(after[:2]),
                       job_seed(seed, job_id)))
    return out


def sample_documents(batches, n: int, seed: int, min_words: int = 30) -> list[tuple[str, str]]:
    """`n` documents chosen by a seeded hash of their id (the same choice however the version is sharded),
    in id-hash order; documents shorter than `min_words` cannot ground a task and are skipped."""
    heap: list[tuple[int, str, str]] = []
    for batch in batches:
        for rid, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
            if len(text.split()) < min_words:
                continue
            key = -xxhash.xxh64_intdigest(f"{seed}:{rid}".encode())
            if len(heap) < n:
                heapq.heappush(heap, (key, rid, text))
            elif key > heap[0][0]:
                heapq.heapreplace(heap, (key, rid, text))
    return [(rid, text) for _, rid, text in sorted(heap, reverse=True)]


def programmatic_fields(job: Job) -> dict[str, str]:
    """The deterministic baseline: answers taken from the document, never invented."""
    kind, passage = job.task_type, job.passage or ""
    parts = sentences(passage)
    fields = {"instruction": GROUNDED_INSTRUCTIONS[kind], "input": passage}
    if kind == "continue":
        fields["output"] = job.following
    elif kind == "summarize":
        fields["output"] = _central_sentence(parts)
    elif kind == "keywords":
        fields["output"] = ", ".join(_key_terms(passage, 5))
    elif kind == "cloze":
        rng = random.Random(job.seed)
        candidates = [(i, w) for i, s in enumerate(parts) for w in _WORD.findall(s)
                      if w.lower() not in _STOP and len(w) > 3]
        if candidates:
            i, word = candidates[rng.randrange(len(candidates))]
            parts = list(parts)
            parts[i] = re.sub(rf"\b{re.escape(word)}\b", "____", parts[i], count=1)
            fields["input"], fields["output"] = " ".join(parts), word
        else:
            fields["output"] = ""
    return fields


def _key_terms(text: str, k: int) -> list[str]:
    counts = Counter(w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP and len(w) > 2)
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def _central_sentence(parts: list[str]) -> str:
    """Luhn (1958) in miniature: the sentence whose content words are most frequent in the passage."""
    if not parts:
        return ""
    counts = Counter(w.lower() for s in parts for w in _WORD.findall(s) if w.lower() not in _STOP)

    def score(sentence: str) -> float:
        words = [w.lower() for w in _WORD.findall(sentence) if w.lower() not in _STOP]
        return sum(counts[w] for w in words) / (len(words) ** 0.5) if words else 0.0

    return max(parts, key=score)
