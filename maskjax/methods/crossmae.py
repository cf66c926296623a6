"""CrossMAE: partial reconstruction with a cross-attention decoder (Fu, Lian et al., TMLR 2025).

specs/methods_vision.md section 11, TonyLianLong/CrossMAE at ``ed0677a``. MAE's shuffle hides
``masking.ratio`` of the patches from the encoder; only the last ~``L * kept_mask_ratio`` of the
shuffled positions are reconstructed (:func:`~maskjax.masking.partial_reconstruction.crossmae_mask`).
The decoder's queries at those positions cross-attend to a learned mix of every encoder block's
output (:class:`~maskjax.models.crossmae.CrossMAE`); the loss is the norm-pix MSE on the
reconstructed tokens only (``forward_loss``: ``loss.mean()`` over all of them).

Config: the MAE sections (``model``, ``masking.ratio``, ``loss.norm_pix``) plus ``crossmae``:
``kept_mask_ratio`` (``--kept_mask_ratio``) and ``use_input`` (``--use_input``: the encoder's
input tokens are one of the mixed feature maps). ``model.decoder_depth`` is 12 in every
released run. The official ``main_pretrain.py`` also multiplies the lr by ``kept_mask_ratio /
mask_ratio``; the recipes in ``configs/crossmae/`` fold that into ``optim.base_lr``.

Features: the encoder keeps MAE's final LayerNorm (same parameter paths as MAE's ViT), which
CrossMAE's pre-training never uses, so it gets no gradient and stays at its initial identity
affine (LayerNorm parameters are not weight-decayed); the cls feature is the normalised cls token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.masking.partial_reconstruction import crossmae_counts, crossmae_mask
from maskjax.methods import register
from maskjax.methods.mae import EncoderMethod, check_vit_config, compute_dtype
from maskjax.models.crossmae import CrossMAE
from maskjax.models.layers import patchify, unpatchify
from maskjax.objectives.pixels import denormalize_prediction, norm_pix_target

NAME = "crossmae"

RECON_CAPTIONS = {
    "hidden": "norm-pix prediction de-normalised with each reconstructed patch's true mean/var (leaks them)",
    "visible": "norm-pix prediction de-normalised with mean/var of the visible patches only (no leak)",
    "none": "plain pixel target: prediction shown as is",
}


def reconstructed_targets(images: jax.Array, patch: int, ids_recon: jax.Array, norm_pix: bool) -> jax.Array:
    """The pixel targets [B, P, p*p*C] of the reconstructed positions ``ids_recon`` [B, P].

    With ``norm_pix`` each patch is normalised by its own mean and unbiased variance (+1e-6), as
    the official ``forward_loss`` does after ``masked_select``.
    """
    target = jnp.take_along_axis(patchify(images, patch).astype(jnp.float32), ids_recon[..., None], axis=1)
    return norm_pix_target(target) if norm_pix else target


def crossmae_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """``((pred - target) ** 2).mean()`` over every reconstructed token and pixel (official ``forward_loss``)."""
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target))


@register(NAME)
class CrossMAEMethod(EncoderMethod):
    """CrossMAE pre-training; features and fine-tuning use the MAE ViT encoder (``model.encoder``)."""

    modality = "image"

    @classmethod
    def config_section(cls) -> dict:
        """``kept_mask_ratio``: the fraction of all patches reconstructed (0.75: every hidden one at
        masking.ratio 0.75; 0.25 in the ViT-H release and the README's ViT-B command);
        ``use_input``: mix the encoder's input tokens in with its blocks' outputs."""
        return {"kept_mask_ratio": 0.75, "use_input": True}

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """The ViT variant and image size fit, the decoder width suits its heads and the 2-D sin-cos
        position embedding, and the two ratios keep and reconstruct at least one patch each."""
        from maskjax.models.vit import parse_variant

        check_vit_config(config, errors)
        width, depth = config.model.get("decoder_width"), config.model.get("decoder_depth")
        if isinstance(width, int) and width % 4:
            errors.append(f"model.decoder_width {width} must be a multiple of 4 (the decoder's 2-D sin-cos "
                          "position embedding); e.g. 256 or 512")
        if not isinstance(depth, int) or depth < 1:
            errors.append(f"model.decoder_depth must be a positive integer (one cross-attention block per "
                          f"layer; 12 in the CrossMAE releases), got {depth!r}")
        own = config.get(NAME, {})
        if not isinstance(own.get("use_input"), bool):
            errors.append(f"{NAME}.use_input must be True or False, got {own.get('use_input')!r}")
        ratio, kept = config.get("masking", {}).get("ratio"), own.get("kept_mask_ratio")
        if not isinstance(kept, (int, float)) or isinstance(kept, bool):
            errors.append(f"{NAME}.kept_mask_ratio must be a number in (0, masking.ratio], got {kept!r}")
            return
        if not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
            return  # validate_config reports masking.ratio itself
        if not 0.0 < kept <= ratio:
            errors.append(f"{NAME}.kept_mask_ratio={kept} must be in (0, masking.ratio={ratio}]: it is the "
                          "fraction of all patches reconstructed, a part of the hidden ones")
            return
        try:
            _, patch = parse_variant(config.model.variant)
        except ValueError:
            return  # reported by check_vit_config
        size = config.data.get("image_size")
        if not isinstance(size, int) or size < patch or size % patch:
            return
        length = (size // patch) ** 2
        try:
            crossmae_counts(length, float(ratio), float(kept))
        except ValueError as e:
            errors.append(f"masking.ratio={ratio} with {NAME}.kept_mask_ratio={kept} on {length} patches "
                          f"(data.image_size {size} / patch {patch}): {e}; lower masking.ratio or raise "
                          f"{NAME}.kept_mask_ratio")

    def __init__(self, config):
        super().__init__(config)
        self.mask_ratio = float(config.masking.ratio)
        self.kept_mask_ratio = float(config[NAME].kept_mask_ratio)
        self.norm_pix = bool(config.loss.norm_pix)

    def build(self, rngs):
        """Builds :class:`~maskjax.models.crossmae.CrossMAE` from ``config.model`` and ``config.crossmae``."""
        m, c = self.config.model, self.config
        return CrossMAE(
            m.variant,
            image_size=c.data.image_size,
            in_chans=m.get("in_chans", 3),
            decoder_width=m.decoder_width,
            decoder_depth=m.decoder_depth,
            decoder_heads=m.decoder_heads,
            use_input=bool(c[NAME].use_input),
            dtype=compute_dtype(c.get("compute_dtype", "float32")),
            remat=c.get("remat", False),
            attention_impl=m.get("attention_impl", None),
            scan_layers=bool(m.get("scan_layers", False)),
            rngs=rngs,
        )

    def draw_mask(self, keys: jax.Array, batch: int, length: int):
        """The partial-reconstruction mask from per-example keys (or one key for a figure)."""
        return crossmae_mask(keys, batch, length, self.mask_ratio, self.kept_mask_ratio)

    def loss(self, model, batch, keys, train, step=None):
        """Norm-pix MSE on the reconstructed patches; masks come from the per-example keys."""
        images = batch["image"]
        mask = self.draw_mask(keys, images.shape[0], model.num_patches)
        pred, _ = model(images, mask)
        target = reconstructed_targets(images, model.patch_size, mask.ids_recon, self.norm_pix)
        loss = crossmae_loss(pred, target)
        return loss, {"loss": loss}

    def reconstruct(self, model, inputs, key, stats: str = "visible"):
        """Original | masked | reconstruction | reconstructed only, of ``inputs`` (normalised [B, H, W, C]).

        "masked" shows the visible patches only (hidden ones NaN); "reconstruction" shows the
        visible patches, the prediction on the reconstructed ones, and leaves the hidden but not
        reconstructed ones NaN (CrossMAE never predicts them unless kept_mask_ratio equals
        masking.ratio); "reconstructed only" is the partial reconstruction alone: the prediction
        on the reconstructed patches, every other patch NaN (blank). With a norm-pix target,
        ``stats`` picks how predictions are de-normalised
        (:func:`~maskjax.objectives.pixels.denormalize_prediction`).
        """
        images = jnp.asarray(inputs)
        b, h, w, _ = images.shape
        p = model.patch_size
        mask = self.draw_mask(key, b, model.num_patches)
        pred, _ = model(images, mask)
        patches = patchify(images, p).astype(jnp.float32)
        rows = jnp.arange(b)[:, None]
        full = jnp.zeros_like(patches).at[rows, mask.ids_recon].set(pred.astype(jnp.float32))
        if self.norm_pix:
            full = denormalize_prediction(full, patches, mask.mask, stats)
        visible = ~mask.mask[..., None]
        recon = jnp.where(visible, patches, jnp.where(mask.recon[..., None], full, jnp.nan))
        masked = jnp.where(visible, patches, jnp.nan)
        only = jnp.where(mask.recon[..., None], full, jnp.nan)
        grid = (h // p, w // p)
        _, _, num_recon = crossmae_counts(model.num_patches, self.mask_ratio, self.kept_mask_ratio)
        caption = (f"mask ratio {self.mask_ratio:.2f}, {num_recon} of {model.num_patches} patches "
                   f"reconstructed (kept mask ratio {self.kept_mask_ratio:.2f}; the others hidden stay grey, and "
                   f"the last column shows the reconstructed patches alone); "
                   + RECON_CAPTIONS[stats if self.norm_pix else "none"])
        return {"original": images, "masked": unpatchify(masked, p, *grid),
                "reconstruction": unpatchify(recon, p, *grid), "reconstructed only": unpatchify(only, p, *grid),
                "caption": caption}

    def flops(self, global_batch):
        """Analytic count (:func:`crossmae_flops`)."""
        return crossmae_flops(self.config, global_batch)


def crossmae_flops(config, global_batch: int):
    """Matmul FLOPs of one CrossMAE step (conventions of :mod:`maskjax.models.flop_count`).

    Per example, with L patches, T = 1 + K encoder tokens (cls + visible), P reconstructed
    queries, k mixed feature maps: the patch embedding on all L patches, the encoder on T
    tokens, the feature-map mixing (a [T*D, k] @ [k, depth] product), and per decoder layer the
    query and output projections on P tokens, the key/value projection of the T encoder tokens
    (D_enc -> 2 D_dec), the two P x T attention products and the MLP on P tokens; then the pixel
    head on P tokens.
    """
    from maskjax.models.flop_count import matmul, scaled, transformer_layer
    from maskjax.models.vit import parse_variant

    size, patch = parse_variant(config.model.variant)
    m, own = config.model, config[NAME]
    patches = (config.data.image_size // patch) ** 2
    pixels = patch * patch * m.get("in_chans", 3)
    keep, _, recon = crossmae_counts(patches, float(config.masking.ratio), float(own.kept_mask_ratio))
    tokens, enc, dec, depth = 1 + keep, size.width, m.decoder_width, m.decoder_depth
    maps = size.depth + int(bool(own.use_input))
    decoder_layer = (matmul(recon, dec, dec) + matmul(tokens, enc, 2 * dec) + 2 * matmul(recon, dec, tokens)
                     + matmul(recon, dec, dec) + 2 * matmul(recon, dec, 4 * dec))
    parts = {
        "patch_embed": matmul(patches, pixels, enc),
        "encoder": size.depth * transformer_layer(tokens, enc, int(enc * size.mlp_ratio)),
        "feature_mixing": matmul(tokens * enc, maps, depth),
        "decoder": depth * decoder_layer,
        "decoder_pred": matmul(recon, dec, pixels),
    }
    return scaled(NAME, parts, global_batch, "image patch (all L patches of an image)", patches)
