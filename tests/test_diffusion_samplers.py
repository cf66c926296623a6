"""Masked-diffusion samplers against the exact distribution of a small Markov chain (V = 3, N = 6).

The denoiser is the exact p(x_n | z) (forward-backward on every one of the 4^6 partially masked
sequences, looked up by index), so the only error left is the sampler's own:

* MD4's ancestral sampler (MDLM's ddpm sampler is the same on a uniform grid) with T steps samples
  exactly p_T, whose distribution tests/markov_chain.py computes by dynamic programming; its
  empirical distribution must be within Monte-Carlo noise of p_T, and TV(p, p_T) -> 0 with T;
* MaskGIT's confidence decoding has no such guarantee; with one step it samples the product of
  the marginals (checked), and its distance to p is printed for a few step counts.
"""
from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskjax.masking import diffusion as md
from tests.markov_chain import AncestralSampler, Corruptions, MarkovChain

V, N = 3, 6
MASK = V
SAMPLES = 8192


@pytest.fixture(scope="module")
def exact():
    chain = MarkovChain.random(seed=3, vocab=V, length=N)
    all_z = np.asarray(list(itertools.product(range(V + 1), repeat=N)), np.int32)   # lexicographic
    log_table = jnp.asarray(np.log(np.maximum(chain.posterior(all_z, MASK), 1e-30)), jnp.float32)
    z_powers = jnp.asarray((V + 1) ** np.arange(N - 1, -1, -1), jnp.int32)

    def denoiser(z, t):
        del t   # the exact denoiser of a schedule shared by all tokens does not depend on t
        return log_table[jnp.sum(z * z_powers, axis=-1)]

    corr = Corruptions(chain, MASK)
    post = corr.denoiser()
    log_den_x0 = np.log(np.take_along_axis(post, corr.x0[..., None], axis=-1)[..., 0])
    return {"chain": chain, "corr": corr, "denoiser": denoiser, "sampler": AncestralSampler(corr, log_den_x0),
            "x_powers": V ** np.arange(N - 1, -1, -1)}


def _keys(seed, n=SAMPLES):
    """[n] typed keys from numpy bits (no key-splitting program to compile)."""
    return jax.random.wrap_key_data(np.random.default_rng(seed).integers(0, 2 ** 32, (n, 2), dtype=np.uint32))


def _empirical(world, samples):
    samples = np.asarray(samples)
    assert samples.shape == (SAMPLES, N) and samples.min() >= 0 and samples.max() < V   # no mask left
    return np.bincount(samples @ world["x_powers"], minlength=V ** N) / len(samples)


def _noise_floor(q, rng, draws=20):
    """Mean and sd of TV(empirical of SAMPLES draws from q, q): the Monte-Carlo noise level."""
    tv = [0.5 * np.abs(rng.multinomial(SAMPLES, q) / SAMPLES - q).sum() for _ in range(draws)]
    return float(np.mean(tv)), float(np.std(tv))


def _tv(a, b):
    return 0.5 * float(np.abs(a - b).sum())


def _exact_ancestral(world, grid, steps):
    """p_T [V^N] of the ancestral sampler with MD4's linear schedule (eps = 0) on the grid."""
    i = np.arange(steps)
    s, t = md.md4_sampling_grid(i, steps, grid)
    a_s = np.asarray(md.md4_alpha(s, "linear", eps=0.0), np.float64)
    a_t = np.asarray(md.md4_alpha(t, "linear", eps=0.0), np.float64)
    return np.exp(world["sampler"].log_probs((a_s - a_t) / (1 - a_t)))


def _ancestral(world, grid):
    return jax.jit(partial(md.ancestral_sample, denoiser=world["denoiser"], length=N,
                           alpha_fn=partial(md.md4_alpha, kind="linear", eps=0.0), mask_id=MASK, grid=grid))


def _maskgit(world, temperature):
    return jax.jit(partial(md.maskgit_decode, denoiser=world["denoiser"], mask_id=MASK,
                           choice_temperature=temperature))


def _check_ancestral(world, grid, steps_list, rng):
    """Samples vs the exact p_T (within Monte-Carlo noise); returns TV(p, p_T) per T."""
    p = world["corr"].p
    sample = _ancestral(world, grid)
    tvs = []
    for steps in steps_list:
        p_t = _exact_ancestral(world, grid, steps)
        emp = _empirical(world, sample(_keys(steps), num_steps=jnp.int32(steps)))
        floor, sd = _noise_floor(p_t, rng)
        tvs.append(_tv(p, p_t))
        print(f"  ancestral {grid:7s} T={steps:2d}: TV(p, p_T) = {tvs[-1]:.4f} exact, "
              f"TV(p, samples) = {_tv(p, emp):.4f}, TV(p_T, samples) = {_tv(p_t, emp):.4f} "
              f"(Monte-Carlo noise {floor:.4f} +- {sd:.4f})")
        assert _tv(p_t, emp) < floor + 5 * sd
    return tvs


def test_ancestral_sampler_samples_its_exact_distribution(exact):
    print()
    tvs = _check_ancestral(exact, "uniform", (2, 8), np.random.default_rng(0))
    assert tvs[0] > tvs[1]


def test_ancestral_step_unmask_probability():
    b, length = 2, 4000
    zt = jnp.full((b, length), MASK, jnp.int32).at[:, :10].set(1)
    logits = jnp.log(jnp.asarray([0.2, 0.5, 0.3]))[None, None].repeat(b, 0).repeat(length, 1)
    keys = _keys(1, b)
    zs = np.asarray(md.ancestral_step(keys, zt, logits, jnp.asarray([0.6, 0.9]), jnp.asarray([0.2, 0.1]), MASK))
    np.testing.assert_array_equal(zs[:, :10], 1)                    # unmasked tokens are copied
    for i, p_unmask in enumerate((0.5, (0.9 - 0.1) / 0.9)):
        rest = zs[i, 10:]
        assert abs((rest != MASK).mean() - p_unmask) < 5 * np.sqrt(p_unmask * (1 - p_unmask) / len(rest))
        counts = np.bincount(rest[rest != MASK], minlength=V) / (rest != MASK).sum()
        np.testing.assert_allclose(counts, [0.2, 0.5, 0.3], atol=0.05)


def test_maskgit_one_step_samples_the_marginals_and_keeps_known_tokens(exact):
    """One step samples every position from the all-masked denoiser: the product of the marginals."""
    corr = exact["corr"]
    marg = exact["chain"].marginals()
    product = np.exp(np.log(marg[np.arange(N), corr.seqs]).sum(1))
    decode = _maskgit(exact, 1.0)
    init = jnp.full((SAMPLES, N), MASK, jnp.int32)
    emp = _empirical(exact, decode(_keys(101), init=init, num_steps=jnp.int32(1)))
    floor, sd = _noise_floor(product, np.random.default_rng(1))
    assert _tv(product, emp) < floor + 5 * sd
    partial_init = init.at[:, 2].set(1).at[:, 4].set(0)   # editing: known tokens are kept
    out = np.asarray(decode(_keys(7), init=partial_init, num_steps=jnp.int32(3)))
    assert np.all(out[:, 2] == 1) and np.all(out[:, 4] == 0)


@pytest.mark.slow
def test_sampler_distance_to_the_data_as_a_function_of_steps(exact):
    """The table of the report: TV to the exact chain for both samplers and several step counts."""
    rng = np.random.default_rng(2)
    print()
    for grid in ("uniform", "cosine"):
        tvs = _check_ancestral(exact, grid, (1, 2, 8, 64), rng)
        assert all(a > b for a, b in zip(tvs, tvs[1:])) and tvs[-1] < 0.02
    p = exact["corr"].p
    init = jnp.full((SAMPLES, N), MASK, jnp.int32)
    for temperature in (1.0, 4.5):
        decode = _maskgit(exact, temperature)
        for steps in (1, 2, 3, 6, 12):
            emp = _empirical(exact, decode(_keys(100 + steps), init=init, num_steps=jnp.int32(steps)))
            print(f"  MaskGIT choice_temperature={temperature} T={steps:2d}: "
                  f"TV(p, samples) = {_tv(p, emp):.4f}")
