"""More masked-diffusion samplers: MDLM ``ddpm_cache``, MD4 top-p, LLaDA low-confidence remasking
and LLaDA's semi-autoregressive blocks; plus :func:`sample_entropy` for the evaluation.

They sit beside :mod:`maskjax.masking.diffusion` (schedules, MD4 ancestral, MaskGIT), whose grid
they reuse and whose conventions they keep:

* ``denoiser(z, t) -> logits [B, L, V]``: any function of the partially masked ``z`` [B, L] and a
  time ``t`` [B]. The logits are over the tokens the model may predict. When ``mask_id < V`` (the
  mask is a vocabulary entry, e.g. BERT's [MASK]) its column is dropped ("zero masking", MDLM's
  SUBS), so no sampler can ever emit the mask as a prediction; when ``mask_id >= V`` (MD4:
  ``mask_id = V``) nothing needs dropping.
* ``keys`` are ``[B]`` typed PRNG keys, one per example; step ``i`` uses ``fold_in(key, i)``, so a
  sample does not depend on the batch it is drawn in.
* Everything is pure ``jnp`` with static shapes and ``lax`` loops; the functions are meant to be
  wrapped in ``jax.jit(functools.partial(f, denoiser=..., <static ints>))``. Arguments that fix a
  shape (``length``, ``num_steps`` of ``ddpm_cache``, ``gen_length``/``block_length`` of LLaDA)
  must be Python ints; step counts elsewhere, top-p's ``p``, LLaDA's temperature and the cache
  flags may be traced, so one compiled program serves a whole sweep.
* Each step draws its randomness as one flat ``jax.random.bits`` call per example and makes its
  Gumbel / uniform noise from those bits (:func:`gumbel_from_bits`), instead of
  ``jax.random.categorical`` on [L, V]: on CPU, XLA's compile time of a multi-dimensional
  threefry draw is seconds per call site (see :func:`_bits`).

Which samplers are exact in the limit (with the exact denoiser p(x0 | z)): ``ddpm_cache`` and
top-p with ``p = 1`` (ancestral samplers: TV -> 0 as steps -> inf), LLaDA with
``remasking="random"`` at temperature 1 (exact once ``steps == gen_length``, one token per step)
and LLaDA ``low_confidence`` with ``block_length = 1`` (left-to-right autoregressive). Not exact
at any number of steps: top-p with ``p < 1`` (it samples a truncated model) and LLaDA
``low_confidence`` over blocks longer than one token (it picks *which* position to reveal by the
sampled token's probability, which biases the draw; more steps make it worse).
tests/test_diffusion_samplers_more.py measures all of them against the exact distributions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.masking.diffusion import md4_sampling_grid
from maskjax.masking.text import _per_example_keys

MDLM_SAMPLING_EPS = 1e-5   # diffusion.py::_sample(num_steps, eps=1e-5): the grid ends at t = 1e-5
MD4_TOPP = 0.98            # md4.py: MD4.topp default
LLADA_REMASKING = ("low_confidence", "random")


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def x0_log_probs(logits: jax.Array, mask_id: int) -> jax.Array:
    """``log p(x0 | z)`` [..., V] in float32 from a denoiser's logits, with the mask's column at
    ``-inf`` when ``mask_id < V`` (MDLM's zero masking: the mask is never a prediction)."""
    logits = logits.astype(jnp.float32)
    if 0 <= mask_id < logits.shape[-1]:
        logits = logits.at[..., mask_id].set(-jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def _step_keys(keys: jax.Array, i) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)


def _bits(keys: jax.Array, n: int) -> jax.Array:
    """uint32 [B, n]: all of a step's randomness for each example in ONE flat threefry draw.

    Flat on purpose: with jax_threefry_partitionable (the default) XLA's CPU compile time of a
    draw grows steeply with its rank (seconds for a 3-D [L, V] draw under vmap, under a second
    for the same number of bits drawn 1-D), and a sampler recompiles for every shape it meets.
    """
    return jax.vmap(lambda k: jax.random.bits(k, (n,), jnp.uint32))(keys)


def gumbel_from_bits(hi: jax.Array, lo: jax.Array | None = None) -> jax.Array:
    """Standard Gumbel noise (float32, always finite) from uniform uint32 bits.

    ``G = -log(-log1p(-v))`` with ``v`` uniform in (0, 1): the upper tail of ``G`` (what lets an
    unlikely token win a Gumbel-max) is ``v`` near 0, so ``v`` is built with fine resolution
    there. With ``hi`` alone, ``v = (hi >> 8 + 1/2) 2^-24`` and ``G <= 17.3`` (as float32 noise
    from a 24-bit uniform, e.g. ``jax.random.gumbel``'s default). With ``lo`` too (64 bits),
    ``v = (hi >> 8) 2^-24 + (lo + 1/2) 2^-56`` and ``G`` reaches 39.5, beyond float64
    ``torch.rand`` noise (53 bits: 36.7).
    """
    top = (hi >> 8).astype(jnp.float32) * 2.0 ** -24
    if lo is None:
        v = top + 2.0 ** -25
    else:
        v = top + (lo.astype(jnp.float32) + 0.5) * 2.0 ** -56
    v = jnp.minimum(v, 1.0 - 2.0 ** -24)   # the float32 sum may round up to 1
    return -jnp.log(-jnp.log1p(-v))


def _uniform_from_bits(bits: jax.Array) -> jax.Array:
    """float32 uniforms in [0, 1) from uint32 bits (the top 24 bits)."""
    return (bits >> 8).astype(jnp.float32) * 2.0 ** -24


def _categorical(bits: jax.Array, log_probs: jax.Array) -> jax.Array:
    """Gumbel-max draws from ``log_probs`` [B, L, C] with ``bits`` [B, L * C] (int32 [B, L])."""
    return jnp.argmax(log_probs + gumbel_from_bits(bits.reshape(log_probs.shape)), axis=-1).astype(jnp.int32)


# ------------------------------------------------------------------------------------------
# MDLM ddpm_cache (kuleshov-group/mdlm diffusion.py: _sample, _ddpm_caching_update; spec 11d).


def mdlm_ddpm_step(keys: jax.Array, x: jax.Array, log_p_x0: jax.Array, t, s, mask_id: int) -> jax.Array:
    """One ``_ddpm_caching_update``: every masked token draws from the unnormalised
    ``[p(x0 | x) (t - s), s]`` over V + 1 classes (the last one = stays masked), i.e. it unmasks
    with probability ``(t - s) / t`` (loglinear: move chance = t). Unmasked tokens are copied.

    ``keys`` [B], ``x`` [B, L], ``log_p_x0`` [B, L, V] (:func:`x0_log_probs`), ``t``/``s`` scalars.
    MDLM draws with its own Gumbel form ``argmax(q / (1e-10 - log(u + 1e-10)))`` (float32 ``u``);
    we take the Gumbel-max of ``log q`` with 24-bit uniforms: the same distribution.
    """
    keys = _per_example_keys(keys, x.shape[0])
    t, s = _f32(t), jnp.maximum(_f32(s), 0.0)   # the last s = t - dt may round below 0
    log_q = jnp.concatenate([log_p_x0 + jnp.log(t - s),
                             jnp.broadcast_to(jnp.log(s), x.shape + (1,))], axis=-1)
    draw = _categorical(_bits(keys, log_q.shape[1] * log_q.shape[2]), log_q)
    draw = jnp.where(draw == log_p_x0.shape[-1], mask_id, draw).astype(x.dtype)
    return jnp.where(x == mask_id, draw, x)


def mdlm_ddpm_cache_sample(keys: jax.Array, denoiser, length: int, num_steps: int, mask_id: int, *,
                           eps: float = MDLM_SAMPLING_EPS, use_cache=True, time_conditioning=False,
                           noise_removal: bool = True) -> tuple[jax.Array, jax.Array]:
    """MDLM's default sampler ``ddpm_cache`` from all-masked; returns ``(samples [B, L], calls)``.

    * ``t`` runs over ``linspace(1, eps, num_steps + 1)``, ``dt = (1 - eps) / num_steps``, and step
      ``i`` is :func:`mdlm_ddpm_step` from ``t_i`` to ``t_i - dt`` (MDLM's ``_sample``);
    * the cache: the denoiser's output is re-used while no token of the batch changed (MDLM's
      ``torch.allclose(x_next, x)`` is over the whole batch, and so is ours). That is valid only
      for a denoiser without time conditioning, so ``time_conditioning`` (or not ``use_cache``)
      calls it at every step. As in MDLM the denoiser gets ``t = 0`` without time conditioning
      (its ``_process_sigma`` zeroes sigma) and ``t`` with it. Both flags may be traced bools;
    * ``noise_removal`` (MDLM's ``sampling.noise_removal``): one last call at ``t = eps`` and the
      argmax of ``p(x0 | x)`` for each token still masked (unmasked ones are kept, as SUBS does);
      without it a token stays masked with probability ``eps``.

    ``calls`` [num_steps + 1] int32 counts the denoiser calls per step (0 = served from the
    cache), the last entry being the noise-removal call. The skip is a ``lax.cond``, so it
    really saves the call under ``jit`` (not under ``vmap``, which turns a cond into both
    branches; to cache per example, ``lax.map`` over examples instead). Only for MDLM's
    loglinear schedule (its code asserts it): the move chance at ``t`` is ``t``.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive Python int (it fixes the shape of calls), "
                         f"got {num_steps!r}")
    batch = keys.shape[0]
    keys = _per_example_keys(keys, batch)
    x = jnp.full((batch, length), mask_id, jnp.int32)
    ts = jnp.linspace(1.0, eps, num_steps + 1, dtype=jnp.float32)
    dt = (1.0 - eps) / num_steps
    cache_ok = jnp.logical_and(use_cache, jnp.logical_not(time_conditioning))

    def model(x, t):
        t_in = jnp.full((batch,), jnp.where(time_conditioning, t, 0.0), jnp.float32)
        return x0_log_probs(denoiser(x, t_in), mask_id)

    shape = jax.eval_shape(model, x, ts[0])

    def body(i, carry):
        x, log_p, fresh, calls = carry
        t = ts[i]
        # MDLM keeps p_x0 from the last call; ``fresh`` = it is still valid for this x.
        log_p = jax.lax.cond(fresh, lambda: log_p, lambda: model(x, t))
        calls = calls.at[i].set(jnp.where(fresh, 0, 1).astype(jnp.int32))
        x_next = mdlm_ddpm_step(_step_keys(keys, i), x, log_p, t, t - dt, mask_id)
        fresh = jnp.logical_and(cache_ok, jnp.all(x_next == x))
        return x_next, log_p, fresh, calls

    init = (x, jnp.zeros(shape.shape, shape.dtype), jnp.asarray(False), jnp.zeros((num_steps + 1,), jnp.int32))
    x, _, _, calls = jax.lax.fori_loop(0, num_steps, body, init)
    if noise_removal:   # MDLM calls the model here whatever the cache holds
        final = jnp.argmax(model(x, ts[-1]), axis=-1).astype(x.dtype)
        x = jnp.where(x == mask_id, final, x)
        calls = calls.at[num_steps].set(1)
    return x, calls


# ------------------------------------------------------------------------------------------
# MD4 top-p (md4.py::topp_sample_step, binary_search.py::topp_mask; spec 12c).


def topp_logits(logits: jax.Array, p, replace_val: float = -jnp.inf) -> jax.Array:
    """MD4's ``topp_mask``: keeps the logits of the smallest set of most probable tokens whose
    total probability is ``>= p`` (all tokens tied with the least probable kept one are kept);
    the others become ``replace_val``.

    MD4 binary-searches float32 bit patterns for the largest threshold ``c`` with
    ``sum(probs[probs >= c]) >= p`` and keeps ``probs >= c``. We sort instead (the same set up to
    the order of float summation): a token is in the nucleus when the mass of the tokens before
    it, in descending order, is ``< p``; ``c`` is the smallest probability in it. MD4 replaces
    with ``-1e7``; the default ``-inf`` removes a token exactly (the top token is always kept,
    so no row is all ``-inf``). A Python ``p >= 1`` returns the logits unchanged; ``p`` may be traced.
    """
    logits = logits.astype(jnp.float32)
    if isinstance(p, (int, float)) and p >= 1.0:
        return logits
    probs = jax.nn.softmax(logits, axis=-1)
    desc = -jnp.sort(-probs, axis=-1)
    before = jnp.cumsum(desc, axis=-1) - desc   # mass strictly before each token
    n_keep = jnp.maximum(jnp.sum(before < p, axis=-1, keepdims=True), 1)
    cutoff = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
    return jnp.where(probs >= cutoff, logits, jnp.asarray(replace_val, jnp.float32))


def topp_sample(keys: jax.Array, denoiser, length: int, num_steps, alpha_fn, mask_id: int, *,
                topp=MD4_TOPP, grid: str = "cosine") -> jax.Array:
    """MD4's ``topp`` sampler from all-masked [B, L] int32: the ancestral sampler of
    :func:`maskjax.masking.diffusion.ancestral_sample` (same grid, same ``alpha_fn``, step ``i``
    keyed by ``fold_in(key, i)``) on the denoiser's logits truncated by :func:`topp_logits`.

    Each masked token draws from ``[p_unmask softmax(top-p logits), 1 - p_unmask]`` with
    ``p_unmask = (alpha_s - alpha_t) / (1 - alpha_t)``; then MD4's ``decode``: a token still masked
    at t = 0 takes the (untruncated = truncated) argmax. Its own loop rather than a wrapped
    denoiser in ``ancestral_sample`` only to draw each step's noise as one flat threefry call
    (see :func:`_bits`); the distribution is the same. ``num_steps`` and ``topp`` may be traced.
    """
    batch = keys.shape[0]
    keys = _per_example_keys(keys, batch)
    z = jnp.full((batch, length), mask_id, jnp.int32)

    def body(i, z):
        s, t = md4_sampling_grid(i, num_steps, grid)
        log_p = jax.nn.log_softmax(topp_logits(x0_log_probs(denoiser(z, jnp.full((batch,), t)), mask_id), topp), -1)
        a_s, a_t = _f32(alpha_fn(s)), _f32(alpha_fn(t))
        p = (a_s - a_t) / (1.0 - a_t)
        log_q = jnp.concatenate([jnp.log(p) + log_p, jnp.broadcast_to(jnp.log1p(-p), z.shape + (1,))], -1)
        draw = _categorical(_bits(_step_keys(keys, i), log_q.shape[1] * log_q.shape[2]), log_q)
        draw = jnp.where(draw == log_p.shape[-1], mask_id, draw)   # class V is "stay masked"
        return jnp.where(z == mask_id, draw, z)

    z = jax.lax.fori_loop(0, num_steps, body, z)
    final = jnp.argmax(x0_log_probs(denoiser(z, jnp.zeros((batch,), jnp.float32)), mask_id), -1)
    return jnp.where(z == mask_id, final.astype(jnp.int32), z)


# ------------------------------------------------------------------------------------------
# LLaDA (ML-GSAI/LLaDA generate.py): low-confidence / random remasking, semi-AR blocks.


def _is_zero(temperature) -> bool:
    return isinstance(temperature, (int, float)) and temperature == 0


def gumbel_scores(bits: jax.Array, logits: jax.Array, temperature) -> jax.Array:
    """LLaDA's ``add_gumbel_noise`` in log space: ``logits + temperature * Gumbel`` (float32).

    LLaDA computes ``exp(logits) / (-log u)^temperature`` in float64, whose argmax is that of
    ``logits + temperature * (-log(-log u))``: a draw from ``softmax(logits / temperature)``. The
    log form cannot overflow, so float32 is enough for the sum; the precision that matters
    (arXiv:2409.02908) is the Gumbel's upper tail, which float32 noise from a 24-bit uniform cuts
    at about 17, so tokens less likely than about e^-17 times the top one can never be drawn (a
    lower effective temperature). ``bits`` uint32 ``[2 * logits.size]`` (flat) feed
    :func:`gumbel_from_bits` with 64 bits per draw: tail up to 39.5, longer than float64
    ``torch.rand``'s. A Python ``temperature == 0`` returns the logits (no noise: the argmax, as
    LLaDA); a traced 0 adds ``0 * G`` (finite), the same argmax.
    """
    logits = logits.astype(jnp.float32)
    if _is_zero(temperature):
        return logits
    hi, lo = bits.reshape((2,) + logits.shape)
    return logits + _f32(temperature) * gumbel_from_bits(hi, lo)


def num_transfer_tokens(mask_count: jax.Array, steps: int) -> jax.Array:
    """LLaDA's ``get_num_transfer_tokens``: ``mask_count`` [B] masked tokens spread over ``steps``
    steps, ``mask_count // steps`` each and one more for the first ``mask_count % steps``:
    int32 [B, steps], each row summing to its count."""
    return _transfer_at(jnp.asarray(mask_count, jnp.int32)[:, None], steps, jnp.arange(steps)[None])


def _transfer_at(mask_count, steps, j):
    """Entry ``j`` of :func:`num_transfer_tokens` (``steps`` and ``j`` may be traced)."""
    return mask_count // steps + (j < mask_count % steps).astype(jnp.int32)


def _top_k_positions(confidence: jax.Array, k: jax.Array) -> jax.Array:
    """bool [B, L]: the ``k`` [B] highest ``confidence`` per row (ties: the lower index first), a
    static-shape stand-in for LLaDA's per-row ``torch.topk(confidence[j], k=...)``."""
    order = jnp.argsort(-confidence, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1)
    return rank < k[:, None]


def llada_step(keys: jax.Array, x: jax.Array, logits: jax.Array, k: jax.Array, block_end, mask_id: int, *,
               temperature=0.0, remasking: str = "low_confidence") -> tuple[jax.Array, jax.Array]:
    """One LLaDA step; returns ``(next x, transferred)`` both [B, L].

    ``x0 = argmax(gumbel_scores(logits, temperature))``; its confidence is ``softmax(logits)[x0]``
    (the untempered probability: ``low_confidence``) or a uniform draw (``random``); positions
    ``>= block_end`` (later blocks) and unmasked positions get ``-inf``; the ``k`` [B] most
    confident take their ``x0``, every other masked position stays masked ("remasked").
    One flat threefry draw per example (:func:`_bits`), none at all for ``low_confidence`` at a
    Python temperature 0.
    """
    if remasking not in LLADA_REMASKING:
        raise ValueError(f"remasking must be one of {LLADA_REMASKING}, got {remasking!r}")
    keys = _per_example_keys(keys, x.shape[0])
    log_p = x0_log_probs(logits, mask_id)
    n_noise = 0 if _is_zero(temperature) else 2 * log_p.shape[1] * log_p.shape[2]
    n_conf = x.shape[1] if remasking == "random" else 0
    bits = _bits(keys, n_noise + n_conf) if n_noise + n_conf else jnp.zeros((x.shape[0], 0), jnp.uint32)
    scores = jax.vmap(lambda b, lg: gumbel_scores(b, lg, temperature))(bits[:, :n_noise], log_p)
    x0 = jnp.argmax(scores, axis=-1).astype(x.dtype)
    if remasking == "low_confidence":
        x0_p = jnp.exp(jnp.take_along_axis(log_p, x0[..., None].astype(jnp.int32), axis=-1)[..., 0])
    else:
        x0_p = _uniform_from_bits(bits[:, n_noise:])
    masked = x == mask_id
    in_reach = jnp.arange(x.shape[1])[None] < block_end
    confidence = jnp.where(masked & in_reach, x0_p, -jnp.inf)
    transfer = _top_k_positions(confidence, k) & masked
    return jnp.where(transfer, x0, x), transfer


def llada_generate(keys: jax.Array, denoiser, prompt: jax.Array, gen_length: int, steps, mask_id: int, *,
                   block_length: int | None = None, temperature=0.0, remasking: str = "low_confidence",
                   return_history: bool = False):
    """LLaDA's ``generate``: ``prompt`` [B, P] followed by ``gen_length`` masks, filled in ``steps``
    :func:`llada_step` calls; returns the sequences [B, P + gen_length] (and, with
    ``return_history``, the step at which each position was filled, -1 for given tokens).

    Semi-autoregressive when ``block_length < gen_length`` (default: one block): the blocks are
    generated left to right with ``steps // num_blocks`` steps each; step ``j`` of block ``b``
    transfers ``num_transfer_tokens(masks in block b, steps per block)[j]`` tokens, and nothing
    past block ``b`` can be revealed (its confidence is ``-inf``), so a block is complete before
    the next starts. ``steps`` and ``temperature`` may be traced (``steps`` must then be a
    multiple of the number of blocks: only a Python int is checked). The denoiser gets ``t`` =
    the fraction of the sequence still masked (LLaDA's model is time-free). Not implemented:
    classifier-free guidance (``cfg_scale``), the EOS/EoT ``-inf`` options, padded-prompt
    attention masks.
    """
    block_length = gen_length if block_length is None else block_length
    for name, value in (("gen_length", gen_length), ("block_length", block_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive Python int, got {value!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    num_blocks = gen_length // block_length
    if isinstance(steps, int) and (steps < num_blocks or steps % num_blocks):
        raise ValueError(f"steps {steps} is not a positive multiple of the number of blocks {num_blocks}")
    per_block = jnp.asarray(steps, jnp.int32) // num_blocks
    batch, p_len = prompt.shape
    keys = _per_example_keys(keys, batch)
    x = jnp.concatenate([prompt.astype(jnp.int32), jnp.full((batch, gen_length), mask_id, jnp.int32)], axis=1)
    # LLaDA counts a block's masks at its start; nothing touches a block before it starts, so
    # counting them in the initial x is the same.
    block_masks = (x[:, p_len:] == mask_id).reshape(batch, num_blocks, block_length).sum(-1)

    def body(i, carry):
        x, history = carry
        b, j = i // per_block, i % per_block
        k = _transfer_at(block_masks[:, b], per_block, j)
        t = jnp.mean((x == mask_id).astype(jnp.float32), axis=-1)
        x, transfer = llada_step(_step_keys(keys, i), x, denoiser(x, t), k, p_len + (b + 1) * block_length,
                                 mask_id, temperature=temperature, remasking=remasking)
        return x, jnp.where(transfer, i, history)

    x, history = jax.lax.fori_loop(0, steps, body, (x, jnp.full(x.shape, -1, jnp.int32)))
    return (x, history) if return_history else x


# ------------------------------------------------------------------------------------------
# Evaluation helper.


def sample_entropy(samples: jax.Array, vocab: int) -> jax.Array:
    """The entropy (nats) of each sample's token histogram: ``-sum_v f_v log f_v`` with ``f_v`` the
    frequency of token ``v`` in the sample, [B] float32 (as printed next to generative perplexity:
    a degenerate, repetitive sampler has low entropy while its perplexity can look good).

    Ids outside ``[0, vocab)`` (a leftover mask, padding) are not counted; a sample without a
    valid token has entropy 0. Static shapes and no [L, V] one-hot: with the row sorted, the
    count ``n(x_j)`` of each token is a ``searchsorted`` and
    ``H = log n - (1/n) sum_j log n(x_j)`` (each token of a value with count c adds log c).
    """
    samples = jnp.asarray(samples, jnp.int32)
    valid = (samples >= 0) & (samples < vocab)
    ids = jnp.where(valid, samples, -1)   # invalid ids pooled as -1, then given no weight

    def one(row, ok):
        srt = jnp.sort(row)
        count = jnp.searchsorted(srt, row, side="right") - jnp.searchsorted(srt, row, side="left")
        n = jnp.sum(ok).astype(jnp.float32)
        log_counts = jnp.sum(jnp.where(ok, jnp.log(count.astype(jnp.float32)), 0.0))
        return jnp.where(n > 0, jnp.log(jnp.maximum(n, 1.0)) - log_counts / jnp.maximum(n, 1.0), 0.0)

    return jax.vmap(one)(ids, valid)


__all__ = [
    "MDLM_SAMPLING_EPS", "MD4_TOPP", "LLADA_REMASKING", "x0_log_probs",
    "mdlm_ddpm_step", "mdlm_ddpm_cache_sample", "topp_logits", "topp_sample",
    "gumbel_from_bits", "gumbel_scores", "num_transfer_tokens", "llada_step", "llada_generate", "sample_entropy",
]
