"""AudioMAE's local (shifted-window) decoder blocks, NNX (``decoder_mode=1``, the official default).

The official ``models_mae.py`` imports ``timm.models.swin_transformer.SwinTransformerBlock``, but
its ``timm_patch.sh`` first overwrites that timm file with ``timm_patch/swin_transformer.py`` (the
pinned timm 0.3.2 has no Swin at all). The block that actually runs is therefore that patched one,
a Swin-V2-CR style block, and this file reproduces it:

* **post-norm** residual branches: ``x = x + norm1(attn(x))``, ``x = x + norm2(mlp(x))``
  (no extra norm3, no drop path, no dropout in the main branches);
* **scaled cosine attention**: ``(q k^T) / clamp(|q| |k|, 1e-6) / clamp(tau, 0.01)`` with a
  learnable per-head ``tau`` initialised to 1 (no ``head_dim**-0.5`` scale);
* a **continuous log-spaced relative position bias**: a meta MLP
  ``Linear(2, 384) -> ReLU -> Dropout(0.1) -> Linear(384, heads) -> Dropout(0.1)`` applied to
  ``sign(d) * log(1 + |d|)`` of every pair's (row, col) offset inside a window;
* cyclic shift ``roll(x, (-sh, -sw))`` with the additive -100 mask on shifted windows, and
  ``_calc_window_shift``: an axis whose feature size is <= the window uses the whole axis as the
  window and no shift.

All Linear layers are xavier-uniform with zero bias and LayerNorms (eps 1e-6) are 1/0, because the
official ``initialize_weights`` applies ``_init_weights`` to the whole model, decoder included.
The meta MLP's dropout is active in training (PyTorch ``model.train()``); here it runs when
per-example dropout keys are passed, each example drawing its own bias table so a sample's
randomness does not depend on how the batch is split.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models.layers import Mlp, dense, layer_norm

MASK_FILL = -100.0  # the official additive mask value between different shifted regions
META_HIDDEN = 384   # WindowMultiHeadAttention's meta_hidden_dim default
META_DROPOUT = 0.1  # the official Mlp(drop=0.1) of the meta network


def window_partition(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """[B, H, W, C] -> [B * nW, wh, ww, C], windows row-major within each example (timm order)."""
    b, h, w, c = x.shape
    wh, ww = window
    if h % wh or w % ww:
        raise ValueError(f"window {tuple(window)} does not divide the feature map {h}x{w}")
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh, ww, c)


def window_reverse(windows: jax.Array, window: Sequence[int], size: Sequence[int]) -> jax.Array:
    """Inverse of :func:`window_partition`: [B * nW, wh, ww, C] -> [B, H, W, C]."""
    h, w = size
    wh, ww = window
    b = windows.shape[0] // ((h // wh) * (w // ww))
    x = windows.reshape(b, h // wh, w // ww, wh, ww, -1).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def calc_window_shift(feat_size: Sequence[int], window: Sequence[int],
                      shift: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The official ``_calc_window_shift``: clamp the window to the feature map, no shift there."""
    win = tuple(f if f <= w else w for f, w in zip(feat_size, window))
    sft = tuple(0 if f <= w else s for f, w, s in zip(feat_size, win, shift))
    return win, sft  # type: ignore[return-value]


def shift_attention_mask(feat_size: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> jax.Array:
    """Additive mask [nW, A, A] (0 or -100) between the regions a cyclic shift puts in one window.

    Transcribes the official slice loop, overwrite order included: with a zero shift on an axis,
    ``slice(-0, None)`` covers the whole axis and the last assignment wins, so that axis adds no
    region boundary (exactly what a zero shift should do).
    """
    h, w = feat_size
    wh, ww = window
    sh, sw = shift
    img = jnp.zeros((h, w), jnp.float32)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img = img.at[hs, ws].set(cnt)
            cnt += 1
    regions = window_partition(img[None, :, :, None], window).reshape(-1, wh * ww)
    diff = regions[:, None, :] - regions[:, :, None]
    return jnp.where(diff != 0, MASK_FILL, 0.0).astype(jnp.float32)


def relative_coordinates_log(window: Sequence[int]) -> jax.Array:
    """[A*A, 2] log-spaced offsets ``sign(d) log(1 + |d|)`` of every (query, key) pair in a window.

    Row ``i * A + j`` holds ``coord(i) - coord(j)`` (row offset, col offset), ``coord`` in
    row-major window order, as ``_make_pair_wise_relative_positions``.
    """
    wh, ww = window
    rows, cols = jnp.meshgrid(jnp.arange(wh), jnp.arange(ww), indexing="ij")
    coords = jnp.stack([rows.reshape(-1), cols.reshape(-1)])  # [2, A]
    rel = coords[:, :, None] - coords[:, None, :]             # [2, A, A]
    rel = rel.transpose(1, 2, 0).reshape(-1, 2).astype(jnp.float32)
    return jnp.sign(rel) * jnp.log1p(jnp.abs(rel))


def _dropout(x: jax.Array, key: jax.Array | None, rate: float) -> jax.Array:
    if key is None or rate == 0.0:
        return x
    keep = 1.0 - rate
    return jnp.where(jax.random.bernoulli(key, keep, x.shape), x / keep, 0.0).astype(x.dtype)


class WindowAttention(nnx.Module):
    """Scaled cosine window attention with a meta-MLP position bias (the patched timm module)."""

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], *, rngs: nnx.Rngs,
                 dtype: Any = None, meta_hidden: int = META_HIDDEN, meta_dropout: float = META_DROPOUT):
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window = tuple(window)
        self.meta_dropout = meta_dropout
        self.qkv = dense(dim, 3 * dim, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.proj = dense(dim, dim, ("heads", "embed"), rngs=rngs, dtype=dtype)
        # The meta MLP sees 2-D offsets only: kept in float32 (it is tiny).
        self.meta_fc1 = dense(2, meta_hidden, (None, "mlp"), rngs=rngs)
        self.meta_fc2 = dense(meta_hidden, num_heads, ("mlp", None), rngs=rngs)
        self.tau = nnx.Param(jnp.ones((num_heads,), jnp.float32), logical_axes=(None,))

    def position_bias(self, key: jax.Array | None = None) -> jax.Array:
        """[heads, A, A] bias from the meta MLP; ``key`` applies its two dropouts (training)."""
        k1 = k2 = None
        if key is not None:
            k1, k2 = jax.random.split(key)
        area = self.window[0] * self.window[1]
        hidden = _dropout(jax.nn.relu(self.meta_fc1(relative_coordinates_log(self.window))), k1, self.meta_dropout)
        bias = _dropout(self.meta_fc2(hidden), k2, self.meta_dropout)  # [A*A, heads]
        return bias.T.reshape(self.num_heads, area, area)

    def __call__(self, windows: jax.Array, mask: jax.Array | None = None,
                 keys: jax.Array | None = None) -> jax.Array:
        """Attention inside windows [B, nW, A, C]; ``mask`` [nW, A, A]; ``keys`` [B] or None."""
        b, nw, a, c = windows.shape
        hd = c // self.num_heads
        qkv = self.qkv(windows).reshape(b, nw, a, 3, self.num_heads, hd).astype(jnp.float32)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # [B, nW, A, h, hd]
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k)
        norms = jnp.einsum("bwqh,bwkh->bwhqk", jnp.linalg.norm(q, axis=-1), jnp.linalg.norm(k, axis=-1))
        logits = logits / jnp.maximum(norms, 1e-6)
        logits = logits / jnp.maximum(self.tau[...], 0.01)[None, None, :, None, None]
        if keys is None:
            bias = self.position_bias()[None, None]              # [1, 1, h, A, A]
        else:
            bias = jax.vmap(self.position_bias)(keys)[:, None]   # [B, 1, h, A, A]
        logits = logits + bias
        if mask is not None:
            logits = logits + mask[None, :, None]
        attn = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", attn, v).reshape(b, nw, a, c)
        return self.proj(out.astype(windows.dtype))


class SwinBlock(nnx.Module):
    """One post-norm shifted-window block on a (H, W) token grid; tokens [B, H*W, C] row-major."""

    def __init__(self, dim: int, num_heads: int, feat_size: Sequence[int], window: Sequence[int],
                 shift: Sequence[int] = (0, 0), mlp_ratio: float = 4.0, *, rngs: nnx.Rngs,
                 dtype: Any = None):
        self.feat_size = tuple(feat_size)
        self.window, self.shift = calc_window_shift(feat_size, window, shift)
        for f, w, s in zip(self.feat_size, self.window, self.shift):
            if f % w:
                raise ValueError(f"window {self.window} does not divide the token grid {self.feat_size}")
            if not 0 <= s < w:
                raise ValueError(f"shift {self.shift} must be in [0, window) for window {self.window}")
        self.attn = WindowAttention(dim, num_heads, self.window, rngs=rngs, dtype=dtype)
        self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)
        self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)

    def attention_mask(self) -> jax.Array | None:
        """The shifted-window mask [nW, A, A], or None without a shift."""
        if not any(self.shift):
            return None
        return shift_attention_mask(self.feat_size, self.window, self.shift)

    def window_attention(self, x: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        """Roll, partition, attend in windows, merge and roll back: [B, L, C] -> [B, L, C]."""
        h, w = self.feat_size
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"{length} tokens do not fill the {h}x{w} decoder grid")
        x = x.reshape(b, h, w, c)
        sh, sw = self.shift
        if sh or sw:
            x = jnp.roll(x, (-sh, -sw), axis=(1, 2))
        win = window_partition(x, self.window)
        win = win.reshape(b, -1, self.window[0] * self.window[1], c)
        out = self.attn(win, self.attention_mask(), keys)
        x = window_reverse(out.reshape(-1, *self.window, c), self.window, self.feat_size)
        if sh or sw:
            x = jnp.roll(x, (sh, sw), axis=(1, 2))
        return x.reshape(b, length, c)

    def __call__(self, x: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        x = x + self.norm1(self.window_attention(x, keys))
        return x + self.norm2(self.mlp(x))


def swin_block_factory(dim: int, num_heads: int, feat_size: Sequence[int], *, window: Sequence[int] = (4, 4),
                       shift: Sequence[int] = (2, 0), mlp_ratio: float = 4.0, dtype: Any = None):
    """AudioMAE's decoder blocks for :class:`~maskjax.models.backbone.Backbone`'s ``make_block``:
    no shift on even blocks, ``shift`` on odd ones (so the blocks differ and cannot be scanned)."""
    def make(rngs: nnx.Rngs, index: int, drop_path: float) -> SwinBlock:
        del drop_path  # the official swin decoder has no stochastic depth
        return SwinBlock(dim, num_heads, feat_size, window, (0, 0) if index % 2 == 0 else tuple(shift), mlp_ratio,
                         rngs=rngs, dtype=dtype)
    return make
