"""I-JEPA (maskjax/methods/ijepa.py, maskjax/models/ijepa.py; specs/methods_vision.md section 13).

References: the EMA momentum against a transcription of ``src/train.py``'s generator, the loss
against a numpy smooth-L1 on ``F.layer_norm`` targets, the padded (static-shape) computation
against the same computation on the unpadded index lists, the static token bounds against every
uniform ``jax.random.uniform`` can return, and an exact resume through the unchanged trainer.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.config import apply_overrides, load_config
from maskjax.core.state import to_tree
from maskjax.methods import NotSupported, make_method
from maskjax.methods.ijepa import momentum, smooth_l1
from maskjax.models.ijepa import Predictor, fix_init_weight, max_context_tokens, max_target_tokens

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "ijepa" / "vit_h14.py"
# The :cifar,smoke recipe (8x8 grid at 32 px, min_keep 2) with a micro model.
TINY = {"model.variant": "mu/4", "global_batch": 16, "ijepa.pred_width": 32, "ijepa.pred_depth": 1,
        "progress": False}


def _config(**overrides):
    config = load_config(f"{CONFIG}:cifar,smoke")
    apply_overrides(config, {**TINY, **overrides})
    return config


def _official_momentum(ema, ipe, epochs, ipe_scale):
    """src/train.py's momentum_scheduler generator, as a list."""
    return [ema[0] + i * (ema[1] - ema[0]) / (ipe * epochs * ipe_scale)
            for i in range(int(ipe * epochs * ipe_scale) + 1)]


def _build(build, seed=0):
    """A model built inside one jitted function (eager init would compile op by op)."""
    return nnx.jit(lambda: build(nnx.Rngs(params=jax.random.key(seed))))()


@pytest.fixture(scope="module")
def tiny():
    """(method, model) of the tiny config."""
    method = make_method(_config())
    return method, _build(method.build)


# --- EMA --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ipe,epochs,ipe_scale", [(625, 300, 1.0), (7, 5, 1.25), (78, 6, 1.0)])
def test_momentum_matches_the_official_generator(ipe, epochs, ipe_scale):
    official = _official_momentum((0.996, 1.0), ipe, epochs, ipe_scale)
    total = ipe * epochs
    steps = np.unique(np.r_[np.arange(min(total, 50)), np.linspace(0, total - 1, 200).astype(int)])
    got = np.asarray(momentum(jnp.asarray(steps), total, (0.996, 1.0), ipe_scale))
    np.testing.assert_allclose(got, np.asarray(official)[steps], rtol=0, atol=2e-7)
    assert got[0] == np.float32(0.996)
    # ipe_scale 1: the last update of the run uses the generator's second-to-last value (< 1).
    assert official[total - 1] < 1.0 and (ipe_scale != 1.0 or np.isclose(official[total], 1.0))


def test_recipe_momentum_runs_over_the_official_iterations():
    # IN-1K ViT-H/14: ipe = len(loader) = 1281167 // (128 x 16) = 625 iterations x 300 epochs.
    method = make_method(load_config(str(CONFIG)))
    official = _official_momentum((0.996, 1.0), 625, 300, 1.0)
    for i in (0, 1, 1000, 187_499):
        np.testing.assert_allclose(float(method.momentum(jnp.int32(i))), official[i], rtol=0, atol=2e-7)


def test_after_step_is_the_ema_formula(tiny):
    method, model = tiny
    _, params, extra = nnx.split(model, nnx.Param, ...)
    params, extra = to_tree(params), to_tree(extra)
    assert "target_encoder" not in params  # the target is state, never optimised
    bumped = jax.tree.map(lambda x: x + 0.5, params)
    total = method.config.total_steps
    official = _official_momentum((0.996, 1.0), total, 1, 1.0)
    after_step = jax.jit(method.after_step)
    for step in (1, total):
        new = jax.device_get(after_step(bumped, extra, jnp.int32(step)))
        m = official[step - 1]
        for path, t_new in jax.tree_util.tree_flatten_with_path(new["target_encoder"])[0]:
            keys = [p.key for p in path]
            t_old = extra["target_encoder"]
            for k in keys:
                t_old = t_old[k]
            if keys[-1] == "pos_embed":
                np.testing.assert_array_equal(t_new, t_old)  # fixed buffer: untouched
                continue
            online = bumped["encoder"]
            for k in keys:
                online = online[k]
            expected = m * np.asarray(t_old, np.float64) + (1 - m) * np.asarray(online, np.float64)
            np.testing.assert_allclose(t_new, expected, rtol=1e-6, atol=1e-7)
        jax.tree.map(np.testing.assert_array_equal, new["encoder"], extra["encoder"])


# --- static bounds ----------------------------------------------------------------------------------

def _all_block_sizes(grid, scale, aspect):
    """h * w of multiblock_block_size for every float32 jax.random.uniform can return (k / 2^23)."""
    from maskjax.masking.multiblock import multiblock_block_size

    u = jnp.arange(2**23, dtype=jnp.float32) * jnp.float32(2.0**-23)
    hw = jax.jit(jax.vmap(lambda x: multiblock_block_size(x, grid, grid, scale, aspect)))(u)
    return np.asarray(hw[:, 0] * hw[:, 1])


@pytest.mark.parametrize("grid", [8, 14, 16])
def test_static_bounds_cover_every_draw(grid):
    areas = _all_block_sizes(grid, (0.15, 0.2), (0.75, 1.5))
    bound = max_target_tokens(grid, (0.15, 0.2), (0.75, 1.5))
    assert areas.max() <= bound <= areas.max() + 0.1 * grid * grid  # covers, and not far above
    context = _all_block_sizes(grid, (0.85, 1.0), (1.0, 1.0))
    assert context.max() == max_context_tokens(grid, (0.85, 1.0))  # exact for aspect 1


# --- model and loss ---------------------------------------------------------------------------------

def _hand_masks(rng, batch, grid, nenc, npred, kc, kt, context_len, target_len):
    """Masks as IJEPA.masks returns them, random positions, given per-example lengths."""
    L = grid * grid
    ctx = np.stack([np.stack([rng.permutation(L)[:kc] for _ in range(nenc)]) for _ in range(batch)])
    tgt = np.stack([np.stack([rng.permutation(L)[:kt] for _ in range(npred)]) for _ in range(batch)])
    return {"context_ids": jnp.asarray(ctx, jnp.int32), "target_ids": jnp.asarray(tgt, jnp.int32),
            "context_valid": jnp.arange(kc)[None] < jnp.asarray(context_len)[:, None],
            "target_valid": jnp.arange(kt)[None] < jnp.asarray(target_len)[:, None]}


def _numpy_loss(pred, h, masks, target_len):
    """smooth_l1_loss(beta=1, mean) of pred vs F.layer_norm(h) gathered, over the real tokens only."""
    h = np.asarray(h, np.float64)
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    pred, ids = np.asarray(pred, np.float64), np.asarray(masks["target_ids"])
    diffs = []
    for b in range(pred.shape[0]):
        n = int(target_len[b])
        for i in range(pred.shape[1]):
            for j in range(pred.shape[2]):
                diffs.append(pred[b, i, j, :n] - h[b, ids[b, j, :n]])
    d = np.abs(np.concatenate(diffs))
    return np.where(d < 1, 0.5 * d * d, d - 0.5).mean()


CONTEXT_LEN, TARGET_LEN = np.array([13, 21]), np.array([12, 12])


@pytest.fixture(scope="module")
def padded(tiny):
    """Two images with hand-made masks (per-example context lengths, as truncation groups give),
    the same masks with every padded slot pointing elsewhere, and the model's outputs on both."""
    method, model = tiny
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
    masks = _hand_masks(rng, 2, 8, 1, 4, method.context_tokens, method.target_tokens, CONTEXT_LEN, TARGET_LEN)
    swapped = dict(masks)
    for name, lens in (("context_ids", CONTEXT_LEN), ("target_ids", TARGET_LEN)):
        ids = np.asarray(masks[name]).copy()
        for b, n in enumerate(lens):
            ids[b, :, n:] = rng.integers(0, 64, size=ids[b, :, n:].shape)
        swapped[name] = jnp.asarray(ids)

    @nnx.jit
    def run(model, images, masks):
        pred, target = method.predict(model, images, masks)
        loss = smooth_l1(pred, target, masks["target_valid"][:, None, None, :])
        big = 4.0 * pred  # both branches of smooth-L1 (|d| < 1 and |d| >= 1)
        return pred, target, loss, smooth_l1(big, target, masks["target_valid"][:, None, None, :])

    return images, masks, swapped, run(model, images, masks), run(model, images, swapped)


def test_loss_is_smooth_l1_on_layer_normed_targets(tiny, padded):
    method, model = tiny
    images, masks, _, (pred, target, loss, loss_big), _ = padded
    h = nnx.jit(lambda m, x: m.target_encoder(x)[0])(model, images)
    np.testing.assert_allclose(float(loss), _numpy_loss(pred, h, masks, TARGET_LEN), rtol=1e-5)
    far = np.abs(4 * np.asarray(pred) - np.asarray(target))[..., :12, :] >= 1
    assert 0.05 < far.mean() < 0.95
    np.testing.assert_allclose(float(loss_big), _numpy_loss(4 * pred, h, masks, TARGET_LEN), rtol=1e-5)


def test_padding_is_exact_and_invisible(tiny, padded):
    """Padded index entries change nothing: replacing every padded index leaves the loss and the
    real predictions unchanged, and the padded batch equals the unpadded run of each example."""
    method, model = tiny
    images, masks, _, (pred, _, loss, _), (pred2, _, loss2, _) = padded
    assert float(loss2) == pytest.approx(float(loss), rel=1e-6)

    # Example 0 (13 of 49 context slots real, 12 of 15 target slots) run alone on its exact-length
    # index lists, the official computation.
    nc, nt = int(CONTEXT_LEN[0]), int(TARGET_LEN[0])

    @nnx.jit
    def unpadded(model, images):
        ctx_ids = masks["context_ids"][:1, :, :nc]
        ctx = model.encoder.context(images[:1], ctx_ids, jnp.ones((1, nc), bool))
        return model.predictor(ctx, ctx_ids[:, 0], jnp.ones((1, nc), bool), masks["target_ids"][:1, :, :nt],
                               jnp.ones((1, nt), bool))[0]

    alone = unpadded(model, images)
    np.testing.assert_allclose(pred[0, 0, :, :nt], alone, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(pred2[0, 0, :, :nt], alone, rtol=2e-5, atol=2e-6)


def test_predictor_shapes_and_init(tiny, padded):
    method, model = tiny
    _, _, _, (pred, target, _, _), _ = padded
    assert pred.shape == (2, 1, 4, method.target_tokens, 32) and target.shape == (2, 1, 4, method.target_tokens, 32)
    shapes = to_tree(nnx.state(nnx.eval_shape(
        lambda: Predictor(grid=4, width=32, pred_width=16, depth=2, heads=2, rngs=nnx.Rngs(0)))))
    assert shapes["predictor_pos_embed"].shape == (1, 16, 16) and shapes["mask_token"].shape == (1, 1, 16)
    assert shapes["predictor_embed"]["kernel"].shape == (32, 16)
    assert shapes["predictor_proj"]["kernel"].shape == (16, 32)
    assert sorted(shapes["predictor_blocks"]) == ["0", "1"] and shapes["predictor_norm"]["scale"].shape == (16,)
    # helper.init_model: Linear weights trunc_normal(0.02), biases 0, mask token trunc_normal(0.02).
    for kernel in (model.encoder.blocks[0].mlp.fc1.kernel, model.encoder.patch_embed.proj.kernel,
                   model.predictor.predictor_blocks[0].attn.qkv.kernel):
        k = np.asarray(kernel[...])
        assert abs(k.std() - 0.02) < 0.1 * 0.02 and abs(k.mean()) < 0.002
    assert abs(np.asarray(model.predictor.mask_token[...]).std() - 0.02) < 0.3 * 0.02
    for layer in (model.encoder.blocks[1].attn.proj, model.encoder.patch_embed.proj, model.predictor.predictor_proj):
        assert not np.any(np.asarray(layer.bias[...]))
    # fix_init_weight (on request) divides attn.proj / mlp.fc2 of block i by sqrt(2 (i + 1)).
    fixed = nnx.clone(model.encoder.blocks)
    fix_init_weight(fixed)
    for i, (a, b) in enumerate(zip(model.encoder.blocks, fixed)):
        for layer_a, layer_b in ((a.attn.proj, b.attn.proj), (a.mlp.fc2, b.mlp.fc2)):
            np.testing.assert_allclose(layer_b.kernel[...], layer_a.kernel[...] / np.sqrt(2 * (i + 1)), rtol=1e-6)
        np.testing.assert_array_equal(a.mlp.fc1.kernel[...], b.mlp.fc1.kernel[...])
    # The target encoder starts as an exact copy of the context encoder.
    jax.tree.map(np.testing.assert_array_equal, to_tree(nnx.state(model.target_encoder)),
                 to_tree(nnx.state(model.encoder)))


# --- masks: batch key and truncation groups ---------------------------------------------------------

def test_truncation_groups_are_accumulation_invariant():
    method = make_method(_config(**{"ijepa.truncate_group": 4}))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(5), i))(jnp.arange(16))
    step = jnp.int32(7)

    @jax.jit
    def both(keys):
        # The trainer's strided split under grad_accum 2: micro-batch j = examples j, j + 2, ...
        micro = jax.vmap(lambda k: method.masks(k, step))(keys.reshape(8, 2).T)
        return method.masks(keys, step), micro

    whole, micro = jax.device_get(both(keys))
    for j in range(2):
        for name, value in micro.items():
            np.testing.assert_array_equal(value[j], whole[name][j::2], err_msg=name)
    # Group g = examples g, g + 4, ...: one context length per group, one target size per batch.
    lens = whole["context_len"].reshape(4, 4)
    assert (lens == lens[:1]).all() and len(set(whole["target_len"])) == 1
    assert (whole["context_valid"].sum(1) == whole["context_len"]).all()


# --- training through the trainer -----------------------------------------------------------------

@pytest.mark.slow  # the trainer's compiles (~40-50 s cold on 2 cores); CI time budget
def test_trains_and_resumes_exactly_with_the_ema_state(tmp_path):
    from maskjax.train.loop import train

    config = lambda: _config(total_steps=4, **{"checkpoint.every_steps": 4})
    straight = train(config(), str(tmp_path / "straight"))
    first = train(config(), str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    resumed = train(config(), str(tmp_path / "split"))
    assert first.step == 2 and resumed.step == straight.step == 4
    losses = lambda r: {h["step"]: h["loss"] for h in r.history}
    split = {**losses(first), **losses(resumed)}
    np.testing.assert_allclose([split[s] for s in range(1, 5)], [losses(straight)[s] for s in range(1, 5)], rtol=1e-6)
    t_straight = jax.device_get(straight.state["extra"]["target_encoder"])
    t_resumed = jax.device_get(resumed.state["extra"]["target_encoder"])
    jax.tree.map(np.testing.assert_array_equal, t_straight, t_resumed)  # bitwise
    # The target moved (EMA of a moving encoder) but lags the encoder.
    online = jax.device_get(straight.state["params"]["encoder"]["blocks"]["0"]["mlp"]["fc1"]["kernel"])
    target = t_straight["blocks"]["0"]["mlp"]["fc1"]["kernel"]
    assert np.isfinite(target).all() and not np.allclose(target, online)
    assert all(np.isfinite(h["loss"]) and 0 < h["target_tokens"] < 64 for h in straight.history)


# --- features, config checks, FLOPs -------------------------------------------------------------

def test_features_encoder_and_flops(tiny):
    method, model = tiny
    images = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 3)), jnp.float32)
    encoder = method.encoder(model)

    @nnx.jit
    def feats(model, encoder, images):
        return (method.features(model, images), method.features(model, images, pool="pooled"),
                encoder(images)[1]["pooled"], model.target_encoder(images)[0].mean(axis=1))

    target, context, finetuned, mean = feats(model, encoder, images)
    assert target.shape == context.shape == (2, 32) and not np.allclose(target, 0)
    np.testing.assert_allclose(target, mean, rtol=1e-5, atol=1e-6)  # mean of the final-norm tokens
    np.testing.assert_allclose(finetuned, target, rtol=1e-5, atol=1e-6)
    with pytest.raises(NotSupported, match="no cls token"):
        method.features(model, images, pool="cls")
    # What fine-tuning trains: Params holding the target encoder's weights.
    params = to_tree(nnx.state(encoder, nnx.Param))
    state = to_tree(nnx.state(model.target_encoder))
    jax.tree.map(np.testing.assert_array_equal, params, {k: v for k, v in state.items() if k != "pos_embed"})
    assert method.feature_name() == "target_pooled"
    count = method.flops(16)
    assert count.forward == pytest.approx(sum(count.parts.values()))
    assert count.train == pytest.approx(3 * count.forward - 2 * count.parts["target_encoder"])


@pytest.mark.parametrize("overrides,message", [
    ({"ijepa.min_keep": 12}, "min_keep=12"),
    ({"ijepa.pred_width": 18}, "pred_width=18 must be a multiple of 4"),
    ({"ijepa.truncate_group": 3}, "truncate_group=3 must divide the micro-batch"),
    ({"ijepa.ema": (0.99, 1.1)}, "ema=\\(0.99, 1.1\\)"),
    ({"ijepa.ipe_scale": 0.5}, "ipe_scale=0.5"),
    ({"total_steps": None, "data.num_train_examples": None}, "needs the run length"),
    ({"ijepa.pred_mask_scale": (0.3, 0.2)}, "pred_mask_scale"),
])
def test_check_config_messages(overrides, message):
    from maskjax.errors import ConfigError
    from maskjax.train.validate import validate_config

    validate_config(_config())
    with pytest.raises(ConfigError, match=message):
        validate_config(_config(**overrides))
