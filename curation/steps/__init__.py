"""Curation steps, found by name. Each module holds one step and its parameters."""

from __future__ import annotations

from curation.steps.base import (
    Collected,
    FilterParams,
    FilterStep,
    Measurement,
    Step,
    StepOutput,
    StepParams,
    reason_key,
    split,
)
from curation.steps.c4 import C4Quality
from curation.steps.decontaminate import Decontaminate
from curation.steps.dedup import ExactDedup, MinHashDedup
from curation.steps.fineweb import FineWebQuality
from curation.steps.gopher import GopherQuality, GopherRepetition
from curation.steps.instruction import InstructionFilter, RougeNovelty
from curation.steps.langid import LanguageFilter
from curation.steps.length import LengthFilter
from curation.steps.line_dedup import LineDedup
from curation.steps.normalize import Normalize
from curation.steps.pii import PIIRedactor
from curation.steps.quality_classifier import QualityClassifier

REGISTRY: dict[str, type[Step]] = {cls.name: cls for cls in (
    Normalize, LengthFilter, GopherQuality, GopherRepetition, C4Quality, FineWebQuality, LanguageFilter, PIIRedactor,
    QualityClassifier, ExactDedup, MinHashDedup, LineDedup, Decontaminate, InstructionFilter, RougeNovelty,
)}

__all__ = ["REGISTRY", "Collected", "FilterParams", "FilterStep", "Measurement", "Step", "StepOutput", "StepParams",
           "reason_key", "split"]
