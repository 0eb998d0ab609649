"""Curation steps, found by name. Each module holds one step (or two close ones) and its parameters;
importing this package registers the built-ins (see `registry`)."""

from __future__ import annotations

from curation.steps import (  # noqa: F401 - imported for their @register
    c4,
    decontaminate,
    dedup,
    fineweb,
    gopher,
    instruction,
    langid,
    length,
    line_dedup,
    normalize,
    pii,
    quality_classifier,
)
from curation.steps.base import (
    Collected,
    Count,
    Fraction,
    NonNegative,
    PositiveCount,
    Step,
    StepOutput,
    StepParams,
    reason_key,
    split,
)
from curation.steps.filter import Check, FilterParams, FilterStep, Measurement, bound_of, reason
from curation.steps.registry import REGISTRY, UnknownStepError, register, step_class

__all__ = ["REGISTRY", "Check", "Collected", "Count", "FilterParams", "FilterStep", "Fraction", "Measurement",
           "NonNegative", "PositiveCount", "Step", "StepOutput", "StepParams", "UnknownStepError", "bound_of", "reason",
           "reason_key", "register", "split", "step_class"]
