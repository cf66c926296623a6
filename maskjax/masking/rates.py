"""Masks drawn at a ratio per example, with static shapes (MaskGIT, MAGE, masked diffusion).

MAE-style masks keep a fixed count ``K`` for the whole batch (``Mask.ids_keep [B, K]``). Methods
that draw a masking ratio per example hide a different number of positions in each example;
under ``jit`` the shape must not depend on it, so the mask is a boolean ``[B, L]`` (True = hidden)
and losses weight positions with it (:func:`maskjax.objectives.weighted_token_mean`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def hidden_counts(rates: jax.Array, length: int, *, minimum: int = 0) -> jax.Array:
    """Positions to hide per example: ``clip(ceil(rate * length), minimum, length)`` as int32.

    ``ceil`` as MaskGIT's ``mask_by_random_topk`` training path (a rate above 0 hides at least one).
    """
    counts = jnp.ceil(jnp.asarray(rates, jnp.float32) * length).astype(jnp.int32)
    return jnp.clip(counts, minimum, length)


def mask_from_counts(noise: jax.Array, counts: jax.Array) -> jax.Array:
    """Hides the ``counts[i]`` positions of smallest ``noise[i]`` in each row: bool [B, L]."""
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return ranks < counts[:, None]


def rate_mask(keys: jax.Array, length: int, rates: jax.Array, *, minimum: int = 0) -> jax.Array:
    """A uniformly random mask per example hiding ``hidden_counts(rates)`` of ``length`` positions.

    ``keys`` are per-example keys [B]; ``rates`` [B] in [0, 1]. Returns bool [B, length] (True =
    hidden); every subset of the drawn size is equally likely.
    """
    noise = jax.vmap(lambda k: jax.random.uniform(k, (length,)))(keys)
    return mask_from_counts(noise, hidden_counts(rates, length, minimum=minimum))
