"""SimMIM: BEiT's relative position index, the layer-scale / biased-attention block, mask-token
replacement, pixel shuffle and the L1 loss against numpy transcriptions of the official code, the
config checks, and exact resumption through the trainer."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from maskjax.config import apply_overrides, load_config
from maskjax.methods import make_method
from maskjax.models.mim_vit import (LayerScaleBlock, MaskTokenViT, RelativePositionBias, cudnn_biased_attention,
                                    pixel_shuffle, relative_position_index)

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "simmim"
TINY = {"model.variant": "mu/4", "data.image_size": 16, "masking.mask_patch_size": 8, "global_batch": 16,
        "optim.base_lr": 1e-2, "progress": False}


def tiny_config(name: str = "vit_b_800ep.py", **overrides):
    """The recipe's smoke run with a micro ViT on 16x16 images (2x2 mask units of 2x2 tokens)."""
    config = load_config(f"{CONFIGS / name}:smoke")
    apply_overrides(config, {**TINY, **overrides})
    return config


def _filled(build, seed=0):
    """``build()``'s module with every variable drawn from numpy instead of its initialisers.

    No initialisation is compiled (XLA:CPU takes seconds for each model's random init), and random
    gammas, q/v biases, norms and relative-bias tables all matter in the comparisons below.
    """
    module = nnx.eval_shape(build)
    rng = np.random.default_rng(seed)
    leaves, tree = jax.tree.flatten(nnx.state(module))
    nnx.update(module, jax.tree.unflatten(tree, [0.3 * rng.standard_normal(x.shape).astype(np.float32)
                                                 for x in leaves]))
    return module


@pytest.fixture(scope="module")
def tiny():
    """(method, model) of the tiny recipe: SimMIM's ViT (q/v biases, layer scale, shared relative
    bias) with random parameters; run under jit below (op by op, every op would compile alone)."""
    method = make_method(tiny_config())
    return method, _filled(lambda: method.build(nnx.Rngs(0)))


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- numpy transcriptions of the official code ----------------------------------------------------------


def beit_relative_position_index(window):
    """BEiT / SimMIM ``RelativePositionBias.__init__`` (models/vision_transformer.py), torch -> numpy."""
    num_relative_distance = (2 * window[0] - 1) * (2 * window[1] - 1) + 3
    coords = np.stack(np.meshgrid(np.arange(window[0]), np.arange(window[1]), indexing="ij"))  # 2, Wh, Ww
    coords_flatten = coords.reshape(2, -1)
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
    relative_coords = relative_coords.transpose(1, 2, 0).copy()
    relative_coords[:, :, 0] += window[0] - 1
    relative_coords[:, :, 1] += window[1] - 1
    relative_coords[:, :, 0] *= 2 * window[1] - 1
    index = np.zeros((window[0] * window[1] + 1,) * 2, dtype=relative_coords.dtype)
    index[1:, 1:] = relative_coords.sum(-1)
    index[0, 0:] = num_relative_distance - 3
    index[0:, 0] = num_relative_distance - 2
    index[0, 0] = num_relative_distance - 1
    return index


def torch_pixel_shuffle(x, r):
    """``torch.nn.PixelShuffle(r)`` on NCHW: out[b, c, h*r + i, w*r + j] = x[b, c*r*r + i*r + j, h, w]."""
    b, c, h, w = x.shape
    out = x.reshape(b, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return out.reshape(b, c // (r * r), h * r, w * r)


def simmim_forward_loss(z, weight, bias, x, mask, patch_size, in_chans):
    """``SimMIM.forward`` after the encoder: 1x1 conv, PixelShuffle, masked L1 (models/simmim.py).

    z [B, C_enc, H, W] (the encoder's ``permute(0, 2, 1).reshape``), weight [out, C_enc], x NCHW,
    mask [B, H, W] in tokens.
    """
    x_rec = torch_pixel_shuffle(np.einsum("oc,bchw->bohw", weight, z) + bias[None, :, None, None], patch_size)
    mask = mask.repeat(patch_size, 1).repeat(patch_size, 2)[:, None]
    loss_recon = np.abs(x - x_rec)
    return (loss_recon * mask).sum() / (mask.sum() + 1e-5) / in_chans, x_rec


def np_layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def beit_block_forward(p, x, rel_pos_bias, heads):
    """SimMIM/BEiT ``Block.forward`` with ``gamma_1/2`` and ``Attention.forward`` (q/v biases, rel_pos_bias)."""
    b, n, c = x.shape
    h = np_layer_norm(x, p["norm1"]["scale"], p["norm1"]["bias"])
    qkv_bias = np.concatenate([p["attn"]["q_bias"], np.zeros_like(p["attn"]["v_bias"]), p["attn"]["v_bias"]])
    qkv = (h @ p["attn"]["qkv"]["kernel"] + qkv_bias).reshape(b, n, 3, heads, -1).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * (c // heads) ** -0.5) @ k.transpose(0, 1, 3, 2) + rel_pos_bias
    attn = np.exp(attn - attn.max(-1, keepdims=True))
    attn = attn / attn.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c) @ p["attn"]["proj"]["kernel"] + p["attn"]["proj"]["bias"]
    x = x + p["gamma_1"] * out
    h = np_layer_norm(x, p["norm2"]["scale"], p["norm2"]["bias"])
    h = h @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # nn.GELU (exact)
    return x + p["gamma_2"] * (h @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"])


def simmim_vit_forward(p, images, hidden, heads, patch):
    """``VisionTransformerForSimMIM.forward`` in numpy (no absolute positions, shared relative bias):
    patch embedding, ``x * (1 - w) + mask_token * w``, cls prepended, the blocks, final norm, cls dropped."""
    b, hh, ww, c = images.shape
    g = hh // patch
    # The conv as a matmul over each patch's pixels in (row, col, channel) order (PatchEmbed's kernel layout).
    patches = images.reshape(b, g, patch, g, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
    x = patches @ p["patch_embed"]["proj"]["kernel"] + p["patch_embed"]["proj"]["bias"]
    w = hidden.reshape(b, -1, 1).astype(np.float64)
    x = x * (1 - w) + p["mask_token"] * w
    x = np.concatenate([np.broadcast_to(p["cls_token"], (b, 1, x.shape[-1])), x], axis=1)
    table = p["rel_pos_bias"]["relative_position_bias_table"]
    bias = table[beit_relative_position_index((g, g)).reshape(-1)].reshape(g * g + 1, g * g + 1, -1)
    bias = bias.transpose(2, 0, 1)
    for i in sorted(p["blocks"], key=int):
        x = beit_block_forward(p["blocks"][i], x, bias, heads)
    x = np_layer_norm(x, p["norm"]["scale"], p["norm"]["bias"])
    return x[:, 1:]


def _np_params(module):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(module, nnx.Param)))


# --- relative position bias and the block -------------------------------------------------------------


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (4, 4), (14, 14)])
def test_relative_position_index_matches_beit(grid):
    np.testing.assert_array_equal(relative_position_index(*grid), beit_relative_position_index(grid))


def test_relative_position_bias_gathers_the_table_by_query_row_and_key_column():
    rpb = RelativePositionBias(2, 3, num_heads=2)
    n = rpb.relative_position_bias_table.shape[0]
    assert n == 3 * 5 + 3
    table = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    rpb.relative_position_bias_table[...] = jnp.asarray(table)
    bias = np.asarray(rpb())
    assert bias.shape == (2, 7, 7)
    index = beit_relative_position_index((2, 3))
    np.testing.assert_array_equal(bias, table[index].transpose(2, 0, 1))
    # By hand: patch query (0,0) [token 1] -> patch key (1,2) [token 6] is offset (-1, -2), entry (0*5 + 0);
    # the reverse offset (+1, +2) is the table's last offset entry 2*5 + 4 = 14.
    assert bias[1, 1, 6] == table[0, 1] and bias[1, 6, 1] == table[14, 1]
    assert bias[0, 0, 3] == table[n - 3, 0] and bias[0, 3, 0] == table[n - 2, 0] and bias[0, 0, 0] == table[n - 1, 0]


def test_layer_scale_block_with_bias_matches_numpy():
    block = _filled(lambda: LayerScaleBlock(8, 2, rngs=nnx.Rngs(0), qkv_bias="qv", layer_scale=0.1), seed=1)
    x, bias = _normal(2, (2, 5, 8)), _normal(3, (2, 5, 5))
    expected = beit_block_forward(_np_params(block), x.astype(np.float64), bias.astype(np.float64), heads=2)
    for impl in (None, "bhtd"):
        block.attn.attention_impl = impl
        got = nnx.jit(lambda blk, a, b: blk(a, b))(block, x, bias)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=str(impl))


def test_cudnn_padding_for_odd_lengths_keeps_the_attention():
    # Run through XLA here: the padded key gets -2**40 bias, the padded query row is dropped.
    q, k, v = (_normal(i, (2, 5, 2, 4)) for i in range(3))
    bias = _normal(4, (2, 5, 5))
    got, want = jax.jit(lambda q, k, v, b: (
        cudnn_biased_attention(q, k, v, b, implementation="xla"),
        jax.nn.dot_product_attention(q, k, v, bias=b[None], implementation="xla")))(q, k, v, bias)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_beit_init_truncates_at_one_sigma_and_rescales_by_depth():
    # rbg keys: the same initialisers, a random-number generator that XLA:CPU compiles much faster.
    enc = nnx.jit(lambda: MaskTokenViT("mu/4", image_size=16, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")),
                                       layer_scale=0.1, rel_pos_bias=True, qkv_bias="qv", abs_pos="none"))()
    for i, blk in enumerate(enc.blocks):
        bound = 0.02 / np.sqrt(2 * (i + 1))  # fix_init_weight: / sqrt(2 * layer_id), layer_id from 1
        for w in (blk.attn.proj.kernel, blk.mlp.fc2.kernel):
            w = np.abs(np.asarray(w[...]))
            assert w.max() <= bound + 1e-7 and w.max() > 0.8 * bound
        w = np.abs(np.asarray(blk.attn.qkv.kernel[...]))
        assert 0.016 < w.max() <= 0.02 + 1e-7 and blk.attn.qkv.bias is None
        assert not np.asarray(blk.attn.q_bias[...]).any() and not np.asarray(blk.mlp.fc1.bias[...]).any()
        np.testing.assert_array_equal(blk.gamma_1[...], np.full(32, 0.1, np.float32))
    for w in (enc.cls_token, enc.mask_token, enc.patch_embed.proj.kernel):
        assert 0.016 < np.abs(np.asarray(w[...])).max() <= 0.02 + 1e-7
    assert not np.asarray(enc.patch_embed.proj.bias[...]).any()
    assert not np.asarray(enc.rel_pos_bias.relative_position_bias_table[...]).any()
    # Scanned blocks carry a leading layer axis: each layer gets its own rescaling.
    scanned = nnx.eval_shape(lambda: MaskTokenViT("mu/4", image_size=16, rngs=nnx.Rngs(0), scan_layers=True))
    for layer in (scanned.blocks.attn.proj, scanned.blocks.mlp.fc2):
        layer.kernel.set_value(jnp.ones(layer.kernel.get_value().shape))
    scanned._fix_init_weight()
    for layer in (scanned.blocks.attn.proj, scanned.blocks.mlp.fc2):
        np.testing.assert_allclose(np.asarray(layer.kernel[...])[:, 0, 0], [1 / np.sqrt(2), 1 / 2], rtol=1e-6)


# --- mask-token replacement, pixel shuffle, loss --------------------------------------------------------


def test_only_hidden_tokens_are_replaced():
    enc = _filled(lambda: MaskTokenViT("mu/4", image_size=16, rngs=nnx.Rngs(0), abs_pos="sincos"))
    images = _normal(1, (2, 16, 16, 3))
    h = np.random.default_rng(2).random((2, 16)) < 0.5
    plain, masked, grad = nnx.jit(lambda e, im, hid: (
        e.embed(im), e.embed(im, hid), jax.grad(lambda x: e.embed(x, hid).sum())(im)))(enc, images, h)
    plain, masked = np.asarray(plain), np.asarray(masked)
    pos = np.asarray(enc.pos_embed[...])[0]
    np.testing.assert_array_equal(masked[:, 0], plain[:, 0])                     # cls untouched
    np.testing.assert_array_equal(masked[:, 1:][~h], plain[:, 1:][~h])           # visible untouched
    want = np.asarray(enc.mask_token[...])[0, 0] + pos[1:][np.nonzero(h)[1]]    # mask token + position
    np.testing.assert_allclose(masked[:, 1:][h], want, rtol=1e-6, atol=1e-6)
    # The official blend gives a hidden patch's pixels exactly zero gradient.
    pixels = np.repeat(np.repeat(h.reshape(2, 4, 4), 4, 1), 4, 2)
    assert not np.asarray(grad)[pixels].any() and np.asarray(grad)[~pixels].all()


def test_pixel_shuffle_by_hand_and_against_torch_order():
    x = jnp.arange(12.0).reshape(1, 1, 1, 12)  # C=3, r=2: channel c*4 + i*2 + j -> pixel (i, j), channel c
    np.testing.assert_array_equal(pixel_shuffle(x, 2)[0], [[[0, 4, 8], [1, 5, 9]], [[2, 6, 10], [3, 7, 11]]])
    y = _normal(0, (2, 3, 4, 3 * 9))  # NHWC
    want = torch_pixel_shuffle(y.transpose(0, 3, 1, 2), 3).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(pixel_shuffle(jnp.asarray(y), 3), want)


def test_l1_loss_by_hand():
    from maskjax.methods.simmim import l1_masked_pixels

    images = jnp.zeros((1, 2, 2, 3))
    recon = jnp.arange(12.0).reshape(1, 2, 2, 3)
    mask = jnp.array([[[0, 1], [0, 0]]])  # one pixel: |0 - (3, 4, 5)| summed = 12
    assert float(l1_masked_pixels(images, recon, mask)) == pytest.approx(12 / (1 + 1e-5) / 3, rel=1e-6)


@pytest.fixture(scope="module")
def outputs(tiny):
    """Everything the tests below read from the tiny model, from ONE jitted call (one compile):
    the forward pass with SimMIM's mask units and with BEiT blocks (at most 6 of 16 tokens, blocks
    of at least 2) and the encoder's tokens in it, ``reconstruct`` and ``features``."""
    method, model = tiny
    block = make_method(tiny_config(**{"masking.kind": "block", "simmim.block.num_masking_patches": 6,
                                       "simmim.block.min_num_patches": 2}))
    images = _normal(1, (3, 16, 16, 3))
    keys = jax.random.split(jax.random.key(2), 3)
    captions = []

    def run(m, im, ks):
        out = {}
        for kind, meth in (("patch_units", method), ("block", block)):
            loss, recon, hidden, aux = meth.forward(m, im, ks, train=False)
            out[kind] = {"loss": loss, "recon": recon, "hidden": hidden, "tokens": aux["tokens"]}
        figure = method.reconstruct(m, im, ks)
        captions.append(figure.pop("caption"))  # a string: taken out while tracing
        out["figure"] = figure
        out["cls"], out["pooled"] = method.features(m, im), method.features(m, im, pool="pooled")
        return out

    return nnx.jit(run)(model, images, keys), captions, images


@pytest.mark.parametrize("kind", ["patch_units", "block"])
def test_loss_matches_simmim_forward(tiny, outputs, kind):
    model = tiny[1]
    out, _, images = outputs
    h = np.asarray(out[kind]["hidden"])
    counts = h.reshape(3, -1).sum(1)
    if kind == "patch_units":  # 2x2 units of 2x2 tokens, ceil(4 * 0.6) = 3 hidden units = 12 tokens
        assert (counts == 12).all() and (h == h[:, ::2, ::2].repeat(2, 1).repeat(2, 2)).all()
    else:
        assert ((2 <= counts) & (counts <= 6)).all()
    tokens = simmim_vit_forward(_np_params(model.encoder), images.astype(np.float64), h, heads=2, patch=4)
    np.testing.assert_allclose(out[kind]["tokens"], tokens, rtol=1e-4, atol=1e-4)
    z = tokens.transpose(0, 2, 1).reshape(3, -1, 4, 4)  # the official permute(0, 2, 1).reshape(B, C, H, W)
    weight = np.asarray(model.decoder.kernel[...], np.float64).T
    want_loss, want_rec = simmim_forward_loss(z, weight, np.asarray(model.decoder.bias[...], np.float64),
                                              np.asarray(images, np.float64).transpose(0, 3, 1, 2), h.astype(float),
                                              4, 3)
    np.testing.assert_allclose(np.asarray(out[kind]["recon"]).transpose(0, 3, 1, 2), want_rec, rtol=1e-5, atol=1e-5)
    assert float(out[kind]["loss"]) == pytest.approx(want_loss, rel=1e-5)


# --- method contract ---------------------------------------------------------------------------------


def test_features_reconstruct_and_flops(tiny, outputs):
    method = tiny[0]
    out, captions, images = outputs
    assert out["cls"].shape == out["pooled"].shape == (3, 32) and not np.allclose(out["cls"], out["pooled"])
    figure = out["figure"]
    nan = np.isnan(np.asarray(figure["masked"]))
    # NaN exactly on the pixels of the hidden tokens (the same per-example keys as the forward pass).
    hidden = np.asarray(out["patch_units"]["hidden"]).repeat(4, 1).repeat(4, 2)
    np.testing.assert_array_equal(nan, np.broadcast_to(hidden[..., None], nan.shape))
    np.testing.assert_array_equal(np.asarray(figure["reconstruction"])[~nan], images[~nan])
    np.testing.assert_array_equal(np.asarray(figure["reconstruction"])[nan],
                                  np.asarray(out["patch_units"]["recon"])[nan])
    np.testing.assert_array_equal(figure["original"], images)
    assert "SimMIM" in captions[0]
    flops = method.flops(16)
    assert flops.tokens_per_example == 16 and flops.train == 3 * flops.forward > 0


def _errors(**overrides):
    from maskjax.methods import method_class

    errors: list[str] = []
    method_class("simmim").check_config(tiny_config(**overrides), errors)
    return errors


def test_check_config_messages():
    assert _errors() == []
    assert any("masking.kind" in e for e in _errors(**{"masking.kind": "random"}))
    assert any("mask_patch_size" in e and "multiple of the patch size 4" in e
               for e in _errors(**{"masking.mask_patch_size": 6}))
    assert any("masking.ratio" in e for e in _errors(**{"masking.ratio": 1.0}))
    assert any("num_masking_patches" in e and "[1, 16]" in e
               for e in _errors(**{"masking.kind": "block", "simmim.block.num_masking_patches": 75}))
    assert any("attention_impl='blockwise'" in e for e in _errors(**{"model.attention_impl": "blockwise"}))
    assert any("model.abs_pos" in e for e in _errors(**{"model.abs_pos": "rope"}))
    cifar = load_config(f"{CONFIGS / 'vit_b_800ep.py'}:cifar")
    cifar.evals.finetune = {"type": "finetune"}
    errors: list[str] = []
    make_method(cifar).check_config(cifar, errors)
    assert errors == []
    # The comparison's encoder is MAE's ViT: the fine-tune evaluator's own classifier loads it whole.
    assert make_method(cifar).finetune_encoder(image_size=32, drop_path=0.1, rngs=nnx.Rngs(0)) is None


def test_cifar_variants_scale_the_masks_to_the_8x8_grid():
    units = load_config(f"{CONFIGS / 'vit_b_800ep.py'}:cifar")
    assert (units.data.image_size, units.model.variant, units.masking.mask_patch_size) == (32, "Pico/4", 8)
    block = load_config(f"{CONFIGS / 'beit_block.py'}:cifar")
    assert block.masking.kind == "block"
    assert (block.simmim.block.num_masking_patches, block.simmim.block.min_num_patches) == (24, 5)
    paper = load_config(str(CONFIGS / "beit_block.py")).simmim.block
    assert (paper.num_masking_patches, paper.min_num_patches, paper.min_aspect) == (75, 16, 0.3)


@pytest.mark.slow  # the trainer's compiles (~40-50 s cold on 2 cores); CI time budget
def test_trains_and_resumes_exactly(tmp_path):
    from maskjax.train.loop import train

    config = lambda: tiny_config(**{"total_steps": 4})  # noqa: E731
    straight = train(config(), str(tmp_path / "straight"), run_evals=False)
    first = train(config(), str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    resumed = train(config(), str(tmp_path / "split"), run_evals=False)
    assert first.step == 2 and resumed.step == straight.step == 4
    losses = lambda r: {h["step"]: h["loss"] for h in r.history}  # noqa: E731
    split = {**losses(first), **losses(resumed)}
    np.testing.assert_allclose([split[s] for s in range(1, 5)], [losses(straight)[s] for s in range(1, 5)],
                               rtol=1e-6)
    assert all(np.isfinite(v) for v in split.values())
    # 12 of 16 tokens hidden in every image (3 of 2x2 units of 2x2 tokens).
    assert all(h["hidden_fraction"] == pytest.approx(0.75) for h in straight.history)


def test_finetune_keeps_layer_scale_and_copies_the_shared_bias_into_every_block(tiny):
    """SimMIM fine-tunes its own ViT: the classifier built from ``finetune_encoder`` loads every
    pre-trained weight (gammas and q/v biases included), each block's relative position table starts
    from the shared one (``load_pretrained``), so at load time its mean-pooled features equal the
    pre-trained encoder's; afterwards the per-block tables are independent parameters."""
    from maskjax.eval.finetune import load_encoder_params
    from maskjax.core.trees import to_tree
    from maskjax.models.classifier import ViTClassifier
    from maskjax.optim.layer_decay import finetune_decay_mask

    method, model = tiny
    encoder = method.encoder(model)
    size = tiny_config().data.image_size

    def build():
        rngs = nnx.Rngs(0)
        custom = method.finetune_encoder(image_size=size, drop_path=0.0, rngs=rngs)
        return ViTClassifier("mu/4", image_size=size, num_classes=3, pool="gap", rngs=rngs, encoder=custom)

    classifier = _filled(build, seed=1)
    assert isinstance(classifier.encoder, MaskTokenViT) and classifier.encoder.rel_pos_bias is None
    graphdef, params_state, rest = nnx.split(classifier, nnx.Param, ...)
    pretrained = classifier.encoder.adapt_pretrained(to_tree(nnx.state(encoder, nnx.Param)))
    params, missing = load_encoder_params(to_tree(params_state), pretrained)
    assert missing == []  # every classifier-encoder weight came from the pre-trained encoder
    nnx.replace_by_pure_dict(params_state, params)
    classifier = nnx.merge(graphdef, params_state, rest)
    images = jnp.asarray(_normal(3, (2, size, size, 3)))
    feats = jax.jit(lambda m, x: m.features(x))(classifier, images)
    _, aux = jax.jit(lambda e, x: e(x))(encoder, images)
    expected = classifier.fc_norm(aux["block_tokens"].mean(axis=1))
    np.testing.assert_allclose(np.asarray(feats), np.asarray(expected), rtol=1e-5, atol=1e-5)
    # Block 0's table is its own: changing it changes the features, and it is not weight-decayed.
    table = classifier.encoder.blocks[0].rel_pos_bias.relative_position_bias_table
    table[...] = table[...] + jnp.asarray(_normal(4, table.shape))  # not a constant: softmax ignores those
    assert not np.allclose(np.asarray(jax.jit(lambda m, x: m.features(x))(classifier, images)), np.asarray(feats))
    mask = to_tree(finetune_decay_mask(nnx.state(classifier, nnx.Param)))
    blocks = mask["encoder"]["blocks"]
    assert blocks[min(blocks)]["rel_pos_bias"]["relative_position_bias_table"] is False
