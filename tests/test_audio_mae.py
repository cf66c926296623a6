"""AudioMAE model, swin decoder and method (specs/methods_vision.md section 8).

References: PyTorch transcriptions of the official ``timm_patch/swin_transformer.py`` (the block the
official decoder actually runs), a dense numpy attention with the equivalent block mask, a numpy
transcription of ``util/pos_embed.py::get_2d_sincos_pos_embed_flexible`` and the official
``patchify`` / ``forward_loss``. Sizes are tiny (a 128x32 spectrogram, 8x8 patches).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from maskjax.config import audio_base_config
from maskjax.masking import mask_from_noise, uniform_noise
from maskjax.methods.audio_mae import AudioMAEMethod
from maskjax.models.audio_mae import AudioMAE
from maskjax.models.swin_decoder import (
    SwinBlock, calc_window_shift, relative_coordinates_log, shift_attention_mask, window_partition,
    window_reverse)

torch = pytest.importorskip("torch", reason="the official code these tests transcribe is torch")

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)


# --------------------------------------------------------------------------------------------
# Official code, transcribed (torch)


def ref_window_partition(x, ws):
    b, h, w, c = x.shape
    x = x.view(b, h // ws[0], ws[0], w // ws[1], ws[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws[0], ws[1], c)


def ref_window_reverse(windows, ws, img_size):
    h, w = img_size
    b = int(windows.shape[0] / (h * w / ws[0] / ws[1]))
    x = windows.view(b, h // ws[0], w // ws[1], ws[0], ws[1], -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def ref_attention_mask(feat, ws, shift):
    """``SwinTransformerBlock._make_attention_mask``."""
    h, w = feat
    img_mask = torch.zeros((1, h, w, 1))
    cnt = 0
    for hs in (slice(0, -ws[0]), slice(-ws[0], -shift[0]), slice(-shift[0], None)):
        for wsl in (slice(0, -ws[1]), slice(-ws[1], -shift[1]), slice(-shift[1], None)):
            img_mask[:, hs, wsl, :] = cnt
            cnt += 1
    mw = ref_window_partition(img_mask, ws).view(-1, ws[0] * ws[1])
    m = mw.unsqueeze(1) - mw.unsqueeze(2)
    return m.masked_fill(m != 0, float(-100.0)).masked_fill(m == 0, float(0.0))


def ref_relative_coordinates_log(ws):
    """``WindowMultiHeadAttention._make_pair_wise_relative_positions``."""
    coords = torch.stack(torch.meshgrid([torch.arange(ws[0]), torch.arange(ws[1])], indexing="ij"), dim=0).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    rel = rel.permute(1, 2, 0).reshape(-1, 2).float()
    return torch.sign(rel) * torch.log(1.0 + rel.abs())


def _lin(layer) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(np.asarray(layer.kernel[...])).T, torch.tensor(np.asarray(layer.bias[...])))


def _ln(x, norm):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], torch.tensor(np.asarray(norm.scale[...])),
                                          torch.tensor(np.asarray(norm.bias[...])), eps=1e-6)


def ref_swin_block(block: SwinBlock, x: np.ndarray) -> np.ndarray:
    """The patched timm ``SwinTransformerBlock.forward`` (eval mode) with ``block``'s weights."""
    a = block.attn
    heads, ws, feat, shift = a.num_heads, block.window, block.feat_size, block.shift
    x = torch.tensor(x)
    b, length, c = x.shape
    area = ws[0] * ws[1]

    def attn(xw, mask):
        bw = xw.shape[0]
        qkv = torch.nn.functional.linear(xw, *_lin(a.qkv)).view(bw, area, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        denom = torch.norm(q, dim=-1, keepdim=True) @ torch.norm(k, dim=-1, keepdim=True).transpose(-2, -1)
        att = q @ k.transpose(-2, -1) / denom.clamp(min=1e-6)
        att = att / torch.tensor(np.asarray(a.tau[...])).clamp(min=0.01).reshape(1, heads, 1, 1)
        hid = torch.relu(torch.nn.functional.linear(ref_relative_coordinates_log(ws), *_lin(a.meta_fc1)))
        bias = torch.nn.functional.linear(hid, *_lin(a.meta_fc2)).transpose(1, 0).reshape(heads, area, area)
        att = att + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            att = att.view(bw // nw, nw, heads, area, area) + mask.unsqueeze(1).unsqueeze(0)
            att = att.view(-1, heads, area, area)
        out = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, area, -1)
        return torch.nn.functional.linear(out, *_lin(a.proj))

    def shifted(x):
        y = x.view(b, *feat, c)
        if any(shift):
            y = torch.roll(y, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        win = ref_window_partition(y, ws).view(-1, area, c)
        mask = ref_attention_mask(feat, ws, shift) if any(shift) else None
        y = ref_window_reverse(attn(win, mask).view(-1, ws[0], ws[1], c), ws, feat)
        if any(shift):
            y = torch.roll(y, shifts=shift, dims=(1, 2))
        return y.reshape(b, length, c)

    def mlp(x):
        h = torch.nn.functional.gelu(torch.nn.functional.linear(x, *_lin(block.mlp.fc1)))
        return torch.nn.functional.linear(h, *_lin(block.mlp.fc2))

    x = x + _ln(shifted(x), block.norm1)  # post-norm branches, as the patched block
    x = x + _ln(mlp(x), block.norm2)
    return x.numpy()


def ref_sincos_flexible(embed_dim, grid_size, cls_token=False):
    """``util/pos_embed.py::get_2d_sincos_pos_embed_flexible`` (numpy, verbatim maths)."""
    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size[0], dtype=np.float32)
    grid_w = np.arange(grid_size[1], dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size[0], grid_size[1]])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


# --------------------------------------------------------------------------------------------
# Window geometry


@SETTINGS
@given(st.sampled_from([(4, 2), (8, 4), (12, 6)]), st.sampled_from([(2, 2), (4, 2), (2, 1)]),
       st.integers(1, 3), st.integers(0, 99))
def test_window_partition_matches_official_and_round_trips(feat, ws, batch, seed):
    x = np.random.default_rng(seed).normal(size=(batch, *feat, 3)).astype(np.float32)
    ours = window_partition(jnp.asarray(x), ws)
    np.testing.assert_array_equal(np.asarray(ours), ref_window_partition(torch.tensor(x), ws).numpy())
    np.testing.assert_array_equal(np.asarray(window_reverse(ours, ws, feat)), x)


@pytest.mark.parametrize("feat,ws,shift", [((64, 8), (4, 4), (2, 0)), ((8, 4), (4, 2), (2, 1)),
                                           ((6, 6), (3, 3), (1, 2))])
def test_shift_mask_matches_official(feat, ws, shift):
    np.testing.assert_array_equal(np.asarray(shift_attention_mask(feat, ws, shift)),
                                  ref_attention_mask(feat, ws, shift).numpy())


@pytest.mark.parametrize("ws", [(4, 4), (2, 3), (6, 6)])
def test_relative_coordinates_match_official(ws):
    np.testing.assert_allclose(np.asarray(relative_coordinates_log(ws)), ref_relative_coordinates_log(ws).numpy(),
                               rtol=1e-6)


def test_calc_window_shift_clamps_like_official():
    assert calc_window_shift((64, 8), (4, 4), (2, 0)) == ((4, 4), (2, 0))
    assert calc_window_shift((4, 2), (4, 4), (2, 0)) == ((4, 2), (0, 0))  # whole axis, no shift
    assert calc_window_shift((16, 4), (4, 4), (2, 2)) == ((4, 4), (2, 0))


# --------------------------------------------------------------------------------------------
# Shifted-window attention


def _randomise(module, seed: int):
    """Random (non-default) weights so tau, norms and biases all matter."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(module):
        if isinstance(var, nnx.Param):
            var[...] = jnp.asarray(rng.normal(0.0, 0.5, var.shape), jnp.float32)
    module.attn.tau[...] = jnp.asarray(rng.uniform(0.3, 1.5, module.attn.tau.shape), jnp.float32)


def test_shifted_window_attention_equals_dense_block_masked_attention():
    feat, ws, shift, dim, heads = (8, 4), (4, 2), (2, 1), 8, 2
    block = SwinBlock(dim, heads, feat, ws, shift, rngs=nnx.Rngs(0))
    _randomise(block, 1)
    x = np.random.default_rng(2).normal(size=(2, feat[0] * feat[1], dim)).astype(np.float32)
    ours = np.asarray(nnx.jit(lambda blk, y: blk.window_attention(y))(block, jnp.asarray(x)))

    # Dense reference over all 32 tokens: token (r, c) sits at rolled position ((r - sh) % H, ...);
    # two tokens attend iff they share a rolled window and did not wrap around differently.
    a = block.attn
    h, w = feat
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pr, pc = ((rr - shift[0]) % h).reshape(-1), ((cc - shift[1]) % w).reshape(-1)
    win = (pr // ws[0]) * (w // ws[1]) + pc // ws[1]
    wrapped_r = (rr.reshape(-1) < shift[0])  # these rows moved to the bottom when rolled
    wrapped_c = (cc.reshape(-1) < shift[1])
    allowed = ((win[:, None] == win[None, :]) & (wrapped_r[:, None] == wrapped_r[None, :])
               & (wrapped_c[:, None] == wrapped_c[None, :]))
    # Relative position bias from the meta MLP at each pair's in-window offset (numpy).
    d = np.stack([(pr % ws[0])[:, None] - (pr % ws[0])[None, :], (pc % ws[1])[:, None] - (pc % ws[1])[None, :]], -1)
    d = np.sign(d) * np.log1p(np.abs(d))
    k1, b1 = np.asarray(a.meta_fc1.kernel[...]), np.asarray(a.meta_fc1.bias[...])
    k2, b2 = np.asarray(a.meta_fc2.kernel[...]), np.asarray(a.meta_fc2.bias[...])
    bias = (np.maximum(d @ k1 + b1, 0) @ k2 + b2).transpose(2, 0, 1)  # [heads, L, L]
    qkv = (x @ np.asarray(a.qkv.kernel[...]) + np.asarray(a.qkv.bias[...])).reshape(2, h * w, 3, heads, dim // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    qn = q / np.linalg.norm(q, axis=-1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=-1, keepdims=True)
    logits = np.einsum("bqhd,bkhd->bhqk", qn, kn) / np.asarray(a.tau[...])[None, :, None, None] + bias[None]
    logits = np.where(allowed[None, None], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", p, v).reshape(2, h * w, dim)
    out = out @ np.asarray(a.proj.kernel[...]) + np.asarray(a.proj.bias[...])
    np.testing.assert_allclose(ours, out, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("shift", [(0, 0), (2, 0)])
def test_swin_block_matches_official_patched_block(shift):
    block = SwinBlock(16, 4, (8, 4), (4, 4), shift, rngs=nnx.Rngs(3))
    _randomise(block, 4)
    x = np.random.default_rng(5).normal(size=(2, 32, 16)).astype(np.float32)
    ours = nnx.jit(lambda blk, y: blk(y))(block, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), ref_swin_block(block, x), rtol=2e-4, atol=2e-4)


def test_meta_dropout_only_with_keys_and_per_example():
    block = SwinBlock(8, 2, (8, 4), (4, 4), (2, 0), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 8)), jnp.float32)
    keys = jax.random.split(jax.random.key(1), 2)
    run = nnx.jit(lambda blk, y, k: blk(y, k))
    plain = np.asarray(run(block, x, None))
    np.testing.assert_array_equal(plain, np.asarray(run(block, x, None)))
    dropped = np.asarray(run(block, x, keys))
    assert not np.allclose(plain, dropped)
    # Example 1's dropout depends only on its own key: swap the batch order, same rows.
    swapped = np.asarray(run(block, x[::-1], keys[::-1]))
    np.testing.assert_allclose(swapped[::-1], dropped, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Model


def _tiny_model(**kw):
    args = dict(target_length=128, num_mel_bins=32, decoder_width=16, decoder_heads=4, swin_depth=2,
                rngs=nnx.Rngs(0))
    args.update(kw)
    return AudioMAE("mu/8", **args)


def test_pos_embed_official_quirk_and_aligned():
    official, aligned = _tiny_model(), _tiny_model(pos_embed="aligned", decoder_mode="global", decoder_depth=1)
    t, f = 128 // 8, 32 // 8
    # PatchEmbed_org.patch_hw = (F/p, T/p): the official table is built on an (F/p) x (T/p) grid.
    np.testing.assert_allclose(np.asarray(official.encoder.pos_embed[...])[0],
                               ref_sincos_flexible(32, (f, t), cls_token=True), atol=1e-6)
    np.testing.assert_allclose(np.asarray(official.decoder_pos_embed[...])[0],
                               ref_sincos_flexible(16, (f, t), cls_token=True), atol=1e-6)
    np.testing.assert_allclose(np.asarray(aligned.encoder.pos_embed[...])[0],
                               ref_sincos_flexible(32, (t, f), cls_token=True), atol=1e-6)
    # Time-major token i = row * F + col: aligned encodes (row, col), the quirk (i // T, i % T).
    emb = np.asarray(aligned.encoder.pos_embed[...])[0, 1:]
    assert not np.allclose(emb, np.asarray(official.encoder.pos_embed[...])[0, 1:])
    np.testing.assert_allclose(emb[5], ref_sincos_flexible(32, (t, f))[1 * f + 1], atol=1e-6)


@pytest.mark.parametrize("mode", ["swin", "global"])
def test_model_shapes(mode):
    model = _tiny_model(decoder_mode=mode, decoder_depth=1)
    assert model.num_patches == 64 and model.encoder.grid == (16, 4)
    spec = jax.random.normal(jax.random.key(0), (2, 128, 32, 1))
    mask = mask_from_noise(uniform_noise(jax.random.key(1), 2, 64), 0.75)
    pred, aux = nnx.jit(lambda m, s, mk: m(s, mk))(model, spec, mask)
    assert pred.shape == (2, 64, 64) and aux["latent"].shape == (2, 1 + 16, 32)
    tokens, enc = nnx.jit(lambda e, s: e(s))(model.encoder, spec)
    assert tokens.shape == (2, 65, 32) and enc["pooled"].shape == (2, 32) and enc["cls"].shape == (2, 32)
    if mode == "swin":
        assert len(model.decoder_blocks) == 2 and model.decoder_blocks[1].shift == (2, 0)
        assert model.decoder_blocks[0].shift == (0, 0)
    with pytest.raises(ValueError, match="target_length"):
        model.encoder(jnp.zeros((1, 64, 32, 1)))


def test_default_swin_decoder_is_sixteen_blocks_on_the_official_grid():
    model = nnx.eval_shape(lambda: AudioMAE("mu/16", rngs=nnx.Rngs(0)))
    assert model.encoder.grid == (64, 8) and len(model.decoder_blocks) == 16
    assert [b.shift for b in model.decoder_blocks[:2]] == [(0, 0), (2, 0)]
    assert model.decoder_blocks[0].window == (4, 4) and model.decoder_blocks[0].attn.num_heads == 16


# --------------------------------------------------------------------------------------------
# Method


def _config(kind: str = "random"):
    c = audio_base_config()
    c.model.variant = "mu/8"
    c.model.decoder_width, c.model.decoder_heads = 16, 4
    c.model.swin_depth = 2
    c.data.target_length, c.data.num_mel_bins = 128, 32
    c.masking.kind = kind
    return c


def ref_target(spec: np.ndarray, p: int) -> np.ndarray:
    """Official audio ``patchify`` on (N, 1, T, F) + norm-pix (unbiased var + 1e-6)."""
    imgs = spec.transpose(0, 3, 1, 2)
    n, _, hh, ww = imgs.shape
    h, w = hh // p, ww // p
    x = np.einsum("nchpwq->nhwpqc", imgs.reshape(n, 1, h, p, w, p)).reshape(n, h * w, p * p)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, ddof=1, keepdims=True) + 1e-6)


def _batch():
    spec = jax.random.normal(jax.random.key(0), (2, 128, 32, 1))
    return {"spectrogram": spec, "label": jnp.zeros((2,), jnp.int32)}, jax.random.split(jax.random.key(1), 2)


def test_method_grad_under_jit():
    method = AudioMAEMethod(_config("random"))
    model = method.build(nnx.Rngs(0))
    batch, keys = _batch()
    step = nnx.jit(lambda m, b, k: nnx.value_and_grad(lambda mm: method.loss(mm, b, k, True), has_aux=True)(m))
    (loss, metrics), grads = step(model, batch, keys)
    assert np.isfinite(float(loss)) and float(metrics["loss"]) == float(loss)
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert float(jnp.abs(grads.encoder.blocks[0].attn.qkv.kernel[...]).sum()) > 0
    assert float(jnp.abs(grads.decoder_blocks[1].attn.meta_fc1.kernel[...]).sum()) > 0
    assert float(jnp.abs(grads.decoder_blocks[1].attn.tau[...]).sum()) > 0
    # Training runs the meta-MLP dropout: the loss differs from the deterministic one.
    eval_loss = nnx.jit(lambda m, b, k: method.loss(m, b, k, False)[0])(model, batch, keys)
    assert float(loss) != float(eval_loss)


@pytest.mark.parametrize("kind", ["random", "time_freq"])
def test_method_loss_is_official_forward_loss(kind):
    method = AudioMAEMethod(_config(kind))
    model = method.build(nnx.Rngs(0))
    batch, keys = _batch()

    @nnx.jit
    def run(m, b, k):
        mask = method.make_mask(m, k, 2)
        return method.loss(m, b, k, False)[0], m(b["spectrogram"], mask)[0], mask.mask

    loss, pred, hidden = run(model, batch, keys)
    hidden = np.asarray(hidden, np.float32)
    per = ((np.asarray(pred) - ref_target(np.asarray(batch["spectrogram"]), 8)) ** 2).mean(-1)
    np.testing.assert_allclose(float(loss), (per * hidden).sum() / hidden.sum(), rtol=1e-5)
    visible = int(16 * 0.4) * int(4 * 0.5) if kind == "time_freq" else int(64 * 0.2)
    assert (hidden.size // 2 - hidden.sum(1)).tolist() == [visible] * 2


@pytest.mark.parametrize("field,value,match", [
    ("data.target_length", 100, "multiples of the patch"),
    ("model.decoder_heads", 3, "decoder_heads"),
    ("model.window", (3, 4), "does not divide"),
    ("model.shift", (4, 0), "smaller than model.window"),
    ("model.decoder_mode", "mvit", "decoder_mode"),
    ("masking.kind", "block", "masking.kind"),
    ("masking.mask_f_prob", 0.9, "mask_f_prob"),
])
def test_check_config_errors(field, value, match):
    c = _config("time_freq")
    section, name = field.split(".")
    c[section][name] = value
    errors: list[str] = []
    AudioMAEMethod.check_config(c, errors)
    assert any(match in e for e in errors), errors
    clean: list[str] = []
    AudioMAEMethod.check_config(_config("time_freq"), clean)
    assert clean == []
