"""MAE: random masking + ViT encoder/decoder + (normalised) pixel MSE on hidden patches."""

from __future__ import annotations

import math
from typing import ClassVar

import jax.numpy as jnp

from maskjax.masking import mask_from_noise, uniform_noise
from maskjax.methods import register
from maskjax.methods.base import Method, NotSupported
from maskjax.models.layers import patchify, unpatchify
from maskjax.models.mae import MaskedAutoencoder
from maskjax.objectives.pixels import denormalize_prediction, masked_mse, norm_pix_target

RECON_CAPTIONS = {
    "hidden": "norm-pix prediction de-normalised with each hidden patch's true mean/var (leaks them)",
    "visible": "norm-pix prediction de-normalised with mean/var of the visible patches only (no leak)",
    "none": "plain pixel target: prediction shown as is",
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
    """Maps the config's ``compute_dtype`` string onto a jnp dtype (clear error when unknown)."""
    if name not in _DTYPES:
        raise ValueError(f"unknown compute_dtype {name!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def mae_forward(model: MaskedAutoencoder, images, noise, mask_ratio: float, norm_pix: bool):
    """MAE forward pass from explicit masking noise [B, L].

    Returns ``(loss, pred, target, mask)``. Taking the noise (not a key) lets parity tests feed
    the same noise to Hugging Face's ``ViTMAEForPreTraining``.
    """
    mask = mask_from_noise(noise, mask_ratio)
    pred, _ = model(images, mask)
    target = patchify(images, model.patch_size).astype(jnp.float32)
    if norm_pix:
        target = norm_pix_target(target)
    loss, _ = masked_mse(pred, target, mask.mask)
    return loss, pred, target, mask


def check_vit_config(config, errors: list[str]) -> None:
    """Config checks shared by ViT-based image methods (variant, patch size, decoder heads)."""
    from maskjax.models.vit import parse_variant

    try:
        _, patch = parse_variant(config.model.variant)
    except ValueError as e:
        errors.append(str(e))
        return
    size = config.data.image_size
    if size % patch:
        errors.append(f"data.image_size {size} is not divisible by the patch size {patch} of "
                      f"model.variant {config.model.variant!r}")
    width = config.model.get("decoder_width")
    heads = config.model.get("decoder_heads")
    if width and heads and width % heads:
        errors.append(f"model.decoder_width {width} is not divisible by model.decoder_heads {heads}")


def check_mask_ratio(config, errors: list[str]) -> None:
    """``masking.ratio`` leaves at least one of the image's patches visible and hides at least one.

    MAE keeps ``int(L * (1 - ratio))`` of the ``L`` patches; keeping none would otherwise fail
    while tracing the first step. A ratio outside (0, 1), a bad variant or image size are
    reported by their own checks, so they are skipped here.
    """
    from maskjax.masking.random import num_kept
    from maskjax.models.vit import parse_variant

    ratio, size = config.get("masking", {}).get("ratio"), config.data.get("image_size")
    try:
        _, patch = parse_variant(config.model.variant)
    except ValueError:
        return
    if (not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0 or not isinstance(size, int)
            or size < patch or size % patch):
        return
    side = size // patch
    try:
        num_kept(side * side, float(ratio))
    except ValueError:
        n = side * side
        kept = int(n * (1 - ratio))
        # Rounded down: a rounded-up bound (0.9844 for 64 patches) would itself keep no patch.
        fix = f"use a ratio of at most {math.floor((1 - 1 / n) * 1e4) / 1e4:g}" if kept < 1 else "raise the ratio"
        errors.append(f"masking.ratio={ratio} keeps {kept} of the {n} patches ({side}x{side}: data.image_size "
                      f"{size} / patch {patch}); MAE needs at least one visible and one hidden patch: {fix}")


def encoder_features(encoder, inputs, pool: str | None, default: str = "cls"):
    """``aux[pool]`` of a maskjax encoder's ``(tokens, aux)`` output: "cls" or "pooled" (mean of patch tokens)."""
    _, aux = encoder(inputs)
    pool = pool or default
    if pool == "pooled" and "pooled" not in aux and "cls" in aux:
        # MAE's image ViT keeps no pooled output (it fine-tunes from its own global pool); the mean
        # of the normalised patch tokens is the frozen-feature probe's pooled feature.
        return aux["tokens"].mean(axis=1)
    if pool not in aux:
        raise NotSupported(f"the encoder offers the features {sorted(k for k in aux if k != 'tokens')}, "
                           f"not {pool!r}")
    return aux[pool]


class EncoderMethod(Method):
    """A method whose model has an ``encoder`` returning ``(tokens, aux)`` with "cls"/"pooled" features.

    ``features`` reads ``aux[pool]`` (``default_pool`` unless the evaluator asks otherwise) and
    fine-tuning trains ``model.encoder``: the ViT-family methods (MAE, VideoMAE, MAE-ST, AudioMAE).
    """

    default_pool: ClassVar[str] = "cls"

    def features(self, model, inputs, pool=None):
        """``aux[pool]`` of the encoder on ``inputs`` (unmasked)."""
        return encoder_features(model.encoder, inputs, pool, default=self.default_pool)

    def encoder(self, model):
        """The encoder (what fine-tuning trains)."""
        return model.encoder

    def feature_name(self, pool=None):
        """"cls" or "pooled" (the default unless ``pool`` is given)."""
        return pool or self.default_pool


@register("mae")
class MAE(EncoderMethod):
    """Masked Autoencoders Are Scalable Vision Learners (He et al., CVPR 2022)."""

    modality = "image"

    @staticmethod
    def check_config(config, errors: list[str]) -> None:
        """The ViT variant parses, its patch size divides the image size, and ``masking.ratio``
        keeps at least one patch visible and hides at least one."""
        check_vit_config(config, errors)
        check_mask_ratio(config, errors)

    def __init__(self, config):
        super().__init__(config)
        self.mask_ratio = float(config.masking.ratio)
        self.norm_pix = bool(config.loss.norm_pix)

    def build(self, rngs):
        """Builds :class:`MaskedAutoencoder` from ``config.model`` and ``config.data.image_size``."""
        m, c = self.config.model, self.config
        return MaskedAutoencoder(
            m.variant,
            image_size=c.data.image_size,
            in_chans=m.get("in_chans", 3),
            decoder_width=m.decoder_width,
            decoder_depth=m.decoder_depth,
            decoder_heads=m.decoder_heads,
            dtype=compute_dtype(c.get("compute_dtype", "float32")),
            remat=c.get("remat", False),
            attention_impl=m.get("attention_impl", None),
            scan_layers=bool(m.get("scan_layers", False)),
            rngs=rngs,
        )

    def masking_noise(self, model, keys, batch: int, step=None):
        """Noise [B, L] whose ``len_keep`` smallest values stay visible: one uniform draw per patch.

        ``keys``: per-example keys [B] (training) or one key (figures); ``step``: the optimizer
        step (MAE ignores it). Subclasses that only change where the mask falls (ColorMAE)
        override this and :meth:`figure_noise`.
        """
        del step
        return uniform_noise(keys, batch, model.num_patches)

    def figure_noise(self, model, key, batch: int):
        """The masking noise of a reconstruction figure, from one key."""
        return self.masking_noise(model, key, batch)

    def mask_caption(self) -> str:
        """How the figure's mask was drawn (the start of its caption)."""
        return f"mask ratio {self.mask_ratio:.2f}; "

    def loss(self, model, batch, keys, train, step=None):
        """MAE loss of one batch; masks come from per-example keys (one uniform draw each)."""
        images = batch["image"]
        noise = self.masking_noise(model, keys, images.shape[0], step)
        loss, _, _, _ = mae_forward(model, images, noise, self.mask_ratio, self.norm_pix)
        return loss, {"loss": loss}

    def reconstruct(self, model, inputs, key, stats: str = "visible"):
        """Original | masked | reconstruction of ``inputs`` (normalised images) at the config's ratio.

        Arrays [B, H, W, C] in the input's normalisation (hidden patches of "masked" are NaN); the
        reconstruction shows the prediction on hidden patches and the input on visible ones. With
        a norm-pix target, ``stats`` picks how predictions are de-normalised
        (:func:`~maskjax.objectives.pixels.denormalize_prediction`); "caption" says which.
        """
        images = jnp.asarray(inputs)
        b, h, w, _ = images.shape
        p = model.patch_size
        noise = self.figure_noise(model, key, b)
        _, pred, target, mask = mae_forward(model, images, noise, self.mask_ratio, norm_pix=False)
        hidden = mask.mask
        if self.norm_pix:
            pred = denormalize_prediction(pred, target, hidden, stats)
        recon = jnp.where(hidden[..., None], pred, target)
        masked = jnp.where(hidden[..., None], jnp.nan, target)
        grid = (h // p, w // p)
        caption = self.mask_caption() + RECON_CAPTIONS[stats if self.norm_pix else "none"]
        return {"original": images, "masked": unpatchify(masked, p, *grid),
                "reconstruction": unpatchify(recon, p, *grid), "caption": caption}

    def flops(self, global_batch):
        """Patch embed on all patches, encoder on the visible ones, decoder on all (flop_count.mae_flops)."""
        from maskjax.models.flop_count import mae_flops

        return mae_flops(self.config, global_batch)
