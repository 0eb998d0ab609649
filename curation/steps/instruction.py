"""Quality control for instruction records: `instruction_filter` (per record) and `rouge_novelty` (global).

Both read the `instruction`, `input` and `output` columns that synthesis writes (and that Alpaca-style
inputs carry); without them they read `text`.

instruction_filter, rule by rule (reasons read `instruction_filter:<rule>=...`):
- task_words: Self-Instruct (Wang et al. 2023, §2.2) drops instructions under 3 or over 150 words.
  task_words, blacklist and non_alpha_start look at the instruction; the rest at the output.
- blacklist: Self-Instruct's keywords for tasks a language model cannot do (image, graph, picture, file,
  map, draw, plot, go to, video, audio, music, flowchart, diagram), matched as whole words.
- non_alpha_start: Self-Instruct drops instructions that start with punctuation or a non-Latin letter.
- refusal: the response refuses or talks about itself as an AI. The phrases are our selection after
  the lists used to clean ShareGPT- and WizardLM-style instruction sets of refusals.
- boilerplate: template placeholders and knowledge-cutoff disclaimers left in the response (our choice).
- echo: the response only repeats the record's input (Self-Instruct drops outputs identical to inputs).
- response_words: responses outside [min, max] words (defaults 1 and 2,000: our choice).

rouge_novelty: a record whose task (`field: task`, the instruction with its input: grounded records share
a handful of instructions and differ by their input; or `field: instruction`, as in Self-Instruct) has
ROUGE-L > 0.7 against an earlier kept record's (or one in the `against` versions) is a near-duplicate:
Self-Instruct's novelty rule, applied over the whole version in a fixed order (shard order, then row
order), so the result does not depend on how the work was split.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curation.steps.base import SERIAL, Collected, Workers, require_versions
from curation.steps.filter import Check, FilterParams, FilterStep, Measurement, reason
from curation.steps.registry import register
from curation.store import VersionStore
from curation.synth.rouge import NOVELTY_THRESHOLD, NoveltyPool

SELF_INSTRUCT_BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map",
                           "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
REFUSAL_PHRASES = (
    "as an ai", "as a language model", "as an ai language model", "i'm an ai", "i am an ai", "i'm sorry, but i",
    "i am sorry, but i", "i cannot fulfill", "i can't fulfill", "i cannot provide", "i can't provide",
    "i cannot assist", "i can't assist", "i'm unable to", "i am unable to", "i cannot help with",
    "i can't help with", "i'm not able to", "i am not able to", "it is not appropriate", "openai",
    "my programming", "against my guidelines", "i do not have personal", "i don't have personal",
)
BOILERPLATE_PHRASES = (
    "as of my knowledge cutoff", "as of my last update", "as of my training data", "[insert", "<insert",
    "[your name]", "your name here", "lorem ipsum", "<placeholder>", "[placeholder]", "todo:",
)


def instruction_fields(batch: pa.Table) -> tuple[list[str], list[str], list[str]]:
    """(instruction, input, output) per row; a batch without those columns reads as text only."""
    if "instruction" not in batch.column_names or "output" not in batch.column_names:
        texts = [t or "" for t in batch.column("text").to_pylist()]
        return texts, [""] * len(texts), texts
    inputs = batch.column("input").to_pylist() if "input" in batch.column_names else [None] * batch.num_rows
    return ([v or "" for v in batch.column("instruction").to_pylist()], [v or "" for v in inputs],
            [v or "" for v in batch.column("output").to_pylist()])


def tasks_of(batch: pa.Table, field: str = "task") -> list[str]:
    instructions, inputs, _ = instruction_fields(batch)
    if field == "instruction":
        return instructions
    return [f"{i}\n{x}" if x else i for i, x in zip(instructions, inputs)]


def _phrases(words: tuple[str, ...] | list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    return re.compile(r"\b(" + "|".join(re.escape(w.lower()) for w in sorted(words, key=len, reverse=True)) + r")\b")


def _substrings(words: tuple[str, ...] | list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    return re.compile("(" + "|".join(re.escape(w.lower()) for w in sorted(words, key=len, reverse=True)) + ")")


class InstructionFilterParams(FilterParams):
    min_task_words: int | None = Field(3, ge=0)
    max_task_words: int | None = Field(150, ge=1)
    blacklist: list[str] = Field(default_factory=lambda: list(SELF_INSTRUCT_BLACKLIST))
    non_alpha_start: bool = True
    refusal_phrases: list[str] = Field(default_factory=lambda: list(REFUSAL_PHRASES))
    boilerplate_phrases: list[str] = Field(default_factory=lambda: list(BOILERPLATE_PHRASES))
    echo: bool = True
    min_response_words: int | None = Field(1, ge=0)
    max_response_words: int | None = Field(2000, ge=1)
    ordered = (("min_task_words", "max_task_words"), ("min_response_words", "max_response_words"))


@register
class InstructionFilter(FilterStep[InstructionFilterParams]):
    """Word-count checks around content rules, in Self-Instruct's order: `measure` is its own."""

    name = "instruction_filter"
    checks = (Check("task_words", ">=", "min_task_words"), Check("task_words", "<=", "max_task_words"),
              Check("response_words", ">=", "min_response_words"),
              Check("response_words", "<=", "max_response_words"))

    def __init__(self, params: InstructionFilterParams | None = None, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self._blacklist = _phrases(p.blacklist)
        self._refusal = _substrings(p.refusal_phrases)
        self._boilerplate = _substrings(p.boilerplate_phrases)

    def measure(self, batch: pa.Table) -> Measurement:
        p = self.params
        tasks, inputs, responses = instruction_fields(batch)
        task_words = [len(t.split()) for t in tasks]
        response_words = [len(r.split()) for r in responses]
        reasons: list[str | None] = []
        for task, response, source_input, tw, rw in zip(tasks, responses, inputs, task_words, response_words):
            reasons.append(self._reason(p, task, response, source_input, tw, rw))
        return Measurement(pa.array(reasons, pa.string()), {
            "task_words": pa.array(task_words, pa.int32()), "response_words": pa.array(response_words, pa.int32())})

    def _reason(self, p: InstructionFilterParams, task: str, response: str, source_input: str, tw: int,
                rw: int) -> str | None:
        rule = self.name
        if p.min_task_words is not None and tw < p.min_task_words:
            return reason(rule, "task_words", tw, "<", p.min_task_words)
        if p.max_task_words is not None and tw > p.max_task_words:
            return reason(rule, "task_words", tw, ">", p.max_task_words)
        stripped = task.lstrip()
        if p.non_alpha_start and stripped and not ("a" <= stripped[0].lower() <= "z"):
            return f"{rule}:non_alpha_start={stripped[0]!r}"
        lowered_task, lowered_response = task.lower(), response.lower()
        if self._blacklist is not None and (hit := self._blacklist.search(lowered_task)):
            return f"{rule}:blacklist={hit.group(1)}"
        if self._refusal is not None and (hit := self._refusal.search(lowered_response)):
            return f"{rule}:refusal={hit.group(1)}"
        if self._boilerplate is not None and (hit := self._boilerplate.search(lowered_response)):
            return f"{rule}:boilerplate={hit.group(1)}"
        if p.echo and source_input and response.strip() == source_input.strip():
            return f"{rule}:echo=response repeats the input"
        if p.min_response_words is not None and rw < p.min_response_words:
            return reason(rule, "response_words", rw, "<", p.min_response_words)
        if p.max_response_words is not None and rw > p.max_response_words:
            return reason(rule, "response_words", rw, ">", p.max_response_words)
        return None


class RougeNoveltyParams(FilterParams):
    threshold: float = Field(NOVELTY_THRESHOLD, gt=0.0, le=1.0)
    against: list[str] = Field(default_factory=list)  # earlier versions whose tasks count as already taken
    field: Literal["task", "instruction"] = "task"


@register
class RougeNovelty(FilterStep[RougeNoveltyParams]):
    name = "rouge_novelty"
    category = "dedup"
    checks = (Check("rouge_l", "<=", "threshold"),)

    def is_global(self) -> bool:
        return True

    def preflight(self, store_url: str) -> None:
        require_versions(store_url, self.params.against)

    def collect(self, batch: pa.Table) -> dict[str, list[str]]:
        return {"id": batch.column("id").to_pylist(), "task": tasks_of(batch, self.params.field)}

    def decide(self, collected: list[Collected], workers: Workers = SERIAL) -> dict[str, tuple[float, str | None]]:
        p = self.params
        pool = NoveltyPool(threshold=p.threshold)
        if p.against and collected:
            store = VersionStore(collected[0].store_url)
            for version in p.against:
                names = store.schema(version).names
                columns = ["id", "text", *(c for c in ("instruction", "input", "output") if c in names)]
                for batch in store.iter_batches(version, columns):
                    pool.admit(tasks_of(batch, p.field), [f"{version}/{i}" for i in batch.column("id").to_pylist()])
        ids = [i for c in collected for i in c.value["id"]]
        tasks = [t for c in collected for t in c.value["task"]]
        return dict(zip(ids, pool.admit(tasks, ids)))

    def report(self, decision: dict[str, tuple[float, str | None]]) -> dict[str, Any]:
        p = self.params
        scores = [s for s, _ in decision.values()]
        return {"documents": len(scores), "threshold": p.threshold, "against": list(p.against),
                "removed": sum(1 for s in scores if s > p.threshold),
                "max_rouge_l_quantiles": _quantiles(scores)}

    def measure(self, batch: pa.Table) -> Measurement:
        p = self.params
        found = [self.decision.get(i, (0.0, None)) for i in batch.column("id").to_pylist()]
        scores = pa.array([s for s, _ in found], pa.float64())
        reasons = [f"{reason(self.name, 'rouge_l', s, '>', p.threshold)} closest {closest}" if s > p.threshold
                   else None for s, closest in found]
        return Measurement(pa.array(reasons, pa.string()), {"rouge_l": scores},
                           {"rouge_l_max": scores, "rouge_l_closest": pa.array([c for _, c in found], pa.string())})


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = pa.array(values, pa.float64())
    qs = pc.quantile(arr, q=[0.5, 0.9, 0.99, 1.0]).to_pylist()
    return {"p50": round(qs[0], 3), "p90": round(qs[1], 3), "p99": round(qs[2], 3), "max": round(qs[3], 3)}
