"""The character language-model methods (mdlm, md4, genmd4, causal_lm) as wired by maskjax.

With the network replaced by the EXACT denoiser of a small Markov chain (V = 3 symbols + mask,
N = 6 positions; tests/markov_chain.py), theory gives the answers the methods must reproduce:

* continuous-time masked diffusion with the exact denoiser: the NELBO of every sequence equals
  -log p(x0), whatever the schedule (tests/test_diffusion_elbo.py has the proof), up to the
  references' eps cut-offs. So the methods' batch losses (MDLM: nats per token, averaged over
  all tokens; MD4: bits per token; GenMD4's reported ``nelbo``) and their ``eval_stats`` sums,
  averaged over draws of times and masks, must give the batch's exact -log p(x0), within the
  measured Monte-Carlo error. A wrong weight, normalisation, mask id or time scale fails it.
* the causal LM with the exact conditionals p(x_i | x_<i): its loss is exactly -log p(x0) / N,
  which checks the start-token shift.
* ``sample()``: with the exact denoiser the ancestral sampler's distribution p_T is known exactly
  (tests/markov_chain.AncestralSampler, from numpy-computed unmasking probabilities); the
  methods' samples must match it within Monte-Carlo noise.

Then GenMD4's state-dependent reverse step against its closed form, gradients reaching GenMD4's
exponents, FLOP counts, and each method trained through ``maskjax.train.loop.train``: a run
stopped at step 2 and resumed equals a straight 4-step run.
"""
from __future__ import annotations

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.config import load_config, method_config
from maskjax.methods import method_class
from tests.markov_chain import AncestralSampler, Corruptions, MarkovChain

V, N = 3, 6
MASK = V
DIFFUSION = ["mdlm", "md4", "md4-cosine", "genmd4"]


@pytest.fixture(scope="module")
def world():
    chain = MarkovChain.random(seed=5, vocab=V, length=N)
    all_z = np.asarray(list(itertools.product(range(V + 1), repeat=N)), np.int32)
    log_table = np.log(np.maximum(chain.posterior(all_z, MASK), 1e-30)).astype(np.float32)
    corr = Corruptions(chain, MASK)
    post = corr.denoiser()
    log_den_x0 = np.log(np.take_along_axis(post, corr.x0[..., None], axis=-1)[..., 0])
    return {"chain": chain, "log_table": jnp.asarray(log_table), "corr": corr,
            "sampler": AncestralSampler(corr, log_den_x0), "x_powers": V ** np.arange(N - 1, -1, -1)}


class Oracle:
    """Stands in for a network: the exact log p(x_n | z) [B, N, V] (+ a mask column for MDLM's V + 1 outputs)."""

    def __init__(self, log_table, mask_column: bool = False):
        self.log_table, self.mask_column = log_table, mask_column
        self.z_powers = jnp.asarray((V + 1) ** np.arange(N - 1, -1, -1), jnp.int32)

    def __call__(self, z, t=None, *, dropout_keys=None):
        out = self.log_table[jnp.sum(z * self.z_powers, axis=-1)]
        if self.mask_column:   # MDLM's SUBS must give it no mass, whatever its value
            out = jnp.concatenate([out, jnp.full(out.shape[:-1] + (1,), 3.0)], axis=-1)
        return out

    def power(self):
        """GenMD4's exponents at their init (1): then the exact denoiser does not depend on t."""
        return jnp.ones((V,), jnp.float32)


class CausalOracle:
    """The exact next-token log-probabilities of the chain given the shifted input [start, x_1..x_{N-1}]."""

    def __init__(self, chain):
        self.log_init = jnp.log(jnp.asarray(chain.init, jnp.float32))
        self.log_trans = jnp.log(jnp.asarray(chain.trans, jnp.float32))

    def __call__(self, ids, t=None, *, dropout_keys=None):
        rows = self.log_trans[jnp.minimum(ids, V - 1)]
        return jnp.where((ids == V)[..., None], self.log_init, rows)


def _method(name: str, **own):
    """A method on a V-symbol, N-long toy vocabulary (``md4-cosine``: MD4 with the cosine schedule)."""
    if name == "md4-cosine":
        name, own = "md4", dict(own, noise_schedule="cosine")
    cls = method_class(name)
    c = cls.fill_config(method_config(name))
    c.model.vocab_size, c.data.seq_len = V, N
    for k, v in own.items():
        c[name][k] = v
    return cls(c)


def _keys(seed, n):
    return jax.random.wrap_key_data(np.random.default_rng(seed).integers(0, 2 ** 32, (n, 2), dtype=np.uint32))


def _nats_per_sequence(name, loss, metrics):
    """A method's batch loss as nats per sequence."""
    if name == "mdlm":
        return float(loss) * N                         # nats per token, averaged over all tokens
    if name == "genmd4":
        return float(metrics["nelbo"]) * N * math.log(2)
    return float(loss) * N * math.log(2)               # MD4: bits per token


@pytest.mark.parametrize("name", DIFFUSION)
def test_nelbo_with_the_exact_denoiser_is_the_likelihood(world, name):
    method = _method(name)
    model = Oracle(world["log_table"], mask_column=name == "mdlm")
    x0 = world["chain"].sample(np.random.default_rng(0), 1024)
    exact = float(np.mean(-world["chain"].log_prob(x0)))
    both = jax.jit(lambda x, k1, k2: (method.loss(model, {"input_ids": x}, k1, True),
                                      method.eval_stats(model, {"input_ids": x}, k2, {"rate": 0.15})))
    losses, sums = [], []
    for r in range(24):
        (loss, metrics), stats = both(x0, _keys(r, len(x0)), _keys(100 + r, len(x0)))
        losses.append(_nats_per_sequence(name, loss, metrics))
        sums.append(float(stats["nll_sum"]) / len(x0))
        assert float(stats["count"]) == len(x0) * N
        np.testing.assert_allclose(float(stats["bits_sum"]), float(stats["nll_sum"]) / math.log(2), rtol=1e-6)
        assert 0 < float(stats["correct"]) <= len(x0) * N
    for label, values in (("loss", losses), ("eval_stats", sums)):
        mean, se = np.mean(values), np.std(values) / np.sqrt(len(values))
        print(f"{name} {label}: {mean:.4f} nats/seq vs exact {exact:.4f} (+- {se:.4f}; diff {mean - exact:+.4f})")
        # 0.02 nats per sequence: the references' eps cut-offs (t >= 1e-3, alpha in [eps, 1 - eps]).
        assert abs(mean - exact) < 4 * se + 0.02


def test_causal_lm_with_the_exact_conditionals_scores_the_likelihood(world):
    method = _method("causal_lm")
    x0 = world["chain"].sample(np.random.default_rng(1), 512)
    loss, metrics = method.loss(CausalOracle(world["chain"]), {"input_ids": x0}, _keys(0, len(x0)), False)
    exact = np.mean(-world["chain"].log_prob(x0)) / N
    np.testing.assert_allclose(float(loss), exact, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["bits_per_char"]), exact / math.log(2), rtol=1e-5)
    stats = method.eval_stats(CausalOracle(world["chain"]), {"input_ids": x0}, None, {})
    np.testing.assert_allclose(float(stats["nll_sum"]), exact * N * len(x0), rtol=1e-5)


def _unmask_probs(name, steps):
    """Each step's unmasking probability (alpha_s - alpha_t) / (1 - alpha_t), in numpy (float64)."""
    i = np.arange(steps)
    t = (steps - i) / steps
    s = t - 1.0 / steps
    if name == "mdlm":
        alpha = lambda u: 1.0 - u                                 # MDLM's ddpm_cache: move chance t
    else:
        t, s = np.cos(0.5 * np.pi * (1 - t)), np.cos(0.5 * np.pi * (1 - s))   # MD4's cosine grid
        eps = 1e-4
        alpha = (lambda u: (1 - 2 * eps) * (1 - u) + eps) if name == "md4" else (lambda u: 1 - (1 - eps) * u)
    return (alpha(s) - alpha(t)) / (1 - alpha(t))


@pytest.mark.parametrize("name", ["mdlm", "md4", "genmd4", "causal_lm"])
def test_samples_follow_the_exact_sampler_distribution(world, name):
    steps, n = 8, 8192
    method = _method(name, **({} if name == "causal_lm" else {"sample_steps": steps}))
    model = CausalOracle(world["chain"]) if name == "causal_lm" else Oracle(world["log_table"], name == "mdlm")
    samples = np.asarray(jax.jit(lambda k: method.sample(model, k, n))(jax.random.key(3)))
    assert samples.shape == (n, N) and samples.min() >= 0 and samples.max() < V
    p = world["corr"].p
    target = p if name == "causal_lm" else np.exp(world["sampler"].log_probs(_unmask_probs(name, steps)))
    emp = np.bincount(samples @ world["x_powers"], minlength=V ** N) / n
    rng = np.random.default_rng(0)
    noise = [0.5 * np.abs(rng.multinomial(n, target) / n - target).sum() for _ in range(20)]
    tv = 0.5 * np.abs(emp - target).sum()
    print(f"{name}: TV(samples, exact sampler) {tv:.4f}, noise {np.mean(noise):.4f} +- {np.std(noise):.4f}, "
          f"TV(samples, p) {0.5 * np.abs(emp - p).sum():.4f}")
    assert tv < np.mean(noise) + 5 * np.std(noise)


def test_genmd4_reverse_step_matches_its_closed_form():
    from maskjax.methods.genmd4 import genmd4_ancestral_step

    power = jnp.asarray([0.5, 1.0, 3.0])
    probs = np.asarray([0.2, 0.5, 0.3])
    s, t, eps, n = 0.4, 0.7, 1e-4, 40_000
    zt = jnp.full((1, n), MASK, jnp.int32).at[:, :5].set(2)
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (1, n, V))
    zs = np.asarray(genmd4_ancestral_step(_keys(7, 1), zt, logits, power, s, t, MASK, eps=eps))
    np.testing.assert_array_equal(zs[0, :5], 2)                        # observed tokens are copied
    w = np.asarray(power, np.float64)
    a_t, a_s = 1 - (1 - eps) * t ** w, 1 - (1 - eps) * s ** w
    expected = np.append(probs * (a_s - a_t) / (1 - a_t), 0.0)
    expected[-1] = 1 - expected.sum()                                   # stays masked
    freq = np.bincount(zs[0, 5:], minlength=V + 1) / (n - 5)
    assert np.all(np.abs(freq - expected) < 5 * np.sqrt(expected * (1 - expected) / n) + 1e-9)


def _tiny_config(name, path, lean: bool = True):
    rel = {"mdlm": "mdlm/owt.py", "md4": "md4/text8.py", "genmd4": "genmd4/text8.py",
           "causal_lm": "causal_lm/chars.py"}[name]
    c = load_config(f"configs/{rel}:smoke")
    c.data.path, c.data.eval_path, c.data.seq_len = str(path), None, 16
    c.progress, c.total_steps, c.checkpoint.every_steps, c.log_every_steps = False, 4, 2, 1
    # Compile time (the step and the state's initialisation, whose random draws XLA compiles one by one):
    # one block, a data-parallel mesh, and for MD4 / GenMD4 the network without the time embedding
    # and the outside embedding, which halves the draws. The resumed randomness is the method's either way.
    c.model.depth, c.mesh.data, c.mesh.fsdp = 1, 8, 1
    if lean and name in ("md4", "genmd4"):
        c[name].time_features, c.model.outside_embed = "none", False
    return c


@pytest.fixture(scope="module")
def text_file(shared_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("chars") / "shakespeare.txt"
    path.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    return path


class TableNet(nnx.Module):
    """A network without randomness to build: logits = table[z_n] (V + 1 inputs, V outputs per position)."""

    def __init__(self):
        self.table = nnx.Param(jnp.asarray(np.random.default_rng(0).normal(size=(V + 1, V)), jnp.float32))

    def __call__(self, z, t=None, *, dropout_keys=None):
        return self.table[...][z]


def test_genmd4_exponents_get_gradients():
    from maskjax.methods.genmd4 import GenMD4Model

    method = _method("genmd4")
    model = GenMD4Model(TableNet(), V, power_init=1.0)
    x0 = jnp.asarray(np.random.default_rng(2).integers(0, V, (64, N)))
    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def grads(p):
        value = lambda key: lambda p: method.loss(nnx.merge(graph, p, rest), {"input_ids": x0}, _keys(0, 64),
                                                  True)[1][key]
        return jax.grad(value("loss"))(p), jax.grad(value("nelbo"))(p)

    surrogate, bound = jax.jit(grads)(params)
    # The network's gradient is the bound's (the RLOO term stops its gradient through the losses and
    # log q does not depend on the network); the exponents get the REINFORCE term on top.
    np.testing.assert_allclose(np.asarray(surrogate["net"]["table"][...]), np.asarray(bound["net"]["table"][...]),
                               rtol=1e-5, atol=1e-7)
    rloo = np.asarray(surrogate["w"][...]) - np.asarray(bound["w"][...])
    assert np.all(np.isfinite(rloo)) and np.abs(rloo).max() > 1e-4 * np.abs(np.asarray(bound["w"][...])).max()


def test_ema_weights_follow_the_parameters_and_are_what_evaluation_uses():
    from maskjax.core.trees import to_tree
    from maskjax.methods.md4 import attach_ema

    for name, warmup in (("md4", False), ("mdlm", True)):
        method = _method(name, ema_decay=0.9)
        assert method.config[name].ema_warmup == warmup           # MDLM's ExponentialMovingAverage warms up
        model = attach_ema(TableNet())
        _, params, extra = nnx.split(model, nnx.Param, ...)
        params, extra = to_tree(params), to_tree(extra)
        np.testing.assert_array_equal(extra["ema"]["table"], params["table"])     # starts at the parameters
        new = {"table": params["table"] + 1.0}
        out = method.after_step(new, extra, jnp.int32(1))
        decay = min(0.9, 2 / 11) if warmup else 0.9                # (1 + n) / (10 + n) after n = 1 update
        np.testing.assert_allclose(out["ema"]["table"], params["table"] + (1 - decay), rtol=1e-6)
    # Evaluation reads the EMA weights; the training model is left alone.
    model = attach_ema(TableNet())
    model.ema["table"][...] = jnp.zeros((V + 1, V))
    method = _method("md4", ema_decay=0.9)
    z = jnp.asarray([[0, 1, MASK]])
    np.testing.assert_array_equal(np.asarray(method.eval_model(model)(z)), 0.0)
    assert np.abs(np.asarray(model(z))).max() > 0


def test_flops_count_the_passes(text_file):
    flops = {n: method_class(n)(_tiny_config(n, text_file, lean=False)).flops(8)
             for n in ("md4", "genmd4", "mdlm", "causal_lm")}
    assert all(f.train > 0 and f.tokens_per_example == 16 for f in flops.values())
    np.testing.assert_allclose(flops["genmd4"].forward, 2 * flops["md4"].forward)   # two masked draws
    # MD4's smoke model by hand, per example (x8): L = 16, width 2 x 16 = 32, FFN int(2 * 4 * 32 / 3) = 85 -> 96,
    # one layer (the test config's depth) of q/k/v/o 2*16*32*128 + scores and values 2*(2*16*16*32)
    # + GLU 3*(2*16*32*96).
    per_layer = 2 * 16 * 32 * 128 + 2 * (2 * 16 * 16 * 32) + 3 * (2 * 16 * 32 * 96)
    assert flops["md4"].parts["blocks"] == 8 * per_layer
    assert flops["md4"].parts["head"] == 8 * 2 * 16 * 32 * 27
    assert flops["md4"].parts["embed_proj"] == 8 * 2 * 16 * 16 * 32   # the 16-wide outside embedding


def _losses(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


# Each run compiles its train step (about 30 s of CPU): md4 runs by default, the others with -m slow.
@pytest.mark.parametrize("name", ["md4"] + [pytest.param(n, marks=pytest.mark.slow) for n in ("mdlm", "genmd4",
                                                                                               "causal_lm")])
def test_training_resumes_exactly(text_file, tmp_path, name):
    from maskjax.train.loop import train

    straight = train(_tiny_config(name, text_file), str(tmp_path / "straight"), run_evals=False)
    assert straight.step == 4
    train(_tiny_config(name, text_file), str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    split = train(_tiny_config(name, text_file), str(tmp_path / "split"), run_evals=False)
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert all(np.isfinite(list(a.values())))
    np.testing.assert_allclose([b[s] for s in range(1, 5)], [a[s] for s in range(1, 5)], rtol=1e-6)
    # The EMA weights (ema_decay 0.999 in the character runs) resume exactly too, and moved.
    ema_a, ema_b = (jax.tree.leaves(r.state["extra"]["ema"]) for r in (straight, split))
    params = jax.tree.leaves(straight.state["params"])
    assert len(ema_a) == len(params) > 0
    for x, y in zip(ema_a, ema_b):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-9)
    assert any(np.abs(np.asarray(e) - np.asarray(p)).max() > 0 for e, p in zip(ema_a, params))
