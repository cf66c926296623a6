"""The method contract's pieces: registry rules, optional capabilities, rate masks with weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from maskjax.masking import hidden_counts, mask_from_counts, rate_mask
from maskjax.methods import Method, NotSupported, known_methods, method_class, register
from maskjax.objectives import weighted_token_mean


def test_builtin_methods_are_found_without_an_import_list():
    names = known_methods()
    for name in ("mae", "bert", "electra", "videomae", "videomae_v2", "mae_st", "audiomae"):
        assert name in names
        assert issubclass(method_class(name), Method)


def test_register_refuses_a_class_that_is_not_a_method():
    with pytest.raises(TypeError, match="subclass of maskjax.methods.Method"):
        register("not_a_method")(object)


def test_a_name_taken_by_another_class_is_refused():
    with pytest.raises(ValueError, match="'mae' is taken"):
        @register("mae")
        class Impostor(Method):  # noqa: F841
            pass


def test_optional_capabilities_say_what_is_missing():
    class Bare(Method):
        name = "bare"

    m = Bare(config=None)
    for call in (lambda: m.features(None, None), lambda: m.flops(8), lambda: m.reconstruct(None, None, None),
                 lambda: m.sample(None, None, 2), lambda: m.eval_stats(None, {}, None, {})):
        with pytest.raises(NotSupported, match="'bare'"):
            call()
    extra = {"x": jnp.ones(2)}
    assert m.after_step({}, extra, jnp.int32(1)) is extra
    assert m.encoder("model") == "model"


def test_every_builtin_method_has_features_and_flops(tiny):
    from maskjax.config import load_config

    mae = method_class("mae")(tiny())
    assert mae.flops(16).train > 0
    bert = method_class("bert")(load_config("configs/bert/bert.py:smoke"))
    assert bert.flops(8).train > 0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_rate_mask_hides_exactly_the_drawn_count(batch, length, seed):
    key = jax.random.key(seed)
    keys = jax.random.split(key, batch)
    rates = jax.random.uniform(jax.random.fold_in(key, 7), (batch,))
    hidden = np.asarray(rate_mask(keys, length, rates))
    assert hidden.shape == (batch, length) and hidden.dtype == bool
    expected = np.clip(np.ceil(np.asarray(rates, np.float32) * length), 0, length)
    np.testing.assert_array_equal(hidden.sum(axis=1), expected)


def test_hidden_counts_by_hand():
    np.testing.assert_array_equal(hidden_counts(jnp.array([0.0, 0.1, 0.5, 1.0]), 10, minimum=1), [1, 1, 5, 10])
    np.testing.assert_array_equal(hidden_counts(jnp.array([0.01]), 10), [1])  # ceil: any rate > 0 hides one


def test_mask_from_counts_hides_the_smallest_noise():
    noise = jnp.array([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.4, 0.6]])
    hidden = mask_from_counts(noise, jnp.array([2, 1]))
    np.testing.assert_array_equal(hidden, [[False, True, False, True], [True, False, False, False]])


def test_rate_mask_is_uniform_over_positions():
    # With rate 0.25 over 8 positions, each position is hidden with probability 1/4.
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    hidden = np.asarray(rate_mask(keys, 8, jnp.full((n,), 0.25)))
    freq = hidden.mean(axis=0)
    assert np.all(np.abs(freq - 0.25) < 4 * np.sqrt(0.25 * 0.75 / n))


def test_rate_mask_has_static_shapes_under_jit():
    f = jax.jit(lambda k, r: rate_mask(k, 16, r))
    keys = jax.random.split(jax.random.key(1), 3)
    a = f(keys, jnp.array([0.1, 0.5, 0.9]))
    b = f(keys, jnp.array([0.9, 0.5, 0.1]))  # same compiled program, other counts
    assert a.shape == b.shape == (3, 16)
    np.testing.assert_array_equal(np.asarray(a).sum(1), [2, 8, 15])


def test_weighted_token_mean_by_hand():
    per = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    w = jnp.array([[1, 0, 1], [0, 0, 1]])
    assert float(weighted_token_mean(per, w)) == pytest.approx((1 + 3 + 6) / 3)
    assert float(weighted_token_mean(per, jnp.zeros_like(w))) == 0.0
