"""I-JEPA multi-block masks: predictor (target) blocks and a context block, with static shapes.

specs/methods_vision.md 13(a), facebookresearch/ijepa ``src/masks/multiblock.py::MaskCollator``.
What the official collator does, and how it is reproduced here:

* **One block size per batch** for the predictor blocks and one for the context (encoder) block,
  drawn from a generator seeded by the iteration counter: ``p_size`` first, then ``e_size``. Each
  uses a **single uniform u for both scale and aspect** (a quirk): ``scale = s0 + u (s1 - s0)``,
  ``ar = a0 + u (a1 - a0)``, ``max_keep = int(H W scale)``, ``h = round(sqrt(max_keep ar))``,
  ``w = round(sqrt(max_keep / ar))``, then ``h, w`` shrunk below the grid size; the context block
  uses aspect (1, 1). Here: two uniforms from one ``batch_key`` (:func:`multiblock_block_size`).
* **Per image**: ``npred`` predictor blocks at ``top = randint(0, H - h)`` (torch's exclusive upper
  bound: the last offset is never used). Then each of the ``nenc`` context blocks is drawn and
  restricted to the complement of all predictor blocks; if it keeps ``<= min_keep`` patches the
  draw is retried, and after 20 failures the **last** constraint is dropped (``tries += 1``: only the
  first ``npred - tries`` complements apply), and so on. Each image uses its own key; every random
  number is read from a per-example stream of uniforms in the official order (2 per draw, with
  ``randint(0, n) = floor(u n)``), so a transcription fed the same stream gives the same masks.
* **Truncation**: every mask of the batch keeps only its first ``k`` indices (ascending), ``k`` the
  batch minimum length, separately for the context and the predictor masks.

Static shapes. The context retry loop is a ``lax.while_loop`` over attempts, bounded by
``20 * npred + 1``: after ``20 * npred`` failures no constraint is left and the raw block has
``h * w > min_keep`` patches (:func:`check_multiblock` rejects settings where it would not, for
which the official loop never ends), so the bound is exact. Lengths vary with the batch's block
sizes, so masks come as fixed-size index arrays over all ``L = H W`` positions: ``*_ids [B, n, L]``
lists the kept positions first (ascending, exactly the official truncated list), then the other
positions (ascending), and the scalar ``*_len`` says how many are kept; ``*_mask [B, n, L]`` is the
same set as booleans. A model gathers ``ids[..., :len]`` under a static bound or uses the full
``L`` with the validity mask ``arange(L) < len``. ``*_len`` is a batch-wide minimum: call this on
the whole global batch (it is a jnp reduction, fine under sharding) with the same ``batch_key``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

TIMEOUT = 20  # failed draws before one constraint is dropped (official ``og_timeout``)


class MultiBlockMasks(NamedTuple):
    """I-JEPA's masks for one batch (see the module docstring for the layout).

    Attributes:
      enc_ids: int32 [B, nenc, L], context positions: the ``enc_len`` kept ones first, ascending.
      enc_len: int32 scalar, the batch minimum context length (the truncation).
      enc_mask: bool [B, nenc, L], True at the kept (truncated) context positions.
      pred_ids: int32 [B, npred, L], predictor-block positions, ``pred_len`` kept first, ascending.
      pred_len: int32 scalar, the batch minimum predictor length (= h * w of the batch's block).
      pred_mask: bool [B, npred, L], True at the kept predictor positions.
      pred_size: int32 [2], (h, w) of the batch's predictor blocks.
      enc_size: int32 [2], (h, w) of the batch's context block.
      enc_fallbacks: int32 [B, nenc], constraints dropped for each context block (the official
        "Valid mask not found, decreasing acceptable-regions" warning count).
    """

    enc_ids: jax.Array
    enc_len: jax.Array
    enc_mask: jax.Array
    pred_ids: jax.Array
    pred_len: jax.Array
    pred_mask: jax.Array
    pred_size: jax.Array
    enc_size: jax.Array
    enc_fallbacks: jax.Array


def multiblock_block_size(u, grid_h: int, grid_w: int, scale: tuple[float, float],
                          aspect: tuple[float, float]) -> jax.Array:
    """``_sample_block_size`` from its single uniform ``u``: int32 [2] = (h, w)."""
    u = jnp.asarray(u, jnp.float32)
    mask_scale = scale[0] + u * (scale[1] - scale[0])
    max_keep = jnp.floor(grid_h * grid_w * mask_scale)  # int() of a positive float
    ratio = aspect[0] + u * (aspect[1] - aspect[0])
    h = jnp.round(jnp.sqrt(max_keep * ratio)).astype(jnp.int32)  # round half to even, as Python
    w = jnp.round(jnp.sqrt(max_keep / ratio)).astype(jnp.int32)
    # ``while h >= height: h -= 1``
    return jnp.stack([jnp.minimum(h, grid_h - 1), jnp.minimum(w, grid_w - 1)])


def _host_block_sizes(u: np.ndarray, grid_h, grid_w, scale, aspect):
    """The official float64 block sizes for an array of uniforms (for :func:`check_multiblock`)."""
    max_keep = np.floor(grid_h * grid_w * (scale[0] + u * (scale[1] - scale[0])))
    ratio = aspect[0] + u * (aspect[1] - aspect[0])
    h = np.minimum(np.round(np.sqrt(max_keep * ratio)), grid_h - 1)
    w = np.minimum(np.round(np.sqrt(max_keep / ratio)), grid_w - 1)
    return h, w


def check_multiblock(grid_h: int, grid_w: int, pred_scale=(0.15, 0.2), enc_scale=(0.85, 1.0),
                     aspect=(0.75, 1.5), min_keep: int = 10) -> None:
    """Raises ValueError when a block could have ``<= min_keep`` patches for some u (on a grid of
    100,001 values): there the official collator's retry loop never ends."""
    if grid_h < 2 or grid_w < 2:
        raise ValueError(f"I-JEPA multi-block masking needs a grid of at least 2x2, got {grid_h}x{grid_w}")
    u = np.linspace(0.0, 1.0, 100_001)
    for name, scale, ar in (("predictor", pred_scale, aspect), ("context", enc_scale, (1.0, 1.0))):
        h, w = _host_block_sizes(u, grid_h, grid_w, scale, ar)
        smallest = int((h * w).min())
        if smallest <= min_keep:
            raise ValueError(f"I-JEPA {name} blocks can be as small as {smallest} patches on a "
                             f"{grid_h}x{grid_w} grid (scale {scale}, aspect {ar}), not more than "
                             f"min_keep={min_keep}: the official collator would retry forever; "
                             f"raise the scale or lower min_keep")


def multiblock_num_uniforms(npred: int = 4, nenc: int = 1) -> int:
    """Uniforms one example may consume: 2 per predictor block, 2 per context draw (exact bound)."""
    return 2 * npred + 2 * nenc * (TIMEOUT * npred + 1)


def _rect(rows, cols, top, left, h, w):
    return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)


def _example_masks(u, pred_size, enc_size, grid_h, grid_w, npred, nenc, min_keep, allow_overlap):
    """One image: predictor blocks bool [npred, H, W], context blocks [nenc, H, W], fallbacks [nenc]."""
    rows = jnp.arange(grid_h, dtype=jnp.int32)[:, None]
    cols = jnp.arange(grid_w, dtype=jnp.int32)[None, :]

    def offsets(u2, size):
        # torch.randint(0, n) = floor(u n), n = grid - size >= 1; the clip guards float32 rounding.
        top = jnp.minimum(jnp.floor(u2[0] * (grid_h - size[0])).astype(jnp.int32), grid_h - size[0] - 1)
        left = jnp.minimum(jnp.floor(u2[1] * (grid_w - size[1])).astype(jnp.int32), grid_w - size[1] - 1)
        return top, left

    pred = []
    for k in range(npred):  # predictor blocks are never constrained: the first draw is valid
        top, left = offsets(u[2 * k: 2 * k + 2], pred_size)
        pred.append(_rect(rows, cols, top, left, pred_size[0], pred_size[1]))
    pred = jnp.stack(pred) if npred else jnp.zeros((0, grid_h, grid_w), bool)
    slot = jnp.arange(npred, dtype=jnp.int32)[:, None, None]
    max_attempts = TIMEOUT * npred + 1

    def cond(s):
        return ~s["valid"] & (s["attempts"] < max_attempts)

    def body(s):
        top, left = offsets(jax.lax.dynamic_slice(u, (s["ptr"],), (2,)), enc_size)
        block = _rect(rows, cols, top, left, enc_size[0], enc_size[1])
        if not allow_overlap:
            # constrain_mask: only the first max(npred - tries, 0) complements apply.
            active = slot < jnp.maximum(npred - s["tries"], 0)
            block = block & jnp.all(~(pred & active), axis=0)
        valid = jnp.sum(block, dtype=jnp.int32) > min_keep
        timeout = jnp.where(valid, s["timeout"], s["timeout"] - 1)
        dropped = timeout == 0
        return {"ptr": s["ptr"] + 2, "attempts": s["attempts"] + 1, "valid": valid, "block": block,
                "tries": s["tries"] + dropped.astype(jnp.int32),
                "timeout": jnp.where(dropped, TIMEOUT, timeout)}

    ptr = jnp.int32(2 * npred)
    enc, fallbacks = [], []
    for _ in range(nenc):
        s = jax.lax.while_loop(cond, body, {
            "ptr": ptr, "attempts": jnp.int32(0), "valid": jnp.asarray(False),
            "block": jnp.zeros((grid_h, grid_w), bool), "tries": jnp.int32(0),
            "timeout": jnp.int32(TIMEOUT)})
        ptr = s["ptr"]
        enc.append(s["block"])
        fallbacks.append(s["tries"])
    return pred, jnp.stack(enc), jnp.stack(fallbacks)


def _truncate(masks: jax.Array, length: jax.Array):
    """Keeps the first ``length`` True positions of each row [..., L]: (ids [..., L], bool [..., L])."""
    size = masks.shape[-1]
    kept = masks & (jnp.cumsum(masks, axis=-1) <= length)
    position = jnp.arange(size, dtype=jnp.int32)
    ids = jnp.argsort(jnp.where(kept, position, size + position), axis=-1).astype(jnp.int32)
    return ids, kept


def multiblock_masks_from_uniforms(batch_u: jax.Array, example_u: jax.Array, grid_h: int,
                                   grid_w: int, pred_scale=(0.15, 0.2), enc_scale=(0.85, 1.0),
                                   aspect=(0.75, 1.5), npred: int = 4, nenc: int = 1,
                                   min_keep: int = 10, allow_overlap: bool = False) -> MultiBlockMasks:
    """The collator from uniforms: ``batch_u`` [2] (p_size then e_size) and ``example_u`` [B, S].

    ``S >= multiblock_num_uniforms(npred, nenc)``. Defaults are the IN-1K ViT-H/14 recipe
    (``configs/in1k_vith14_ep300.yaml``; 16x16 grid there); the code's own defaults are scales
    (0.2, 0.8), aspect (0.3, 3.0), npred 2, min_keep 4.
    """
    check_multiblock(grid_h, grid_w, pred_scale, enc_scale, aspect, min_keep)
    if npred < 1 or nenc < 1:
        raise ValueError(f"I-JEPA needs npred >= 1 and nenc >= 1, got {npred} and {nenc}")
    need = multiblock_num_uniforms(npred, nenc)
    example_u = jnp.asarray(example_u, jnp.float32)
    if example_u.ndim != 2 or example_u.shape[1] < need:
        raise ValueError(f"need per-example streams [B, >= {need}], got {example_u.shape}")
    batch_u = jnp.asarray(batch_u, jnp.float32)
    pred_size = multiblock_block_size(batch_u[0], grid_h, grid_w, pred_scale, aspect)
    enc_size = multiblock_block_size(batch_u[1], grid_h, grid_w, enc_scale, (1.0, 1.0))
    pred, enc, fallbacks = jax.vmap(
        lambda u: _example_masks(u, pred_size, enc_size, grid_h, grid_w, npred, nenc, min_keep,
                                 allow_overlap))(example_u)
    batch, length = example_u.shape[0], grid_h * grid_w
    pred = pred.reshape(batch, npred, length)
    enc = enc.reshape(batch, nenc, length)
    # Truncation of every mask to the batch minimum (min_keep_pred / min_keep_enc).
    pred_len = jnp.min(jnp.sum(pred, axis=-1, dtype=jnp.int32))
    enc_len = jnp.min(jnp.sum(enc, axis=-1, dtype=jnp.int32))
    pred_ids, pred_kept = _truncate(pred, pred_len)
    enc_ids, enc_kept = _truncate(enc, enc_len)
    return MultiBlockMasks(enc_ids=enc_ids, enc_len=enc_len, enc_mask=enc_kept, pred_ids=pred_ids,
                           pred_len=pred_len, pred_mask=pred_kept, pred_size=pred_size,
                           enc_size=enc_size, enc_fallbacks=fallbacks)


def multiblock_masks(batch_key: jax.Array, keys: jax.Array, grid_h: int, grid_w: int,
                     pred_scale=(0.15, 0.2), enc_scale=(0.85, 1.0), aspect=(0.75, 1.5),
                     npred: int = 4, nenc: int = 1, min_keep: int = 10,
                     allow_overlap: bool = False) -> MultiBlockMasks:
    """I-JEPA's ``MaskCollator`` masks for a batch: block sizes from ``batch_key``, locations from
    the per-example ``keys`` [B]. See :func:`multiblock_masks_from_uniforms` for the arguments."""
    need = multiblock_num_uniforms(npred, nenc)
    batch_u = jax.random.uniform(batch_key, (2,))
    example_u = jax.vmap(lambda k: jax.random.uniform(k, (need,)))(keys)
    return multiblock_masks_from_uniforms(batch_u, example_u, grid_h, grid_w, pred_scale, enc_scale,
                                          aspect, npred, nenc, min_keep, allow_overlap)
