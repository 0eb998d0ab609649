"""HFCompletionBackend on a real (tiny) GPT-2 built and trained offline in a temporary folder."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from curation.synth.backends import CompletionRequest  # noqa: E402
from curation.synth.hf_backend import HFCompletionBackend  # noqa: E402

ANIMALS = ["cat", "dog", "fox", "owl", "hen"]
PLACES = ["mat", "log", "hill", "barn", "road"]
LINES = [f"The {a} sat on the {p}. The {a} is happy on the {p}." for a in ANIMALS for p in PLACES]
CONTEXT = 128


def build_tiny_model(folder: Path) -> Path:
    """A byte-level BPE tokenizer and a 2-layer GPT-2, trained for a moment on LINES, saved to `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(["\n".join(LINES)], trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<pad>"
    )
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=CONTEXT,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    examples = [tokenizer(line)["input_ids"] + [tokenizer.eos_token_id] for line in LINES]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    model.train()
    for _ in range(80):
        batch = rng.sample(examples, 8)
        width = max(map(len, batch))
        ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in batch])
        labels = ids.masked_fill(ids == tokenizer.pad_token_id, -100)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> HFCompletionBackend:
    return HFCompletionBackend(model_dir, device="cpu", batch_size=4)


def test_name_generation_and_context(model_dir: Path, backend: HFCompletionBackend) -> None:
    assert backend.name == f"hf:{model_dir.name}"
    assert backend.generation == 1
    assert backend.context_length == CONTEXT
    named = HFCompletionBackend(model_dir, device="cpu", generation=3, name="hf:tiny")
    assert (named.name, named.generation) == ("hf:tiny", 3)


def test_trained_model_continues_its_text_greedily(backend: HFCompletionBackend) -> None:
    [answer] = backend.complete([CompletionRequest("The cat sat on the", max_tokens=40, temperature=0)])
    assert answer.error is None
    assert answer.finish_reason == "stop"  # it learned to end a line with EOS
    assert " is happy on the " in answer.text
    assert answer.usage["completion_tokens"] > 0


def test_same_request_same_text_alone_twice_and_in_any_batch(backend: HFCompletionBackend) -> None:
    request = CompletionRequest("The owl sat", max_tokens=24, temperature=1.0, seed=7)
    others = [
        CompletionRequest("The dog", max_tokens=24, temperature=1.3, seed=1),
        CompletionRequest("The fox sat on the hill. The fox is", max_tokens=24, temperature=0.9, seed=2),
        CompletionRequest("The", max_tokens=24, temperature=0, seed=3),
        CompletionRequest("The hen sat on the barn.", max_tokens=24, temperature=1.0, seed=7),
    ]
    alone = backend.complete([request])[0].text
    assert alone and backend.complete([request])[0].text == alone
    batched = backend.complete([others[0], request, *others[1:]])
    assert batched[1].text == alone
    assert backend.complete([*others, request])[-1].text == alone  # another batch split and padding
    # the seed matters: some other seed samples another continuation at this temperature
    reseeded = {
        backend.complete([CompletionRequest("The owl sat", max_tokens=24, temperature=2.0, seed=s)])[0].text
        for s in range(6)
    }
    assert len(reseeded) > 1


def test_greedy_ignores_seed(backend: HFCompletionBackend) -> None:
    texts = {
        backend.complete([CompletionRequest("The dog sat on", max_tokens=16, temperature=0, seed=seed)])[0].text
        for seed in (0, 1, 2)
    }
    assert len(texts) == 1


def test_max_tokens_cut_is_length(backend: HFCompletionBackend) -> None:
    [answer] = backend.complete([CompletionRequest("The fox sat on the", max_tokens=3, temperature=0)])
    assert answer.finish_reason == "length"
    assert answer.text  # the partial text still comes back
    assert len(backend.tokenizer(answer.text)["input_ids"]) <= 3
    assert answer.usage["completion_tokens"] == 3


def test_stop_string_cuts_text_and_is_stop(backend: HFCompletionBackend) -> None:
    prompt = "The hen sat on the"
    [free] = backend.complete([CompletionRequest(prompt, max_tokens=40, temperature=0)])
    assert " is happy" in free.text
    [stopped] = backend.complete([CompletionRequest(prompt, max_tokens=40, temperature=0, stop=(" is happy", "zzz"))])
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(" is happy")]
    assert stopped.usage["completion_tokens"] < free.usage["completion_tokens"]  # stopped early


def test_prompt_longer_than_context_is_left_truncated(backend: HFCompletionBackend) -> None:
    long_prompt = " ".join(LINES * 3) + " The dog sat on the"
    assert len(backend.tokenizer(long_prompt)["input_ids"]) > CONTEXT
    [answer] = backend.complete([CompletionRequest(long_prompt, max_tokens=20, temperature=0)])
    assert answer.error is None and answer.text
    assert answer.usage["prompt_tokens"] == CONTEXT - 20


def test_one_bad_request_does_not_sink_the_batch(backend: HFCompletionBackend) -> None:
    good = CompletionRequest("The cat", max_tokens=10, temperature=0)
    bad = CompletionRequest("The cat", max_tokens=CONTEXT + 5, temperature=0)  # no room for any prompt
    answers = backend.complete([good, bad, good])
    assert answers[0].text == answers[2].text == backend.complete([good])[0].text
    assert answers[1].text is None
    assert answers[1].error.startswith("generation_error=ValueError: max_tokens=")


def test_exception_in_generate_becomes_an_error(backend: HFCompletionBackend, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("device on fire")

    monkeypatch.setattr(backend.model, "generate", broken)
    answers = backend.complete([CompletionRequest("The cat", max_tokens=8), CompletionRequest("The dog", max_tokens=8)])
    assert [a.error for a in answers] == ["generation_error=RuntimeError: device on fire"] * 2
    assert all(a.text is None for a in answers)


def test_missing_or_empty_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        HFCompletionBackend(missing)
    with pytest.raises(ValueError, match=str(tmp_path.name)):
        HFCompletionBackend(tmp_path)


@pytest.mark.e2e
def test_synthesize_with_a_local_hf_model_accounts_for_every_attempt(model_dir: Path, tmp_path: Path,
                                                                      prefect_harness) -> None:
    from conftest import publish_rows

    from curation.recipe import parse_recipe
    from curation.store import VersionStore
    from curation.synth.schemas import ALPACA
    from flows.synthesize import run_synthesis

    store = VersionStore(tmp_path / "store")
    publish_rows(store, "docs", [("farm", " ".join(LINES[i:i + 6])) for i in range(0, 24, 3)])
    recipe = parse_recipe({"synthesize": {
        "method": "grounded", "source": "docs", "records": 8, "batch_size": 4, "tasks": ["continue"],
        "passage_words": 12, "backend": {"kind": "hf", "path": str(model_dir), "device": "cpu"},
        "sampling": {"temperature": 0.7, "max_tokens": 8}}, "steps": [{"step": "instruction_filter"}]})
    manifest = run_synthesis(recipe, store.url, "farm-instruct", workers=1)
    assert manifest["accounting"]["ok"] and manifest["rows"] + manifest["rejected_rows"] == 8
    assert manifest["synthesis"]["generator"] == f"hf:{model_dir.name}"
    for row in store.read_table("farm-instruct").to_pylist():
        assert ALPACA.decode(row["record"])["output"].strip()
    for row in store.read_table("farm-instruct", "rejects", columns=["step", "reason"]).to_pylist():
        assert row["reason"].startswith("generate:") or row["step"] == "instruction_filter"
