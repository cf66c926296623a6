"""Mixup / CutMix (timm Mixup, batch mode) with label smoothing, and the soft cross-entropy.

Every check runs through a handful of jitted programs of one shape: CPU compilation (the
gamma sampler especially) dominates the run time, not the arithmetic.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskjax.eval import mixup as mx

B, H, W, C, N = 6, 12, 10, 3, 5
LABELS = np.array([0, 1, 2, 3, 4, 1], np.int32)


def _batch(seed=0):
    images = np.random.default_rng(seed).normal(size=(B, H, W, C)).astype(np.float32)
    return jnp.asarray(images), jnp.asarray(LABELS)


_jit_mix = jax.jit(lambda key, x, y, smoothing, prob: mx.mixup_cutmix(
    key, x, y, N, label_smoothing=smoothing, prob=prob, return_params=True))


def _mix(key, x, y, smoothing=0.1, prob=1.0):
    # prob and label_smoothing are passed as traced arrays, so every call shares one compilation.
    return _jit_mix(key, x, y, jnp.float32(smoothing), jnp.float32(prob))

# All mix_params hyper-parameters are traced: one compilation for every configuration.
_params = jax.jit(jax.vmap(lambda k, prob, mixup_alpha, cutmix_alpha: mx.mix_params(
    k, H, W, prob=prob, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha), in_axes=(0, None, None, None)))


def _draws(keys, prob=1.0, mixup_alpha=0.8, cutmix_alpha=1.0):
    args = (jnp.float32(prob), jnp.float32(mixup_alpha), jnp.float32(cutmix_alpha))
    return jax.tree.map(np.asarray, _params(keys, *args))


def _first(params):
    return {k: v[0] for k, v in params.items()}


def test_smoothing_values_exact():
    y = mx.smooth_one_hot(jnp.array([2, 0]), 4, 0.1)
    off, on = 0.1 / 4, 1 - 0.1 + 0.1 / 4
    np.testing.assert_allclose(y, [[off, off, on, off], [on, off, off, off]], rtol=1e-6)
    # Hand case: row 0 (label 0) is mixed with row 5 (label 1), row 2 (label 2) with row 3 (label 3).
    off, on = 0.1 / N, 1 - 0.1 + 0.1 / N
    images, labels = _batch()
    for key in range(5):
        _, targets, params = _mix(jax.random.key(key), images, labels)
        lam = float(params["lam"][0])
        np.testing.assert_allclose(targets[0], [lam * on + (1 - lam) * off, (1 - lam) * on + lam * off,
                                                off, off, off], rtol=1e-5)
        np.testing.assert_allclose(targets[2], [off, off, lam * on + (1 - lam) * off,
                                                (1 - lam) * on + lam * off, off], rtol=1e-5)


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
    x, flipped = np.asarray(images), np.asarray(images)[::-1]
    seen = set()
    for key in range(30):
        out, targets, params = _mix(jax.random.key(key), images, labels, 0.0)
        p = _first(params)
        lam = float(p["lam"])
        out = np.asarray(out)
        onehot = np.eye(N)[LABELS]
        np.testing.assert_allclose(targets, lam * onehot + (1 - lam) * onehot[::-1], atol=1e-6)
        if bool(p["use_cutmix"]):
            seen.add("cut")
            yl, yh, xl, xh = (int(p[k]) for k in ("yl", "yh", "xl", "xh"))
            assert 0 <= yl <= yh <= H and 0 <= xl <= xh <= W
            inside = np.zeros((H, W), bool)
            inside[yl:yh, xl:xh] = True
            np.testing.assert_array_equal(out[:, inside], flipped[:, inside])
            np.testing.assert_array_equal(out[:, ~inside], x[:, ~inside])
            # lam is corrected to the actual (clipped) box: the pasted fraction is 1 - lam.
            assert inside.mean() == pytest.approx(1 - lam, abs=1e-6)
            np.testing.assert_array_equal(np.asarray(mx.box_mask(p, H, W)), inside)
        else:
            seen.add("mix")
            np.testing.assert_allclose(out, lam * x + (1 - lam) * flipped, rtol=1e-5, atol=1e-6)
    assert seen == {"cut", "mix"}


def test_switch_probability_lam_distribution_and_prob():
    keys = jax.random.split(jax.random.key(0), 2000)
    params = _draws(keys)
    sd = 5 * math.sqrt(0.25 / 2000)
    assert abs(params["use_cutmix"].mean() - 0.5) < sd
    assert params["applied"].all()
    # Mixup lam ~ Beta(0.8, 0.8): mean 1/2, variance 1 / (4 * 2.6).
    lam_mix = params["lam"][~params["use_cutmix"]]
    assert abs(lam_mix.mean() - 0.5) < 0.04 and abs(lam_mix.var() - 1 / 10.4) < 0.02
    assert (lam_mix < 0.1).mean() > 0.1  # U-shaped: plenty of mass near the ends
    # CutMix boxes follow timm rand_bbox: the box side is int(side * sqrt(1 - lam)) before clipping,
    # so the corrected lam is at least the drawn one; over draws it averages above 1/2.
    cut = params["use_cutmix"]
    area = (params["yh"] - params["yl"]) * (params["xh"] - params["xl"])
    np.testing.assert_allclose(params["lam"][cut], 1 - area[cut] / (H * W), atol=1e-6)
    assert params["lam"][cut].mean() > 0.5
    half = _draws(keys, prob=0.5)
    assert abs(half["applied"].mean() - 0.5) < sd
    assert (half["lam"][~half["applied"]] == 1.0).all()
    assert not half["use_cutmix"][~half["applied"]].any()


def test_single_method_configs():
    keys = jax.random.split(jax.random.key(1), 2000)  # the same shape as above: no recompilation
    only_cut = _draws(keys, mixup_alpha=0.0, cutmix_alpha=1.0)
    only_mix = _draws(keys, mixup_alpha=0.8, cutmix_alpha=0.0)
    assert only_cut["use_cutmix"].all() and not only_mix["use_cutmix"].any()
    # Mixup lam ~ Beta(0.8, 0.8) has mean 1/2; CutMix's U(0, 1) draw only shrinks boxes
    # (even sides, clipping), so the corrected lam averages above 1/2.
    assert 0.45 < only_mix["lam"].mean() < 0.55 and only_cut["lam"].mean() > 0.5
    with pytest.raises(ValueError):
        mx.mix_params(jax.random.key(0), H, W, mixup_alpha=0.0, cutmix_alpha=0.0)


def test_not_applied_is_identity_with_smoothed_targets():
    images, labels = _batch(2)
    out, targets, _ = _mix(jax.random.key(0), images, labels, 0.1, 0.0)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_allclose(targets, mx.smooth_one_hot(labels, N, 0.1), rtol=1e-6)


def test_groups_mix_within_each_group():
    images, labels = _batch(3)
    x = np.asarray(images)
    fn = jax.jit(lambda k, x, y: mx.mixup_cutmix(k, x, y, N, label_smoothing=0.0, groups=3,
                                                 return_params=True))
    for key in range(4):
        out, targets, params = fn(jax.random.key(key), images, labels)
        assert params["lam"].shape == (3,)
        out = np.asarray(out)
        onehot = np.eye(N)[LABELS]
        for g in range(3):  # rows 2g and 2g+1 are mixed only with each other, with the group's lam
            a, b = 2 * g, 2 * g + 1
            lam = float(params["lam"][g])
            np.testing.assert_allclose(targets[a], lam * onehot[a] + (1 - lam) * onehot[b], atol=1e-6)
            if not bool(params["use_cutmix"][g]):
                np.testing.assert_allclose(out[a], lam * x[a] + (1 - lam) * x[b], rtol=1e-5, atol=1e-6)
            else:
                assert np.isin(out[a], np.concatenate([x[a], x[b]])).all()
    with pytest.raises(ValueError):
        mx.mixup_cutmix(jax.random.key(0), images[:5], labels[:5], N)  # odd batch
    with pytest.raises(ValueError):
        mx.mixup_cutmix(jax.random.key(0), images, labels, N, groups=2)  # groups of 3


def test_soft_cross_entropy():
    logits = np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    targets = np.array([[0.2, 0.7, 0.1], [0.0, 0.0, 1.0]], np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per = -(targets * logp).sum(-1)
    np.testing.assert_allclose(mx.soft_cross_entropy(logits, targets, reduction="none"), per, rtol=1e-6)
    np.testing.assert_allclose(mx.soft_cross_entropy(logits, targets), per.mean(), rtol=1e-6)
    # One-hot targets reduce to the usual cross-entropy.
    assert float(mx.soft_cross_entropy(logits[1:], targets[1:])) == pytest.approx(math.log(3), rel=1e-6)
    with pytest.raises(ValueError):
        mx.soft_cross_entropy(logits, targets, reduction="sum")
