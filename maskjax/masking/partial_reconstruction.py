"""CrossMAE masks: which patches the encoder sees, and which masked ones the decoder reconstructs.

specs/methods_vision.md 11(a), TonyLianLong/CrossMAE ``models_cross.py::random_masking(x,
mask_ratio, kept_mask_ratio)``: MAE's shuffle (``argsort`` of per-sample uniform noise), then

    len_keep   = int(L * (1 - mask_ratio))                 # visible to the encoder
    len_masked = int(L * (mask_ratio - kept_mask_ratio))   # masked but not reconstructed
    mask = 1 on the last L - len_keep - len_masked shuffled positions   # reconstructed

so about ``L * kept_mask_ratio`` tokens are reconstructed (partial reconstruction). Defaults
mr = kmr = 0.75: 49 visible, 147 reconstructed of 196; the ViT-H release and the README's ViT-B
command use kmr = 0.25: 49 reconstructed. The decoder's queries sit at the reconstructed
positions in ascending order (``masked_select``), which is the order of ``ids_recon`` here.
Both counts are fixed, so every array has a static shape.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from maskjax.masking.random import uniform_noise


class PartialMask(NamedTuple):
    """CrossMAE's mask: MAE's visible/hidden split plus the reconstructed subset.

    Attributes:
      ids_keep: int32 [B, K], visible tokens in shuffle order (the encoder's input).
      ids_restore: int32 [B, L], the inverse of the shuffle.
      mask: bool [B, L], True where the token is hidden from the encoder.
      recon: bool [B, L], True where the token is reconstructed (a subset of ``mask``); the
        official ``mask`` output.
      ids_recon: int32 [B, P], the reconstructed positions in ascending order.
    """

    ids_keep: jax.Array
    ids_restore: jax.Array
    mask: jax.Array
    recon: jax.Array
    ids_recon: jax.Array


def crossmae_counts(length: int, mask_ratio: float, kept_mask_ratio: float) -> tuple[int, int, int]:
    """(len_keep, len_masked, num_recon) in float64 as the official code; validates the ratios."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"CrossMAE mask_ratio must be in (0, 1), got {mask_ratio}")
    if not 0.0 < kept_mask_ratio <= mask_ratio:
        raise ValueError(f"CrossMAE kept_mask_ratio must be in (0, mask_ratio={mask_ratio}], "
                         f"got {kept_mask_ratio}")
    len_keep = int(length * (1 - mask_ratio))
    len_masked = int(length * (mask_ratio - kept_mask_ratio))
    num_recon = length - len_keep - len_masked
    if len_keep < 1 or num_recon < 1:
        raise ValueError(f"CrossMAE ratios {mask_ratio}/{kept_mask_ratio} keep {len_keep} and "
                         f"reconstruct {num_recon} of {length} tokens; both must be >= 1")
    return len_keep, len_masked, num_recon


def crossmae_mask_from_noise(noise: jax.Array, mask_ratio: float = 0.75,
                             kept_mask_ratio: float = 0.75) -> PartialMask:
    """CrossMAE's ``random_masking`` from noise [B, L] (small noise = kept, as MAE)."""
    _, length = noise.shape
    keep, masked, num_recon = crossmae_counts(length, mask_ratio, kept_mask_ratio)
    ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    recon = ids_restore >= keep + masked  # the last num_recon shuffled positions
    # Ascending positions of the reconstructed tokens: sort the reconstructed ones first.
    order_key = (~recon).astype(jnp.int32) * length + jnp.arange(length, dtype=jnp.int32)
    ids_recon = jnp.argsort(order_key, axis=1).astype(jnp.int32)[:, :num_recon]
    return PartialMask(ids_keep=ids_shuffle[:, :keep], ids_restore=ids_restore,
                       mask=ids_restore >= keep, recon=recon, ids_recon=ids_recon)


def crossmae_mask(keys: jax.Array, batch: int, length: int, mask_ratio: float = 0.75,
                  kept_mask_ratio: float = 0.75) -> PartialMask:
    """CrossMAE masking of ``length`` tokens for ``batch`` samples from per-example keys."""
    return crossmae_mask_from_noise(uniform_noise(keys, batch, length), mask_ratio, kept_mask_ratio)
