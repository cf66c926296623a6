"""SimMIM masks: a uniformly drawn set of coarse mask units, upsampled to model patches.

specs/methods_vision.md 2(a), microsoft/SimMIM ``data/data_simmim.py::MaskGenerator``::

    rand_size = input_size // mask_patch_size;  scale = mask_patch_size // model_patch_size
    mask_count = ceil(rand_size**2 * mask_ratio)
    mask_idx = np.random.permutation(rand_size**2)[:mask_count]        # exact count
    mask = zeros(rand_size**2); mask[mask_idx] = 1
    mask = mask.reshape(rand_size, rand_size).repeat(scale, 0).repeat(scale, 1)

Here the permutation is ``argsort`` of per-example uniform noise (a uniformly random permutation,
so a uniformly random ``mask_count``-subset of units), which keeps the function pure, jittable and
vmappable with static shapes. ViT-B@224 (32 / 16 / 0.6): 7x7 units, 30 masked, 120 of 196 tokens;
Swin@192 (32 / 4 / 0.6): 6x6 units, 22 masked, each 8x8 patch-4 tokens.

A mask is ``bool [G, G]`` with ``G = rand_size * scale`` (the model's patch grid), True = masked
(replaced by SimMIM's mask token; the encoder sees every token). ``mask.reshape(-1)`` follows the
row-major token order.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def simmim_grid(input_size: int, mask_patch_size: int = 32, model_patch_size: int = 4) -> tuple[int, int]:
    """(rand_size, scale): mask units per side and model patches per unit side (the official asserts)."""
    if input_size % mask_patch_size:
        raise ValueError(f"SimMIM: input size {input_size} is not a multiple of the mask patch "
                         f"size {mask_patch_size}")
    if mask_patch_size % model_patch_size:
        raise ValueError(f"SimMIM: mask patch size {mask_patch_size} is not a multiple of the model "
                         f"patch size {model_patch_size}")
    return input_size // mask_patch_size, mask_patch_size // model_patch_size


def simmim_num_masked(num_units: int, ratio: float) -> int:
    """Masked units: ``ceil(num_units * ratio)`` in float64, as ``np.ceil`` in the official code."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"SimMIM mask ratio must be in (0, 1), got {ratio}")
    return int(math.ceil(num_units * ratio))


def simmim_mask_from_noise(noise: jax.Array, num_masked: int, scale: int) -> jax.Array:
    """Masks the ``num_masked`` units of smallest ``noise`` [R, R], then repeats each ``scale`` x ``scale``.

    ``argsort(noise)`` plays ``np.random.permutation``: its first ``num_masked`` entries are masked.
    Returns bool [R * scale, R * scale].
    """
    rand_size = noise.shape[-1]
    flat = noise.reshape(noise.shape[:-2] + (rand_size * rand_size,))
    # rank of each unit in the permutation; ties have probability zero for continuous noise.
    ranks = jnp.argsort(jnp.argsort(flat, axis=-1), axis=-1)
    units = (ranks < num_masked).reshape(noise.shape)
    return jnp.repeat(jnp.repeat(units, scale, axis=-2), scale, axis=-1)


def simmim_mask(key: jax.Array, input_size: int = 192, mask_patch_size: int = 32,
                model_patch_size: int = 4, ratio: float = 0.6) -> jax.Array:
    """SimMIM ``MaskGenerator()`` from one PRNG key: bool [G, G], G = input_size // model_patch_size.

    Defaults are the official ones (Swin at 192); the ViT recipe is 224 / 32 / 16 / 0.6. Exactly
    ``ceil(R*R*ratio) * scale**2`` tokens are masked. vmap over per-example keys for a batch.
    """
    rand_size, scale = simmim_grid(input_size, mask_patch_size, model_patch_size)
    num_masked = simmim_num_masked(rand_size * rand_size, ratio)
    noise = jax.random.uniform(key, (rand_size, rand_size))
    return simmim_mask_from_noise(noise, num_masked, scale)
