"""Tests for maskjax.data.text.pipeline and convert: batches, sharding, shuffling, resume,
the .npz cache, the ArrayRecord round trip and the tokenize CLI."""
from __future__ import annotations

import itertools
import json
import os

import grain
import numpy as np
import pytest

from maskjax.data.text import convert as convert_mod
from maskjax.data.text import (
    ArrayRecordTextSource,
    PackedBlocks,
    TextFileSource,
    load_tokenizer,
    make_text_pipeline,
    open_text_source,
    prepare_text_blocks,
    tokenize_main,
    tokenize_to_array_record,
    train_wordpiece,
    unigram_counts,
)
from maskjax.data.text.sources import split_wikitext_sentences

N, L = 40, 8


def _indexed_blocks(nsp: bool = True) -> PackedBlocks:
    """Blocks whose token 1 is the block index, so batches reveal which blocks they hold."""
    ids = np.full((N, L), 7, np.int32)
    ids[:, 0], ids[:, 1], ids[:, -1] = 2, np.arange(N) + 1000, 3
    arrays = {
        "input_ids": ids,
        "segment_ids": np.zeros((N, L), np.int32),
        "input_mask": np.ones((N, L), np.int32),
        "word_start": np.ones((N, L), np.int32),
    }
    if nsp:
        arrays["nsp_label"] = (np.arange(N) % 2).astype(np.int32)
    return PackedBlocks(arrays, {"special_ids": [0, 1, 2, 3, 4]})


def _pipeline(source, **kw):
    args = dict(global_batch=8, train=True, seed=3, process_index=0, process_count=1)
    args.update(kw)
    return make_text_pipeline(source, **args)


def _ids(batches):
    return [(b["input_ids"][:, 1] - 1000).tolist() for b in batches]


def test_batch_format():
    batch = next(iter(_pipeline(_indexed_blocks())))
    assert set(batch) == {"input_ids", "segment_ids", "input_mask", "word_start", "nsp_label"}
    for k in ("input_ids", "segment_ids", "input_mask", "word_start"):
        assert batch[k].shape == (8, L) and batch[k].dtype == np.int32
    assert batch["nsp_label"].shape == (8,) and batch["nsp_label"].dtype == np.int32
    assert np.array_equal(batch["nsp_label"], (batch["input_ids"][:, 1] - 1000) % 2)  # rows intact
    assert "nsp_label" not in next(iter(_pipeline(_indexed_blocks(nsp=False))))


def test_epochs_reshuffle_and_eval_is_ordered():
    it = iter(_pipeline(_indexed_blocks()))
    epochs = [sum(_ids([next(it) for _ in range(N // 8)]), []) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(N))  # each epoch sees all once
    assert epochs[0] != epochs[1] and epochs[0] != list(range(N))
    again = iter(_pipeline(_indexed_blocks()))
    assert sum(_ids([next(again) for _ in range(N // 8)]), []) == epochs[0]  # same seed, same order
    other = iter(_pipeline(_indexed_blocks(), seed=4))
    assert sum(_ids([next(other) for _ in range(N // 8)]), []) != epochs[0]
    evals = list(itertools.islice(_pipeline(_indexed_blocks(), train=False), 100))
    assert sum(_ids(evals), []) == list(range(N))  # one ordered pass


def test_resume_from_state():
    ds = _pipeline(_indexed_blocks())
    it = iter(ds)
    for _ in range(7):  # crosses an epoch boundary
        next(it)
    state = it.get_state()
    json.dumps(state)  # small and JSON-able, as stored next to a checkpoint
    expected = [next(it) for _ in range(3)]
    resumed = iter(ds)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("train", [True, False])
def test_processes_see_disjoint_data(train):
    seen = []
    for process_index in (0, 1):
        ds = _pipeline(_indexed_blocks(), train=train, num_epochs=1, process_index=process_index,
                       process_count=2)
        batches = list(itertools.islice(ds, 100))
        assert len(batches) == N // 8 and all(b["input_ids"].shape == (4, L) for b in batches)
        seen.append(set(sum(_ids(batches), [])))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(N))


class _ZeroSegments(grain.transforms.RandomMap):
    def random_map(self, element, rng):
        element = dict(element)
        element["segment_ids"] = np.full_like(element["segment_ids"], rng.integers(5, 9))
        return element


class _ZeroInPlace(grain.transforms.Map):
    def map(self, element):
        element["input_ids"][:] = 0  # as an in-place masking transform might
        return element


def test_transforms_and_validation():
    batch = next(iter(_pipeline(_indexed_blocks(), transforms=[_ZeroSegments()])))
    assert ((batch["segment_ids"] >= 5) & (batch["segment_ids"] < 9)).all()
    blocks = _indexed_blocks()
    batch = next(iter(_pipeline(blocks, transforms=[_ZeroInPlace()])))
    assert (batch["input_ids"] == 0).all()
    assert blocks.arrays["input_ids"][:, 1].tolist() == list(range(1000, 1000 + N))  # source intact
    with pytest.raises(ValueError, match="divisible"):
        _pipeline(_indexed_blocks(), global_batch=7, process_count=2)
    with pytest.raises(ValueError, match="fewer than its batch"):
        _pipeline(_indexed_blocks(), global_batch=64)
    with pytest.raises(ValueError, match="process_index"):
        _pipeline(_indexed_blocks(), process_index=2, process_count=2)


@pytest.fixture(scope="module")
def wiki(shared_data, tmp_path_factory):
    """A WikiText slice (a few articles) and a vocabulary trained on it."""
    base = tmp_path_factory.mktemp("textpipe")
    text = base / "slice.txt"
    with open(shared_data / "wikitext2" / "valid.txt", encoding="utf-8") as f:
        text.write_text("".join(f.readlines()[:400]), encoding="utf-8")
    vocab = train_wordpiece([text], 1500, base / "vocab.txt")
    return text, vocab


def test_prepare_text_blocks_and_cache(wiki, tmp_path, monkeypatch):
    text, vocab = wiki
    cache = tmp_path / "cache"
    blocks = prepare_text_blocks("text", path=text, vocab_path=vocab, seq_len=64, doc_format="wikitext",
                                 cache_dir=cache)
    tok = load_tokenizer(vocab)
    assert len(blocks) > 20 and blocks.seq_len == 64 and not blocks.has_nsp
    assert (blocks.arrays["input_ids"][:, 0] == tok.cls_id).all()
    # The blocks hold the corpus' tokens in order: the first block's words open the first article.
    first = tok.decode(blocks[0]["input_ids"], skip_special_tokens=True)
    assert first.startswith("homarus gammarus, known as the european lobster")
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".npz")

    def fail(*a, **k):
        raise AssertionError("tokenized again instead of using the cache")

    monkeypatch.setattr(convert_mod, "tokenize_documents", fail)
    cached = prepare_text_blocks("text", path=text, vocab_path=vocab, seq_len=64, doc_format="wikitext",
                                 cache_dir=cache)
    assert all(np.array_equal(cached.arrays[k], blocks.arrays[k]) for k in blocks.arrays)
    assert cached.special_ids == tok.special_ids
    counts = unigram_counts(cached, tok.vocab_size)
    assert counts[list(tok.special_ids)].sum() == 0 and counts.sum() > 1000
    with pytest.raises(AssertionError, match="tokenized again"):  # another seq_len is another key
        prepare_text_blocks("text", path=text, vocab_path=vocab, seq_len=32, doc_format="wikitext",
                            cache_dir=cache)
    with pytest.raises(ValueError, match="already packed"):
        prepare_text_blocks("array_record_text", path=cache, vocab_path=vocab, seq_len=64)


def test_prepare_nsp_blocks(wiki):
    text, vocab = wiki
    blocks = prepare_text_blocks("text", path=text, vocab_path=vocab, seq_len=64, nsp=True,
                                 doc_format="wikitext", seed=1)
    assert blocks.has_nsp and len(blocks) > 20
    labels = blocks.arrays["nsp_label"]
    assert set(labels.tolist()) == {0, 1}
    tok = load_tokenizer(vocab)
    # IsNext pairs of a wikitext article: both segments are sentence-split text from it.
    row = blocks[int(np.flatnonzero(labels == 0)[0])]
    assert (row["input_ids"] == tok.sep_id).sum() == 2 and row["segment_ids"].max() == 1
    batch = next(iter(make_text_pipeline(blocks, global_batch=4, train=True, seed=0, process_index=0,
                                         process_count=1)))
    assert batch["nsp_label"].shape == (4,)


@pytest.mark.parametrize("nsp", [False, True])
def test_array_record_round_trip(wiki, tmp_path, nsp):
    text, vocab = wiki
    in_memory = prepare_text_blocks("text", path=text, vocab_path=vocab, seq_len=48, nsp=nsp,
                                    doc_format="wikitext", seed=5)
    source = TextFileSource(text, doc_format="wikitext")
    meta = tokenize_to_array_record(source, load_tokenizer(vocab), tmp_path / "ar", 48, nsp=nsp,
                                    shard_size=25, seed=5,
                                    sentence_splitter=split_wikitext_sentences if nsp else None)
    assert meta["num_records"] == len(in_memory) and len(meta["shards"]) == -(-len(in_memory) // 25)
    stored = open_text_source("array_record_text", path=tmp_path / "ar")
    assert isinstance(stored, ArrayRecordTextSource) and len(stored) == len(in_memory)
    assert stored.has_nsp == nsp and stored.seq_len == 48
    for i in range(len(stored)):
        got, want = stored[i], in_memory[i]
        assert set(got) == set(want)
        assert all(np.array_equal(got[k], want[k]) and got[k].dtype == np.int32 for k in want)
    stored.check_vocab(vocab)
    other = tmp_path / "other_vocab.txt"
    other.write_text(open(vocab).read() + "extra\n")
    with pytest.raises(ValueError, match="not the vocabulary"):
        stored.check_vocab(other)
    batch = next(iter(make_text_pipeline(stored, global_batch=4, train=True, seed=0, process_index=0,
                                         process_count=1)))
    assert batch["input_ids"].shape == (4, 48)


def test_tokenize_cli(wiki, tmp_path, capsys):
    text, vocab = wiki
    out = tmp_path / "cli_out"
    rc = tokenize_main(["--vocab", str(vocab), "--input", str(text), "--doc-format", "wikitext",
                        "--seq-len", "32", "--nsp", "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["seq_len"] == 32 and meta["nsp"] and meta["num_records"] > 20
    assert meta["special_ids"] == list(load_tokenizer(vocab).special_ids)
    src = ArrayRecordTextSource(out)
    assert len(src) == meta["num_records"] and src[0]["input_ids"].shape == (32,)
    assert tokenize_main(["--vocab", str(vocab), "--input", str(tmp_path / "none.txt"), "--output", str(out)]) == 2
    assert tokenize_main(["--vocab", str(vocab), "--output", str(out)]) == 2
    assert "error:" in capsys.readouterr().err


def test_tfds_mock_prepare(wiki):
    tfds = pytest.importorskip("tensorflow_datasets")
    _, vocab = wiki
    with tfds.testing.mock_data(num_examples=20):
        blocks = prepare_text_blocks("tfds_text", name="lm1b", split="train", vocab_path=vocab, seq_len=16)
    assert len(blocks) >= 1 and blocks.arrays["input_ids"].shape[1] == 16


def test_worker_processes_resume(wiki, tmp_path):
    """Sources travel to grain worker processes (pickled) and the iterator still resumes."""
    text, vocab = wiki
    tokenize_to_array_record(TextFileSource(text, doc_format="wikitext"), vocab, tmp_path / "ar", 32)
    ds = make_text_pipeline(ArrayRecordTextSource(tmp_path / "ar"), global_batch=8, train=True, seed=1,
                            process_index=0, process_count=1, num_workers=1)
    it = iter(ds)
    next(it)
    state = it.get_state()
    want = next(it)
    resumed = iter(ds)
    resumed.set_state(state)
    got = next(resumed)
    assert all(np.array_equal(got[k], want[k]) for k in want)
