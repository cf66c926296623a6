"""Pixel-reconstruction targets and the masked mean-squared error (MAE ``forward_loss``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORM_PIX_EPS = 1e-6


def norm_pix_target(patches: jax.Array, eps: float = NORM_PIX_EPS) -> jax.Array:
    """Per-patch normalised pixels: ``(t - mean) / sqrt(var + eps)`` over the last axis.

    As the official code: the variance is **unbiased** (torch.var's N-1) and eps is added to the
    variance, not to the standard deviation.
    """
    patches = patches.astype(jnp.float32)
    mean = patches.mean(axis=-1, keepdims=True)
    var = patches.var(axis=-1, keepdims=True, ddof=1)
    return (patches - mean) / jnp.sqrt(var + eps)


def patch_stats(patches: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-patch mean and unbiased variance, the statistics :func:`norm_pix_target` divides out."""
    patches = patches.astype(jnp.float32)
    return patches.mean(axis=-1, keepdims=True), patches.var(axis=-1, keepdims=True, ddof=1)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """MAE loss: per-patch mean squared error, averaged over hidden patches only.

    Returns ``(loss, per_patch)``; ``mask`` is [B, L], True (or 1) where hidden.
    """
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_patch * mask) / jnp.sum(mask), per_patch
