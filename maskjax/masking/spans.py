"""Span masking: SpanBERT (with span-boundary targets) and ERNIE-Gram-style n-gram masking.

Same conventions as ``maskjax.masking.text``: batched ``[B, L]`` inputs, ``keys`` [B] typed PRNG
keys (one per example), a vmapped per-example implementation, static output shapes (``L`` and
``max_predictions``) and a rate that may be a traced scalar. The span draws run in a bounded
``lax.while_loop``: every draw masks at least one new token and the budget is capped at
``max_predictions``, so a row needs at most ``max_predictions`` iterations, each O(L).

Sources (offline notes in ``specs/methods_text_gen.md``):
  * SpanBERT ``pretraining/fairseq/data/masking.py::PairWithSpanMaskingScheme.mask`` and
    ``span_masking`` (spec 2a), the SBO head's inputs (spec 2b);
  * ERNIE-Gram (spec 3): no masking code is released; ``ngram_mask`` is our own design.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.masking.text import (
    TokenMask, _check_batch, _check_mix, _check_positive_int, _corrupt, _group_starts, _pack,
    _per_example_keys, _random_bits, _random_tokens, _replacement_cdf, _rounded_count,
    _select_uniform, _static_rate, _uniform)


class SpanTargets(NamedTuple):
    """Span-boundary-objective inputs, aligned with ``TokenMask.positions`` [B, P].

    Attributes:
      left: int32 [B, P], position s - 1 just before the prediction's (merged) span [s, e].
      right: int32 [B, P], position e + 1 just after it. Both are clipped into [0, L - 1] so
        they can be gathered safely; they are meaningful only where ``weights`` is 1.
      offset: int32 [B, P], index of the prediction inside its span (0-based).
      weights: float32 [B, P], 1 when the prediction has an SBO target: a real prediction whose
        span has real non-special boundary tokens on both sides (candidates: SpanBERT's "not at
        the sequence edge") and ``offset < max_pair_targets`` (SpanBERT truncates each pair
        target to ``max_pair_targets`` tokens).
    """

    left: jax.Array
    right: jax.Array
    offset: jax.Array
    weights: jax.Array


class SpanDraws(NamedTuple):
    """Per-draw record of the span loop [P] (-1 where unused); for tests and inspection.

    Attributes:
      sampled: the span length in words drawn from the truncated geometric distribution.
      words: the number of words the draw actually covered (counting ones already masked).
      start: the first position of the draw (a word start).
      budget_hit: True when the draw stopped because the token budget was reached.
    """

    sampled: jax.Array
    words: jax.Array
    start: jax.Array
    budget_hit: jax.Array


class NgramSpans(NamedTuple):
    """The n-gram each prediction belongs to, aligned with ``TokenMask.positions`` [B, P].

    Attributes:
      start: int32 [B, P], first position of the n-gram (0 in padded slots).
      end: int32 [B, P], last position of the n-gram, inclusive (0 in padded slots).
      num_words: int32 [B, P], n, the n-gram's length in words (0 in padded slots).
    """

    start: jax.Array
    end: jax.Array
    num_words: jax.Array


def span_length_distribution(p: float = 0.2, min_span: int = 1, max_span: int = 10) -> np.ndarray:
    """SpanBERT's span-length law: ``P(l) ∝ p (1 - p)^(l - min_span)`` on [min_span, max_span].

    At p = 0.2 on [1, 10]: 0.224, 0.179, 0.143, 0.115, 0.092, 0.073, 0.059, 0.047, 0.038, 0.030,
    mean 3.80 words (spec 2a).
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"geometric p must be in (0, 1], got {p}")
    if not (isinstance(min_span, int) and isinstance(max_span, int)
            and 1 <= min_span <= max_span):
        raise ValueError(f"need integers 1 <= min_span <= max_span, got {min_span}, {max_span}")
    lens = np.arange(min_span, max_span + 1)
    w = p * (1 - p) ** (lens - min_span)
    return w / w.sum()


def _thresholds(probs: np.ndarray) -> jax.Array:
    """Inner CDF points of a small categorical: ``sum(u >= t)`` maps u ~ U[0, 1) to an index."""
    return jnp.asarray(np.cumsum(probs / probs.sum())[:-1], jnp.float32)


def _word_tables(cand, word_start):
    """Word index and candidate-run index of every position (runs never cross specials/pads)."""
    starts = _group_starts(cand, word_start)
    prev = jnp.concatenate([jnp.zeros((1,), bool), cand[:-1]])
    wid = jnp.cumsum(starts) - 1
    run = jnp.cumsum(cand & ~prev)
    return starts, wid, run


def _span_draws(u_len, u_anchor, cand, word_start, budget, len_thresholds, *, min_span: int):
    """SpanBERT's span loop for one example: returns (mask [L], SpanDraws [D]).

    ``u_len`` and ``u_anchor`` are [D] uniforms drawn up front, one pair per iteration, so the
    loop body has no PRNG call; D (= max_predictions) bounds the iterations.

    The original samples an anchor uniformly over the sentence and resamples while it lands on
    a masked token; we sample it uniformly over the unmasked candidates directly, which is the
    same distribution (and the span length, independent of the anchor, is redrawn either way)
    without a retry loop. From the anchor's word start, words are added until ``span_len`` words
    are covered or the candidate run ends; tokens already masked are passed over without
    counting, and the draw stops mid-word as soon as the token budget is reached.
    """
    length, max_draws = cand.shape[0], u_len.shape[0]
    _, wid, run = _word_tables(cand, word_start)
    budget = jnp.minimum(budget, jnp.sum(cand))
    empty = jnp.full((max_draws,), -1, jnp.int32)
    init = (jnp.zeros((length,), bool), jnp.int32(0), jnp.int32(0),
            SpanDraws(empty, empty, empty, jnp.zeros((max_draws,), bool)))

    def cond(state):
        _, count, it, _ = state
        return (count < budget) & (it < max_draws)

    def body(state):
        mask, count, it, draws = state
        span_len = min_span + jnp.sum(u_len[it] >= len_thresholds).astype(jnp.int32)
        anchor = _select_uniform(u_anchor[it], cand & ~mask)
        first = wid[anchor]
        words = cand & (run == run[anchor]) & (wid >= first) & (wid < first + span_len)
        fresh = words & ~mask
        fresh_before = jnp.cumsum(fresh) - fresh
        take = words & (fresh_before < budget - count)  # a prefix of `words`: stops mid-word
        new = jnp.sum(take & ~mask).astype(jnp.int32)
        last = jnp.max(jnp.where(take, wid, -1))
        draws = SpanDraws(
            draws.sampled.at[it].set(span_len),
            draws.words.at[it].set(last - first + 1),
            draws.start.at[it].set(jnp.argmax(words).astype(jnp.int32)),
            draws.budget_hit.at[it].set(count + new >= budget))
        return mask | take, count + new, it + 1, draws

    mask, _, _, draws = jax.lax.while_loop(cond, body, init)
    return mask, draws


def _span_one(key, ids, cand, word_start, rate, cdf, len_thresholds, *,
              max_predictions, mask_id, vocab_size, min_span, replacement, mix, max_pair_targets):
    length = ids.shape[0]
    pos = jnp.arange(length, dtype=jnp.int32)
    # rows: span lengths, anchors (one per loop iteration), mix draws, random ids
    bits = _random_bits(key, 4, max(length, max_predictions))
    u = _uniform(bits[:3])
    # mask_num = ceil(len(sentence) * mask_ratio): the block without [CLS]/[SEP] = candidates.
    budget = jnp.minimum(_rounded_count(jnp.sum(cand), rate, length, "ceil"), max_predictions)
    mask, _ = _span_draws(u[0, :max_predictions], u[1, :max_predictions], cand, word_start,
                          budget, len_thresholds, min_span=min_span)

    # merge_intervals merges overlapping AND adjacent spans: merged spans = runs of the mask.
    prev = jnp.concatenate([jnp.zeros((1,), bool), mask[:-1]])
    nxt = jnp.concatenate([mask[1:], jnp.zeros((1,), bool)])
    span_start = jax.lax.cummax(jnp.where(mask & ~prev, pos, -1))
    span_end = jax.lax.cummin(jnp.where(mask & ~nxt, pos, length), reverse=True)
    u_mix = u[2, :length]
    if replacement == "span":  # one draw per merged span (the one at its start), for all tokens
        u_mix = u_mix[jnp.clip(span_start, 0, length - 1)]
    # SpanBERT draws a separate random token (np.random.choice(tokens)) for each position.
    rand_ids = _random_tokens(bits[3, :length], vocab_size, cdf) if mix[1] > 0 else ids
    new_ids = _corrupt(ids, mask, u_mix, rand_ids, mix, mask_id)
    positions, labels, weights = _pack(ids, mask, max_predictions)

    left, right = span_start - 1, span_end + 1
    has_left = (left >= 0) & cand[jnp.clip(left, 0, length - 1)]
    has_right = (right < length) & cand[jnp.clip(right, 0, length - 1)]
    offset = pos - span_start
    sbo = mask & has_left & has_right & (offset < max_pair_targets)
    real = weights > 0
    targets = SpanTargets(
        jnp.where(real, jnp.clip(left, 0, length - 1)[positions], 0),
        jnp.where(real, jnp.clip(right, 0, length - 1)[positions], 0),
        jnp.where(real, offset[positions], 0),
        (real & sbo[positions]).astype(jnp.float32))
    return (new_ids, positions, labels, weights, mask), targets


def span_mask(keys, input_ids, input_mask, candidates, word_start, *, max_predictions: int,
              mask_id: int, vocab_size: int | None, rate=0.15, p: float = 0.2, min_span: int = 1,
              max_span: int = 10, replacement: str = "span", mix=(0.8, 0.1, 0.1),
              replacement_probs=None, max_pair_targets: int = 15) -> tuple[TokenMask, SpanTargets]:
    """SpanBERT span masking, ``PairWithSpanMaskingScheme.mask`` + ``span_masking`` (spec 2a).

    Budget ``min(max_predictions, ceil(num_candidates * rate))`` tokens (SpanBERT's sentence is
    the block without [CLS]/[SEP], i.e. the candidates). Spans are drawn until the budget is
    exactly filled: a length in WORDS from the truncated geometric law
    (:func:`span_length_distribution`), an anchor uniform over the unmasked candidates, moved
    left to its word start, then whole words up to the span length, stopping mid-word when the
    budget is hit; spans never cross a non-candidate. Overlapping and adjacent spans are merged.
    Each merged span then gets ONE (mask, random, keep) decision with ``replacement="span"``
    (the paper run) or one per token with ``"word_piece"`` (SpanBERT's argparse default);
    random ids come from ``replacement_probs`` (SpanBERT samples the corpus token stream, i.e.
    the unigram distribution) or uniform over ``[0, vocab_size)`` when None.

    Set ``max_predictions >= ceil(max_candidates * rate)`` (77 for 512 tokens at 0.15): a larger
    budget is capped, where SpanBERT has no cap. Note that SpanBERT's ``--geometric-p`` argparse
    default is 0.3; the paper run and this default use 0.2.

    Args:
      keys, input_ids, input_mask, candidates: as :func:`maskjax.masking.text.bert_mask`.
      word_start: bool [B, L], True at each word's first piece (SpanBERT's word-piece map).
      max_predictions: static P. mask_id / vocab_size / mix / replacement_probs: as bert_mask.
      rate: masking rate in (0, 1], static or traced.
      p, min_span, max_span: the span-length law (static).
      replacement: ``"span"`` or ``"word_piece"``.
      max_pair_targets: SBO targets per span (SpanBERT's ``--max-pair-targets``, 15).

    Returns:
      ``(TokenMask, SpanTargets)``, both with P = ``max_predictions`` slots.
    """
    batch, _ = _check_batch(input_ids, ("input_mask", input_mask), ("candidates", candidates),
                            ("word_start", word_start))
    keys = _per_example_keys(keys, batch)
    max_predictions = _check_positive_int("max_predictions", max_predictions)
    max_pair_targets = _check_positive_int("max_pair_targets", max_pair_targets)
    mix = _check_mix(mix)
    if replacement not in ("span", "word_piece"):
        raise ValueError(f"replacement must be 'span' or 'word_piece', got {replacement!r}")
    len_thresholds = _thresholds(span_length_distribution(p, min_span, max_span))
    static = _static_rate(rate)
    rate = static if static is not None else jnp.asarray(rate, jnp.float32)
    cdf = _replacement_cdf(replacement_probs, vocab_size) if mix[1] > 0 else None
    cand = jnp.asarray(candidates).astype(bool) & (jnp.asarray(input_mask) > 0)

    def one(key, ids, cand, ws):
        return _span_one(key, ids, cand, ws, rate, cdf, len_thresholds,
                         max_predictions=max_predictions, mask_id=mask_id, vocab_size=vocab_size,
                         min_span=min_span, replacement=replacement, mix=mix,
                         max_pair_targets=max_pair_targets)

    token_mask, targets = jax.vmap(one)(keys, jnp.asarray(input_ids, jnp.int32), cand,
                                        jnp.asarray(word_start).astype(bool))
    return TokenMask(*token_mask), targets


# ------------------------------------------------------------------------------------------
# n-gram masking in the spirit of ERNIE-Gram


def _ngram_one(key, ids, cand, word_start, rate, cdf, n_thresholds, *, max_predictions, mask_id,
               vocab_size, mix):
    length = ids.shape[0]
    j = jnp.arange(length, dtype=jnp.int32)  # word index (there are at most L words)
    starts, wid, run = _word_tables(cand, word_start)
    num_words = jnp.sum(starts)
    exists = j < num_words
    at_start = jnp.where(starts, wid, length)
    wlen = jnp.zeros((length,), jnp.int32).at[jnp.where(cand, wid, length)].add(1, mode="drop")
    wrun = jnp.zeros((length,), jnp.int32).at[at_start].set(run, mode="drop")
    wpos = jnp.zeros((length,), jnp.int32).at[at_start].set(j, mode="drop")
    # rows: n-gram start words, n (one per loop iteration), mix draws, random ids
    bits = _random_bits(key, 4, max(length, max_predictions))
    u = _uniform(bits[:3])
    budget = jnp.minimum(_rounded_count(jnp.sum(cand), rate, length), max_predictions)
    none = jnp.full((length,), -1, jnp.int32)

    def eligible(masked, r):  # unmasked words that fit the remaining budget on their own
        return exists & ~masked & (wlen <= r)

    def cond(state):
        masked, _, _, r, it = state
        return jnp.any(eligible(masked, r)) & (it < max_predictions)

    def body(state):
        masked, first, last, r, it = state
        w = _select_uniform(u[0, it], eligible(masked, r))
        n = 1 + jnp.sum(u[1, it] >= n_thresholds).astype(jnp.int32)
        # Words w, w+1, ... in the same run, stopping at the first masked word (n-grams never
        # overlap) and after n words; then the longest prefix that fits the budget (ALBERT-style
        # "try shorter n-grams").
        blocked = ~exists | masked | (wrun != wrun[w])
        after = j >= w
        ok = after & (jnp.cumsum(blocked & after) == 0) & (j < w + n)
        take = ok & (jnp.cumsum(jnp.where(ok, wlen, 0)) <= r)
        end = jnp.max(jnp.where(take, j, -1))
        return (masked | take, jnp.where(take, w, first), jnp.where(take, end, last),
                r - jnp.sum(jnp.where(take, wlen, 0)), it + 1)

    init = (jnp.zeros((length,), bool), none, none, budget, jnp.int32(0))
    masked, first, last, *_ = jax.lax.while_loop(cond, body, init)
    w_of = jnp.clip(wid, 0, length - 1)
    mask = cand & masked[w_of]
    rand_ids = _random_tokens(bits[3, :length], vocab_size, cdf) if mix[1] > 0 else ids
    new_ids = _corrupt(ids, mask, u[2, :length], rand_ids, mix, mask_id)
    positions, labels, weights = _pack(ids, mask, max_predictions)
    real = weights > 0
    gfirst = jnp.clip(first[w_of], 0, length - 1)[positions]
    glast = jnp.clip(last[w_of], 0, length - 1)[positions]
    spans = NgramSpans(jnp.where(real, wpos[gfirst], 0),
                       jnp.where(real, wpos[glast] + wlen[glast] - 1, 0),
                       jnp.where(real, glast - gfirst + 1, 0))
    return (new_ids, positions, labels, weights, mask), spans


def ngram_mask(keys, input_ids, input_mask, candidates, word_start, *, max_predictions: int,
               mask_id: int, vocab_size: int | None, rate=0.15, max_n: int = 3, ngram_probs=None,
               mix=(0.8, 0.1, 0.1), replacement_probs=None) -> tuple[TokenMask, NgramSpans]:
    """Whole-word n-gram masking "in the spirit of ERNIE-Gram" (spec 3: no code released).

    Our design, not a reimplementation: until the budget ``min(max_predictions,
    round(rate * num_candidates))`` tokens is reached (or no unmasked word fits), pick a word
    uniformly among the unmasked words that fit the remaining budget, draw n in {1..max_n}
    (default P(n) ∝ 1/n, as ALBERT's n-gram masking; override with ``ngram_probs``), and mask
    the n-gram starting there: contiguous whole words inside one candidate run, cut before an
    already-masked word and shortened to the longest prefix that fits the budget. Each masked
    token then independently gets the (mask, random, keep) ``mix`` (80/10/10).

    ERNIE-Gram's defining part is NOT implemented: it replaces an n-gram by a single [MASK] and
    predicts its identity from an n-gram lexicon (T-test extracted, maximum-matching segmented),
    plus an n-gram generator; that needs a lexicon we do not have. Here each token of the
    n-gram is predicted separately (BERT-style); ``NgramSpans`` records each prediction's
    n-gram so an explicit n-gram head could be added on top.

    Returns:
      ``(TokenMask, NgramSpans)``, both with P = ``max_predictions`` slots.
    """
    batch, _ = _check_batch(input_ids, ("input_mask", input_mask), ("candidates", candidates),
                            ("word_start", word_start))
    keys = _per_example_keys(keys, batch)
    max_predictions = _check_positive_int("max_predictions", max_predictions)
    max_n = _check_positive_int("max_n", max_n)
    mix = _check_mix(mix)
    if ngram_probs is None:
        ngram_probs = 1.0 / np.arange(1, max_n + 1)
    ngram_probs = np.asarray(ngram_probs, np.float64)
    if ngram_probs.shape != (max_n,) or np.any(ngram_probs < 0) or ngram_probs.sum() <= 0:
        raise ValueError(f"ngram_probs must be {max_n} non-negative weights for n = 1..{max_n}, "
                         f"got {ngram_probs}")
    n_thresholds = _thresholds(ngram_probs)
    static = _static_rate(rate)
    rate = static if static is not None else jnp.asarray(rate, jnp.float32)
    cdf = _replacement_cdf(replacement_probs, vocab_size) if mix[1] > 0 else None
    cand = jnp.asarray(candidates).astype(bool) & (jnp.asarray(input_mask) > 0)

    def one(key, ids, cand, ws):
        return _ngram_one(key, ids, cand, ws, rate, cdf, n_thresholds,
                          max_predictions=max_predictions, mask_id=mask_id,
                          vocab_size=vocab_size, mix=mix)

    token_mask, spans = jax.vmap(one)(keys, jnp.asarray(input_ids, jnp.int32), cand,
                                      jnp.asarray(word_start).astype(bool))
    return TokenMask(*token_mask), spans
