"""Character data (maskjax/data/text/chars.py): text8 cleaning, MD4's ids, wrapped blocks, the
train / held-out split, and the pipeline's determinism, per-process sharding and resumable state.

References: text8's ``wikifil.pl`` rules (lowercase, digits spelled out, every other non-letter a
space, runs of spaces collapsed) checked on hand-made strings, and a numpy transcription of MD4's
``input_pipeline.Text8Tokenizer`` (``ord(c) - 97``, negatives -> 26; decode maps 26 back to space).
"""
from __future__ import annotations

import numpy as np
import pytest

from maskjax.data.text import chars
from maskjax.data.text.pipeline import make_text_pipeline


def md4_encode(text: str) -> np.ndarray:
    """MD4's ``Text8Tokenizer.encode`` (input_pipeline.py)."""
    tokens = np.array([i - 97 for i in text.encode("utf-8")], dtype=np.int32)
    return np.where(tokens < 0, 26, tokens)


def md4_decode(tokens: np.ndarray) -> str:
    """MD4's ``Text8Tokenizer.decode``."""
    tokens = np.where(np.equal(tokens, 26), 32 - 97, tokens) + 97
    return tokens.astype(np.uint8).tobytes().decode("utf-8")


def test_text8_cleaning_by_hand():
    assert chars.clean_text8("Hello, World! It's 1999.") == "hello world it s one nine nine nine"
    assert chars.clean_text8("  tabs\tand\nnew-lines --  x ") == "tabs and new lines x"
    assert chars.clean_text8("Caf\u00e9 NO\u00cbL") == "caf no l"                # non-ASCII letters are not letters
    assert chars.clean_text8("R2-D2", spell_digits=False) == "r d"
    assert chars.clean_text8("...!!!") == ""
    text = " = Homarus = \n The lobster <unk> is 1 @,@ 000 m . \n = = Biology = = \n It swims . \n"
    assert chars.clean_document(text, "wikitext") == "the lobster is one zero zero zero m it swims"
    assert chars.clean_document(text, "plain").startswith("homarus the lobster unk is")
    with pytest.raises(ValueError, match="doc_format"):
        chars.clean_document("x", "markdown")


def test_ids_are_md4_text8_tokenizer_ids():
    assert chars.ALPHABET == "abcdefghijklmnopqrstuvwxyz " and chars.VOCAB_SIZE == 27 and chars.SPACE_ID == 26
    text = chars.clean_text8("The quick brown fox jumps over the lazy dog, 42 times!")
    ids = chars.encode(text)
    np.testing.assert_array_equal(ids, md4_encode(text))
    assert md4_decode(ids) == chars.decode(ids) == text
    assert chars.decode([0, 25, 26, 27]) == "az _"                           # a leftover mask id prints as _
    with pytest.raises(ValueError, match="text8-clean"):
        chars.encode("Abc")


def test_word_starts_by_hand():
    np.testing.assert_array_equal(chars.word_starts(chars.encode("ab cd  e")[None])[0], [1, 0, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(chars.word_starts(chars.encode(" xy")), [0, 1, 0])


def test_the_shared_corpora_become_text8_streams(shared_data):
    shakespeare = chars.load_char_stream(shared_data / "tinyshakespeare" / "input.txt")
    wiki = chars.load_char_stream(shared_data / "wikitext2" / "valid.txt", "wikitext")
    for stream in (shakespeare, wiki):
        assert stream.dtype == np.uint8 and stream.min() >= 0 and stream.max() < 27
        assert not np.any((stream[1:] == 26) & (stream[:-1] == 26))         # spaces collapsed
        assert stream[0] != 26 and stream[-1] != 26
    assert chars.decode(shakespeare[:40]) == "first citizen before we proceed any furt"
    assert 1_000_000 < len(shakespeare) < 1_115_394                         # fewer than the raw characters
    assert " unk " not in chars.decode(wiki)                                # WikiText's <unk> are dropped
    assert chars.load_char_stream(shared_data / "tinyshakespeare" / "input.txt") is shakespeare   # cached


def test_blocks_wrap_the_stream():
    stream = chars.encode(chars.clean_text8("it was the best of times it was the worst of times " * 3))
    n, length = len(stream), 16
    blocks = chars.CharBlocks(stream, length)
    assert len(blocks) == n // length
    packed = np.concatenate([blocks[i]["input_ids"] for i in range(len(blocks))])
    np.testing.assert_array_equal(packed, stream[: n // length * length])    # the stream, cut every 16
    b = blocks[2]
    assert set(b) == {"input_ids", "segment_ids", "input_mask", "word_start"}
    assert all(v.dtype == np.int32 and v.shape == (length,) for v in b.values())
    np.testing.assert_array_equal(b["segment_ids"], 0)
    np.testing.assert_array_equal(b["input_mask"], 1)
    np.testing.assert_array_equal(b["word_start"], chars.word_starts(b["input_ids"]))
    np.testing.assert_array_equal(blocks[-1]["input_ids"], blocks[len(blocks) - 1]["input_ids"])
    with pytest.raises(IndexError):
        blocks[len(blocks)]
    windows = chars.CharBlocks(stream, length, stride=1)                     # MD4's overlapping text8 source
    assert len(windows) == n - length + 1
    for i in (0, 5, n - length):
        np.testing.assert_array_equal(windows[i]["input_ids"], stream[i:i + length])
    assert len(chars.CharBlocks(stream[:10], 16)) == 0


def test_split_is_contiguous_and_deterministic(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("One fish, two fish. Red fish, blue fish! " * 40)
    stream = chars.load_char_stream(path)
    train, held = chars.split_stream(stream, 0.25, "train"), chars.split_stream(stream, 0.25, "eval")
    np.testing.assert_array_equal(np.concatenate([train, held]), stream)
    assert len(train) == int(len(stream) * 0.75)
    data = chars.char_data_section(path=str(path), seq_len=32, heldout_fraction=0.25)
    tr, ev = chars.open_char_blocks(data, "train"), chars.open_char_blocks(data, "eval")
    np.testing.assert_array_equal(tr[0]["input_ids"], stream[:32])
    np.testing.assert_array_equal(ev[0]["input_ids"], held[:32])
    assert len(tr) == len(train) // 32 and len(ev) == len(held) // 32
    other = tmp_path / "b.txt"
    other.write_text("Second file for evaluation only. " * 10)
    data.eval_path = str(other)                                               # a held-out file instead
    np.testing.assert_array_equal(chars.open_char_blocks(data, "eval")[0]["input_ids"],
                                  chars.encode("second file for evaluation only second")[:32])
    assert len(chars.open_char_blocks(data, "train")) == len(stream) // 32    # all of path trains
    data.train_stride = 1
    assert len(chars.open_char_blocks(data, "train")) == len(stream) - 32 + 1
    with pytest.raises(ValueError, match="fewer than one block"):
        chars.open_char_blocks(chars.char_data_section(path=str(other), seq_len=4096), "train")


def _pipeline(blocks, **kw):
    kw = {"global_batch": 4, "train": True, "seed": 0, **kw}
    return make_text_pipeline(blocks, **kw)


def _ids(batch):
    return [tuple(row) for row in batch["input_ids"]]


def test_pipeline_is_deterministic_sharded_and_resumable():
    rng = np.random.default_rng(0)
    blocks = chars.CharBlocks(rng.integers(0, 27, 40 * 8).astype(np.uint8), 8)   # 40 distinct blocks
    first = lambda it, n: [_ids(next(it)) for _ in range(n)]
    a, b = first(iter(_pipeline(blocks)), 13), first(iter(_pipeline(blocks)), 13)
    assert a == b                                                               # same seed, same batches
    assert a != first(iter(_pipeline(blocks, seed=1)), 13)
    epoch = sorted(sum(a[:10], []))                                             # 10 batches of 4 = one epoch
    assert epoch == sorted(tuple(blocks[i]["input_ids"]) for i in range(40))
    assert a[10:] != a[:2]                                                      # reshuffled next epoch
    # Per-process shards: disjoint, together all blocks (one ordered pass each).
    shards = [sum((_ids(x) for x in _pipeline(blocks, train=False, process_index=p, process_count=2)), [])
              for p in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 20 and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == epoch
    # Resume: the state after 7 batches makes a fresh iterator continue exactly.
    it = iter(_pipeline(blocks))
    first(it, 7)
    state = it.get_state()
    rest = first(it, 6)
    resumed = iter(_pipeline(blocks))
    resumed.set_state(state)
    assert first(resumed, 6) == rest == a[7:13]


def test_the_chars_modality(tmp_path):
    import ml_collections

    from maskjax.data.modalities import get_modality

    path = tmp_path / "t.txt"
    path.write_text("To be, or not to be, that is the question. " * 30)
    modality = get_modality("chars")
    config = ml_collections.ConfigDict(dict(global_batch=8, data=chars.char_data_section(path=str(path), seq_len=16),
                                            model=dict(vocab_size=27)))
    spec = modality.batch_spec(config)
    assert {k: s.shape for k, s in spec.items()} == {k: (8, 16) for k in
                                                      ("input_ids", "segment_ids", "input_mask", "word_start")}
    fake = modality.synthetic_batch(config, spec)
    assert fake["input_ids"].shape == (8, 16) and 0 <= fake["input_ids"].min() and fake["input_ids"].max() < 27
    errors: list[str] = []
    modality.check(config, errors)
    assert errors == []
    source = modality.open_source(config, "train")
    batch = next(iter(modality.make_pipeline(config, source, train=True)))
    assert batch["input_ids"].shape == (8, 16)
    inputs, labels = modality.take_examples(config, modality.open_source(config, "eval"), [0, 1])
    assert inputs["input_ids"].shape == (2, 16) and labels.shape == (2,)
    bad = ml_collections.ConfigDict(dict(global_batch=8, model=dict(vocab_size=50257), data=chars.char_data_section(
        path=str(tmp_path / "missing.txt"), doc_format="html", heldout_fraction=1.5, train_stride=0)))
    errors = []
    modality.check(bad, errors)
    for needle in ("matches no file", "doc_format", "heldout_fraction", "train_stride", "vocab_size"):
        assert any(needle in e for e in errors), (needle, errors)
