"""CrossMAE (specs/methods_vision.md section 11): the decoder pieces against numpy transcriptions of
TonyLianLong/CrossMAE (``transformer_utils.py::CrossAttentionBlock``, ``models_cross.py::
WeightedFeatureMaps / mask_tokens_grid / forward_decoder / forward_loss``), the loss's support, the
FLOP count against the matmuls the model really runs, configs, and exact resumption of training.
"""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from maskjax.config import apply_overrides, load_config
from maskjax.core.trees import to_tree
from maskjax.masking.partial_reconstruction import crossmae_counts, crossmae_mask
from maskjax.methods import known_methods, make_method
from maskjax.models.crossmae import CrossAttentionBlock, CrossMAE, WeightedFeatureMaps
from maskjax.models.layers import sincos_2d

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "crossmae"
LN_EPS = 1e-6


# --- numpy transcription of the official forward ------------------------------------------------

def np_layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)  # torch LayerNorm: biased variance
    return (x - mean) / np.sqrt(var + LN_EPS) * p["scale"] + p["bias"]


def np_linear(x, p):
    return x @ p["kernel"] + p.get("bias", 0.0)  # kernel [in, out] = torch weight.T


def np_cross_attention(x, y, p, heads):
    """``CrossAttention.forward``: q from x, k/v from y, softmax(q k^T * head_dim^-0.5) v, proj."""
    b, n, c = x.shape
    ny = y.shape[1]
    q = np_linear(x, p["q"]).reshape(b, n, heads, c // heads).transpose(0, 2, 1, 3)
    kv = np_linear(y, p["kv"]).reshape(b, ny, 2, heads, c // heads).transpose(2, 0, 3, 1, 4)
    k, v = kv[0], kv[1]
    scores = q @ k.transpose(0, 1, 3, 2) * (c // heads) ** -0.5
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    attn = scores / scores.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
    return np_linear(out, p["proj"])


def np_gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def np_cross_block(x, y, p, heads):
    """``CrossAttentionBlock.forward`` with ``self_attn=False``."""
    x = x + np_cross_attention(np_layer_norm(x, p["norm1"]), y, p["cross_attn"], heads)
    h = np_linear(np_gelu(np_linear(np_layer_norm(x, p["norm2"]), p["mlp"]["fc1"])), p["mlp"]["fc2"])
    return x + h


def np_weighted_feature_maps(feature_maps, weight):
    """``WeightedFeatureMaps.forward``: stack on a last axis, ``nn.Linear(k, depth, bias=False)``."""
    stacked = np.stack(feature_maps, axis=-1)  # (B, L, C, k)
    return stacked @ weight.T                   # weight: torch layout (depth, k)


def np_patchify(images_nchw, p):
    n, c, h, w = images_nchw.shape
    x = images_nchw.reshape(n, c, h // p, p, w // p, p)
    return np.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def np_forward_loss(images_nchw, pred, mask, p, norm_pix=True):
    """``forward_loss``: targets of the mask==1 positions (masked_select order), norm-pix, mean."""
    target = np_patchify(images_nchw, p)
    target = np.stack([target[i][mask[i].astype(bool)] for i in range(target.shape[0])])
    if norm_pix:
        mean = target.mean(-1, keepdims=True)
        var = target.var(-1, keepdims=True, ddof=1)  # torch.var: unbiased
        target = (target - mean) / (var + 1e-6) ** 0.5
    return ((pred - target) ** 2).mean()


def random_module(build, seed):
    """``build()`` with N(0, 0.3^2) parameters and its real sin-cos buffers, its initialisers never run.

    Random biases and LayerNorm affines make the comparisons able to fail where zeros and ones
    would hide a bug; skipping the initialisers saves the compile of one kernel per parameter shape
    (seconds on a CPU), which is most of this file's run time otherwise.
    """
    rng = np.random.default_rng(seed)
    graphdef, params, buffers = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
    params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), params)

    def position_table(path, a):  # the only buffers of these models: MAE's sin-cos tables with a cls row
        assert "pos_embed" in jax.tree_util.keystr(path), path
        grid = math.isqrt(a.shape[1] - 1)
        return jnp.asarray(sincos_2d(a.shape[-1], grid, grid, cls_token=True)[None])

    buffers = jax.tree_util.tree_map_with_path(position_table, buffers)
    return nnx.merge(graphdef, params, buffers)


def normal(seed, *shape):
    """Standard-normal float32 test input (numpy: no per-shape compile)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def params_of(module):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), to_tree(nnx.state(module, nnx.Param)))


# --- pieces -------------------------------------------------------------------------------------

def test_cross_attention_block_matches_numpy():
    enc, dec, heads = 12, 8, 2
    block = random_module(lambda: CrossAttentionBlock(enc, dec, heads, rngs=nnx.Rngs(0), attention_impl="xla"), 1)
    x = np.asarray(normal(2, 3, 5, dec))
    y = np.asarray(normal(3, 3, 7, enc))  # 5 queries over 7 encoder tokens
    ours = np.asarray(nnx.jit(lambda blk, a, c: blk(a, c))(block, jnp.asarray(x), jnp.asarray(y)))
    ref = np_cross_block(x.astype(np.float64), y.astype(np.float64), params_of(block), heads)
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-5)
    assert set(params_of(block)["cross_attn"]) == {"q", "kv", "proj"}
    assert all("bias" in params_of(block)["cross_attn"][n] for n in ("q", "kv"))  # qkv_bias=True


def test_weighted_feature_maps_matches_numpy_and_official_init():
    k, depth = 5, 3
    wfm = WeightedFeatureMaps(k, depth, rngs=nnx.Rngs(0))
    assert set(params_of(wfm)["linear"]) == {"kernel"}  # bias=False
    maps = [np.asarray(normal(i, 2, 4, 6)) for i in range(k)]
    ours = np.asarray(nnx.jit(lambda m, a: m(a))(wfm, jnp.stack(maps)))  # [depth, B, L, C]
    weight = params_of(wfm)["linear"]["kernel"].T  # torch layout (depth, k)
    ref = np_weighted_feature_maps(maps, weight)   # [B, L, C, depth]
    np.testing.assert_allclose(ours, np.moveaxis(ref, -1, 0), rtol=1e-5, atol=1e-5)

    # nn.init.normal_(std=1/sqrt(k)): mean 0, that std and a normal's kurtosis (3; uniform: 1.8).
    k_big, depth_big = 50, 400
    w = params_of(WeightedFeatureMaps(k_big, depth_big, rngs=nnx.Rngs(1)))["linear"]["kernel"].ravel()
    n, std = w.size, 1.0 / math.sqrt(k_big)
    assert abs(w.mean()) < 4 * std / math.sqrt(n)
    assert abs(w.std() / std - 1.0) < 4 * math.sqrt(0.5 / n)
    assert abs(((w - w.mean()) ** 4).mean() / w.var() ** 2 - 3.0) < 4 * math.sqrt(24 / n)


def _tiny_model(seed, **kw):
    args = dict(image_size=16, decoder_width=8, decoder_depth=2, decoder_heads=2, attention_impl="xla")
    args.update(kw)
    return random_module(lambda: CrossMAE("mu/4", rngs=nnx.Rngs(0), **args), seed)


def test_encoder_maps_and_decoder_match_the_official_forward():
    model = _tiny_model(5)
    images = normal(6, 2, 16, 16, 3)

    @nnx.jit  # masks are drawn inside the jitted functions: one compile each, no eager argsort
    def forward(m, x):
        mask = crossmae_mask(jax.random.key(7), 2, 16, 0.75, 0.25)
        enc = m.encoder
        tokens = enc.embed(x, mask)
        maps = m.feature_maps(x, mask)
        return maps, tokens, enc.stack_blocks[0](tokens), m.decode(maps, mask.ids_recon), mask

    maps, tokens, first_block, pred, mask = forward(model, images)
    enc = model.encoder
    # use_input: the blocks' input first, then each block's output; the last one, normalised, is the ViT's output.
    assert maps.shape == (1 + enc.depth, 2, 1 + 4, enc.width)
    np.testing.assert_allclose(maps[0], tokens, rtol=1e-6)
    np.testing.assert_allclose(maps[1], first_block, rtol=1e-5, atol=1e-6)

    # The decoder from those maps, transcribed: mask_tokens_grid, wfm, dec_norms[i], blocks, norm, pred.
    p = params_of(model)
    fm = [np.asarray(m, np.float64) for m in maps]
    recon = np.asarray(mask.recon)
    pos = np.asarray(model.decoder_pos_embed[...], np.float64)[0, 1:]
    x = np.stack([pos[recon[i]] for i in range(2)]) + p["mask_token"]  # masked_select: ascending positions
    y = np_weighted_feature_maps(fm, p["wfm"]["linear"]["kernel"].T)
    for i in range(2):
        x = np_cross_block(x, np_layer_norm(y[..., i], p["dec_norms"][str(i)]), p["decoder_blocks"][str(i)], 2)
    ref = np_linear(np_layer_norm(x, p["decoder_norm"]), p["decoder_pred"])
    np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-4)


# Two more forward compiles (~10 s of CPU): with -m slow, beside the training test.
@pytest.mark.slow
def test_scanned_layers_give_the_same_prediction():
    from maskjax.models.scan import stack_layers

    plain = _tiny_model(8)
    scanned = _tiny_model(0, scan_layers=True)
    nnx.update(scanned, stack_layers(to_tree(nnx.state(plain)), ("blocks", "decoder_blocks", "dec_norms")))
    images = normal(9, 2, 16, 16, 3)
    forward = nnx.jit(lambda m, x: m(x, crossmae_mask(jax.random.key(10), 2, 16, 0.75, 0.75))[0])
    np.testing.assert_allclose(forward(scanned, images), forward(plain, images), rtol=1e-5, atol=1e-5)


# --- method -------------------------------------------------------------------------------------

def _config(**overrides):
    config = load_config(str(CONFIGS / "vit_s.py") + ":smoke")
    base = {"model.variant": "mu/4", "data.image_size": 16, "model.decoder_width": 8, "model.decoder_depth": 2,
            "model.decoder_heads": 2, "model.attention_impl": "xla", "global_batch": 16,
            "optim.base_lr": 1e-2, "progress": False}
    base.update(overrides)
    apply_overrides(config, base)
    return config


def test_loss_matches_official_and_sees_only_reconstructed_and_visible_patches():
    method = make_method(_config(**{"crossmae.kept_mask_ratio": 0.25}))
    model = random_module(lambda: method.build(nnx.Rngs(0)), 11)
    b = 4
    images = normal(12, b, 16, 16, 3)
    keys = jax.random.split(jax.random.key(13), b)
    # The same masks as the method draws: the official forward_loss on the model's predictions.

    @nnx.jit
    def loss_of(m, x):
        mask = crossmae_mask(keys, b, 16, 0.75, 0.25)
        return method.loss(m, {"image": x}, keys, train=True), m(x, mask)[0], mask

    (loss, metrics), pred, mask = loss_of(model, images)
    assert metrics["loss"] == loss
    ref = np_forward_loss(np.asarray(images, np.float64).transpose(0, 3, 1, 2), np.asarray(pred, np.float64),
                          np.asarray(mask.recon), 4)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)

    # 16 patches: 4 visible, 8 hidden but not reconstructed, 4 reconstructed.
    hidden, recon = np.asarray(mask.mask), np.asarray(mask.recon)
    assert (hidden.sum(1) == 12).all() and (recon.sum(1) == 4).all() and not (recon & ~hidden).any()
    grid = lambda m: np.repeat(np.repeat(m.reshape(b, 4, 4), 4, 1), 4, 2)[..., None]  # patch -> pixels
    noise = 5.0 * normal(14, *images.shape)

    def loss_with_noise_on(where):
        return float(loss_of(model, images + noise * grid(where))[0][0])

    # Pixels the encoder never sees and the loss never targets cannot change the loss ...
    np.testing.assert_allclose(loss_with_noise_on(hidden & ~recon), loss, rtol=1e-6)
    # ... while the visible (encoder input) and the reconstructed (target) ones do (float32
    # round-off is ~1e-7 of the loss).
    assert abs(loss_with_noise_on(~hidden) / float(loss) - 1.0) > 1e-5
    assert abs(loss_with_noise_on(recon) / float(loss) - 1.0) > 1e-5


def test_flops_match_a_hand_count_and_the_models_matmuls():
    config = _config(**{"crossmae.kept_mask_ratio": 0.25})
    method = make_method(config)
    # mu/4 at 16x16: L = 16 patches of 48 values, D = 32, MLP 128, 2 blocks; 4 visible + cls = 5
    # tokens; 4 reconstructed queries; decoder 8 wide, 2 layers, MLP 32; k = 2 blocks + input = 3.
    patch_embed = 2 * 16 * 48 * 32
    encoder = 2 * (2 * 5 * 32 * (4 * 32) + 2 * 2 * 5 * 32 * 5 + 2 * 2 * 5 * 32 * 128)
    mixing = 2 * (5 * 32) * 3 * 2
    decoder = 2 * (2 * 4 * 8 * 8 + 2 * 5 * 32 * 16 + 2 * 2 * 4 * 8 * 5 + 2 * 4 * 8 * 8 + 2 * 2 * 4 * 8 * 32)
    pred = 2 * 4 * 8 * 48
    count = method.flops(3)
    assert count.forward == pytest.approx(3 * (patch_embed + encoder + mixing + decoder + pred))
    assert count.train == pytest.approx(3 * count.forward)

    # The same number from the dot_generals of the traced forward pass of one image.
    model = random_module(lambda: method.build(nnx.Rngs(0)), 0)
    forward = lambda x: model(x, crossmae_mask(jax.random.key(0), 1, 16, 0.75, 0.25))[0]
    jaxpr = jax.make_jaxpr(forward)(jnp.zeros((1, 16, 16, 3)))
    assert _dot_flops(jaxpr.jaxpr) == pytest.approx(count.forward / 3)


def _dot_flops(jaxpr) -> float:
    """2 x multiply-adds of every dot_general in ``jaxpr`` and its sub-jaxprs (no loops here)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
        for value in eqn.params.values():
            for sub in (value if isinstance(value, (tuple, list)) else (value,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _dot_flops(inner)
    return total


def test_reconstruct_shows_visible_and_reconstructed_patches_only():
    method = make_method(_config(**{"crossmae.kept_mask_ratio": 0.25}))
    model = random_module(lambda: method.build(nnx.Rngs(0)), 0)
    images = normal(15, 2, 16, 16, 3)
    captions = []

    @nnx.jit
    def reconstruct(m, x):
        out = method.reconstruct(m, x, jax.random.key(16))
        captions.append(out.pop("caption"))  # a Python string: kept out of the jitted result
        return out, crossmae_mask(jax.random.key(16), 2, 16, 0.75, 0.25)

    out, mask = reconstruct(model, images)
    patch_nan = lambda a: np.isnan(np.asarray(a)).reshape(2, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(
        2, 16, -1).all(-1)
    np.testing.assert_array_equal(patch_nan(out["masked"]), np.asarray(mask.mask))
    np.testing.assert_array_equal(patch_nan(out["reconstruction"]), np.asarray(mask.mask & ~mask.recon))
    visible = ~np.isnan(np.asarray(out["masked"]))
    np.testing.assert_allclose(np.asarray(out["reconstruction"])[visible], np.asarray(images)[visible])
    assert "4 of 16 patches reconstructed" in captions[0]


def test_features_and_registration():
    assert "crossmae" in known_methods()
    method = make_method(_config())
    model = random_module(lambda: method.build(nnx.Rngs(0)), 0)
    images = jnp.zeros((3, 16, 16, 3))
    features = nnx.jit(lambda m, x: (method.features(m, x), method.features(m, x, pool="pooled")))
    assert [f.shape for f in features(model, images)] == [(3, 32), (3, 32)]
    assert method.encoder(model) is model.encoder and method.feature_name() == "cls"
    # The encoder's parameter paths are MAE's ViT's: the probe and fine-tune evaluators load them.
    from maskjax.models.vit import ViT

    vit = nnx.eval_shape(lambda: ViT("mu/4", image_size=16, rngs=nnx.Rngs(0)))
    shapes = lambda module: jax.tree.map(lambda a: tuple(a.shape), to_tree(nnx.state(module)))
    assert shapes(model.encoder) == shapes(vit)


@pytest.mark.parametrize("overrides, message", [
    ({"crossmae.kept_mask_ratio": 0.9}, r"crossmae.kept_mask_ratio=0.9 must be in \(0, masking.ratio=0.75\]"),
    ({"masking.ratio": 0.95, "crossmae.kept_mask_ratio": 0.5}, r"masking.ratio=0.95 .* keep 0 .* 16 tokens"),
    ({"model.decoder_width": 10, "model.decoder_heads": 2}, "decoder_width 10 must be a multiple of 4"),
    ({"model.decoder_depth": 0}, "decoder_depth must be a positive integer"),
    ({"model.decoder_heads": 3}, "decoder_width 8 is not divisible by model.decoder_heads 3"),
])
def test_check_config_messages(overrides, message):
    from maskjax.errors import ConfigError
    from maskjax.train.validate import validate_config

    validate_config(_config())
    with pytest.raises(ConfigError, match=message):
        validate_config(_config(**overrides))


def test_recipes_follow_the_official_commands():
    sizes = lambda c: (c.model.variant, c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads)
    s = load_config(str(CONFIGS / "vit_s.py"))
    assert sizes(s) == ("S/16", 256, 12, 8)
    b = load_config(str(CONFIGS / "vit_b.py") + ":kmr=0.25")
    assert sizes(b) == ("B/16", 512, 12, 16)
    for c, kmr in ((s, 0.75), (b, 0.25)):
        assert c.method == "crossmae" and c.masking.ratio == 0.75 and c.crossmae.kept_mask_ratio == kmr
        assert c.crossmae.use_input and c.loss.norm_pix and c.global_batch == 4096 and c.epochs == 800
        # main_pretrain.py: lr = (kmr / mr) * blr * batch / 256 with blr 1.5e-4.
        assert c.optim.base_lr == pytest.approx(1.5e-4 * kmr / 0.75)
    cifar = load_config(str(CONFIGS / "vit_b.py") + ":cifar,smoke")
    assert cifar.model.variant == "Pico/4" and cifar.data.image_size == 32 and cifar.total_steps == 2
    assert crossmae_counts(64, cifar.masking.ratio, cifar.crossmae.kept_mask_ratio) == (16, 0, 48)


# --- training -----------------------------------------------------------------------------------

# Three trainer runs (~60 s of CPU with a cold compile cache, most of it the trainer's own init and
# step compiles): with -m slow, as the file's default part must stay well under a minute.
@pytest.mark.slow
def test_trains_and_resumes_exactly(tmp_path):
    from maskjax.train.loop import train

    config = _config(**{"total_steps": 4, "checkpoint.every_steps": 2, "crossmae.kept_mask_ratio": 0.25})
    straight = train(config, str(tmp_path / "straight"), run_evals=False)
    first = train(config, str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    assert first.step == 2
    resumed = train(config, str(tmp_path / "split"), run_evals=False)
    assert straight.step == resumed.step == 4
    losses = lambda r: {h["step"]: h["loss"] for h in r.history}
    split = {**losses(first), **losses(resumed)}
    np.testing.assert_allclose([split[s] for s in range(1, 5)], [losses(straight)[s] for s in range(1, 5)],
                               rtol=1e-6)
    assert all(np.isfinite(list(split.values())))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7),
                 jax.device_get(resumed.state["params"]), jax.device_get(straight.state["params"]))
