"""AudioMAE: masked filterbank patches + ViT encoder / local decoder + norm-pix MSE on hidden patches.

Batches are ``{"spectrogram": f32[B, T, F, 1], "label": i32[B]}`` (specs/methods_vision.md
section 8). ``config.masking.kind``: ``random`` (MAE's unstructured masking, ratio 0.8: the
pre-training default) or ``time_freq`` (``random_masking_2d``: whole time rows / frequency
columns at ``mask_t_prob`` / ``mask_f_prob``). The loss is MAE's ``forward_loss`` with a one-channel
patchify (p*p values per token), per-patch normalised when ``config.loss.norm_pix``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.masking import mask_from_noise, num_kept, uniform_noise
from maskjax.masking.audio import num_kept_lines, time_freq_mask
from maskjax.methods import register
from maskjax.methods.mae import EncoderMethod, compute_dtype
from maskjax.models.audio_mae import DECODER_MODES, POS_EMBEDS, AudioMAE
from maskjax.models.layers import patchify
from maskjax.models.swin_decoder import calc_window_shift
from maskjax.objectives.pixels import masked_mse, norm_pix_target

MASK_KINDS = ("random", "time_freq")


def example_keys(keys: jax.Array, batch: int) -> jax.Array:
    """Per-example typed keys from one key or ``batch`` keys (legacy uint32 keys are wrapped)."""
    if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.wrap_key_data(keys)
    if keys.ndim == 0:
        keys = jax.random.split(keys, batch)
    return keys


def _check_masking(config, grid: tuple[int, int] | None, errors: list[str]) -> None:
    kind = config.masking.get("kind", "random")
    if kind not in MASK_KINDS:
        errors.append(f"masking.kind {kind!r} is not an AudioMAE masking; use one of {MASK_KINDS}")
        return
    if grid is None:
        return
    try:
        if kind == "random":
            num_kept(grid[0] * grid[1], float(config.masking.ratio))
        else:
            num_kept_lines(grid[0], float(config.masking.mask_t_prob), "masking.mask_t_prob")
            num_kept_lines(grid[1], float(config.masking.mask_f_prob), "masking.mask_f_prob")
    except ValueError as e:
        errors.append(f"masking: {e}")


@register("audiomae")
class AudioMAEMethod(EncoderMethod):
    """Masked Autoencoders that Listen (Huang et al., NeurIPS 2022)."""

    default_pool = "pooled"  # the mean of the patch tokens: the fine-tuning feature
    modality = "audio"

    @staticmethod
    def check_config(config, errors: list[str]) -> None:
        """Patch divides the spectrogram, decoder heads divide its width, the window fits the grid."""
        from maskjax.models.vit import parse_variant

        m = config.model
        grid = None
        try:
            _, patch = parse_variant(m.variant)
        except ValueError as e:
            errors.append(str(e))
            patch = None
        if patch:
            t, f = config.data.target_length, config.data.num_mel_bins
            if t % patch or f % patch:
                errors.append(f"data.target_length {t} and data.num_mel_bins {f} must be multiples of the "
                              f"patch size {patch} of model.variant {m.variant!r}")
            else:
                grid = (t // patch, f // patch)
        mode = m.get("decoder_mode", "swin")
        if mode not in DECODER_MODES:
            errors.append(f"model.decoder_mode {mode!r} is not one of {DECODER_MODES}")
        if m.decoder_width % m.decoder_heads:
            errors.append(f"model.decoder_width {m.decoder_width} is not divisible by model.decoder_heads "
                          f"{m.decoder_heads}")
        if m.get("pos_embed", "official") not in POS_EMBEDS:
            errors.append(f"model.pos_embed {m.get('pos_embed')!r} is not one of {POS_EMBEDS}")
        if mode == "swin" and grid is not None:
            window, shift = tuple(m.window), tuple(m.shift)
            if len(window) != 2 or len(shift) != 2 or min(window) < 1 or min(shift) < 0:
                errors.append(f"model.window {window} and model.shift {shift} must be pairs (time, freq) of "
                              f"positive window sizes and non-negative shifts")
            else:
                win, sft = calc_window_shift(grid, window, shift)
                if grid[0] % win[0] or grid[1] % win[1]:
                    errors.append(f"model.window {window} does not divide the {grid[0]}x{grid[1]} token grid")
                if any(s >= w for s, w in zip(sft, win)):
                    errors.append(f"model.shift {shift} must be smaller than model.window {window}")
        _check_masking(config, grid, errors)

    def __init__(self, config):
        super().__init__(config)
        self.kind = config.masking.get("kind", "random")
        if self.kind not in MASK_KINDS:
            raise ValueError(f"masking.kind {self.kind!r} is not an AudioMAE masking; use one of {MASK_KINDS}")
        self.norm_pix = bool(config.loss.norm_pix)

    def build(self, rngs):
        """Builds :class:`AudioMAE` from ``config.model`` and ``config.data.{target_length, num_mel_bins}``."""
        m, c = self.config.model, self.config
        return AudioMAE(
            m.variant,
            target_length=c.data.target_length,
            num_mel_bins=c.data.num_mel_bins,
            decoder_mode=m.get("decoder_mode", "swin"),
            decoder_width=m.decoder_width,
            decoder_depth=m.decoder_depth,
            decoder_heads=m.decoder_heads,
            window=tuple(m.get("window", (4, 4))),
            shift=tuple(m.get("shift", (2, 0))),
            pos_embed=m.get("pos_embed", "official"),
            swin_depth=m.get("swin_depth", 16),
            dtype=compute_dtype(c.get("compute_dtype", "float32")),
            remat=c.get("remat", False),
            scan_layers=bool(m.get("scan_layers", False)),
            attention_impl=m.get("attention_impl", None),
            rngs=rngs,
        )

    def make_mask(self, model: AudioMAE, keys: jax.Array, batch: int):
        """The configured mask for ``batch`` examples from their per-example keys."""
        if self.kind == "random":
            return mask_from_noise(uniform_noise(keys, batch, model.num_patches), float(self.config.masking.ratio))
        t, f = model.encoder.grid
        return time_freq_mask(keys, batch, t, f, float(self.config.masking.mask_t_prob),
                              float(self.config.masking.mask_f_prob))

    def loss(self, model, batch, keys, train, step=None):
        """Norm-pix MSE on hidden patches; in training the swin decoder's meta-MLP dropout is on."""
        spec = batch["spectrogram"]
        b = spec.shape[0]
        keys = example_keys(keys, b)
        mask = self.make_mask(model, keys, b)
        # A separate stream per example for dropout, so the mask is the plain draw from `keys`.
        drop_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys) if train else None
        pred, _ = model(spec, mask, keys=drop_keys)
        target = patchify(spec, model.patch_size).astype(jnp.float32)
        if self.norm_pix:
            target = norm_pix_target(target)
        loss, _ = masked_mse(pred, target, mask.mask)
        return loss, {"loss": loss}

    def flops(self, global_batch):
        """Analytic count of one training step (:mod:`maskjax.models.flop_count`)."""
        from maskjax.models import flop_count

        return flop_count.audiomae_flops(self.config, global_batch)
