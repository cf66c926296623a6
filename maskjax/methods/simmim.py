"""SimMIM: masked patches replaced by a mask token, a linear head regressing their raw pixels (L1).

specs/methods_vision.md section 2 (microsoft/SimMIM) and section 3 (BEiT block-wise masks):

* masking ``masking.kind``: ``"patch_units"`` (SimMIM's ``MaskGenerator``: ``ceil(units * ratio)``
  of the ``(image / mask_patch_size)^2`` mask units, each ``mask_patch_size / patch`` tokens a side;
  :mod:`maskjax.masking.patch_units`) or ``"block"`` (BEiT's ``MaskingGenerator``, whose
  parameters are ``config.simmim.block``; :mod:`maskjax.masking.block`); True = hidden;
* model :class:`maskjax.models.mim_vit.SimMIMModel`: the encoder sees every token, hidden patch
  embeddings replaced by the mask token; a 1x1 conv + ``PixelShuffle(patch)`` head on the normed
  patch tokens (cls dropped);
* loss ``SimMIM.forward``: ``sum(|x - x_rec| * mask) / (sum(mask) + 1e-5) / in_chans`` with the
  token mask upsampled to pixels, the target being the normalised input image itself.

Config: ``model`` (variant, ``layer_scale``, ``rel_pos_bias``, ``abs_pos``, ``qkv_bias``, ``init``,
``drop_path``, ...), ``masking`` (``kind``, ``ratio``, ``mask_patch_size``) and this method's own
section ``simmim.block``; ``configs/simmim/vit_b_800ep.py`` (``simmim_config``) builds them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.masking.block import blockwise_mask
from maskjax.masking.patch_units import simmim_grid, simmim_mask
from maskjax.methods import register
from maskjax.methods.mae import EncoderMethod, check_vit_config, compute_dtype
from maskjax.models.mim_vit import ABS_POS, BIAS_IMPLS, INITS, MaskTokenViT, SimMIMModel

MASK_KINDS = ("patch_units", "block")
LOSS_EPS = 1e-5  # SimMIM.forward: / (mask.sum() + 1e-5)


def l1_masked_pixels(images: jax.Array, reconstruction: jax.Array, hidden_pixels: jax.Array) -> jax.Array:
    """SimMIM's loss: ``sum(|x - x_rec| * mask) / (sum(mask) + 1e-5) / C``.

    ``images``, ``reconstruction`` [B, H, W, C]; ``hidden_pixels`` [B, H, W] (1 = hidden). As the
    official code, ``mask.sum()`` counts pixels (the mask has one channel), so the division by
    ``C`` makes it the mean absolute error per hidden pixel value.
    """
    mask = hidden_pixels.astype(jnp.float32)
    diff = jnp.abs(images.astype(jnp.float32) - reconstruction.astype(jnp.float32))
    return jnp.sum(diff * mask[..., None]) / (jnp.sum(mask) + LOSS_EPS) / images.shape[-1]


def upsample_mask(hidden: jax.Array, patch: int) -> jax.Array:
    """Token mask [B, G, G] -> pixel mask [B, G*p, G*p] (``repeat_interleave`` on both axes)."""
    return jnp.repeat(jnp.repeat(hidden, patch, axis=1), patch, axis=2)


def _block_options(config) -> dict:
    b = config.simmim.block
    return dict(num_masking_patches=b.num_masking_patches, min_num_patches=b.min_num_patches,
                max_num_patches=b.max_num_patches, min_aspect=b.min_aspect, max_aspect=b.max_aspect)


@register("simmim")
class SimMIM(EncoderMethod):
    """SimMIM: A Simple Framework for Masked Image Modeling (Xie et al., CVPR 2022)."""

    modality = "image"
    default_pool = "cls"  # pre-training keeps the cls token (USE_MEAN_POOLING False)

    @classmethod
    def config_section(cls) -> dict:
        """BEiT block-wise masking (``masking.kind="block"``): spec 3(a), BEiT's 14x14 setting."""
        return {"block": {"num_masking_patches": 75, "min_num_patches": 16, "max_num_patches": None,
                          "min_aspect": 0.3, "max_aspect": None}}

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """Variant and patch size, model options, the masking's geometry, attention and evaluators."""
        check_vit_config(config, errors)
        m = config.model
        if m.get("abs_pos") not in ABS_POS:
            errors.append(f"model.abs_pos must be one of {ABS_POS}, got {m.get('abs_pos')!r}")
        if m.get("qkv_bias") not in ("qkv", "qv"):
            errors.append(f"model.qkv_bias must be 'qkv' (timm) or 'qv' (BEiT), got {m.get('qkv_bias')!r}")
        if m.get("init") not in INITS:
            errors.append(f"model.init must be one of {INITS}, got {m.get('init')!r}")
        scale = m.get("layer_scale")
        if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
            errors.append(f"model.layer_scale must be a number > 0 (BEiT/SimMIM: 0.1) or None (off), got {scale!r}")
        if m.get("scan_layers") and m.get("drop_path"):
            errors.append(f"model.scan_layers needs model.drop_path 0 (the rate differs per block), got "
                          f"{m.drop_path}; unset one of them")
        impl = m.get("attention_impl")
        if m.get("rel_pos_bias") and impl is not None and impl not in BIAS_IMPLS:
            errors.append(f"model.attention_impl={impl!r} has no additive bias for model.rel_pos_bias; use None "
                          f"or one of {BIAS_IMPLS}, or set model.rel_pos_bias=False")
        cls._check_masking(config, errors)

    @staticmethod
    def _check_masking(config, errors: list[str]) -> None:
        from maskjax.models.vit import parse_variant

        masking = config.masking
        kind = masking.get("kind")
        if kind not in MASK_KINDS:
            errors.append(f"masking.kind must be one of {MASK_KINDS}, got {kind!r}")
            return
        try:
            _, patch = parse_variant(config.model.variant)
        except ValueError:
            return  # reported by check_vit_config
        size = config.data.image_size
        if kind == "patch_units":
            ratio, unit = masking.get("ratio"), masking.get("mask_patch_size")
            if not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
                errors.append(f"masking.ratio must be in (0, 1) (SimMIM: 0.6), got {ratio!r}")
            if not isinstance(unit, int) or unit < 1:
                errors.append(f"masking.mask_patch_size must be a whole number of pixels, got {unit!r}")
                return
            try:
                simmim_grid(size, unit, patch)
            except ValueError as e:
                errors.append(f"{e}: set masking.mask_patch_size to a multiple of the patch size {patch} that "
                              f"divides data.image_size {size}")
            return
        grid = size // patch
        b = config.simmim.block
        n = b.get("num_masking_patches")
        if not isinstance(n, int) or not 1 <= n <= grid * grid:
            errors.append(f"simmim.block.num_masking_patches must be a whole number in [1, {grid * grid}] (the "
                          f"{grid}x{grid} token grid), got {n!r}")
        elif not isinstance(b.get("min_num_patches"), (int, float)) or not 0 < b.min_num_patches <= n:
            errors.append(f"simmim.block.min_num_patches must be in (0, num_masking_patches={n}], got "
                          f"{b.get('min_num_patches')!r}")
        if not isinstance(b.get("min_aspect"), (int, float)) or not b.min_aspect > 0:
            errors.append(f"simmim.block.min_aspect must be > 0 (BEiT: 0.3), got {b.get('min_aspect')!r}")

    def __init__(self, config):
        super().__init__(config)
        self.kind = config.masking.kind

    def build(self, rngs):
        """:class:`SimMIMModel` from ``config.model`` and ``config.data.image_size``."""
        m, c = self.config.model, self.config
        return SimMIMModel(
            m.variant, image_size=c.data.image_size, in_chans=m.get("in_chans", 3),
            dtype=compute_dtype(c.get("compute_dtype", "float32")), remat=c.get("remat", False),
            attention_impl=m.get("attention_impl", None), scan_layers=bool(m.get("scan_layers", False)),
            drop_path=float(m.get("drop_path", 0.0)), layer_scale=m.get("layer_scale"),
            rel_pos_bias=m.get("rel_pos_bias") or False, abs_pos=m.get("abs_pos", "sincos"),
            qkv_bias=m.get("qkv_bias", "qkv"), init=m.get("init", "beit"), rngs=rngs)

    def finetune_encoder(self, *, image_size: int, drop_path: float, rngs):
        """SimMIM's fine-tuning ViT when pre-training used its own architecture: the same layer
        scale, q/v biases and positions, and one relative position bias *per block* (the official
        fine-tune configs' ``USE_RPB``), each starting from the pre-trained shared table
        (:meth:`MaskTokenViT.adapt_pretrained`). None (MAE's ViT) for the plain architecture of the
        ``:cifar`` comparison, whose encoder that classifier loads whole."""
        m = self.config.model
        plain = (m.get("layer_scale") is None and not m.get("rel_pos_bias") and m.get("abs_pos") == "sincos"
                 and m.get("qkv_bias") == "qkv")
        if plain:
            return None
        return MaskTokenViT(m.variant, image_size=image_size, in_chans=m.get("in_chans", 3), rngs=rngs,
                            drop_path=drop_path, layer_scale=m.get("layer_scale"),
                            rel_pos_bias="per_block" if m.get("rel_pos_bias") else False,
                            abs_pos=m.get("abs_pos", "sincos"), qkv_bias=m.get("qkv_bias", "qkv"),
                            init=m.get("init", "beit"))

    def hidden_grid(self, keys: jax.Array, grid: int, patch: int) -> jax.Array:
        """Masks bool [B, G, G] (True = hidden), one per per-example key."""
        masking = self.config.masking
        if self.kind == "patch_units":
            size = grid * patch
            draw = lambda k: simmim_mask(k, size, masking.mask_patch_size, patch, float(masking.ratio))  # noqa: E731
        else:
            options = _block_options(self.config)
            draw = lambda k: blockwise_mask(k, grid, grid, **options)  # noqa: E731
        return jax.vmap(draw)(keys)

    def forward(self, model: SimMIMModel, images: jax.Array, keys: jax.Array, train: bool):
        """``(loss, reconstruction, hidden [B, G, G], encoder aux)`` of a batch; masks from ``keys``
        (per example)."""
        pairs = jax.vmap(jax.random.split)(keys)  # independent mask and drop-path keys per example
        grid, patch = model.encoder.grid, model.patch_size
        hidden = self.hidden_grid(pairs[:, 0], grid, patch)
        drop = pairs[:, 1] if train and self.config.model.get("drop_path", 0.0) else None
        recon, aux = model(images, hidden.reshape(hidden.shape[0], -1), drop_key=drop)
        loss = l1_masked_pixels(images, recon, upsample_mask(hidden, patch))
        return loss, recon, hidden, aux

    def loss(self, model, batch, keys, train, step=None):
        """L1 on the hidden pixels; ``hidden_fraction``: the share of hidden tokens (block masks vary)."""
        loss, _, hidden, _ = self.forward(model, batch["image"], keys, train)
        return loss, {"loss": loss, "hidden_fraction": jnp.mean(hidden.astype(jnp.float32))}

    def reconstruct(self, model, inputs, key, stats: str = "visible"):
        """Original | masked (hidden pixels NaN) | reconstruction (prediction on hidden pixels, the
        input elsewhere), in the input's normalisation. ``stats`` is MAE's option; SimMIM predicts
        raw normalised pixels, so there is nothing to de-normalise."""
        del stats
        images = jnp.asarray(inputs)
        keys = jax.random.split(key, images.shape[0]) if key.ndim == 0 else key
        _, recon, hidden, _ = self.forward(model, images, keys, train=False)
        pixels = upsample_mask(hidden, model.patch_size)[..., None]
        if self.kind == "patch_units":
            what = f"{self.config.masking.mask_patch_size}-px mask units at ratio {self.config.masking.ratio:.2f}"
        else:
            what = f"BEiT block masks (up to {self.config.simmim.block.num_masking_patches} patches)"
        caption = (f"SimMIM, {what}; the linear head's raw-pixel prediction on hidden pixels, the input "
                   f"elsewhere")
        return {"original": images, "masked": jnp.where(pixels, jnp.nan, images),
                "reconstruction": jnp.where(pixels, recon, images), "caption": caption}

    def flops(self, global_batch):
        """Patch embedding, the encoder on all ``1 + L`` tokens (nothing is dropped), the 1x1-conv
        head on the L patch tokens."""
        from maskjax.models.flop_count import matmul, scaled, transformer_layer
        from maskjax.models.vit import parse_variant

        size, patch = parse_variant(self.config.model.variant)
        grid = self.config.data.image_size // patch
        tokens = grid * grid
        pixels = patch * patch * self.config.model.get("in_chans", 3)
        parts = {
            "patch_embed": matmul(tokens, pixels, size.width),
            "encoder": size.depth * transformer_layer(1 + tokens, size.width, int(size.width * size.mlp_ratio)),
            "decoder": matmul(tokens, size.width, pixels),
        }
        return scaled("simmim", parts, global_batch, "image patch (all L patches of an image)", tokens)

