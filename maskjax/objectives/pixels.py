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


def denormalize_prediction(pred: jax.Array, target: jax.Array, hidden: jax.Array, stats: str) -> jax.Array:
    """Maps norm-pix predictions [B, L, D] back to pixel space for a figure.

    ``stats="hidden"``: each hidden patch's own true mean/variance (the official demo; leaks
    them); ``"visible"``: one mean/variance per image pooled over its visible patches (no leak).
    ``hidden`` is [B, L], True where hidden; ``target`` holds the raw patches.
    """
    if stats == "hidden":
        mean, var = patch_stats(target)
    elif stats == "visible":
        visible = 1.0 - hidden[..., None].astype(jnp.float32)
        count = visible.sum(axis=(1, 2), keepdims=True) * target.shape[-1]
        mean = (target * visible).sum(axis=(1, 2), keepdims=True) / count
        var = (jnp.square(target - mean) * visible).sum(axis=(1, 2), keepdims=True) / (count - 1)
    else:
        raise ValueError(f"stats must be 'hidden' or 'visible', got {stats!r}")
    return pred * jnp.sqrt(var + NORM_PIX_EPS) + mean


def weighted_token_mean(per_token: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum(per_token * w) / max(sum(w), 1)``: a loss over a per-example number of positions.

    For masks drawn at a ratio per example (MaskGIT, MAGE, masked diffusion: see
    :func:`maskjax.masking.rate_mask`), ``weights`` [B, L] is 1 on the hidden positions; the
    static shape stays [B, L] and a batch with no hidden position gives 0, not NaN.
    """
    w = weights.astype(jnp.float32)
    return jnp.sum(per_token.astype(jnp.float32) * w) / jnp.maximum(jnp.sum(w), 1.0)
