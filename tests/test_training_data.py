"""Tokenizer, token files, windows, sampler and evaluation windows (training/tokenizer.py, training/data.py)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import doc, publish_rows, write_jsonl
from tokenizers import Tokenizer as HF
from tokenizers import decoders, models, pre_tokenizers, trainers

from curation.evalsets import register_evalset
from curation.store import VersionStore
from training import data as D
from training import tokenizer as T
from training.data import (
    EpochSampler,
    FixedWindows,
    TokenFile,
    TokenFileError,
    Windows,
    fixed_eval_windows,
    per_source_eval_windows,
    token_dtype,
    tokenize_evalset,
    tokenize_version,
)
from training.model import IGNORE_INDEX
from training.tokenizer import EOT, Tokenizer, TokenizerError, load_tokenizer, tokenizer_for_version, train_tokenizer

UNICODE_SAMPLES = [
    "",
    "plain ASCII, with punctuation: (a+b)*c = d; 'quotes' \"double\" `tick`",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nwindows\rline\nendings\n\n\n",
    "emoji 👋🏽 👩‍👩‍👧‍👦 🏳️‍🌈 🇯🇵 and a lone ZWJ \u200d",
    "CJK 日本語のテキスト 中文文本 한국어 텍스트",
    "combining marks: e\u0301 a\u0308\u0323 \u0915\u094d\u0937 Z\u0351\u0362\u0356",
    "control chars \x01\x02\x07\x08\x0b\x0c\x1b[31m\x1f\x7f\x80\x9f end",
    "RTL: שלום עולם مرحبا بالعالم",
    "specials: \ufeff BOM, \u2028 line sep, \u2029 para sep, \ufffd replacement, \U0010fffd private",
    "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∀x∈ℝ: x²≥0 and ﬁ ligature",
    "def f(x):\n    return {'k': [1, 2, 3]}  # code\n",
]


def _texts(n: int = 150) -> list[str]:
    return [doc(i, 30 + i % 40) for i in range(n)] + UNICODE_SAMPLES


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(_texts(), tmp_path_factory.mktemp("tok") / "t", vocab_size=512,
                           corpus={"kind": "test"})


# Sources in runs: a a a b b a (three runs), with Unicode in some documents.
ROWS = ([("a", doc(i, 60)) for i in range(3)] + [("b", UNICODE_SAMPLES[4] + doc(10 + i, 50)) for i in range(2)]
        + [("a", UNICODE_SAMPLES[5] + doc(20, 80))])


@pytest.fixture
def store(tmp_path) -> VersionStore:
    store = VersionStore(tmp_path / "store")
    publish_rows(store, "v1", ROWS)
    return store


# ---- tokenizer ----------------------------------------------------------------------------------


def test_trained_tokenizer_record_and_files(tok):
    assert tok.eot_id == 0 and tok.vocab_size == 512
    folder = tok.path.parent
    assert tok.path.name == "tokenizer.json" and (folder / "tokenizer_meta.json").exists()
    meta = json.loads((folder / "tokenizer_meta.json").read_text())
    assert meta["hash"] == tok.hash == T.canonical_hash(tok.path.read_bytes())
    assert meta["vocab_size"] == 512 and meta["eot_id"] == 0 and meta["corpus"] == {"kind": "test"}
    assert meta["created_at"] and meta["trained_on"]["docs"] == len(_texts())
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    assert load_tokenizer(folder) == tok == load_tokenizer(tok.path)
    assert len(pickle.dumps(tok)) < 1000 and pickle.loads(pickle.dumps(tok)).encode("hello world") == \
        tok.encode("hello world")


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_round_trip_samples(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eot_id not in ids
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))  # exact bytes per token


def test_round_trip_random_unicode(tok):
    rng = np.random.default_rng(0)
    ranges = [(0x01, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF),
              (0x0300, 0x036F), (0x1F300, 0x1FAFF), (0x4E00, 0x9FFF)]
    texts = []
    for _ in range(300):
        chars = []
        for _ in range(int(rng.integers(1, 60))):
            lo, hi = ranges[int(rng.integers(len(ranges)))]
            chars.append(chr(int(rng.integers(lo, hi + 1))))
        texts.append("".join(chars))
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    for text, ids in zip(texts, batch):
        assert tok.decode(ids) == text
    assert tok.encode_batch([]) == []


def test_literal_eot_is_text_unless_allowed(tok):
    text = f"first doc{EOT}second doc"
    plain = tok.encode(text)
    assert tok.eot_id not in plain and tok.decode(plain) == text
    special = tok.encode(text, allow_special=True)
    assert special.count(tok.eot_id) == 1 and tok.decode(special) == text
    assert tok.encode_batch([text])[0] == plain
    # decode writes the EOT id back as its literal string
    assert tok.decode(tok.encode("a") + [tok.eot_id] + tok.encode("b")) == f"a{EOT}b"
    assert tok.token_bytes()[tok.eot_id] == 0


def test_hash_is_canonical_and_detects_changes(tok, tmp_path):
    data = json.loads(tok.path.read_text())
    (tmp_path / "reindented.json").write_text(json.dumps(data, indent=7))
    assert load_tokenizer(tmp_path / "reindented.json").hash == tok.hash  # formatting does not count
    data["model"]["merges"] = data["model"]["merges"][:-1]
    (tmp_path / "changed.json").write_text(json.dumps(data))
    assert load_tokenizer(tmp_path / "changed.json").hash != tok.hash
    # a record whose file changed after it was made refuses to load the new file
    copy = tmp_path / "copy.json"
    copy.write_bytes(tok.path.read_bytes())
    stale = Tokenizer(path=copy, hash="0" * 64, vocab_size=tok.vocab_size, eot_id=tok.eot_id)
    with pytest.raises(TokenizerError, match="does not match"):
        stale.encode("x")


def test_user_tokenizer_files(tmp_path):
    def make(special: list[str], path: Path) -> Path:
        hf = HF(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator([doc(i) for i in range(20)], trainer=trainer)
        hf.save(str(path))
        return path

    with pytest.raises(TokenizerError, match=r"no\.json.*<\|endoftext\|>"):
        load_tokenizer(make([], tmp_path / "no.json"))
    user = load_tokenizer(make(["<pad>", "<unk>", EOT], tmp_path / "yes.json"))
    assert user.eot_id == 2 and user.decode(user.encode("river mill")) == "river mill"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(TokenizerError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")


def test_tokenizer_for_version_trains_once(store, monkeypatch):
    tok = tokenizer_for_version(store, "v1", vocab_size=400)
    folder = Path(store.root) / "tokenizers" / "v1-v400"
    assert tok.path == folder / "tokenizer.json"
    corpus = tok.meta()["corpus"]
    assert corpus["version"] == "v1" and corpus["fingerprint"] == store.manifest("v1")["fingerprint"]
    assert corpus["sample"]["sampled_docs"] == len(ROWS)

    def boom(*args, **kwargs):
        raise AssertionError("retrained")

    monkeypatch.setattr(T, "train_tokenizer", boom)
    assert tokenizer_for_version(store, "v1", vocab_size=400) == tok


def test_version_text_sample_is_deterministic(tmp_path):
    store = VersionStore(tmp_path / "s")
    publish_rows(store, "big", [("a", doc(i, 100)) for i in range(200)])
    total = store.manifest("big")["size"]["bytes"]
    first = list(T.sample_version_text(store, "big", max_bytes=total // 4))
    again = list(T.sample_version_text(store, "big", max_bytes=total // 4))
    assert first == again and 0 < len(first) < 100
    assert 0.6 * total // 4 <= sum(len(t.encode()) for t in first) < total // 4 + 2000
    assert len(list(T.sample_version_text(store, "big", max_bytes=total))) == 200


# ---- token files --------------------------------------------------------------------------------


def test_tokenize_version_layout_and_eot(store, tok):
    tf = tokenize_version(store, "v1", tok)
    fp = store.manifest("v1")["fingerprint"]
    assert tf.dir == Path(store.root) / "tokens" / f"{fp[:16]}-{tok.hash[:16]}"
    assert tf.dtype == np.dtype("uint16") and tf.path.stat().st_size == 2 * tf.n_tokens
    tokens = tf.tokens()
    assert isinstance(tokens, np.memmap) and not tokens.flags.writeable
    starts, lengths = tf.doc_starts(), tf.doc_lengths()
    assert tf.n_docs == len(ROWS) == len(starts) and starts[0] == 0
    for (_, text), s, n in zip(ROWS, starts, lengths):
        assert tokens[s:s + n].tolist() == tok.encode(text) + [tok.eot_id]  # EOT after every document
    assert int((tokens == tok.eot_id).sum()) == len(ROWS)
    meta = tf.meta
    assert meta["version"] == {"name": "v1", "fingerprint": fp, "store": store.url, "rows": len(ROWS)}
    assert meta["tokenizer"]["hash"] == meta["tokenizer_hash"] == tok.hash and meta["dtype"] == "uint16"
    assert meta["n_tokens"] == tf.n_tokens and meta["sources"] == ["a", "b"]
    assert tf.bytes_of_text == sum(len(t.encode()) for _, t in ROWS) == store.manifest("v1")["size"]["bytes"]
    assert int(tok.token_bytes()[tokens].sum()) == tf.bytes_of_text
    assert tf.tokens_and_bytes("b") == (int(lengths[3:5].sum()), sum(len(t.encode()) for src, t in ROWS if src == "b"))
    assert tf.tokens_and_bytes("a")[1] == sum(len(t.encode()) for src, t in ROWS if src == "a")
    assert not [p for p in tf.dir.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_tokenize_version_is_cached(store, tok, monkeypatch):
    first = tokenize_version(store, "v1", tok)
    mtime = first.path.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(D, "_write_token_dir", boom)
    monkeypatch.setattr(D, "_encode_rows", boom)
    second = tokenize_version(store, "v1", tok)
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert np.array_equal(second.tokens(), first.tokens())


def test_worker_processes_give_the_same_file(store, tok, tmp_path):
    inproc = tokenize_version(store, "v1", tok)
    pooled = tokenize_version(store, "v1", tok, workers=2, cache_dir=tmp_path / "c", batch_rows=2)
    assert pooled.meta["tokenize"]["mode"] == "processes x2"
    assert np.array_equal(pooled.tokens(), inproc.tokens())
    assert np.array_equal(pooled.doc_starts(), inproc.doc_starts())
    assert np.array_equal(pooled.doc_sources(), inproc.doc_sources())


def test_dtype_choice(store, tok, tmp_path):
    assert token_dtype(8192) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    big = Tokenizer(tok.path, tok.hash, 70000, tok.eot_id)  # as if the vocabulary were larger than 65,536
    tf = tokenize_version(store, "v1", big, cache_dir=tmp_path / "c")
    assert tf.dtype == np.uint32 and tf.meta["dtype"] == "uint32" and tf.path.stat().st_size == 4 * tf.n_tokens
    assert np.array_equal(tf.tokens(), tokenize_version(store, "v1", tok).tokens())


def test_source_ranges(store, tok):
    tf = tokenize_version(store, "v1", tok)
    starts = tf.doc_starts()
    ranges = tf.source_ranges()
    assert [r[0] for r in ranges] == ["a", "b", "a"]
    assert ranges[0][1] == 0 and ranges[-1][2] == tf.n_tokens
    assert all(ranges[i][2] == ranges[i + 1][1] for i in range(len(ranges) - 1))  # they tile the file
    assert ranges[1][1:] == (int(starts[3]), int(starts[5]))
    codes = tf.sources()
    assert len(codes) == tf.n_tokens
    for name, s, e in ranges:
        assert set(codes[s:e].tolist()) == {tf.source_names.index(name)}


def test_damaged_token_file_is_an_error(store, tok):
    tf = tokenize_version(store, "v1", tok)
    with open(tf.path, "r+b") as handle:
        handle.truncate(tf.path.stat().st_size - 2)
    with pytest.raises(TokenFileError, match="tokens.bin"):
        TokenFile.open(tf.dir)


def test_tokenize_evalset(store, tok, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "held.jsonl", [{"id": f"h{i}", "text": doc(100 + i, 50)} for i in range(5)])
    info = register_evalset(store, "held", [str(src)], source_name="held")
    tf = tokenize_evalset(store, "held", tok)
    assert tf.dir == Path(store.root) / "tokens" / f"evalset-held-{tok.hash[:16]}"
    assert tf.meta["evalset"]["fingerprint"] == info.fingerprint and tf.meta["tokenizer_hash"] == tok.hash
    assert tf.n_docs == 5 and tf.source_names == ["held"]
    assert tf.tokens()[:tf.doc_lengths()[0]].tolist() == tok.encode(doc(100, 50)) + [tok.eot_id]
    monkeypatch.setattr(D, "_write_token_dir", lambda *a, **k: pytest.fail("tokenised again"))
    assert tokenize_evalset(store, "held", tok).path == tf.path


# ---- windows ------------------------------------------------------------------------------------


def _brute_starts(n: int, block: int, stride: int, drop_last: bool) -> list[int]:
    need = block + 1 if drop_last else 2
    return [s for s in range(0, n, stride) if s + need <= n]


def test_windows_labels_and_stride():
    tokens = np.arange(23, dtype=np.uint16)
    w = Windows(tokens, block_size=4)
    assert len(w) == (23 - 4 - 1) // 4 + 1 == 5
    x, y = w[1]
    assert x.dtype == torch.int64 and x.tolist() == [4, 5, 6, 7] and y.tolist() == [5, 6, 7, 8]
    xb, yb = w.batch([0, 4, -1])
    assert xb.shape == yb.shape == (3, 4) and xb.dtype == yb.dtype == torch.int64
    assert torch.equal(yb[:, :-1], xb[:, 1:])  # y[t] == x[t+1]
    assert xb[1].tolist() == [16, 17, 18, 19] and yb[1].tolist() == [17, 18, 19, 20]  # 21, 22: dropped
    assert torch.equal(xb[2], xb[1])
    with pytest.raises(IndexError):
        w[5]

    overlap = Windows(tokens, block_size=4, stride=2)
    assert len(overlap) == (23 - 5) // 2 + 1 == 10
    a, _ = overlap[3]
    b, _ = overlap[4]
    assert a[2:].tolist() == b[:2].tolist()  # consecutive windows share block_size - stride tokens


def test_windows_drop_last_false_pads_the_tail():
    w = Windows(np.arange(23), block_size=4, drop_last=False, pad_id=0)
    assert len(w) == 6  # ceil((23 - 1) / 4)
    x, y = w[5]
    assert x.tolist() == [20, 21, 22, 0] and y.tolist() == [21, 22, IGNORE_INDEX, IGNORE_INDEX]
    targets = torch.cat([w[i][1] for i in range(len(w))])
    assert sorted(t for t in targets.tolist() if t != IGNORE_INDEX) == list(range(1, 23))  # each token once


@pytest.mark.parametrize("n", [0, 1, 2, 5, 6, 17, 40])
@pytest.mark.parametrize("block,stride", [(1, 1), (4, 4), (4, 2), (4, 3), (5, 7)])
def test_window_count_formula(n, block, stride):
    tokens = np.arange(n)
    for drop_last in (True, False):
        w = Windows(tokens, block, stride, drop_last=drop_last)
        assert w.starts().tolist() == _brute_starts(n, block, stride, drop_last)
        if len(w):
            x, y = w.batch(np.arange(len(w)))
            assert x.shape == (len(w), block)
            for i, s in enumerate(w.starts().tolist()):
                real = min(block, n - s - 1)
                assert y[i, :real].tolist() == list(range(s + 1, s + 1 + real))


def test_windows_accept_token_files_and_tensors(store, tok):
    tf = tokenize_version(store, "v1", tok)
    w = Windows(tf, 16)
    assert len(w) == (tf.n_tokens - 17) // 16 + 1
    assert w[0][0].tolist() == tf.tokens()[:16].tolist()
    assert len(Windows(torch.arange(10), 3)) == 3


# ---- sampler ------------------------------------------------------------------------------------


def _take(sampler: EpochSampler, batch: int, start: int, end: int) -> list[tuple[int, list[int]]]:
    return [(s, i.tolist()) for s, i in sampler.batches(batch, start_step=start, end_step=end)]


def test_sampler_is_reproducible_and_seeded():
    a, b, c = EpochSampler(10, seed=1), EpochSampler(10, seed=1), EpochSampler(10, seed=2)
    assert _take(a, 4, 0, 12) == _take(b, 4, 0, 12) != _take(c, 4, 0, 12)
    for epoch in range(3):
        assert np.array_equal(a.permutation(epoch), np.random.default_rng([1, epoch]).permutation(10))
    # the stream is the concatenation of the epochs' permutations; a batch may span two epochs
    stream = np.concatenate([a.permutation(e) for e in range(5)])
    assert _take(a, 4, 2, 3)[0][1] == stream[8:12].tolist()
    # each epoch visits every window once
    assert sorted(sum((i for _, i in _take(EpochSampler(12, seed=3), 4, 3, 6)), [])) == list(range(12))


def test_sampler_resumes_exactly():
    sampler = EpochSampler(37, seed=7)
    full = _take(sampler, 8, 0, 30)
    for k in (0, 1, 4, 5, 29):
        assert _take(EpochSampler(37, seed=7), 8, k, 30) == full[k:]
    gen = sampler.batches(8, start_step=3)
    assert [next(gen)[0] for _ in range(3)] == [3, 4, 5]  # open-ended by default


def test_ddp_shards_partition_the_global_batch():
    sampler = EpochSampler(50, seed=0)
    for world in (1, 2, 4):
        shards = [sampler.shard(r, world) for r in range(world)]
        for step in range(10):
            parts = [s.batch_at(step, 8) for s in shards]
            assert np.array_equal(np.concatenate(parts), sampler.global_batch(step, 8))
            assert all(len(p) == 8 // world for p in parts)
        per_rank = [_take(s, 8, 2, 6) for s in shards]
        assert [x[0] for x in per_rank[0]] == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="divisible"):
        next(sampler.shard(0, 3).batches(8))
    with pytest.raises(ValueError):
        sampler.shard(2, 2)


def test_sampler_needs_windows():
    with pytest.raises(ValueError, match="no windows"):
        EpochSampler(0)


# ---- evaluation windows -------------------------------------------------------------------------


def test_fixed_eval_windows(store, tok):
    tf = tokenize_version(store, "v1", tok)
    block = 8
    ev = fixed_eval_windows(tf, 80, block, seed=0)
    assert isinstance(ev, FixedWindows) and len(ev) == 10 and ev.block_size == block
    again = fixed_eval_windows(tf, 80, block, seed=0)
    assert np.array_equal(ev.starts(), again.starts())
    assert not np.array_equal(ev.starts(), fixed_eval_windows(tf, 80, block, seed=1).starts())
    starts = ev.starts()
    assert np.all(np.diff(starts) >= block) and starts.max() + block + 1 <= tf.n_tokens  # no shared target
    x, y = ev.batch(np.arange(len(ev)))
    assert torch.equal(x[:, 1:], y[:, :-1]) and x[0].tolist() == tf.tokens()[starts[0]:starts[0] + block].tolist()
    everything = fixed_eval_windows(tf, 10**9, block)
    assert len(everything) == (tf.n_tokens - 1) // block  # all there are when more are asked for


def test_per_source_eval_windows(store, tok):
    tf = tokenize_version(store, "v1", tok)
    block = 8
    per = per_source_eval_windows(tf, 40, block, seed=0)
    assert set(per) == {"a", "b"}
    codes = tf.sources()
    for name, ev in per.items():
        assert len(ev) == 5 and ev.name == name
        code = tf.source_names.index(name)
        for s in ev.starts().tolist():
            assert set(codes[s:s + block + 1].tolist()) == {code}  # every token of the window is this source's
    with pytest.raises(ValueError, match="no source"):
        fixed_eval_windows(tf, 40, block, source="zzz")
    with pytest.raises(ValueError, match="too short"):
        fixed_eval_windows(tf, 40, 10**6)


# ---- boundaries ---------------------------------------------------------------------------------


def test_training_never_imports_prefect_or_curation_steps():
    code = ("import sys, training.tokenizer, training.data, training.runs, training.ablation\n"
            "import training.ablation_report\n"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'prefect' or m.startswith('curation.steps')"
            " or m in ('curation.dedup', 'curation.pipeline', 'curation.classifier', 'flows')]\n"
            "assert not bad, bad\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr


def test_remote_store_needs_a_local_cache_dir(tok, tmp_path):
    store = VersionStore(f"memory://train-{uuid.uuid4().hex}")
    publish_rows(store, "m", ROWS)
    with pytest.raises(Exception, match="cache_dir"):
        tokenize_version(store, "m", tok)
    tf = tokenize_version(store, "m", tok, cache_dir=tmp_path / "cache")
    assert tf.dir.parent == tmp_path / "cache" / "tokens" and tf.n_docs == len(ROWS)
    assert tokenizer_for_version(store, "m", 300, cache_dir=tmp_path / "cache").vocab_size <= 300


def test_reregistered_evalset_is_tokenised_again(store, tok, tmp_path):
    first = write_jsonl(tmp_path / "one.jsonl", [{"id": "x", "text": doc(1)}])
    register_evalset(store, "e", [str(first)])
    old = tokenize_evalset(store, "e", tok)
    shutil.rmtree(Path(store.root) / "evalsets" / "e")
    second = write_jsonl(tmp_path / "two.jsonl", [{"id": "y", "text": doc(2)}, {"id": "z", "text": doc(3)}])
    info = register_evalset(store, "e", [str(second)])
    new = tokenize_evalset(store, "e", tok)
    assert new.dir == old.dir and new.n_docs == 2 and new.meta["evalset"]["fingerprint"] == info.fingerprint
