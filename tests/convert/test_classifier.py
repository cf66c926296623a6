"""ViTClassifier: the MAE fine-tune head (global pool + fc_norm) and the cls-token head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.convert import ModelSpec, merge_model
from maskjax.models.classifier import ViTClassifier
from maskjax.models.layers import Buffer
from tests.convert.helpers import random_variables

# Compiled calls: on CPU one XLA program is much faster to build than one per operation.
_call = nnx.jit(lambda model, x, key: model(x, drop_key=key))


@pytest.fixture(scope="module")
def gap_model():
    # Initialised inside one compiled program: eager init compiles every initializer separately.
    return nnx.jit(lambda: ViTClassifier("mu/4", image_size=16, num_classes=10, drop_path=0.5, rngs=nnx.Rngs(0)))()


def test_global_pool_head_drops_the_final_norm_and_learns_positions(gap_model):
    model = gap_model
    assert model.encoder.norm is None and model.fc_norm is not None
    assert isinstance(model.encoder.pos_embed, nnx.Param)
    _, params, extra = nnx.split(model, nnx.Param, ...)
    assert "pos_embed" in nnx.to_pure_dict(params)["encoder"] and not jax.tree.leaves(extra)
    head = np.asarray(model.head.kernel[...])
    assert head.shape == (32, 10) and 1e-5 < head.std() < 4e-5 and not np.any(model.head.bias[...])
    logits, aux = _call(model, jnp.zeros((2, 16, 16, 3)), None)
    assert logits.shape == (2, 10) and aux["features"].shape == (2, 32)


def test_drop_path_is_active_only_with_a_key(gap_model):
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    a, _ = _call(gap_model, x, None)
    b, _ = _call(gap_model, x, None)
    c, _ = _call(gap_model, x, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_cls_head_and_fixed_positions():
    spec = ModelSpec(kind="classifier", variant="mu/4", image_size=16, num_classes=3, pool="cls",
                     learned_pos_embed=False)
    model = merge_model(spec, *random_variables(spec, seed=0))
    assert model.fc_norm is None and model.encoder.norm is not None
    assert isinstance(model.encoder.pos_embed, Buffer)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    tokens, _ = nnx.jit(lambda m, y: m.encoder(y))(model, x)  # the encoder's own forward: final norm, all tokens
    features = nnx.jit(lambda m, y: m.features(y))(model, x)
    np.testing.assert_allclose(features, tokens[:, 0], rtol=1e-6, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="pool must be one of"):
        ViTClassifier("mu/4", image_size=16, num_classes=3, pool="mean", rngs=nnx.Rngs(0))
