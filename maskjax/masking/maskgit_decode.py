"""MaskGIT's iterative decoding: ``maskgit/libml/parallel_decode.py::decode`` (spec 9d).

Starting from ``inputs`` [B, L] where ``mask_token_id`` marks the unknown tokens, each step
``step = start_iter, ..., num_iter - 1``:

1. ``logits = tokens_to_logits(cur)``; ``rng, sample_rng = split(rng, 2)``;
   ``sampled = categorical(sample_rng, logits)`` (temperature 1); known tokens are kept.
2. ``r = (step + 1) / num_iter``; ``mask_len = floor(N0 * schedule(r, N0))`` with ``N0`` the
   number of unknown tokens of ``inputs`` (per example), clamped to ``[1, #unknown - 1]``.
3. ``rng, choice_rng = split(rng)``; confidence ``log p(sampled) + choice_temperature (1 - r)
   gumbel(choice_rng)``, +inf for known tokens (the official ``_CONFIDENCE_OF_KNOWN_TOKENS``);
   the tokens below the ``mask_len``-th smallest confidence are masked again.

The output of a step is ``sampled`` (complete) *before* re-masking; the official function returns
all steps' outputs ``final_seqs`` [B, num_iter, L] and callers use ``final_seqs[:, -1]``, the last
step's sampled ids (:func:`decode` returns these; ``return_all_steps`` gives the official array).
``start_iter > 0`` is editing (inference.py: 2 of 12): the loop starts at that step with the given
partially known input; steps before it leave ``final_seqs`` at the input, as the official state
initialisation does.

The random draws are the official ones, call for call: one PRNG key for the whole batch, split
twice per step in the same order, ``jax.random.categorical`` on the [B, L, V] logits and
``jax.random.gumbel`` on [B, L]. With JAX's partitionable threefry (the default) the draws do not
depend on how the batch is sharded, so the jitted loop runs sharded over the batch (pass sharded
``inputs``; the loop keeps their sharding).

Differences from the official code, none of which changes a result: ``mask_token_id`` is an
explicit id (the official -1 wraps to the last embedding row; spec 9c: use vocab - 1 explicitly);
the loop is a ``lax.fori_loop`` from ``start_iter`` to ``num_iter`` instead of a ``while_loop`` on
the index (the same steps; the bounds may be traced);
without ``return_all_steps`` only the last step's output is carried, not [B, num_iter, L].
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from maskjax.masking.maskgit_schedules import canonical_method, schedule

# The official confidence of known tokens: +inf, never below the cut-off, so never re-masked.
CONFIDENCE_OF_KNOWN_TOKENS = jnp.inf


def mask_by_random_topk(rng: jax.Array, mask_len: jax.Array, probs: jax.Array, temperature) -> jax.Array:
    """The official ``mask_by_random_topk``: True where ``log(probs) + temperature * gumbel`` is
    below its ``mask_len``-th smallest value (per row; ``mask_len`` [B, 1]). bool [B, L]."""
    confidence = jnp.log(probs) + temperature * jax.random.gumbel(rng, probs.shape)
    sorted_confidence = jnp.sort(confidence, axis=-1)
    cut_off = jnp.take_along_axis(sorted_confidence, mask_len.astype(jnp.int32), axis=-1)
    return confidence < cut_off


def decode_step(rng: jax.Array, cur_ids: jax.Array, logits: jax.Array, step, num_iter: int,
                unknown_at_start: jax.Array, mask_token_id: int, choice_temperature: float,
                method: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One iteration of the official loop body: ``(rng, sampled_ids, next_ids)``.

    ``sampled_ids`` is the step's output (every token known), ``next_ids`` the next step's input
    (low-confidence tokens masked again), ``rng`` the carried key.
    """
    rng, sample_rng = jax.random.split(rng, 2)
    sampled_ids = jax.random.categorical(sample_rng, logits)
    unknown_map = cur_ids == mask_token_id
    sampled_ids = jnp.where(unknown_map, sampled_ids, cur_ids)
    ratio = 1.0 * (step + 1) / num_iter
    mask_ratio = schedule(ratio, unknown_at_start, method)
    probs = jax.nn.softmax(logits, axis=-1)
    selected_probs = jnp.squeeze(
        jnp.take_along_axis(probs, jnp.expand_dims(sampled_ids.astype(jnp.int32), -1), -1), -1)
    selected_probs = jnp.where(unknown_map, selected_probs, CONFIDENCE_OF_KNOWN_TOKENS)
    mask_len = jnp.expand_dims(jnp.floor(unknown_at_start * mask_ratio), 1)
    # Keeps at least one prediction this round and leaves at least one mask for the next.
    mask_len = jnp.maximum(1, jnp.minimum(jnp.sum(unknown_map, axis=-1, keepdims=True) - 1, mask_len))
    rng, choice_rng = jax.random.split(rng)
    masking = mask_by_random_topk(choice_rng, mask_len, selected_probs, choice_temperature * (1.0 - ratio))
    next_ids = jnp.where(masking, mask_token_id, sampled_ids)
    return rng, sampled_ids, next_ids


def decode(inputs: jax.Array, rng: jax.Array, tokens_to_logits: Callable[[jax.Array], jax.Array], *,
           mask_token_id: int, num_iter: int = 12, start_iter: int = 0, choice_temperature: float = 1.0,
           mask_scheduling_method: str = "cosine", return_all_steps: bool = False) -> jax.Array:
    """MaskGIT's ``parallel_decode.decode`` (module docstring); pure, jit-able.

    Args:
      inputs: int [B, L]; ``mask_token_id`` marks the tokens to generate. For class-conditional
        MaskGIT the first column is the class token (``label + codebook_size``), never masked.
      rng: one PRNG key for the batch (as the official code).
      tokens_to_logits: ``ids [B, L] -> logits [B, L, V]``, e.g. the transformer's logits sliced to
        the codebook (inference.py); the class token's logits are sampled and then discarded.
      mask_token_id, num_iter, start_iter, choice_temperature, mask_scheduling_method: as the
        official arguments. ``num_iter``, ``start_iter`` and ``choice_temperature`` may be traced
        int32 / float32 scalars (one compiled program for a sweep of step counts), except that
        ``return_all_steps`` needs a Python int ``num_iter``; the method is a static string.
      return_all_steps: return the official ``final_seqs`` [B, num_iter, L] instead of its last step.

    Returns:
      int32 [B, L]: the last step's sampled ids (``final_seqs[:, -1]``), or ``final_seqs``.
    """
    if isinstance(num_iter, int) and isinstance(start_iter, int) and not 0 <= start_iter <= num_iter:
        raise ValueError(f"need 0 <= start_iter <= num_iter, got start_iter={start_iter}, num_iter={num_iter}")
    if return_all_steps and not isinstance(num_iter, int):
        raise ValueError("return_all_steps needs a Python int num_iter (it sizes the [B, num_iter, L] output)")
    method = canonical_method(mask_scheduling_method)
    inputs = inputs.astype(jnp.int32)
    unknown_at_start = jnp.sum(inputs == mask_token_id, axis=-1)
    step_fn = functools.partial(decode_step, num_iter=num_iter, unknown_at_start=unknown_at_start,
                                mask_token_id=mask_token_id, choice_temperature=choice_temperature, method=method)

    if return_all_steps:
        def body(step, carry):
            rng, cur, final = carry
            rng, sampled, nxt = step_fn(rng, cur, tokens_to_logits(cur), step)
            final = jax.lax.dynamic_update_slice(final, sampled[:, None].astype(final.dtype), (0, step, 0))
            return rng, nxt, final

        final0 = jnp.tile(inputs[:, None], (1, num_iter, 1))
        return jax.lax.fori_loop(start_iter, num_iter, body, (rng, inputs, final0))[2]

    def body_last(step, carry):
        rng, cur, _ = carry
        rng, sampled, nxt = step_fn(rng, cur, tokens_to_logits(cur), step)
        return rng, nxt, sampled.astype(jnp.int32)

    # With no step to run (start_iter == num_iter) the official final_seqs[:, -1] is the input.
    return jax.lax.fori_loop(start_iter, num_iter, body_last, (rng, inputs, inputs))[2]
