"""The multistep (SimMIM) and constant (MDLM) lr schedules, by hand-computed values."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from maskjax.optim.schedules import make_schedule


def _optim(**fields):
    return ml_collections.ConfigDict(fields)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (5, 0.5), (10, 1.0), (49, 1.0), (50, 0.1), (79, 0.1),
                                            (80, 0.01), (100, 0.01)])
def test_multistep_multiplies_by_gamma_at_each_milestone(step, expected):
    schedule = make_schedule(_optim(schedule="multistep", milestones=(0.5, 0.8), gamma=0.1), 1.0, 10, 100)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-6)


def test_simmim_milestone_is_epoch_700_of_800():
    # 800 epochs of 100 steps: the x0.1 starts at step 70,000.
    schedule = make_schedule(_optim(schedule="multistep", milestones=(0.875,), gamma=0.1), 2e-4, 1000, 80_000)
    np.testing.assert_allclose([float(schedule(s)) for s in (69_999, 70_000)], [2e-4, 2e-5], rtol=1e-6)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (3, 0.3), (10, 1.0), (99, 1.0), (1000, 1.0)])
def test_constant_is_a_warmup_then_flat(step, expected):
    schedule = make_schedule(_optim(schedule="constant"), 1.0, 10, 100)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-6)


def test_unknown_schedule_names_the_known_ones():
    with pytest.raises(ValueError, match="multistep"):
        make_schedule(_optim(schedule="step_decay"), 1.0, 10, 100)


def test_no_weight_decay_names_exempt_those_parameters_only():
    import jax.numpy as jnp
    import optax

    from maskjax.optim.optimizers import make_optimizer

    params = {"pos_embed": jnp.ones((1, 4, 2)), "cls_token": jnp.ones((1, 1, 2)), "kernel": jnp.ones((2, 2)),
              "bias": jnp.ones((2,))}
    zeros = {k: jnp.zeros_like(v) for k, v in params.items()}

    def step(skip):
        optim = _optim(name="adamw", b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.5, no_weight_decay_names=skip)
        tx = make_optimizer(optim, lambda s: 1.0)
        updates, _ = tx.update(zeros, tx.init(params), params)
        return optax.apply_updates(params, updates)

    # With zero gradients only decoupled decay moves a parameter: p <- p - lr * wd * p = 0.5.
    plain = step(())
    assert {k: float(v.ravel()[0]) for k, v in plain.items()} == {
        "pos_embed": 0.5, "cls_token": 0.5, "kernel": 0.5, "bias": 1.0}
    skipped = step(("pos_embed", "cls_token"))
    assert {k: float(v.ravel()[0]) for k, v in skipped.items()} == {
        "pos_embed": 1.0, "cls_token": 1.0, "kernel": 0.5, "bias": 1.0}
