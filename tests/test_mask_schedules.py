"""Masking-rate schedules (specs/methods_text_gen.md section 5)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskjax.masking import mask_rate_schedule

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


def test_linear_dynamic_masking_paper_values():
    s = mask_rate_schedule("linear", 0.30, 0.15, total_steps=1000)
    assert float(s(0)) == pytest.approx(0.30, abs=1e-7)
    assert float(s(500)) == pytest.approx(0.225, abs=1e-7)   # halfway: (0.30 + 0.15) / 2
    assert float(s(250)) == pytest.approx(0.2625, abs=1e-7)
    assert float(s(1000)) == pytest.approx(0.15, abs=1e-7)
    assert float(s(5000)) == pytest.approx(0.15, abs=1e-7)   # clipped after T
    assert s(3).dtype == jnp.float32 and s(3).shape == ()


def test_cosine_endpoints_and_midpoint():
    s = mask_rate_schedule("cosine", 0.30, 0.15, total_steps=100)
    assert float(s(0)) == pytest.approx(0.30, abs=1e-7)
    assert float(s(50)) == pytest.approx(0.225, abs=1e-7)   # cos(pi/2) = 0
    assert float(s(25)) == pytest.approx(0.15 + 0.15 * (1 + math.cos(math.pi / 4)) / 2, abs=1e-7)
    assert float(s(100)) == pytest.approx(0.15, abs=1e-7)
    assert float(s(1000)) == pytest.approx(0.15, abs=1e-7)


def test_step_switches_at_fraction():
    s = mask_rate_schedule("step", 0.30, 0.15, total_steps=1000)   # StepScheduler: 0.5
    assert [float(s(t)) for t in (0, 499, 500, 999, 2000)] == pytest.approx(
        [0.30, 0.30, 0.15, 0.15, 0.15])
    s = mask_rate_schedule("step", 0.2, 0.4, total_steps=10, at=0.3)
    assert [float(s(t)) for t in (0, 2, 3, 9)] == pytest.approx([0.2, 0.2, 0.4, 0.4])


def test_constant():
    s = mask_rate_schedule("constant", 0.4)
    assert float(s(0)) == pytest.approx(0.4) and float(s(10**6)) == pytest.approx(0.4)
    assert float(mask_rate_schedule("constant", 0.4, 0.4)(7)) == pytest.approx(0.4)


@given(st.sampled_from(["linear", "cosine", "step"]), st.floats(0.01, 0.99), st.floats(0.01, 0.99),
       st.integers(1, 10_000))
@SETTINGS
def test_monotone_between_endpoints(kind, initial, final, total):
    s = mask_rate_schedule(kind, initial, final, total_steps=total)
    steps = np.unique(np.linspace(0, 2 * total, 64).astype(np.int64))
    values = np.asarray(jax.vmap(s)(jnp.asarray(steps)))
    lo, hi = min(initial, final), max(initial, final)
    assert np.all(values >= lo - 1e-6) and np.all(values <= hi + 1e-6)
    diffs = np.diff(values) * np.sign(final - initial)
    assert np.all(diffs >= -1e-6)   # monotone from initial towards final
    assert values[0] == pytest.approx(initial, abs=1e-6)
    assert values[-1] == pytest.approx(final, abs=1e-6)


def test_jit_with_traced_step():
    s = mask_rate_schedule("linear", 0.3, 0.15, total_steps=100)
    f = jax.jit(lambda step: s(step))
    assert float(f(jnp.int32(50))) == pytest.approx(0.225, abs=1e-7)
    assert float(f(jnp.int32(100))) == pytest.approx(0.15, abs=1e-7)


@pytest.mark.parametrize("args,kwargs", [
    (("exponential", 0.3, 0.15), dict(total_steps=10)),
    (("linear", 0.0, 0.15), dict(total_steps=10)),
    (("linear", 0.3, 1.0), dict(total_steps=10)),
    (("linear", 1.5, 0.15), dict(total_steps=10)),
    (("cosine", 0.3, float("nan")), dict(total_steps=10)),
    (("linear", 0.3, None), dict(total_steps=10)),
    (("linear", 0.3, 0.15), dict(total_steps=None)),
    (("linear", 0.3, 0.15), dict(total_steps=0)),
    (("step", 0.3, 0.15), dict(total_steps=10, at=1.5)),
    (("constant", 0.3, 0.2), {}),
    (("constant", -0.3), {}),
])
def test_rejects_bad_arguments(args, kwargs):
    with pytest.raises(ValueError):
        mask_rate_schedule(*args, **kwargs)
