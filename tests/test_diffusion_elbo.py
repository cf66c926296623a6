"""Masked-diffusion objectives (MDLM, MD4, GenMD4; specs/methods_text_gen.md sections 11-13), and
every ELBO checked against the exact likelihood (schedules and masking: test_diffusion_masking.py).

The exact checks use a Markov chain over V = 3 tokens (+ mask) and N = 6 positions
(tests/markov_chain.py): all 729 sequences x 64 masks are enumerated, the exact denoiser
p(x0_n | z_t) comes from forward-backward, and the time integrals use Gauss-Legendre quadrature,
so the expected ELBOs are computed without Monte-Carlo noise. What theory says, and is tested:

* continuous time, a schedule shared by all tokens with alpha_0 = 1 and alpha_1 = 0: with the exact
  denoiser the ELBO equals -log p(x0) for EVERY sequence, whatever the schedule. Proof: with
  u = 1 - alpha_t the weight is du / u and a position is masked with probability u, so
  ELBO = sum_k int_0^1 C(N,k) u^(k-1) (1-u)^(N-k) du g_k = sum_k g_k / k, where g_k sums
  -log p(x_n | x_unmasked) over the masked n of a random k-mask; g_k / k is the k-th term of the
  chain rule in a random order, and the sum over k is -log p(x0) (any-order autoregression).
* the reference eps (MD4 alpha in [eps, 1 - eps], MDLM t in [1e-3, 1]) cut the two ends of that
  integral, which is then only within O(eps) of -log p(x0), on either side (the prior KL at t = 1
  is dropped by both codebases as "negligible"); we check the exact value of the cut integral.
* T discrete steps: the ELBO bounds -log p_T(x0) for every sequence, p_T being the T-step
  ancestral sampler with the exact denoiser (computed exactly), hence E_p[ELBO_T] >= H(p); the gap
  shrinks with T and vanishes in the limit.
* GenMD4 (per-token schedules, eps = 0): E_p[ELBO] >= H(p), with a gap from the t1 cut-off only.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskjax.masking import diffusion as md
from maskjax.objectives import diffusion as od
from tests.markov_chain import AncestralSampler, Corruptions, MarkovChain, all_masks

V, N = 3, 6
MASK = V


def _keys(n, seed=0):
    """[n] typed keys from numpy bits: splitting a key with jax compiles a program per n, and on
    CPU compiling random-number programs costs more than most of these tests."""
    bits = np.random.default_rng(seed).integers(0, 2 ** 32, (n, 2), dtype=np.uint32)
    return jax.random.wrap_key_data(bits)


def _rng(seed):
    return np.random.default_rng(seed)


def _gauss(lo, hi, n):
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (hi - lo) * x + 0.5 * (hi + lo), 0.5 * (hi - lo) * w


# ------------------------------------------------------------------------------------------
# The exact world: chain, all corruptions, exact denoiser (module-scoped: computed once).


@pytest.fixture(scope="module")
def world():
    chain = MarkovChain.random(seed=3, vocab=V, length=N)
    corr = Corruptions(chain, MASK)
    post = corr.denoiser()
    log_post = np.log(np.maximum(post, 1e-30))
    log_den_x0 = np.take_along_axis(log_post, corr.x0[..., None], axis=-1)[..., 0]
    # g(x0, M) = sum over masked n of -log p(x0_n | z): the integrand's content, [S, M].
    g = corr.per_sequence(-np.where(corr.hidden, log_den_x0, 0.0).sum(-1))
    return {"chain": chain, "corr": corr, "logits": jnp.asarray(log_post, jnp.float32),
            "logits_mdlm": jnp.asarray(np.concatenate([log_post, np.zeros_like(log_post[..., :1])], -1),
                                       jnp.float32),
            "log_den_x0": log_den_x0, "g": g, "H": chain.entropy(),
            "x0": jnp.asarray(corr.x0), "zt": jnp.asarray(corr.zt), "cache": {},
            "sampler": AncestralSampler(corr, log_den_x0)}


def _u_integral(world, lo, hi):
    """Reference per sequence [S]: int_lo^hi (1/u) E_{M ~ Bernoulli(u)^N}[g(x0, M)] du (polynomial: exact)."""
    k = world["corr"].masks.sum(-1)
    total = np.zeros(len(world["corr"].seqs))
    for u, c in zip(*_gauss(lo, hi, 8)):
        total += c / u * (world["g"] * (u ** k * (1 - u) ** (N - k))[None]).sum(1)
    return total


_md4_diff = jax.jit(od.md4_diffusion_loss, static_argnames="mask_id")
_subs = jax.jit(od.subs_log_probs, static_argnames="mask_id")
_mdlm_nll = jax.jit(od.mdlm_token_nll)
_d3pm = jax.jit(od.d3pm_token_loss, static_argnames=("num_steps", "mask_id"))
_gen_diff = jax.jit(od.genmd4_diffusion_loss, static_argnames="mask_id")


def _expect_z(world, per_corruption, mask_prob):
    """E over z_t ~ q(. | x0) of per-corruption values, per sequence [S]."""
    corr = world["corr"]
    return corr.per_sequence(np.asarray(per_corruption, np.float64) * corr.mask_weights(mask_prob)).sum(1)


def _weighted_sum(world, fn, weights, mask_probs, coefs):
    """sum_j coefs[j] E_z[fn(weight_j)] per sequence [S]: fn maps a [B] weight to [B] losses."""
    b = world["x0"].shape[0]
    total = np.zeros(len(world["corr"].seqs))
    for w, p, c in zip(np.asarray(weights), np.asarray(mask_probs), coefs):
        total += c * _expect_z(world, fn(jnp.full((b,), w, jnp.float32)), float(p))
    return total


def md4_continuous_elbo(world, kind, eps, nodes=32):
    """Per-sequence E_{t ~ U[0,1], z_t}[MD4 continuous loss] + recon, in nats [S], through the objective."""
    t, c = _gauss(0.0, 1.0, nodes)
    fn = partial(_md4_diff, world["logits"], world["x0"], world["zt"], mask_id=MASK)
    total = _weighted_sum(world, fn, md.md4_dgamma_times_alpha(t, kind, eps=eps),
                          1 - md.md4_alpha(t, kind, eps=eps), c)
    return total + float(od.md4_recon_loss(N, V, md.md4_alpha(0.0, kind, eps=eps)))


def md4_discrete_elbo(world, kind, eps, steps):
    """Per-sequence E_{t on the grid, z_t}[MD4 discrete loss] + recon [S] (cached per setting)."""
    key = ("md4_discrete", kind, eps, steps)
    if key not in world["cache"]:
        # t uniform on [0, 1) rounded up to the grid: each grid point with probability 1/T.
        t = md.discretize_time((np.arange(steps) + 0.5) / steps, steps)
        fn = partial(_md4_diff, world["logits"], world["x0"], world["zt"], mask_id=MASK)
        total = _weighted_sum(world, fn, md.md4_discrete_weight(t, steps, kind, eps=eps),
                              1 - md.md4_alpha(t, kind, eps=eps), np.full(steps, 1 / steps))
        world["cache"][key] = total + float(od.md4_recon_loss(N, V, md.md4_alpha(0.0, kind, eps=eps)))
    return world["cache"][key]


def mdlm_continuous_elbo(world, kind="loglinear", sampling_eps=md.MDLM_SAMPLING_EPS, nodes=32, **kw):
    """Per-sequence E_{t ~ U[sampling_eps, 1], z_t}[N * MDLM per-token NELBO] in nats [S] (SUBS)."""
    log_probs = _subs(world["logits_mdlm"], world["zt"], mask_id=MASK)
    t, c = _gauss(sampling_eps, 1.0, nodes)

    def fn(weight):   # N * the token mean: nats per sequence
        return _mdlm_nll(log_probs, world["x0"], weight).sum(-1)
    return _weighted_sum(world, fn, md.mdlm_loss_weight(t, kind, **kw), md.mdlm_mask_prob(t, kind, **kw),
                         c / (1.0 - sampling_eps))


def _report(label, value, reference):
    print(f"  {label}: E_p[ELBO] - E_p[NLL] = {value - reference:+.3e} nats/sequence "
          f"(ELBO {value:.6f}, NLL {reference:.6f})")


# ------------------------------------------------------------------------------------------
# Objectives: parameterisation, agreement between codebases, exact formulas.


def test_subs_parameterization():
    logits = jnp.asarray(_rng(0).normal(size=(2, 5, V + 1)) * 3, jnp.float32)
    xt = jnp.asarray([[0, MASK, 2, MASK, 1], [MASK, MASK, MASK, MASK, MASK]])
    lp = np.asarray(_subs(logits, xt, mask_id=MASK))
    masked = np.asarray(xt) == MASK
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.exp(lp[..., MASK]) == 0.0)                        # zero masking probabilities
    ref = np.asarray(logits)[..., :MASK]
    ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    np.testing.assert_allclose(lp[masked][:, :MASK], np.asarray(ref)[masked], rtol=1e-5, atol=1e-5)
    rows = lp[~masked]
    np.testing.assert_array_equal(rows[np.arange(len(rows)), np.asarray(xt)[~masked]], 0.0)  # carry-over
    assert np.all(np.sort(rows, -1)[:, :-1] <= od.NEG_INF / 2)
    # Unmasked positions add nothing to the NELBO.
    nll = np.asarray(_mdlm_nll(lp, jnp.where(xt == MASK, 1, xt), jnp.ones(2)))
    assert np.all(nll[~masked] == 0.0)


def test_mdlm_and_md4_agree_under_the_linear_schedule():
    """Same denoiser, masks and t: MDLM (loglinear, any eps) nats/token * N = MD4 (linear, eps = 0)
    nats/sequence; MD4's bits per token = MDLM's bpd. Also D3PM-with-SUBS = MD4 discrete."""
    b, steps = 8, 16

    rng = _rng(4)
    x0 = jnp.asarray(rng.integers(0, V, (b, N)), jnp.int32)
    logits = jnp.asarray(rng.normal(size=(b, N, V + 1)), jnp.float32)
    hidden = jnp.asarray(rng.random((2, b, N)))   # uniforms for two Bernoulli masks
    key_t = _keys(1, 4)[0]

    @jax.jit
    def compute():   # one program: compiling each eager op costs more than the test itself
        t = md.mdlm_sample_t(key_t, b)
        zt = md.absorb(x0, hidden[0] >= md.md4_alpha(t, "linear", eps=0.0)[:, None], MASK)
        lp = od.subs_log_probs(logits, zt, MASK)
        out = {}
        for eps in (0.0, md.MDLM_EPS):
            out[f"mdlm{eps}"] = od.mdlm_loss(od.mdlm_token_nll(lp, x0, md.mdlm_loss_weight(t, eps=eps)))
        out["md4"] = od.md4_loss(logits[..., :V], x0, zt, md.md4_dgamma_times_alpha(t, "linear", eps=0.0),
                                 mask_id=MASK, alpha_0=md.md4_alpha(0.0, "linear", eps=0.0))
        tg = md.discretize_time(t, steps)
        zt = md.absorb(x0, hidden[1] >= (1 - tg)[:, None], MASK)
        lp = od.subs_log_probs(logits, zt, MASK)
        out["d3pm"] = od.d3pm_token_loss(lp, x0, zt, tg, steps, MASK).sum(-1)
        out["md4_discrete"] = od.md4_diffusion_loss(
            logits[..., :V], x0, zt, md.md4_discrete_weight(tg, steps, "linear", eps=0.0), MASK)
        return out

    out = compute()
    md4_bits, m4 = out["md4"]
    for eps in (0.0, md.MDLM_EPS):
        mdlm, metrics = out[f"mdlm{eps}"]
        assert float(mdlm) * N == pytest.approx(float(m4["nelbo_nats"]), rel=1e-5)
        assert float(metrics["bpd"]) == pytest.approx(float(md4_bits), rel=1e-5)
    np.testing.assert_allclose(out["d3pm"], out["md4_discrete"], rtol=2e-4)   # MDLM clamps t = 1 to 1 - 1e-4


def test_d3pm_loss_is_the_per_step_kl():
    """With mass p_m on the mask, MDLM's D3PM formula is T * KL(q(z_s | z_t, x0) || p(z_s | z_t)),
    the model's reverse being D3PM's normalised sum over x0 of q(z_s, z_t | x0) p(x0)."""
    steps = 5
    probs = np.asarray([0.5, 0.2, 0.1, 0.2])   # the last one on the mask id
    x_true = 1
    log_probs = jnp.log(jnp.asarray(probs))[None, None]
    for t in (1 / steps, 3 / steps, 1.0):   # 1/T: s = 0, where MDLM's own formula gives NaN
        s = t - 1 / steps
        a_t, a_s = 1 - t, 1 - s
        # p(z_s | z_t = m) over (v = 0..V-1, m): sum_x0 q(z_t | z_s) q(z_s | x0) p(x0), normalised.
        rev = np.append(probs[:V] * (a_s - a_t), probs[:V].sum() * (1 - a_s) + probs[V])
        rev /= rev.sum()
        q = np.zeros(V + 1)
        q[x_true], q[V] = (a_s - a_t) / (1 - a_t), (1 - a_s) / (1 - a_t)
        kl = sum(qi * math.log(qi / ri) for qi, ri in zip(q, rev) if qi > 0)
        loss = od.d3pm_token_loss(log_probs, jnp.asarray([[x_true]]), jnp.asarray([[MASK]]),
                                  jnp.asarray([t]), steps, MASK)
        assert np.isfinite(float(loss[0, 0]))
        tol = 1e-5 if t <= od.D3PM_T_MAX else 2e-3   # MDLM clamps t = 1 to 1 - 1e-4
        assert float(loss[0, 0]) == pytest.approx(steps * kl, rel=tol)
    # Unmasked positions contribute nothing.
    loss = od.d3pm_token_loss(log_probs, jnp.asarray([[x_true]]), jnp.asarray([[x_true]]),
                              jnp.asarray([0.6]), steps, MASK)
    assert float(loss[0, 0]) == 0.0


def test_genmd4_reduces_to_md4_with_a_shared_exponent():
    b, w = 6, 1.7

    rng = _rng(1)
    x0 = jnp.asarray(rng.integers(0, V, (b, N)), jnp.int32)
    logits = jnp.asarray(rng.normal(size=(b, N, V)), jnp.float32)
    u = jnp.asarray(rng.random((b, N)))
    key_t = _keys(1, 2)[0]

    @jax.jit
    def compute():
        t = md.genmd4_time(md.md4_sample_t(key_t, b))
        power = jnp.full((V,), w)
        zt = md.absorb(x0, u >= md.genmd4_keep_prob(x0, t, power, eps=0.0), MASK)
        return (od.genmd4_diffusion_loss(logits, x0, zt, t, power, MASK),
                od.md4_diffusion_loss(logits, x0, zt, md.md4_dgamma_times_alpha(t, f"poly{w}", eps=0.0), MASK),
                od.genmd4_recon_loss(x0, power, t1=1e-3, eps=1e-4))

    gen, md4, recon = compute()
    np.testing.assert_allclose(gen, md4, rtol=1e-5)
    # Recon at t1 with equal exponents: masked with probability (1 - eps) t1^w, decoded uniformly.
    np.testing.assert_allclose(recon, N * (1 - 1e-4) * 1e-3 ** w * math.log(V), rtol=1e-5)


def test_genmd4_log_q_is_the_bernoulli_log_density():
    power = jnp.asarray([0.5, 1.0, 2.0])
    x0 = jnp.asarray([[0, 1, 2, 2, 1, 0]])
    zt = jnp.asarray([[MASK, 1, MASK, 2, MASK, 0]])
    t = jnp.asarray([0.3])
    keep = np.asarray(md.genmd4_keep_prob(x0, t, power, eps=1e-4))[0]
    expected = np.sum(np.where(np.asarray(zt)[0] == MASK, np.log(1 - keep), np.log(keep)))
    got = od.genmd4_log_q(x0, zt, t, power, eps=1e-4, mask_id=MASK)
    assert float(got[0]) == pytest.approx(expected, rel=1e-5)


def test_genmd4_rloo_gradient_is_unbiased():
    """Exact expectation over both draws (all 16 x 16 mask pairs of a length-4 sequence):
    E[grad surrogate] = grad E[L] for a denoiser that does not depend on the schedule; without the
    RLOO term the gradient is biased."""
    length, t1, eps = 4, 1e-3, 1e-4
    masks = jnp.asarray(all_masks(length))
    m = masks.shape[0]
    t = jnp.asarray([0.45])
    table = jnp.asarray(_rng(7).normal(size=(m, length, V)), jnp.float32)   # logits per mask pattern
    w_raw = jnp.asarray([-0.3, 0.4, 1.1])
    pairs = np.stack(np.meshgrid(np.arange(m), np.arange(m), indexing="ij"), -1).reshape(-1, 2)
    tt = jnp.repeat(t, len(pairs))

    def surrogate_mean(w, x0):
        power = md.genmd4_power(w)
        z1, z2 = [jnp.where(masks[pairs[:, i]], MASK, x0[None]) for i in (0, 1)]
        x = jnp.broadcast_to(x0, z1.shape)

        def one(l1, l2, a, b_, xx):
            return od.genmd4_loss(l1[None], l2[None], xx[None], a[None], b_[None], t, power,
                                  mask_id=MASK, t1=t1, eps=eps)[0]
        s = jax.vmap(one)(table[pairs[:, 0]], table[pairs[:, 1]], z1, z2, x)
        log_q = (od.genmd4_log_q(x, z1, tt, power, eps=eps, mask_id=MASK)
                 + od.genmd4_log_q(x, z2, tt, power, eps=eps, mask_id=MASK))
        # The expectation over the pair; the draws themselves carry no gradient.
        return jnp.sum(jax.lax.stop_gradient(jnp.exp(log_q)) * s)

    def exact_mean(w, x0, through_q=True):
        power = md.genmd4_power(w)
        z = jnp.where(masks, MASK, x0[None])
        x = jnp.broadcast_to(x0, z.shape)
        tm = jnp.repeat(t, m)
        loss = od.genmd4_diffusion_loss(table, x, z, tm, power, MASK)
        q = jnp.exp(od.genmd4_log_q(x, z, tm, power, eps=eps, mask_id=MASK))
        if not through_q:   # the naive estimator's expectation: E[grad L], the draws held fixed
            q = jax.lax.stop_gradient(q)
        recon = od.genmd4_recon_loss(x0[None], power, t1=t1, eps=eps)[0]
        return (jnp.sum(q * loss) + recon) / (length * od.LN2)

    @jax.jit
    def grads(w, x0):
        return (jax.grad(exact_mean)(w, x0), jax.grad(exact_mean)(w, x0, False),
                jax.grad(surrogate_mean)(w, x0))

    for x0 in ([0, 2, 1, 2], [1, 1, 0, 2]):
        exact, naive, rloo = grads(w_raw, jnp.asarray(x0))
        np.testing.assert_allclose(rloo, exact, rtol=1e-4, atol=1e-7)
        assert float(jnp.max(jnp.abs(naive - exact))) > 100 * float(jnp.max(jnp.abs(rloo - exact)))


# ------------------------------------------------------------------------------------------
# Exact likelihood: every ELBO against the exact NLL of the Markov chain.


def test_markov_chain_posterior_is_exact(world):
    chain, corr = world["chain"], world["corr"]
    seqs, p = corr.seqs, corr.p
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(0)
    for idx in rng.choice(len(corr.zt), 20, replace=False):
        z = corr.zt[idx]
        observed = z != MASK
        consistent = np.all(~observed | (seqs == z), axis=1)
        brute = np.stack([np.bincount(seqs[consistent, n], weights=p[consistent], minlength=V)
                          for n in range(N)])
        brute /= brute.sum(-1, keepdims=True)
        np.testing.assert_allclose(chain.posterior(z[None], MASK)[0], brute, atol=1e-12)
        np.testing.assert_allclose(corr.denoiser()[idx], brute, atol=1e-12)
    # And the sampler DP with one step (everything revealed at once) is the product of marginals.
    lp1 = world["sampler"].log_probs([1.0])
    marg = chain.marginals()
    np.testing.assert_allclose(lp1, np.log(marg[np.arange(N), seqs]).sum(1), atol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "cosine", "poly2"])
def test_md4_continuous_elbo_equals_nll_per_sequence(world, kind):
    """eps = 0: the continuous-time ELBO with the exact denoiser is -log p(x0), for every x0."""
    nll = -world["corr"].log_p
    elbo = md4_continuous_elbo(world, kind, eps=0.0, nodes=8 if kind == "linear" else 32)
    print(f"\nMD4 {kind}, eps = 0: max_x |ELBO - NLL| = {np.max(np.abs(elbo - nll)):.2e}")
    _report(f"MD4 {kind} eps=0", world["corr"].p @ elbo, world["H"])
    np.testing.assert_allclose(elbo, nll, atol=3e-4, rtol=3e-5)


@pytest.mark.parametrize("kind", ["loglinear", "cosine", "cosinesqr"])
def test_mdlm_continuous_elbo_equals_nll_per_sequence(world, kind):
    nll = -world["corr"].log_p
    elbo = mdlm_continuous_elbo(world, kind, sampling_eps=0.0, eps=0.0, nodes=8 if kind == "loglinear" else 32)
    print(f"\nMDLM {kind}, eps = sampling_eps = 0: max_x |ELBO - NLL| = {np.max(np.abs(elbo - nll)):.2e}")
    np.testing.assert_allclose(elbo, nll, atol=1e-3, rtol=1e-4)


def test_reference_eps_cut_the_integral_exactly(world):
    """With the codebases' eps, the ELBO is the u-integral over the uncut range + recon, not -log p."""
    corr, H = world["corr"], world["H"]
    eps = md.MD4_EPS
    expected = _u_integral(world, eps, 1 - eps) + N * eps * math.log(V)
    print()
    for kind in ("linear", "cosine", "poly2"):   # schedule-invariant: only alpha_0, alpha_1 matter
        elbo = md4_continuous_elbo(world, kind, eps=eps)
        np.testing.assert_allclose(elbo, expected, rtol=5e-5, atol=5e-5)
        _report(f"MD4 {kind} eps=1e-4 (reference)", corr.p @ elbo, H)
    eps, se = md.MDLM_EPS, md.MDLM_SAMPLING_EPS
    elbo = mdlm_continuous_elbo(world)
    expected = _u_integral(world, (1 - eps) * se, 1 - eps) / (1 - se)
    np.testing.assert_allclose(elbo, expected, rtol=5e-5, atol=5e-5)
    _report("MDLM loglinear eps=1e-3, sampling_eps=1e-3 (reference)", corr.p @ elbo, H)
    # Both within O(eps) of the entropy, on either side.
    assert abs(corr.p @ elbo - H) < 10 * N * max(eps, se) * math.log(V)


def test_discrete_time_elbo_bounds_and_converges(world):
    """T steps (eps = 0): ELBO_T(x0) >= -log p_T(x0) for every x0 (p_T: the exact T-step ancestral
    sampler), so E_p[ELBO_T] - H >= KL(p || p_T) >= 0; the gap decreases to 0 with T."""
    corr, H = world["corr"], world["H"]
    marg = world["chain"].marginals()
    one_step = -np.log(marg[np.arange(N), corr.seqs]).sum(1)
    print()
    for kind in ("linear", "cosine"):
        gaps = []
        for steps in (1, 2, 8, 64):
            elbo = md4_discrete_elbo(world, kind, 0.0, steps)
            grid = np.arange(steps, 0, -1) / steps
            a_t = np.asarray(md.md4_alpha(grid, kind, eps=0.0), np.float64)
            a_s = np.asarray(md.md4_alpha(grid - 1 / steps, kind, eps=0.0), np.float64)
            log_pt = world["sampler"].log_probs((a_s - a_t) / (1 - a_t))
            assert np.min(elbo + log_pt) > -2e-4, "ELBO_T below -log p_T for some sequence"
            kl = float(corr.p @ (corr.log_p - log_pt))
            tv = 0.5 * float(np.abs(corr.p - np.exp(log_pt)).sum())
            gap = float(corr.p @ elbo) - H
            gaps.append(gap)
            print(f"  MD4 {kind} T={steps:3d}: E_p[ELBO_T] - H = {gap:.4e}  KL(p||p_T) = {kl:.4e}  "
                  f"TV(p, p_T) = {tv:.4f}  min_x ELBO_T(x) + log p_T(x) = {np.min(elbo + log_pt):+.2e}")
            assert gap >= kl - 2e-4 and kl >= -1e-9
            if steps == 1:   # one step reveals everything from the all-masked state: the marginals
                np.testing.assert_allclose(elbo, one_step, rtol=1e-5)
        assert all(a > b for a, b in zip(gaps, gaps[1:]))
        assert gaps[-1] < 0.05 * gaps[0]


def test_mdlm_d3pm_discrete_elbo(world):
    """MDLM's D3PM loss with SUBS and T steps: the same discrete ELBO (eps = 0), >= H, gap shrinking."""
    corr, H = world["corr"], world["H"]
    b = world["x0"].shape[0]
    log_probs = _subs(world["logits_mdlm"], world["zt"], mask_id=MASK)
    gaps = []
    print()
    for steps in (2, 8, 64):
        elbo = np.zeros(len(corr.seqs))
        for i in range(steps):
            t = (i + 1) / steps
            loss = _d3pm(log_probs, world["x0"], world["zt"], jnp.full((b,), t), num_steps=steps, mask_id=MASK)
            elbo += _expect_z(world, np.asarray(loss).sum(-1), float(md.mdlm_mask_prob(t, eps=0.0))) / steps
        ref = md4_discrete_elbo(world, "linear", 0.0, steps)
        np.testing.assert_allclose(elbo, ref, rtol=2e-4)
        gaps.append(float(corr.p @ elbo) - H)
        print(f"  MDLM D3PM (SUBS) T={steps:3d}: E_p[ELBO_T] - H = {gaps[-1]:.4e}")
    assert gaps[0] > gaps[1] > gaps[2] > 0


@pytest.mark.parametrize("powers", [(1.0, 1.0, 1.0), (0.5, 1.0, 2.0)])
def test_genmd4_elbo_bounds_the_entropy(world, powers):
    """GenMD4 with eps = 0 and the exact state-dependent denoiser: E_p[ELBO] >= H, a small gap (t1)."""
    corr, H = world["corr"], world["H"]
    t1, eps = md.GENMD4_T1, 0.0
    power = jnp.asarray(powers)
    pw = np.asarray(powers)
    b = world["x0"].shape[0]
    total = np.zeros(len(corr.seqs))
    log_lo = math.log(t1)
    for s, c in zip(*_gauss(log_lo, 0.0, 24)):   # in log t: the integrand varies like t^(w - 1)
        t = math.exp(s)
        post = corr.denoiser(masked_lik=t ** pw)   # 1 - alpha_t(v): the denoiser depends on t here
        logits = jnp.asarray(np.log(np.maximum(post, 1e-30)), jnp.float32)
        loss = np.asarray(_gen_diff(logits, world["x0"], world["zt"], jnp.full((b,), t), power, mask_id=MASK))
        keep = 1 - t ** pw[corr.x0]
        q = np.where(corr.hidden, 1 - keep, keep).prod(1)
        total += c * t / (1 - t1) * corr.per_sequence(loss * q).sum(1)
    elbo = total + np.asarray(od.genmd4_recon_loss(jnp.asarray(corr.seqs), power, t1=t1, eps=eps))
    gap = float(corr.p @ elbo) - H
    print(f"\n  GenMD4 powers={powers}, eps=0, t1=1e-3: E_p[ELBO] - H = {gap:+.4e}")
    assert 0 <= gap < 0.02
    if len(set(powers)) == 1:   # = MD4 poly1 on [t1, 1] with GenMD4's recon and time density
        ref = _u_integral(world, t1, 1.0) / (1 - t1) + N * t1 * math.log(V)
        np.testing.assert_allclose(elbo, ref, rtol=1e-4, atol=1e-5)


def test_monte_carlo_pipeline_matches_the_exact_expectation(world):
    """The whole training-time path (antithetic t, per-example Bernoulli masks, md4_loss in bits)
    estimates the exact expected ELBO within 4 standard errors."""
    chain, corr = world["chain"], world["corr"]
    eps, kind = md.MD4_EPS, "linear"
    exact_bits = float(corr.p @ md4_continuous_elbo(world, kind, eps=eps)) / (N * od.LN2)
    rng = np.random.default_rng(11)
    batch, batches = 128, 40
    loss_fn = jax.jit(lambda lg, x, z, w: od.md4_loss(lg, x, z, w, mask_id=MASK,
                                                       alpha_0=md.md4_alpha(0.0, kind, eps=eps))[0])

    key_t, keys_x = _keys(1, 100)[0], _keys(batch, 1000)

    @jax.jit
    def corrupt(i, x0):
        t = md.md4_sample_t(jax.random.fold_in(key_t, i), batch)
        keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys_x)
        zt, _ = md.forward_sample(keys, x0, md.md4_alpha(t, kind, eps=eps), MASK)
        return zt, md.md4_dgamma_times_alpha(t, kind, eps=eps)

    values = []
    for i in range(batches):
        x0 = jnp.asarray(chain.sample(rng, batch))
        zt, weight = corrupt(i, x0)
        logits = jnp.asarray(np.log(np.maximum(chain.posterior(np.asarray(zt), MASK), 1e-30)), jnp.float32)
        values.append(float(loss_fn(logits, x0, zt, weight)))
    mean, se = np.mean(values), np.std(values, ddof=1) / math.sqrt(batches)
    print(f"\n  MC MD4 linear eps=1e-4: {mean:.4f} +- {se:.4f} bits/token, exact {exact_bits:.4f}, "
          f"H = {world['H'] / (N * od.LN2):.4f}")
    assert abs(mean - exact_bits) < 4 * se
