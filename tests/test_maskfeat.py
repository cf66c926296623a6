"""MaskFeat (maskjax/methods/maskfeat.py): the masked-token MSE, the HOG head, the whole loss
against an independent numpy computation (official masks, numpy HOG transcription, numpy head),
training + exact resume through the trainer, features, FLOPs and config checks.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.config import apply_overrides, load_config
from tests.test_hog import reference_hog_label_2d

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "maskfeat"
# The usual tiny sizes (tests/conftest.py tiny_config): 16x16 images, 4x4 patches (a 4x4 grid),
# so the HOG cell is 4 pixels (one cell per token, 27 target values).
TINY = {"model.variant": "mu/4", "data.image_size": 16, "global_batch": 16, "maskfeat.hog_cell": 4,
        "progress": False}


def _config(arg: str = "smoke", **overrides):
    config = load_config(f"{CONFIGS / 'vit_b.py'}:{arg}")
    apply_overrides(config, {**TINY, **overrides})
    return config


@pytest.fixture(scope="module")
def tiny():
    """(method, model) of the tiny config, built once."""
    from maskjax.methods import make_method

    method = make_method(_config())
    # Built in one jitted program: eager initialisation compiles every init op on its own.
    return method, nnx.jit(lambda: method.build(nnx.Rngs(0)))()


def _images(batch: int = 4, size: int = 16, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, 3)), jnp.float32)


def test_loss_is_the_mse_of_the_masked_tokens():
    from maskjax.methods.maskfeat import maskfeat_loss

    rng = np.random.default_rng(1)
    pred = rng.normal(size=(3, 10, 7)).astype(np.float32)
    target = rng.normal(size=(3, 10, 7)).astype(np.float32)
    hidden = rng.random((3, 10)) < 0.4
    hidden[2] = False  # a row without masked tokens adds nothing
    # nn.MSELoss()(pred[mask], target[mask]): the mean over every (masked token, dim) pair.
    want = np.mean((pred[hidden] - target[hidden]) ** 2)
    got = float(maskfeat_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(hidden)))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Predictions of visible tokens do not enter the loss.
    moved = np.where(hidden[..., None], pred, pred + 100.0)
    assert float(maskfeat_loss(jnp.asarray(moved), jnp.asarray(target), jnp.asarray(hidden))) == pytest.approx(got)
    assert float(maskfeat_loss(jnp.asarray(pred), jnp.asarray(target), jnp.zeros((3, 10), bool))) == 0.0


def test_loss_matches_an_independent_numpy_computation(tiny):
    """Masks drawn with MaskFeat's generator arguments worked out by hand, the numpy transcription
    of the official HOG label, and the head (LayerNorm eps 1e-6 + Linear) in numpy on the last
    block's patch tokens before the final norm."""
    from maskjax.masking.block import blockwise_mask

    method, model = tiny
    images = _images()
    keys = jax.random.split(jax.random.key(7), 4)

    @nnx.jit
    def run(model, images, keys):
        loss, metrics = method.loss(model, {"image": images}, keys, True)
        # 4x4 grid, ratio 0.4: num_mask = round(6.4) = 6, min_num_patches = 6 // 5 = 1, aspect 0.3.
        hidden = jax.vmap(lambda k: blockwise_mask(k, 4, 4, 6, 1, None, 0.3))(keys).reshape(4, 16)
        _, aux = model.encoder(images, hidden)
        pred, _ = model(images, hidden)
        return loss, metrics, hidden, aux["block_tokens"], pred

    loss, metrics, hidden, block_tokens, model_pred = run(model, images, keys)
    hidden = np.asarray(hidden)
    assert 0 < hidden.sum(axis=1).min() and hidden.sum(axis=1).max() <= 6
    np.testing.assert_allclose(float(metrics["hidden_fraction"]), hidden.mean(), rtol=1e-6)

    tokens = np.asarray(block_tokens, np.float64)
    head = model.pred_head
    mean, var = tokens.mean(-1, keepdims=True), tokens.var(-1, keepdims=True)
    normed = (tokens - mean) / np.sqrt(var + 1e-6) * np.asarray(head.norm.scale[...]) + np.asarray(head.norm.bias[...])
    pred = normed @ np.asarray(head.projection.kernel[...]) + np.asarray(head.projection.bias[...])
    target = reference_hog_label_2d(np.asarray(images).transpose(0, 3, 1, 2), feat_size=4, pool=4)
    assert model_pred.shape == pred.shape == target.shape == (4, 16, 27) and model_pred.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(model_pred), pred, rtol=1e-4, atol=1e-5)
    want = np.mean((pred[hidden] - target[hidden]) ** 2)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_head_size_and_init(tiny):
    from maskjax.methods import make_method

    _, model = tiny
    head = model.pred_head
    assert head.norm.epsilon == 1e-6
    np.testing.assert_array_equal(np.asarray(head.norm.scale[...]), 1.0)
    np.testing.assert_array_equal(np.asarray(head.projection.bias[...]), 0.0)
    kernel = np.asarray(head.projection.kernel[...])
    assert abs(kernel.std() - 0.02) < 0.003 and abs(kernel.mean()) < 0.003
    # C * 9 * (patch / cell)^2 per token: 108 for the official 16x16 patches of 2x2 8x8-cells.
    for variant, size, cell, dims in [("mu/16", 32, 8, 108), ("mu/8", 16, 4, 108), ("mu/8", 16, 8, 27)]:
        other = make_method(_config(**{"model.variant": variant, "data.image_size": size, "maskfeat.hog_cell": cell}))
        abstract = nnx.eval_shape(lambda m=other: m.build(nnx.Rngs(0)))
        assert other.target_dim() == dims
        assert abstract.pred_head.projection.kernel.shape == (32, dims)


@pytest.mark.slow  # the trainer's compiles (~40-50 s cold on 2 cores); CI time budget
def test_train_and_resume_exactly(tmp_path):
    from maskjax.train.loop import train

    straight = train(_config(total_steps=4), str(tmp_path / "straight"))
    first = train(_config(total_steps=4), str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    resumed = train(_config(total_steps=4), str(tmp_path / "split"))
    assert first.step == 2 and resumed.step == straight.step == 4
    losses = lambda r: {h["step"]: h["loss"] for h in r.history}  # noqa: E731
    split = {**losses(first), **losses(resumed)}
    want = losses(straight)
    np.testing.assert_allclose([split[s] for s in range(1, 5)], [want[s] for s in range(1, 5)], rtol=1e-6)
    assert all(np.isfinite(want[s]) and want[s] > 0 for s in range(1, 5))
    # Block-wise masks hide at most round(16 x 0.4) = 6 of the 16 tokens of each image.
    assert all(0.0 < h["hidden_fraction"] <= 6 / 16 for h in straight.history)


def test_features_are_cls_and_pooled(tiny):
    method, model = tiny
    features = nnx.jit(lambda m, x: (method.features(m, x), method.features(m, x, "cls"), m.encoder(x)[1]))
    pooled, cls, aux = features(model, _images(3))
    assert pooled.shape == cls.shape == (3, 32)
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(aux["tokens"]).mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cls), np.asarray(aux["cls"]), rtol=1e-6)
    assert method.feature_name() == "pooled" and method.feature_name("cls") == "cls"
    assert method.encoder(model) is model.encoder


def test_flops_count_every_token():
    from maskjax.methods import make_method

    method = make_method(_config())
    count = method.flops(16)
    tokens, width, dims = 16, 32, 27
    assert count.parts["head"] == pytest.approx(16 * 2 * tokens * width * dims)
    assert count.parts["patch_embed"] == pytest.approx(16 * 2 * tokens * 48 * width)
    # 2 blocks on 1 + 16 tokens: projections 8 T D^2, attention 4 T^2 D, MLP 16 T D^2.
    t = tokens + 1
    assert count.parts["encoder"] == pytest.approx(16 * 2 * (24 * t * width ** 2 + 4 * t * t * width))


def test_configs_and_check_messages():
    from maskjax.errors import ConfigError
    from maskjax.methods import make_method
    from maskjax.train.validate import validate_config

    for arg in ("", "cifar", "cifar,smoke"):
        validate_config(load_config(f"{CONFIGS / 'vit_b.py'}:{arg}" if arg else str(CONFIGS / "vit_b.py")))
    official = load_config(str(CONFIGS / "vit_l.py"))
    assert official.model.variant == "L/16" and official.maskfeat.hog_cell == 8
    assert make_method(official).target_dim() == 108
    cifar = load_config(f"{CONFIGS / 'vit_b.py'}:cifar")
    assert cifar.data.image_size == 32 and make_method(cifar).target_dim() == 27

    def messages(**overrides):
        from maskjax.methods import method_class

        errors: list[str] = []
        method_class("maskfeat").check_config(_config(**overrides), errors)
        return errors

    assert messages() == []
    (msg,) = messages(**{"maskfeat.hog_cell": 3})
    assert "hog_cell 3 must divide the patch size 4" in msg and "[1, 2, 4]" in msg
    (msg,) = messages(**{"maskfeat.mask_ratio": 0.0})
    assert "mask_ratio must be in (0, 1)" in msg
    (msg,) = messages(**{"maskfeat.mask_ratio": 0.02})
    assert "masks round(16 x 0.02) = 0" in msg
    (msg,) = messages(**{"maskfeat.abs_pos": "rope"})
    assert "maskfeat.abs_pos 'rope' is unknown" in msg
    (msg,) = messages(**{"maskfeat.max_mask_patches_per_block": 0})
    assert "below the minimum block size" in msg
    with pytest.raises(ConfigError, match="hog_cell 8 must divide the patch size 4"):
        validate_config(_config(**{"maskfeat.hog_cell": 8}))
