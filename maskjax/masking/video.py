"""Video masks: VideoMAE tube masking and VideoMAE V2's running-cell decoder masking.

specs/methods_vision.md sections 5a and 6a. Tokens are ordered (t, h, w) as
:func:`maskjax.models.video_layers.patchify_video`. Everything is pure and jittable with static
shapes (the number of masked / decoded tokens is fixed per sample) and draws its randomness from
per-example keys, like :func:`maskjax.masking.random.uniform_noise`, so a sample's mask does not
depend on how a batch is split or sharded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.masking.random import Mask, uniform_noise


def tube_num_masked(spatial: int, ratio: float) -> int:
    """Tokens hidden per temporal slot: ``int(ratio * spatial)`` (the official truncation)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"tube mask ratio (masking.ratio) must be in (0, 1), got {ratio}")
    num = int(ratio * spatial)
    if num < 1 or num >= spatial:
        raise ValueError(f"masking.ratio {ratio} hides {num} of {spatial} tokens per frame slot; "
                         "at least one token must be hidden and one kept")
    return num


def mask_from_bool(mask: jax.Array, num_keep: int) -> Mask:
    """Turns a bool [B, L] mask (True = hidden) with exactly ``num_keep`` visible tokens into a Mask.

    ``ids_keep`` lists the visible positions in **ascending** order (VideoMAE's boolean indexing
    ``x[~mask]``); ``ids_restore`` is the inverse of the permutation "visible ascending, then
    hidden ascending", so ``argsort(ids_restore)[:, num_keep:]`` gives the hidden positions in
    ascending order and an MAE-style unshuffle still works.
    """
    _, length = mask.shape
    # Stable sort key: visible tokens first, each group by position.
    order_key = mask.astype(jnp.int32) * length + jnp.arange(length, dtype=jnp.int32)
    ids_shuffle = jnp.argsort(order_key, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    return Mask(ids_keep=ids_shuffle[:, :num_keep], ids_restore=ids_restore, mask=mask.astype(bool))


def hidden_ids(mask: Mask) -> jax.Array:
    """Hidden positions [B, L-K] of a Mask, in the order of its shuffle (ascending for tube masks)."""
    keep = mask.ids_keep.shape[1]
    return jnp.argsort(mask.ids_restore, axis=1).astype(jnp.int32)[:, keep:]


def tube_mask(keys: jax.Array, batch: int, t_slots: int, spatial: int, ratio: float) -> Mask:
    """VideoMAE ``TubeMaskingGenerator``: the same random spatial mask in every temporal slot.

    ``int(ratio * spatial)`` positions are hidden per slot (chosen uniformly without replacement
    from per-example keys), so ``t_slots * (spatial - that)`` tokens stay visible.
    """
    num_masked = tube_num_masked(spatial, ratio)
    noise = uniform_noise(keys, batch, spatial)
    # Rank of each position in a random permutation; the first num_masked ranks are hidden.
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    spatial_mask = ranks < num_masked
    mask = jnp.tile(spatial_mask, (1, t_slots))  # [B, T*S], token index = t*S + s
    return mask_from_bool(mask, t_slots * (spatial - num_masked))


def spacetime_random_mask(keys: jax.Array, batch: int, length: int, ratio: float) -> Mask:
    """MAE-ST style spacetime-agnostic random masking, visible/hidden ids in ascending order.

    Keeps ``int(length * (1 - ratio))`` tokens, exactly as MAE's ``random_masking``; the ids are
    re-sorted so the VideoMAE decoder sees positions in the same order as for tube masks.
    """
    from maskjax.masking.random import mask_from_noise

    shuffled = mask_from_noise(uniform_noise(keys, batch, length), ratio)
    return mask_from_bool(shuffled.mask, shuffled.ids_keep.shape[1])


def running_cell_candidates(t_slots: int, h: int, w: int, ratio: float = 0.5) -> np.ndarray:
    """The candidate maps of ``RunningCellMaskingGenerator``: bool [4, T, h*w], True = NOT decoded.

    A queue ``[1]*n + [0]*(4-n)`` with ``n = int(4*ratio)``; candidate ``k`` starts the pointer at
    ``k``, and for each frame advances it by one, then reads ``queue[(arange(4) + ptr) % 4]`` as a
    2x2 cell tiled over (h/2, w/2).
    """
    if h % 2 or w % 2:
        raise ValueError(f"running-cell masking tiles 2x2 cells, so the token grid must have even "
                         f"height and width; got {h}x{w} (check data.image_size / patch size)")
    n = int(4 * ratio)
    if not 0 < n < 4:
        raise ValueError(f"masking.decoder_ratio {ratio} gives {n} masked tokens per 2x2 cell; "
                         "it must hide 1 to 3 (0.25 <= ratio < 1)")
    queue = np.array([1] * n + [0] * (4 - n), dtype=bool)
    out = np.zeros((4, t_slots, h * w), dtype=bool)
    for start in range(4):
        for t in range(t_slots):
            ptr = start + t + 1  # the pointer advances before each frame's cell is read
            cell = queue[(np.arange(4) + ptr) % 4].reshape(2, 2)
            out[start, t] = np.tile(cell, (h // 2, w // 2)).reshape(-1)
    return out


def running_cell_mask(keys: jax.Array, batch: int, t_slots: int, h: int, w: int,
                      ratio: float = 0.5) -> jax.Array:
    """VideoMAE V2 decoder mask bool [B, T*h*w], True = NOT decoded (one candidate per sample)."""
    candidates = jnp.asarray(running_cell_candidates(t_slots, h, w, ratio).reshape(4, -1))
    pick = jnp.floor(uniform_noise(keys, batch, 1)[:, 0] * 4).astype(jnp.int32)
    return candidates[jnp.minimum(pick, 3)]


def num_decoded(length: int, ratio: float) -> int:
    """Tokens the V2 decoder reconstructs: ``length * (4 - int(4*ratio)) / 4`` (50 % at 0.5)."""
    return length * (4 - int(4 * ratio)) // 4


def decoded_ids(not_decoded: jax.Array, count: int) -> jax.Array:
    """Positions where ``not_decoded`` [B, L] is False, ascending, as a static [B, count] array.

    ``count`` must be the exact number of False entries per row (:func:`num_decoded` for running
    cells, ``L - K`` for "decode the encoder-hidden tokens").
    """
    _, length = not_decoded.shape
    order_key = not_decoded.astype(jnp.int32) * length + jnp.arange(length, dtype=jnp.int32)
    return jnp.argsort(order_key, axis=1).astype(jnp.int32)[:, :count]
