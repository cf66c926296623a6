"""BEiT block-wise masking (``MaskingGenerator``) and MaskFeat's use of it, in-graph.

specs/methods_vision.md 3(a) (microsoft/unilm ``beit/masking_generator.py::MaskingGenerator``) and
4(a) (SlowFast ``datasets/transform.py::MaskingGenerator``, the same algorithm, called with
``num_mask = round(H*W*0.4)`` and ``min_num_patches = num_mask // 5``).

The official generator is a host-side Python loop::

    mask_count = 0
    while mask_count < N:
        max_new = min(N - mask_count, max_num_patches)
        delta = _mask(mask, max_new)          # up to 10 attempts, returns after the first success
        if delta == 0: break                  # nothing more could be added: the count falls short
        mask_count += delta

    _mask, one attempt:
        area = random.uniform(min_num_patches, max_new)
        aspect = exp(random.uniform(log(min_aspect), log(max_aspect)))
        h = round(sqrt(area * aspect)); w = round(sqrt(area / aspect))   # round half to even
        if w < W and h < H:
            top = random.randint(0, H - h); left = random.randint(0, W - w)   # inclusive
            new = h*w - mask[top:top+h, left:left+w].sum()
            if 0 < new <= max_new: mask the rectangle (only the ``new`` cells change)

Here it is one ``lax.while_loop`` whose iterations are the attempts (the two nested loops
flattened), with static shapes: the carry is the bool [H, W] mask, the running count, the
attempt number inside the current ``_mask`` call and a pointer into a pre-drawn stream of
uniforms. Every random number the official loop asks Python's ``random`` for is read from that
stream in the same order: ``uniform(a, b) = a + (b - a) * u`` (CPython's own formula) and
``randint(a, b) = a + floor(u * (b - a + 1))``; an attempt reads 4 uniforms when the block fits
and 2 when it does not, as the official loop. So :func:`blockwise_mask_from_uniforms` and a
transcription of the official loop fed the same stream produce the same mask and the same
blocks (tests/test_mim_masks.py: 1,200 draws over four settings, all identical). Only a
``sqrt(area * aspect)`` within float32 rounding of an ``x.5`` boundary could round differently
(float32 here, float64 there), which no tested draw hit.

The bounds are exact, never truncations: a ``_mask`` call that succeeds masks at least one new
patch, so there are at most ``N`` successful calls plus one failing call, i.e. at most
``10 * (N + 1)`` attempts and ``40 * (N + 1)`` uniforms (:func:`blockwise_num_uniforms`). The loop
stops on the official condition (count reached, or 10 failed attempts in one call) before that
bound (``BlockTrace.finished``; BEiT's 14x14 / 75 setting needed at most ~30 of its 760 attempts
in 500 draws); the bound only sizes the stream.

A mask is ``bool [grid_h, grid_w]``, True = masked (replaced by the mask token, BEiT / MaskFeat
style); ``mask.reshape(-1)`` follows the row-major token order (index = row * W + col). The count
is not fixed (spec 0.7: at most ``N``, it may fall short), so token-replacing methods weight their
losses with the mask instead of gathering a fixed number of tokens.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Attempts per ``_mask`` call in the official generator.
ATTEMPTS_PER_BLOCK = 10


class BlockTrace(NamedTuple):
    """The block-wise loop's result plus what it did (for tests and statistics).

    Attributes:
      mask: bool [H, W], True = masked.
      count: int32, number of masked patches (``mask.sum()``), at most ``num_masking_patches``.
      num_blocks: int32, number of accepted blocks (successful ``_mask`` calls).
      attempts: int32, attempts made in total (over all calls).
      used: int32, uniforms consumed from the stream.
      block_hw: int32 [N, 2], (h, w) of the k-th accepted block; zeros past ``num_blocks``.
      block_new: int32 [N], patches the k-th accepted block newly masked; zeros past ``num_blocks``.
      finished: bool, True when the loop stopped on the official condition (always, by the bound).
    """

    mask: jax.Array
    count: jax.Array
    num_blocks: jax.Array
    attempts: jax.Array
    used: jax.Array
    block_hw: jax.Array
    block_new: jax.Array
    finished: jax.Array


def blockwise_num_uniforms(num_masking_patches: int) -> int:
    """Uniforms one draw may consume: 4 per attempt, at most ``10 * (N + 1)`` attempts (exact bound)."""
    return 4 * ATTEMPTS_PER_BLOCK * (int(num_masking_patches) + 1)


def _resolve(num_masking_patches, min_num_patches, max_num_patches, min_aspect, max_aspect):
    """The official constructor's defaults: ``max_num = N`` and ``max_aspect = 1 / min_aspect``.

    Python numbers are resolved on the host in float64, as the official ``__init__``; the block
    parameters may also be jnp scalars (traced: one compile serves many settings), then the
    log-aspect bounds are computed in float32 in the graph.
    """
    n = int(num_masking_patches)
    if n < 0:
        raise ValueError(f"num_masking_patches must be >= 0, got {num_masking_patches}")
    max_num = n if max_num_patches is None else max_num_patches
    if isinstance(min_aspect, (int, float)) and isinstance(max_aspect, (int, float, type(None))):
        if not min_aspect > 0:
            raise ValueError(f"min_aspect must be > 0, got {min_aspect}")
        max_aspect = max_aspect or 1.0 / min_aspect  # ``max_aspect or 1 / min_aspect``, verbatim
        return n, min_num_patches, max_num, math.log(min_aspect), math.log(max_aspect)
    min_aspect = jnp.asarray(min_aspect, jnp.float32)
    max_aspect = 1.0 / min_aspect if max_aspect is None else jnp.asarray(max_aspect, jnp.float32)
    return n, min_num_patches, max_num, jnp.log(min_aspect), jnp.log(max_aspect)


def blockwise_trace_from_uniforms(uniforms: jax.Array, grid_h: int, grid_w: int,
                                  num_masking_patches: int, min_num_patches: float = 4,
                                  max_num_patches: int | None = None, min_aspect: float = 0.3,
                                  max_aspect: float | None = None) -> BlockTrace:
    """The BEiT block-wise loop driven by a stream of uniforms in [0, 1); returns a :class:`BlockTrace`.

    ``uniforms`` float [>= blockwise_num_uniforms(N)] is consumed in the official order (see the
    module docstring). Defaults are the official constructor's (``min_num_patches=4``,
    ``max_num_patches=None`` -> N, ``max_aspect=None`` -> 1/min_aspect); BEiT's pre-training script
    passes N=75, min 16 on a 14x14 grid.
    """
    n, min_num, max_num, log_lo, log_hi = _resolve(
        num_masking_patches, min_num_patches, max_num_patches, min_aspect, max_aspect)
    need = blockwise_num_uniforms(n)
    uniforms = jnp.asarray(uniforms, jnp.float32)
    if uniforms.ndim != 1 or uniforms.shape[0] < need:
        raise ValueError(f"need a 1-D stream of at least {need} uniforms for N={n}, got {uniforms.shape}")
    rows = jnp.arange(grid_h, dtype=jnp.int32)[:, None]
    cols = jnp.arange(grid_w, dtype=jnp.int32)[None, :]
    slots = max(n, 1)
    max_attempts = ATTEMPTS_PER_BLOCK * (n + 1)

    def cond(s):
        # The official stopping rule; the attempt bound is exact and never reached first.
        return ~s["done"] & (s["attempts"] < max_attempts)

    def body(s):
        mask, count = s["mask"], s["count"]
        max_new = jnp.minimum(n - count, max_num)
        u = jax.lax.dynamic_slice(uniforms, (s["ptr"],), (4,))
        area = min_num + (max_new.astype(jnp.float32) - min_num) * u[0]  # random.uniform(a, b)
        aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[1])
        # jnp.round rounds half to even, as Python's round().
        h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
        w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
        fits = (w < grid_w) & (h < grid_h)
        # randint(0, H - h) inclusive; the clip only guards float32 u*(n) rounding up to n.
        top = jnp.minimum(jnp.floor(u[2] * (grid_h - h + 1)).astype(jnp.int32), grid_h - h)
        left = jnp.minimum(jnp.floor(u[3] * (grid_w - w + 1)).astype(jnp.int32), grid_w - w)
        rect = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        # When the block fits, the rectangle lies inside the grid, so this is h*w - already masked.
        new = jnp.sum(rect & ~mask, dtype=jnp.int32)
        accept = fits & (new > 0) & (new <= max_new)
        k = jnp.minimum(s["num_blocks"], slots - 1)
        call_attempt = jnp.where(accept, 0, s["call_attempt"] + 1)
        count = count + jnp.where(accept, new, 0)
        return {
            "mask": mask | (rect & accept),
            "count": count,
            "call_attempt": call_attempt,
            "ptr": s["ptr"] + jnp.where(fits, 4, 2),
            "attempts": s["attempts"] + 1,
            "num_blocks": s["num_blocks"] + accept.astype(jnp.int32),
            "block_hw": jnp.where(accept, s["block_hw"].at[k].set(jnp.stack([h, w])), s["block_hw"]),
            "block_new": jnp.where(accept, s["block_new"].at[k].set(new), s["block_new"]),
            # A call that made 10 failed attempts returns 0 and ends the outer loop.
            "done": (count >= n) | (call_attempt >= ATTEMPTS_PER_BLOCK),
        }

    zero = jnp.int32(0)
    init = {
        "mask": jnp.zeros((grid_h, grid_w), bool), "count": zero, "call_attempt": zero,
        "ptr": zero, "attempts": zero, "num_blocks": zero,
        "block_hw": jnp.zeros((slots, 2), jnp.int32), "block_new": jnp.zeros((slots,), jnp.int32),
        "done": jnp.asarray(n <= 0),
    }
    s = jax.lax.while_loop(cond, body, init)
    return BlockTrace(mask=s["mask"], count=s["count"], num_blocks=s["num_blocks"],
                      attempts=s["attempts"], used=s["ptr"], block_hw=s["block_hw"],
                      block_new=s["block_new"], finished=s["done"])


def blockwise_mask_from_uniforms(uniforms: jax.Array, grid_h: int, grid_w: int,
                                 num_masking_patches: int, min_num_patches: float = 4,
                                 max_num_patches: int | None = None, min_aspect: float = 0.3,
                                 max_aspect: float | None = None) -> jax.Array:
    """BEiT block-wise mask bool [grid_h, grid_w] from a uniform stream.

    See :func:`blockwise_trace_from_uniforms` for the stream and the arguments.
    """
    return blockwise_trace_from_uniforms(uniforms, grid_h, grid_w, num_masking_patches,
                                         min_num_patches, max_num_patches, min_aspect,
                                         max_aspect).mask


def blockwise_mask(key: jax.Array, grid_h: int, grid_w: int, num_masking_patches: int,
                   min_num_patches: float = 4, max_num_patches: int | None = None,
                   min_aspect: float = 0.3, max_aspect: float | None = None) -> jax.Array:
    """BEiT ``MaskingGenerator()``: one block-wise mask bool [grid_h, grid_w] from one PRNG key.

    Usable as a generic token-replacing ``masking.kind``: vmap it over per-example keys
    (``jax.vmap(blockwise_mask, in_axes=(0,) + (None,) * 7)``) for a [B, H, W] batch. The sizes and
    block parameters are static (they size the uniform stream). BEiT's setting: 14x14, N=75,
    min 16, max None, aspect 0.3 (max None -> 1/0.3).
    """
    uniforms = jax.random.uniform(key, (blockwise_num_uniforms(num_masking_patches),))
    return blockwise_mask_from_uniforms(uniforms, grid_h, grid_w, num_masking_patches,
                                        min_num_patches, max_num_patches, min_aspect, max_aspect)


def maskfeat_block_params(grid_h: int, grid_w: int, ratio: float = 0.4,
                          max_num_patches: int | None = None) -> dict:
    """MaskFeat's generator arguments (spec 4(a), SlowFast ``_prepare_im_masked``).

    ``num_masking_patches = round(H*W*ratio)`` (Python round: half to even), ``min_num_patches =
    num_mask // 5``, ``max_num_patches = AUG.MAX_MASK_PATCHES_PER_BLOCK`` (None -> num_mask), the
    generator's default aspect 0.3 (max 1/0.3). ImageNet ViT-B 14x14 at 0.4: 78 masked, min 15.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"MaskFeat mask ratio must be in (0, 1), got {ratio}")
    num_mask = round(grid_h * grid_w * ratio)
    return {"num_masking_patches": num_mask, "min_num_patches": num_mask // 5,
            "max_num_patches": max_num_patches, "min_aspect": 0.3, "max_aspect": None}


def maskfeat_mask(key: jax.Array, grid_h: int, grid_w: int, ratio: float = 0.4,
                  max_num_patches: int | None = None) -> jax.Array:
    """MaskFeat's block-wise mask bool [grid_h, grid_w] (at most ``round(H*W*ratio)`` masked)."""
    return blockwise_mask(key, grid_h, grid_w,
                          **maskfeat_block_params(grid_h, grid_w, ratio, max_num_patches))
