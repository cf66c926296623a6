"""MAE-ST: spacetime-agnostic random masking + ViT encoder/decoder + norm-pix MSE on hidden tokens.

Batches are ``{"video": f32[B, T, H, W, 3], "label": i32[B]}`` with frames already normalised by
the ImageNet mean/std (the pipeline's job). As the official ``forward_loss``, the target is built
from the model input *as given* (normalised frames, subsampled to ``pred_t_dim`` frames), then
per-patch normalised (specs/methods_vision.md section 7b); per-token mean squared error averaged
over hidden tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.masking import mask_from_noise, num_kept, uniform_noise
from maskjax.methods import register
from maskjax.methods.mae import EncoderMethod, compute_dtype
from maskjax.models.mae_st import MaeST, t_pred_patch_size, target_frame_indices
from maskjax.models.video_layers import patchify_video
from maskjax.objectives.pixels import masked_mse, norm_pix_target


@register("mae_st")
class MaeSTMethod(EncoderMethod):
    """Masked Autoencoders As Spatiotemporal Learners (Feichtenhofer et al., NeurIPS 2022)."""

    default_pool = "pooled"  # the mean of the patch tokens: the fine-tuning feature
    modality = "video"

    @staticmethod
    def check_config(config, errors: list[str]) -> None:
        """Patch sizes divide the clip, the target frames fill every token, heads divide widths."""
        from maskjax.models.vit import parse_variant

        m, d = config.model, config.data
        try:
            _, patch = parse_variant(m.variant)
        except ValueError as e:
            errors.append(str(e))
            patch = None
        if patch and d.image_size % patch:
            errors.append(f"data.image_size {d.image_size} is not divisible by the patch size {patch} of "
                          f"model.variant {m.variant!r}")
        t_patch = m.get("tubelet_size", 2)
        if t_patch < 1 or d.num_frames % t_patch:
            errors.append(f"data.num_frames {d.num_frames} is not divisible by model.tubelet_size {t_patch}")
        else:
            try:
                t_pred_patch_size(d.num_frames, t_patch, m.get("pred_t_dim", 8))
            except ValueError as e:
                errors.append(f"model.pred_t_dim: {e}")
        if m.decoder_width % m.decoder_heads:
            errors.append(f"model.decoder_width {m.decoder_width} is not divisible by model.decoder_heads "
                          f"{m.decoder_heads}")
        kind = config.masking.get("kind", "random")
        if kind != "random":
            errors.append(f"masking.kind {kind!r}: MAE-ST masks spacetime-agnostically; set masking.kind='random'")
        elif patch and d.image_size % patch == 0 and t_patch >= 1 and d.num_frames % t_patch == 0:
            length = (d.num_frames // t_patch) * (d.image_size // patch) ** 2
            try:
                num_kept(length, float(config.masking.ratio))
            except ValueError as e:
                errors.append(f"masking.ratio: {e}")

    def __init__(self, config):
        super().__init__(config)
        kind = config.masking.get("kind", "random")
        if kind != "random":
            raise ValueError(f"masking.kind {kind!r}: MAE-ST masks spacetime-agnostically; set masking.kind='random'")
        self.mask_ratio = float(config.masking.ratio)
        self.norm_pix = bool(config.loss.norm_pix)

    def build(self, rngs):
        """Builds :class:`MaeST` from ``config.model`` and ``config.data.{num_frames, image_size}``."""
        m, c = self.config.model, self.config
        return MaeST(
            m.variant,
            num_frames=c.data.num_frames,
            image_size=c.data.image_size,
            t_patch=m.get("tubelet_size", 2),
            pred_t_dim=m.get("pred_t_dim", 8),
            sep_pos_embed=m.get("sep_pos_embed", True),
            cls_embed=m.get("cls_embed", True),
            decoder_width=m.decoder_width,
            decoder_depth=m.decoder_depth,
            decoder_heads=m.decoder_heads,
            trunc_init=m.get("trunc_init", False),
            dtype=compute_dtype(c.get("compute_dtype", "float32")),
            remat=c.get("remat", False),
            scan_layers=bool(m.get("scan_layers", False)),
            attention_impl=m.get("attention_impl", None),
            rngs=rngs,
        )

    def loss(self, model, batch, keys, train, step=None):
        """Norm-pix MSE of the ``pred_t_dim``-frame target on hidden spacetime tokens."""
        video = batch["video"]
        mask = mask_from_noise(uniform_noise(keys, video.shape[0], model.num_patches), self.mask_ratio)
        pred, _ = model(video, mask)
        target = mae_st_target(video, pred_t_dim=model.pred_t_dim, t_pred_patch=model.t_pred_patch,
                               patch=model.patch_size, norm_pix=self.norm_pix)
        loss, _ = masked_mse(pred, target, mask.mask)
        return loss, {"loss": loss}

    def flops(self, global_batch):
        """Analytic count of one training step (:mod:`maskjax.models.flop_count`)."""
        from maskjax.models import flop_count

        return flop_count.mae_st_flops(self.config, global_batch)


def mae_st_target(video: jax.Array, *, pred_t_dim: int, t_pred_patch: int, patch: int,
                  norm_pix: bool = True) -> jax.Array:
    """MAE-ST ``forward_loss`` target [B, L, t_pred_patch*p*p*3] from the model input video.

    Subsamples ``pred_t_dim`` frames at :func:`target_frame_indices`, patchifies with
    (t_pred_patch, p, p) in (u, p, p, c) order, then optional MAE norm-pix (unbiased var + 1e-6).
    """
    idx = target_frame_indices(video.shape[1], pred_t_dim)
    target = patchify_video(video[:, idx].astype(jnp.float32), t_pred_patch, patch)
    return norm_pix_target(target) if norm_pix else target
