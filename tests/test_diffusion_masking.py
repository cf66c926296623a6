"""Masked-diffusion schedules, time sampling and the forward process (specs/methods_text_gen.md 11-13).

The ELBOs built on them are checked against exact likelihoods in test_diffusion_elbo.py.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskjax.masking import diffusion as md

V = 3
MASK = V

_bernoulli = jax.jit(md.bernoulli_hidden, static_argnames="length")
_count = jax.jit(md.count_hidden, static_argnames="length")


def _keys(n, seed=0):
    """[n] typed keys from numpy bits: splitting a key with jax compiles a program per n, and on
    CPU compiling random-number programs costs more than most of these tests."""
    bits = np.random.default_rng(seed).integers(0, 2 ** 32, (n, 2), dtype=np.uint32)
    return jax.random.wrap_key_data(bits)


# ------------------------------------------------------------------------------------------
# Schedules.


@pytest.mark.parametrize("kind", md.MDLM_SCHEDULES)
def test_mdlm_schedules_rate_and_weight(kind):
    @jax.jit
    def compute(t):
        return (md.mdlm_noise(t, kind)[1], jax.vmap(jax.grad(lambda s: md.mdlm_noise(s, kind)[0]))(t),
                md.mdlm_alpha(t, kind), jax.vmap(jax.grad(lambda s: md.mdlm_alpha(s, kind)))(t),
                md.mdlm_loss_weight(t, kind), md.mdlm_mask_prob(t, kind))

    dsigma, auto, alpha, dalpha, weight, mask_prob = compute(jnp.linspace(0.05, 0.95, 7))
    np.testing.assert_allclose(dsigma, auto, rtol=2e-4)
    np.testing.assert_allclose(weight, -dalpha / (1 - alpha), rtol=2e-4)
    np.testing.assert_allclose(mask_prob, 1 - alpha, rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(alpha) < 0)


def test_mdlm_loglinear_is_the_spec():
    t = jnp.linspace(0.001, 1.0, 11)
    eps = md.MDLM_EPS
    np.testing.assert_allclose(md.mdlm_mask_prob(t), (1 - eps) * t, rtol=1e-5)
    np.testing.assert_allclose(md.mdlm_noise(t)[1], (1 - eps) / (1 - (1 - eps) * t), rtol=1e-5)
    np.testing.assert_allclose(md.mdlm_loss_weight(t), 1 / t, rtol=1e-4)   # 1/t whatever eps (spec 11c)
    inner = t[:-1]   # with eps = 0, sigma(1) = inf and the weight is inf / inf there
    np.testing.assert_allclose(md.mdlm_loss_weight(inner, eps=0.0), 1 / inner, rtol=1e-4)
    for kind in ("loglinear", "cosine", "cosinesqr"):
        assert float(md.mdlm_alpha(0.0, kind)) == pytest.approx(1.0, abs=1e-6)
        assert float(md.mdlm_alpha(1.0, kind)) == pytest.approx(eps, rel=1e-3)
    with pytest.raises(ValueError, match="unknown MDLM"):
        md.mdlm_noise(t, "sqrt")


@pytest.mark.parametrize("kind", ["linear", "cosine", "poly2", "poly0.5"])
def test_md4_schedules(kind):
    eps = md.MD4_EPS
    assert float(md.md4_alpha(0.0, kind)) == pytest.approx(1 - eps, abs=1e-7)
    assert float(md.md4_alpha(1.0, kind)) == pytest.approx(eps, abs=1e-7)
    steps = 8

    @jax.jit
    def compute(t):
        tg = md.discretize_time(t, steps)
        return (jax.vmap(jax.grad(lambda s: md.md4_alpha(s, kind)))(t), md.md4_dalpha(t, kind),
                md.md4_alpha(t, kind),
                md.md4_dgamma_times_alpha(t, kind), md.md4_logsnr(t, kind), md.md4_alpha(tg, kind),
                md.md4_alpha(tg - 1 / steps, kind), md.md4_discrete_weight(tg, steps, kind))

    auto, dalpha, a, dgamma, logsnr, a_t, a_s, discrete = compute(jnp.linspace(0.05, 0.95, 7))
    np.testing.assert_allclose(dalpha, auto, rtol=1e-4)
    np.testing.assert_allclose(dgamma, auto / (1 - a), rtol=1e-4)
    np.testing.assert_allclose(logsnr, np.log(a / (1 - a)), rtol=1e-5)
    np.testing.assert_allclose(discrete, steps * (a_t - a_s) / (1 - a_t), rtol=1e-4)


def test_md4_schedule_formulas_and_eps0_endpoints():
    t = jnp.asarray([0.25, 0.5])
    np.testing.assert_allclose(md.md4_alpha(t, "cosine", eps=0.0), 1 - np.cos(np.pi / 2 * (1 - t)), rtol=1e-6)
    np.testing.assert_allclose(md.md4_alpha(t, "poly3", eps=0.0), 1 - t ** 3, rtol=1e-6)
    np.testing.assert_allclose(md.md4_dgamma_times_alpha(t, "linear", eps=0.0), -1 / t, rtol=1e-6)
    # The logSNR form of the discrete weight is finite at the grid ends even with eps = 0.
    w = md.md4_discrete_weight(jnp.asarray([0.25, 1.0]), 4, "linear", eps=0.0)
    np.testing.assert_allclose(w, [-4.0, -4.0 * 0.25], rtol=1e-6)
    for bad in ("poly", "polyx", "poly-1", "sqrt"):
        with pytest.raises(ValueError, match="unknown MD4"):
            md.md4_alpha(t, bad)


def test_genmd4_schedule():
    w = md.genmd4_param_init(V, 1.0)
    np.testing.assert_allclose(md.genmd4_power(w), np.ones(V), rtol=1e-6)
    power = jnp.asarray([0.5, 1.0, 2.0])
    t = jnp.asarray([0.2, 0.7])
    alpha = md.genmd4_alpha(t, power)
    assert alpha.shape == (2, V)
    np.testing.assert_allclose(alpha, 1 - (1 - md.GENMD4_EPS) * np.asarray(t)[:, None] ** np.asarray(power),
                               rtol=1e-6)
    dalpha = jax.vmap(jax.jacfwd(lambda s: md.genmd4_alpha(s, power)))(t)
    np.testing.assert_allclose(md.genmd4_dgamma_times_alpha(t, power), dalpha / (1 - alpha), rtol=1e-4)
    x0 = jnp.asarray([[0, 1, 2], [2, 2, 0]])
    np.testing.assert_allclose(md.genmd4_keep_prob(x0, t, power),
                               np.take_along_axis(np.asarray(alpha), np.asarray(x0), axis=1), rtol=1e-6)
    assert float(md.genmd4_time(0.0)) == pytest.approx(md.GENMD4_T1)
    assert float(md.genmd4_time(1.0)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------
# Time sampling and the forward process.


def test_time_samplers():
    b = 16

    @jax.jit
    def draw():
        k1, k2 = _keys(2, 1)
        return {"md4": md.md4_sample_t(k1, b),
                "mdlm": [md.mdlm_sample_t(k2, b, shared_offset=shared) for shared in (False, True)],
                "md4_many": jax.vmap(lambda k: md.md4_sample_t(k, 4))(_keys(500)),
                "mdlm_iid": jax.vmap(lambda k: md.mdlm_sample_t(k, 4, antithetic=False))(_keys(100)),
                "grid": md.discretize_time(jnp.asarray([0.0, 0.124, 0.125, 0.999]), 8)}

    out = jax.tree.map(np.asarray, draw())
    t = out["md4"]
    np.testing.assert_allclose(np.diff(np.sort(t)), 1 / b, atol=1e-6)   # one shift U for the batch
    assert np.all((t >= 0) & (t < 1))
    se = md.MDLM_SAMPLING_EPS
    for shared in (False, True):
        t = out["mdlm"][int(shared)]
        u = (t - se) / (1 - se)
        np.testing.assert_array_equal(np.floor(u * b + 1e-6).astype(int), np.arange(b))   # stratum i
        jitter = u * b - np.arange(b)
        assert (np.ptp(jitter) < 1e-4) == shared   # the code: one uniform per stratum
    # Every single time is uniform: mean and variance over many batches.
    assert abs(out["md4_many"].mean() - 0.5) < 4 * math.sqrt(1 / 12 / 500)
    assert out["mdlm_iid"].min() >= se and out["mdlm_iid"].max() < 1
    np.testing.assert_allclose(out["grid"], [0.125, 0.125, 0.25, 1.0])


def test_bernoulli_masking_rates_and_keys():
    b, length = 4, 4096
    alpha = jnp.asarray([0.9, 0.5, 0.2, 0.5])
    hidden = np.asarray(_bernoulli(_keys(b), alpha, length=length))
    for i in range(b):
        p = 1 - float(alpha[i])
        assert abs(hidden[i].mean() - p) < 5 * math.sqrt(p * (1 - p) / length)
    # Per-example keys: a row's mask does not depend on its batch.
    again = np.asarray(_bernoulli(_keys(b)[2:3], alpha[2:3], length=length))
    np.testing.assert_array_equal(again[0], hidden[2])
    x0 = jnp.zeros((b, length), jnp.int32)
    zt, h = jax.jit(md.forward_sample, static_argnames="mask_id")(_keys(b), x0, alpha, mask_id=MASK)
    np.testing.assert_array_equal(np.asarray(zt) == MASK, np.asarray(h))
    with pytest.raises(ValueError, match="one key per example"):
        md.bernoulli_hidden(_keys(3), alpha, length)


def test_bernoulli_vs_count_masking():
    """Count-based masking hides exactly round(L (1 - alpha)); Bernoulli's count is binomial."""
    b, length = 64, 20
    mask_prob = jnp.full((b,), 0.35)
    counts = np.asarray(_count(_keys(b), length=length, mask_prob=mask_prob)).sum(1)
    np.testing.assert_array_equal(counts, np.full(b, 7))
    counts = np.asarray(_bernoulli(_keys(b), 1 - mask_prob, length=length)).sum(1)
    assert len(set(counts.tolist())) > 3
    assert abs(counts.mean() - 7) < 5 * math.sqrt(length * 0.35 * 0.65 / b)
    ties = np.asarray(_count(_keys(2), length=5, mask_prob=jnp.asarray([0.5, 0.7])))
    np.testing.assert_array_equal(ties.sum(1), [2, 4])   # half to even: round(2.5) = 2, round(3.5) = 4


def test_genmd4_per_token_masking():
    power = jnp.asarray([0.5, 1.0, 3.0])
    length = 6000
    x0 = jnp.tile(jnp.arange(V), (1, length // V))
    t = jnp.asarray([0.5])
    hidden = np.asarray(_bernoulli(_keys(1), md.genmd4_keep_prob(x0, t, power), length=length))[0]
    for v in range(V):
        p = (1 - md.GENMD4_EPS) * 0.5 ** float(power[v])
        rate = hidden[np.asarray(x0[0]) == v].mean()
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / (length // V))
