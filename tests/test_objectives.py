"""MAE pixel target and loss (specs/methods_vision.md section 1(b)), and the MAE method's loss."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from maskjax.config import base_config
from maskjax.masking import Mask
from maskjax.methods import make_method
from maskjax.methods.mae import MAE, compute_dtype, mae_forward
from maskjax.objectives.pixels import masked_mse, norm_pix_target, patch_stats

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


# --------------------------------------------------------------------------------------------
# references


def ref_norm_pix(t: np.ndarray) -> np.ndarray:
    """(t - mean) / sqrt(var + 1e-6), torch.var unbiased (N-1), per patch over the last axis."""
    t = t.astype(np.float64)
    n = t.shape[-1]
    mean = t.sum(-1, keepdims=True) / n
    var = ((t - mean) ** 2).sum(-1, keepdims=True) / (n - 1)
    return (t - mean) / np.sqrt(var + 1e-6)


def ref_masked_mse(pred, target, mask):
    per_patch = ((pred.astype(np.float64) - target) ** 2).mean(-1)
    m = mask.astype(np.float64)
    return (per_patch * m).sum() / m.sum(), per_patch


def ref_patchify_nchw(imgs_nchw: np.ndarray, p: int) -> np.ndarray:
    n, c, hh, ww = imgs_nchw.shape
    h, w = hh // p, ww // p
    x = np.einsum("nchpwq->nhwpqc", imgs_nchw.reshape(n, c, h, p, w, p))
    return x.reshape(n, h * w, p * p * c)


# --------------------------------------------------------------------------------------------
# norm_pix_target


def test_norm_pix_hand_case_unbiased_variance():
    # [1, 2, 3, 4]: mean 2.5, unbiased var 5/3 (biased would be 1.25)
    out = np.asarray(norm_pix_target(jnp.array([[1.0, 2.0, 3.0, 4.0]])))
    s = math.sqrt(5.0 / 3.0 + 1e-6)
    np.testing.assert_allclose(out[0], [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], rtol=1e-6)
    biased = 1.5 / math.sqrt(1.25 + 1e-6)
    assert abs(out[0, 3] - biased) > 0.1


def test_norm_pix_hand_case_eps_on_variance():
    # [0, 0, 0, 2e-3]: mean 5e-4, unbiased var = (3 * 2.5e-7 + 2.25e-6) / 3 = 1e-6, so
    # sqrt(var + eps) = sqrt(2e-6) and the target is [-1, -1, -1, 3] * sqrt(2) / 4.
    out = np.asarray(norm_pix_target(jnp.array([[[0.0, 0.0, 0.0, 2e-3]]])))
    expected = np.array([-1, -1, -1, 3]) * math.sqrt(2) / 4
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-3)
    # alternatives the spec rules out, all measurably different
    eps_on_std = 1.5e-3 / (math.sqrt(1e-6) + 1e-6)        # ~1.4985
    biased = 1.5e-3 / math.sqrt(7.5e-7 + 1e-6)             # ~1.1339
    no_eps = 1.5e-3 / math.sqrt(1e-6)                      # 1.5
    for alt in (eps_on_std, biased, no_eps):
        assert abs(out[0, 0, 3] - alt) > 0.05


def test_norm_pix_constant_patch_is_zero():
    out = np.asarray(norm_pix_target(jnp.full((2, 3, 12), 0.7)))
    np.testing.assert_allclose(out, 0.0, atol=1e-4)


@given(st.integers(0, 2**32 - 1), st.sampled_from([(2, 4, 12), (1, 3, 48)]), st.floats(1e-3, 10.0))
@SETTINGS
def test_norm_pix_matches_reference(seed, shape, scale):
    rng = np.random.default_rng(seed)
    t = (rng.normal(size=shape) * scale + rng.normal()).astype(np.float32)
    out = np.asarray(norm_pix_target(jnp.asarray(t)), np.float64)
    np.testing.assert_allclose(out, ref_norm_pix(t), rtol=2e-3, atol=2e-4)
    mean, var = (np.asarray(a, np.float64) for a in patch_stats(jnp.asarray(t)))
    np.testing.assert_allclose(mean[..., 0], t.astype(np.float64).mean(-1), rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(var[..., 0], t.astype(np.float64).var(-1, ddof=1), rtol=1e-3)


# --------------------------------------------------------------------------------------------
# masked_mse


def test_masked_mse_hand_case():
    # 1 sample, 3 patches of 2 values; per-patch mse: [1, 4, 12.5]; patches 1 and 2 hidden
    pred = jnp.array([[[1.0, 1.0], [2.0, 2.0], [0.0, 5.0]]])
    target = jnp.array([[[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = jnp.array([[False, True, True]])
    loss, per_patch = masked_mse(pred, target, mask)
    np.testing.assert_allclose(np.asarray(per_patch), [[1.0, 4.0, 12.5]])
    np.testing.assert_allclose(float(loss), (4.0 + 12.5) / 2)
    # float 0/1 masks are accepted too
    loss_f, _ = masked_mse(pred, target, mask.astype(jnp.float32))
    assert float(loss_f) == pytest.approx(8.25)


def test_masked_mse_ignores_visible_patches():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(2, 6, 5)).astype(np.float32)
    target = rng.normal(size=(2, 6, 5)).astype(np.float32)
    mask = np.array([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0]], bool)
    loss, _ = masked_mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    pred2 = pred.copy()
    pred2[~mask] += 100.0                       # corrupt visible patches only
    loss2, _ = masked_mse(jnp.asarray(pred2), jnp.asarray(target), jnp.asarray(mask))
    assert float(loss) == pytest.approx(float(loss2), rel=1e-6)
    np.testing.assert_allclose(float(loss), ref_masked_mse(pred, target, mask)[0], rtol=1e-5)


# --------------------------------------------------------------------------------------------
# the MAE method loss vs a from-scratch composition


def ref_mask(noise, ratio):
    ids_shuffle = np.argsort(noise, axis=1, kind="stable")
    ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
    keep = int(noise.shape[1] * (1 - ratio))
    mask = np.ones(noise.shape)
    mask[:, :keep] = 0
    mask = np.take_along_axis(mask, ids_restore, axis=1)
    return ids_shuffle[:, :keep], ids_restore, mask


def tiny_config():
    c = base_config()
    c.model.variant = "mu/4"
    c.data.image_size = 16
    # same shapes as tests/test_models.py's tiny model (shares its compiled init ops)
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 16, 2, 2
    return c


@pytest.fixture(scope="module")
def case():
    """Everything the MAE-loss tests need, computed in one jitted call (one compile)."""
    method = make_method(tiny_config())
    assert isinstance(method, MAE)
    model = method.build(nnx.Rngs(0))
    rng = np.random.default_rng(3)
    images = (rng.normal(size=(3, 16, 16, 3)) * 1.3 + 0.2).astype(np.float32)
    noise = rng.random((3, 16)).astype(np.float32)
    ids_keep, ids_restore, mask = ref_mask(noise, 0.75)
    ref_mask_obj = Mask(jnp.asarray(ids_keep, jnp.int32), jnp.asarray(ids_restore, jnp.int32),
                        jnp.asarray(mask > 0))
    keys = jax.random.split(jax.random.key(0), 3)

    @nnx.jit
    def run(m, x, n, mk, k):
        out = {"norm": mae_forward(m, x, n, 0.75, True), "raw": mae_forward(m, x, n, 0.75, False)}
        out["model_pred"] = m(x, mk)[0]
        loss, metrics = method.loss(m, {"image": x}, k, True)
        key_noise = jax.vmap(lambda kk: jax.random.uniform(kk, (16,)))(k)  # one uniform draw per example
        out["method"] = (loss, metrics["loss"], mae_forward(m, x, key_noise, 0.75, True)[0])
        return out

    out = run(model, jnp.asarray(images), jnp.asarray(noise), ref_mask_obj, keys)
    return method, images, mask, jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_forward_loss_matches_reference(case, norm_pix):
    _, images, mask, out = case
    loss, pred, target, out_mask = out["norm" if norm_pix else "raw"]
    np.testing.assert_array_equal(np.asarray(out_mask.mask), mask.astype(bool))
    # the prediction is the model's under the reference mask (the model itself is checked in test_models)
    ref_pred = out["model_pred"].astype(np.float64)
    np.testing.assert_allclose(pred, ref_pred, rtol=1e-6, atol=1e-6)
    # target: patchify (NCHW einsum of the spec), then optional per-patch normalisation
    ref_target = ref_patchify_nchw(images.transpose(0, 3, 1, 2).astype(np.float64), 4)
    if norm_pix:
        ref_target = ref_norm_pix(ref_target)
    np.testing.assert_allclose(target, ref_target, rtol=1e-4, atol=1e-4)
    # loss: mean over pixels per patch, then mask-weighted mean over patches
    per_patch = ((ref_pred - ref_target) ** 2).mean(-1)
    ref_loss = (per_patch * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-4)
    # the hidden-only average is not the all-patch average (the test can tell them apart)
    assert abs(per_patch.mean() - ref_loss) > 1e-3 * ref_loss


def test_mae_method_loss_uses_per_example_keys(case):
    method, _, _, out = case
    assert method.mask_ratio == 0.75 and method.norm_pix is True
    loss, metric, ref = out["method"]
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    assert float(metric) == pytest.approx(float(loss), rel=1e-6)


def test_mae_method_build_follows_config():
    c = base_config()
    c.model.variant = "mu/4"
    c.data.image_size = 8
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 8, 3, 2
    model = nnx.eval_shape(lambda: MAE(c).build(nnx.Rngs(0)))
    assert model.num_patches == 4 and model.patch_size == 4
    assert model.decoder_embed.kernel.shape == (32, 8)
    assert len(model.decoder_blocks) == 3
    assert model.decoder_pred.kernel.shape == (8, 4 * 4 * 3)
    assert compute_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(ValueError):
        compute_dtype("float8")
