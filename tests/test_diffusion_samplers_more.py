"""MDLM ddpm_cache, MD4 top-p and LLaDA (low-confidence / random remasking, semi-AR blocks) against
the exact distributions of a small Markov chain (V = 3, N = 6), and their helpers against numpy
transcriptions of the official code.

The "model" is the chain's exact denoiser p(x_n | z) (forward-backward, tabulated over all 4^6
partially masked sequences), so what is left is each sampler's own error. Each sampler's exact
output distribution is computed independently in float64:

* ddpm_cache and top-p are ancestral samplers (independent unmasking with a per-step probability):
  tests/markov_chain.py's AncestralSampler, with the top-p-truncated denoiser for top-p;
* LLaDA's distribution is enumerated step by step (:func:`_llada_exact`: every reachable partial
  sequence, every draw of its masked tokens, the top-k selection LLaDA's generate.py makes).

The samples must match that distribution within Monte-Carlo noise; TV(chain, sampler) as a function
of the steps is printed (the slow test prints the whole table). Exact in the limit: ddpm_cache
and top-p at p = 1 (TV -> 0), LLaDA random remasking (TV = 0 at one token per step) and
low-confidence with blocks of one token. Not exact: top-p (p < 1) and LLaDA low-confidence
remasking over longer blocks, whose TV stays away from 0 (and grows with the steps).
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskjax.masking import diffusion as md
from maskjax.masking import diffusion_samplers as ds
from tests.markov_chain import AncestralSampler, Corruptions, MarkovChain

V, N = 3, 6
MASK = V
SAMPLES = 8192
Z_POWERS = (V + 1) ** np.arange(N - 1, -1, -1)
X_POWERS = V ** np.arange(N - 1, -1, -1)


@pytest.fixture(scope="module")
def world():
    chain = MarkovChain.random(seed=3, vocab=V, length=N)
    all_z = np.asarray(list(itertools.product(range(V + 1), repeat=N)), np.int32)   # code = z @ Z_POWERS
    post = chain.posterior(all_z, MASK)
    log_table = jnp.asarray(np.log(np.maximum(post, 1e-30)), jnp.float32)
    z_powers = jnp.asarray(Z_POWERS, jnp.int32)

    def denoiser(z, t):
        del t   # a schedule shared by all tokens: the exact denoiser does not depend on t
        return log_table[jnp.sum(z * z_powers, axis=-1)]

    corr = Corruptions(chain, MASK)
    return {"chain": chain, "post": post, "corr": corr, "denoiser": denoiser, "p": corr.p}


def _ancestral_exact(corr, post, unmask_probs):
    """p_T [V^N] of an ancestral sampler whose denoiser is ``post`` [S * M, N, V] (per corruption)."""
    x0 = np.take_along_axis(post, corr.x0[..., None], axis=-1)[..., 0]
    with np.errstate(divide="ignore"):   # log 0: a sequence top-p can never produce
        return np.exp(AncestralSampler(corr, np.log(np.maximum(x0, 1e-300))).log_probs(unmask_probs))


def _keys(seed, n=SAMPLES):
    return jax.random.wrap_key_data(np.random.default_rng(seed).integers(0, 2 ** 32, (n, 2), dtype=np.uint32))


def _empirical(samples):
    samples = np.asarray(samples)
    assert samples.shape == (SAMPLES, N) and samples.min() >= 0 and samples.max() < V   # no mask left
    return np.bincount(samples @ X_POWERS, minlength=V ** N) / len(samples)


def _tv(a, b):
    return 0.5 * float(np.abs(a - b).sum())


def _check_samples(q, emp, rng, draws=20):
    """TV(empirical, q) within Monte-Carlo noise: mean + 5 sd of TV(multinomial of q, q)."""
    tv = [_tv(rng.multinomial(SAMPLES, q) / SAMPLES, q) for _ in range(draws)]
    bound = float(np.mean(tv) + 5 * np.std(tv))
    assert _tv(q, emp) <= bound, (_tv(q, emp), bound)
    return _tv(q, emp), bound


# ------------------------------------------------------------------------------------------
# MDLM ddpm_cache.


def _ddpm_unmask_probs(steps, eps=ds.MDLM_SAMPLING_EPS):
    """MDLM's _sample grid (float64): t = linspace(1, eps, T + 1), s = t - dt, unmask (t - s) / t."""
    t = np.linspace(1.0, eps, steps + 1)[:-1]
    return (1.0 - eps) / steps / t


def _ddpm(world, steps):
    """One program per T; ``use_cache`` / ``time_conditioning`` are traced arguments."""
    return jax.jit(partial(ds.mdlm_ddpm_cache_sample, denoiser=world["denoiser"], length=N,
                           num_steps=steps, mask_id=MASK))


def _ddpm_table(world, steps_list, rng):
    p, tvs = world["p"], []
    for steps in steps_list:
        q = _ancestral_exact(world["corr"], world["corr"].denoiser(), _ddpm_unmask_probs(steps))
        # Each token is still masked after the last step with probability eps (the product of s/t
        # telescopes): the noise-removal argmax decides that mass, at most N eps, left out here.
        assert 1.0 - q.sum() < N * ds.MDLM_SAMPLING_EPS * 1.01
        keys = _keys(steps)
        sample = _ddpm(world, steps)
        cached, _ = sample(keys, use_cache=jnp.bool_(True))
        # 8192 samples per batch rarely leave the whole batch unchanged, so the cache is seldom
        # hit here; cached or not, the same keys give the same samples.
        np.testing.assert_array_equal(cached, sample(keys, use_cache=jnp.bool_(False))[0])
        got, bound = _check_samples(q, _empirical(cached), rng)
        tvs.append(_tv(p, q))
        print(f"  ddpm_cache T={steps:3d}: TV(p, p_T) = {tvs[-1]:.4f} exact; TV(p_T, samples) = {got:.4f} "
              f"< {bound:.4f}")
    return tvs


def test_ddpm_cache_samples_its_exact_distribution(world):
    print()
    tvs = _ddpm_table(world, (2, 8), np.random.default_rng(0))
    assert tvs[0] > tvs[1] + 0.05


def test_ddpm_cache_saves_calls_and_gives_the_same_samples(world):
    """Same keys: the cached sampler's samples are the uncached one's, bit for bit, with fewer calls,
    and a call it skips is really not made (counted by a host callback inside the denoiser)."""
    made = []

    def counting(z, t):
        jax.debug.callback(lambda: made.append(1))
        return world["denoiser"](z, t)

    steps, keys = 64, _keys(5, 4)   # 4 x 6 tokens over 64 steps: most steps change nothing
    run = jax.jit(partial(ds.mdlm_ddpm_cache_sample, denoiser=counting, length=N, num_steps=steps, mask_id=MASK))

    def counted(**flags):
        made.clear()
        out, calls = run(keys, **{k: jnp.bool_(v) for k, v in flags.items()})
        jax.effects_barrier()
        return np.asarray(out), np.asarray(calls), len(made)

    cached, calls, n_made = counted(use_cache=True, time_conditioning=False)
    plain, plain_calls, n_plain = counted(use_cache=False, time_conditioning=False)
    np.testing.assert_array_equal(cached, plain)
    assert np.all(plain_calls == 1) and n_plain == steps + 1
    # A step re-calls only after a token changed; 24 tokens change at most 24 times.
    assert calls[0] == 1 and calls[-1] == 1 and calls[:-1].sum() <= 1 + 4 * N
    assert n_made == calls.sum() < steps // 2
    print(f"\n  ddpm_cache T={steps}, batch 4: {calls.sum()} denoiser calls instead of {steps + 1}")
    # Time conditioning invalidates the cache: every step calls, as MDLM's `or self.time_conditioning`.
    _, tc_calls, n_tc = counted(use_cache=True, time_conditioning=True)
    assert np.all(tc_calls == 1) and n_tc == steps + 1


def test_ddpm_step_mask_column_inside_the_vocab():
    """mask_id < V (a BERT-like [MASK]): its logit is dropped, the token is never predicted."""
    b, length, vocab, mask_id = 2, 4000, 5, 2
    logits = jnp.zeros((b, length, vocab)).at[..., mask_id].set(10.0)   # the model "likes" the mask
    x = jnp.full((b, length), mask_id, jnp.int32)
    out = np.asarray(ds.mdlm_ddpm_step(_keys(3, b), x, ds.x0_log_probs(logits, mask_id), 0.5, 0.25, mask_id))
    frac = (out != mask_id).mean()   # unmask probability (t - s) / t = 0.5
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / (b * length))
    counts = np.bincount(out[out != mask_id], minlength=vocab) / (out != mask_id).sum()
    np.testing.assert_allclose(counts, [0.25, 0.25, 0.0, 0.25, 0.25], atol=0.03)


# ------------------------------------------------------------------------------------------
# MD4 top-p.


def _topp_reference(probs, p):
    """MD4's topp_mask, by its definition: the largest threshold c with mass(probs >= c) >= p
    (binary_search.float32_bsearch); that c is one of the probabilities, so each one is tried as c
    (float64 sums); keep probs >= c, everything when no c reaches p."""
    probs = np.asarray(probs, np.float64)
    mass = np.sum(probs[..., None, :] * (probs[..., None, :] >= probs[..., :, None]), axis=-1)   # mass(>= c_i)
    c = np.max(np.where(mass >= p, probs, -np.inf), axis=-1, keepdims=True)
    return probs >= c


def test_topp_logits_matches_md4_definition():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 40)) * rng.choice([0.5, 2.0, 5.0], size=(64, 1))
    logits[:8, 1] = logits[:8, 0]                      # ties, kept or dropped together
    logits[8:16, 5:9] = logits[8:16, 4:5]
    logits = jnp.asarray(logits, jnp.float32)
    probs = np.asarray(jax.nn.softmax(logits, -1))
    for p in (0.1, 0.5, 0.9, 0.98):
        got = np.isfinite(np.asarray(ds.topp_logits(logits, p)))
        np.testing.assert_array_equal(got, _topp_reference(probs, p))
        kept = np.where(got, probs, 0.0).sum(-1)
        assert np.all(kept >= p - 1e-6)
    # Hand-computed: probs (0.5, 0.3, 0.15, 0.05) keep 2 tokens at p = 0.75 and 3 at p = 0.81.
    hand = jnp.log(jnp.asarray([0.5, 0.3, 0.15, 0.05]))
    assert np.isfinite(np.asarray(ds.topp_logits(hand, 0.75))).tolist() == [True, True, False, False]
    assert np.isfinite(np.asarray(ds.topp_logits(hand, 0.81))).tolist() == [True, True, True, False]
    np.testing.assert_array_equal(ds.topp_logits(logits, 1.0), logits)


TOPP = 0.8


def _topp_exact(world, steps, topp, grid="cosine"):
    """p_T of MD4's top-p sampler: the ancestral sampler on the truncated, renormalised denoiser."""
    corr = world["corr"]
    post = corr.denoiser()
    # The float32 sampler and this float64 reference must cut the same tokens: no cumulative
    # mass of a nucleus may sit within 1e-4 of the threshold (p = 1 keeps everything anyway).
    srt = -np.sort(-world["post"], axis=-1)
    assert topp >= 1.0 or np.abs(np.cumsum(srt, -1) - topp).min() > 1e-4
    keep = _topp_reference(post, topp)
    trunc = np.where(keep, post, 0.0)
    trunc /= trunc.sum(-1, keepdims=True)
    s, t = md.md4_sampling_grid(np.arange(steps), steps, grid)
    a_s = np.asarray(md.md4_alpha(s, "linear", eps=0.0), np.float64)
    a_t = np.asarray(md.md4_alpha(t, "linear", eps=0.0), np.float64)
    return _ancestral_exact(corr, trunc, (a_s - a_t) / (1 - a_t))


def _topp(world):
    """One program: ``num_steps`` and ``topp`` are traced."""
    return jax.jit(partial(ds.topp_sample, denoiser=world["denoiser"], length=N, mask_id=MASK,
                           alpha_fn=partial(md.md4_alpha, kind="linear", eps=0.0)))


def _topp_table(world, rows, rng):
    p, sample, tvs = world["p"], _topp(world), []
    for topp, steps in rows:
        q = _topp_exact(world, steps, topp)
        emp = _empirical(sample(_keys(20 + steps), num_steps=jnp.int32(steps), topp=jnp.float32(topp)))
        got, bound = _check_samples(q, emp, rng)
        tvs.append(_tv(p, q))
        print(f"  MD4 top-p {topp} cosine T={steps:3d}: TV(p, p_T) = {tvs[-1]:.4f} exact; "
              f"TV(p_T, samples) = {got:.4f} < {bound:.4f}")
    return tvs


def test_topp_sampler_samples_its_exact_distribution(world):
    print()
    tvs = _topp_table(world, [(TOPP, 2), (TOPP, 8), (1.0, 8)], np.random.default_rng(1))
    # A truncated model is not the chain at any number of steps; p = 1 is the ancestral sampler.
    assert min(tvs[:2]) > 0.2 and tvs[2] < 0.1


# ------------------------------------------------------------------------------------------
# LLaDA.


def _num_transfer_reference(mask_num, steps):
    """generate.py::get_num_transfer_tokens, line by line in numpy."""
    mask_num = np.asarray(mask_num)[:, None]
    base, remainder = mask_num // steps, mask_num % steps
    out = np.zeros((mask_num.shape[0], steps), np.int64) + base
    for i in range(mask_num.shape[0]):
        out[i, :remainder[i, 0]] += 1
    return out


def test_num_transfer_tokens_matches_llada():
    rng = np.random.default_rng(0)
    for steps in (1, 3, 7, 32, 128):
        counts = rng.integers(0, 300, 50)
        np.testing.assert_array_equal(ds.num_transfer_tokens(jnp.asarray(counts), steps),
                                      _num_transfer_reference(counts, steps))


def _add_gumbel_noise_reference(rng, logits, temperature):
    """generate.py::add_gumbel_noise in float64: exp(logits) / (-log u)^temperature."""
    if temperature == 0:
        return logits
    return np.exp(logits.astype(np.float64)) / (-np.log(rng.random(logits.shape))) ** temperature


def test_gumbel_scores_argmax_at_temperature_zero_and_softmax_otherwise():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(16, 50)) * 3, jnp.float32)
    bits = jnp.asarray(rng.integers(0, 2 ** 32, 2 * logits.size, dtype=np.uint32))
    np.testing.assert_array_equal(ds.gumbel_scores(bits, logits, 0.0), logits)   # no noise at all
    # A traced temperature 0 adds 0 * (finite) noise: still exactly the argmax.
    traced = jax.jit(ds.gumbel_scores)(bits, logits, jnp.float32(0.0))
    np.testing.assert_array_equal(jnp.argmax(traced, -1), np.argmax(np.asarray(logits), -1))
    # Temperature T: argmax draws follow softmax(logits / T), as LLaDA's float64 form does.
    row = np.asarray([1.0, 0.2, -0.5, -3.0, 2.0], np.float32)
    draws = 40000
    for temp in (0.5, 1.0, 2.0):
        exact = np.exp(row / temp) / np.exp(row / temp).sum()
        bits = jnp.asarray(rng.integers(0, 2 ** 32, 2 * draws * 5, dtype=np.uint32))
        ours = np.argmax(np.asarray(ds.gumbel_scores(bits, jnp.broadcast_to(row, (draws, 5)), temp)), -1)
        theirs = np.argmax(_add_gumbel_noise_reference(rng, np.broadcast_to(row, (draws, 5)), temp), -1)
        for got in (ours, theirs):
            freq = np.bincount(got, minlength=5) / draws
            np.testing.assert_allclose(freq, exact, atol=5 * np.sqrt(0.25 / draws))


def test_gumbel_from_bits_tails():
    """64-bit noise reaches past float64 torch.rand's Gumbel tail (36.7), 32-bit noise stops near 17;
    every value is finite, and the bulk is a standard Gumbel (mean Euler's gamma, variance pi^2/6)."""
    edge = jnp.asarray([0, 0xFFFFFFFF], jnp.uint32)
    hi64 = np.asarray(ds.gumbel_from_bits(edge, edge))
    hi32 = np.asarray(ds.gumbel_from_bits(edge))
    assert hi64[0] > -np.log(-np.log1p(-2.0 ** -53)) and 16.5 < hi32[0] < 18.0
    assert np.all(np.isfinite(hi64)) and np.all(np.isfinite(hi32))
    bits = jnp.asarray(np.random.default_rng(0).integers(0, 2 ** 32, (2, 200000), dtype=np.uint32))
    g = np.asarray(ds.gumbel_from_bits(bits[0], bits[1]), np.float64)
    assert abs(g.mean() - np.euler_gamma) < 0.01 and abs(g.var() - np.pi ** 2 / 6) < 0.03


def _llada_exact(world, steps, block_length, remasking, temperature):
    """The exact output distribution [V^N] of LLaDA's generate with the chain's denoiser (float64),
    enumerating every reachable partial sequence and every draw of its in-block masked tokens."""
    post = world["post"]
    num_blocks = N // block_length
    per_block = steps // num_blocks
    states = {int(np.full(N, MASK) @ Z_POWERS): 1.0}
    for b in range(num_blocks):
        schedule = _num_transfer_reference([block_length], per_block)[0]
        for k in schedule:
            new = defaultdict(float)
            for code, w in states.items():
                z = np.asarray(np.unravel_index(code, (V + 1,) * N))
                probs = post[code]
                if temperature == 0:   # argmax, ties to the lowest id as np/jnp.argmax
                    draw = np.eye(V)[np.argmax(probs, -1)]
                else:
                    draw = probs ** (1.0 / temperature)
                    draw /= draw.sum(-1, keepdims=True)
                elig = [n for n in range(N) if z[n] == MASK and n < (b + 1) * block_length]
                if k == 0:
                    new[code] += w
                    continue
                if remasking == "random":   # top-k of iid uniforms: a uniform k-subset
                    subsets = [(s, 1.0 / math.comb(len(elig), k)) for s in itertools.combinations(elig, k)]
                    for subset, ps in subsets:
                        for vals in itertools.product(range(V), repeat=k):
                            pr = ps * np.prod(draw[list(subset), vals])
                            z2 = z.copy()
                            z2[list(subset)] = vals
                            new[int(z2 @ Z_POWERS)] += w * pr
                    continue
                for vals in itertools.product(range(V), repeat=len(elig)):
                    pr = np.prod(draw[elig, vals])
                    if pr == 0.0:
                        continue
                    conf = probs[elig, vals]   # the untempered probability of the drawn token
                    chosen = sorted(range(len(elig)), key=lambda i: (-conf[i], elig[i]))[:k]
                    z2 = z.copy()
                    z2[[elig[i] for i in chosen]] = [vals[i] for i in chosen]
                    new[int(z2 @ Z_POWERS)] += w * pr
            states = new
    out = np.zeros(V ** N)
    for code, w in states.items():
        z = np.asarray(np.unravel_index(code, (V + 1,) * N))
        assert np.all(z != MASK)
        out[z @ X_POWERS] += w
    return out


def _llada(world, block_length, remasking):
    """One program per (block_length, remasking): ``steps`` and ``temperature`` are traced."""
    return jax.jit(partial(ds.llada_generate, denoiser=world["denoiser"], prompt=jnp.zeros((SAMPLES, 0), jnp.int32),
                           gen_length=N, mask_id=MASK, block_length=block_length, remasking=remasking,
                           return_history=True))


def _check_blocks(history, block_length, steps):
    """Every position of a block is filled before any of the next, each step fills its scheduled count."""
    num_blocks = history.shape[1] // block_length
    blocks = history.reshape(len(history), num_blocks, block_length)
    assert np.all(blocks.max(-1)[:, :-1] < blocks.min(-1)[:, 1:])
    per_step = np.stack([np.bincount(h, minlength=steps) for h in history])
    expect = np.tile(_num_transfer_reference([block_length], steps // num_blocks)[0], num_blocks)
    np.testing.assert_array_equal(per_step, np.broadcast_to(expect, per_step.shape))


def _llada_table(world, configs, rng):
    tvs, programs = [], {}
    for remasking, temperature, steps, block in configs:
        q = _llada_exact(world, steps, block, remasking, temperature)
        assert abs(q.sum() - 1.0) < 1e-9
        run = programs.setdefault((block, remasking), _llada(world, block, remasking))
        out, history = run(_keys(50 + steps + block), steps=jnp.int32(steps), temperature=jnp.float32(temperature))
        _check_blocks(np.asarray(history), block, steps)
        got, bound = _check_samples(q, _empirical(out), rng)
        tvs.append(_tv(world["p"], q))
        print(f"  LLaDA {remasking:14s} temp {temperature} steps {steps} block {block}: TV(p, p_T) = "
              f"{tvs[-1]:.4f} exact; TV(p_T, samples) = {got:.4f} < {bound:.4f}")
    return tvs


def test_llada_random_remasking_is_exact_at_one_token_per_step(world):
    print()
    tvs = _llada_table(world, [("random", 1.0, s, N) for s in (2, 6)] + [("random", 1.0, 6, 2)],
                       np.random.default_rng(2))
    assert tvs[0] > 0.05 and tvs[1] < 1e-9 and tvs[2] < 1e-9


def test_llada_low_confidence_samples_its_exact_distribution(world):
    print()
    tvs = _llada_table(world, [("low_confidence", 1.0, 6, N), ("low_confidence", 1.0, 6, 3),
                               ("low_confidence", 0.0, 3, N)], np.random.default_rng(3))
    assert min(tvs[:2]) > 0.2   # not exact even at one token per step
    # temperature 0: deterministic, the reference's single sequence for every key.
    out = np.asarray(_llada(world, N, "low_confidence")(_keys(9), steps=jnp.int32(3),
                                                         temperature=jnp.float32(0.0))[0])
    q = _llada_exact(world, 3, N, "low_confidence", 0.0)
    assert np.all(out == out[0]) and q[out[0] @ X_POWERS] == pytest.approx(1.0)


def test_semi_ar_blocks_finish_in_order_after_a_prompt():
    """Random-logit denoiser, prompt of 3, 32 tokens in 4 blocks of 8, 16 steps: every position of
    a block is filled before any of the next, each step fills the scheduled count, the prompt stays."""
    b, p_len, gen, block, steps, vocab = 4, 3, 32, 8, 16, 11
    mask_id = vocab
    w = jax.random.normal(jax.random.key(0), (vocab + 1, vocab))

    def denoiser(z, t):   # depends on the tokens, so the confidences move with the sequence
        ctx = jnp.mean(w[z], axis=1, keepdims=True)
        return w[z] * 2.0 + ctx + jnp.sin(jnp.arange(z.shape[1]))[None, :, None] * t[:, None, None]

    prompt = jax.random.randint(jax.random.key(1), (b, p_len), 0, vocab)
    for remasking in ("low_confidence", "random"):
        run = jax.jit(partial(ds.llada_generate, denoiser=denoiser, gen_length=gen, steps=steps, mask_id=mask_id,
                              block_length=block, remasking=remasking, return_history=True))
        for temperature in (0.0, 1.0):
            out, hist = run(_keys(1, b), prompt=prompt, temperature=jnp.float32(temperature))
            out, hist = np.asarray(out), np.asarray(hist)
            np.testing.assert_array_equal(out[:, :p_len], prompt)
            assert np.all(hist[:, :p_len] == -1) and np.all(out[:, p_len:] < vocab)
            _check_blocks(hist[:, p_len:], block, steps)


# ------------------------------------------------------------------------------------------
# Entropy.


def test_sample_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    vocab = 7
    samples = rng.integers(0, vocab + 2, (32, 20))   # ids vocab and vocab + 1 are not tokens
    samples[0] = 3
    samples[1] = vocab   # no valid token at all
    want = []
    for row in samples:
        row = row[row < vocab]
        if len(row) == 0:
            want.append(0.0)
            continue
        f = np.unique(row, return_counts=True)[1] / len(row)
        want.append(-(f * np.log(f)).sum())
    entropy = jax.jit(ds.sample_entropy, static_argnums=1)
    np.testing.assert_allclose(entropy(jnp.asarray(samples), vocab), want, atol=1e-5)
    assert float(entropy(jnp.arange(16)[None], 16)[0]) == pytest.approx(math.log(16), abs=1e-5)


# ------------------------------------------------------------------------------------------
# The table of the report.


@pytest.mark.slow
def test_all_samplers_distance_to_the_chain_as_a_function_of_steps(world):
    print()
    tvs = _ddpm_table(world, (1, 2, 4, 8, 32, 128), np.random.default_rng(10))
    assert all(a > b for a, b in zip(tvs, tvs[1:])) and tvs[-1] < 0.02
    tvs = _topp_table(world, [(1.0, s) for s in (1, 2, 8, 32, 128)], np.random.default_rng(11))
    assert all(a > b for a, b in zip(tvs, tvs[1:])) and tvs[-1] < 0.02
    tvs = _topp_table(world, [(TOPP, s) for s in (1, 2, 8, 32, 128)], np.random.default_rng(12))
    assert min(tvs) > 0.2
    tvs = _llada_table(world, [("random", 1.0, s, N) for s in (1, 2, 3, 6)], np.random.default_rng(13))
    assert all(a > b for a, b in zip(tvs, tvs[1:])) and tvs[-1] < 1e-9
    _llada_table(world, [("low_confidence", 1.0, s, N) for s in (1, 2, 3, 6)]
                 + [("random", 1.0, 6, 2), ("low_confidence", 1.0, 6, 2), ("low_confidence", 1.0, 6, 1)],
                 np.random.default_rng(14))
