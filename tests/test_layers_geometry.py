"""Spec sections 0.1 (sin-cos position embeddings) and 0.3 (patchify order) against explicit
numpy references written from the spec's formulas."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskjax.models.layers import patchify, sincos_1d, sincos_2d, unpatchify

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)


def ref_sincos_1d(dim: int, positions) -> np.ndarray:
    """Spec 0.1 get_1d, explicit loops: [sin(pos*omega_k) ..., cos(pos*omega_k) ...]."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1)
    half = dim // 2
    out = np.zeros((len(positions), dim))
    for m, pos in enumerate(positions):
        for k in range(half):
            omega = 1.0 / 10000 ** (k / (dim / 2))
            out[m, k] = math.sin(pos * omega)
            out[m, half + k] = math.cos(pos * omega)
    return out

def ref_sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool) -> np.ndarray:
    """Spec 0.1 2D table: first half column, second half row, row-major tokens, zero cls row."""
    rows = []
    quarter = dim // 4
    if cls_token:
        rows.append(np.zeros(dim))
    for r in range(grid_h):
        for c in range(grid_w):
            v = np.zeros(dim)
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / (dim / 4))   # get_1d(D/2): k / ((D/2)/2)
                v[k] = math.sin(c * omega)
                v[quarter + k] = math.cos(c * omega)
                v[2 * quarter + k] = math.sin(r * omega)
                v[3 * quarter + k] = math.cos(r * omega)
            rows.append(v)
    return np.stack(rows)

def ref_patchify_nchw(imgs_nchw: np.ndarray, p: int) -> np.ndarray:
    """Spec 0.3 / mae models_mae.py::patchify, with the spec's einsum string."""
    n, c, hh, ww = imgs_nchw.shape
    h, w = hh // p, ww // p
    x = imgs_nchw.reshape(n, c, h, p, w, p)
    x = np.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, p * p * c)


# ============================================================================================
# 0.1 sin-cos position embeddings


def test_sincos_1d_hand_values():
    # dim 4: omega = [1, 1/100]; layout [sin(p), sin(p/100), cos(p), cos(p/100)]
    out = sincos_1d(4, np.array([0, 1, 2]))
    expected = np.array([[math.sin(p), math.sin(p / 100), math.cos(p), math.cos(p / 100)] for p in (0, 1, 2)])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [2, 8, 16, 64])
def test_sincos_1d_matches_loop_reference(dim):
    pos = np.arange(13)
    np.testing.assert_allclose(sincos_1d(dim, pos), ref_sincos_1d(dim, pos), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim,gh,gw,cls", [
    (8, 2, 3, True), (16, 4, 4, True), (32, 3, 5, False), (64, 14, 14, True), (768, 2, 2, True)])
def test_sincos_2d_matches_loop_reference(dim, gh, gw, cls):
    out = sincos_2d(dim, gh, gw, cls_token=cls)
    ref = ref_sincos_2d(dim, gh, gw, cls)
    assert out.shape == (gh * gw + int(cls), dim)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_sincos_2d_hand_case_column_first():
    # dim 4: one frequency (omega=1); token (row r, col c) = [sin c, cos c, sin r, cos r]
    out = sincos_2d(4, 2, 3, cls_token=True)
    np.testing.assert_array_equal(out[0], np.zeros(4))
    for r in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[1 + r * 3 + c],
                                       [math.sin(c), math.cos(c), math.sin(r), math.cos(r)], atol=1e-7)


def test_sincos_bad_dims_raise():
    with pytest.raises(ValueError):
        sincos_1d(3, np.arange(4))
    with pytest.raises(ValueError):
        sincos_2d(6, 2, 2)


# ============================================================================================
# 0.3 patchify ordering


@pytest.mark.parametrize("n,c,h,w,p", [(2, 3, 8, 8, 4), (1, 3, 12, 8, 4), (2, 1, 6, 9, 3), (1, 2, 4, 4, 2)])
def test_patchify_matches_spec_einsum(n, c, h, w, p):
    rng = np.random.default_rng(h * 100 + w)
    nchw = rng.normal(size=(n, c, h, w)).astype(np.float32)
    nhwc = nchw.transpose(0, 2, 3, 1)
    out = np.asarray(patchify(jnp.asarray(nhwc), p))
    np.testing.assert_array_equal(out, ref_patchify_nchw(nchw, p))
    back = np.asarray(unpatchify(jnp.asarray(out), p, h // p, w // p))
    np.testing.assert_array_equal(back, nhwc)


def test_patchify_hand_case():
    # 1 channel, 4x4 image, p=2: token 1 is the top-right 2x2 patch, rows then columns
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = np.asarray(patchify(jnp.asarray(img), 2))
    np.testing.assert_array_equal(out[0, 1], [2, 3, 6, 7])
    np.testing.assert_array_equal(out[0, 2], [8, 9, 12, 13])
    # 2 channels: channel is the fastest-varying index within a patch (pqc order)
    img2 = np.stack([img[..., 0], 100 + img[..., 0]], axis=-1)
    out2 = np.asarray(patchify(jnp.asarray(img2), 2))
    np.testing.assert_array_equal(out2[0, 0], [0, 100, 1, 101, 4, 104, 5, 105])


@given(st.sampled_from([(1, 2, 3, 2), (2, 3, 2, 4)]), st.integers(0, 2**32 - 1))
@SETTINGS
def test_unpatchify_inverts_patchify(dims, seed):
    b, gh, gw, p = dims
    x = np.random.default_rng(seed).normal(size=(b, gh * gw, p * p * 3)).astype(np.float32)
    img = unpatchify(jnp.asarray(x), p, gh, gw)
    assert img.shape == (b, gh * p, gw * p, 3)
    np.testing.assert_array_equal(np.asarray(patchify(img, p)), x)


def test_patchify_rejects_indivisible_size():
    with pytest.raises(ValueError):
        patchify(jnp.zeros((1, 10, 8, 3)), 4)
