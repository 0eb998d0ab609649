"""Quality classifier filter: score each document with a trained hq/lq classifier (`curation.classifier`): a
fastText model, or any backend registered there (the GPT head of `training/classify.py`, "gpt").

Always writes `quality_score` (float32, P(hq)); in `filter` mode rejects documents scoring under
`min_score` with reason `quality_classifier:score=0.123<0.5`; `annotate` mode keeps every document and
also writes the signal column `quality_classifier__score` (for threshold/retention views).

`min_score` 0.5 is our choice (the classifier's decision boundary). DCLM instead keeps the top 10%
of documents by score: `keep_top_percent: 10` does that exactly, as a global phase (every shard's
scores are collected, the cut-off is the corpus-wide percentile, then each shard is filtered by it).

The model is loaded lazily, once per process and model file (cached by path and sha256 in
`curation.classifier`), so the step object itself stays small and pickles cheaply to worker processes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.classifier import ClassifierError, backend_loader, cached_model, read_info
from curation.steps.base import SERIAL, Collected, Workers
from curation.steps.filter import Check, FilterParams, FilterStep, Measurement
from curation.steps.registry import register

SCORE_COLUMN = "quality_score"


class QualityClassifierParams(FilterParams):
    model: str = Field(min_length=1)  # classifier folder or model file (relative to the recipe's folder)
    min_score: float = Field(0.5, ge=0.0, le=1.0)
    # Keep the best k % of documents over the whole run (overrides min_score); DCLM keeps the top 10 %.
    keep_top_percent: float | None = Field(None, gt=0.0, le=100.0)


@register
class QualityClassifier(FilterStep[QualityClassifierParams]):
    name = "quality_classifier"
    # In annotate mode the score is also written as `quality_classifier__score`, the `<rule>__<signal>`
    # column that threshold/retention views read.
    checks = (Check("score", ">=", "min_score"),)
    path_params = ("model",)

    def preflight(self, store_url: str) -> None:
        try:
            info = read_info(self.params.model)
            backend_loader(info)  # an unregistered backend fails here, before any work
        except ClassifierError as exc:
            raise ValueError(f"model: {exc}") from None
        if not info.model_path.is_file():
            raise ValueError(f"model: {info.model_path} is missing (the classifier folder names it)")

    def is_global(self) -> bool:
        return self.params.keep_top_percent is not None

    def _scores(self, batch: pa.Table) -> pa.Array:
        return pa.array(cached_model(self.params.model).score(batch.column("text").to_pylist()), pa.float32())

    def collect(self, batch: pa.Table) -> np.ndarray:
        return self._scores(batch).to_numpy(zero_copy_only=False)

    def decide(self, collected: list[Collected], workers: Workers = SERIAL) -> float:
        """The corpus-wide cut-off: documents scoring at or above it are the top k %."""
        scores = np.concatenate([c.value for c in collected]) if collected else np.empty(0, np.float32)
        if scores.size == 0 or self.params.keep_top_percent is None:
            return 0.0
        return float(np.quantile(scores.astype(np.float64), 1 - self.params.keep_top_percent / 100, method="higher"))

    def report(self, decision: float) -> dict[str, float | None]:
        return {"keep_top_percent": self.params.keep_top_percent, "score_cutoff": decision}

    def bound(self, check: Check) -> float | None:
        """With `keep_top_percent`, the run's corpus-wide cut-off replaces `min_score`."""
        return float(self.decision) if self.params.keep_top_percent is not None else self.params.min_score

    def measure(self, batch: pa.Table) -> Measurement:
        scores = self._scores(batch)
        # Decide and report on the stored float32 value, so the reason agrees with the column.
        values = scores.cast(pa.float64())
        return Measurement(self.reasons({"score": values}, batch.num_rows), signals={"score": scores},
                           annotations={SCORE_COLUMN: scores})
