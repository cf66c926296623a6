"""VideoMAE / VideoMAE V2 pixel targets and losses (specs/methods_vision.md sections 5b and 6b)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ImageNet statistics: VideoMAE normalises frames with them and un-normalises before the target.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIDEOMAE_TARGET_EPS = 1e-6


def unnormalize_video(video: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    """Normalised frames [..., C] back to [0, 1] pixels: ``video * std + mean`` (channel last)."""
    return video * jnp.asarray(std, video.dtype) + jnp.asarray(mean, video.dtype)


def videomae_target(patches: jax.Array, channels: int, normalize: bool = True) -> jax.Array:
    """VideoMAE's reconstruction target [B, L, t*p*p*C] from the [0, 1] video's tubelet patches.

    ``patches`` is ``maskjax.models.video_layers.patchify_video(video, tubelet, patch)`` of the
    [0, 1] video [B, T, H, W, C] with ``C == channels``: the caller patchifies because objectives
    import only jax (the tubelet layout belongs to the models, like ``norm_pix_target``'s patches).
    With ``normalize`` each token is normalised **per channel** over its t*p*p pixels:
    ``(x - mean) / (std_unbiased + 1e-6)`` (eps on the std, unlike MAE's ``var + eps``). The
    vector order is (p0, p1, p2, c) in both cases.
    """
    patches = patches.astype(jnp.float32)
    if not normalize:
        return patches
    b, n, d = patches.shape
    if d % channels:
        raise ValueError(f"token size {d} is not a multiple of {channels} channels")
    x = patches.reshape(b, n, d // channels, channels)  # (p0 p1 p2) then c, as the vector order
    mean = x.mean(axis=-2, keepdims=True)
    std = jnp.sqrt(x.var(axis=-2, keepdims=True, ddof=1))
    return ((x - mean) / (std + VIDEOMAE_TARGET_EPS)).reshape(b, n, d)


def token_mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Plain mean squared error over all tokens and values (VideoMAE's ``nn.MSELoss()``)."""
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def weighted_token_mse(pred: jax.Array, target: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """VideoMAE V2 loss ``sum(per_token * w) / sum(w)``; returns ``(loss, per_token)``.

    ``per_token`` is the mean squared error over each token's values; ``weights`` [B, N] is 1 for
    tokens that are decoded AND hidden from the encoder (``enc_mask[~decode_mask]``).
    """
    per_token = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    w = weights.astype(jnp.float32)
    # The floor only matters when no token counts (then the loss is 0, not NaN).
    return jnp.sum(per_token * w) / jnp.maximum(jnp.sum(w), 1e-12), per_token
