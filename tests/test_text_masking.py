"""BERT and ELECTRA masked-LM masking (specs/methods_text_gen.md sections 1a, 4a, 5, 6a, 13).

Expected values are written by hand or computed by numpy references written from the spec,
never by calling the code under test. Each jitted configuration is compiled once (the lru
caches below) and hypothesis varies only data, seeds and the traced rate.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from maskjax.masking import TokenMask, bert_mask, electra_mask, electra_max_predictions
from maskjax.masking.text import _greedy_fill

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
PAD, CLS, SEP, MASK = 0, 1, 2, 3
VOCAB = 1000


def make_batch(rng, lengths, seq_len, word_prob=0.6, first_id=10):
    """[CLS] tokens [SEP] [PAD]...: ids, input_mask, candidates, word_start as numpy arrays."""
    batch = len(lengths)
    ids = rng.integers(first_id, VOCAB, (batch, seq_len)).astype(np.int32)
    input_mask = (np.arange(seq_len)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids[input_mask == 0] = PAD
    ids[:, 0] = CLS
    for b, n in enumerate(lengths):
        ids[b, n - 1] = SEP
    cand = (input_mask == 1) & (ids != CLS) & (ids != SEP)
    word_start = rng.random((batch, seq_len)) < word_prob
    return ids, input_mask, cand, word_start


def keys_for(seed, batch):
    return jax.random.split(jax.random.key(seed), batch)


def groups_of(cand_row, ws_row):
    """Reference whole-word groups: a word start (or a candidate after a non-candidate) plus
    the following continuation pieces, never crossing a non-candidate."""
    groups, cur = [], None
    for i, (c, w) in enumerate(zip(cand_row, ws_row)):
        if not c:
            cur = None
        elif w or cur is None:
            cur = [i]
            groups.append(cur)
        else:
            cur.append(i)
    return groups


def check_token_mask(m, ids, cand, max_predictions, unique=True):
    """Invariants shared by every masking function."""
    assert isinstance(m, TokenMask)
    new, pos, lab, w, mask = (np.asarray(a) for a in m)
    batch, seq_len = ids.shape
    assert pos.shape == lab.shape == w.shape == (batch, max_predictions)
    assert new.dtype == np.int32 and pos.dtype == np.int32 and lab.dtype == np.int32
    assert w.dtype == np.float32 and mask.dtype == bool
    for b in range(batch):
        k = int(w[b].sum())
        assert np.all(w[b, :k] == 1) and np.all(w[b, k:] == 0)   # real predictions first
        assert np.all(pos[b, k:] == 0) and np.all(lab[b, k:] == 0)
        real = pos[b, :k]
        assert np.all(np.diff(real) > 0) if unique else np.all(np.diff(real) >= 0)
        np.testing.assert_array_equal(lab[b, :k], ids[b, real])  # labels are the originals
        assert set(real.tolist()) == set(np.flatnonzero(mask[b]).tolist())
        assert not np.any(mask[b] & ~cand[b])   # never a special or padding position
        assert np.all(new[b][~mask[b]] == ids[b][~mask[b]])   # changes only where masked


@functools.lru_cache(maxsize=None)
def jit_bert(**kw):
    return jax.jit(functools.partial(bert_mask, mask_id=MASK, vocab_size=VOCAB, **kw))


@functools.lru_cache(maxsize=None)
def jit_electra(**kw):
    return jax.jit(functools.partial(electra_mask, mask_id=MASK, **kw))


# --------------------------------------------------------------------------------------------
# BERT: count rule


# round() is Python 3's: 1.5 -> 2, 4.5 -> 4, 7.5 -> 8, 10.5 -> 10, 13.5 -> 14, 22.5 -> 22.
# len(tokens) = 3 gives round(0.45) = 0, raised to 1; 2 tokens ([CLS][SEP]) have no candidate.
HAND_LENGTHS = [10, 30, 50, 70, 90, 150, 3, 2]
HAND_EXPECTED = [2, 4, 8, 10, 14, 22, 1, 0]


def test_bert_count_hand_cases_bankers_rounding_and_min_one():
    # (the cap at max_predictions is exercised by test_bert_traced_rate_properties)
    ids, im, cand, _ = make_batch(np.random.default_rng(0), HAND_LENGTHS, 160)
    m = jit_bert(max_predictions=40)(keys_for(0, len(ids)), ids, im, cand)
    np.testing.assert_array_equal(np.asarray(m.mask).sum(1), HAND_EXPECTED)
    np.testing.assert_array_equal(np.asarray(m.weights).sum(1), HAND_EXPECTED)
    check_token_mask(m, ids, cand, 40)


def test_exact_count_rule_over_candidates():
    ids, im, cand, _ = make_batch(np.random.default_rng(1), HAND_LENGTHS, 160)
    # candidates = len - 2: round(0.15 * n_cand) with no floor of 1
    expected = [round(0.15 * (n - 2)) for n in HAND_LENGTHS]
    assert expected == [1, 4, 7, 10, 13, 22, 0, 0]   # 1.2, 4.2, 7.2, 10.2, 13.2, 22.2, .15, 0
    m = jit_bert(max_predictions=40, count="exact")(keys_for(1, len(ids)), ids, im, cand)
    np.testing.assert_array_equal(np.asarray(m.mask).sum(1), expected)


def ref_traced_bert_count(n_real, n_cand, rate, max_predictions):
    # The traced-rate path rounds the float32 product half to even (documented).
    c = int(np.round(np.float32(n_real) * np.float32(rate)))
    return min(max_predictions, max(1, c), n_cand)


@st.composite
def lengths_strategy(draw, batch, seq_len):
    return draw(st.lists(st.integers(2, seq_len), min_size=batch, max_size=batch))


@given(lengths_strategy(4, 48), st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
@example([48, 48, 40, 2], 0.9, 0)   # capped at max_predictions = 24 (43.2, 36 -> 24)
@SETTINGS
def test_bert_traced_rate_properties(lengths, rate, seed):
    ids, im, cand, _ = make_batch(np.random.default_rng(seed), lengths, 48)
    f = jit_bert(max_predictions=24)
    m = f(keys_for(seed, 4), ids, im, cand, rate=jnp.float32(rate))
    check_token_mask(m, ids, cand, 24)
    counts = np.asarray(m.mask).sum(1)
    for b, n in enumerate(lengths):
        assert counts[b] == ref_traced_bert_count(n, n - 2, rate, 24)


def test_rate_04_masks_forty_percent():
    lengths = [128, 100, 77, 64, 33, 17, 9, 5]
    ids, im, cand, _ = make_batch(np.random.default_rng(2), lengths, 128)
    m = jit_bert(max_predictions=64, rate=0.4, mix=(1.0, 0.0, 0.0))(keys_for(2, 8), ids, im, cand)
    counts = np.asarray(m.mask).sum(1)
    for n, c in zip(lengths, counts):
        assert abs(c - 0.4 * n) <= 0.5   # round(0.4 * len(tokens)), within rounding
    check_token_mask(m, ids, cand, 64)
    new, mask = np.asarray(m.input_ids), np.asarray(m.mask)
    assert np.all(new[mask] == MASK)   # mix (1, 0, 0): every prediction is [MASK]


# --------------------------------------------------------------------------------------------
# BERT: whole-word masking


def ref_greedy(lens, budget):
    """create_masked_lm_predictions' walk over shuffled groups (spec 1a, step 4)."""
    out, total = [], 0
    for length in lens:
        if total >= budget:   # "if len(masked_lms) >= num_to_predict: break"
            out.append(False)
            continue
        # "if len(masked_lms) + len(index_set) > num_to_predict: continue" (length 0 = no group)
        ok = 0 < length and total + length <= budget
        out.append(ok)
        total += length if ok else 0
    return out


_greedy_jit = jax.jit(_greedy_fill)


@given(st.lists(st.integers(0, 5), min_size=16, max_size=16), st.integers(0, 30))
@SETTINGS
def test_greedy_fill_matches_bert_walk(lens, budget):
    got = np.asarray(_greedy_jit(jnp.asarray(lens, jnp.int32), jnp.int32(budget)))
    np.testing.assert_array_equal(got, ref_greedy(lens, budget))


@given(lengths_strategy(4, 48), st.floats(0.05, 0.9), st.floats(0.2, 0.9),
       st.integers(0, 2**31 - 1))
@SETTINGS
def test_bert_whole_word_groups_complete_and_greedy(lengths, rate, word_prob, seed):
    ids, im, cand, ws = make_batch(np.random.default_rng(seed), lengths, 48, word_prob)
    f = jit_bert(max_predictions=20, whole_word=True)
    m = f(keys_for(seed, 4), ids, im, cand, word_start=ws, rate=jnp.float32(rate))
    check_token_mask(m, ids, cand, 20)
    mask = np.asarray(m.mask)
    for b, n in enumerate(lengths):
        budget = ref_traced_bert_count(n, 10**9, rate, 20)
        count = int(mask[b].sum())
        assert count <= budget
        for g in groups_of(cand[b], ws[b]):
            picked = mask[b, g]
            assert picked.all() or not picked.any()   # a piece is masked iff its word is
            if not picked.any():
                # BERT skips a group only when it no longer fits: it is longer than what remains
                assert len(g) > budget - count


def test_batch_independence_and_determinism():
    """A row's mask depends on its own key and data only, not on its slot or its neighbours.

    (Checked with permuted and replaced neighbours at one batch shape, so nothing recompiles.)
    """
    ids, im, cand, ws = make_batch(np.random.default_rng(3), [48, 40, 30, 20], 48)
    ids2, im2, cand2, ws2 = make_batch(np.random.default_rng(33), [44, 12, 48, 9], 48)
    keys, keys2, rate = keys_for(3, 4), keys_for(33, 4), jnp.float32(0.15)
    f = jit_bert(max_predictions=20, whole_word=True)   # compiled for the property test too

    def run(rows):   # rows: (source, index) pairs assembled into one batch
        def pick(a, a2):
            return np.stack([(a if src == 0 else a2)[i] for src, i in rows])
        k = jnp.stack([(keys if src == 0 else keys2)[i] for src, i in rows])
        return f(k, pick(ids, ids2), pick(im, im2), pick(cand, cand2),
                 word_start=pick(ws, ws2), rate=rate)

    full = run([(0, 0), (0, 1), (0, 2), (0, 3)])
    again = run([(0, 0), (0, 1), (0, 2), (0, 3)])
    mixed = run([(1, 0), (0, 2), (1, 1), (0, 0)])   # rows 2 and 0 moved, new neighbours
    for x, y, z in zip(full, again, mixed):
        x, y, z = np.asarray(x), np.asarray(y), np.asarray(z)
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x[2], z[1])
        np.testing.assert_array_equal(x[0], z[3])
    other = f(keys2, ids, im, cand, word_start=ws, rate=rate)
    assert np.any(np.asarray(other.mask) != np.asarray(full.mask))


# --------------------------------------------------------------------------------------------
# BERT: replacement and the other count rules


def big_batch(seed, batch=256, seq_len=64):
    return make_batch(np.random.default_rng(seed), [seq_len] * batch, seq_len)


def test_replacement_proportions_80_10_10():
    # The Bernoulli configuration (also compiled below) with the default 80/10/10 mix.
    ids, im, cand, _ = big_batch(5, seq_len=52)
    f = jit_bert(max_predictions=16, count="bernoulli")
    m = f(keys_for(5, len(ids)), ids, im, cand, rate=jnp.float32(0.15))
    mask, new = np.asarray(m.mask), np.asarray(m.input_ids)
    assert mask.sum() > 1500   # ~256 * 7.5 predictions
    frac_mask = np.mean(new[mask] == MASK)
    frac_keep = np.mean(new[mask] == ids[mask])
    frac_rand = 1 - frac_mask - frac_keep
    # ~1900 draws: 6 sigma of a 0.1 proportion is 0.041, of 0.8 is 0.055
    assert abs(frac_mask - 0.8) < 0.055 and abs(frac_keep - 0.1) < 0.041
    assert abs(frac_rand - 0.1) < 0.041
    rand = new[mask & (new != MASK) & (new != ids)]
    assert rand.min() >= 0 and rand.max() < VOCAB and len(np.unique(rand)) > len(rand) // 2
    # uniform over the whole vocab [0, VOCAB): mean VOCAB/2, sd VOCAB/sqrt(12) / sqrt(n)
    assert abs(rand.mean() - VOCAB / 2) < 5 * VOCAB / np.sqrt(12 * len(rand))
    assert rand.max() > 0.9 * VOCAB and rand.min() < 0.1 * VOCAB


def test_replacement_probs_and_an_asymmetric_mix():
    ids, im, cand, _ = big_batch(6)
    probs = np.zeros(VOCAB, np.float32)
    probs[[5, 7]] = [1.0, 3.0]   # unnormalised weights: 1/4 and 3/4
    f = jit_bert(max_predictions=16, mix=(0.2, 0.5, 0.3))
    m = f(keys_for(6, len(ids)), ids, im, cand, replacement_probs=jnp.asarray(probs))
    mask, new = np.asarray(m.mask), np.asarray(m.input_ids)
    assert mask.sum() == 256 * 10   # round(0.15 * 64) = round(9.6)
    got = new[mask]
    assert set(np.unique(got).tolist()) <= {MASK, 5, 7} | set(ids[mask].tolist())
    is_rand = (got == 5) | (got == 7)   # data ids are >= 10
    # 2560 draws: 5 sigma of a proportion <= 0.5 is <= 0.05
    assert abs(np.mean(got == MASK) - 0.2) < 0.04
    assert abs(np.mean(is_rand) - 0.5) < 0.05
    assert abs(np.mean(got == ids[mask]) - 0.3) < 0.05
    assert abs(np.mean(got[is_rand] == 7) - 0.75) < 0.05


def test_fairseq_probabilistic_rounding():
    ids, im, cand, _ = big_batch(7, seq_len=52)   # 50 candidates: 0.15 * 50 = 7.5
    m = jit_bert(max_predictions=16, count="fairseq")(keys_for(7, len(ids)), ids, im, cand)
    counts = np.asarray(m.mask).sum(1)
    assert set(np.unique(counts).tolist()) == {7, 8}
    assert abs(counts.mean() - 7.5) < 0.2   # unbiased: E int(7.5 + U) = 7.5


def binomial_capped_mean(n, p, cap):
    return sum(min(k, cap) * math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1))


@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_bernoulli_count_is_binomial_truncated_at_max_predictions(rate):
    ids, im, cand, _ = big_batch(8, seq_len=52)
    f = jit_bert(max_predictions=16, count="bernoulli")
    m = f(keys_for(8, len(ids)), ids, im, cand, rate=jnp.float32(rate))
    counts = np.asarray(m.mask).sum(1)
    assert counts.max() <= 16
    expected = binomial_capped_mean(50, rate, 16)
    assert abs(counts.mean() - expected) < 0.5, (counts.mean(), expected)
    assert counts.std() > 1.0   # a random count, not a fixed one
    if rate == 0.3:
        assert np.mean(counts == 16) > 0.3   # P(Bin(50, .3) >= 16) ~ 0.44: truncation happens


@pytest.mark.parametrize("kwargs,error", [
    (dict(mix=(0.8, 0.1, 0.2)), ValueError),
    (dict(mix=(1.1, -0.1, 0.0)), ValueError),
    (dict(count="poisson"), ValueError),
    (dict(whole_word=True), ValueError),
    (dict(rate=0.0), ValueError),
    (dict(rate=1.5), ValueError),
    (dict(max_predictions=0), ValueError),
    (dict(vocab_size=None), ValueError),
])
def test_bert_rejects_bad_arguments(kwargs, error):
    ids, im, cand, _ = make_batch(np.random.default_rng(0), [8, 8], 8)
    args = dict(max_predictions=4, mask_id=MASK, vocab_size=VOCAB) | kwargs
    with pytest.raises(error):
        bert_mask(keys_for(0, 2), ids, im, cand, **args)


def test_keys_must_be_per_example():
    ids, im, cand, _ = make_batch(np.random.default_rng(0), [8, 8], 8)
    with pytest.raises(ValueError):
        bert_mask(jax.random.key(0), ids, im, cand, max_predictions=4, mask_id=MASK,
                  vocab_size=VOCAB)
    with pytest.raises(ValueError):
        bert_mask(keys_for(0, 3), ids, im, cand, max_predictions=4, mask_id=MASK,
                  vocab_size=VOCAB)
    with pytest.raises(TypeError):
        bert_mask(np.zeros((2,), np.int32), ids, im, cand, max_predictions=4, mask_id=MASK,
                  vocab_size=VOCAB)


# --------------------------------------------------------------------------------------------
# ELECTRA


def test_electra_max_predictions():
    assert electra_max_predictions(128) == 19   # int(0.155 * 128) = int(19.84)
    assert electra_max_predictions(512) == 79   # int(79.36)
    assert electra_max_predictions(128, 0.4) == 51   # int(0.405 * 128) = int(51.84)


def test_electra_count_rule_hand_cases():
    # tf.round(float32(n) * 0.15): 128 -> 19.2 -> 19; 30 -> 4.5 -> 4 (half to even); 10 -> 1.5 -> 2;
    # 3 -> 0.45 -> 0 -> max(1, .) = 1. 2 tokens ([CLS][SEP], no candidate) are covered by
    # test_electra_properties. Same configuration as the property test (one compile).
    lengths = [128, 30, 10, 3]
    ids, im, cand, _ = make_batch(np.random.default_rng(9), lengths, 128)
    m = jit_electra(max_predictions=19)(keys_for(9, 4), ids, im, cand, rate=jnp.float32(0.15))
    np.testing.assert_array_equal(np.asarray(m.weights).sum(1), [19, 4, 2, 1])
    check_token_mask(m, ids, cand, 19, unique=False)


@given(lengths_strategy(4, 128), st.floats(0.05, 0.9), st.integers(0, 2**31 - 1))
@SETTINGS
def test_electra_properties(lengths, rate, seed):
    ids, im, cand, _ = make_batch(np.random.default_rng(seed), lengths, 128)
    cand[:, 0] = True   # even if the caller allows position 0, ELECTRA never masks it
    m = jit_electra(max_predictions=19)(keys_for(seed, 4), ids, im, cand, rate=jnp.float32(rate))
    cand[:, 0] = False
    check_token_mask(m, ids, cand, 19, unique=False)
    new, mask, w = np.asarray(m.input_ids), np.asarray(m.mask), np.asarray(m.weights)
    assert np.all((new[mask] == MASK) | (new[mask] == ids[mask]))   # no random tokens
    for b, n in enumerate(lengths):
        expected = max(1, min(19, int(np.round(np.float32(n) * np.float32(rate)))))
        assert w[b].sum() == (expected if n > 2 else 0)


def test_electra_draws_with_replacement_and_85_15_split():
    # 10 candidates, 8 weighted draws each: duplicates are the rule, not the exception.
    # (Rows of 12 tokens padded to 128, run through the property test's compiled configuration.)
    ids, im, cand, _ = make_batch(np.random.default_rng(10), [12] * 512, 128)
    f, keys = jit_electra(max_predictions=19), keys_for(10, 512)
    outs = [f(keys[i:i + 4], ids[i:i + 4], im[i:i + 4], cand[i:i + 4], rate=jnp.float32(0.7))
            for i in range(0, 512, 4)]
    pos, w, mask, new = (np.concatenate([np.asarray(getattr(o, name)) for o in outs])
                         for name in ("positions", "weights", "mask", "input_ids"))
    assert np.all(w.sum(1) == 8)   # round(12 * 0.7) = 8.4 -> 8
    distinct = mask.sum(1)
    expected_distinct = 10 * (1 - 0.9**8)   # E #distinct of 8 uniform draws from 10
    assert abs(distinct.mean() - expected_distinct) < 0.1, distinct.mean()
    # A position drawn m times stays unchanged only if all m draws chose "keep" (p = 0.15^m).
    expected_masked = observed = 0
    for b in range(len(ids)):
        p, counts = np.unique(pos[b][w[b] > 0], return_counts=True)
        expected_masked += np.sum(1 - 0.15**counts)
        observed += np.sum(new[b, p] == MASK)
    total = mask.sum()
    assert abs(observed - expected_masked) / total < 0.02, (observed, expected_masked, total)
    assert np.all((new == ids) | (new == MASK))   # no random tokens, ever
