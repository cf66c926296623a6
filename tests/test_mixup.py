"""Mixup / CutMix (timm Mixup, batch mode) with label smoothing, and the soft cross-entropy."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskjax.eval import mixup as mx

B, H, W, C, N = 6, 12, 10, 3, 5


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(B, H, W, C)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, N, B), jnp.int32)
    return images, labels


@functools.partial(jax.jit, static_argnames=("num_classes", "label_smoothing", "prob", "groups"))
def _mix(key, images, labels, num_classes=N, label_smoothing=0.1, prob=1.0, groups=1):
    # One compiled program per configuration keeps the test fast (eager dispatch is slow).
    return mx.mixup_cutmix(key, images, labels, num_classes, label_smoothing=label_smoothing,
                           prob=prob, groups=groups, return_params=True)


def _first(params):
    return {k: v[0] for k, v in params.items()}


def test_smoothing_values_exact():
    y = mx.smooth_one_hot(jnp.array([2, 0]), 4, 0.1)
    off, on = 0.1 / 4, 1 - 0.1 + 0.1 / 4
    np.testing.assert_allclose(y, [[off, off, on, off], [on, off, off, off]], rtol=1e-6)
    # Hand case: labels (0, 1), lam 0.7 -> row 0 = 0.7 * y(0) + 0.3 * y(1) (the flip of row 0 is row 1).
    images = jnp.zeros((2, 4, 4, 1))
    for key in range(20):
        _, targets, params = _mix(jax.random.key(key), images, jnp.array([0, 1]), num_classes=4)
        lam = float(params["lam"][0])
        expected0 = lam * np.array([on, off, off, off]) + (1 - lam) * np.array([off, on, off, off])
        np.testing.assert_allclose(targets[0], expected0, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(targets[1], expected0[[1, 0, 2, 3]], rtol=1e-5, atol=1e-7)


def test_targets_sum_to_one_and_lam_in_range():
    images, labels = _batch()
    for key in range(10):
        out, targets, params = _mix(jax.random.key(key), images, labels)
        assert out.shape == images.shape and out.dtype == images.dtype
        assert targets.shape == (B, N) and targets.dtype == jnp.float32
        np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)
        assert 0.0 <= float(params["lam"][0]) <= 1.0


def test_mixup_blend_and_cutmix_box():
    images, labels = _batch(1)
    flipped = np.asarray(images)[::-1]
    seen = set()
    for key in range(30):
        k = jax.random.key(key)
        out, targets, params = _mix(k, images, labels, label_smoothing=0.0)
        p = _first(params)
        lam = float(p["lam"])
        out = np.asarray(out)
        np.testing.assert_allclose(targets, lam * jax.nn.one_hot(labels, N)
                                   + (1 - lam) * jax.nn.one_hot(labels[::-1], N), atol=1e-6)
        if bool(p["use_cutmix"]):
            seen.add("cut")
            inside = np.zeros((H, W), bool)
            inside[int(p["yl"]):int(p["yh"]), int(p["xl"]):int(p["xh"])] = True
            np.testing.assert_array_equal(out[:, inside], flipped[:, inside])
            np.testing.assert_array_equal(out[:, ~inside], np.asarray(images)[:, ~inside])
            # lam is corrected to the actual (clipped) box: the pasted fraction is 1 - lam.
            assert inside.mean() == pytest.approx(1 - lam, abs=1e-6)
            np.testing.assert_array_equal(np.asarray(mx.box_mask(p, H, W)), inside)
        else:
            seen.add("mix")
            np.testing.assert_allclose(out, lam * np.asarray(images) + (1 - lam) * flipped, rtol=1e-5, atol=1e-6)
    assert seen == {"cut", "mix"}


def test_rand_bbox_matches_timm_formula():
    # timm rand_bbox: cut = int(side * sqrt(1 - lam)), centre c, box [c - cut//2, c + cut//2) clipped.
    for key in range(40):
        p = mx.mix_params(jax.random.key(key), H, W, mixup_alpha=0.0, cutmix_alpha=1.0)
        assert bool(p["use_cutmix"])
        yl, yh, xl, xh = (int(p[k]) for k in ("yl", "yh", "xl", "xh"))
        assert 0 <= yl <= yh <= H and 0 <= xl <= xh <= W
        assert float(p["lam"]) == pytest.approx(1 - (yh - yl) * (xh - xl) / (H * W), abs=1e-6)


def test_switch_probability_and_prob():
    keys = jax.random.split(jax.random.key(0), 2000)
    params = jax.vmap(lambda k: mx.mix_params(k, H, W))(keys)
    frac = float(params["use_cutmix"].mean())
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / 2000)
    assert bool(params["applied"].all())
    # Mixup lam ~ Beta(0.8, 0.8): mean 1/2, variance 1/(4 * 2.6).
    lam_mix = np.asarray(params["lam"])[~np.asarray(params["use_cutmix"])]
    assert abs(lam_mix.mean() - 0.5) < 0.04 and abs(lam_mix.var() - 1 / 10.4) < 0.02
    half = jax.vmap(lambda k: mx.mix_params(k, H, W, prob=0.5))(keys)
    assert abs(float(half["applied"].mean()) - 0.5) < 5 * math.sqrt(0.25 / 2000)
    assert bool((half["lam"][~half["applied"]] == 1.0).all())
    assert not bool(half["use_cutmix"][~half["applied"]].any())
    only_mix = jax.vmap(lambda k: mx.mix_params(k, H, W, cutmix_alpha=0.0))(keys[:50])
    assert not bool(only_mix["use_cutmix"].any())
    with pytest.raises(ValueError):
        mx.mix_params(keys[0], H, W, mixup_alpha=0.0, cutmix_alpha=0.0)


def test_not_applied_is_identity_with_smoothed_targets():
    images, labels = _batch(2)
    out, targets, _ = _mix(jax.random.key(0), images, labels, prob=0.0)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_allclose(targets, mx.smooth_one_hot(labels, N, 0.1), rtol=1e-6)


def test_jit_groups_and_validation():
    images, labels = _batch(3)
    # Eager and jitted calls agree (up to float fusion differences).
    out, targets = mx.mixup_cutmix(jax.random.key(4), images, labels, N)
    ref_out, ref_targets, _ = _mix(jax.random.key(4), images, labels)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(targets, ref_targets, rtol=1e-6, atol=1e-6)
    # groups=3: each pair of images is mixed within itself with its own draw (vmapped keys).
    out, targets, params = _mix(jax.random.key(5), images, labels, groups=3)
    assert params["lam"].shape == (3,)
    keys = jax.random.split(jax.random.key(5), 3)
    pair = jax.jit(jax.vmap(lambda k, x, y: mx.mixup_cutmix(k, x, y, N)))
    o, t = pair(keys, images.reshape(3, 2, H, W, C), labels.reshape(3, 2))
    np.testing.assert_allclose(out, o.reshape(images.shape), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(targets, t.reshape(B, N), rtol=1e-6, atol=1e-6)
    for g in range(3):  # the rows of each group are only mixed with each other
        lam = float(params["lam"][g])
        if not bool(params["use_cutmix"][g]):
            np.testing.assert_allclose(out[2 * g], lam * images[2 * g] + (1 - lam) * images[2 * g + 1],
                                       rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        mx.mixup_cutmix(jax.random.key(0), images[:5], labels[:5], N)  # odd batch
    with pytest.raises(ValueError):
        mx.mixup_cutmix(jax.random.key(0), images, labels, N, groups=2)  # groups of 3


def test_soft_cross_entropy():
    logits = jnp.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    targets = jnp.array([[0.2, 0.7, 0.1], [0.0, 0.0, 1.0]])
    logp = np.log(np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True))
    per = -(np.asarray(targets) * logp).sum(-1)
    np.testing.assert_allclose(mx.soft_cross_entropy(logits, targets, reduction="none"), per, rtol=1e-6)
    np.testing.assert_allclose(mx.soft_cross_entropy(logits, targets), per.mean(), rtol=1e-6)
    # One-hot targets reduce to the usual cross-entropy.
    assert float(mx.soft_cross_entropy(logits[1:], targets[1:])) == pytest.approx(math.log(3), rel=1e-6)
