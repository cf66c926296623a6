"""HPM, Hard Patches Mining (Wang et al., CVPR 2023): MAE that learns to predict its own loss and masks
the patches it predicts to be hard.

specs/methods_vision.md section 10, Haochen-Wang409/HPM ``models_mae_learn_loss.py`` and
``engine_pretrain.py``. Per step:

1. the EMA teacher (:class:`~maskjax.models.hpm.HPMAutoencoder`'s ``teacher``) runs on the whole,
   unmasked image and predicts a loss for every patch;
2. the mask hides ``M = L - int(L (1 - ratio))`` patches: the ``int(M * alpha_t)`` of highest predicted
   loss plus random others, ``alpha_t = (epoch + 1) / epochs * 0.5`` (easy to hard;
   :func:`maskjax.masking.hard_patches.hpm_mask`);
3. the student reconstructs the hidden patches: MSE over hidden tokens and pixel values (raw
   pixels: the official scripts do not pass ``--norm_pix_loss``; ``loss.norm_pix`` switches it);
4. its loss predictor learns the per-token reconstruction errors ``t`` (detached) of the hidden
   tokens, with ``--relative`` (all official scripts): a pairwise BCE, for every ordered pair
   ``(i, j)`` of an image's hidden tokens ``-log(sigmoid(p_j - p_i) + 1e-6)`` if ``t_j > t_i`` and
   ``-log(1 - sigmoid(p_j - p_i) + 1e-6)`` if ``t_j < t_i``, summed over the batch and divided by the
   number of pairs with ``t_i != t_j``; otherwise MSE to ``t`` standardised per image;
5. total loss = reconstruction + loss prediction; after the optimizer step the teacher moves to
   ``decay * teacher + (1 - decay) * student`` (:meth:`HPM.after_step`), decay
   ``0.999 + epoch / 100 * (0.9999 - 0.999)`` for ``epoch < 100``, then 0.9999 (timm ``ModelEma``,
   its decay set at the start of each epoch).

The epoch. The schedule counts whole epochs as the official loop does. Step ``s`` (0-based; the
train state's step before its update) is in epoch ``s // steps_per_epoch``, where
``steps_per_epoch = num_examples // global_batch`` is the trainer's own formula
(``maskjax.train.loop.schedule_steps``; ``num_examples`` is ``data.num_train_examples`` or the
training source's length, read once when the step is first traced). With ``total_steps`` set, the
trainer runs ``total_steps`` steps whatever the epochs, and its warm-up keeps its fraction of
``epochs``; so does this schedule: epoch ``floor(s * epochs / total_steps)``, i.e. the run is
``epochs`` epochs long, and no data needs opening. ``epochs`` is the schedule's total (``alpha``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.masking import num_kept
from maskjax.masking.hard_patches import hpm_mask, hpm_num_hard
from maskjax.methods import register
from maskjax.methods.mae import EncoderMethod, check_mask_ratio, check_vit_config, compute_dtype
from maskjax.models.hpm import HPMAutoencoder, hpm_flops, visible_and_hidden_positions
from maskjax.models.layers import patchify, unpatchify
from maskjax.objectives.pixels import denormalize_prediction, norm_pix_target

NAME = "hpm"
LOG_EPS = 1e-6     # forward_learning_loss: log(sigmoid(.) + 1e-6), log(1 - sigmoid(.) + 1e-6)
STD_EPS = 1e-6     # non-relative variant: (t - mean) / (var + 1e-6) ** .5
_INT32_MAX = 2 ** 31 - 1


def relative_loss_prediction(pred: jax.Array, target: jax.Array) -> jax.Array:
    """The official ``forward_learning_loss(relative=True)`` on [B, M] predictions and (detached) targets.

    Pair ``(i, j)`` is labelled positive when ``t_j > t_i`` and negative when ``t_j < t_i`` (ties
    are not pairs); the loss is the BCE of ``sigmoid(p_j - p_i)`` against that label with 1e-6 in
    both logs, summed over every image's pairs and divided by the number of labelled pairs (at
    least 1: a batch of ties gives 0 where the official code divides by zero).
    """
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    positive = target[:, None, :] > target[:, :, None]   # [b, i, j]: t_j > t_i
    negative = target[:, None, :] < target[:, :, None]
    prob = jax.nn.sigmoid(pred[:, None, :] - pred[:, :, None])  # sigmoid(p_j - p_i)
    loss = -(jnp.where(positive, jnp.log(prob + LOG_EPS), 0.0)
             + jnp.where(negative, jnp.log(1.0 - prob + LOG_EPS), 0.0))
    pairs = jnp.sum(positive) + jnp.sum(negative)
    return jnp.sum(loss) / jnp.maximum(pairs, 1).astype(jnp.float32)


def standardized_loss_prediction(pred: jax.Array, target: jax.Array) -> jax.Array:
    """``forward_learning_loss(relative=False)``: MSE to the targets standardised per image (unbiased var)."""
    target = target.astype(jnp.float32)
    mean = target.mean(axis=1, keepdims=True)
    var = target.var(axis=1, keepdims=True, ddof=1)
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - (target - mean) / jnp.sqrt(var + STD_EPS)))


def ema_update(teacher: dict, student: dict, decay: jax.Array) -> dict:
    """``decay * teacher + (1 - decay) * student`` for every parameter of ``student`` (pure dicts).

    Entries of ``teacher`` that are not parameters (its fixed position embeddings) stay as they are.
    """
    out = dict(teacher)
    for name, value in student.items():
        if isinstance(value, dict):
            out[name] = ema_update(teacher[name], value, decay)
        else:
            old = teacher[name]
            out[name] = (decay * old + (1.0 - decay) * value).astype(old.dtype)
    return out


@register(NAME)
class HPM(EncoderMethod):
    """Hard Patches Mining: MAE + loss predictor + EMA teacher choosing hard patches to mask."""

    modality = "image"

    @classmethod
    def config_section(cls) -> dict:
        """The loss-prediction variant and the teacher's EMA schedule (official values)."""
        return {
            "relative": True,          # pairwise loss prediction (the official scripts' --relative)
            "ema_decay_start": 0.999,  # decay at epoch 0, rising linearly ...
            "ema_decay_end": 0.9999,   # ... to this at ema_ramp_epochs, constant after
            "ema_ramp_epochs": 100,
        }

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """MAE's model and ratio checks, whole epochs for the schedules, and decays in [0, 1)."""
        check_vit_config(config, errors)
        check_mask_ratio(config, errors)
        own = config.get(NAME)
        if own is None:
            errors.append(f"config has no '{NAME}' section; start the recipe from "
                          f"maskjax.config.method_config('{NAME}', base_config())")
            return
        epochs = config.get("epochs")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            errors.append(f"epochs={epochs!r}: HPM's easy-to-hard mask and EMA schedules count whole epochs; "
                          "set a positive integer (with total_steps, the run is still `epochs` epochs long)")
        elif config.get("total_steps") and config.total_steps * epochs > _INT32_MAX:
            errors.append(f"total_steps * epochs = {config.total_steps * epochs} overflows the int32 epoch "
                          "arithmetic; lower epochs")
        for field in ("ema_decay_start", "ema_decay_end"):
            if not 0.0 <= own[field] < 1.0:
                errors.append(f"{NAME}.{field}={own[field]} must be in [0, 1)")
        if own.ema_ramp_epochs <= 0:
            errors.append(f"{NAME}.ema_ramp_epochs={own.ema_ramp_epochs} must be positive")

    def __init__(self, config):
        super().__init__(config)
        own = config[NAME]
        self.mask_ratio = float(config.masking.ratio)
        self.norm_pix = bool(config.loss.norm_pix)
        self.relative = bool(own.relative)
        self.decay_start, self.decay_end = float(own.ema_decay_start), float(own.ema_decay_end)
        self.ramp_epochs = float(own.ema_ramp_epochs)
        self.epochs = int(config.epochs)
        self._steps_per_epoch: int | None = None

    def build(self, rngs):
        """:class:`HPMAutoencoder` (student + EMA teacher) from ``config.model``."""
        m, c = self.config.model, self.config
        return HPMAutoencoder(
            m.variant, image_size=c.data.image_size, in_chans=m.get("in_chans", 3),
            decoder_width=m.decoder_width, decoder_depth=m.decoder_depth, decoder_heads=m.decoder_heads,
            dtype=compute_dtype(c.get("compute_dtype", "float32")), remat=c.get("remat", False),
            attention_impl=m.get("attention_impl", None), scan_layers=bool(m.get("scan_layers", False)),
            rngs=rngs)

    # --- schedules -----------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        """``num_examples // global_batch`` as the trainer computes it (read once; module docstring)."""
        if self._steps_per_epoch is None:
            c = self.config
            num = c.data.get("num_train_examples")
            if not num:
                from maskjax.data.modalities import get_modality

                num = len(get_modality(self.modality).open_source(c, "train"))
            self._steps_per_epoch = max(int(num) // int(c.global_batch), 1)
        return self._steps_per_epoch

    def use_synthetic_data(self) -> None:
        """bench / fitcheck without data files: one epoch per ``global_batch`` examples unless told."""
        if self._steps_per_epoch is None and not self.config.data.get("num_train_examples"):
            self._steps_per_epoch = 1

    def epoch_of(self, step) -> jax.Array:
        """The epoch (int32) of 0-based step ``step``: whole epochs, as the official loop counts."""
        step = jnp.asarray(step, jnp.int32)
        total = self.config.get("total_steps")
        if total is not None:
            return (step * self.epochs) // int(total)
        return step // self.steps_per_epoch()

    def ema_decay(self, epoch) -> jax.Array:
        """``start + epoch / ramp * (end - start)`` before ``ramp`` epochs, then ``end`` (float32)."""
        epoch = jnp.asarray(epoch, jnp.float32)
        ramp = self.decay_start + epoch / self.ramp_epochs * (self.decay_end - self.decay_start)
        return jnp.where(epoch < self.ramp_epochs, ramp, self.decay_end).astype(jnp.float32)

    # --- masks and losses ----------------------------------------------------------------------

    def hard_mask(self, model: HPMAutoencoder, images: jax.Array, keys: jax.Array, epoch):
        """HPM's mask from the teacher's predicted losses on the unmasked images at ``epoch``.

        Returns ``(mask, predicted_loss)``; ``mask`` is a :class:`~maskjax.masking.Mask`.
        """
        predicted = jax.lax.stop_gradient(model.teacher.predict_loss(images))
        return hpm_mask(keys, predicted, self.mask_ratio, epoch, self.epochs), predicted

    def targets(self, images: jax.Array, patch: int, ids_hidden: jax.Array) -> jax.Array:
        """Pixel targets [B, M, p*p*C] of the hidden tokens in ``ids_hidden`` order (norm-pix if set)."""
        target = patchify(images, patch).astype(jnp.float32)
        target = jnp.take_along_axis(target, ids_hidden[..., None], axis=1)
        return norm_pix_target(target) if self.norm_pix else target

    def loss(self, model, batch, keys, train, step=None):
        """Reconstruction MSE of the hidden tokens + the loss-prediction loss, under HPM's mask."""
        images = batch["image"]
        epoch = self.epoch_of(0 if step is None else step)
        mask, _ = self.hard_mask(model, images, keys, epoch)
        keep = num_kept(model.num_patches, self.mask_ratio)
        ids_visible, ids_hidden = visible_and_hidden_positions(mask.mask, keep)
        pred, loss_pred, _ = model(images, ids_visible, ids_hidden)
        per_token = jnp.mean(jnp.square(pred.astype(jnp.float32) - self.targets(images, model.patch_size,
                                                                                 ids_hidden)), axis=-1)
        recon = jnp.mean(per_token)
        learn_fn = relative_loss_prediction if self.relative else standardized_loss_prediction
        learn = learn_fn(loss_pred, jax.lax.stop_gradient(per_token))
        total = recon + learn
        num_hard = hpm_num_hard(epoch, model.num_patches, self.mask_ratio, self.epochs)
        return total, {"loss": total, "recon_loss": recon, "learn_loss": learn,
                       "num_hard": num_hard.astype(jnp.float32)}

    def after_step(self, params, extra, step):
        """The EMA teacher follows the updated student at the decay of the update's epoch."""
        decay = self.ema_decay(self.epoch_of(step - 1))  # step counts updates: this one is step - 1
        return {**extra, "teacher": ema_update(extra["teacher"], params, decay)}

    # --- figures and cost ----------------------------------------------------------------------

    def reconstruct(self, model, inputs, key, stats: str = "visible"):
        """Original | masked | reconstruction under the last epoch's mask (half of the hidden patches
        the teacher's hardest). Arrays [B, H, W, C]; hidden patches of "masked" are NaN."""
        images = jnp.asarray(inputs)
        b, h, w, _ = images.shape
        p = model.patch_size
        mask, _ = self.hard_mask(model, images, jax.random.split(key, b), self.epochs - 1)
        ids_visible, ids_hidden = visible_and_hidden_positions(mask.mask, mask.ids_keep.shape[1])
        pred, _, _ = model(images, ids_visible, ids_hidden)
        target = patchify(images, p).astype(jnp.float32)
        # Back to positions: [visible targets, hidden predictions] sit at [ids_visible, ids_hidden].
        order = jnp.concatenate([ids_visible, ids_hidden], axis=1)
        stacked = jnp.concatenate([jnp.take_along_axis(target, ids_visible[..., None], axis=1),
                                   pred.astype(jnp.float32)], axis=1)
        pred_full = jnp.take_along_axis(stacked, jnp.argsort(order, axis=1)[..., None], axis=1)
        hidden = mask.mask
        if self.norm_pix:
            pred_full = denormalize_prediction(pred_full, target, hidden, stats)
        recon = jnp.where(hidden[..., None], pred_full, target)
        masked = jnp.where(hidden[..., None], jnp.nan, target)
        grid = (h // p, w // p)
        caption = (f"HPM mask at the last epoch (ratio {self.mask_ratio:.2f}, half of it the teacher's "
                   "hardest patches); " + ("norm-pix prediction de-normalised with the "
                                          f"{stats} patches' statistics" if self.norm_pix else "raw pixels"))
        return {"original": images, "masked": unpatchify(masked, p, *grid),
                "reconstruction": unpatchify(recon, p, *grid), "caption": caption}

    def flops(self, global_batch):
        """MAE's count + the loss predictor + the teacher's forward (no backward): models.hpm.hpm_flops."""
        return hpm_flops(self.config, global_batch)
