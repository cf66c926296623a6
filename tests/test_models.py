"""ViT / MAE models against specs/methods_vision.md sections 0.1, 0.3, 0.4 and 1.

Every expected value comes from an independent numpy reference written from the spec (explicit
loops, the spec's einsum strings, timm/MAE block formulas) using the module's own weights.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import settings
from scipy.special import erf

from maskjax.config import base_config
from maskjax.masking import Mask
from maskjax.models.layers import (
    Attention, Block, Mlp, PatchEmbed, layer_norm)
from maskjax.models.mae import MaskedAutoencoder
from maskjax.models.vit import VIT_SIZES, ViT, parse_variant
from tests.test_layers_geometry import ref_patchify_nchw, ref_sincos_2d

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)
RTOL, ATOL = 1e-4, 2e-5


# ============================================================================================
# numpy references


def np_(a) -> np.ndarray:
    return np.asarray(a[...] if isinstance(a, nnx.Variable) else a, dtype=np.float64)


def ref_layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)   # torch LayerNorm: biased variance
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def ref_gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def ref_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def ref_linear(x, lin):
    out = x @ np_(lin.kernel)
    if lin.bias is not None:
        out = out + np_(lin.bias)
    return out


def ref_attention(x, attn: Attention, heads: int):
    """timm Attention: qkv -> reshape(B, N, 3, heads, hd), softmax(q k^T / sqrt(hd)) v, proj."""
    b, t, d = x.shape
    hd = d // heads
    qkv = ref_linear(x, attn.qkv)                      # [B, T, 3D], features ordered (3, heads, hd)
    out = np.zeros((b, t, d))
    for bi in range(b):
        for h in range(heads):
            q = qkv[bi, :, 0 * d + h * hd: 0 * d + (h + 1) * hd]
            k = qkv[bi, :, 1 * d + h * hd: 1 * d + (h + 1) * hd]
            v = qkv[bi, :, 2 * d + h * hd: 2 * d + (h + 1) * hd]
            s = q @ k.T / math.sqrt(hd)
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s = s / s.sum(axis=-1, keepdims=True)
            out[bi, :, h * hd:(h + 1) * hd] = s @ v
    return ref_linear(out, attn.proj)


def ref_mlp(x, mlp: Mlp):
    return ref_linear(ref_gelu(ref_linear(x, mlp.fc1)), mlp.fc2)


def ref_ln(x, ln):
    return ref_layer_norm(x, np_(ln.scale), np_(ln.bias))


def ref_block(x, blk: Block, heads: int):
    """Pre-LN timm Block: x + attn(ln1(x)); x + mlp(ln2(x))."""
    x = x + ref_attention(ref_ln(x, blk.norm1), blk.attn, heads)
    return x + ref_mlp(ref_ln(x, blk.norm2), blk.mlp)


def ref_mask_from_noise(noise: np.ndarray, ratio: float) -> Mask:
    ids_shuffle = np.argsort(noise, axis=1, kind="stable")
    ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
    keep = int(noise.shape[1] * (1 - ratio))
    mask = np.ones(noise.shape)
    mask[:, :keep] = 0
    mask = np.take_along_axis(mask, ids_restore, axis=1).astype(bool)
    return Mask(jnp.asarray(ids_shuffle[:, :keep], jnp.int32), jnp.asarray(ids_restore, jnp.int32),
                jnp.asarray(mask))


def ref_encoder(vit: ViT, images_nhwc: np.ndarray, mask: Mask | None, heads: int):
    """MAE forward_encoder: patch_embed + pos[1:], mask, prepend cls + pos[0], blocks, norm."""
    p = vit.patch_size
    grid = images_nhwc.shape[1] // p
    patches = ref_patchify_nchw(images_nhwc.transpose(0, 3, 1, 2).astype(np.float64), p)
    x = patches @ np_(vit.patch_embed.proj.kernel) + np_(vit.patch_embed.proj.bias)
    pos = ref_sincos_2d(vit.width, grid, grid, cls_token=True)
    x = x + pos[None, 1:]
    if mask is not None:
        ids = np.asarray(mask.ids_keep)
        x = np.stack([x[b, ids[b]] for b in range(x.shape[0])])
    cls = np_(vit.cls_token)[0] + pos[None, :1]
    x = np.concatenate([np.broadcast_to(cls, (x.shape[0], 1, x.shape[2])), x], axis=1)
    for blk in vit.blocks:
        x = ref_block(x, blk, heads)
    return ref_ln(x, vit.norm)


def ref_decoder(mae: MaskedAutoencoder, latent: np.ndarray, mask: Mask, heads: int, width: int):
    """MAE forward_decoder, spec steps 1-6."""
    x = ref_linear(latent, mae.decoder_embed)
    b, n, d = x.shape
    ids_restore = np.asarray(mask.ids_restore)
    length = ids_restore.shape[1]
    mask_token = np_(mae.mask_token).reshape(d)
    body = np.concatenate([x[:, 1:], np.broadcast_to(mask_token, (b, length + 1 - n, d))], axis=1)
    body = np.stack([body[bi, ids_restore[bi]] for bi in range(b)])  # unshuffle
    x = np.concatenate([x[:, :1], body], axis=1)
    grid = int(round(math.sqrt(length)))
    x = x + ref_sincos_2d(width, grid, grid, cls_token=True)[None]
    for blk in mae.decoder_blocks:
        x = ref_block(x, blk, heads)
    x = ref_linear(ref_ln(x, mae.decoder_norm), mae.decoder_pred)
    return x[:, 1:]


def randomize_norms(module, seed=0):
    """Gives every LayerNorm non-trivial scale/bias so pre- vs post-LN orders are distinguishable."""
    rng = np.random.default_rng(seed)
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.LayerNorm):
            node.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, node.scale.shape), jnp.float32)
            node.bias[...] = jnp.asarray(rng.normal(0, 0.3, node.bias.shape), jnp.float32)


# tiny MAE used by several tests: mu/4 (width 32, depth 2, heads 2), image 16 -> grid 4, L = 16
DEC_W, DEC_DEPTH, DEC_HEADS = 16, 2, 2


@pytest.fixture(scope="module")
def tiny_mae():
    return MaskedAutoencoder("mu/4", image_size=16, decoder_width=DEC_W, decoder_depth=DEC_DEPTH,
                             decoder_heads=DEC_HEADS, rngs=nnx.Rngs(0))


# ============================================================================================
# 0.4 initialisation


def xavier_bound(fan_in, fan_out):
    return math.sqrt(6.0 / (fan_in + fan_out))


def test_init_statistics_tiny_mae(tiny_mae):
    m = tiny_mae
    n_kernels = n_ln = 0
    for path, node in nnx.iter_graph(m):
        if isinstance(node, nnx.LayerNorm):
            n_ln += 1
            assert node.epsilon == 1e-6, path
            np.testing.assert_array_equal(np.asarray(node.scale[...]), 1.0)
            np.testing.assert_array_equal(np.asarray(node.bias[...]), 0.0)
        elif isinstance(node, nnx.Linear):
            n_kernels += 1
            k = np.asarray(node.kernel[...])
            fan_in, fan_out = k.shape
            bound = xavier_bound(fan_in, fan_out)
            assert np.all(np.abs(k) <= bound), path
            assert np.abs(k).max() > 0.8 * bound, path  # uniform fills the range
            b = np.asarray(node.bias[...])
            if node is m.encoder.patch_embed.proj:
                # conv bias keeps the PyTorch default uniform(+-1/sqrt(fan_in)), fan_in = C*p*p
                bb = 1.0 / math.sqrt(3 * 4 * 4)
                assert np.all(np.abs(b) <= bb) and np.abs(b).max() > 0.5 * bb and np.any(b != 0)
            else:
                np.testing.assert_array_equal(b, 0.0, err_msg=str(path))
    # 2 enc + 2 dec blocks x 2 LN + enc norm + dec norm; 4 blocks x 4 linears + patch, embed, pred
    assert n_ln == 2 * 4 + 2
    assert n_kernels == 4 * 4 + 3
    # the patch-embed kernel is [C*p*p, D] (fan_in 48, fan_out 32) like the conv viewed as [D, C*p*p]
    assert m.encoder.patch_embed.proj.kernel.shape == (48, 32)


def test_xavier_variance_and_token_std_large_layers():
    # A decoder 1024 wide makes decoder_embed a 32x1024 kernel and mask_token 1024 values.
    m = MaskedAutoencoder("mu/4", image_size=8, decoder_width=1024, decoder_depth=0, decoder_heads=16,
                          rngs=nnx.Rngs(1))
    k = np.asarray(m.decoder_embed.kernel[...], np.float64)
    fan_in, fan_out = k.shape
    bound = xavier_bound(fan_in, fan_out)
    assert np.all(np.abs(k) <= bound) and np.abs(k).max() > 0.99 * bound
    np.testing.assert_allclose(k.var(), bound ** 2 / 3, rtol=0.05)     # = 2 / (fan_in + fan_out)
    assert abs(k.mean()) < 5 * math.sqrt(bound ** 2 / 3 / k.size)
    tok = np.asarray(m.mask_token[...], np.float64)
    assert tok.shape == (1, 1, 1024)
    np.testing.assert_allclose(tok.std(), 0.02, rtol=0.15)
    assert abs(tok.mean()) < 5 * 0.02 / math.sqrt(1024)
    # normal, not uniform(+-0.02): some values exceed one std
    assert np.abs(tok).max() > 0.04


def test_cls_token_std():
    # Pool cls tokens of several tiny encoders (32 values each) -> 512 draws of N(0, 0.02)
    vals = np.concatenate([
        np.asarray(ViT("mu/4", image_size=4, rngs=nnx.Rngs(s)).cls_token[...]).ravel() for s in range(16)])
    assert vals.shape == (512,)
    np.testing.assert_allclose(vals.std(), 0.02, rtol=0.2)
    assert abs(vals.mean()) < 5 * 0.02 / math.sqrt(512)


def test_layer_norm_eps_numerically():
    ln = layer_norm(8, rngs=nnx.Rngs(0))
    assert ln.epsilon == 1e-6
    x = np.random.default_rng(0).normal(size=(3, 8)) * 1e-3   # variance ~1e-6 ~ eps
    out = np.asarray(ln(jnp.asarray(x, jnp.float32)), np.float64)
    ref = ref_layer_norm(x, 1.0, 0.0, eps=1e-6)
    np.testing.assert_allclose(out, ref, rtol=2e-3, atol=1e-4)
    assert np.abs(ref - ref_layer_norm(x, 1.0, 0.0, eps=1e-5)).max() > 0.1  # eps 1e-5 would fail


def test_position_embeddings_fixed_and_sincos(tiny_mae):
    m = tiny_mae
    for owner, name in [(m.encoder, "pos_embed"), (m, "decoder_pos_embed")]:
        var = getattr(owner, name)
        assert isinstance(var, nnx.Variable) and not isinstance(var, nnx.Param)
    np.testing.assert_allclose(np.asarray(m.encoder.pos_embed[...]), ref_sincos_2d(32, 4, 4, True)[None],
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(m.decoder_pos_embed[...]), ref_sincos_2d(DEC_W, 4, 4, True)[None],
                               atol=1e-6)
    params = nnx.state(m, nnx.Param)
    names = {str(p) for path, _ in nnx.to_flat_state(params) for p in path}
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    assert "cls_token" in names and "mask_token" in names


# ============================================================================================
# attention, MLP, block


def jit_apply(module, *args):
    return np.asarray(nnx.jit(lambda mod, *a: mod(*a))(module, *args), np.float64)


def test_attention_matches_manual_softmax(tiny_mae):
    # encoder block of mu/4: width 32, 2 heads (enough to catch a (heads, 3) vs (3, heads) qkv layout)
    attn = nnx.clone(tiny_mae.encoder.blocks[0].attn)
    assert isinstance(attn, Attention) and attn.num_heads == 2
    rng = np.random.default_rng(0)
    attn.qkv.bias[...] = jnp.asarray(rng.normal(0, 0.5, (96,)), jnp.float32)  # make the bias matter
    attn.proj.bias[...] = jnp.asarray(rng.normal(0, 0.5, (32,)), jnp.float32)
    x = rng.normal(size=(2, 5, 32)).astype(np.float32) * 2
    out = jit_apply(attn, jnp.asarray(x))
    np.testing.assert_allclose(out, ref_attention(x.astype(np.float64), attn, 2), rtol=RTOL, atol=ATOL)


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError):
        Attention(10, 4, rngs=nnx.Rngs(0))


def test_mlp_uses_exact_erf_gelu(tiny_mae):
    mlp = nnx.clone(tiny_mae.encoder.blocks[0].mlp)   # 32 -> 128 -> 32
    assert isinstance(mlp, Mlp)
    mlp.fc1.kernel[...] = jnp.eye(32, 128)
    mlp.fc2.kernel[...] = jnp.eye(128, 32)
    x = np.linspace(-4, 4, 64).reshape(2, 32)
    out = jit_apply(mlp, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(out, ref_gelu(x), atol=2e-6)
    assert np.abs(ref_gelu(x) - ref_gelu_tanh(x)).max() > 1e-4  # the tanh approximation would fail


def test_block_is_pre_ln(tiny_mae):
    blk = nnx.clone(tiny_mae.decoder_blocks[0])   # width 16, 2 heads, mlp ratio 4
    assert isinstance(blk, Block)
    randomize_norms(blk, seed=2)
    x = np.random.default_rng(4).normal(size=(2, 6, 16)) * 1.5
    out = jit_apply(blk, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(out, ref_block(x, blk, 2), rtol=RTOL, atol=ATOL)
    # a post-LN composition is measurably different (the test can tell them apart)
    post = ref_ln(x + ref_attention(x, blk.attn, 2), blk.norm1)
    post = ref_ln(post + ref_mlp(post, blk.mlp), blk.norm2)
    assert np.abs(post - out).max() > 0.1
    assert blk.attn.qkv.kernel.shape == (16, 48) and blk.mlp.fc1.kernel.shape == (16, 64)


def test_patch_embed_is_linear_on_patchified_pixels(tiny_mae):
    pe = tiny_mae.encoder.patch_embed   # p = 4, C = 3, D = 32
    assert isinstance(pe, PatchEmbed)
    nchw = np.random.default_rng(0).normal(size=(2, 3, 8, 12))
    out = jit_apply(pe, jnp.asarray(nchw.transpose(0, 2, 3, 1), jnp.float32))
    # the official stride-p conv, written as explicit patch dot-products with the weight reshaped
    # from [p*p*C, D] (row, col, channel) to torch's [D, C, p, p]
    w = np_(pe.proj.kernel).reshape(4, 4, 3, 32).transpose(3, 2, 0, 1)
    ref = np.zeros((2, 6, 32))
    for n in range(2):
        for i in range(2):
            for j in range(3):
                patch = nchw[n, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
                ref[n, i * 3 + j] = np.einsum("chw,dchw->d", patch, w) + np_(pe.proj.bias)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


# ============================================================================================
# variants and config


@pytest.mark.parametrize("variant,width,depth,heads,patch", [
    ("B/16", 768, 12, 12, 16), ("L/16", 1024, 24, 16, 16), ("H/14", 1280, 32, 16, 14),
    ("S/16", 384, 12, 6, 16), ("Ti/16", 192, 12, 3, 16)])
def test_parse_variant_architecture_table(variant, width, depth, heads, patch):
    size, p = parse_variant(variant)
    assert (size.width, size.depth, size.heads, p) == (width, depth, heads, patch)
    assert size.mlp_ratio == 4.0


def test_parse_variant_all_table_entries():
    for name, size in VIT_SIZES.items():
        for p in (2, 8, 16):
            got, patch = parse_variant(f"{name}/{p}")
            assert got == size and patch == p
            assert size.width % size.heads == 0 and size.width % 4 == 0


@pytest.mark.parametrize("bad", ["", None, "B", "B16", "B/", "/16", "B/16/2", "X/16", "b/16", "B/1.5",
                                 "B-16", " B/16"])
def test_parse_variant_bad_strings(bad):
    with pytest.raises(ValueError):
        parse_variant(bad)


def test_parse_variant_rejects_zero_patch():
    with pytest.raises(ValueError):
        parse_variant("B/0")


def test_vit_rejects_image_not_divisible_by_patch():
    with pytest.raises(ValueError):
        nnx.eval_shape(lambda: ViT("mu/4", image_size=18, rngs=nnx.Rngs(0)))


def test_base_config_mae_defaults():
    c = base_config()
    assert c.method == "mae"
    assert c.model.variant == "B/16"
    assert (c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads) == (512, 8, 16)
    assert c.masking.ratio == 0.75
    assert c.data.image_size == 224
    o = c.optim
    assert (o.name, o.b1, o.b2, o.weight_decay) == ("adamw", 0.9, 0.95, 0.05)
    assert (o.base_lr, o.lr_batch_denominator, o.warmup_epochs, o.min_lr) == (1.5e-4, 256, 40.0, 0.0)
    assert c.global_batch == 4096
    assert not o.grad_clip


# ============================================================================================
# parameter count (abstract build, nothing allocated)


def count_block(d, hidden):
    ln = 2 * d
    qkv = d * 3 * d + 3 * d
    proj = d * d + d
    fc1 = d * hidden + hidden
    fc2 = hidden * d + d
    return ln + qkv + proj + ln + fc1 + fc2


def count_mae(d, depth, p, c, dd, ddepth, mlp=4):
    enc = (p * p * c * d + d) + d + depth * count_block(d, mlp * d) + 2 * d   # patch, cls, blocks, norm
    dec = (d * dd + dd) + dd + ddepth * count_block(dd, mlp * dd) + 2 * dd + (dd * p * p * c + p * p * c)
    return enc, dec


# (L/16 and H/14 trace for 10-20 s on a loaded CPU; their sizes are checked by parse_variant.)
@pytest.mark.parametrize("variant,d,depth,p", [("B/16", 768, 12, 16)])
def test_mae_parameter_count(variant, d, depth, p):
    model = nnx.eval_shape(lambda: MaskedAutoencoder(variant, image_size=224, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    enc_params = nnx.state(model.encoder, nnx.Param)
    enc_total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(enc_params))
    enc, dec = count_mae(d, depth, p, 3, 512, 8)
    assert enc_total == enc
    assert total == enc + dec
    if variant == "B/16":
        # 85.8M encoder + 26.1M decoder (ViT-B/16 without head: 85,798,656 incl. 151,296 pos-embed)
        assert enc == 85_798_656 - 197 * 768
    # fixed position embeddings exist but are not parameters
    grid = 224 // p
    assert model.encoder.pos_embed.shape == (1, grid * grid + 1, d)
    assert model.decoder_pos_embed.shape == (1, grid * grid + 1, 512)


# ============================================================================================
# encoder / decoder forward against the numpy reference


@pytest.fixture(scope="module")
def forward_case(tiny_mae):
    """One jitted call (compiling eagerly op by op is slow on a loaded CPU) of every forward path."""
    m = nnx.clone(tiny_mae)
    randomize_norms(m, seed=7)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    mask = ref_mask_from_noise(rng.random((3, 16)), 0.75)

    @nnx.jit
    def run(model, images, mask):
        tokens, aux = model.encoder(images, mask)
        full, _ = model.encoder(images)
        pred, aux2 = model(images, mask)
        return tokens, aux["cls"], full, pred, aux2["latent"]

    outs = [np.asarray(o, np.float64) for o in run(m, jnp.asarray(images), mask)]
    return m, images, mask, None, outs


def test_encoder_forward_matches_reference(forward_case):
    m, images, mask, _, (tokens, cls, full, _, _) = forward_case
    assert tokens.shape == (3, 1 + 4, 32)
    ref = ref_encoder(m.encoder, images, mask, heads=2)
    np.testing.assert_allclose(tokens, ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(cls, ref[:, 0], rtol=RTOL, atol=ATOL)
    # no mask: all tokens in order
    assert full.shape == (3, 17, 32)
    np.testing.assert_allclose(full, ref_encoder(m.encoder, images, None, heads=2), rtol=RTOL, atol=ATOL)


def test_decoder_and_full_forward_match_reference(forward_case):
    m, images, mask, latent, (tokens, _, _, pred, latent_out) = forward_case
    assert pred.shape == (3, 16, 4 * 4 * 3)
    np.testing.assert_array_equal(latent_out, tokens)
    ref_latent = ref_encoder(m.encoder, images, mask, heads=2)
    np.testing.assert_allclose(latent_out, ref_latent, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(pred, ref_decoder(m, ref_latent, mask, DEC_HEADS, DEC_W), rtol=RTOL, atol=1e-4)


def test_position_added_before_masking(tiny_mae):
    """With zero depth and identity norm the encoder output is patch_embed + pos of the kept ids."""
    vit = nnx.clone(tiny_mae.encoder)
    vit.blocks = nnx.List([])
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    mask = ref_mask_from_noise(rng.random((2, 16)), 0.5)
    # undo the final LayerNorm analytically: compare normalised versions of the expected tokens
    tokens = nnx.jit(lambda v, x, mk: v(x, mk)[0])(vit, jnp.asarray(images), mask)
    patches = ref_patchify_nchw(images.transpose(0, 3, 1, 2).astype(np.float64), 4)
    emb = patches @ np_(vit.patch_embed.proj.kernel) + np_(vit.patch_embed.proj.bias)
    pos = ref_sincos_2d(32, 4, 4, True)
    ids = np.asarray(mask.ids_keep)
    for b in range(2):
        want = np.concatenate([np_(vit.cls_token)[0] + pos[:1], emb[b, ids[b]] + pos[1 + ids[b]]])
        np.testing.assert_allclose(np.asarray(tokens[b]), ref_layer_norm(want, 1, 0), rtol=RTOL, atol=ATOL)
        wrong = np.concatenate([np_(vit.cls_token)[0] + pos[:1], emb[b, ids[b]] + pos[1:1 + len(ids[b])]])
        assert np.abs(ref_layer_norm(wrong, 1, 0) - np.asarray(tokens[b])).max() > 1e-2


def test_decoder_mask_tokens_at_hidden_positions(tiny_mae):
    """Zero-depth decoder: the prediction at a hidden position depends on the position only."""
    m = nnx.clone(tiny_mae)
    m.decoder_blocks = nnx.List([])
    rng = np.random.default_rng(6)
    latent = rng.normal(size=(2, 5, 32)).astype(np.float32)
    mask = ref_mask_from_noise(rng.random((2, 16)), 0.75)
    pred = np.asarray(nnx.jit(lambda mm, z, mk: mm.decode(z, mk))(m, jnp.asarray(latent), mask), np.float64)
    hidden = np.asarray(mask.mask)
    pos = ref_sincos_2d(16, 4, 4, True)
    tok = np_(m.mask_token).reshape(16)
    for b in range(2):
        for i in range(16):
            if hidden[b, i]:
                want = ref_linear(ref_ln(tok + pos[1 + i], m.decoder_norm), m.decoder_pred)
            else:  # visible: the decoder-embedded latent of that token
                k = list(np.asarray(mask.ids_keep)[b]).index(i)
                x = ref_linear(latent[b, 1 + k].astype(np.float64), m.decoder_embed) + pos[1 + i]
                want = ref_linear(ref_ln(x, m.decoder_norm), m.decoder_pred)
            np.testing.assert_allclose(pred[b, i], want, rtol=RTOL, atol=ATOL)
    # positions hidden in both samples give identical predictions, whatever the latents
    both = np.flatnonzero(hidden[0] & hidden[1])
    assert len(both) > 0
    np.testing.assert_allclose(pred[0, both], pred[1, both], atol=1e-6)
    # and different hidden positions give different predictions
    h0 = np.flatnonzero(hidden[0])
    assert np.abs(pred[0, h0[0]] - pred[0, h0[1]]).max() > 1e-3
