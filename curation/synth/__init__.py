"""Synthetic instruction data: schemas, generator backends, generation methods and their checks.

Generation turns prompts into *attempts*; every attempt becomes either a schema-valid record or a
reject that says why (transport error, truncated output, invalid JSON, schema violation). The
attempts are then curated like any other input, by the recipe's steps.
"""
