"""The shared transformer stack (maskjax.models.backbone): one block loop for every model.

- every encoder (ViT, AudioMAE, VideoMAE, MAE-ST), the MAE-family decoders and BERT's layers,
  built with ``scan_layers=True`` and given the unscanned weights (``stack_layers``), compute the
  same outputs; so does a scanned stack with per-block keys (BERT dropout);
- every remat policy leaves the outputs and gradients of a stack unchanged, scanned or not;
- the parameter paths stay those of the checkpoints and converters (``blocks``/``norm``,
  ``decoder_blocks``/``decoder_norm``, BERT's ``layers``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.masking import mask_from_noise, uniform_noise
from maskjax.models.backbone import Backbone, drop_path_rates
from maskjax.models.remat import REMAT_POLICIES
from maskjax.models.scan import stack_layers
from maskjax.core.state import to_tree

VIDEO = dict(num_frames=4, image_size=16)
DECODER = dict(decoder_width=16, decoder_depth=2, decoder_heads=2)


def _vit(**kw):
    from maskjax.models.vit import ViT
    return ViT("mu/4", image_size=16, rngs=nnx.Rngs(0), **kw)


def _mae(**kw):
    from maskjax.models.mae import MaskedAutoencoder
    return MaskedAutoencoder("mu/4", image_size=16, rngs=nnx.Rngs(0), **DECODER, **kw)


def _audio(**kw):
    from maskjax.models.audio_mae import AudioMAE
    return AudioMAE("mu/8", target_length=64, num_mel_bins=16, decoder_mode="global", rngs=nnx.Rngs(0),
                    **DECODER, **kw)


def _videomae(**kw):
    from maskjax.models.video_mae import VideoMAE
    return VideoMAE("mu/8", tubelet=2, rngs=nnx.Rngs(0), **VIDEO, **DECODER, **kw)


def _mae_st(**kw):
    from maskjax.models.mae_st import MaeST
    return MaeST("mu/8", t_patch=2, pred_t_dim=2, rngs=nnx.Rngs(0), **VIDEO, **DECODER, **kw)


# name -> (model factory, input, number of patch tokens)
MODELS = {
    "mae": (_mae, lambda: jax.random.normal(jax.random.key(3), (2, 16, 16, 3)), 16),
    "audiomae": (_audio, lambda: jax.random.normal(jax.random.key(3), (2, 64, 16, 1)), 16),
    "videomae": (_videomae, lambda: jax.random.normal(jax.random.key(3), (2, 4, 16, 16, 3)), 8),
    "mae_st": (_mae_st, lambda: jax.random.normal(jax.random.key(3), (2, 4, 16, 16, 3)), 8),
}


def _scanned_copy(model, make):
    """``make(scan_layers=True)`` carrying ``model``'s weights, stacked with ``stack_layers``."""
    scanned = make(scan_layers=True)
    graphdef, params, rest = nnx.split(scanned, nnx.Param, ...)
    nnx.replace_by_pure_dict(params, stack_layers(to_tree(nnx.state(model, nnx.Param))))
    return nnx.merge(graphdef, params, rest)


def _pure(model, fn):
    """``fn(model, *args)`` as a function of ``(params, *args)``: nnx transforms (scan, remat) need the
    module merged inside the JAX trace rather than closed over."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return lambda p, *args: fn(nnx.merge(graphdef, p, rest), *args), params


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_scanned_encoder_and_decoder_equal_unscanned(name):
    make, inputs, length = MODELS[name]
    x = inputs()
    mask = mask_from_noise(uniform_noise(jax.random.key(1), 2, length), 0.5)
    model = make()
    scanned = _scanned_copy(model, make)
    # The scanned stacks are one block with a leading "layers" axis, run inside nnx.scan.
    assert not isinstance(scanned.encoder.blocks, nnx.List) and not isinstance(scanned.decoder_blocks, nnx.List)
    assert scanned.encoder.blocks.mlp.fc1.kernel.get_metadata()["logical_axes"] == ("layers", "embed", "mlp")
    encode, params = _pure(scanned, lambda m, v: m.encoder(v)[0])
    assert "scan" in str(jax.make_jaxpr(encode)(params, x))

    forward = lambda m, v: (m.encoder(v, mask), m(v, mask)[0])
    (tokens, aux), pred = jax.jit(forward)(model, x)
    (tokens_s, aux_s), pred_s = jax.jit(forward)(scanned, x)
    _close(tokens_s, tokens)
    _close(pred_s, pred)
    assert aux_s.keys() == aux.keys()
    jax.tree.map(_close, aux_s, aux)


def test_scanned_vit_encoder_equals_unscanned_with_grads():
    images = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
    model = _vit()
    scanned = _scanned_copy(model, _vit)

    def loss_and_grads(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p, rest)(images)[0] ** 2)
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        return value, to_tree(grads)

    loss, grads = loss_and_grads(model)
    loss_s, grads_s = loss_and_grads(scanned)
    np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_s,
                 stack_layers(grads))


def test_scanned_bert_equals_unscanned_with_padding_and_dropout():
    from maskjax.models.bert import BertEncoder

    make = lambda **kw: BertEncoder("mu", rngs=nnx.Rngs(0), vocab_size=64, max_positions=16, **kw)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)))
    mask = jnp.ones_like(ids).at[1, 9:].set(0)
    keys = jax.random.split(jax.random.key(7), 2)  # per-example dropout keys, split per layer
    model = make()
    scanned = _scanned_copy(model, make)
    assert scanned.transformer.layers.query.kernel.shape[0] == 2
    for k in (None, keys):
        run = jax.jit(lambda m, k=k: m(ids, None, mask, dropout_keys=k)[0])
        _close(run(scanned), run(model))
    dropped = jax.jit(lambda m: m(ids, None, mask, dropout_keys=keys)[0])(model)
    assert not np.allclose(dropped, jax.jit(lambda m: m(ids, None, mask)[0])(model))


@pytest.mark.parametrize("scan", [False, True])
def test_remat_policies_keep_outputs_and_grads(scan):
    x = jax.random.normal(jax.random.key(0), (2, 5, 32))

    def run(policy):
        stack = Backbone(32, 3, 2, rngs=nnx.Rngs(0), remat=policy, scan_layers=scan)
        graphdef, params, rest = nnx.split(stack, nnx.Param, ...)
        fn = lambda p: nnx.merge(graphdef, p, rest).run_stack(x)
        loss = lambda p: jnp.sum(fn(p) ** 2)
        grad_jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        return jax.jit(fn)(params), to_tree(jax.jit(jax.grad(loss))(params)), grad_jaxpr

    out0, grads0, jaxpr0 = run("none")
    assert "checkpoint" not in jaxpr0 and "remat" not in jaxpr0
    for policy in REMAT_POLICIES[1:]:
        out, grads, jaxpr = run(policy)
        _close(out, out0)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, grads0)
        assert "checkpoint" in jaxpr or "remat" in jaxpr, policy


@pytest.mark.parametrize("name", ["audiomae", "videomae", "mae_st"])
def test_encoders_take_every_remat_policy(name):
    make, inputs, _ = MODELS[name]
    x = inputs()
    ref = jax.jit(lambda m: m.encoder(x)[0])(make())
    for policy in REMAT_POLICIES[1:]:
        encode, params = _pure(make(remat=policy), lambda m, v: m.encoder(v)[0])
        _close(jax.jit(encode)(params, x), ref)
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(encode(p, x))))(params))
        assert "checkpoint" in jaxpr or "remat" in jaxpr, policy


def test_drop_path_schedule_keys_and_scan_refusal():
    assert drop_path_rates(0.1, 3) == [0.0, 0.05, 0.1] and drop_path_rates(0.2, 1) == [0.0]
    stack = Backbone(32, 3, 2, rngs=nnx.Rngs(0), drop_path=0.1)
    assert [blk.drop_path for blk in stack.blocks] == [0.0, 0.05, 0.1]
    x = jax.random.normal(jax.random.key(1), (4, 3, 32))
    # A drop key switches stochastic depth on; the same key gives the same result.
    a, b = stack.run_blocks(x, jax.random.key(0)), stack.run_blocks(x, jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, stack.run_blocks(x))
    with pytest.raises(ValueError, match="scan_layers needs drop_path 0"):
        Backbone(32, 3, 2, rngs=nnx.Rngs(0), drop_path=0.1, scan_layers=True)
    from maskjax.models.mae_st import MaeSTEncoder
    with pytest.raises(ValueError, match="scan_layers needs drop_path 0"):
        MaeSTEncoder("mu/8", **VIDEO, rngs=nnx.Rngs(0), drop_path=0.1, scan_layers=True)


def test_parameter_paths_are_unchanged():
    def top(model):
        return set(to_tree(nnx.state(model, nnx.Param)))

    for name in MODELS:
        model = MODELS[name][0]()
        assert {"encoder", "decoder_blocks", "decoder_norm"} <= top(model), name
        enc = to_tree(nnx.state(model.encoder, nnx.Param))
        assert set(enc["blocks"]) == {"0", "1"} and set(enc["norm"]) == {"scale", "bias"}, name
    from maskjax.models.bert import BertEncoder
    bert = to_tree(nnx.state(BertEncoder("mu", rngs=nnx.Rngs(0), vocab_size=64), nnx.Param))
    assert set(bert["transformer"]) == {"layers"} and set(bert["transformer"]["layers"]) == {"0", "1"}


def test_scanned_mae_st_trunc_init_keeps_per_layer_statistics():
    # The official re-initialisation of the linears also applies to a stacked (scanned) block.
    enc = _mae_st(scan_layers=True, trunc_init=True).encoder
    fc1 = np.asarray(enc.blocks.mlp.fc1.kernel[...])
    assert fc1.shape == (2, 32, 128) and np.abs(fc1).max() <= 2.0 and 0.015 < fc1.std() < 0.025
    qkv = np.asarray(_mae_st(scan_layers=True).encoder.blocks.attn.qkv.kernel[...])
    bound = np.sqrt(6.0 / (32 + 32))  # xavier-uniform of one Linear(D, D), per layer and per q/k/v
    assert qkv.shape == (2, 32, 96) and np.abs(qkv).max() <= bound and np.abs(qkv).max() > 0.9 * bound
