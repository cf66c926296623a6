"""The MAE encoder-decoder (facebookresearch/mae ``models_mae.py``), NNX."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from maskjax.masking import Mask, unshuffle_with_mask_tokens
from maskjax.models.backbone import DECODER_NAMES, Backbone
from maskjax.models.layers import Buffer, dense, sincos_2d
from maskjax.models.vit import ViT


class MaskedAutoencoder(Backbone):
    """ViT encoder on the visible tokens plus a light transformer decoder on all tokens.

    ``__call__(images, mask)`` returns ``(pred, aux)``: pred [B, L, p*p*C] is the pixel prediction
    for every patch (the loss uses only hidden ones); aux holds the encoder output. The model is
    the :class:`~maskjax.models.backbone.Backbone` of its decoder (``decoder_blocks``,
    ``decoder_norm`` at the top level, as the official model) and holds the encoder as a child.
    """

    def __init__(self, variant: str, *, image_size: int, in_chans: int = 3, rngs: nnx.Rngs,
                 decoder_width: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 mlp_ratio: float = 4.0, dtype: Any = None, remat: bool | str = False,
                 attention_impl: str | None = None, scan_layers: bool = False):
        self.encoder = ViT(variant, image_size=image_size, in_chans=in_chans, rngs=rngs, dtype=dtype,
                           remat=remat, attention_impl=attention_impl, scan_layers=scan_layers)
        grid, patch = self.encoder.grid, self.encoder.patch_size
        self.in_chans = in_chans
        self.decoder_embed = dense(self.encoder.width, decoder_width, ("embed", "embed"), rngs=rngs, dtype=dtype)
        self.mask_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, decoder_width)),
                                    logical_axes=(None, None, "embed"))
        self.decoder_pos_embed = Buffer(sincos_2d(decoder_width, grid, grid, cls_token=True)[None])
        super().__init__(decoder_width, decoder_depth, decoder_heads, mlp_ratio, rngs=rngs, dtype=dtype,
                         attention_impl=attention_impl, remat=remat, scan_layers=scan_layers,
                         names=DECODER_NAMES)
        self.decoder_pred = dense(decoder_width, patch * patch * in_chans, ("embed", "patch"), rngs=rngs, dtype=dtype)

    @property
    def patch_size(self) -> int:
        """Patch size of the encoder."""
        return self.encoder.patch_size

    @property
    def num_patches(self) -> int:
        """Number of patch tokens L."""
        return self.encoder.num_patches

    def decode(self, latent: jax.Array, mask: Mask) -> jax.Array:
        """Decoder: embed, append mask tokens, unshuffle, add positions, blocks, predict pixels."""
        x = unshuffle_with_mask_tokens(self.decoder_embed(latent), self.mask_token[...], mask.ids_restore)
        x = x + self.decoder_pos_embed[...].astype(x.dtype)
        x = self.decoder_pred(self.run_stack(x))
        return x[:, 1:]

    def __call__(self, images: jax.Array, mask: Mask) -> tuple[jax.Array, dict]:
        latent, aux = self.encoder(images, mask)
        pred = self.decode(latent, mask)
        return pred, {"latent": latent, "cls": aux["cls"]}
