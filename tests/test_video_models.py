"""VideoMAE / V2: tubelet layout, position table, attention biases, targets, losses, the methods.

References are independent transcriptions of the official code (specs/methods_vision.md sections
0.2-0.4, 5 and 6): einops-style rearranges written with numpy on the PyTorch [B, C, T, H, W]
layout, ``torch.nn.functional.conv3d`` for the tubelet embedding, the spec formula for the table.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from maskjax.config import video_base_config
from maskjax.masking.video import decoded_ids, hidden_ids, num_decoded, running_cell_mask, tube_mask
from maskjax.methods.video_mae import VideoMAEMethod, VideoMAEV2Method, videomae_loss, videomae_v2_loss
from maskjax.models.layers import Attention
from maskjax.models.video_layers import TubeletEmbed, patchify_video, sinusoid_table, unpatchify_video
from maskjax.models.video_mae import VideoMAE
from maskjax.models.vit import parse_variant
from maskjax.objectives.video import IMAGENET_MEAN, IMAGENET_STD, videomae_target, weighted_token_mse

B, T, S, P, TUB = 2, 4, 16, 8, 2  # clip 4 x 16 x 16, tubelets 2 x 8 x 8 -> grid (2, 2, 2), L = 8


def rng_video(seed=0, shape=(B, T, S, S, 3)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def official_patches(video_bcthw: np.ndarray, t: int, p: int) -> np.ndarray:
    """``rearrange(x, 'b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c')`` in numpy: [B, L, t*p*p, C]."""
    b, c, tt, h, w = video_bcthw.shape
    x = video_bcthw.reshape(b, c, tt // t, t, h // p, p, w // p, p)
    x = x.transpose(0, 2, 4, 6, 3, 5, 7, 1)  # b, t, h, w, p0, p1, p2, c
    return x.reshape(b, (tt // t) * (h // p) * (w // p), t * p * p, c)


def tiny(**kw):
    args = dict(num_frames=T, image_size=S, tubelet=TUB, decoder_width=16, decoder_depth=1, decoder_heads=2,
                rngs=nnx.Rngs(0))
    args.update(kw)
    return VideoMAE("mu/8", **args)


# --- layers --------------------------------------------------------------------------------------------

def test_patchify_video_matches_official_rearrange_and_inverts():
    video = rng_video()
    ours = np.asarray(patchify_video(jnp.asarray(video), TUB, P))
    ref = official_patches(video.transpose(0, 4, 1, 2, 3), TUB, P).reshape(B, 8, -1)
    np.testing.assert_array_equal(ours, ref)
    back = unpatchify_video(jnp.asarray(ours), TUB, P, (2, 2, 2))
    np.testing.assert_array_equal(np.asarray(back), video)
    with pytest.raises(ValueError, match="tubelet"):
        patchify_video(jnp.zeros((1, 3, 16, 16, 3)), 2, 8)
    with pytest.raises(ValueError, match="patch"):
        patchify_video(jnp.zeros((1, 4, 12, 16, 3)), 2, 8)


def test_tubelet_embed_equals_conv3d_and_inits():
    torch = pytest.importorskip("torch")
    emb = TubeletEmbed(TUB, P, 3, 24, rngs=nnx.Rngs(1))
    kernel = np.array(emb.proj.kernel[...])
    bias = np.array(emb.proj.bias[...])
    # Conv3d weight [D, C, t, p, p] from the kernel [(p0 p1 p2 c), D].
    weight = kernel.reshape(TUB, P, P, 3, 24).transpose(4, 3, 0, 1, 2)
    video = rng_video(1)
    ref = torch.nn.functional.conv3d(torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3))),
                                     torch.from_numpy(np.ascontiguousarray(weight)),
                                     torch.from_numpy(bias), stride=(TUB, P, P))
    ref = ref.flatten(2).transpose(1, 2).numpy()  # HF / official: flatten(2).transpose(1, 2)
    np.testing.assert_allclose(np.asarray(emb(jnp.asarray(video))), ref, rtol=1e-5, atol=1e-5)
    # PyTorch's default init: U(+-1/sqrt(fan_in)) for weight and bias (std = bound/sqrt(3)).
    fan_in = TUB * P * P * 3
    bound = 1 / math.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    assert abs(kernel.std() - bound / math.sqrt(3)) < 0.05 * bound
    assert np.abs(bias).max() <= bound
    # MAE-ST: xavier-uniform on [D, fan_in].
    xav = np.asarray(TubeletEmbed(TUB, P, 3, 24, rngs=nnx.Rngs(2), init="xavier").proj.kernel[...])
    xb = math.sqrt(6 / (fan_in + 24))
    assert np.abs(xav).max() <= xb and np.abs(xav).max() > 0.9 * xb
    with pytest.raises(ValueError, match="init"):
        TubeletEmbed(TUB, P, 3, 24, rngs=nnx.Rngs(0), init="kaiming")


def test_sinusoid_table_matches_spec_formula():
    n, d = 12, 10
    ref = np.zeros((n, d))
    for pos in range(n):
        for j in range(d):
            angle = pos / 10000 ** (2 * (j // 2) / d)
            ref[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    table = sinusoid_table(n, d)
    assert table.dtype == np.float32
    np.testing.assert_array_equal(table, ref.astype(np.float32))


def test_qv_bias_attention_has_zero_k_bias():
    attn = Attention(8, 2, rngs=nnx.Rngs(0), qkv_bias="qv")
    assert attn.qkv.bias is None
    rng = np.random.default_rng(0)
    attn.q_bias[...] = jnp.asarray(rng.standard_normal(8), jnp.float32)
    attn.v_bias[...] = jnp.asarray(rng.standard_normal(8), jnp.float32)
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    w = np.asarray(attn.qkv.kernel[...])
    q = x @ w[:, :8] + np.asarray(attn.q_bias[...])
    k = x @ w[:, 8:16]  # no k bias
    v = x @ w[:, 16:] + np.asarray(attn.v_bias[...])
    heads = lambda a: a.reshape(1, 5, 2, 4).transpose(0, 2, 1, 3)
    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / 2.0
    s = np.exp(s - s.max(-1, keepdims=True))
    o = (s / s.sum(-1, keepdims=True)) @ heads(v)
    o = o.transpose(0, 2, 1, 3).reshape(1, 5, 8)
    ref = o @ np.asarray(attn.proj.kernel[...]) + np.asarray(attn.proj.bias[...])
    np.testing.assert_allclose(np.asarray(attn(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-5)


# --- targets and losses --------------------------------------------------------------------------------

def test_target_normalisation_matches_official_engine():
    video = np.random.default_rng(3).random((B, T, S, S, 3)).astype(np.float32)  # [0, 1] pixels
    # engine_for_pretraining.py: per token and channel, (x - mean) / (std_unbiased + 1e-6), then
    # rearrange 'b n p c -> b n (p c)'.
    x = official_patches(video.transpose(0, 4, 1, 2, 3).astype(np.float64), TUB, P)
    ref = (x - x.mean(-2, keepdims=True)) / (x.std(-2, ddof=1, keepdims=True) + 1e-6)
    ours = np.asarray(videomae_target(patchify_video(jnp.asarray(video), TUB, P), 3))
    np.testing.assert_allclose(ours, ref.reshape(B, 8, -1), rtol=1e-4, atol=1e-4)
    raw = np.asarray(videomae_target(patchify_video(jnp.asarray(video), TUB, P), 3, normalize=False))
    np.testing.assert_array_equal(raw, official_patches(video.transpose(0, 4, 1, 2, 3), TUB, P).reshape(B, 8, -1))


def test_weighted_token_mse_matches_official_formula():
    rng = np.random.default_rng(4)
    pred, target = rng.standard_normal((2, 6, 5)), rng.standard_normal((2, 6, 5))
    w = rng.random((2, 6)) > 0.4
    loss, per = weighted_token_mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(w))
    per_ref = ((pred - target) ** 2).mean(-1)
    np.testing.assert_allclose(np.asarray(per), per_ref, rtol=1e-6)
    np.testing.assert_allclose(float(loss), (per_ref * w).sum() / w.sum(), rtol=1e-6)


# --- the model -----------------------------------------------------------------------------------------

def test_model_shapes_init_and_buffers():
    model = tiny()
    assert model.grid == (2, 2, 2) and model.num_patches == 8
    video = jnp.asarray(rng_video())
    mask = tube_mask(jax.random.split(jax.random.key(0), B), B, 2, 4, 0.5)
    pred, aux = model(video, mask)
    assert pred.shape == (B, 4, TUB * P * P * 3)
    assert aux["tokens"].shape == (B, 4, 32) and aux["pooled"].shape == (B, 32)
    np.testing.assert_array_equal(np.asarray(aux["decode_ids"]), np.asarray(hidden_ids(mask)))
    tokens, enc_aux = model.encoder(video)
    assert tokens.shape == (B, 8, 32)
    np.testing.assert_allclose(np.asarray(enc_aux["pooled"]), np.asarray(tokens).mean(1), rtol=1e-6)
    # Fixed tables, no cls slot; mask token within +-0.02; encoder_to_decoder has no bias and
    # PyTorch's default bound; heads q/v-biased; LayerNorm eps 1e-6.
    np.testing.assert_array_equal(np.asarray(model.encoder.pos_embed[...][0]), sinusoid_table(8, 32))
    np.testing.assert_array_equal(np.asarray(model.decoder_pos_embed[...][0]), sinusoid_table(8, 16))
    mt = np.asarray(model.mask_token[...])
    assert np.abs(mt).max() <= 0.02 and mt.std() > 0.005
    assert model.encoder_to_decoder.bias is None
    assert np.abs(np.asarray(model.encoder_to_decoder.kernel[...])).max() <= 1 / math.sqrt(32)
    for block in list(model.encoder.blocks) + list(model.decoder_blocks):
        assert block.attn.qkv.bias is None and hasattr(block.attn, "v_bias")
        assert block.norm1.epsilon == 1e-6
    assert float(jnp.abs(model.decoder_pred.bias[...]).max()) == 0.0


def test_positions_are_added_before_masking_and_decoder_order():
    """Recomputes the decoder input by hand: cat([x_vis + pos[vis], mask_token + pos[decoded]])."""
    model = tiny(decoder_depth=0)
    video = jnp.asarray(rng_video(5))
    mask = tube_mask(jax.random.split(jax.random.key(1), B), B, 2, 4, 0.5)
    ids = jnp.asarray([[7, 0, 3], [1, 2, 6]], jnp.int32)  # any decoded set, any order
    pred, aux = model(video, mask, ids)
    tokens = np.asarray(aux["tokens"])
    # Encoder: all-token run vs visible-only run differ unless the positions go in before gathering.
    x = np.asarray(model.encoder.patch_embed(video)) + sinusoid_table(8, 32)[None]
    vis = np.take_along_axis(x, np.asarray(mask.ids_keep)[..., None], axis=1)
    for blk in model.encoder.blocks:
        vis = np.asarray(blk(jnp.asarray(vis)))
    np.testing.assert_allclose(tokens, np.asarray(model.encoder.norm(jnp.asarray(vis))), rtol=1e-5, atol=1e-5)
    pos = sinusoid_table(8, 16)
    dec_vis = tokens @ np.asarray(model.encoder_to_decoder.kernel[...]) + pos[np.asarray(mask.ids_keep)]
    dec_mask = np.asarray(model.mask_token[...]) + pos[np.asarray(ids)]
    full = np.concatenate([dec_vis, dec_mask], axis=1)
    ref = model.decoder_pred(model.decoder_norm(jnp.asarray(full[:, -3:])))
    np.testing.assert_allclose(np.asarray(pred), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant,decoder,mlp_hidden,out", [
    ("B/16", (384, 6), 3072, 1536),
    pytest.param("g/14", (512, 8), 6144, 1176, marks=pytest.mark.slow)])  # tracing 40 blocks: ~20 s
def test_paper_sizes_abstractly(variant, decoder, mlp_hidden, out):
    size, _ = parse_variant(variant)
    model = nnx.eval_shape(lambda: VideoMAE(variant, num_frames=16, image_size=224, decoder_width=decoder[0],
                                            decoder_depth=4, decoder_heads=decoder[1], rngs=nnx.Rngs(0)))
    assert model.num_patches == 8 * (224 // parse_variant(variant)[1]) ** 2
    assert len(model.encoder.blocks) == size.depth
    assert model.encoder.blocks[0].mlp.fc1.kernel.shape == (size.width, mlp_hidden)
    assert model.decoder_pred.kernel.shape == (decoder[0], out)
    # The official model passes one mlp_ratio to both encoder and decoder (48/11 for giant).
    assert model.decoder_blocks[0].mlp.fc1.kernel.shape[1] == int(decoder[0] * size.mlp_ratio)


# --- methods -------------------------------------------------------------------------------------------

def tiny_config(method="videomae", decoder_ratio=0.0) -> ml_collections.ConfigDict:
    c = video_base_config()
    c.method = method
    c.model.variant = "mu/8"
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 16, 1, 2
    c.data.num_frames, c.data.image_size = T, 32  # grid (2, 4, 4), L = 32
    c.masking.ratio = 0.75
    c.masking.decoder_ratio = decoder_ratio
    return c


def test_videomae_loss_is_hidden_token_mse():
    method = VideoMAEMethod(tiny_config())
    model = method.build(nnx.Rngs(0))
    video = rng_video(6, (B, T, 32, 32, 3))
    keys = jax.random.split(jax.random.key(2), B)
    loss, metrics = method.loss(model, {"video": jnp.asarray(video)}, keys, True)
    mask = tube_mask(keys, B, 2, 16, 0.75)
    pred, _ = model(jnp.asarray(video), mask)
    # Independent target: un-normalise, official rearrange + normalise, boolean-index the hidden tokens.
    raw = video * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    x = official_patches(raw.transpose(0, 4, 1, 2, 3).astype(np.float64), TUB, P)
    x = ((x - x.mean(-2, keepdims=True)) / (x.std(-2, ddof=1, keepdims=True) + 1e-6)).reshape(B, 32, -1)
    labels = x[np.asarray(mask.mask)].reshape(B, -1, x.shape[-1])
    np.testing.assert_allclose(float(loss), ((np.asarray(pred) - labels) ** 2).mean(), rtol=1e-5)
    assert metrics["loss"] == loss


def test_v2_loss_weights_encoder_hidden_decoded_tokens():
    method = VideoMAEV2Method(tiny_config("videomae_v2", 0.5))
    model = method.build(nnx.Rngs(0))
    video = jnp.asarray(rng_video(7, (B, T, 32, 32, 3)))
    keys = jax.random.split(jax.random.key(3), B)
    mask, not_decoded = method.masks(model, keys, B)
    assert np.asarray(not_decoded).sum() == B * 16
    loss, metrics = method.loss(model, {"video": video}, keys, True)
    ids = np.stack([np.flatnonzero(~row) for row in np.asarray(not_decoded)])
    pred, _ = model(video, mask, jnp.asarray(ids))
    target = np.asarray(videomae_target(
        patchify_video(video * jnp.asarray(IMAGENET_STD) + jnp.asarray(IMAGENET_MEAN), TUB, P), 3))
    enc, dec = np.asarray(mask.mask), np.asarray(not_decoded)
    labels = target[~dec].reshape(B, -1, target.shape[-1])
    w = enc[~dec].reshape(B, -1).astype(np.float64)
    per = ((np.asarray(pred) - labels) ** 2).mean(-1)
    np.testing.assert_allclose(float(loss), (per * w).sum() / w.sum(), rtol=1e-5)
    assert 0 < float(metrics["loss_tokens_frac"]) < 1


def test_v2_with_decoder_ratio_zero_reduces_to_videomae():
    keys = jax.random.split(jax.random.key(4), B)
    video = {"video": jnp.asarray(rng_video(8, (B, T, 32, 32, 3)))}
    v1 = VideoMAEMethod(tiny_config())
    v2 = VideoMAEV2Method(tiny_config("videomae_v2", 0.0))
    model = v1.build(nnx.Rngs(0))
    l1, _ = v1.loss(model, video, keys, True)
    l2, _ = v2.loss(model, video, keys, True)
    assert float(l1) == float(l2)
    # The general V2 path with decode_mask = ~enc_mask (the official "ratio 0") gives the same loss.
    mask = tube_mask(keys, B, 2, 16, 0.75)
    l3, _, _, w = videomae_v2_loss(model, video["video"], mask, ~mask.mask, 24, True)
    assert bool(w.all())
    np.testing.assert_allclose(float(l3), float(l1), rtol=1e-6)
    l4, _, _ = videomae_loss(model, video["video"], mask, True)
    np.testing.assert_allclose(float(l4), float(l1), rtol=1e-6)


@pytest.mark.parametrize("method_cls,ratio,kind", [(VideoMAEMethod, 0.0, "tube"), (VideoMAEV2Method, 0.5, "tube"),
                                                  (VideoMAEMethod, 0.0, "random")])
def test_method_jit_grad(method_cls, ratio, kind):
    c = tiny_config(method_cls.name, ratio)
    c.masking.kind = kind
    errors = []
    method_cls.check_config(c, errors)
    assert errors == []
    method = method_cls(c)
    model = method.build(nnx.Rngs(0))
    batch = {"video": jnp.asarray(rng_video(9, (B, T, 32, 32, 3))), "label": jnp.zeros((B,), jnp.int32)}
    keys = jax.random.split(jax.random.key(5), B)

    @nnx.jit
    def step(m, b, k):
        return nnx.value_and_grad(lambda mm: method.loss(mm, b, k, True)[0])(m)

    loss, grads = step(model, batch, keys)
    leaves = jax.tree.leaves(grads)
    assert np.isfinite(float(loss)) and all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert float(jnp.abs(grads["mask_token"][...]).sum()) > 0
    assert float(jnp.abs(grads["encoder"]["patch_embed"]["proj"]["kernel"][...]).sum()) > 0


def test_check_config_errors():
    def errs(method_cls, **changes):
        c = tiny_config(method_cls.name, 0.5 if method_cls is VideoMAEV2Method else 0.0)
        for key, value in changes.items():
            section, field = key.split("__")
            c[section][field] = value
        out = []
        method_cls.check_config(c, out)
        return " | ".join(out)

    assert "model.variant" in errs(VideoMAEMethod, model__variant="Q/8")
    assert "data.image_size" in errs(VideoMAEMethod, data__image_size=36)
    assert "data.num_frames" in errs(VideoMAEMethod, data__num_frames=5)
    assert "decoder_heads" in errs(VideoMAEMethod, model__decoder_heads=3)
    assert "masking.kind" in errs(VideoMAEMethod, masking__kind="block")
    assert "masking.ratio" in errs(VideoMAEMethod, masking__ratio=1.0)
    assert "videomae_v2" in errs(VideoMAEMethod, masking__decoder_ratio=0.5)
    assert "even" in errs(VideoMAEV2Method, data__image_size=24)  # grid 3 x 3
    assert "decoder_ratio" in errs(VideoMAEV2Method, masking__decoder_ratio=0.1)
    assert errs(VideoMAEV2Method) == ""


def test_decoded_ids_helper_counts():
    not_decoded = running_cell_mask(jax.random.split(jax.random.key(0), 2), 2, 2, 4, 4)
    ids = decoded_ids(not_decoded, num_decoded(32, 0.5))
    assert ids.shape == (2, 16) and bool((jnp.diff(ids, axis=1) > 0).all())
