"""curate's data library: records, ingestion, steps, recipes and the version store (no orchestration)."""

__version__ = "0.1.0"
