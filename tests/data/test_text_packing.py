"""Tests for maskjax.data.text.packing: contiguous blocks, BERT NSP pairs, unigram counts."""
from __future__ import annotations

import collections
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskjax.data.text.packing import (
    BlockPacker,
    PackedBlocks,
    nsp_pairs,
    pack_blocks,
    unigram_counts,
)

CLS, SEP, PAD = 101, 102, 0
SPECIALS = (PAD, 100, CLS, SEP, 103)

docs_strategy = st.lists(
    st.lists(st.tuples(st.integers(1000, 1050), st.booleans()), min_size=0, max_size=40),
    min_size=0,
    max_size=8,
)


def _as_docs(raw):
    return [(np.asarray([t for t, _ in d], np.int32), np.asarray([s for _, s in d])) for d in raw]


def _check_block_layout(blocks, seq_len):
    ids, mask, ws, seg = (blocks[k] for k in ("input_ids", "input_mask", "word_start", "segment_ids"))
    assert all(v.dtype == np.int32 and v.shape == ids.shape for v in (mask, ws, seg))
    assert ids.shape[1:] == (seq_len,)
    lengths = mask.sum(1)
    for r in range(len(ids)):
        n = int(lengths[r])
        assert mask[r].tolist() == [1] * n + [0] * (seq_len - n)  # real tokens first
        assert ids[r, 0] == CLS and ids[r, n - 1] == SEP and n >= 3
        assert (ids[r, n:] == PAD).all() and (ws[r, n:] == 0).all()
        assert ws[r, 0] == 1 and ws[r, n - 1] == 1


@settings(max_examples=150, deadline=None)
@given(raw=docs_strategy, seq_len=st.integers(3, 24), separator=st.booleans(), min_last=st.integers(1, 10))
def test_pack_blocks_property(raw, seq_len, separator, min_last):
    docs = _as_docs(raw)
    blocks = pack_blocks(docs, seq_len, CLS, SEP, PAD, doc_separator=separator, min_last_tokens=min_last)
    _check_block_layout(blocks, seq_len)
    assert (blocks["segment_ids"] == 0).all()
    # The stream the blocks must reproduce, built independently.
    stream, starts = [], []
    for ids, ws in (d for d in docs if len(d[0])):
        if separator and stream:
            stream.append(SEP)
            starts.append(True)
        stream += ids.tolist()
        starts += ws.tolist()
    body = seq_len - 2
    got_ids, got_ws = [], []
    for r in range(len(blocks["input_ids"])):
        n = int(blocks["input_mask"][r].sum())
        got_ids += blocks["input_ids"][r, 1 : n - 1].tolist()
        got_ws += blocks["word_start"][r, 1 : n - 1].tolist()
        if r < len(blocks["input_ids"]) - 1:
            assert n - 2 == body  # only the last block may be short
    assert got_ids == stream[: len(got_ids)]
    assert got_ws == [int(s) for s in starts[: len(got_ws)]]
    dropped = len(stream) - len(got_ids)
    assert 0 <= dropped < body and (dropped == 0 or dropped < min_last)


def test_block_packer_streaming_equals_one_shot():
    rng = np.random.default_rng(0)
    docs = [(rng.integers(1000, 2000, rng.integers(0, 90)), rng.random(90) < 0.7) for _ in range(60)]
    docs = [(ids, ws[: len(ids)]) for ids, ws in docs]
    whole = pack_blocks(docs, 32, CLS, SEP, PAD)
    packer = BlockPacker(32, CLS, SEP, PAD)
    parts = []
    for ids, ws in docs:
        packer.add(ids, ws)
        parts.append(packer.pop_full())
    parts.append(packer.finish())
    for k in whole:
        assert np.array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_pack_blocks_validation():
    with pytest.raises(ValueError, match="seq_len"):
        pack_blocks([], 2, CLS, SEP, PAD)
    with pytest.raises(ValueError, match="differ in length"):
        pack_blocks([([1, 2, 3], [True])], 8, CLS, SEP, PAD)
    assert pack_blocks([], 8, CLS, SEP, PAD)["input_ids"].shape == (0, 8)


# --- BERT reference: create_instances_from_document + truncate_seq_pair, transcribed from
# google-research/bert create_pretraining_data.py (lists of tokens, masking left out). ---
def _bert_truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng):
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_num_tokens:
            break
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def _bert_instances_from_document(all_documents, document_index, max_seq_length, short_seq_prob, rng):
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk, current_length, i = [], 0, 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = [t for j in range(a_end) for t in current_chunk[j]]
                tokens_b = []
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    i -= len(current_chunk) - a_end
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                _bert_truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                tokens = [CLS] + tokens_a + [SEP] + tokens_b + [SEP]
                instances.append((tokens, int(is_random_next)))
            current_chunk, current_length = [], 0
        i += 1
    return instances


def _bert_reference(documents, max_seq_length, short_seq_prob, seed, dupe_factor):
    rng = random.Random(seed)
    all_documents = [list(d) for d in documents]
    rng.shuffle(all_documents)
    instances = []
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(_bert_instances_from_document(all_documents, document_index, max_seq_length,
                                                           short_seq_prob, rng))
    rng.shuffle(instances)
    return instances


def _unique_token_docs(seed, n_docs=60, sentences_per_doc=(1, 14), sentence_len=(1, 13)):
    """Documents whose tokens are all distinct (token -> (doc, position) is a bijection)."""
    rng = np.random.default_rng(seed)
    docs, where, next_id = [], {}, 1000
    for d in range(n_docs):
        sentences, pos = [], 0
        for _ in range(int(rng.integers(*sentences_per_doc))):
            n = int(rng.integers(*sentence_len))
            ids = list(range(next_id, next_id + n))
            for t in ids:
                where[t] = (d, pos)
                pos += 1
            next_id += n
            sentences.append(ids)
        docs.append(sentences)
    return docs, where


def _with_word_starts(docs):
    """Adds word starts: the 2nd, 5th, ... token of each sentence is a continuation piece."""
    return [[(np.asarray(s, np.int32), np.asarray([k % 3 != 1 for k in range(len(s))])) for s in d] for d in docs]


def _word_start(docs, token):
    for d in docs:
        for s in d:
            if s[0] <= token <= s[-1]:
                return (token - s[0]) % 3 != 1
    raise KeyError(token)


@pytest.mark.parametrize("short_seq_prob", [0.0, 0.1, 0.5])
def test_nsp_matches_bert_reference(short_seq_prob):
    docs, _ = _unique_token_docs(1)
    out = nsp_pairs(_with_word_starts(docs), 40, CLS, SEP, PAD, short_seq_prob=short_seq_prob, seed=7,
                    dupe_factor=2)
    ref = _bert_reference(docs, 40, short_seq_prob, seed=7, dupe_factor=2)
    assert len(out["input_ids"]) == len(ref) > 50
    for r, (tokens, label) in enumerate(ref):
        n = int(out["input_mask"][r].sum())
        assert out["input_ids"][r, :n].tolist() == tokens
        assert out["nsp_label"][r] == label


def test_nsp_pair_structure_and_continuations():
    # Long documents of short sentences: few one-sentence chunks, which BERT always pairs with a
    # random B, so the label rate is close to 1/2.
    docs, where = _unique_token_docs(2, n_docs=80, sentences_per_doc=(8, 20), sentence_len=(2, 9))
    seq_len = 32
    out = nsp_pairs(_with_word_starts(docs), seq_len, CLS, SEP, PAD, seed=3, dupe_factor=3)
    labels = out["nsp_label"]
    assert out["input_ids"].shape == (len(labels), seq_len) and labels.dtype == np.int32
    assert len(labels) > 400
    # Random B about half the time (a bit more: BERT forces it for one-sentence chunks).
    assert 0.48 < labels.mean() < 0.62
    _check_block_layout(out, seq_len)
    n_adjacent = 0
    for r in range(len(labels)):
        ids, seg, ws = out["input_ids"][r], out["segment_ids"][r], out["word_start"][r]
        n = int(out["input_mask"][r].sum())
        seps = np.flatnonzero(ids[:n] == SEP).tolist()
        assert len(seps) == 2 and seps[1] == n - 1
        a, b = ids[1 : seps[0]].tolist(), ids[seps[0] + 1 : n - 1].tolist()
        assert a and b and len(a) + len(b) <= seq_len - 3
        assert seg[: seps[0] + 1].tolist() == [0] * (seps[0] + 1)
        assert seg[seps[0] + 1 : n].tolist() == [1] * (n - seps[0] - 1) and (seg[n:] == 0).all()
        # word starts travel with their tokens (see _with_word_starts)
        assert ws[1 : seps[0]].tolist() == [int(_word_start(docs, t)) for t in a]
        assert ws[seps[0] + 1 : n - 1].tolist() == [int(_word_start(docs, t)) for t in b]
        (da, pa), (db, pb) = where[a[0]], where[b[0]]
        # each segment is a contiguous run of one document's text
        assert [where[t] for t in a] == [(da, pa + k) for k in range(len(a))]
        assert [where[t] for t in b] == [(db, pb + k) for k in range(len(b))]
        if labels[r] == 0:  # IsNext: B follows A in the same document
            assert db == da and pb > pa + len(a) - 1
            if len(a) + len(b) < seq_len - 3:  # nothing was trimmed: B starts right after A
                assert pb == pa + len(a)
                n_adjacent += 1
        else:
            assert db != da
    assert n_adjacent > 10


def test_nsp_seed_and_validation():
    docs = _with_word_starts(_unique_token_docs(4)[0])
    a = nsp_pairs(docs, 24, CLS, SEP, PAD, seed=1)
    b = nsp_pairs(docs, 24, CLS, SEP, PAD, seed=1)
    c = nsp_pairs(docs, 24, CLS, SEP, PAD, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["input_ids"], c["input_ids"])
    with pytest.raises(ValueError, match="seq_len"):
        nsp_pairs(docs, 4, CLS, SEP, PAD)
    with pytest.raises(ValueError, match="short_seq_prob"):
        nsp_pairs(docs, 24, CLS, SEP, PAD, short_seq_prob=1.5)
    assert nsp_pairs([[]], 24, CLS, SEP, PAD)["nsp_label"].shape == (0,)


def test_unigram_counts():
    rng = np.random.default_rng(5)
    docs = [(rng.integers(98, 110, rng.integers(1, 30)), np.ones(30, bool)) for _ in range(20)]
    docs = [(ids, ws[: len(ids)]) for ids, ws in docs]
    # No separators and no dropped tail: every document token lands in a block.
    blocks = pack_blocks(docs, 16, CLS, SEP, PAD, doc_separator=False, min_last_tokens=1)
    counts = unigram_counts(blocks, 120, special_ids=SPECIALS)
    expected = collections.Counter()
    for ids, _ in docs:
        expected.update(int(t) for t in ids if t not in SPECIALS)
    assert counts.dtype == np.float64 and counts.shape == (120,)
    assert counts.tolist() == [float(expected[t]) for t in range(120)]
    assert all(counts[t] == 0 for t in SPECIALS) and counts.sum() > 100
    packed = PackedBlocks(blocks, {"special_ids": list(SPECIALS)})
    assert np.array_equal(unigram_counts(packed, 120), counts)  # special ids from the metadata
    with pytest.raises(ValueError, match="special_ids"):
        unigram_counts(blocks, 120)
