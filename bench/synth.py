"""Synthesis throughput: the OpenAI client's concurrency, ROUGE-L novelty over a growing pool, the
instruction checks, and (with --checkpoint) the project's GPT as a generator.

    .venv/bin/python bench/synth.py                      # --requests 200 --latency 0.05 --tasks 20000
    .venv/bin/python bench/synth.py --checkpoint <store>/runs/<...>/checkpoint.pt --json bench/out/synth.json

- client: `--requests` chat requests against the loopback server of the test suite, each answered after
  `--latency` seconds (a stand-in for a model server's time per request), at concurrency 1, 8 and 32;
  requests/s, and the second pass's time with every answer in the request cache.
- novelty: `--tasks` generated instructions (template sentences with random words: ~3 % near
  duplicates) admitted into a pool in order, as Self-Instruct does for every candidate; tasks/s, and the
  pure-Python LCS (the algorithm of the reference ROUGE implementation) on a 1,000-task sample for scale.
- instruction_filter: records/s of the per-record checks.
- gpt (--checkpoint): new tokens/s of the CPU completion backend, one request at a time.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

WORDS = ("river mill grain news road price family morning trade weather village garden teacher library market "
         "recipe student engineer poem letter story summary list table colour season city country song").split()
VERBS = ("Write", "Describe", "Explain", "List", "Summarise", "Compare", "Suggest", "Classify", "Rewrite", "Name")


def tasks(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if out and rng.random() < 0.03:
            base = rng.choice(out).split()
            base[rng.randrange(len(base))] = rng.choice(WORDS)
            out.append(" ".join(base))
        else:
            out.append(f"{rng.choice(VERBS)} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))))
    return out


def bench_client(requests: int, latency: float) -> dict:
    from openai_server import FakeOpenAIServer

    from curation.synth.backends import ChatRequest
    from curation.synth.openai_backend import OpenAIChatBackend
    from curation.synth.schemas import ALPACA

    out = {}
    with FakeOpenAIServer(slow_s=latency) as server, tempfile.TemporaryDirectory() as cache:
        for concurrency in (1, 8, 32):
            batch = [ChatRequest(messages=(("user", f"[[slow]] task {concurrency}-{i}"),), seed=i,
                                 json_schema=ALPACA.json_schema()) for i in range(requests)]
            with OpenAIChatBackend(base_url=server.base_url, model="bench", concurrency=concurrency,
                                   cache_dir=f"{cache}/{concurrency}") as backend:
                started = time.perf_counter()
                answers = backend.chat(batch)
                first = time.perf_counter() - started
                started = time.perf_counter()
                again = backend.chat(batch)
                cached = time.perf_counter() - started
            assert all(a.error is None for a in answers) and all(a.cached for a in again)
            out[f"concurrency_{concurrency}"] = {"requests_per_s": round(requests / first, 1),
                                                 "cached_requests_per_s": round(requests / cached, 1)}
            print(f"client  concurrency {concurrency:>2}: {requests / first:8.1f} requests/s "
                  f"({latency * 1000:.0f} ms each); rerun from the cache {requests / cached:8.0f} requests/s")
    return out


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def bench_novelty(n: int) -> dict:
    from curation.synth.rouge import NoveltyPool, rouge_tokens

    texts = tasks(n)
    pool = NoveltyPool()
    started = time.perf_counter()
    verdicts = pool.admit(texts, [str(i) for i in range(n)])
    seconds = time.perf_counter() - started
    rejected = sum(1 for score, _ in verdicts if score > pool.threshold)
    sample = [rouge_tokens(t) for t in texts[:1000]]
    started = time.perf_counter()
    for i, a in enumerate(sample):  # every candidate against the ones before it, as the pool does
        for b in sample[:i]:
            2 * _lcs(a, b) / (len(a) + len(b))
    python_seconds = time.perf_counter() - started
    print(f"novelty {n:,} tasks: {n / seconds:8.0f} tasks/s ({seconds:.1f} s), {rejected:,} rejected as near "
          f"duplicates; pure-Python LCS on the first 1,000: {python_seconds:.1f} s "
          f"({python_seconds / max(seconds * (1000 / n) ** 2, 1e-9):.0f}x slower per pair)")
    return {"tasks": n, "tasks_per_s": round(n / seconds, 1), "seconds": round(seconds, 2), "rejected": rejected,
            "python_lcs_seconds_first_1000": round(python_seconds, 2)}


def bench_filter(n: int) -> dict:
    from curation.steps.instruction import InstructionFilter

    texts = tasks(n, seed=1)
    outputs = tasks(n, seed=2)
    table = pa.table({"id": [str(i) for i in range(n)], "text": texts, "instruction": texts,
                      "input": [""] * n, "output": outputs})
    step = InstructionFilter()
    started = time.perf_counter()
    out = step.apply(table)
    seconds = time.perf_counter() - started
    print(f"instruction_filter: {n / seconds:8.0f} records/s ({out.rejected.num_rows:,} of {n:,} rejected)")
    return {"records_per_s": round(n / seconds, 1)}


def bench_gpt(checkpoint: str) -> dict:
    import torch

    from curation.synth.backends import CompletionRequest
    from flows.gpt import GPTCompletionBackend

    torch.set_num_threads(1)
    backend = GPTCompletionBackend(checkpoint)
    requests = [CompletionRequest(f"And it came to pass in the {i} day", max_tokens=64, seed=i) for i in range(16)]
    started = time.perf_counter()
    answers = backend.complete(requests)
    seconds = time.perf_counter() - started
    new = sum(a.usage.get("completion_tokens", 0) for a in answers)
    print(f"gpt     {new / seconds:8.0f} new tokens/s on one CPU thread ({len(requests)} requests, {seconds:.1f} s)")
    return {"tokens_per_s": round(new / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--checkpoint")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = {"client": bench_client(args.requests, args.latency), "novelty": bench_novelty(args.tasks),
              "instruction_filter": bench_filter(args.tasks)}
    if args.checkpoint:
        result["gpt"] = bench_gpt(args.checkpoint)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
