"""MaskFeat's HOG target (maskjax.objectives.hog) against a numpy transcription of SlowFast's
``HOGLayerC.forward`` and ``MaskMViT._get_hog_label_2d`` (facebookresearch/SlowFast 287ec00,
``slowfast/models/operators.py`` / ``masked.py``), plus hand-computed cases.

The transcription keeps the official NCHW layout and torch's operations one for one: reflect
``F.pad``, a depthwise ``F.conv2d`` (cross-correlation over 3x3 windows), ``stack(..).norm``,
``atan2(gx, gy)``, ``scatter_add_`` into the bins, ``unfold`` + sum over cells,
``F.normalize(dim=2)``; the per-token label is ``flatten(1, 2)``, ``permute(0, 2, 3, 1)``, two
``unfold``s and two ``flatten``s. ``unfold`` is torch's (a strided sliding window appended as the
last axis), written with numpy's ``sliding_window_view``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from maskjax.objectives.hog import (hog_cells, hog_histograms, hog_target_dim, hog_token_targets,
                                    orientation_bins, sobel_gradients)

# --------------------------------------------------------------------------------------------
# numpy transcription of the official code (NCHW)


def torch_unfold(x: np.ndarray, dim: int, size: int, step: int) -> np.ndarray:
    """``Tensor.unfold(dim, size, step)``: windows along ``dim``, the window as a new last axis."""
    windows = sliding_window_view(x, size, axis=dim)
    index = [slice(None)] * windows.ndim
    index[dim] = slice(None, None, step)
    return windows[tuple(index)]


def conv2d_depthwise(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``F.conv2d(x, weight.repeat(C, 1, 1, 1), padding=0, groups=C)``: correlation, no flip.

    The taps are accumulated in float32 in row-major kernel order, as torch's CPU kernel does
    (``test_sobel_gradients_are_bitwise_torch_conv2d`` checks it): on a flat region the sum
    ``a + 2a + a - a - 2a - a`` of ``wy`` can round to a few ulps instead of 0 and the official
    target of such a cell is then a unit vector in bin 0, not zeros.
    """
    windows = sliding_window_view(x, (3, 3), axis=(2, 3))  # [B, C, H, W, 3, 3]
    out = np.zeros(windows.shape[:4], np.float32)
    for i in range(3):
        for j in range(3):
            out = out + np.float32(weight[i, j]) * windows[..., i, j]
    return out


def reference_hog_layer_c(x: np.ndarray, nbins: int = 9, pool: int = 8) -> np.ndarray:
    """``HOGLayerC(nbins, pool, gaussian_window=0).forward(x)``, x [B, 3, H, W] -> [B, 3, nbins, H', W']."""
    weight_x = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
    weight_y = weight_x.T
    x = np.pad(x.astype(np.float32), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    gx_rgb = conv2d_depthwise(x, weight_x)
    gy_rgb = conv2d_depthwise(x, weight_y)
    norm_rgb = np.linalg.norm(np.stack([gx_rgb, gy_rgb], axis=-1), axis=-1)
    phase = np.arctan2(gx_rgb, gy_rgb)
    phase = phase / np.float32(np.pi) * np.float32(nbins)

    b, c, h, w = norm_rgb.shape
    out = np.zeros((b, c, nbins, h, w), np.float32)
    phase = phase.reshape(b, c, 1, h, w)
    norm_rgb = norm_rgb.reshape(b, c, 1, h, w)
    index = np.floor(phase).astype(np.int64) % nbins  # torch's % on integers: Python's sign rule
    # out.scatter_add_(2, index, norm_rgb): out[i, j, index[i, j, 0, k, l], k, l] += norm_rgb[i, j, 0, k, l]
    ii, jj, kk, ll = np.meshgrid(np.arange(b), np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    np.add.at(out, (ii, jj, index[:, :, 0], kk, ll), norm_rgb[:, :, 0])

    out = torch_unfold(out, 3, pool, pool)
    out = torch_unfold(out, 4, pool, pool)
    out = out.sum(axis=(-1, -2))
    # F.normalize(out, p=2, dim=2): x / max(||x||_2, 1e-12)
    return out / np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)


def reference_hog_label_2d(x: np.ndarray, feat_size: int, nbins: int = 9, pool: int = 8) -> np.ndarray:
    """``_get_hog_label_2d`` for one prediction depth, before ``[output_mask]``: [B, L, C*nbins*u*u]."""
    tmp_hog = reference_hog_layer_c(x, nbins, pool)
    b, c, k, hh, ww = tmp_hog.shape
    tmp_hog = tmp_hog.reshape(b, c * k, hh, ww)  # .flatten(1, 2)
    unfold_size = tmp_hog.shape[-1] // feat_size
    tmp_hog = tmp_hog.transpose(0, 2, 3, 1)
    tmp_hog = torch_unfold(tmp_hog, 1, unfold_size, unfold_size)
    tmp_hog = torch_unfold(tmp_hog, 2, unfold_size, unfold_size)
    n0, n1, n2 = tmp_hog.shape[:3]
    tmp_hog = tmp_hog.reshape(n0, n1 * n2, *tmp_hog.shape[3:])  # .flatten(1, 2)
    return tmp_hog.reshape(n0, n1 * n2, -1)  # .flatten(2)


# --------------------------------------------------------------------------------------------


def _nchw(images_nhwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))


_histograms = jax.jit(hog_histograms, static_argnames=("nbins", "cell"))
_targets = jax.jit(hog_token_targets, static_argnames=("patch", "cell", "nbins"))


def _flat_region_image(seed: int, size: int = 32) -> np.ndarray:
    """Piecewise-constant images: constant rectangles (zero gradients inside, exact axis-aligned
    edges whose phase is 0, +-pi/2 or exactly pi) and one channel flat at 0.7."""
    rng = np.random.default_rng(seed)
    img = np.zeros((2, size, size, 3), np.float32)
    for b in range(2):
        for c in range(2):
            for _ in range(4):
                top, left = rng.integers(0, size - 4, size=2)
                h, w = rng.integers(2, size // 2, size=2)
                img[b, top:top + h, left:left + w, c] = rng.integers(-3, 4)
    img[:, :, :, 2] = 0.7  # flat, but 0.7 + 1.4 + 0.7 - 0.7 - 1.4 - 0.7 rounds to -6e-8 in float32
    img[:, 8:16, :, 1] = -1.5  # and two full-width horizontal edges (gx = 0 exactly)
    return img


@pytest.mark.parametrize("size_hw,cell,patch", [((32, 32), 8, 16), ((24, 40), 8, 8), ((32, 32), 4, 4),
                                                ((16, 32), 4, 8)])
def test_random_images_match_the_official_transcription(size_hw, cell, patch):
    h, w = size_hw
    images = np.random.default_rng(h * w + cell).normal(size=(2, h, w, 3)).astype(np.float32)
    got = np.asarray(_histograms(jnp.asarray(images), cell=cell))
    want = reference_hog_layer_c(_nchw(images), pool=cell)
    assert got.shape == want.shape == (2, 3, 9, h // cell, w // cell)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Per token; the official unfold size comes from the last (width) axis: w // patch tokens.
    got_tokens = np.asarray(_targets(jnp.asarray(images), patch=patch, cell=cell))
    want_tokens = reference_hog_label_2d(_nchw(images), feat_size=w // patch, pool=cell)
    assert got_tokens.shape == want_tokens.shape == (2, (h // patch) * (w // patch), hog_target_dim(patch, cell))
    np.testing.assert_allclose(got_tokens, want_tokens, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_flat_regions_match_the_official_transcription(seed):
    images = _flat_region_image(seed)
    got = np.asarray(_targets(jnp.asarray(images), patch=16))
    want = reference_hog_label_2d(_nchw(images), feat_size=2)
    np.testing.assert_allclose(got, want, atol=1e-5)
    hist = np.asarray(_histograms(jnp.asarray(images)))  # [B, C, 9, Hc, Wc]
    assert np.isfinite(hist).all()
    # The 0.7 channel: wy's rounding residue (gx is exactly 0) has phase 0 or pi, bin 0, and
    # F.normalize makes it a unit vector: the official target of a flat 0.7 cell is e_0.
    np.testing.assert_array_equal(hist[:, 2, 0], 1.0)
    np.testing.assert_array_equal(hist[:, 2, 1:], 0.0)
    # A region flat at 0 has exact zero gradients: all-zero histograms (eps, no NaN).
    zeros = np.zeros((1, 16, 16, 3), np.float32)
    assert np.all(np.asarray(_histograms(jnp.asarray(zeros))) == 0.0)
    # Cells that hold any gradient are unit vectors over the 9 bins.
    norms = np.linalg.norm(hist, axis=2)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-6)


def test_sobel_gradients_are_bitwise_torch_conv2d():
    """The official op itself (torch's reflect pad + grouped conv2d, when torch is installed):
    the same float32 gradients bit for bit, rounding residues of flat regions included."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    weight_x = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    rng = np.random.default_rng(5)
    flat = np.broadcast_to(rng.normal(size=(3, 1, 1, 3)), (3, 16, 16, 3))
    for img in (_flat_region_image(2, 16), rng.normal(size=(2, 16, 24, 3)), flat):
        img = np.ascontiguousarray(img, np.float32)
        x = functional.pad(torch.from_numpy(_nchw(img)), (1, 1, 1, 1), mode="reflect")
        for got, weight in zip(sobel_gradients(jnp.asarray(img)), (weight_x, weight_x.transpose(2, 3))):
            want = functional.conv2d(x, weight, groups=3).numpy().transpose(0, 2, 3, 1)
            np.testing.assert_array_equal(np.asarray(got), want)


def test_orientation_bins_by_hand():
    # (gx, gy) -> floor(atan2(gx, gy) / pi * 9) mod 9
    cases = [((0.0, 1.0), 0),     # phase 0
             ((0.0, -1.0), 0),    # phase exactly +9 (atan2 = pi) folds onto bin 0
             ((-0.0, -1.0), 0),   # phase exactly -9 (atan2 = -pi)
             ((1.0, 0.0), 4),     # +4.5
             ((-1.0, 0.0), 4),    # -4.5 -> floor -5 -> 4: orientations are unsigned
             ((1.0, 1.0), 2),     # 2.25
             ((-1.0, -1.0), 2),   # -6.75 -> -7 -> 2
             ((1.0, -1.0), 6),    # 6.75
             ((-1.0, 1.0), 6),    # -2.25 -> -3 -> 6
             ((0.0, 0.0), 0)]     # atan2(0, 0) = 0; its magnitude is 0 anyway
    gx = jnp.array([c[0][0] for c in cases], jnp.float32)
    gy = jnp.array([c[0][1] for c in cases], jnp.float32)
    assert np.asarray(orientation_bins(gx, gy)).tolist() == [c[1] for c in cases]


def test_sobel_signs_by_hand():
    # A step from 0 (columns < 3) to 1 (columns >= 3): gx = left - right = -(1 + 2 + 1) at the two
    # columns beside the step, 0 elsewhere (reflect padding keeps the borders flat); gy = 0.
    img = np.zeros((1, 6, 6, 1), np.float32)
    img[:, :, 3:] = 1.0
    gx, gy = (np.asarray(g)[0, :, :, 0] for g in sobel_gradients(jnp.asarray(img)))
    expected = np.zeros((6, 6), np.float32)
    expected[:, 2:4] = -4.0
    np.testing.assert_array_equal(gx, expected)
    np.testing.assert_array_equal(gy, 0.0)
    # Transposed: a step from 0 (rows < 3) to 1 is gy = top - bottom = -4.
    gx_t, gy_t = (np.asarray(g)[0, :, :, 0] for g in sobel_gradients(jnp.asarray(img.transpose(0, 2, 1, 3))))
    np.testing.assert_array_equal(gy_t, expected.T)
    np.testing.assert_array_equal(gx_t, 0.0)


def test_a_vertical_edge_puts_all_mass_in_one_bin():
    # Channel 0: a full-height vertical edge between columns 11 and 12 (cells of column 1 only);
    # channel 1: a vertical edge of another height (normalisation is per channel and cell);
    # channel 2: a full-width horizontal edge between rows 3 and 4 (cells of row 0 only).
    img = np.zeros((1, 16, 16, 3), np.float32)
    img[:, :, 12:, 0] = 1.0
    img[:, :, 12:, 1] = -2.5
    img[:, 4:, :, 2] = 1.0
    hist = np.asarray(hog_cells(jnp.asarray(img)))[0]  # [Hc, Wc, C, 9]
    e = np.eye(9, dtype=np.float32)
    for row in range(2):
        np.testing.assert_allclose(hist[row, 1, 0], e[4], atol=1e-7)  # phase -4.5: bin 4 only
        np.testing.assert_allclose(hist[row, 1, 1], e[4], atol=1e-7)
        np.testing.assert_array_equal(hist[row, 0, :2], 0.0)
    for col in range(2):
        np.testing.assert_allclose(hist[0, col, 2], e[0], atol=1e-7)  # phase exactly pi: bin 0
        np.testing.assert_array_equal(hist[1, col, 2], 0.0)
    # One 16x16 token of 2x2 cells: (channel, bin, cell row, cell col) order, 108 values.
    target = np.asarray(hog_token_targets(jnp.asarray(img), patch=16))[0, 0]
    assert target.shape == (108,)
    flat = lambda c, b, r, q: ((c * 9 + b) * 2 + r) * 2 + q  # noqa: E731
    expected = np.zeros(108, np.float32)
    for r in range(2):
        expected[flat(0, 4, r, 1)] = expected[flat(1, 4, r, 1)] = 1.0
    for q in range(2):
        expected[flat(2, 0, 0, q)] = 1.0
    np.testing.assert_allclose(target, expected, atol=1e-7)


def test_target_is_a_constant_and_shapes_are_checked():
    images = jnp.asarray(np.random.default_rng(3).normal(size=(1, 16, 16, 3)), jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(hog_token_targets(x, patch=16)))(images)
    assert np.all(np.asarray(grad) == 0.0)
    assert hog_target_dim(16) == 108 and hog_target_dim(4, cell=4) == 27
    with pytest.raises(ValueError, match="not a multiple of the HOG cell size 8"):
        hog_target_dim(12)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        sobel_gradients(images[0])
