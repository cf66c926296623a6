"""Mask generators of the masked-image-modeling family (specs/methods_vision.md 2-4, 9-13).

Each generator is checked against a transcription of the official algorithm
(tests/mim_mask_reference.py): draw for draw where both can read the same uniforms, and in
distribution (chi-square tests, p > 1e-3, fixed seeds so the outcome is deterministic) where the
official random source is used. The distribution checks come with a deliberately wrong variant
(log- vs linear-uniform aspect, inclusive vs exclusive offsets, a ~2% bias in a uniform draw, ...)
that the same statistic rejects at p < 1e-6, so they cannot pass by accident.
"""
from __future__ import annotations

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskjax.masking.block import (
    blockwise_mask, blockwise_num_uniforms, blockwise_trace_from_uniforms, maskfeat_block_params,
    maskfeat_mask)
from maskjax.masking.color_noise import (
    COLORS, color_gain, color_noise_mask, color_noise_patterns, color_noise_windows,
    crop_flip_normalize, filter_white_noise, mask_from_patterns)
from maskjax.masking.frequency import (
    mfm_base_mask, mfm_corrupt, mfm_freq_mask, mfm_is_low_pass, mfm_mask_from_uniform)
from maskjax.masking.hard_patches import (
    hpm_alpha, hpm_mask, hpm_mask_from_noise, hpm_num_hard, hpm_num_hard_table)
from maskjax.masking.multiblock import (
    check_multiblock, multiblock_block_size, multiblock_masks, multiblock_masks_from_uniforms,
    multiblock_num_uniforms)
from maskjax.masking.partial_reconstruction import (
    crossmae_counts, crossmae_mask, crossmae_mask_from_noise)
from maskjax.masking.patch_units import simmim_mask, simmim_mask_from_noise, simmim_num_masked
from tests import mim_mask_reference as ref

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)
FEW = settings(max_examples=6, deadline=None, derandomize=True)  # each example compiles anew
PASS, REJECT = 1e-3, 1e-6  # p-value thresholds: a correct generator passes, a wrong one is rejected


_KEY_TABLE = []


def _keys(offset, n):
    """Per-example keys: slices of one split (each new ``split`` size would cost a compile)."""
    if not _KEY_TABLE:
        _KEY_TABLE.append(jax.random.split(jax.random.key(0), 8192))
    return _KEY_TABLE[0][offset:offset + n]


# --------------------------------------------------------------------------------------------
# SimMIM (spec 2(a))


@pytest.mark.parametrize("input_size,mask_patch,model_patch,units,masked_units,masked_tokens", [
    (224, 32, 16, 49, 30, 120),     # spec 0.7 / 2(a): ViT-B, 30 of 49 units -> 120 of 196 tokens
    (192, 32, 4, 36, 22, 22 * 64),  # spec 2(a): Swin@192, 22 of 36 units of 8x8 tokens
])
def test_simmim_counts(input_size, mask_patch, model_patch, units, masked_units, masked_tokens):
    assert simmim_num_masked(units, 0.6) == masked_units
    masks = jax.jit(jax.vmap(lambda k: simmim_mask(k, input_size, mask_patch, model_patch, 0.6)))(_keys(0, 8))
    side = input_size // model_patch
    assert masks.shape == (8, side, side)
    np.testing.assert_array_equal(masks.sum((1, 2)), masked_tokens)


# The count may be traced: one compile per upsampling scale serves every ratio.
_simmim_from_noise = jax.jit(simmim_mask_from_noise, static_argnums=2)


@SETTINGS
@given(rand_size=st.sampled_from([3, 7]), scale=st.sampled_from([1, 4]),
       ratio=st.floats(0.05, 0.95), seed=st.integers(0, 2 ** 16))
def test_simmim_matches_official(rand_size, scale, ratio, seed):
    # The official generator with np.random.permutation := argsort(noise): the same subset, upsampled.
    noise = np.random.default_rng(seed).random((rand_size, rand_size)).astype(np.float32)
    expected = ref.ref_simmim(np.argsort(noise.reshape(-1), kind="stable"), rand_size * 32, 32,
                              32 // scale, ratio)
    got = _simmim_from_noise(noise, simmim_num_masked(rand_size ** 2, ratio), scale)
    np.testing.assert_array_equal(np.asarray(got), expected.astype(bool))


def test_simmim_units_are_uniform():
    n = 20000
    noise = np.random.default_rng(1).random((2, n, 7, 7)).astype(np.float32)

    @jax.jit
    def counts(noise):
        masks = simmim_mask_from_noise(noise[0], 30, 1)  # unit level (scale 1): 30 of 49
        # Power: a sampler biased towards later units by ~2% of the masking rate.
        tilt = 1.0 + 0.06 * jnp.arange(49).reshape(7, 7) / 48
        biased = simmim_mask_from_noise(noise[1] ** (1 / tilt), 30, 1)
        return masks.sum(0), biased.sum(0)

    fair, biased = counts(noise)
    assert ref.fixed_count_uniformity_p(np.asarray(fair), n, 30) > PASS
    assert ref.fixed_count_uniformity_p(np.asarray(biased), n, 30) < REJECT


# --------------------------------------------------------------------------------------------
# BEiT block-wise masking (spec 3(a)) and MaskFeat (spec 4(a))

BEIT = dict(grid=(14, 14), n=75, min_num=16, max_num=None, min_aspect=0.3, max_aspect=None)
BLOCK_CONFIGS = {
    "beit": BEIT,
    "maskfeat": dict(grid=(14, 14), n=78, min_num=15, max_num=None, min_aspect=0.3, max_aspect=None),
    "capped": dict(grid=(6, 9), n=20, min_num=4, max_num=10, min_aspect=0.5, max_aspect=3.0),
    "crowded": dict(grid=(5, 5), n=22, min_num=4, max_num=None, min_aspect=0.3, max_aspect=None),
}


BLOCK_DRAWS = 2000  # rows per call of a config's traced loop (one compile per config)
_TRACE_FNS = {}


def _trace_fn(name):
    if name not in _TRACE_FNS:
        c = BLOCK_CONFIGS[name]
        h, w = c["grid"]
        _TRACE_FNS[name] = jax.jit(jax.vmap(lambda u: blockwise_trace_from_uniforms(
            u, h, w, c["n"], c["min_num"], c["max_num"], c["min_aspect"], c["max_aspect"])))
    return _TRACE_FNS[name]


def _uniform_streams(seed, n):
    return np.random.default_rng(seed).random((BLOCK_DRAWS, blockwise_num_uniforms(n))).astype(np.float32)


def _ref_generator(c, rng, quirk=None):
    return ref.RefMaskingGenerator(c["grid"], c["n"], c["min_num"], c["max_num"], c["min_aspect"],
                                   c["max_aspect"], rng=rng, quirk=quirk)


@pytest.mark.parametrize("name", list(BLOCK_CONFIGS))
def test_blockwise_matches_official_loop_draw_for_draw(name):
    c = BLOCK_CONFIGS[name]
    draws = 300  # compared with the Python loop; the call runs BLOCK_DRAWS to share its compile
    u = _uniform_streams(3, c["n"])
    trace = jax.device_get(_trace_fn(name)(u))
    shortfalls = 0
    for i in range(draws):
        stream = ref.UniformStream(u[i])
        gen = _ref_generator(c, stream)
        expected = gen()
        np.testing.assert_array_equal(trace.mask[i], expected.astype(bool), err_msg=f"draw {i}")
        assert trace.used[i] == stream.pos  # consumed the same uniforms, in the same order
        nb = int(trace.num_blocks[i])
        got_blocks = [(int(h), int(w), int(d))
                      for (h, w), d in zip(trace.block_hw[i, :nb], trace.block_new[i, :nb])]
        assert got_blocks == gen.blocks
        shortfalls += int(expected.sum()) < c["n"]
    assert trace.finished.all()  # the official stopping rule ended every loop, never the bound
    if name == "crowded":
        assert shortfalls > draws // 10  # the "nothing more fits" exit is exercised


def _block_stats(masks, first_hw, counts, nblocks, n):
    """Histograms compared between two samples: count, blocks, first block (h, w), edge use."""
    hw_bins = sorted(set(map(tuple, first_hw)))
    return {
        "count": ref.histogram(counts, list(range(n + 1))),
        "blocks": ref.histogram(nblocks, list(range(n + 1))),
        "first_hw": (first_hw, hw_bins),
        "last_row": ref.histogram(masks[:, -1, :].any(1).tolist(), [False, True]),
        "first_col": ref.histogram(masks[:, :, 0].any(1).tolist(), [False, True]),
    }


def _compare(a, b):
    """p-values of the two-sample tests between block statistics ``a`` and ``b``."""
    out = {}
    for key in a:
        if key == "first_hw":
            bins = sorted(set(a[key][1]) | set(b[key][1]))
            ha = ref.histogram(map(tuple, a[key][0]), bins)
            hb = ref.histogram(map(tuple, b[key][0]), bins)
            out[key] = ref.chi2_two_sample(ha, hb)[2]
        else:
            out[key] = ref.chi2_two_sample(a[key], b[key])[2]
    return out


def _ref_sample(c, draws, seed, quirk=None):
    gen = _ref_generator(c, random.Random(seed), quirk)
    masks, first, nblocks = [], [], []
    for _ in range(draws):
        masks.append(gen())
        first.append(gen.blocks[0][:2])
        nblocks.append(len(gen.blocks))
    masks = np.array(masks, bool)
    return _block_stats(masks, np.array(first), masks.sum((1, 2)), nblocks, c["n"]), masks


def test_blockwise_distribution_matches_official_random():
    """JAX draws vs the official loop on Python's own ``random``: the same distributions."""
    c, draws = BEIT, BLOCK_DRAWS
    trace = jax.device_get(_trace_fn("beit")(_uniform_streams(4, c["n"])))
    ours = _block_stats(trace.mask, trace.block_hw[:, 0], trace.count, trace.num_blocks, c["n"])
    theirs, ref_masks = _ref_sample(c, draws, seed=5)
    for stat, p in _compare(ours, theirs).items():
        assert p > PASS, f"{stat}: p = {p:.2e}"
    a, b = trace.count.astype(float), ref_masks.sum((1, 2)).astype(float)
    z = abs(a.mean() - b.mean()) / np.sqrt(a.var() / a.size + b.var() / b.size)
    assert z < 4.0
    assert (a < 75).mean() > 0.01  # spec 3(a): the count may fall short of 75, never exceed it
    assert a.max() <= 75
    # Power: uniform (not log-uniform) aspect ratios, or never using the last offset, are rejected.
    wrong_aspect, _ = _ref_sample(c, 500, seed=6, quirk="linear_aspect")
    assert _compare(ours, wrong_aspect)["first_hw"] < REJECT
    wrong_offsets, _ = _ref_sample(c, 500, seed=7, quirk="exclusive_offsets")
    assert _compare(ours, wrong_offsets)["last_row"] < REJECT


_PROPERTY_FNS = {}


def _property_fn(h, w, n):
    # Block parameters are traced, so hypothesis' examples share one compile per (grid, N).
    if (h, w, n) not in _PROPERTY_FNS:
        _PROPERTY_FNS[h, w, n] = jax.jit(jax.vmap(
            lambda u, lo, hi, a: blockwise_trace_from_uniforms(u, h, w, n, lo, hi, a),
            in_axes=(0, None, None, None)))
    return _PROPERTY_FNS[h, w, n]


@SETTINGS
@given(grid_n=st.just((6, 9, 30)), min_num=st.integers(1, 20),
       max_num=st.one_of(st.none(), st.integers(2, 40)), min_aspect=st.floats(0.2, 1.0),
       seed=st.integers(0, 2 ** 16))
def test_blockwise_properties(grid_n, min_num, max_num, min_aspect, seed):
    h, w, n = grid_n
    need = blockwise_num_uniforms(n)
    u = np.random.default_rng(seed).random((64, need)).astype(np.float32)
    max_num_r = n if max_num is None else max_num
    t = jax.device_get(_property_fn(h, w, n)(u, jnp.int32(min_num), jnp.int32(max_num_r),
                                             jnp.float32(min_aspect)))
    np.testing.assert_array_equal(t.mask.sum((1, 2)), t.count)
    assert (t.count <= n).all() and t.finished.all()
    assert (t.attempts <= 10 * (n + 1)).all() and (t.used <= need).all()
    for i in range(64):
        nb = int(t.num_blocks[i])
        hw, new = t.block_hw[i, :nb], t.block_new[i, :nb]
        assert new.sum() == t.count[i] and (new >= 1).all() and (new <= max_num_r).all()
        assert (hw[:, 0] < h).all() and (hw[:, 1] < w).all()
        # h = round(sqrt(area ar)), w = round(sqrt(area / ar)) with ar in [min_aspect, 1/min_aspect]
        bh, bw = hw[:, 0].astype(float), hw[:, 1].astype(float)
        assert ((bh - 0.5) / (bw + 0.5) <= 1 / min_aspect + 1e-6).all()
        assert ((bh + 0.5) / np.maximum(bw - 0.5, 1e-9) >= min_aspect - 1e-6).all()
        assert ((bh - 0.5) * (bw - 0.5) <= max(min_num, max_num_r) + 1e-6).all()
        if t.count[i] < n:  # a shortfall only after a call's 10 attempts all failed
            assert t.attempts[i] >= 10


def test_maskfeat_parameters_and_masks():
    # spec 4(a): round(14*14*0.4) = 78 masked at most, min_num_patches = 78 // 5 = 15, max None -> 78.
    p = maskfeat_block_params(14, 14)
    assert (p["num_masking_patches"], p["min_num_patches"], p["max_num_patches"]) == (78, 15, None)
    assert maskfeat_block_params(5, 5, 0.5)["num_masking_patches"] == round(12.5)  # Python's round
    need = blockwise_num_uniforms(78)

    @jax.jit
    def draw(keys):
        masks = jax.vmap(lambda k: maskfeat_mask(k, 14, 14))(keys)
        # The generic masking.kind signature, vmapped over per-example keys, is the uniform
        # stream uniform(key, (need,)) fed to the loop.
        as_kind = jax.vmap(blockwise_mask, in_axes=(0,) + (None,) * 7)(
            keys[:8], 14, 14, 78, 15, None, 0.3, None)
        streams = jax.vmap(lambda k: blockwise_trace_from_uniforms(
            jax.random.uniform(k, (need,)), 14, 14, 78, 15).mask)(keys[:8])
        return masks, as_kind, streams

    masks, as_kind, streams = jax.device_get(draw(_keys(8, 256)))
    counts = masks.sum((1, 2))
    assert counts.max() <= 78 and counts.mean() > 70 and (counts < 78).any()
    np.testing.assert_array_equal(masks[:8], streams)
    np.testing.assert_array_equal(as_kind, streams)


# --------------------------------------------------------------------------------------------
# ColorMAE (spec 9(a))


def test_color_gains_have_their_shapes():
    size = 64
    radial = {c: ref.radial_average(color_gain(c, size)) for c in COLORS}
    narrow, wide = 0.7, 1.4  # DEFAULT_SIGMAS, documented in the module
    np.testing.assert_allclose(color_gain("red", size), ref.ref_gaussian_gain(size, wide), atol=1e-6)
    np.testing.assert_allclose(color_gain("blue", size), 1 - ref.ref_gaussian_gain(size, narrow), atol=1e-6)
    dog = ref.ref_gaussian_gain(size, narrow) - ref.ref_gaussian_gain(size, wide)
    np.testing.assert_allclose(color_gain("green", size), dog / dog.max(), atol=2e-3)
    np.testing.assert_allclose(color_gain("purple", size), 1 - color_gain("green", size), atol=1e-6)
    assert np.all(np.diff(radial["red"]) < 0) and np.all(np.diff(radial["blue"]) > 0)
    peak = int(np.argmax(radial["green"]))
    assert 0 < peak < size // 2 and int(np.argmin(radial["purple"])) == peak
    assert color_gain("green", size).max() == pytest.approx(1.0, abs=2e-3)  # unit peak: a true notch
    with pytest.raises(ValueError, match="colour"):
        color_gain("pink", size)


@pytest.mark.parametrize("color", COLORS)
def test_color_power_spectrum_follows_gain(color):
    size, n = 32, 512
    white = np.random.default_rng(9).standard_normal((n, size, size)).astype(np.float32)
    fields = np.asarray(jax.jit(filter_white_noise, static_argnums=1)(white, color), np.float64)
    measured = ref.radial_power(fields)
    # E|FFT(filtered white noise)|^2 = S^2 |gain|^2 exactly.
    designed = ref.radial_average(size ** 2 * color_gain(color, size).astype(np.float64) ** 2)
    big = designed > 0.05 * designed.max()
    np.testing.assert_allclose(measured[big], designed[big], rtol=0.15)
    assert (measured[~big] < 0.1 * designed.max()).all()
    # Power: the spectrum does not fit another colour's gain.
    other = COLORS[(COLORS.index(color) + 1) % 4]
    wrong = ref.radial_average(size ** 2 * color_gain(other, size).astype(np.float64) ** 2)
    assert np.abs(measured - wrong).max() > 0.3 * designed.max()


def test_color_filter_crop_and_topk_match_numpy():
    rng = np.random.default_rng(10)
    white = rng.standard_normal((6, 32, 32)).astype(np.float32)
    for color in COLORS:
        got = np.asarray(jax.jit(filter_white_noise, static_argnums=1)(white, color))
        gain = color_gain(color, 32).astype(np.float64)
        expected = np.fft.ifft2(np.fft.fft2(white.astype(np.float64)) * gain).real
        np.testing.assert_allclose(got, expected, atol=1e-4)
    pattern = np.asarray(jax.jit(filter_white_noise, static_argnums=1)(white, "green"))
    window_fn = jax.jit(lambda p, u: crop_flip_normalize(p, u, (14, 14)))
    topk_fn = jax.jit(lambda w: mask_from_patterns(w, 0.75))
    # Both crop-range ends (u = 0 and u -> 1) and every flip combination.
    for u in [(0.0, 0.0, 0.1, 0.9), (0.999999, 0.5, 0.7, 0.2), (0.3, 0.999999, 0.2, 0.3),
              (0.6, 0.1, 0.8, 0.8)]:
        win = np.asarray(window_fn(pattern, np.asarray(u, np.float32)))
        s = ref.UniformStream(np.asarray(u, np.float32))
        top, left = s.randint_exclusive(0, 32 - 14 + 1), s.randint_exclusive(0, 32 - 14 + 1)
        hflip, vflip = s.random() < 0.5, s.random() < 0.5
        for i in range(6):
            np.testing.assert_allclose(win[i], ref.ref_color_window(pattern[i], top, left, 14, hflip, vflip),
                                       rtol=1e-6, atol=1e-6)
        m = topk_fn(win)
        for i in range(6):
            ids_keep, hidden = ref.ref_color_keep(win[i], 0.75)
            np.testing.assert_array_equal(np.asarray(m.ids_keep[i]), ids_keep)
            np.testing.assert_array_equal(np.asarray(m.mask[i]), hidden)


def test_color_noise_mask_properties():
    keys = _keys(11, 256)
    m, win, stack = jax.device_get(jax.jit(lambda k: (
        color_noise_mask(k, 14, 14, 0.75, "green"), color_noise_windows(k, 14, 14, "green"),
        color_noise_patterns(k[0], 4, "blue", 16)))(keys))
    assert stack.shape == (4, 16, 16)  # the npz-like stack
    np.testing.assert_allclose(stack.sum((1, 2)), 0.0, atol=1e-3)  # high-pass: no DC component
    assert m.ids_keep.shape == (256, 49) and (m.mask.sum(1) == 147).all()  # int(196*0.25) visible
    win = win.reshape(256, -1)
    np.testing.assert_allclose(win.max(1), 1.0, rtol=1e-6)  # NormalizeBySliceMax
    visible_min = np.where(m.mask, np.inf, win).min(1)
    hidden_max = np.where(m.mask, win, -np.inf).max(1)
    assert (visible_min > hidden_max).all()  # the largest values are the visible ones
    # Every position is visible equally often (the field is stationary, crops and flips uniform).
    assert ref.fixed_count_uniformity_p((~m.mask).sum(0), 256, 49) > PASS


# --------------------------------------------------------------------------------------------
# HPM (spec 10(a))


def test_hpm_schedule():
    assert hpm_alpha(0, 200) == pytest.approx(1 / 200 * 0.5)
    assert hpm_alpha(199, 200) == pytest.approx(0.5)
    for total in (3, 7, 200, 800):
        table = hpm_num_hard_table(196, 0.75, total)
        expected = [ref.ref_hpm_num_hard(196, 0.75, e, total) for e in range(total)]
        np.testing.assert_array_equal(table, expected)
        assert np.all(np.diff(table) >= 0) and table[-1] == int(147 * 0.5)
        assert int(jax.jit(lambda e: hpm_num_hard(e, 196, 0.75, total))(jnp.int32(total - 1))) == table[-1]


_hpm_from_noise = jax.jit(hpm_mask_from_noise, static_argnums=2)  # num_hard traced: one compile per L


@SETTINGS
@given(length=st.sampled_from([16, 196]), frac=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_hpm_matches_official(length, frac, seed):
    rng = np.random.default_rng(seed)
    masked = length - int(length * 0.25)
    num_hard = int(frac * masked)
    loss = rng.standard_normal((1, length)).astype(np.float32)
    noise = rng.random((1, length)).astype(np.float32)
    m = _hpm_from_noise(loss, noise, 0.75, num_hard)
    expected = ref.ref_hpm_mask(loss[0], noise[0], 0.75, num_hard)
    np.testing.assert_array_equal(np.asarray(m.mask[0]), expected.astype(bool))
    assert set(np.asarray(m.ids_keep[0]).tolist()) == set(np.flatnonzero(expected == 0).tolist())


def test_hpm_hard_patches_and_random_rest():
    n, length = 6000, 196
    loss = jnp.asarray(np.random.default_rng(12).standard_normal(length), jnp.float32)
    losses = jnp.broadcast_to(loss, (n, length))
    epoch = 79  # of 200: alpha = 0.2, int(147 * 0.2) = 29 hard patches
    num_hard = int(hpm_num_hard(epoch, length, 0.75, 200))
    assert num_hard == 29
    m = jax.jit(lambda k, x: hpm_mask(k, x, 0.75, epoch, 200))(_keys(13, n), losses)
    hidden = np.asarray(m.mask)
    assert (hidden.sum(1) == 147).all()
    hard = np.argsort(-np.asarray(loss))[:num_hard]
    assert hidden[:, hard].all()
    rest = np.setdiff1d(np.arange(length), hard)
    assert ref.fixed_count_uniformity_p(hidden[:, rest].sum(0), n, 147 - num_hard) > PASS
    # Power: the statistic sees a masker that slightly favours higher predicted loss among the rest.
    noise = np.random.default_rng(14).random((n, length)).astype(np.float32)
    tilt = jax.jit(lambda x, z: hpm_mask_from_noise(x, z ** jnp.exp(0.02 * x), 0.75, num_hard))
    tilted = tilt(losses, noise)
    assert ref.fixed_count_uniformity_p(np.asarray(tilted.mask)[:, rest].sum(0), n, 147 - num_hard) < REJECT


# --------------------------------------------------------------------------------------------
# CrossMAE (spec 11(a))


def test_crossmae_counts():
    assert crossmae_counts(196, 0.75, 0.75) == (49, 0, 147)   # defaults: 147 reconstructed
    assert crossmae_counts(196, 0.75, 0.25) == (49, 98, 49)   # ViT-H / README ViT-B: 49
    with pytest.raises(ValueError, match="kept_mask_ratio"):
        crossmae_counts(196, 0.5, 0.75)
    m = crossmae_mask(_keys(15, 4), 4, 196, 0.75, 0.25)
    assert m.ids_keep.shape == (4, 49) and m.ids_recon.shape == (4, 49)


@FEW
@given(length=st.sampled_from([16, 196]), mr=st.floats(0.3, 0.9), kfrac=st.floats(0.1, 1.0),
       seed=st.integers(0, 2 ** 16))
def test_crossmae_matches_official(length, mr, kfrac, seed):
    kmr = mr * kfrac
    try:
        keep, _, num_recon = crossmae_counts(length, mr, kmr)
    except ValueError:
        return  # ratios that keep or reconstruct nothing are refused, not masked
    noise = np.random.default_rng(seed).random((3, length)).astype(np.float32)
    m = jax.device_get(crossmae_mask_from_noise(jnp.asarray(noise), mr, kmr))
    ids_keep, hidden, recon = ref.ref_crossmae(noise, mr, kmr)
    np.testing.assert_array_equal(m.ids_keep, ids_keep)
    np.testing.assert_array_equal(m.mask, hidden)
    np.testing.assert_array_equal(m.recon, recon)
    assert (m.recon <= m.mask).all() and (m.recon.sum(1) == num_recon).all()
    for i in range(3):  # queries at the reconstructed positions, ascending (masked_select order)
        np.testing.assert_array_equal(m.ids_recon[i], np.flatnonzero(recon[i]))


# --------------------------------------------------------------------------------------------
# MFM (spec 12(a))


@pytest.mark.parametrize("size,r1,r2", [(224, 16, 999), (15, 3, 6), (16, 4, 999)])
def test_mfm_base_mask_matches_official(size, r1, r2):
    np.testing.assert_array_equal(np.asarray(mfm_base_mask(size, size, r1, r2)),
                                  ref.ref_mfm_base_mask(size, r1, r2))


def test_mfm_low_high_choice_and_corruption():
    n = 4000
    low_pass = jax.jit(lambda k, r: mfm_is_low_pass(jax.vmap(
        lambda kk: mfm_freq_mask(kk, 32, 32, 4, 999, r))(k)))  # the ratio may be traced
    for ratio in (0.5, 0.3):
        low = np.asarray(low_pass(_keys(16, n), ratio)).mean()
        assert abs(low - ratio) < 4 * np.sqrt(ratio * (1 - ratio) / n)
    base = mfm_base_mask(32, 32, 4, 999)
    # The radius may be traced (drawn per sample by a caller): same mask as the static one.
    np.testing.assert_array_equal(jax.jit(lambda r: mfm_base_mask(32, 32, r, 999))(jnp.float32(4)), base)
    np.testing.assert_array_equal(mfm_mask_from_uniform(0.2, base), base)        # bernoulli -> 1: low-pass
    np.testing.assert_array_equal(mfm_mask_from_uniform(0.7, base), 1.0 - base)  # -> 0: high-pass
    images = np.random.default_rng(17).random((2, 32, 32, 3)).astype(np.float32)
    corrupt = jax.jit(mfm_corrupt)
    for mask in (base, 1.0 - base):
        got = np.asarray(corrupt(images, mask))
        for i in range(2):
            np.testing.assert_allclose(got[i], ref.ref_mfm_transform(images[i], np.asarray(mask)), atol=1e-5)
    # Power: without the fftshift the "low-pass" mask would pass the corner (high) frequencies.
    assert not np.allclose(ref.ref_mfm_transform(images[0], np.fft.ifftshift(np.asarray(base))),
                           ref.ref_mfm_transform(images[0], np.asarray(base)), atol=1e-2)


# --------------------------------------------------------------------------------------------
# I-JEPA multi-block collator (spec 13(a))

IJEPA_CONFIGS = {
    "recipe": dict(grid=(16, 16), pred_scale=(0.15, 0.2), enc_scale=(0.85, 1.0), aspect=(0.75, 1.5),
                   npred=4, nenc=1, min_keep=10),
    "code_defaults": dict(grid=(14, 14), pred_scale=(0.2, 0.8), enc_scale=(0.2, 0.8), aspect=(0.3, 3.0),
                          npred=2, nenc=2, min_keep=4),
    "fallback": dict(grid=(8, 8), pred_scale=(0.4, 0.45), enc_scale=(0.9, 1.0), aspect=(0.75, 1.5),
                     npred=4, nenc=1, min_keep=20),
}


def _ijepa_args(c):
    return (*c["grid"], c["pred_scale"], c["enc_scale"], c["aspect"], c["npred"], c["nenc"], c["min_keep"])


@pytest.mark.parametrize("name", list(IJEPA_CONFIGS))
def test_multiblock_matches_official_collator(name):
    c = IJEPA_CONFIGS[name]
    need = multiblock_num_uniforms(c["npred"], c["nenc"])
    fn = jax.jit(lambda bu, eu: multiblock_masks_from_uniforms(bu, eu, *_ijepa_args(c)))
    rng = np.random.default_rng(18)
    tries_seen = set()
    for _ in range(12):
        bu = rng.random(2).astype(np.float32)
        eu = rng.random((32, need)).astype(np.float32)
        out = jax.device_get(fn(bu, eu))
        collator = ref.RefMaskCollator(c["grid"], c["enc_scale"], c["pred_scale"], c["aspect"],
                                       c["nenc"], c["npred"], c["min_keep"])
        enc, pred, p_size, e_size = collator(32, ref.UniformStream(bu), [ref.UniformStream(x) for x in eu])
        assert (tuple(out.pred_size), tuple(out.enc_size)) == (p_size, e_size)
        assert (int(out.enc_len), int(out.pred_len)) == (enc.shape[-1], pred.shape[-1])
        np.testing.assert_array_equal(out.enc_ids[..., :out.enc_len], enc)
        np.testing.assert_array_equal(out.pred_ids[..., :out.pred_len], pred)
        np.testing.assert_array_equal(out.enc_fallbacks, collator.fallbacks)
        tries_seen |= set(np.unique(out.enc_fallbacks).tolist())
    if name == "fallback":
        assert len(tries_seen - {0}) >= 2  # several levels of dropped constraints were reached


def test_multiblock_block_size_single_uniform():
    u = np.random.default_rng(19).random(20000).astype(np.float32)
    collator = ref.RefMaskCollator((16, 16))
    for scale, aspect in (((0.15, 0.2), (0.75, 1.5)), ((0.85, 1.0), (1.0, 1.0)), ((0.2, 0.8), (0.3, 3.0))):
        got = np.asarray(jax.vmap(lambda x: multiblock_block_size(x, 16, 16, scale, aspect))(u))
        stream = ref.UniformStream(u)
        expected = np.array([collator._sample_block_size(stream, scale, aspect) for _ in u])
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="retry forever"):
        check_multiblock(8, 8, (0.3, 0.35), (0.9, 1.0), (0.75, 1.5), min_keep=20)


def test_multiblock_properties():
    c = IJEPA_CONFIGS["recipe"]
    h_grid, w_grid = c["grid"]
    fn = jax.jit(lambda bk, k: multiblock_masks(bk, k, *_ijepa_args(c)))
    out = jax.device_get(fn(jax.random.key(20), _keys(21, 512)))
    ph, pw = (int(v) for v in out.pred_size)
    assert int(out.pred_len) == ph * pw and (out.pred_mask.sum(-1) == ph * pw).all()
    grid = out.pred_mask.reshape(512, 4, h_grid, w_grid)
    rows, cols = grid.any(-1), grid.any(-2)
    assert (rows.sum(-1) == ph).all() and (cols.sum(-1) == pw).all()  # h x w rectangles
    tops = rows.argmax(-1).reshape(-1)
    # torch.randint(0, H - h): offsets 0 .. H-h-1 uniformly, never H - h.
    assert tops.max() == h_grid - ph - 1
    counts = np.bincount(tops, minlength=h_grid - ph)
    assert ref.chi2_gof_uniform_p(counts) > PASS
    # Power: against randint(0, H - h + 1) (the last offset included) these counts are rejected.
    assert ref.chi2_gof_uniform_p(np.append(counts, 0)) < REJECT
    enc_len = int(out.enc_len)
    assert enc_len > c["min_keep"] and (out.enc_mask.sum(-1) == enc_len).all()
    clean = out.enc_fallbacks[:, 0] == 0
    assert clean.mean() > 0.9
    overlap = (out.enc_mask[:, 0, None, :] & out.pred_mask).any((1, 2))
    assert not overlap[clean].any()  # the context avoids every predictor block
    for i in range(0, 512, 51):  # ids: kept ones first, ascending, then the rest, ascending
        np.testing.assert_array_equal(out.enc_ids[i, 0, :enc_len], np.flatnonzero(out.enc_mask[i, 0]))
        np.testing.assert_array_equal(np.sort(out.enc_ids[i, 0]), np.arange(h_grid * w_grid))
        assert np.all(np.diff(out.enc_ids[i, 0, enc_len:]) > 0)
    sizes = {tuple(np.asarray(fn(jax.random.key(s), _keys(21, 512)).pred_size)) for s in range(4)}
    assert len(sizes) > 1  # the block size is drawn per batch
