"""Recipes: a YAML file that names the inputs and the steps of a run, validated before any work.

    name: my-corpus
    inputs:
      - {path: raw/web.jsonl.gz, source: web}
    steps:
      - {step: normalize}
      - {step: length_filter, min_chars: 200}

Unknown keys, unknown steps and bad values are `RecipeError`s that name the key and list the
valid ones. Relative input paths are relative to the recipe file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.evalsets import evalset_exists
from curation.guards import GuardConfig
from curation.ingest import InputSpec
from curation.steps import Fraction, Step, UnknownStepError, step_class
from curation.steps.scope import Predicate, Scope
from curation.synth.spec import (
    GPTBackendSpec,
    HFBackendSpec,
    OpenAIBackendSpec,
    ProgrammaticBackendSpec,
    SamplingSpec,
    SynthSpec,
)

# Our choice: 64 MB shards are large enough for efficient Parquet row groups and small enough that
# one shard's work fits comfortably in memory on every core of a small machine.
DEFAULT_SHARD_SIZE_MB = 64.0


RAW_STAGE = "raw"


@dataclass(frozen=True)
class Stage:
    """Consecutive steps of a recipe compared as one change; `end`: the recipe's first `end` steps
    make the cumulative output after this stage."""

    label: str
    steps: tuple[str, ...]
    end: int


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the bad key and the valid ones."""


class Calibration(BaseModel):
    """`calibrate:` a filter's bounds, moved only towards keeping more, to where each rule alone keeps `keep` of
    trusted reference text (see curation/calibration.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A registered reference set (`curate evalset register --role reference`), `version:NAME`, or `source:NAME`
    # (the documents of one of the recipe's inputs); several are pooled.
    reference: list[str] = Field(min_length=1)
    # Our choice: the share of trusted documents each rule alone must keep (2 % of them may still fail it).
    keep: Fraction = 0.98
    # `keep` is what the filters this block calibrates keep of the reference together, not each rule alone: every
    # rule is set at the same quantile, the one at which the rules together keep `keep` (found by bisection).
    # A stack of ~25 rules at 0.98 each keeps about 90 % of its reference; `joint: true` keeps `keep`.
    joint: bool = False
    # Reference documents measured: a seeded sample when there are more (our choice: quantiles at 0.98 are stable
    # to ~0.3 % of the documents with 5,000).
    max_docs: int = Field(5000, ge=10)
    seed: int = 0

    @field_validator("reference", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class TunePatch(BaseModel):
    """One entry of `tune:`: a candidate recipe of your own for `curate tune` (curation/tuning.py), the recipe with
    these changes. Not part of what a run does, so not part of the recipe's content hash."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
    # Steps (by name) the candidate leaves out.
    drop: list[str] = Field(default_factory=list)
    # Step name -> keys replaced in that step (its parameters, or `sources`, `skip_sources`, `where`, `calibrate`).
    assign: dict[str, dict[str, Any]] = Field(default_factory=dict, alias="set")
    # Given: the recipe's `calibrate:` replaced by this; null: no calibration at all (the papers' bounds).
    calibrate: Calibration | None = None


class StepSpec(BaseModel):
    """One entry of `steps:`: the step type, an optional instance name, and its parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)

    step: str
    name: str | None = None
    # The stage the step belongs to when the recipe's cumulative outputs are compared (`stages()`);
    # default: the step's category (transform, filter, dedup). A label, not a parameter: it does not
    # change what the run does, so it is not part of the recipe's content hash.
    stage: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
    # Scope (curation/steps/scope.py): the documents the step applies to; the others pass through, counted.
    sources: list[str] | None = Field(None, min_length=1)
    skip_sources: list[str] | None = Field(None, min_length=1)
    where: Predicate | None = None
    # This filter's calibration (`false`: none, whatever the recipe's `calibrate:` says).
    calibrate: Calibration | Literal[False] | None = None

    @model_validator(mode="after")
    def _one_kind_of_source_scope(self) -> StepSpec:
        if self.sources is not None and self.skip_sources is not None:
            raise ValueError("give `sources` or `skip_sources`, not both")
        return self

    @property
    def scope(self) -> Scope:
        return Scope(tuple(self.sources) if self.sources else None,
                     tuple(self.skip_sources) if self.skip_sources else None, self.where)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def step_class(self) -> type[Step]:
        return step_class(self.step)

    @property
    def instance_name(self) -> str:
        """`name:`, else the step's own name (also for a step named by its class, `package.module:Class`)."""
        return self.name or (self.step if ":" not in self.step else self.step_class.name)

    @property
    def stage_label(self) -> str:
        return self.stage or self.step_class.category

    def build(self, store_url: str | None = None, base: Path | None = None,
              source_order: list[str] | None = None) -> Step:
        """The configured step; a step that reads from the store (e.g. evaluation sets) gets the run's
        store when the recipe does not name one, relative file paths are taken from the recipe's folder, and a
        dedup step's keep policy ranks sources in the recipe's input order unless it says `prefer_sources`."""
        cls = self.step_class
        params = {**self.params, **self.paths(base), **self.implied(source_order)}
        if store_url is not None and "store" in cls.Params.model_fields and params.get("store") is None:
            params = {**params, "store": store_url}
        return cls(**params)

    def implied(self, source_order: list[str] | None) -> dict[str, Any]:
        """Parameters the recipe gives a step it does not set itself: the inputs' order for a keep policy."""
        if source_order and "prefer_sources" in self.step_class.Params.model_fields \
                and "prefer_sources" not in self.params:
            return {"prefer_sources": list(source_order)}
        return {}

    def paths(self, base: Path | None) -> dict[str, str]:
        """The step's file parameters that are set, resolved against `base` (the recipe's folder)."""
        out = {}
        for key in self.step_class.path_params:
            value = self.params.get(key)
            if isinstance(value, str) and value:
                out[key] = str(value if base is None or Path(value).is_absolute() else base / value)
        return out


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    description: str | None = None
    inputs: list[InputSpec] = Field(default_factory=list)
    # A synthesis recipe (`curate synthesize`): its input is a generator instead of files.
    synthesize: SynthSpec | None = None
    steps: list[StepSpec] = Field(default_factory=list)
    shard_size_mb: float = Field(DEFAULT_SHARD_SIZE_MB, gt=0)
    # A source that cannot be opened at all: stop before any work ("error"), or record it as one
    # reject naming the file and go on ("quarantine").
    on_unreadable: Literal["error", "quarantine"] = "error"
    # Planted-defect labels (JSONL: id, defect, file, line) to measure what each step catches.
    labels: str | None = None
    # Model-collapse guards: thresholds, which are hard, the human reference (curation/guards.py).
    guards: GuardConfig = Field(default_factory=GuardConfig)
    # Move every filter's bounds towards keeping more, to trusted text (a step's own `calibrate:` overrides it).
    calibrate: Calibration | None = None
    # `curate tune`'s own candidates (a label for the search, not part of what a run does).
    tune: list[TunePatch] | None = None
    base_dir: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _check_steps(self) -> Recipe:
        if not self.inputs and self.synthesize is None:
            raise ValueError("missing required key 'inputs' (or 'synthesize' for a synthesis recipe)")
        if self.inputs and self.synthesize is not None:
            raise ValueError("a synthesis recipe takes no 'inputs': its input is the generator")
        seen: set[str] = set()
        for i, spec in enumerate(self.steps):
            where = f"steps[{i}]"
            try:
                cls = spec.step_class
            except UnknownStepError as exc:
                raise ValueError(f"{where}: {exc}") from None
            try:
                cls.Params(**spec.params)
            except ValidationError as exc:
                raise ValueError(f"{where} ({spec.step}): {_describe(exc, cls.Params)}") from None
            for key, path in spec.paths(self.base).items():
                if not Path(path).exists():
                    raise ValueError(f"{where} ({spec.step}): {key} = {spec.params[key]!r}: no such file or folder "
                                     f"({path})")
            named = [*(spec.sources or spec.skip_sources or []), *(spec.params.get("prefer_sources") or [])]
            unknown = sorted(set(named) - self.source_names) if self.inputs else []
            if unknown:
                raise ValueError(f"{where} ({spec.step}): no input has source {', '.join(map(repr, unknown))}; the "
                                 f"inputs' sources: {', '.join(sorted(self.source_names))}")
            if spec.instance_name in seen or spec.instance_name == "ingest":
                raise ValueError(f"{where}: step name {spec.instance_name!r} is used twice; give one a `name:`")
            seen.add(spec.instance_name)
        labels = [s.stage_label for s in self.steps]
        first_other = next((i for i, label in enumerate(labels) if label != RAW_STAGE), len(labels))
        late = [s.instance_name for s in self.steps[first_other:] if s.stage_label == RAW_STAGE]
        if late:
            raise ValueError(f"steps labelled `stage: {RAW_STAGE}` (part of the baseline) must come before every "
                             f"other step; {', '.join(late)} follow other steps")
        self._check_tune(seen, {s.instance_name for s in self.steps[:first_other]})
        return self

    def _check_tune(self, steps: set[str], baseline: set[str]) -> None:
        """`tune:` candidates have distinct names and change only the recipe's own steps after its baseline."""
        names: set[str] = set()
        for i, patch in enumerate(self.tune or []):
            where = f"tune[{i}] ({patch.name})"
            if patch.name in names:
                raise ValueError(f"{where}: candidate name {patch.name!r} is used twice")
            names.add(patch.name)
            for key, named in (("drop", patch.drop), ("set", list(patch.assign))):
                unknown = [n for n in named if n not in steps]
                if unknown:
                    raise ValueError(f"{where}: {key}: no step named {', '.join(map(repr, unknown))}; the recipe's "
                                     f"steps: {', '.join(sorted(steps))}")
                fixed = [n for n in named if n in baseline]
                if fixed:
                    raise ValueError(f"{where}: {key}: {', '.join(fixed)} belong(s) to the baseline (`stage: "
                                     f"{RAW_STAGE}`), which every candidate shares")

    @property
    def source_names(self) -> set[str]:
        return set(self.source_order)

    @property
    def source_order(self) -> list[str]:
        """The inputs' sources in the recipe's order (each once): what a dedup step's keep policy prefers."""
        return list(dict.fromkeys(spec.source_name for spec in self.inputs))

    def build_steps(self, store_url: str | None = None) -> list[tuple[str, Step]]:
        return [(spec.instance_name, spec.build(store_url, self.base, self.source_order)) for spec in self.steps]

    def preflight(self, store_url: str) -> None:
        """RecipeError naming the step and what it needs from the store or its files and cannot use (evaluation
        sets, earlier versions, classifier models), or a guard's missing reference: checked before any work."""
        for i, (name, step) in enumerate(self.build_steps(store_url)):
            try:
                step.preflight(store_url)
            except ValueError as exc:
                raise RecipeError(f"steps[{i}] ({name}): {exc}") from None
        reference, model = self.guards.reference, self.resolved_guards.reference_model
        if reference and not evalset_exists(store_url, reference):
            raise RecipeError(f"guards: reference = {reference!r}: no such evaluation set in {store_url} (`curate "
                              "evalset list` shows those there are)")
        if model and not Path(model).is_file():
            raise RecipeError(f"guards: reference_model = {self.guards.reference_model!r}: no such file ({model})")

    @property
    def resolved_guards(self) -> GuardConfig:
        """The `guards:` block with its reference model's path taken from the recipe's folder."""
        model = self.guards.reference_model
        if not model:
            return self.guards
        return self.guards.model_copy(update={"reference_model": str(self.resolve(model))})

    def content_hash(self) -> str:
        """What the run does, not what it is called: inputs, steps and output settings."""
        labels = {"name": True, "description": True, "steps": {"__all__": {"stage"}}, "guards": True, "tune": True}
        body = self.model_dump(mode="json", exclude=labels, by_alias=True)
        # Options that are unset leave the hash as it was before they existed (stage versions stay reusable).
        if body.get("synthesize") is None:
            body.pop("synthesize", None)
        for spec in body["inputs"]:
            for key in ("reject_field", "records"):
                if spec.get(key) is None:
                    spec.pop(key, None)
            spec.pop("license", None)  # a label for the dataset card
        for spec, entry in zip(self.steps, body["steps"]):
            for key in ("sources", "skip_sources", "where", "calibrate"):
                if entry.get(key) is None:
                    entry.pop(key, None)
            entry.update(spec.implied(self.source_order))  # what the step runs with, though the recipe left it
        if body.get("calibrate") is None:
            body.pop("calibrate", None)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def stages(self, each_step: bool = False) -> list[Stage]:
        """The recipe as cumulative stages: consecutive steps with the same stage label form one stage
        (`each_step`: every step is a stage of its own, named after it). The first stage is the baseline:
        ingestion plus the steps labelled `raw` (they must come first), so a recipe without `raw` labels
        starts from its inputs as ingested."""
        raw = 0
        while raw < len(self.steps) and self.steps[raw].stage_label == RAW_STAGE:
            raw += 1
        out = [Stage(RAW_STAGE, tuple(s.instance_name for s in self.steps[:raw]), raw)]
        for end in range(raw, len(self.steps)):
            spec = self.steps[end]
            if each_step:
                out.append(Stage(spec.instance_name, (spec.instance_name,), end + 1))
            elif end > raw and spec.stage_label == self.steps[end - 1].stage_label:
                last = out[-1]
                out[-1] = Stage(last.label, (*last.steps, spec.instance_name), end + 1)
            else:
                out.append(Stage(spec.stage_label, (spec.instance_name,), end + 1))
        return out

    def prefix(self, end: int) -> Recipe:
        """The same recipe with only its first `end` steps: the cumulative output after them."""
        return self.model_copy(update={"steps": list(self.steps[:end])})

    @property
    def base(self) -> Path | None:
        return Path(self.base_dir) if self.base_dir else None

    def resolve(self, path: str) -> Path:
        """A path from the recipe, relative to the recipe's folder."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() or self.base is None else self.base / candidate


def _describe(exc: ValidationError, model: type[BaseModel]) -> str:
    parts = []
    valid = ", ".join(model.model_fields)
    for err in exc.errors():
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r}; valid keys: {valid}")
        elif err["type"] == "missing":
            parts.append(f"missing required key {key!r}")
        elif err["type"] == "value_error" and "ctx" in err:  # a check across keys (e.g. min <= max)
            parts.append(f"{key + ': ' if key else ''}{err['ctx']['error']}")
        else:
            bounds = [f"{op} {err['ctx'][k]}" for k, op in _BOUNDS.items() if k in err.get("ctx", {})]
            detail = f"out of range; allowed: {', '.join(bounds)}" if bounds else err["msg"].lower()
            parts.append(f"{key} = {err.get('input')!r}: {detail}")
    return "; ".join(parts)


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}  # pydantic's names of a field's bounds


def parse_recipe(data: Any, base_dir: Path | None = None, origin: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe is a mapping with `inputs:` and `steps:`")
    try:
        return Recipe(**data, base_dir=str(base_dir) if base_dir else None)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            loc = list(err["loc"])
            key = _loc(loc)
            if err["type"] == "value_error":
                messages.append(str(err["ctx"]["error"]) if "ctx" in err else err["msg"])
            elif err["type"] == "extra_forbidden":
                model = _model_at(loc)
                valid = [(f.alias or k) for k, f in model.model_fields.items() if k != "base_dir"]
                messages.append(f"unknown key {key!r}; valid keys: {', '.join(valid)}")
            elif err["type"] == "missing":
                messages.append(f"missing required key {key!r}")
            else:
                messages.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise RecipeError(f"{origin}: " + "; ".join(messages)) from None


_BACKENDS = {"openai": OpenAIBackendSpec, "gpt": GPTBackendSpec, "hf": HFBackendSpec,
             "programmatic": ProgrammaticBackendSpec}


def _model_at(loc: list[Any]) -> type[BaseModel]:
    """The model whose key `loc` names (for listing the valid keys)."""
    if loc and loc[0] == "inputs":
        return InputSpec
    if loc and loc[0] == "guards":
        return GuardConfig
    if loc and loc[0] == "tune":
        return Calibration if "calibrate" in loc else TunePatch
    if "calibrate" in loc:
        return Calibration
    if "where" in loc:
        return Predicate
    if loc and loc[0] == "synthesize":
        if len(loc) > 3 and loc[1] == "backend" and loc[2] in _BACKENDS:
            return _BACKENDS[loc[2]]
        if len(loc) > 2 and loc[1] == "sampling":
            return SamplingSpec
        return SynthSpec
    return Recipe


def _loc(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: recipe file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    return parse_recipe(data, base_dir=path.parent.resolve(), origin=str(path))
