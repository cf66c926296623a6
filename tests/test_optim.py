"""Learning-rate schedule, weight-decay grouping and AdamW (specs/methods_vision.md 0.5, 0.6, 1(d))."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from maskjax.models.mae import MaskedAutoencoder
from maskjax.train.optim import mae_decay_mask, make_optimizer, peak_lr, warmup_cosine
from maskjax.core.state import to_tree

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def ref_mae_lr(it: int, iters_per_epoch: int, base: float, warmup_ep: float, epochs: float, min_lr: float):
    """mae util/lr_sched.py: fractional epoch, linear warmup from 0, then half-cycle cosine."""
    ep = it / iters_per_epoch  # + epoch (it counts from the start of training here)
    if ep < warmup_ep:
        return base * ep / warmup_ep
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (ep - warmup_ep) / (epochs - warmup_ep)))


# --------------------------------------------------------------------------------------------
# peak_lr


def test_peak_lr_linear_scaling():
    assert peak_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)          # MAE pre-train recipe
    assert peak_lr(5e-4, 1024) == pytest.approx(2e-3)              # MAE ViT-B fine-tune
    assert peak_lr(1.5e-4, 256) == pytest.approx(1.5e-4)
    assert peak_lr(1e-3, 2048, 512) == pytest.approx(4e-3)         # SimMIM denominator


@given(st.floats(1e-6, 1.0), st.integers(1, 65536))
@SETTINGS
def test_peak_lr_property(base, batch):
    assert peak_lr(base, batch) == pytest.approx(base * batch / 256, rel=1e-12)


# --------------------------------------------------------------------------------------------
# warmup_cosine


@pytest.mark.parametrize("ipe,warmup_ep,epochs,base,min_lr", [
    (10, 4, 20, 2.4e-3, 0.0),     # MAE pre-train shape (40/800 epochs scaled down), min_lr 0
    (7, 1, 5, 1e-3, 1e-6),        # fine-tune shape: min_lr 1e-6
    (3, 0, 4, 0.1, 0.0),          # no warmup
])
def test_warmup_cosine_matches_mae_formula(ipe, warmup_ep, epochs, base, min_lr):
    total, warm = ipe * epochs, ipe * warmup_ep
    sched = warmup_cosine(base, warm, total, min_lr)
    steps = sorted({0, 1, max(warm - 1, 0), warm, warm + 1, (warm + total) // 2, total - 1, *range(0, total, 3)})
    for s in steps:
        ref = ref_mae_lr(s, ipe, base, warmup_ep, epochs, min_lr)
        assert float(sched(s)) == pytest.approx(ref, rel=1e-5, abs=1e-6 * base), s  # float32 schedule
    if warm:
        assert float(sched(0)) == 0.0                                 # warmup starts from 0
        assert float(sched(warm - 1)) == pytest.approx(base * (warm - 1) / warm, rel=1e-6)
    assert float(sched(warm)) == pytest.approx(base, rel=1e-6)        # the end of warmup is the peak
    last = ref_mae_lr(total - 1, ipe, base, warmup_ep, epochs, min_lr)
    assert float(sched(total - 1)) == pytest.approx(last, rel=1e-4)
    assert min_lr <= float(sched(total - 1)) < min_lr + 0.02 * (base - min_lr)


def test_warmup_cosine_hand_values():
    # peak 1, warmup 2, total 6, min 0: steps 0,1 -> 0, 0.5; step 2 -> 1; step 4 -> cos(pi/2) -> 0.5
    sched = warmup_cosine(1.0, 2, 6)
    got = [float(sched(s)) for s in range(6)]
    want = [0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # jit-able with a traced step (optax passes the count as an array)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(sched))(jnp.arange(6))), want, rtol=1e-6, atol=1e-7)


@given(st.integers(1, 50), st.integers(0, 20), st.integers(1, 60), st.floats(1e-5, 1.0), st.data())
@SETTINGS
def test_warmup_cosine_property(ipe, warmup_ep, extra_ep, base, data):
    epochs = warmup_ep + extra_ep
    total, warm = ipe * epochs, ipe * warmup_ep
    min_lr = data.draw(st.sampled_from([0.0, base * 1e-3]))
    sched = warmup_cosine(base, warm, total, min_lr)
    s = data.draw(st.integers(0, total - 1))
    ref = ref_mae_lr(s, ipe, base, warmup_ep, epochs, min_lr)
    assert float(sched(s)) == pytest.approx(ref, rel=2e-5, abs=1e-6 * base)


# --------------------------------------------------------------------------------------------
# weight-decay grouping (timm 0.3.2 add_weight_decay with an empty skip list)


@pytest.fixture(scope="module")
def abstract_params():
    model = nnx.eval_shape(lambda: MaskedAutoencoder("mu/4", image_size=16, decoder_width=16, decoder_depth=1,
                                                     decoder_heads=2, rngs=nnx.Rngs(0)))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return to_tree(params), to_tree(rest)


def test_mae_decay_mask_groups(abstract_params):
    params, buffers = abstract_params
    decay = mae_decay_mask(params)
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_d = dict((jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_flatten_with_path(decay)[0])
    seen = set()
    for path, leaf in flat_p:
        name = str(path[-1].key)
        key = jax.tree_util.keystr(path)
        seen.add(name)
        # the timm rule written out: no decay if ndim == 1 or the name ends with ".bias"
        expected = not (len(leaf.shape) == 1 or name == "bias")
        assert flat_d[key] is expected or flat_d[key] == expected, key
        # and the consequence spelled out per kind of parameter
        if name in ("cls_token", "mask_token"):
            assert leaf.shape[:2] == (1, 1) and flat_d[key]        # 1x1xD tokens ARE decayed
        elif name == "kernel":
            assert flat_d[key]
        elif name in ("bias", "scale"):
            assert not flat_d[key]                                  # biases and LayerNorm params
        else:
            pytest.fail(f"unexpected parameter {key}")
    assert {"cls_token", "mask_token", "kernel", "bias", "scale"} == seen
    # fixed position embeddings are buffers: not in the optimised tree at all
    flat_b = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(buffers)[0]]
    assert any("pos_embed" in k for k in flat_b)
    assert not any("pos_embed" in jax.tree_util.keystr(k) for k, _ in flat_p)


def test_mae_decay_mask_counts(abstract_params):
    params, _ = abstract_params
    decay = mae_decay_mask(params)
    n_decay = sum(bool(v) for v in jax.tree.leaves(decay))
    # kernels: patch embed + 2 encoder blocks x 4 + decoder embed + 1 decoder block x 4 + pred = 15,
    # plus cls_token and mask_token
    assert n_decay == 15 + 2
    assert len(jax.tree.leaves(decay)) == len(jax.tree.leaves(params))


# --------------------------------------------------------------------------------------------
# AdamW vs a hand-written PyTorch-style decoupled update


def adamw_config(**kw):
    d = dict(name="adamw", b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05)
    d.update(kw)
    c = ml_collections.ConfigDict(d)
    c.grad_clip = ml_collections.config_dict.placeholder(float)
    return c


def ref_adamw(params, grads_seq, lrs, decay, b1=0.9, b2=0.95, eps=1e-8, wd=0.05):
    """torch.optim.AdamW: p *= 1 - lr*wd (decayed params only), then the bias-corrected Adam step."""
    p = {k: v.astype(np.float64).copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (g, lr) in enumerate(zip(grads_seq, lrs), start=1):
        for k in p:
            if decay[k]:
                p[k] = p[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            step_size = lr / (1 - b1 ** t)
            denom = np.sqrt(v[k]) / math.sqrt(1 - b2 ** t) + eps
            p[k] = p[k] - step_size * m[k] / denom
    return p


def test_make_optimizer_adamw_matches_torch_semantics():
    rng = np.random.default_rng(0)
    flat = {
        "kernel": rng.normal(size=(3, 4)),
        "bias": rng.normal(size=(4,)),
        "cls_token": rng.normal(size=(1, 1, 4)),
        "scale": 1 + rng.normal(size=(4,)) * 0.1,
    }
    tree = {"layer": {"kernel": flat["kernel"], "bias": flat["bias"]}, "cls_token": flat["cls_token"],
            "norm": {"scale": flat["scale"]}}
    to_flat = lambda t: {"kernel": t["layer"]["kernel"], "bias": t["layer"]["bias"],  # noqa: E731
                         "cls_token": t["cls_token"], "scale": t["norm"]["scale"]}
    grads = [{k: rng.normal(size=v.shape) for k, v in flat.items()} for _ in range(2)]
    grads_tree = [{"layer": {"kernel": g["kernel"], "bias": g["bias"]}, "cls_token": g["cls_token"],
                   "norm": {"scale": g["scale"]}} for g in grads]
    # a large lr and wd so that decay (or its absence) is far above float32 noise
    schedule = lambda count: 0.1 * (count + 1)  # noqa: E731  step 0 uses 0.1, step 1 uses 0.2
    tx = make_optimizer(adamw_config(weight_decay=0.5), schedule)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    state = tx.init(params)
    for g in grads_tree:
        updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    got = {k: np.asarray(v, np.float64) for k, v in to_flat(params).items()}
    decay = {"kernel": True, "bias": False, "cls_token": True, "scale": False}
    want = ref_adamw(flat, grads, [0.1, 0.2], decay, wd=0.5)
    for k in flat:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # sanity: flipping the decay group of any param changes the result measurably
    for k in flat:
        flipped = ref_adamw(flat, grads, [0.1, 0.2], {**decay, k: not decay[k]}, wd=0.5)
        assert np.abs(flipped[k] - want[k]).max() > 1e-3, k


def test_make_optimizer_default_betas_are_mae():
    # with the base config's optim block (betas 0.9 / 0.95): one step against the reference
    from maskjax.config import base_config

    c = base_config().optim
    assert (c.b1, c.b2, c.weight_decay) == (0.9, 0.95, 0.05)
    rng = np.random.default_rng(1)
    p0 = {"kernel": rng.normal(size=(2, 3))}
    g = [{"kernel": rng.normal(size=(2, 3))}, {"kernel": rng.normal(size=(2, 3))}]
    tx = make_optimizer(c, lambda count: 0.1)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), p0)
    state = tx.init(params)
    for gi in g:
        u, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), gi), state, params)
        params = jax.tree.map(lambda a, b: a + b, params, u)
    want = ref_adamw(p0, g, [0.1, 0.1], {"kernel": True}, b1=0.9, b2=0.95, wd=0.05)
    np.testing.assert_allclose(np.asarray(params["kernel"]), want["kernel"], rtol=1e-5, atol=1e-7)
    # betas (0.9, 0.999) would give a measurably different second step
    other = ref_adamw(p0, g, [0.1, 0.1], {"kernel": True}, b1=0.9, b2=0.999, wd=0.05)
    assert np.abs(other["kernel"] - want["kernel"]).max() > 1e-4


def test_make_optimizer_unknown_name():
    with pytest.raises(ValueError):
        make_optimizer(adamw_config(name="adamax"), lambda c: 0.1)
