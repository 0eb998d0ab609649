"""Statistics of a version: size, lengths, vocabulary, lexical and semantic diversity, coverage.

`compute_stats(batches)` reads the records once, as a stream of Arrow tables, and returns the
`stats.json` dict and the version's `SemanticModel` (saved as `stats_model.npz`, so that a later
version can measure its coverage of this one's clusters). Memory is bounded whatever the corpus size.
docs/stats-schema.md describes every field of `stats.json` and how each number is computed.

The parts:
- `counts`: exact counts over every document (lengths, scores, words, task types);
- `sample`: the seeded bottom-k sample of documents that the sample-based measures read;
- `lexical`: lexical diversity of the length-matched sample;
- `semantic`: the hashed TF-IDF / SVD / k-means model, the Vendi score and coverage;
- `compute`: the pass over the stream that puts them together.
"""

from curation.stats.common import SAMPLE_CHARS
from curation.stats.compute import SCHEMA_VERSION, compute_stats
from curation.stats.counts import QUANTILES, length_edges, task_type
from curation.stats.lexical import lexical_stats, near_dup_components, near_dup_density
from curation.stats.semantic import SemanticModel, coverage, fit_semantic, kmeans, vendi_score

__all__ = [
    "QUANTILES",
    "SAMPLE_CHARS",
    "SCHEMA_VERSION",
    "SemanticModel",
    "compute_stats",
    "coverage",
    "fit_semantic",
    "kmeans",
    "length_edges",
    "lexical_stats",
    "near_dup_components",
    "near_dup_density",
    "task_type",
    "vendi_score",
]
