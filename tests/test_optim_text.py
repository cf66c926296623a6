"""BERT-family optimiser options: AdamW without bias correction, LAMB, linear warmup + decay.

References are written from google-research/bert ``optimization.py`` and ELECTRA's
``model/optimization.py`` (specs/methods_text_gen.md 1c, 6b), independently of optax.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from maskjax.train.optim import make_optimizer, make_schedule, peak_lr, warmup_linear


def bert_adam_reference(params, grads_seq, lrs, decay, b1=0.9, b2=0.999, eps=1e-6, wd=0.01):
    """``AdamWeightDecayOptimizer.apply_gradients``: no bias correction, decay added to the update."""
    p = {k: v.astype(np.float64).copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for g, lr in zip(grads_seq, lrs):
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            update = m[k] / (np.sqrt(v[k]) + eps)
            if decay[k]:
                update = update + wd * p[k]
            p[k] = p[k] - lr * update
    return p


def _optim(**kw):
    base = dict(name="adamw", b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, bias_correction=False)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _run(tx, params, grads_seq):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(params)
    for g in grads_seq:
        updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, params)
        params = jax.tree.map(lambda a, b: a + b, params, updates)
    return {k: np.asarray(v, np.float64) for k, v in params.items()}


def test_adamw_without_bias_correction_matches_bert():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(3)]
    lrs = [0.1, 0.2, 0.3]
    tx = make_optimizer(_optim(weight_decay=0.5), lambda count: 0.1 * (count + 1))
    got = _run(tx, params, grads)
    want = bert_adam_reference(params, grads, lrs, {"kernel": True, "bias": False}, wd=0.5)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # optax's bias-corrected AdamW takes a visibly different first step (by ~1/(1-b1) on m)
    corrected = _run(make_optimizer(_optim(weight_decay=0.5, bias_correction=True),
                                     lambda count: 0.1 * (count + 1)), params, grads)
    assert np.abs(corrected["kernel"] - want["kernel"]).max() > 1e-2


def test_lamb_builds_and_respects_decay_mask():
    rng = np.random.default_rng(1)
    params = {"kernel": rng.normal(size=(4, 4)), "bias": rng.normal(size=(4,))}
    zero = [{k: np.zeros_like(v) for k, v in params.items()}]
    # zero gradients: only weight decay moves the parameters, and never the bias
    got = _run(make_optimizer(_optim(name="lamb", weight_decay=0.1), lambda c: 0.01), params, zero)
    np.testing.assert_array_equal(got["bias"], params["bias"].astype(np.float32))
    assert np.abs(got["kernel"] - params["kernel"]).max() > 1e-4


@pytest.mark.parametrize("multiply", [False, True])
def test_warmup_linear_matches_bert_and_electra(multiply):
    peak, warm, total = 1e-4, 10, 100
    sched = warmup_linear(peak, warm, total, multiply_warmup=multiply)
    for step in [0, 1, 5, 9, 10, 11, 50, 99, 100, 120]:
        decayed = peak * (1 - min(step, total) / total)  # polynomial_decay(power=1) to 0
        if multiply:   # ELECTRA: lr * min(1, step / warmup)
            want = decayed * min(1.0, step / warm)
        else:          # BERT: warmup replaces the lr with peak * step / warmup
            want = peak * step / warm if step < warm else decayed
        assert float(sched(step)) == pytest.approx(want, rel=2e-5, abs=1e-12), step


def test_make_schedule_dispatch_and_unscaled_lr():
    c = ml_collections.ConfigDict(dict(schedule="linear", min_lr=0.0))
    assert float(make_schedule(c, 1.0, 0, 10)(5)) == pytest.approx(0.5)
    c.schedule = "cosine"
    assert float(make_schedule(c, 1.0, 0, 10)(5)) == pytest.approx(0.5)
    assert float(make_schedule(c, 1.0, 0, 10)(2)) > 0.85
    c.schedule = "exponential"
    with pytest.raises(ValueError, match="unknown optim.schedule"):
        make_schedule(c, 1.0, 0, 10)
    assert peak_lr(1e-4, 256, 0) == 1e-4 and peak_lr(1e-4, 256, None) == 1e-4
