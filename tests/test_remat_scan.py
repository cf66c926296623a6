"""Speed options that must not change the maths: remat policies, scanned layers, compile cache.

- every remat policy gives the no-remat loss and gradients, and really inserts a checkpoint;
- a scanned MAE (``model.scan_layers``) given the unscanned weights (stacked with
  ``stack_layers``) computes the same outputs and gradients; it trains, checkpoints and
  resumes; the converter refuses a scanned run with a clear message;
- ``--compile_cache`` / ``config.compile_cache_dir`` switch on JAX's persistent cache;
- the CPU matmul and the GPU GELU backward (hand-written backward passes) match autodiff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.methods.mae import mae_forward
from maskjax.models.mae import MaskedAutoencoder
from maskjax.models.remat import REMAT_POLICIES, resolve_remat
from maskjax.models.scan import is_scanned, stack_layers, unstack_layers
from maskjax.core.state import to_tree
from tests.conftest import REPO_ROOT

MICRO = dict(image_size=16, decoder_width=32, decoder_depth=2, decoder_heads=2)


def _mae(**kwargs):
    return MaskedAutoencoder("mu/4", rngs=nnx.Rngs(0), **MICRO, **kwargs)


def _inputs(b=3):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((b, 16, 16, 3), dtype=np.float32))
    noise = jnp.asarray(rng.uniform(size=(b, 16)).astype(np.float32))
    return images, noise


def _loss_and_grads(model, images, noise):
    """(loss, pixel predictions, grads as a pure dict, the gradient's jaxpr as text)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p):
        loss, pred, _, _ = mae_forward(nnx.merge(graphdef, p, rest), images, noise, 0.75, True)
        return loss, pred

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, pred), grads = jax.jit(grad_fn)(params)
    return loss, pred, to_tree(grads), str(jax.make_jaxpr(grad_fn)(params))


def test_resolve_remat_names_and_errors():
    assert [resolve_remat(v) for v in (False, None, True, "dots", "attention")] == [
        "none", "none", "full", "dots", "attention"]
    with pytest.raises(ValueError, match=r"config.remat.*'none', 'full', 'dots', 'attention'"):
        resolve_remat("sometimes")
    with pytest.raises(ValueError, match="unknown remat policy"):
        _mae(remat="sometimes")


@pytest.fixture(scope="module")
def no_remat():
    images, noise = _inputs()
    return (images, noise) + _loss_and_grads(_mae(remat=False), images, noise)


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_remat_policy_same_loss_and_grads(policy, no_remat):
    images, noise, loss0, _, grads0, jaxpr0 = no_remat
    loss, _, grads, jaxpr = _loss_and_grads(_mae(remat=policy), images, noise)
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, grads0)
    # The policy must really rematerialise something (a checkpoint in the gradient's program).
    assert "checkpoint" not in jaxpr0 and "remat" not in jaxpr0
    assert "checkpoint" in jaxpr or "remat" in jaxpr


def test_bert_remat_policies_same_grads():
    from maskjax.models.bert import BertEncoder

    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)))
    mask = jnp.ones_like(ids).at[1, 9:].set(0)

    def grads(remat):
        model = BertEncoder("mu", rngs=nnx.Rngs(0), vocab_size=64, max_positions=16, remat=remat)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        fn = lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(ids, None, mask)[0] ** 2)
        return to_tree(jax.jit(jax.grad(fn))(params))  # jitted: eager op-by-op dispatch is the slow part

    ref = grads(False)
    # "full" goes through the same remat_block as "dots" (and as the MAE cases above);
    # "attention" is BERT's own masked core.
    # Jitted, remat changes XLA's fusions and so the float32 rounding: gradients that are nearly zero
    # differ by rounding noise of the large ones, so the absolute tolerance follows the largest.
    atol = 1e-6 * max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(ref))
    for policy in ("dots", "attention"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol), grads(policy), ref)


def _scanned_copy(model, **kwargs):
    """A scanned MAE carrying ``model``'s weights (stacked with stack_layers)."""
    scanned = _mae(scan_layers=True, **kwargs)
    graphdef, params, rest = nnx.split(scanned, nnx.Param, ...)
    stacked = stack_layers(to_tree(nnx.state(model, nnx.Param)))
    nnx.replace_by_pure_dict(params, stacked)
    return nnx.merge(graphdef, params, rest)


def test_stack_unstack_round_trip_and_layout():
    model = _mae()
    tree = to_tree(nnx.state(model, nnx.Param))
    stacked = stack_layers(tree)
    assert not is_scanned(tree) and is_scanned(stacked)
    assert stacked["encoder"]["blocks"]["attn"]["qkv"]["kernel"].shape == (2, 32, 96)
    assert stacked["decoder_blocks"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 128)
    jax.tree.map(np.testing.assert_array_equal, unstack_layers(stacked), tree)
    # The scanned model's own tree has exactly the stacked layout, with a leading "layers" axis.
    scanned = _mae(scan_layers=True)
    assert jax.tree.map(jnp.shape, to_tree(nnx.state(scanned, nnx.Param))) == jax.tree.map(jnp.shape, stacked)
    var = scanned.encoder.blocks.attn.qkv.kernel
    assert var.get_metadata()["logical_axes"] == ("layers", "embed", "heads")


def test_scanned_equals_unscanned(no_remat):
    # Unscanned without remat (the fixture) vs scanned with the "dots" policy inside the scan body.
    images, noise, loss0, pred0, grads0, _ = no_remat
    scanned = _scanned_copy(_mae(remat=False), remat="dots")
    loss, pred, grads, jaxpr = _loss_and_grads(scanned, images, noise)
    assert "scan" in jaxpr and ("checkpoint" in jaxpr or "remat" in jaxpr)
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    np.testing.assert_allclose(pred, pred0, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), unstack_layers(grads), grads0)
    # Passing the scanned module into jax.jit as an argument works too (evaluators do this).
    out = jax.jit(lambda m, x: m.encoder(x)[1]["cls"])(scanned, images)
    assert out.shape == (3, 32) and bool(jnp.all(jnp.isfinite(out)))


def test_scan_refuses_drop_path():
    from maskjax.models.vit import ViT

    with pytest.raises(ValueError, match="scan_layers needs drop_path 0"):
        ViT("mu/4", image_size=16, rngs=nnx.Rngs(0), drop_path=0.1, scan_layers=True)


# 32 s of CI (two trainer compiles): with -m slow. The default suite keeps the scanned model's
# equivalence to the unscanned one and the drop-path refusal above.
@pytest.mark.slow
def test_scanned_trains_checkpoints_resumes_and_converter_refuses(tiny, tmp_path):
    from maskjax.convert.common import ConversionError
    from maskjax.convert.store import read_train_workdir
    from maskjax.train.loop import train

    config = tiny(**{"model.scan_layers": True, "remat": "dots", "total_steps": 4, "log_every_steps": 1,
                     "checkpoint.every_steps": 2})
    first = train(config, str(tmp_path), stop_at_step=2)
    assert first.step == 2 and is_scanned(jax.device_get(first.state["params"]))
    resumed = train(config, str(tmp_path))
    assert resumed.step == 4
    losses = [h["loss"] for h in first.history + resumed.history]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert json.load(open(tmp_path / "config.json"))["model"]["scan_layers"] is True
    with pytest.raises(ConversionError, match="scan_layers"):
        read_train_workdir(str(tmp_path))


@pytest.mark.slow  # a bench subprocess; enable_compile_cache's checks are the fast part below (CI budget)
def test_compile_cache_flag_fills_the_directory(tmp_path):
    from maskjax.train.compile_cache import enable_compile_cache

    cache = tmp_path / "cache"
    argv = [sys.executable, "-m", "maskjax.perf.bench", "--config", str(REPO_ROOT / "configs/mae/default.py") + ":smoke",
            "--steps", "1", "--warmup", "0", "--synthetic-data", "--compile-cache", str(cache)]
    for item in ("model.variant=mu/4", "data.image_size=16", "model.decoder_width=32", "model.decoder_depth=1",
                 "model.decoder_heads=2"):
        argv.append(f"--config.{item}")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "elsewhere"))
    subprocess.run(argv, check=True, env=env, cwd=REPO_ROOT, capture_output=True, timeout=300)
    assert any(cache.iterdir()) and not (tmp_path / "elsewhere").exists()
    not_a_dir = tmp_path / "a_file.txt"
    not_a_dir.write_text("x")
    with pytest.raises(ValueError, match="compile cache"):
        enable_compile_cache(str(not_a_dir))


@pytest.mark.parametrize("din,dout", [(24, 40), (40, 24)])  # both branches of matmul_cpu's backward
def test_cpu_dense_matches_plain_linear(din, dout):
    # layers.Dense (2-D matmul with matmul_cpu's custom backward on CPU) against x @ W + b by autodiff.
    from maskjax.models.layers import dense

    layer = dense(din, dout, ("embed", "mlp"), rngs=nnx.Rngs(0))
    kernel, bias = layer.kernel[...], layer.bias[...] + 0.1
    layer.bias[...] = bias
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 7, din), dtype=np.float32))
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 7, dout), dtype=np.float32))
    graphdef, params = nnx.split(layer, nnx.Param)
    ours = jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) * w), argnums=(0, 1))(params, x)
    ref = jax.grad(lambda k, b, x: jnp.sum((jnp.einsum("btd,de->bte", x, k) + b) * w), argnums=(0, 1, 2))(
        kernel, bias, x)
    np.testing.assert_allclose(ours[0]["kernel"][...], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[0]["bias"][...], ref[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[1], ref[2], rtol=1e-5, atol=1e-5)
    assert "custom_vjp" in str(jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p)(x))(params, x))


def test_gelu_erf_matches_exact_gelu():
    from maskjax.models.layers import gelu_erf

    x = jnp.linspace(-8.0, 8.0, 1001)
    # The erf form loses relative accuracy where GELU is tiny (x < -5), as PyTorch's: absolute 1e-6.
    np.testing.assert_allclose(gelu_erf(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(gelu_erf(v)))(x),
                               jax.grad(lambda v: jnp.sum(jax.nn.gelu(v, approximate=False)))(x), atol=2e-6)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_split_gelu_backward_matches_autodiff(dtype, tol):
    # dense_gelu through linear.bias_gelu_erf (the GPU default) against gelu_erf(layer(x)) by autodiff:
    # the same value; the same kernel, bias and input gradients (bf16: its float32 derivative is
    # at least as exact as autodiff's bf16 one, so they agree to bf16 rounding).
    from maskjax.models.layers import dense, dense_gelu

    layer = dense(24, 40, ("embed", "mlp"), rngs=nnx.Rngs(0), dtype=dtype)
    layer.bias[...] = jnp.linspace(-1.0, 1.0, 40)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 7, 24), dtype=np.float32))
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 7, 40), dtype=np.float32))
    graphdef, params = nnx.split(layer, nnx.Param)

    def loss(p, x, split):
        return jnp.sum(dense_gelu(nnx.merge(graphdef, p), x, split_backward=split).astype(jnp.float32) * w)

    for split in (True, False):
        assert ("name=bias_gelu_erf" in str(jax.make_jaxpr(lambda p: loss(p, x, split))(params))) == split
    np.testing.assert_array_equal(loss(params, x, True), loss(params, x, False))
    ours, ref = (jax.grad(loss, argnums=(0, 1))(params, x, split) for split in (True, False))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol * scale)


def test_mlp_and_bert_ffn_take_the_split_gelu_backward_when_enabled(monkeypatch):
    # On GPUs (use_split_gelu_backward) the ViT Mlp and BERT's "gelu" FFN go through bias_gelu_erf;
    # BERT's "gelu_tanh" keeps its own activation.
    from maskjax.models import bert, linear
    from maskjax.models.layers import Mlp

    x = jnp.ones((2, 3, 16))
    mlp = Mlp(16, 32, rngs=nnx.Rngs(0))
    cfg = lambda act: bert.text_config("Tiny", hidden=16, heads=2, ffn=32, vocab_size=50, hidden_act=act)
    layers = {act: bert.BertLayer(cfg(act), rngs=nnx.Rngs(0)) for act in ("gelu", "gelu_tanh")}
    mask = jnp.ones((2, 3), jnp.int32)
    # New callables for each trace: make_jaxpr caches traces by function.
    jaxprs = lambda: {"mlp": str(jax.make_jaxpr(lambda: mlp(x))()),
                      **{act: str(jax.make_jaxpr(lambda m=m: m(x, mask))()) for act, m in layers.items()}}
    before = jaxprs()
    monkeypatch.setattr(linear, "use_split_gelu_backward", lambda: True)
    after = jaxprs()
    assert not any("name=bias_gelu_erf" in j for j in before.values())
    assert "name=bias_gelu_erf" in after["mlp"] and "name=bias_gelu_erf" in after["gelu"]
    assert "name=bias_gelu_erf" not in after["gelu_tanh"]


def _media_model(kind: str, remat):
    """A tiny VideoMAE / MAE-ST / AudioMAE (swin decoder) and an input of its modality."""
    from maskjax.models.audio_mae import AudioMAE
    from maskjax.models.mae_st import MaeST
    from maskjax.models.video_mae import VideoMAE

    common = dict(decoder_width=16, decoder_depth=2, decoder_heads=2, remat=remat, rngs=nnx.Rngs(0))
    video = jax.random.normal(jax.random.key(5), (2, 4, 16, 16, 3))
    if kind == "videomae":
        return VideoMAE("mu/8", num_frames=4, image_size=16, tubelet=2, **common), video, 8
    if kind == "mae_st":
        return MaeST("mu/8", num_frames=4, image_size=16, t_patch=2, pred_t_dim=2, **common), video, 8
    common["decoder_heads"] = 4
    spec = jax.random.normal(jax.random.key(5), (2, 128, 32, 1))
    return AudioMAE("mu/8", target_length=128, num_mel_bins=32, swin_depth=2, **common), spec, 64


# They share backbone.apply_blocks: MAE-ST runs by default, the other two under -m slow (20 s each).
@pytest.mark.parametrize("kind", [pytest.param("videomae", marks=pytest.mark.slow), "mae_st",
                                  pytest.param("audiomae", marks=pytest.mark.slow)])
def test_media_models_take_every_remat_policy(kind):
    # The video/audio models share the Backbone block loop with ViT/MAE: every policy, same loss and gradients.
    from maskjax.masking import mask_from_noise, uniform_noise

    results = {}
    for policy in ("none", "dots", "attention"):
        model, x, length = _media_model(kind, policy)
        mask = mask_from_noise(uniform_noise(jax.random.key(1), 2, length), 0.5)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss_fn(p):
            pred, _ = nnx.merge(graphdef, p, rest)(x, mask)
            return jnp.mean(pred ** 2)

        loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
        results[policy] = (loss, to_tree(grads), str(jax.make_jaxpr(jax.grad(loss_fn))(params)))
    loss0, grads0, jaxpr0 = results.pop("none")
    assert "checkpoint" not in jaxpr0 and "remat" not in jaxpr0
    for loss, grads, jaxpr in results.values():
        np.testing.assert_allclose(loss, loss0, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, grads0)
        assert "checkpoint" in jaxpr or "remat" in jaxpr
    with pytest.raises(ValueError, match="unknown remat policy"):
        _media_model(kind, "sometimes")
