"""VideoMAE (tube masking, hidden-token MSE) and VideoMAE V2 (dual masking) methods.

specs/methods_vision.md sections 5 and 6. Batch: ``{"video": f32[B, T, H, W, 3]`` normalised
with ImageNet statistics, ``"label": i32[B]}``. The target is built from the un-normalised
[0, 1] video, normalised per token and per channel (``loss.norm_pix``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.masking import num_kept
from maskjax.masking.video import (decoded_ids, num_decoded, running_cell_mask, spacetime_random_mask,
                                   tube_mask, tube_num_masked)
from maskjax.methods import register
from maskjax.methods.mae import EncoderMethod, compute_dtype
from maskjax.models.video_layers import patchify_video
from maskjax.models.video_mae import VideoMAE
from maskjax.objectives.video import token_mse, unnormalize_video, videomae_target, weighted_token_mse

MASK_KINDS = ("tube", "random")


def encoder_mask(kind: str, keys: jax.Array, batch: int, grid: tuple[int, int, int], ratio: float):
    """The encoder :class:`~maskjax.masking.Mask`: VideoMAE tube masking or spacetime random masking."""
    t, h, w = grid
    if kind == "tube":
        return tube_mask(keys, batch, t, h * w, ratio)
    if kind == "random":
        return spacetime_random_mask(keys, batch, t * h * w, ratio)
    raise ValueError(f"masking.kind must be one of {MASK_KINDS} for VideoMAE, got {kind!r}")


def video_targets(model: VideoMAE, video: jax.Array, norm_pix: bool) -> jax.Array:
    """Targets [B, L, t*p*p*C] of all tokens from the ImageNet-normalised ``video``."""
    raw = unnormalize_video(video.astype(jnp.float32))
    return videomae_target(patchify_video(raw, model.tubelet, model.patch_size), raw.shape[-1], normalize=norm_pix)


def videomae_loss(model: VideoMAE, video: jax.Array, mask, norm_pix: bool):
    """VideoMAE: MSE (mean over hidden tokens and values) of the predictions of the hidden tokens.

    Returns ``(loss, pred, target)`` with target [B, N_hidden, D] in the prediction order.
    """
    pred, aux = model(video, mask)
    target = jnp.take_along_axis(video_targets(model, video, norm_pix), aux["decode_ids"][..., None], axis=1)
    return token_mse(pred, target), pred, target


def videomae_v2_loss(model: VideoMAE, video: jax.Array, mask, not_decoded: jax.Array, count: int,
                     norm_pix: bool):
    """VideoMAE V2: decode the positions where ``not_decoded`` is False, weight by the encoder mask.

    ``loss = sum(per_token * w) / sum(w)`` with ``w = enc_mask[decoded]``: decoded tokens that
    the encoder saw do not count. Returns ``(loss, pred, target, weights)``.
    """
    ids = decoded_ids(not_decoded, count)
    pred, _ = model(video, mask, ids)
    target = jnp.take_along_axis(video_targets(model, video, norm_pix), ids[..., None], axis=1)
    weights = jnp.take_along_axis(mask.mask, ids, axis=1)
    loss, _ = weighted_token_mse(pred, target, weights)
    return loss, pred, target, weights


def _check_video_config(config, errors: list[str], *, v2: bool) -> None:
    from maskjax.models.vit import parse_variant

    m, d = config.model, config.data
    try:
        _, patch = parse_variant(m.variant)
    except ValueError as e:
        errors.append(f"model.variant: {e}")
        return
    tubelet = int(m.get("tubelet_size", 2))
    if d.image_size % patch:
        errors.append(f"data.image_size {d.image_size} is not divisible by the patch size {patch} of "
                      f"model.variant {m.variant!r}")
    if tubelet < 1 or d.num_frames % tubelet:
        errors.append(f"data.num_frames {d.num_frames} is not divisible by model.tubelet_size {tubelet}")
    if m.decoder_heads < 1 or m.decoder_width % m.decoder_heads:
        errors.append(f"model.decoder_width {m.decoder_width} is not divisible by model.decoder_heads "
                      f"{m.decoder_heads}")
    kind = config.masking.kind
    grid = d.image_size // patch
    if kind not in MASK_KINDS:
        errors.append(f"masking.kind must be one of {MASK_KINDS}, got {kind!r}")
    elif kind == "tube":
        try:
            tube_num_masked(grid * grid, float(config.masking.ratio))
        except ValueError as e:
            errors.append(str(e))
    else:
        try:
            num_kept((d.num_frames // max(tubelet, 1)) * grid * grid, float(config.masking.ratio))
        except ValueError as e:
            errors.append(f"masking.ratio: {e}")
    dec = float(config.masking.get("decoder_ratio", 0.0))
    if v2 and dec:
        if grid % 2:
            errors.append(f"VideoMAE V2 running-cell masking needs an even token grid; data.image_size "
                          f"{d.image_size} / patch {patch} = {grid}")
        if not 0 < int(4 * dec) < 4:
            errors.append(f"masking.decoder_ratio must be 0 (off) or in [0.25, 1), got {dec}")
    elif not v2 and dec:
        errors.append(f"masking.decoder_ratio {dec} needs method 'videomae_v2'; 'videomae' decodes "
                      "exactly the encoder-hidden tokens")


@register("videomae")
class VideoMAEMethod(EncoderMethod):
    """VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video
    Pre-Training (Tong et al., NeurIPS 2022)."""

    default_pool = "pooled"  # the mean of the patch tokens: the fine-tuning feature
    modality = "video"
    v2 = False

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """Variant, patch/tubelet divisibility, decoder heads, mask kind and ratios."""
        _check_video_config(config, errors, v2=cls.v2)

    def __init__(self, config):
        super().__init__(config)
        self.kind = config.masking.kind
        self.ratio = float(config.masking.ratio)
        self.decoder_ratio = float(config.masking.get("decoder_ratio", 0.0)) if self.v2 else 0.0
        self.norm_pix = bool(config.loss.norm_pix)

    def build(self, rngs):
        """Builds :class:`VideoMAE` from ``config.model`` and ``config.data.{num_frames,image_size}``."""
        m, c = self.config.model, self.config
        return VideoMAE(
            m.variant,
            num_frames=c.data.num_frames,
            image_size=c.data.image_size,
            tubelet=m.get("tubelet_size", 2),
            in_chans=m.get("in_chans", 3),
            decoder_width=m.decoder_width,
            decoder_depth=m.decoder_depth,
            decoder_heads=m.decoder_heads,
            dtype=compute_dtype(c.get("compute_dtype", "float32")),
            remat=c.get("remat", False),
            scan_layers=bool(m.get("scan_layers", False)),
            attention_impl=m.get("attention_impl", None),
            rngs=rngs,
        )

    def masks(self, model: VideoMAE, keys: jax.Array, batch: int):
        """(encoder Mask, decoder not-decoded bool [B, L] or None) from per-example keys."""
        keys = per_example_keys(keys, batch)
        mask = encoder_mask(self.kind, keys, batch, model.grid, self.ratio)
        if not self.decoder_ratio:
            return mask, None
        # An independent stream per example for the decoder mask; the encoder mask is the same
        # as VideoMAE's for the same keys.
        dec_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        t, h, w = model.grid
        return mask, running_cell_mask(dec_keys, batch, t, h, w, self.decoder_ratio)

    def loss(self, model, batch, keys, train, step=None):
        """Pre-training loss of one batch (see the module docstring)."""
        video = batch["video"]
        mask, not_decoded = self.masks(model, keys, video.shape[0])
        if not_decoded is None:
            loss, _, _ = videomae_loss(model, video, mask, self.norm_pix)
            return loss, {"loss": loss}
        count = num_decoded(model.num_patches, self.decoder_ratio)
        loss, _, _, weights = videomae_v2_loss(model, video, mask, not_decoded, count, self.norm_pix)
        return loss, {"loss": loss, "loss_tokens_frac": jnp.mean(weights.astype(jnp.float32))}

    def flops(self, global_batch):
        """Analytic count of one training step (:mod:`maskjax.models.flop_count`)."""
        from maskjax.models import flop_count

        return flop_count.videomae_flops(self.config, global_batch)


@register("videomae_v2")
class VideoMAEV2Method(VideoMAEMethod):
    """VideoMAE V2: Scaling Video Masked Autoencoders with Dual Masking (Wang et al., CVPR 2023).

    ``masking.decoder_ratio`` 0.5 = running-cell decoder masking; 0 reduces to VideoMAE.
    """

    name = "videomae_v2"
    v2 = True


def per_example_keys(keys: jax.Array, batch: int) -> jax.Array:
    """Typed per-example keys [batch] from per-example keys, one key (split) or raw key data."""
    if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.wrap_key_data(keys)  # raw uint32 data: [2] (one key) or [B, 2]
    if keys.ndim == 0:
        keys = jax.random.split(keys, batch)
    if keys.shape != (batch,):
        raise ValueError(f"got keys of shape {keys.shape} for a batch of {batch}; pass one key or {batch}")
    return keys
