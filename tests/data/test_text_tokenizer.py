"""Tests for maskjax.data.text.tokenizer: training, loading released-style vocabularies, word
starts, parity with transformers' BERT tokenizers, pickling and the vocab cache."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from maskjax.data.text import tokenizer as tokmod
from maskjax.data.text.convert import main_train_tokenizer
from maskjax.data.text.tokenizer import (
    SPECIAL_TOKENS,
    ensure_vocab,
    load_tokenizer,
    train_wordpiece,
)

SLICE_LINES = 700


@pytest.fixture(scope="module")
def wiki_lines(shared_data):
    """Non-empty lines of WikiText-2 valid.txt."""
    with open(shared_data / "wikitext2" / "valid.txt", encoding="utf-8") as f:
        return [l.strip() for l in f if l.strip()]


@pytest.fixture(scope="module")
def wiki_slice(shared_data, tmp_path_factory):
    """The first lines of valid.txt as a training file."""
    path = tmp_path_factory.mktemp("tok") / "slice.txt"
    with open(shared_data / "wikitext2" / "valid.txt", encoding="utf-8") as f:
        path.write_text("".join(f.readlines()[:SLICE_LINES]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_vocab(wiki_slice):
    return train_wordpiece([wiki_slice], 2000, wiki_slice.parent / "vocab.txt")


def test_trained_vocab_layout_and_determinism(trained_vocab, wiki_slice, tmp_path):
    lines = open(trained_vocab, encoding="utf-8").read().splitlines()
    assert lines[:5] == list(SPECIAL_TOKENS)  # [PAD] [UNK] [CLS] [SEP] [MASK] = 0..4
    assert 100 < len(lines) <= 2000
    assert len(set(lines)) == len(lines)
    assert any(l.startswith("##") and len(l) > 3 for l in lines)  # learned continuation pieces
    again = train_wordpiece([wiki_slice], 2000, tmp_path / "again.txt")
    assert open(again, "rb").read() == open(trained_vocab, "rb").read()
    tok = load_tokenizer(trained_vocab)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == len(lines)


def test_rust_trainer_option(wiki_slice, tmp_path):
    path = train_wordpiece([wiki_slice], 500, tmp_path / "fast.txt", deterministic=False)
    tok = load_tokenizer(path)
    assert tok.special_ids == (0, 1, 2, 3, 4) and tok.vocab_size <= 500


def test_round_trip_and_word_starts(trained_vocab):
    tok = load_tokenizer(trained_vocab)
    text = "The European lobster , unaffable and conspicuous , was Caught in 1999 ."
    ids, start = tok.encode(text)
    assert ids.dtype == np.int32 and start.dtype == bool and ids.shape == start.shape
    assert tok.cls_id not in ids and tok.sep_id not in ids  # no specials added
    pieces = [tok.id_to_token(i) for i in ids]
    assert any(p.startswith("##") for p in pieces)  # the rare words are split
    assert start.tolist() == [not p.startswith("##") for p in pieces]
    assert tok.unk_id not in ids
    assert tok.decode(ids).replace(" ", "") == text.lower().replace(" ", "")
    assert [tok.token_to_id(p) for p in pieces] == ids.tolist()


def test_word_starts_on_real_text(trained_vocab, wiki_lines):
    tok = load_tokenizer(trained_vocab)
    encoded = tok.encode_batch(wiki_lines[:300])
    n_cont = 0
    for ids, start in encoded:
        pieces = [tok.id_to_token(i) for i in ids]
        assert start.tolist() == [not p.startswith("##") for p in pieces]
        n_cont += int((~start).sum())
    assert n_cont > 100


def _bert_base_style_vocab(tmp_path):
    """Specials at the bert-base-uncased positions: [PAD]=0, [unusedK], [UNK]=100..[MASK]=103."""
    tokens = ["[PAD]"] + [f"[unused{k}]" for k in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += ["!", ",", ".", "a", "the", "hello", "un", "##aff", "##able", "lob", "##ster", "##s",
               "play", "##ing", "##b", "world"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path, {t: i for i, t in enumerate(tokens)}


def test_bert_base_layout_vocab(tmp_path):
    path, index = _bert_base_style_vocab(tmp_path)
    tok = load_tokenizer(path)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.special_ids == (0, 100, 101, 102, 103)
    ids, start = tok.encode("Hello, unaffable LOBSTERS playing zzz!")
    # Hand-computed greedy longest-match-first pieces; "zzz" has no piece -> [UNK].
    expected = ["hello", ",", "un", "##aff", "##able", "lob", "##ster", "##s", "play", "##ing",
                "[UNK]", "!"]
    assert ids.tolist() == [index[p] for p in expected]
    assert start.tolist() == [True, True, True, False, False, True, False, False, True, False, True, True]
    # Cased loading keeps "Hello", which this vocabulary does not contain.
    cased = load_tokenizer(path, lowercase=False)
    assert cased.encode("Hello world")[0].tolist() == [100, index["world"]]


def test_vocab_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        load_tokenizer(bad)
    dup = tmp_path / "dup.txt"
    dup.write_text("\n".join(list(SPECIAL_TOKENS) + ["a", "a"]) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="more than once"):
        dup_tok = load_tokenizer(dup)
    assert dup_tok.token_to_id("a") == 6 and dup_tok.vocab_size == 7  # last line wins, as BERT
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece([dup], 3, tmp_path / "v.txt")
    with pytest.raises(FileNotFoundError):
        train_wordpiece([tmp_path / "missing.txt"], 100, tmp_path / "v.txt")


def test_matches_transformers_tokenizers(trained_vocab, wiki_lines):
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    tok = load_tokenizer(trained_vocab)
    lines = wiki_lines[1000:1300]  # not the training slice
    ours = [ids.tolist() for ids, _ in tok.encode_batch(lines)]
    fast = transformers.BertTokenizerFast(vocab=str(trained_vocab), do_lower_case=True)
    assert fast(lines, add_special_tokens=False)["input_ids"] == ours
    # The pure-Python port of BERT's FullTokenizer is an independent implementation.
    legacy = BertTokenizerLegacy(vocab_file=str(trained_vocab), do_lower_case=True)
    assert [legacy.encode(l, add_special_tokens=False) for l in lines[:120]] == ours[:120]


def test_pickle_rebuilds_lazily(trained_vocab):
    tok = load_tokenizer(trained_vocab)
    before = tok.encode("the lobster moults")
    data = pickle.dumps(tok)
    clone = pickle.loads(data)
    assert clone._backend is None  # the Rust tokenizer is not shipped
    after = clone.encode("the lobster moults")
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert clone.special_ids == tok.special_ids


def test_ensure_vocab_caches(wiki_slice, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = ensure_vocab([wiki_slice], 800, cache)
    assert os.path.isfile(first)
    calls = []
    monkeypatch.setattr(tokmod, "train_wordpiece", lambda *a, **k: calls.append(a))
    assert ensure_vocab([wiki_slice], 800, cache) == first
    assert not calls  # served from the cache
    other = ensure_vocab([wiki_slice], 900, cache)
    assert other != first and len(calls) == 1  # a different size is a different key
    assert not [n for n in os.listdir(cache) if n.startswith(".tmp")]


def test_train_tokenizer_cli(wiki_slice, tmp_path, capsys):
    out = tmp_path / "cli_vocab.txt"
    assert main_train_tokenizer(["--input", str(wiki_slice), "--vocab-size", "600", "--output", str(out)]) == 0
    assert load_tokenizer(out).vocab_size <= 600
    assert main_train_tokenizer(["--input", str(tmp_path / "nope*.txt"), "--output", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
