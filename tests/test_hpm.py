"""HPM (specs/methods_vision.md section 10): loss predictor, EMA teacher, hard-patch masks, in maskjax.

References are transcriptions of the official ``models_mae_learn_loss.py``: ``forward_learning_loss``
(numpy, ties included), ``forward_encoder`` / ``forward_decoder`` with torch's boolean indexing
(``x[~mask]``, ``pos[mask]``: positions in ascending order, no unshuffle) written with numpy
indices, ``forward_loss`` (``loss.mean()`` over the hidden tokens), the EMA decay of
``engine_pretrain.py`` and ``generate_mask``'s count ``int((L - len_keep) * (epoch + 1) / total * 0.5)``.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.config import apply_overrides, load_config
from maskjax.core.trees import to_tree
from maskjax.methods import make_method
from maskjax.models.hpm import EMATeacher
from maskjax.models.layers import patchify

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "hpm" / "vit_b.py")
# 16x16 images, 4x4 patches: L = 16, 4 visible, M = 12 hidden. epochs = total_steps = 4: one step per epoch.
TINY = {"model.variant": "mu/4", "data.image_size": 16, "model.decoder_width": 32, "model.decoder_depth": 1,
        "model.decoder_heads": 2, "global_batch": 16, "optim.base_lr": 1e-2, "progress": False,
        "total_steps": 4, "epochs": 4}


def _config(arg="smoke", **overrides):
    config = load_config(f"{CONFIG}:{arg}")
    apply_overrides(config, {**TINY, **overrides})
    return config


@pytest.fixture(scope="module")
def tiny_model():
    """The smoke recipe at test size and one model (student + teacher) built from it."""
    config = _config()
    method = make_method(config)
    return config, method, method.build(nnx.Rngs(0))


# --------------------------------------------------------------------------------------------
# numpy transcriptions of the official code


def ref_learning_loss(loss_pred, loss_target, relative=True):
    """``forward_learning_loss``: ``unsqueeze(1)`` indexes j, ``unsqueeze(2)`` indexes i."""
    p, t = np.asarray(loss_pred, np.float64), np.asarray(loss_target, np.float64)
    if relative:
        labels_positive = t[:, None, :] > t[:, :, None]
        labels_negative = t[:, None, :] < t[:, :, None]
        labels_valid = labels_positive.astype(int) + labels_negative.astype(int)
        loss_matrix = p[:, None, :] - p[:, :, None]
        sig = 1.0 / (1.0 + np.exp(-loss_matrix))
        loss = (-labels_positive.astype(int) * np.log(sig + 1e-6)
                - labels_negative.astype(int) * np.log(1 - sig + 1e-6))
        return loss.sum() / labels_valid.sum()
    mean = t.mean(axis=1, keepdims=True)
    var = t.var(axis=1, keepdims=True, ddof=1)
    return np.mean((p - (t - mean) / (var + 1e-6) ** 0.5) ** 2)


def ref_ema_decay(epoch):
    """``engine_pretrain.py``: set at the start of each epoch."""
    return 0.999 + epoch / 100 * (0.9999 - 0.999) if epoch < 100 else 0.9999


def ref_forward(model, images, hidden):
    """``forward_encoder`` + ``forward_decoder`` of the official model with a boolean mask [B, L] (numpy).

    Returns (pix_pred[:, -M:], loss_pred[:, -M:]) and, with nothing hidden, every token's outputs.
    """
    enc = model.encoder
    vis_ids = np.stack([np.flatnonzero(~h) for h in hidden])        # x[~mask]: ascending positions
    hid_ids = np.stack([np.flatnonzero(h) for h in hidden]) if hidden.any() else np.zeros((len(hidden), 0), int)
    x = enc.patch_embed(images) + enc.pos_embed[...][:, 1:]
    x = jnp.take_along_axis(x, jnp.asarray(vis_ids)[..., None], axis=1)
    cls = jnp.broadcast_to(enc.cls_token[...] + enc.pos_embed[...][:, :1], (x.shape[0], 1, x.shape[2]))
    x = jnp.concatenate([cls, x], axis=1)
    for blk in enc.blocks:
        x = blk(x)
    x = model.decoder_embed(enc.norm(x))
    pos = model.decoder_pos_embed[...][0]
    x_ = jnp.concatenate([x[:, 1:] + pos[1:][vis_ids], model.mask_token[...] + pos[1:][hid_ids]], axis=1)
    x = jnp.concatenate([x[:, :1] + pos[:1], x_], axis=1)
    loss_pred = x
    for blk in model.decoder_blocks:
        x = blk(x)
    pix = model.decoder_pred(model.decoder_norm(x))[:, 1:]
    for blk in model.decoder_blocks_losspred:
        loss_pred = blk(loss_pred)
    loss_pred = model.decoder_pred_losspred(model.decoder_norm_losspred(loss_pred))[:, 1:].mean(axis=-1)
    m = hid_ids.shape[1]
    return (pix[:, -m:], loss_pred[:, -m:]) if m else (pix, loss_pred)


# --------------------------------------------------------------------------------------------


def test_pairwise_loss_matches_official_with_ties():
    from maskjax.methods.hpm import relative_loss_prediction, standardized_loss_prediction

    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 12)).astype(np.float32)
    ties = rng.integers(0, 4, size=(3, 12)).astype(np.float32)  # many equal targets: not pairs
    smooth = rng.random((3, 12)).astype(np.float32)
    fn = jax.jit(lambda p, t: (relative_loss_prediction(p, t), standardized_loss_prediction(p, t)))
    for target in (ties, smooth):
        rel, std = fn(pred, target)
        np.testing.assert_allclose(float(rel), ref_learning_loss(pred, target), rtol=1e-5)
        np.testing.assert_allclose(float(std), ref_learning_loss(pred, target, relative=False), rtol=1e-5)
    # By hand: two tokens, t = (1, 2), p = (0, 3): pair (0, 1) positive, (1, 0) negative.
    s = 1 / (1 + np.exp(-3.0))
    expected = (-np.log(s + 1e-6) - np.log(1 - (1 - s) + 1e-6)) / 2
    got, _ = fn(np.array([[0.0, 3.0]], np.float32), np.array([[1.0, 2.0]], np.float32))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    # All ties: no pair; 0 (the official code would divide by zero).
    got, _ = fn(pred, np.ones_like(pred))
    assert float(got) == 0.0


def test_ema_decay_schedule_and_epoch_of_step():
    method = make_method(_config())
    epochs = np.arange(0, 160)
    got = np.asarray(jax.jit(method.ema_decay)(epochs))
    np.testing.assert_allclose(got, [ref_ema_decay(e) for e in epochs], rtol=0, atol=1e-7)
    # total_steps set: the run spans `epochs` epochs (here 4 steps, 4 epochs: one step each).
    np.testing.assert_array_equal(np.asarray(method.epoch_of(jnp.arange(4))), [0, 1, 2, 3])
    spread = make_method(_config(**{"epochs": 2}))
    np.testing.assert_array_equal(np.asarray(spread.epoch_of(jnp.arange(4))), [0, 0, 1, 1])
    # No total_steps: the trainer's steps per epoch (num_examples // global_batch = 160 // 16).
    by_data = make_method(_config(**{"total_steps": None, "data.num_train_examples": 160}))
    np.testing.assert_array_equal(np.asarray(by_data.epoch_of(jnp.array([0, 9, 10, 25]))), [0, 0, 1, 2])


def test_after_step_moves_the_teacher_by_the_formula(tiny_model):
    _, method, model = tiny_model
    _, params, extra = nnx.split(model, nnx.Param, ...)
    params, extra = to_tree(params), to_tree(extra)
    # The teacher starts as a copy of the student (timm ModelEma deep-copies the initialised model).
    jax.tree_util.tree_map_with_path(
        lambda path, p: np.testing.assert_array_equal(tree_get(extra["teacher"], [k.key for k in path]), p), params)
    moved = jax.tree.map(lambda p: p + 1.0, params)
    new = jax.jit(method.after_step)(moved, extra, jnp.int32(3))  # update 3 of the run: epoch 2
    decay = ref_ema_decay(2)
    kernel = ("decoder_blocks_losspred", "0", "mlp", "fc1", "kernel")
    t_old, t_new, s = (np.asarray(tree_get(t, kernel)) for t in (extra["teacher"], new["teacher"], moved))
    np.testing.assert_allclose(t_new, decay * t_old + (1 - decay) * s, rtol=1e-6, atol=1e-7)  # float32
    # Non-parameter entries (fixed position embeddings) and the student's buffers are untouched.
    np.testing.assert_array_equal(new["teacher"]["decoder_pos_embed"], extra["teacher"]["decoder_pos_embed"])
    np.testing.assert_array_equal(new["encoder"]["pos_embed"], extra["encoder"]["pos_embed"])
    assert all(isinstance(v, EMATeacher) for _, v in nnx.to_flat_state(nnx.state(model.teacher, EMATeacher)))
    assert not nnx.state(model.teacher, nnx.Param)  # no gradient reaches the teacher


def tree_get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_forward_loss_and_hard_mask_match_the_official_model(tiny_model):
    config, method, model = tiny_model
    b, length, keep, epoch, epochs = 4, 16, 4, 2, 4
    images = jax.random.normal(jax.random.key(1), (b, 16, 16, 3))
    keys = jax.random.split(jax.random.key(2), b)

    @nnx.jit
    def run(model, images, keys):
        mask, predicted = method.hard_mask(model, images, keys, jnp.int32(epoch))
        loss, metrics = method.loss(model, {"image": images}, keys, True, step=jnp.int32(epoch))
        return mask.mask, predicted, loss, metrics

    hidden, predicted, loss, metrics = run(model, images, keys)
    hidden, predicted = np.asarray(hidden), np.asarray(predicted)

    @nnx.jit
    def reference(model, images):
        teacher_all = ref_forward(model.teacher, images, np.zeros((b, length), bool))[1]
        return teacher_all, *ref_forward(model, images, hidden)

    teacher_all, pix, loss_pred = (np.asarray(a, np.float64) for a in reference(model, images))
    # The teacher's predicted loss: the official pass with nothing masked.
    np.testing.assert_allclose(predicted, teacher_all, rtol=1e-5, atol=1e-6)
    # generate_mask: M hidden, the int(M * (epoch + 1) / epochs * 0.5) highest predicted among them.
    masked = length - keep
    n_hard = int(masked * float((epoch + 1) / epochs) * 0.5)
    assert n_hard == 4 and (hidden.sum(axis=1) == masked).all()
    for row, scores in zip(hidden, predicted):
        assert row[np.argsort(-scores)[:n_hard]].all()
    # forward_loss (raw pixels, mean over hidden tokens) + forward_learning_loss on the same tokens.
    target = np.stack([np.asarray(patchify(images, 4))[i][np.flatnonzero(hidden[i])] for i in range(b)])
    per_token = ((pix - target) ** 2).mean(axis=-1)
    np.testing.assert_allclose(float(metrics["recon_loss"]), per_token.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["learn_loss"]), ref_learning_loss(loss_pred, per_token), rtol=1e-4)
    np.testing.assert_allclose(float(loss), per_token.mean() + ref_learning_loss(loss_pred, per_token), rtol=1e-5)
    assert float(metrics["num_hard"]) == n_hard


def test_features_reconstruct_and_flops(tiny_model):
    config, method, model = tiny_model
    images = jax.random.normal(jax.random.key(5), (3, 16, 16, 3))
    cls, recon, masked = nnx.jit(lambda m, x: (
        method.features(m, x), *(lambda o: (o["reconstruction"], o["masked"]))(
            method.reconstruct(m, x, jax.random.key(6)))))(model, images)
    assert cls.shape == (3, 32) and method.encoder(model) is model.encoder
    assert recon.shape == images.shape
    assert np.isnan(np.asarray(masked)).any(axis=-1).mean() == pytest.approx(0.75)
    from maskjax.models.flop_count import mae_flops

    count, mae = method.flops(16), mae_flops(config, 16)
    teacher = count.parts["teacher_forward"]
    assert count.no_grad_forward == teacher > 0 and count.parts["loss_predictor"] > 0
    # The teacher runs forward only; everything else forward and backward.
    assert count.train == pytest.approx(3 * (count.forward - teacher) + teacher)
    assert count.train > mae.train


def test_check_config_messages():
    from maskjax.errors import ConfigError
    from maskjax.train.validate import validate_config

    validate_config(_config())
    for overrides, match in [({"epochs": 0}, "whole epochs"),
                             ({"hpm.ema_decay_end": 1.0}, r"ema_decay_end=1.0 must be in \[0, 1\)"),
                             ({"hpm.ema_ramp_epochs": 0}, "must be positive"),
                             ({"total_steps": 2 ** 30, "epochs": 4}, "overflows"),
                             ({"data.image_size": 18}, "not divisible by the patch size")]:
        with pytest.raises(ConfigError, match=match):
            validate_config(_config(**overrides))
    with pytest.raises(ValueError, match="200 or 800"):
        load_config(f"{CONFIG}:epochs=1600")


def test_configs_follow_the_recipe():
    for epochs, batch in ((200, 2048), (800, 256)):
        c = load_config(f"{CONFIG}:epochs={epochs}")
        assert (c.method, c.epochs, c.global_batch, c.masking.ratio, c.loss.norm_pix) == ("hpm", epochs, batch,
                                                                                           0.75, False)
        assert c.optim.base_lr == 1.5e-4 and c.optim.warmup_epochs == 40 and c.hpm.relative
        assert c.evals.finetune.layer_decay == 0.8 and c.evals.finetune.batch_size == 384
    cifar = load_config(f"{CONFIG}:cifar")
    assert (cifar.model.variant, cifar.data.image_size, cifar.model.decoder_width) == ("Pico/4", 32, 96)


@pytest.mark.slow  # three trainer runs: ~40 s of CPU with a cold compile cache
def test_trains_and_resumes_exactly_with_the_teacher(tmp_path):
    from maskjax.train.loop import train

    straight = train(_config(), str(tmp_path / "straight"), run_evals=False)
    first = train(_config(), str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    resumed = train(_config(), str(tmp_path / "split"), run_evals=False)
    assert first.step == 2 and resumed.step == straight.step == 4
    losses = lambda r, k="loss": {h["step"]: h[k] for h in r.history}
    for key in ("loss", "recon_loss", "learn_loss", "num_hard"):
        split = {**losses(first, key), **losses(resumed, key)}
        np.testing.assert_allclose([split[s] for s in range(1, 5)], [losses(straight, key)[s] for s in range(1, 5)],
                                   rtol=1e-6)
    # alpha grows one epoch per step: int(12 * (e + 1) / 4 * 0.5) hard patches.
    assert [losses(straight, "num_hard")[s] for s in range(1, 5)] == [1, 3, 4, 6]
    teacher = lambda r: jax.device_get(r.state["extra"]["teacher"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), teacher(resumed),
                 teacher(straight))
    student = jax.device_get(straight.state["params"])
    kernel = ("decoder_pred_losspred", "kernel")
    t, s = np.asarray(tree_get(teacher(straight), kernel)), np.asarray(tree_get(student, kernel))
    assert np.isfinite(t).all() and not np.allclose(t, s)  # the teacher lags the student
