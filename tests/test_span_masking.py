"""SpanBERT span masking and ERNIE-Gram-style n-gram masking (specs/methods_text_gen.md 2a, 2b, 3).

The SpanBERT reference below is a numpy transliteration of the spec's
``PairWithSpanMaskingScheme.mask`` loop; expected values never come from the code under test.
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

from maskjax.masking import NgramSpans, SpanTargets, ngram_mask, span_length_distribution, span_mask
from maskjax.masking.spans import _span_draws, _thresholds
from tests.test_text_masking import (
    MASK, VOCAB, check_token_mask, groups_of, keys_for, lengths_strategy, make_batch)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
# Random replacement ids never equal [MASK] or a data id (data ids are >= 10): id 5 only.
ONLY_FIVE = np.zeros(VOCAB, np.float32)
ONLY_FIVE[5] = 1.0


@functools.lru_cache(maxsize=None)
def jit_span(**kw):
    return jax.jit(functools.partial(span_mask, mask_id=MASK, vocab_size=VOCAB, **kw))


@functools.lru_cache(maxsize=None)
def jit_ngram(**kw):
    return jax.jit(functools.partial(ngram_mask, mask_id=MASK, vocab_size=VOCAB, **kw))


def runs(mask_row):
    """Maximal runs [s, e] of True: SpanBERT's merge_intervals of overlapping/adjacent spans."""
    out, start = [], None
    for i, m in enumerate(list(mask_row) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i - 1))
            start = None
    return out


def word_starts(cand_row, ws_row):
    return {g[0] for g in groups_of(cand_row, ws_row)}


def ref_spanbert(rng, sentence_ws, rate, p=0.2, lower=1, upper=10):
    """numpy transliteration of PairWithSpanMaskingScheme.mask (spec 2a); returns merged spans."""
    n = len(sentence_ws)
    lens = list(range(lower, upper + 1))
    distrib = [p * (1 - p) ** (i - lower) for i in lens]
    distrib = [x / sum(distrib) for x in distrib]

    def word_start(a):
        while a > 0 and not sentence_ws[a]:
            a -= 1
        return a

    def word_end(a):
        a += 1
        while a < n and not sentence_ws[a]:
            a += 1
        return a

    mask_num = math.ceil(n * rate)
    mask = set()
    while len(mask) < mask_num:
        span_len = rng.choice(lens, p=distrib)
        anchor = rng.choice(n)
        if anchor in mask:
            continue
        left1, right1 = word_start(anchor), word_end(anchor)
        for i in range(left1, right1):
            if len(mask) >= mask_num:
                break
            mask.add(i)
        num_words, right2 = 1, right1
        while num_words < span_len and right2 < n and len(mask) < mask_num:
            left2, right2 = right2, word_end(right2)
            num_words += 1
            for i in range(left2, right2):
                if len(mask) >= mask_num:
                    break
                mask.add(i)
    return runs([i in mask for i in range(n)])


# --------------------------------------------------------------------------------------------
# span-length law


def test_span_length_distribution_matches_spec():
    d = span_length_distribution(0.2, 1, 10)
    spec = [0.224, 0.179, 0.143, 0.115, 0.092, 0.073, 0.059, 0.047, 0.038, 0.030]
    np.testing.assert_allclose(d, spec, atol=6e-4)
    assert abs(np.dot(np.arange(1, 11), d) - 3.80) < 0.005
    np.testing.assert_allclose(span_length_distribution(0.3, 2, 4), np.array([1, .7, .49]) / 2.19)
    for bad in [dict(p=0.0), dict(p=1.2), dict(min_span=0), dict(min_span=5, max_span=4)]:
        with pytest.raises(ValueError):
            span_length_distribution(**bad)


def test_span_draws_follow_truncated_geometric():
    """Per draw: the sampled length follows the law; it is fully covered unless cut short."""
    batch, seq_len, max_draws = 256, 128, 40
    ids, im, cand, ws = make_batch(np.random.default_rng(20), [seq_len] * batch, seq_len, 0.7)
    u = np.random.default_rng(21).random((batch, 2, max_draws)).astype(np.float32)
    budget = jnp.full((batch,), 19, jnp.int32)   # ceil(126 * 0.15)
    thr = _thresholds(span_length_distribution(0.2, 1, 10))
    f = jax.jit(jax.vmap(functools.partial(_span_draws, len_thresholds=thr, min_span=1)))
    mask, draws = f(u[:, 0], u[:, 1], cand, ws, budget)
    sampled, words, start, hit = (np.asarray(a) for a in draws)
    assert np.all(np.asarray(mask).sum(1) == 19)   # the budget is filled exactly
    used = sampled > 0
    n = used.sum()
    assert n > 800
    expected = span_length_distribution(0.2, 1, 10)
    hist = np.bincount(sampled[used], minlength=11)[1:]
    chi2 = np.sum((hist - n * expected) ** 2 / (n * expected))
    assert chi2 < 33.7, chi2   # 9 dof, 0.9999 quantile
    assert abs(sampled[used].mean() - 3.80) < 3 * 2.6 / np.sqrt(n)
    for b in range(batch):
        groups = groups_of(cand[b], ws[b])
        first_of = {g[0]: k for k, g in enumerate(groups)}
        for d in np.flatnonzero(used[b]):
            assert start[b, d] in first_of   # a draw starts at a word start
            assert 1 <= words[b, d] <= sampled[b, d]
            last = first_of[start[b, d]] + words[b, d] - 1
            at_run_end = last == len(groups) - 1   # one candidate run per row here
            if words[b, d] < sampled[b, d]:
                assert hit[b, d] or at_run_end


# --------------------------------------------------------------------------------------------
# span_mask


def ref_sbo(mask_row, cand_row, positions, k, max_pair_targets, seq_len):
    left, right, offset, weight = [], [], [], []
    span_of = {i: (s, e) for s, e in runs(mask_row) for i in range(s, e + 1)}
    for i in positions[:k]:
        s, e = span_of[i]
        edge = not (s - 1 >= 0 and cand_row[s - 1] and e + 1 < seq_len and cand_row[e + 1])
        left.append(max(s - 1, 0))
        right.append(min(e + 1, seq_len - 1))
        offset.append(i - s)
        weight.append(float(not edge and i - s < max_pair_targets))
    pad = [0] * (len(positions) - k)
    return left + pad, right + pad, offset + pad, weight + [0.0] * len(pad)


@given(lengths_strategy(4, 48), st.floats(0.05, 1.0), st.floats(0.3, 1.0),
       st.integers(0, 2**31 - 1))
@example([6, 48, 48, 2], 1.0, 0.5, 0)   # a fully masked block: an edge span on both sides
@SETTINGS
def test_span_mask_properties(lengths, rate, word_prob, seed):
    ids, im, cand, ws = make_batch(np.random.default_rng(seed), lengths, 48, word_prob)
    f = jit_span(max_predictions=24, max_pair_targets=3)
    m, t = f(keys_for(seed, 4), ids, im, cand, ws, rate=jnp.float32(rate),
             replacement_probs=jnp.asarray(ONLY_FIVE))
    assert isinstance(t, SpanTargets)
    check_token_mask(m, ids, cand, 24)
    mask, new, pos, w = (np.asarray(a) for a in (m.mask, m.input_ids, m.positions, m.weights))
    for b, n in enumerate(lengths):
        budget = min(24, n - 2, math.ceil(np.float32(n - 2) * np.float32(rate)))
        assert mask[b].sum() == budget   # SpanBERT fills the budget exactly
        starts = word_starts(cand[b], ws[b])
        mid_word_ends = 0
        for s, e in runs(mask[b]):
            assert s in starts   # spans start at a word start
            if e + 1 < 48 and cand[b, e + 1] and e + 1 not in starts:
                mid_word_ends += 1   # only the draw that hit the budget stops mid-word
            replaced = new[b, s:e + 1] == MASK
            assert replaced.all() or not replaced.any()   # one decision per merged span
        assert mid_word_ends <= 1
        k = int(w[b].sum())
        expected = ref_sbo(mask[b], cand[b], pos[b], k, 3, 48)
        for got, want in zip(t, expected):
            np.testing.assert_array_equal(np.asarray(got)[b], want)
    if lengths[0] == 6 and rate == 1.0:   # the explicit example: [CLS] t t t t [SEP]
        np.testing.assert_array_equal(pos[0, :5], [1, 2, 3, 4, 0])
        np.testing.assert_array_equal(np.asarray(t.left)[0, :4], [0] * 4)
        np.testing.assert_array_equal(np.asarray(t.right)[0, :4], [5] * 4)
        np.testing.assert_array_equal(np.asarray(t.weights)[0], np.zeros(24))


def span_kinds(ids, new, mask):
    kinds = []
    for b in range(len(ids)):
        for s, e in runs(mask[b]):
            seg, orig = new[b, s:e + 1], ids[b, s:e + 1]
            if np.all(seg == MASK):
                kinds.append("mask")
            elif np.all(seg == 5):
                kinds.append("random")
            elif np.all(seg == orig):
                kinds.append("keep")
            else:
                kinds.append("mixed")
    return kinds


def test_span_replacement_one_decision_per_span():
    ids, im, cand, ws = make_batch(np.random.default_rng(22), [64] * 128, 64, 0.6)
    args = (keys_for(22, 128), ids, im, cand, ws)
    m, _ = jit_span(max_predictions=16)(*args, replacement_probs=jnp.asarray(ONLY_FIVE))
    kinds = span_kinds(ids, np.asarray(m.input_ids), np.asarray(m.mask))
    counts = {k: kinds.count(k) / len(kinds) for k in ("mask", "random", "keep", "mixed")}
    assert counts["mixed"] == 0
    assert abs(counts["mask"] - 0.8) < 0.08 and abs(counts["random"] - 0.1) < 0.06
    # per-token decisions ("word_piece") do mix treatments inside a multi-token span
    m, _ = jit_span(max_predictions=16, replacement="word_piece")(
        *args, replacement_probs=jnp.asarray(ONLY_FIVE))
    assert span_kinds(ids, np.asarray(m.input_ids), np.asarray(m.mask)).count("mixed") > 20


def test_span_mask_matches_spanbert_reference_distribution():
    """Same inputs, our masks vs the numpy SpanBERT loop: span counts and lengths agree."""
    ids, im, cand, ws = make_batch(np.random.default_rng(23), [64] * 128, 64, 0.6)
    f = jit_span(max_predictions=16)   # compiled by the replacement test
    ours, where_ours = [], []
    for seed in (23, 24):
        m, _ = f(keys_for(seed, 128), ids, im, cand, ws, replacement_probs=jnp.asarray(ONLY_FIVE))
        ours += [[e - s + 1 for s, e in runs(r)] for r in np.asarray(m.mask)]
        where_ours += [np.flatnonzero(r) - 1 for r in np.asarray(m.mask)]   # block coordinates
    rng = np.random.default_rng(25)
    ref_spans = [ref_spanbert(rng, list(ws[b % 128, 1:63]), 0.15) for b in range(256)]
    ref = [[e - s + 1 for s, e in r] for r in ref_spans]
    where_ref = [i for r in ref_spans for s, e in r for i in range(s, e + 1)]
    # where the masks fall: SpanBERT's anchors are uniform, spans extend to the right
    share_ours = np.bincount(np.concatenate(where_ours) // 16, minlength=4) / (256 * 10)
    share_ref = np.bincount(np.asarray(where_ref) // 16, minlength=4) / (256 * 10)
    np.testing.assert_allclose(share_ours, share_ref, atol=0.05)   # quarters of the block
    # (the block's first piece starts a word whatever ws says, as in SpanBERT's get_word_start)
    assert all(sum(r) == 10 for r in ref) and all(sum(r) == 10 for r in ours)   # ceil(62*.15)
    n_ours, n_ref = np.array([len(r) for r in ours]), np.array([len(r) for r in ref])
    se = np.sqrt(n_ours.var() / len(n_ours) + n_ref.var() / len(n_ref))
    assert abs(n_ours.mean() - n_ref.mean()) < 4 * se + 0.05, (n_ours.mean(), n_ref.mean())
    single_ours = np.mean([x == 1 for r in ours for x in r])
    single_ref = np.mean([x == 1 for r in ref for x in r])
    assert abs(single_ours - single_ref) < 0.06, (single_ours, single_ref)


def test_span_batch_independence():
    ids, im, cand, ws = make_batch(np.random.default_rng(26), [48, 40, 30, 20], 48)
    keys, rate, probs = keys_for(26, 4), jnp.float32(0.3), jnp.asarray(ONLY_FIVE)
    f = jit_span(max_predictions=24, max_pair_targets=3)   # the property test's configuration
    full = f(keys, ids, im, cand, ws, rate=rate, replacement_probs=probs)
    perm = np.array([3, 0, 2, 1])   # every row in a new slot with new neighbours
    moved = f(keys[perm], ids[perm], im[perm], cand[perm], ws[perm], rate=rate,
              replacement_probs=probs)
    for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(moved)):
        np.testing.assert_array_equal(np.asarray(x)[perm], np.asarray(y))


def test_span_mask_rejects_bad_arguments():
    ids, im, cand, ws = make_batch(np.random.default_rng(0), [8, 8], 8)
    base = dict(max_predictions=4, mask_id=MASK, vocab_size=VOCAB)
    for bad in [dict(replacement="token"), dict(p=0.0), dict(min_span=3, max_span=2),
                dict(max_pair_targets=0), dict(rate=2.0), dict(mix=(0.5, 0.5, 0.5))]:
        with pytest.raises(ValueError):
            span_mask(keys_for(0, 2), ids, im, cand, ws, **(base | bad))


# --------------------------------------------------------------------------------------------
# n-gram masking


@given(lengths_strategy(4, 48), st.floats(0.05, 0.9), st.floats(0.3, 1.0),
       st.integers(0, 2**31 - 1))
@SETTINGS
def test_ngram_mask_whole_word_ngrams(lengths, rate, word_prob, seed):
    ids, im, cand, ws = make_batch(np.random.default_rng(seed), lengths, 48, word_prob)
    m, g = jit_ngram(max_predictions=24)(keys_for(seed, 4), ids, im, cand, ws,
                                         rate=jnp.float32(rate))
    assert isinstance(g, NgramSpans)
    check_token_mask(m, ids, cand, 24)
    mask, pos, w = np.asarray(m.mask), np.asarray(m.positions), np.asarray(m.weights)
    start, end, nw = (np.asarray(a) for a in g)
    for b, n in enumerate(lengths):
        groups = groups_of(cand[b], ws[b])
        group_at = {i: k for k, grp in enumerate(groups) for i in grp}
        budget = min(24, int(np.round(np.float32(n - 2) * np.float32(rate))))
        count = int(mask[b].sum())
        assert count <= budget
        k = int(w[b].sum())
        for j in range(k):
            s, e, i = start[b, j], end[b, j], pos[b, j]
            assert s <= i <= e
            assert groups[group_at[s]][0] == s and groups[group_at[e]][-1] == e   # whole words
            assert 1 <= nw[b, j] == group_at[e] - group_at[s] + 1 <= 3   # n <= max_n
            assert mask[b, s:e + 1].all() and all(cand[b, s:e + 1])   # contiguous, no specials
        assert np.all(start[b, k:] == 0) and np.all(nw[b, k:] == 0)
        for grp in groups:   # whole words only, and the loop stops only when nothing fits
            picked = mask[b, grp]
            assert picked.all() or not picked.any()
            if not picked.any():
                assert len(grp) > budget - count


def ref_ngram_sizes(rng, num_words, budget, probs):
    """The documented n-gram loop on one run of one-piece words; returns the n-gram sizes."""
    masked, sizes = set(), []
    while budget > 0:
        free = [w for w in range(num_words) if w not in masked]
        if not free:
            break
        w = rng.choice(free)
        n = rng.choice(len(probs), p=probs) + 1
        take = []
        for j in range(w, min(w + n, num_words)):
            if j in masked or len(take) >= budget:
                break
            take.append(j)
        masked.update(take)
        budget -= len(take)
        sizes.append(len(take))
    return sizes


def test_ngram_lengths_follow_inverse_n():
    """Rows of one-piece words: n-gram sizes match the documented loop with P(n) ~ 1/n."""
    ids, im, cand, _ = make_batch(np.random.default_rng(27), [128] * 128, 128)
    ws = np.ones_like(cand)
    m, g = jit_ngram(max_predictions=16)(keys_for(27, 128), ids, im, cand, ws, rate=0.1)
    w, start, nw = np.asarray(m.weights), np.asarray(g.start), np.asarray(g.num_words)
    sizes = [nw[b, j] for b in range(128) for j in range(int(w[b].sum()))
             if j == 0 or start[b, j] != start[b, j - 1]]
    freq = np.bincount(sizes, minlength=4)[1:] / len(sizes)
    probs = np.array([1, 1 / 2, 1 / 3]) / (11 / 6)   # 6/11, 3/11, 2/11
    rng = np.random.default_rng(28)
    ref = [x for _ in range(1000) for x in ref_ngram_sizes(rng, 126, round(0.1 * 126), probs)]
    ref_freq = np.bincount(ref, minlength=4)[1:] / len(ref)
    # ~1000 of ours: 4 sigma of a proportion near 0.5 is 0.06
    np.testing.assert_allclose(freq, ref_freq, atol=0.06)
    assert freq[0] > freq[1] > freq[2] > 0.1
    np.testing.assert_allclose(ref_freq, probs, atol=0.07)   # budget cuts shift mass to n = 1


def test_ngram_rejects_bad_probs():
    ids, im, cand, ws = make_batch(np.random.default_rng(0), [8, 8], 8)
    for bad in [dict(ngram_probs=[0.5, 0.5]), dict(ngram_probs=[1, -1, 1]), dict(max_n=0)]:
        with pytest.raises(ValueError):
            ngram_mask(keys_for(0, 2), ids, im, cand, ws, max_predictions=4, mask_id=MASK,
                       vocab_size=VOCAB, **bad)
