"""Prefect orchestration and the `curate` command line; thin wrappers over curation/ and training/."""
