"""MAE-ST model, target and method (specs/methods_vision.md section 7).

References are transcriptions of the official ``mae_st/models_mae.py``: the separable position
embedding (``repeat`` + ``repeat_interleave`` in torch), ``forward_encoder``'s order of operations
(positions gathered at ``ids_keep`` after masking) written with numpy positions, and
``forward_loss``'s target (``index_select`` on ``torch.linspace(...).long()`` frames, the
``nctuhpwq->nthwupqc`` patchify, unbiased norm-pix). Sizes are tiny (4 frames of 16x16 video).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.config import video_base_config
from maskjax.masking import Mask, gather_tokens, mask_from_noise, uniform_noise
from maskjax.methods.mae_st import MaeSTMethod
from maskjax.methods.mae_st import mae_st_target
from maskjax.models.mae_st import MaeST, target_frame_indices, torch_linspace_long

torch = pytest.importorskip("torch", reason="the official code these tests transcribe is torch")

FRAMES, SIZE, PATCH = 4, 16, 8


def _model(**kw):
    args = dict(num_frames=FRAMES, image_size=SIZE, t_patch=2, pred_t_dim=2, decoder_width=16,
                decoder_depth=1, decoder_heads=2, rngs=nnx.Rngs(0))
    args.update(kw)
    return MaeST("mu/8", **args)


def _video(b=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, FRAMES, SIZE, SIZE, 3))


def ref_sep_pos(spatial: np.ndarray, temporal: np.ndarray) -> np.ndarray:
    """Official: ``spatial.repeat(1, T', 1) + torch.repeat_interleave(temporal, H'W', dim=1)``."""
    s, t = torch.tensor(spatial), torch.tensor(temporal)
    return (s.repeat(1, t.shape[1], 1) + torch.repeat_interleave(t, s.shape[1], dim=1)).numpy()


def test_separable_pos_embed_layout():
    model = _model()
    pe = model.encoder.pos_embed
    assert pe.spatial.shape == (1, 4, 32) and pe.temporal.shape == (1, 2, 32) and pe.cls.shape == (1, 1, 32)
    np.testing.assert_allclose(np.asarray(pe.patch_table()), ref_sep_pos(np.asarray(pe.spatial[...]),
                                                                        np.asarray(pe.temporal[...])), rtol=1e-6)
    dec = model.decoder_pos_embed
    assert dec.spatial.shape == (1, 4, 16) and dec.temporal.shape == (1, 2, 16)
    # trunc_normal(0.02) learned tables; the decoder cls token starts at zero (never initialised).
    assert 0.005 < float(jnp.std(pe.spatial[...])) < 0.05
    assert not np.any(np.asarray(model.decoder_cls_token[...]))
    assert isinstance(pe.spatial, nnx.Param)


def _ref_positions(enc, mask: Mask) -> np.ndarray:
    """Official positions of the encoder input: [pos_embed_class, table[ids_keep]] (numpy)."""
    table = ref_sep_pos(np.asarray(enc.pos_embed.spatial[...]), np.asarray(enc.pos_embed.temporal[...]))[0]
    pos = table[np.asarray(mask.ids_keep)]  # [B, K, D]
    cls = np.broadcast_to(np.asarray(enc.pos_embed.cls[...]), (pos.shape[0], 1, pos.shape[2]))
    return np.concatenate([cls, pos], axis=1)


def _ref_encoder(enc, video, mask: Mask, pos):
    """``forward_encoder`` order: embed, mask, prepend cls, add the gathered positions, blocks, norm."""
    x = enc.patch_embed(video)
    x = gather_tokens(x, mask.ids_keep)
    x = jnp.concatenate([jnp.broadcast_to(enc.cls_token[...], (x.shape[0], 1, x.shape[2])), x], axis=1)
    x = x + pos
    for blk in enc.blocks:
        x = blk(x)
    return enc.norm(x)


def test_positions_added_after_masking():
    model = _model()
    video = _video()
    mask = mask_from_noise(uniform_noise(jax.random.key(3), 2, model.num_patches), 0.5)
    run = nnx.jit(lambda e, v, m, pos: (e(v, m)[0], _ref_encoder(e, v, m, pos)))
    ours, ref = run(model.encoder, video, mask, _ref_positions(model.encoder, mask))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-5)
    # Positions travel with their tokens: permuting ids_keep permutes the encoder output.
    perm = Mask(mask.ids_keep[:, ::-1], mask.ids_restore, mask.mask)
    flipped, ref_flipped = run(model.encoder, video, perm, _ref_positions(model.encoder, perm))
    np.testing.assert_allclose(np.asarray(flipped), np.asarray(ref_flipped), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(flipped[:, 1:]), np.asarray(ours[:, 1:])[:, ::-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames,dim", [(16, 8), (32, 8), (16, 16), (16, 5), (30, 7), (64, 10), (9, 9),
                                        (100, 33), (16, 1), (7, 3), (1000, 77)])
def test_target_frames_match_torch_linspace(frames, dim):
    expected = torch.linspace(0, frames - 1, dim).long().numpy()
    np.testing.assert_array_equal(target_frame_indices(frames, dim), expected)
    np.testing.assert_array_equal(torch_linspace_long(2.5, 11.0, dim),
                                  torch.linspace(2.5, 11.0, dim).long().numpy())


def ref_target(video: np.ndarray, pred_t_dim: int, u: int, p: int) -> np.ndarray:
    """Official ``forward_loss`` target on (N, 3, T, H, W) with norm_pix_loss."""
    imgs = torch.tensor(video).permute(0, 4, 1, 2, 3)
    imgs = torch.index_select(imgs, 2, torch.linspace(0, imgs.shape[2] - 1, pred_t_dim).long())
    n, _, tt, hh, _ = imgs.shape
    h = w = hh // p
    t = tt // u
    x = imgs.reshape(n, 3, t, u, h, p, w, p)
    x = torch.einsum("nctuhpwq->nthwupqc", x).reshape(n, t * h * w, u * p**2 * 3)
    return ((x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-6) ** 0.5).numpy()


@pytest.mark.parametrize("frames,t_patch,pred_t_dim", [(4, 2, 2), (4, 2, 4), (6, 2, 3)])
def test_target_matches_official(frames, t_patch, pred_t_dim):
    video = np.random.default_rng(0).normal(size=(2, frames, 16, 16, 3)).astype(np.float32)
    u = t_patch * pred_t_dim // frames
    ours = mae_st_target(jnp.asarray(video), pred_t_dim=pred_t_dim, t_pred_patch=u, patch=8)
    assert ours.shape == (2, (frames // t_patch) * 4, u * 8 * 8 * 3)
    np.testing.assert_allclose(np.asarray(ours), ref_target(video, pred_t_dim, u, 8), rtol=1e-4, atol=1e-4)


def test_shapes_and_init():
    model = _model(pred_t_dim=4)  # t_pred_patch = 2 * 4 // 4 = 2
    assert model.t_pred_patch == 2 and model.num_patches == 8 and model.encoder.grid == (2, 2, 2)
    mask = mask_from_noise(uniform_noise(jax.random.key(1), 2, 8), 0.75)
    pred, aux = nnx.jit(lambda m, v, k: m(v, k))(model, _video(), mask)
    assert pred.shape == (2, 8, 2 * 8 * 8 * 3) and aux["latent"].shape == (2, 2, 32)
    tokens, enc = nnx.jit(lambda e, v: e(v))(model.encoder, _video())
    assert tokens.shape == (2, 9, 32) and enc["pooled"].shape == (2, 32) and enc["cls"].shape == (2, 32)
    # Official q, k, v are separate Linear(D, D): each third is xavier on (D, D), bound sqrt(6 / 2D).
    qkv = np.asarray(model.encoder.blocks[0].attn.qkv.kernel[...])
    bound = np.sqrt(6.0 / 64)
    assert np.abs(qkv).max() <= bound and np.abs(qkv[:, :32]).max() > np.sqrt(6.0 / 128)
    trunc = _model(trunc_init=True)
    w = np.asarray(trunc.encoder.blocks[0].mlp.fc1.kernel[...])
    assert 0.015 < w.std() < 0.025
    conv = np.asarray(trunc.encoder.patch_embed.proj.kernel[...])
    assert np.abs(conv).max() <= 2.0 and 0.8 < conv.std() < 0.95  # trunc_normal(std=1, +-2)
    nocls = _model(cls_embed=False, sep_pos_embed=False)
    tokens, enc = nnx.jit(lambda e, v: e(v))(nocls.encoder, _video())
    assert tokens.shape == (2, 8, 32) and "cls" not in enc
    with pytest.raises(ValueError, match="pred_t_dim"):
        _model(pred_t_dim=3)


def _config():
    c = video_base_config()
    c.method = "mae_st"
    c.model.variant = "mu/8"
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 16, 1, 2
    c.model.pred_t_dim = 2
    c.data.num_frames, c.data.image_size = FRAMES, SIZE
    c.masking.kind, c.masking.ratio = "random", 0.5
    return c


def test_method_loss_and_grad_under_jit():
    method = MaeSTMethod(_config())
    model = method.build(nnx.Rngs(0))
    video = _video()
    batch = {"video": video, "label": jnp.zeros((2,), jnp.int32)}
    keys = jax.random.split(jax.random.key(1), 2)

    @nnx.jit
    def step(m, b, k):
        (loss, metrics), grads = nnx.value_and_grad(lambda mm: method.loss(mm, b, k, True), has_aux=True)(m)
        mask = mask_from_noise(uniform_noise(k, 2, m.num_patches), 0.5)
        return loss, grads, m(b["video"], mask)[0], mask.mask

    loss, grads, pred, hidden = step(model, batch, keys)
    hidden = np.asarray(hidden, np.float32)
    assert hidden.sum(1).tolist() == [4.0, 4.0]
    per = ((np.asarray(pred) - ref_target(np.asarray(video), 2, 1, 8)) ** 2).mean(-1)
    np.testing.assert_allclose(float(loss), (per * hidden).sum() / hidden.sum(), rtol=1e-5)
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert float(jnp.abs(grads.encoder.pos_embed.temporal[...]).sum()) > 0
    assert float(jnp.abs(grads.decoder_cls_token[...]).sum()) > 0


@pytest.mark.parametrize("field,value,match", [
    ("data.image_size", 20, "image_size"),
    ("data.num_frames", 5, "tubelet_size"),
    ("model.pred_t_dim", 3, "pred_t_dim"),
    ("model.decoder_heads", 3, "decoder_heads"),
    ("masking.kind", "tube", "masking.kind"),
    ("masking.ratio", 0.99, "masking.ratio"),
])
def test_check_config_errors(field, value, match):
    c = _config()
    section, name = field.split(".")
    c[section][name] = value
    errors: list[str] = []
    MaeSTMethod.check_config(c, errors)
    assert any(match in e for e in errors), errors
    clean: list[str] = []
    MaeSTMethod.check_config(_config(), clean)
    assert clean == []
