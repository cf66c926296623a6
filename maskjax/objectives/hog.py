"""MaskFeat's HOG target: SlowFast ``HOGLayerC`` and ``MaskMViT._get_hog_label_2d`` in jax.

specs/methods_vision.md 4(b) (facebookresearch/SlowFast ``slowfast/models/operators.py`` and
``slowfast/models/masked.py``). The official computation, per RGB channel of the model's
(ImageNet-normalised) input image:

1. reflect-pad by 1 pixel (``F.pad(mode="reflect")``: the edge pixel is not repeated);
2. depthwise 3x3 cross-correlation (``F.conv2d``, no kernel flip) with
   ``wx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]`` and ``wy = wx^T``, so ``gx`` is *left minus right*
   and ``gy`` is *top minus bottom* (Sobel with the official signs). The taps are summed in
   row-major kernel order, as torch's CPU kernel sums them (bit for bit equal, tests/test_hog.py):
   the order matters on flat regions, where ``wy``'s ``a + 2a + a - a - 2a - a`` can round to a
   few ulps instead of 0 (``gx``'s pairs cancel exactly), so such a cell's official target is a
   unit vector in bin 0 after step 6, not zeros; a region flat at exactly 0 stays all zero;
3. magnitude ``sqrt(gx^2 + gy^2)``; phase ``atan2(gx, gy) / pi * nbins`` in ``[-9, 9]`` (note the
   argument order: ``gx`` is the "y" of atan2);
4. bin ``floor(phase) mod nbins`` (Python-style mod, so ``[-9, 0)`` folds onto ``[0, 9)``: 9
   unsigned orientation bins of 20 degrees over 180); every pixel adds its whole magnitude to
   its one bin (``scatter_add_``, no interpolation, no Gaussian window: ``gaussian_window=0``);
5. sum over ``pool x pool`` pixel cells (``unfold`` + sum; MaskFeat's ``cell_sz = 8``), trailing
   pixels that do not fill a cell dropped as ``unfold`` drops them;
6. L2-normalise the ``nbins`` histogram of each (channel, cell): ``x / max(||x||, 1e-12)``
   (``F.normalize``), so a cell without any gradient stays all zero.

Per token (``_get_hog_label_2d``), the ``[B, C, nbins, Hc, Wc]`` histograms are flattened to
``C' = C * nbins`` channel-major maps, the ``u x u`` cells under a token (``u = patch / cell``)
are unfolded last, giving ``C' * u * u`` values ordered (channel, bin, cell row, cell column):
108 for RGB, 9 bins and 16x16 patches of 2x2 cells of 8x8 pixels.

Layouts here are maskjax's channel-last ones (images ``[B, H, W, C]``); :func:`hog_histograms`
returns the official ``[B, C, nbins, Hc, Wc]`` and :func:`hog_token_targets` the official
per-token order. The target is a constant of the input: ``stop_gradient`` is applied.
jax/numpy only (the "kernels" import-linter contract).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HOG_BINS = 9   # MaskMViT: self.nbins = 9
HOG_CELL = 8   # MaskMViT: self.cell_sz = 8 (HOGLayerC's ``pool``)
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default eps

# HOGLayerC.weight_x; weight_y is its transpose. Rows index the kernel's height (dy), columns its width (dx).
SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))


def _correlate3x3(padded: jax.Array, kernel, height: int, width: int) -> jax.Array:
    """``sum_{dy,dx} kernel[dy][dx] * padded[:, y+dy, x+dx, :]``: ``F.conv2d`` (groups=C) as shifted adds."""
    out = None
    for dy in range(3):
        for dx in range(3):
            weight = kernel[dy][dx]
            if weight == 0.0:
                continue
            term = weight * padded[:, dy:dy + height, dx:dx + width, :]
            out = term if out is None else out + term
    return out


def sobel_gradients(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(gx, gy)`` [B, H, W, C] of ``HOGLayerC``: reflect pad 1, depthwise ``wx`` / ``wx^T`` correlation."""
    if images.ndim != 4:
        raise ValueError(f"HOG expects images [B, H, W, C], got shape {images.shape}")
    x = images.astype(jnp.float32)
    _, height, width, _ = x.shape
    if height < 2 or width < 2:
        raise ValueError(f"reflect padding needs images of at least 2x2 pixels, got {height}x{width}")
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    sobel_y = tuple(zip(*SOBEL_X))  # wy = wx^T
    return _correlate3x3(padded, SOBEL_X, height, width), _correlate3x3(padded, sobel_y, height, width)


def orientation_bins(gx: jax.Array, gy: jax.Array, nbins: int = HOG_BINS) -> jax.Array:
    """int32 bin of each gradient: ``floor(atan2(gx, gy) / pi * nbins) mod nbins`` (official order).

    A zero gradient gets ``atan2(0, 0) = 0`` (bin 0) and adds nothing, its magnitude being 0.
    """
    phase = jnp.arctan2(gx, gy) / jnp.pi * nbins
    return jnp.mod(jnp.floor(phase).astype(jnp.int32), nbins)


def hog_cells(images: jax.Array, nbins: int = HOG_BINS, cell: int = HOG_CELL) -> jax.Array:
    """L2-normalised HOG histograms [B, Hc, Wc, C, nbins] of images [B, H, W, C] (channel last).

    ``Hc = H // cell``, ``Wc = W // cell`` (pixels past the last whole cell are dropped, as
    ``unfold`` drops them). See the module docstring for the steps.
    """
    if cell < 1 or nbins < 1:
        raise ValueError(f"HOG needs cell >= 1 and nbins >= 1, got cell={cell}, nbins={nbins}")
    images = jax.lax.stop_gradient(images)
    gx, gy = sobel_gradients(images)
    magnitude = jnp.sqrt(gx * gx + gy * gy)
    bins = orientation_bins(gx, gy, nbins)
    b, h, w, c = magnitude.shape
    hc, wc = h // cell, w // cell
    if hc == 0 or wc == 0:
        raise ValueError(f"images of {h}x{w} pixels hold no {cell}x{cell} HOG cell")
    # Hard assignment: each pixel votes its magnitude into its own bin (scatter-add). The
    # one-hot product and the cell sum fuse into one reduction; nothing [.., nbins]-sized per
    # pixel needs to stay in memory.
    votes = (bins[..., None] == jnp.arange(nbins, dtype=jnp.int32)) * magnitude[..., None]
    votes = votes[:, :hc * cell, :wc * cell]
    hist = votes.reshape(b, hc, cell, wc, cell, c, nbins).sum(axis=(2, 4))
    norm = jnp.sqrt(jnp.sum(hist * hist, axis=-1, keepdims=True))
    return hist / jnp.maximum(norm, NORMALIZE_EPS)


def hog_histograms(images: jax.Array, nbins: int = HOG_BINS, cell: int = HOG_CELL) -> jax.Array:
    """``HOGLayerC(nbins, pool=cell)`` output in its own layout [B, C, nbins, Hc, Wc] (images [B, H, W, C])."""
    return jnp.transpose(hog_cells(images, nbins, cell), (0, 3, 4, 1, 2))


def hog_target_dim(patch: int, cell: int = HOG_CELL, nbins: int = HOG_BINS, channels: int = 3) -> int:
    """Size of one token's HOG target: ``channels * nbins * (patch / cell)^2`` (108 for MaskFeat ViT-B/16)."""
    if patch % cell:
        raise ValueError(f"the patch size {patch} is not a multiple of the HOG cell size {cell}")
    return channels * nbins * (patch // cell) ** 2


def hog_token_targets(images: jax.Array, patch: int, cell: int = HOG_CELL, nbins: int = HOG_BINS) -> jax.Array:
    """Per-token HOG targets [B, L, C * nbins * (patch/cell)^2] of images [B, H, W, C].

    Tokens are the ``patch x patch`` patches in row-major order (``L = (H/patch) * (W/patch)``);
    each vector is ordered (channel, bin, cell row, cell column) as ``_get_hog_label_2d``.
    """
    hog_target_dim(patch, cell, nbins)  # validates patch % cell
    b, h, w, _ = images.shape
    if h % patch or w % patch:
        raise ValueError(f"images of {h}x{w} pixels are not a whole number of {patch}x{patch} patches")
    hist = hog_cells(images, nbins, cell)  # [B, Hc, Wc, C, nbins]
    per = patch // cell
    gh, gw = h // patch, w // patch
    c = hist.shape[3]
    hist = hist.reshape(b, gh, per, gw, per, c, nbins)
    # -> [B, gh, gw, C, nbins, cell row, cell col]: channel-major C' = C * nbins, cells last.
    hist = jnp.transpose(hist, (0, 1, 3, 5, 6, 2, 4))
    return hist.reshape(b, gh * gw, c * nbins * per * per)
