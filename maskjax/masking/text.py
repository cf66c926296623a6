"""Token masking for masked language modelling: BERT and ELECTRA, as pure jitted functions.

Everything here runs inside the jitted train step (dynamic masking) with static output shapes:
the outputs depend only on the sequence length ``L`` and ``max_predictions``. Each function
takes batched ``[B, L]`` arrays plus ``keys``, a ``[B]`` array of typed PRNG keys (one per
example, so a sample's mask does not depend on how the batch is split or sharded), and vmaps a
per-example implementation. The masking rate may be a traced scalar (mask-rate schedules,
``maskjax.masking.schedules``): no Python control flow depends on it.

Sources (offline notes in ``specs/methods_text_gen.md``):
  * BERT ``create_pretraining_data.py::create_masked_lm_predictions`` (spec 1a);
  * fairseq ``mask_tokens_dataset.py`` as used by "Should you mask 15%" (DinkyTrain, spec 4a);
  * the HF-style Bernoulli collator of the dynamic-masking-rate paper (spec 5);
  * ELECTRA ``pretrain/pretrain_helpers.py::mask`` (spec 6a).
SpanBERT span masking and ERNIE-Gram-style n-gram masking live in ``maskjax.masking.spans``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class TokenMask(NamedTuple):
    """A masked-LM corruption with a static number of prediction slots ``P``.

    Attributes:
      input_ids: int32 [B, L], the corrupted input; it differs from the original only at
        positions where ``mask`` is True.
      positions: int32 [B, P], the predicted positions in ascending order, padded with 0
        (unique, except for ELECTRA's tolerated duplicate draws, see :func:`electra_mask`).
      labels: int32 [B, P], the original ids at ``positions`` (0 in padded slots).
      weights: float32 [B, P], 1 for a real prediction, 0 for a padded slot.
      mask: bool [B, L], True exactly at the positions of real predictions.
    """

    input_ids: jax.Array
    positions: jax.Array
    labels: jax.Array
    weights: jax.Array
    mask: jax.Array


COUNT_RULES = ("bert", "exact", "fairseq", "bernoulli")
# ELECTRA's fixed split: 85 % [MASK], 15 % left unchanged, never a random token (spec 6a).
ELECTRA_MASK_PROB = 0.85


# ------------------------------------------------------------------------------------------
# Shared helpers (also used by maskjax.masking.spans).


def _per_example_keys(keys, batch: int) -> jax.Array:
    """Validates the ``[B]`` per-example keys; raw uint32 ``[B, 2]`` keys are wrapped."""
    if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if keys.dtype == jnp.uint32 and keys.ndim == 2 and keys.shape[-1] == 2:
            keys = jax.random.wrap_key_data(keys)  # legacy jax.random.PRNGKey rows
        else:
            raise TypeError(f"expected [B] typed PRNG keys (jax.random.split(jax.random.key(s), "
                            f"B)), got an array of shape {keys.shape} and dtype {keys.dtype}")
    if keys.ndim != 1 or keys.shape[0] != batch:
        # A single key is refused on purpose: splitting it here would make each sample's mask
        # depend on the batch it lands in, which breaks accumulation/sharding reproducibility.
        raise ValueError(f"expected one key per example, shape ({batch},), got {keys.shape}")
    return keys


def _check_batch(input_ids, *others) -> tuple[int, int]:
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {input_ids.shape}")
    for name, x in others:
        if x is not None and x.shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {input_ids.shape}, "
                             f"got {x.shape}")
    return input_ids.shape


def _static_rate(rate) -> float | None:
    """The rate as a Python float when it is static (then validated), else None (traced)."""
    if isinstance(rate, jax.core.Tracer):
        return None
    value = float(np.asarray(rate))
    if not 0.0 < value <= 1.0:
        raise ValueError(f"masking rate must be in (0, 1], got {rate}")
    return value


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive Python int (static), got {value!r}")
    return int(value)


def _check_mix(mix) -> tuple[float, float, float]:
    """Validates a (mask, random, keep) replacement mix."""
    mix = tuple(float(m) for m in mix)
    if len(mix) != 3 or min(mix) < 0 or abs(sum(mix) - 1.0) > 1e-6:
        raise ValueError(f"mix must be three non-negative probabilities (mask, random, keep) "
                         f"summing to 1, got {mix}")
    return mix


def _rounded_count(n: jax.Array, rate, length: int, mode: str = "round") -> jax.Array:
    """``round(n * rate)`` (or ``ceil``) as int32, bit-exact with the Python reference.

    BERT rounds a Python float (binary64) with Python 3's ``round`` (half to even), SpanBERT
    takes ``math.ceil`` of one. float32 arithmetic can move ties (n * rate near k + 0.5), so for
    a static rate the counts for every n in [0, L] are precomputed in Python and looked up. A
    traced rate (a schedule) is float32 anyway: its product is rounded in float32, half to even
    (``jnp.round``), and may differ by one from a binary64 evaluation at exact ties.
    """
    rule, traced_rule = (math.ceil, jnp.ceil) if mode == "ceil" else (round, jnp.round)
    static = _static_rate(rate)
    if static is not None:
        table = np.asarray([rule(k * static) for k in range(length + 1)], np.int32)
        return jnp.asarray(table)[jnp.clip(n, 0, length)]
    x = n.astype(jnp.float32) * jnp.asarray(rate, jnp.float32)
    return traced_rule(x).astype(jnp.int32)


def _group_starts(cand: jax.Array, word_start: jax.Array | None) -> jax.Array:
    """First token of each maskable group: a word start, or a candidate after a non-candidate.

    Groups never cross non-candidates ([CLS]/[SEP]/padding), so a ``##`` piece right after a
    special token starts its own group (BERT would glue it to the previous segment's last word).
    """
    prev = jnp.concatenate([jnp.zeros((1,), bool), cand[:-1]])
    if word_start is None:
        return cand
    return cand & (word_start.astype(bool) | ~prev)


def _replacement_cdf(replacement_probs, vocab_size: int | None) -> jax.Array | None:
    """The CDF of the replacement distribution, or None for uniform over ``[0, vocab_size)``."""
    if replacement_probs is None:
        if vocab_size is None:
            raise ValueError("vocab_size is required for random-token replacement "
                             "(or pass replacement_probs)")
        _check_positive_int("vocab_size", vocab_size)
        return None
    probs = jnp.asarray(replacement_probs, jnp.float32)
    if probs.ndim != 1:
        raise ValueError(f"replacement_probs must be a [V] vector, got shape {probs.shape}")
    if vocab_size is not None and probs.shape[0] != vocab_size:
        raise ValueError(f"replacement_probs has {probs.shape[0]} entries, "
                         f"vocab_size is {vocab_size}")
    return jnp.cumsum(probs)  # computed once per batch, not once per example


def _random_bits(key, rows: int, width: int) -> jax.Array:
    """All the randomness of one example in ONE threefry call: uint32 [rows, width].

    Each separate ``jax.random`` call inlines its own threefry hash; on CPU every one adds
    about a quarter second of XLA compile time, so rows of one draw are sliced instead.
    """
    return jax.random.bits(key, (rows, width), jnp.uint32)


def _uniform(bits: jax.Array) -> jax.Array:
    """float32 uniforms in [0, 1) from uint32 bits (23 mantissa bits, as jax.random.uniform)."""
    one_to_two = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
    return one_to_two - 1.0


def _random_tokens(bits, vocab_size: int | None, cdf) -> jax.Array:
    """Random ids from uint32 ``bits``: uniform over the vocab or drawn from the CDF.

    Uniform ids are ``bits % vocab_size`` (modulo bias below vocab_size / 2**32, i.e. < 1e-5
    for any real vocab). Otherwise inverse-CDF sampling, a binary search per token, avoids
    ``categorical``'s [L, V] Gumbel noise (60 MB per example at L = 512, V = 30k).
    """
    if cdf is None:
        return (bits % jnp.uint32(vocab_size)).astype(jnp.int32)
    u = _uniform(bits) * cdf[-1]
    idx = jnp.searchsorted(cdf, u, side="right")  # first id whose CDF exceeds u: P = probs[id]
    return jnp.clip(idx, 0, cdf.shape[0] - 1).astype(jnp.int32)


def _corrupt(ids, mask, u, rand_ids, mix, mask_id: int) -> jax.Array:
    """Applies the (mask, random, keep) mix: [MASK] if u < mix[0], random if u < mix[0] + mix[1].

    One uniform per token (or per span, see SpanBERT) with BERT's/SpanBERT's order of the cases:
    with mix = (1, 0, 0) every selected token becomes [MASK] since u < 1 always.
    """
    out = jnp.where(mask & (u < mix[0]), jnp.int32(mask_id), ids)
    if mix[1] > 0:
        out = jnp.where(mask & (u >= mix[0]) & (u < mix[0] + mix[1]), rand_ids, out)
    return out


def _ascending(keys: jax.Array, size: int, fill: int) -> jax.Array:
    """The ``size`` smallest entries of ``keys`` in ascending order, padded with ``fill``.

    A sort compiles faster than ``jnp.nonzero(size=...)`` and is O(L log L).
    """
    out = jnp.sort(keys)
    if size <= out.shape[0]:
        return out[:size]
    return jnp.concatenate([out, jnp.full((size - out.shape[0],), fill, out.dtype)])


def _pack(ids, mask, max_predictions: int):
    """positions/labels/weights for a mask with at most ``max_predictions`` True entries."""
    length = mask.shape[0]
    slots = _ascending(jnp.where(mask, jnp.arange(length, dtype=jnp.int32), length),
                       max_predictions, length)
    valid = slots < length
    positions = jnp.where(valid, slots, 0).astype(jnp.int32)
    labels = jnp.where(valid, ids[positions], 0).astype(jnp.int32)
    return positions, labels, valid.astype(jnp.float32)


def _select_uniform(u: jax.Array, allowed: jax.Array) -> jax.Array:
    """Index of one True entry of ``allowed`` chosen by the uniform ``u`` (0 if there is none)."""
    n = jnp.sum(allowed)
    k = jnp.floor(u * n).astype(jnp.int32)
    k = jnp.clip(k, 0, jnp.maximum(n - 1, 0))  # u * n can round up to n in float32
    return jnp.argmax(jnp.cumsum(allowed) > k).astype(jnp.int32)


# ------------------------------------------------------------------------------------------
# BERT


def _greedy_fill(lens: jax.Array, budget: jax.Array) -> jax.Array:
    """BERT's whole-word walk: take groups in order, SKIP one that would exceed the budget.

    ``lens`` [G] are the group lengths in visiting order (0 = no group). The sequential walk is
    replaced by phases: within a phase every group that still fits (len <= remaining r) is
    taken while the running total stays <= r; the first one that does not fit ends the phase
    and is skipped. r shrinks strictly each phase (to below that group's length), so phases are
    few (about the longest word's piece count), each O(G) - instead of a G-step scan.
    """
    g = lens.shape[0]
    k = jnp.arange(g)

    def body(state):
        taken, r, start, _ = state
        fits = (lens > 0) & (k >= start) & (lens <= r)
        total = jnp.cumsum(jnp.where(fits, lens, 0))
        over = fits & (total > r)
        stop = jnp.where(jnp.any(over), jnp.argmax(over), g)
        take = fits & (k < stop)
        r = r - jnp.sum(jnp.where(take, lens, 0))
        return taken | take, r, stop + 1, (stop >= g) | (r <= 0)

    init = (jnp.zeros((g,), bool), budget.astype(jnp.int32), jnp.int32(0), budget <= 0)
    taken, *_ = jax.lax.while_loop(lambda s: ~s[3], body, init)
    return taken


def _bert_one(key, ids, input_mask, cand, word_start, rate, cdf, *, max_predictions, mask_id,
              vocab_size, whole_word, mix, count):
    length = ids.shape[0]
    bits = _random_bits(key, 4, length)  # rows: shuffle scores, count, mix, random ids
    u_order, u_count, u_mix = _uniform(bits[0]), _uniform(bits[1]), _uniform(bits[2])
    starts = _group_starts(cand, word_start if whole_word else None)
    gid = jnp.cumsum(starts) - 1  # group of each candidate position, in position order
    num_groups = jnp.sum(starts)
    glen = jnp.zeros((length,), jnp.int32).at[jnp.where(cand, gid, length)].add(1, mode="drop")
    present = jnp.arange(length) < num_groups
    num_cand = jnp.sum(cand)

    if count == "bert":  # round(rate * len(tokens)), tokens incl. [CLS]/[SEP]; >= 1; <= max_pred
        budget = jnp.maximum(1, _rounded_count(jnp.sum(input_mask > 0), rate, length))
    elif count == "exact":
        budget = _rounded_count(num_cand, rate, length)
    elif count == "fairseq":  # int(p * n + U[0, 1)): probabilistic rounding
        budget = jnp.floor(num_cand.astype(jnp.float32) * rate + u_count[0]).astype(jnp.int32)
    else:  # bernoulli: each group independently, the selection truncated to max_predictions
        present = present & (u_count < rate)
        budget = jnp.int32(max_predictions)
    budget = jnp.minimum(budget, max_predictions)

    # Shuffle the groups: sort random scores, absent groups last.
    order = jnp.argsort(jnp.where(present, u_order, 2.0))
    if whole_word:
        taken = _greedy_fill(jnp.where(present[order], glen[order], 0), budget)
    else:  # one token per group: the first `budget` shuffled candidates
        taken = present[order] & (jnp.arange(length) < budget)
    accepted = jnp.zeros((length,), bool).at[order].set(taken)
    mask = cand & accepted[jnp.clip(gid, 0, length - 1)]

    rand_ids = _random_tokens(bits[3], vocab_size, cdf) if mix[1] > 0 else ids
    new_ids = _corrupt(ids, mask, u_mix, rand_ids, mix, mask_id)
    return (new_ids, *_pack(ids, mask, max_predictions), mask)


def bert_mask(keys, input_ids, input_mask, candidates, *, max_predictions: int, mask_id: int,
              vocab_size: int | None, rate=0.15, whole_word: bool = False, word_start=None,
              mix=(0.8, 0.1, 0.1), count: str = "bert", replacement_probs=None) -> TokenMask:
    """BERT masked-LM corruption, ``create_masked_lm_predictions`` (spec 1a), made dynamic.

    Candidates are shuffled (random scores + sort); the first ``num_to_predict`` tokens are
    selected, or, with ``whole_word``, whole groups (a word start plus its ``##`` pieces) are
    taken in shuffled order and a group that would exceed the budget is SKIPPED, so the budget
    can be under-filled, as in BERT. Each selected token is then independently replaced by
    [MASK] with prob ``mix[0]``, a random id with prob ``mix[1]``, or kept with prob ``mix[2]``
    (BERT: 0.8/0.1/0.1; "Should you mask 15%" (spec 4b): ``rate=0.4, mix=(1, 0, 0)``).

    Count rules (``count``), all in tokens and capped at ``max_predictions``:
      * ``"bert"``: ``min(max_predictions, max(1, round(rate * sum(input_mask))))``, counting
        [CLS]/[SEP]; ``round`` is Python 3's (half to even) on a binary64 product.
      * ``"exact"``: ``round(rate * num_candidates)`` (no floor of 1).
      * ``"fairseq"``: ``int(rate * num_candidates + U[0, 1))``, fairseq/DinkyTrain's
        probabilistic rounding (spec 4a). Unlike fairseq, which masks over the whole block
        including ``<s>``, specials are excluded here (they are not candidates).
      * ``"bernoulli"``: each candidate (group) independently with prob ``rate`` (HF collator,
        dynamic-masking-rate paper, spec 5); a selection larger than ``max_predictions`` is
        truncated to a uniformly random subset that fits (the greedy walk in shuffled order).
    When the count exceeds the candidates, all candidates are masked.

    Args:
      keys: [B] typed PRNG keys, one per example.
      input_ids: int [B, L] token ids.
      input_mask: [B, L], 1 for real tokens incl. [CLS]/[SEP], 0 for padding.
      candidates: bool [B, L], maskable positions (input_mask & not special); it is ANDed with
        ``input_mask`` so padding is never masked.
      max_predictions: static number of prediction slots P.
      mask_id: the [MASK] id.
      vocab_size: random ids are uniform over ``[0, vocab_size)``, BERT's whole vocab list
        (specials included). May be None when ``mix[1] == 0`` or ``replacement_probs`` is given.
      rate: masking rate in (0, 1]; a Python float or a traced scalar (schedules).
      whole_word: mask whole words; needs ``word_start``.
      word_start: bool [B, L], True at a word's first piece, False at ``##`` continuations.
      mix: static (mask, random, keep) probabilities.
      count: the count rule, see above.
      replacement_probs: optional [V] weights (e.g. the corpus unigram distribution) to draw
        random ids from instead of uniform.

    Returns:
      A :class:`TokenMask` with ``P = max_predictions`` slots.
    """
    batch, _ = _check_batch(input_ids, ("input_mask", input_mask), ("candidates", candidates),
                            ("word_start", word_start))
    keys = _per_example_keys(keys, batch)
    max_predictions = _check_positive_int("max_predictions", max_predictions)
    mix = _check_mix(mix)
    if count not in COUNT_RULES:
        raise ValueError(f"unknown count rule {count!r}; expected one of {COUNT_RULES}")
    if whole_word and word_start is None:
        raise ValueError("whole_word=True needs word_start (True at each word's first piece)")
    static = _static_rate(rate)
    rate = static if static is not None else jnp.asarray(rate, jnp.float32)
    cdf = _replacement_cdf(replacement_probs, vocab_size) if mix[1] > 0 else None
    ids = jnp.asarray(input_ids, jnp.int32)
    cand = jnp.asarray(candidates).astype(bool) & (jnp.asarray(input_mask) > 0)
    ws = jnp.ones_like(cand) if word_start is None else jnp.asarray(word_start).astype(bool)

    def one(key, ids, input_mask, cand, ws):
        return _bert_one(key, ids, input_mask, cand, ws, rate, cdf,
                         max_predictions=max_predictions, mask_id=mask_id, vocab_size=vocab_size,
                         whole_word=whole_word, mix=mix, count=count)

    return TokenMask(*jax.vmap(one)(keys, ids, jnp.asarray(input_mask), cand, ws))


# ------------------------------------------------------------------------------------------
# ELECTRA


def electra_max_predictions(seq_len: int, rate: float = 0.15) -> int:
    """ELECTRA's ``max_predictions_per_seq = int((mask_prob + 0.005) * max_seq_length)``.

    19 for 128 tokens and 79 for 512 at the default 0.15 (spec 6a).
    """
    return int((rate + 0.005) * seq_len)


def _electra_one(key, ids, input_mask, cand, rate, *, max_predictions, mask_id):
    length = ids.shape[0]
    n = max_predictions
    cand = cand & (jnp.arange(length) > 0)  # ELECTRA never updates position 0 (scatter_update)
    # tf.round(float32(num_tokens) * mask_prob): float32, half to even, as in the TF graph.
    num_tokens = jnp.sum(input_mask > 0).astype(jnp.float32)
    num_to_predict = jnp.maximum(
        1, jnp.minimum(n, jnp.round(num_tokens * jnp.asarray(rate, jnp.float32)).astype(jnp.int32)))
    num_cand = jnp.sum(cand)
    u = _uniform(_random_bits(key, 2, n))  # rows: positions, [MASK]-or-keep
    # tf.random.categorical over a uniform distribution on candidates: N draws WITH replacement.
    cand_pos = jnp.sort(jnp.where(cand, jnp.arange(length, dtype=jnp.int32), length))
    draw = jnp.floor(u[0] * num_cand).astype(jnp.int32)
    pos = cand_pos[jnp.clip(draw, 0, jnp.maximum(num_cand - 1, 0))]
    weight = (jnp.arange(n) < num_to_predict) & (num_cand > 0)
    # A duplicated position becomes [MASK] if any of its weighted draws says so: ELECTRA's
    # scatter_update sums the duplicate [MASK] updates and divides by their count.
    to_mask = weight & (u[1] < ELECTRA_MASK_PROB)
    new_ids = ids.at[jnp.where(to_mask, pos, length)].set(jnp.int32(mask_id), mode="drop")
    mask = jnp.zeros((length,), bool).at[jnp.where(weight, pos, length)].set(True, mode="drop")
    slots = jnp.sort(jnp.where(weight, pos, length))  # weighted draws ascending, then padding
    valid = slots < length
    positions = jnp.where(valid, slots, 0).astype(jnp.int32)
    labels = jnp.where(valid, ids[positions], 0).astype(jnp.int32)
    return new_ids, positions, labels, valid.astype(jnp.float32), mask


def electra_mask(keys, input_ids, input_mask, candidates, *, max_predictions: int, mask_id: int,
                 rate=0.15) -> TokenMask:
    """ELECTRA's generator masking, ``pretrain/pretrain_helpers.py::mask`` (spec 6a).

    ``N = max_predictions`` positions are drawn WITH replacement uniformly over the candidates;
    only the first ``max(1, min(N, round(num_real * rate)))`` draws are weighted 1 (``num_real``
    counts [CLS]/[SEP]; float32 half-to-even rounding as ``tf.round``). Each weighted draw
    becomes [MASK] with prob 0.85 and is left unchanged otherwise; there are no random tokens.
    Position 0 is never a candidate (ELECTRA's ``scatter_update`` ignores index 0). The caller
    should also exclude [MASK] ids from ``candidates``, as ELECTRA does.

    Duplicates are tolerated as in ELECTRA: a position drawn twice appears twice in
    ``positions`` (adjacent, since positions are sorted), each copy with weight 1 and the same
    label, so its loss counts twice; ``mask`` is True there once, and the position becomes
    [MASK] if any of its draws chose [MASK]. Hence ``sum(weights) == num_to_predict`` while
    ``sum(mask)`` can be smaller. A row without candidates gets all weights 0.

    Returns:
      A :class:`TokenMask` with ``P = max_predictions`` slots (positions ascending, not unique).
    """
    batch, _ = _check_batch(input_ids, ("input_mask", input_mask), ("candidates", candidates))
    keys = _per_example_keys(keys, batch)
    max_predictions = _check_positive_int("max_predictions", max_predictions)
    static = _static_rate(rate)
    rate = static if static is not None else jnp.asarray(rate, jnp.float32)
    cand = jnp.asarray(candidates).astype(bool) & (jnp.asarray(input_mask) > 0)

    def one(key, ids, input_mask, cand):
        return _electra_one(key, ids, input_mask, cand, rate, max_predictions=max_predictions,
                            mask_id=mask_id)

    return TokenMask(*jax.vmap(one)(keys, jnp.asarray(input_ids, jnp.int32),
                                    jnp.asarray(input_mask), cand))
