"""curate's trainer: tokenizer, token shards, GPT model and ablation maths (no orchestration)."""
