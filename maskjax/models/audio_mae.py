"""AudioMAE — Masked Autoencoders that Listen (facebookresearch/AudioMAE ``models_mae.py``), NNX.

Spectrograms are [B, T, F, 1] (time frames x mel bins, one channel); 16x16 patches give a
(T/16, F/16) = (64, 8) token grid flattened time-major (index = t * 8 + f), as the official
``(N, 1, 1024, 128)`` input after ``Conv2d(...).flatten(2)``. The encoder is MAE's ViT (pre-LN timm
blocks, cls token, fixed 2-D sin-cos position embedding); the decoder is either the official
default of 16 shifted-window blocks on the token grid (:mod:`maskjax.models.swin_decoder`, the cls
token dropped after the position embedding is added) or MAE's global decoder.

Position-embedding quirk (specs/methods_vision.md section 8c): ``PatchEmbed_org.patch_hw`` is
``(F/p, T/p) = (8, 64)``, so ``get_2d_sincos_pos_embed_flexible`` lays an 8x64 grid over tokens
that are really 64x8: token ``i`` gets the column code of ``i % 64`` and the row code of
``i // 64``. ``pos_embed="official"`` reproduces that (for both encoder and decoder);
``"aligned"`` encodes the true (time, freq) position instead (column half = frequency index,
row half = time index).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from maskjax.masking import Mask, unshuffle_with_mask_tokens
from maskjax.models.backbone import DECODER_NAMES, Backbone, Encoder
from maskjax.models.layers import Buffer, PatchEmbed, dense, sincos_2d
from maskjax.models.swin_decoder import swin_block_factory
from maskjax.models.vit import parse_variant

POS_EMBEDS = ("official", "aligned")
DECODER_MODES = ("swin", "global")


def audio_pos_embed(dim: int, grid_t: int, grid_f: int, mode: str = "official") -> np.ndarray:
    """[1 + grid_t*grid_f, dim] sin-cos table for time-major tokens, the cls row zero.

    ``official``: ``get_2d_sincos_pos_embed_flexible(dim, (grid_f, grid_t))``, i.e. MAE's table for
    a grid of ``grid_f`` rows and ``grid_t`` columns laid over the time-major token order.
    ``aligned``: rows = time, columns = frequency, matching the tokens.
    """
    if mode not in POS_EMBEDS:
        raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {mode!r}")
    if mode == "official":
        return sincos_2d(dim, grid_f, grid_t, cls_token=True)
    return sincos_2d(dim, grid_t, grid_f, cls_token=True)


class AudioEncoder(Encoder):
    """ViT encoder on [B, T, F, 1] filterbanks (MAE encoder with a rectangular token grid).

    ``__call__(spec, mask=None)`` returns ``(tokens, aux)``: tokens [B, 1+K, D] after the final
    LayerNorm (cls first, then the visible tokens in ``mask.ids_keep`` order, or all tokens);
    ``aux`` has ``cls``, ``tokens`` (both after the norm) and ``pooled``, the mean of the patch
    tokens *before* the final norm: AudioMAE fine-tuning (``global_pool``) deletes that norm and
    applies a fresh ``fc_norm`` to this mean.
    """

    pooled_from = "blocks"

    def __init__(self, variant: str, *, target_length: int = 1024, num_mel_bins: int = 128,
                 pos_embed: str = "official", rngs: nnx.Rngs, dtype: Any = None, drop_path: float = 0.0,
                 remat: bool | str = False, attention_impl: str | None = None, scan_layers: bool = False):
        size, patch = parse_variant(variant)
        for name, value in (("target_length", target_length), ("num_mel_bins", num_mel_bins)):
            if value % patch:
                raise ValueError(f"{name} {value} is not divisible by the patch size {patch} of {variant!r}")
        self.patch_size = patch
        self.grid = (target_length // patch, num_mel_bins // patch)
        self.width = size.width
        self.depth = size.depth
        self.patch_embed = PatchEmbed(patch, 1, size.width, rngs=rngs, dtype=dtype)
        self.cls_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, size.width)),
                                   logical_axes=(None, None, "embed"))
        self.pos_embed = Buffer(audio_pos_embed(size.width, *self.grid, mode=pos_embed)[None])
        super().__init__(size.width, size.depth, size.heads, size.mlp_ratio, rngs=rngs, dtype=dtype,
                         attention_impl=attention_impl, drop_path=drop_path, remat=remat,
                         scan_layers=scan_layers)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens L = (T/p) * (F/p)."""
        return self.grid[0] * self.grid[1]

    @property
    def num_prefix_tokens(self) -> int:
        """The cls token."""
        return 1

    def patch_tokens(self, spec: jax.Array) -> jax.Array:
        """[B, T, F, 1] -> patch embeddings [B, L, D], time-major."""
        if spec.ndim != 4 or spec.shape[-1] != 1:
            raise ValueError(f"expected a spectrogram [B, T, F, 1], got shape {spec.shape}")
        expected = (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)
        if spec.shape[1:3] != expected:
            raise ValueError(f"spectrogram of {spec.shape[1]}x{spec.shape[2]} (time x mel), model built for "
                             f"{expected[0]}x{expected[1]} (target_length x num_mel_bins)")
        return self.patch_embed(spec)

    def patch_positions(self, dtype: Any) -> jax.Array:
        """The sin-cos rows of the patch tokens (added before masking, as MAE)."""
        return self.pos_embed[...].astype(dtype)[:, 1:]

    def cls_embedding(self, dtype: Any) -> jax.Array:
        """The cls token plus the (zero) cls row of the table."""
        return (self.cls_token[...] + self.pos_embed[...].astype(dtype)[:, :1]).astype(dtype)


class AudioMAE(Backbone):
    """AudioMAE encoder-decoder. ``__call__(spec, mask, *, keys=None) -> (pred [B, L, p*p], aux)``.

    The model is the :class:`~maskjax.models.backbone.Backbone` of its decoder (``decoder_blocks``,
    ``decoder_norm``), whose blocks are swin blocks or MAE's pre-LN blocks.

    ``keys`` (per-example PRNG keys, training only) drive the dropout of the swin decoder's
    position-bias meta network, which the official model runs in training mode.

    ``decoder_mode="swin"``: ``swin_depth`` (official: 16, hard-coded) blocks with
    ``decoder_heads`` heads; ``decoder_depth`` is ignored, as in the official code.
    ``"global"``: MAE's decoder of ``decoder_depth`` blocks. ``attention_impl`` selects the fused
    attention of the encoder and the global decoder (the swin blocks' cosine attention is einsums).
    ``scan_layers`` scans the encoder and the global decoder; the swin blocks alternate shifted
    and unshifted windows, so that decoder stays unrolled.
    """

    def __init__(self, variant: str, *, target_length: int = 1024, num_mel_bins: int = 128,
                 decoder_mode: str = "swin", decoder_width: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, window: tuple[int, int] = (4, 4), shift: tuple[int, int] = (2, 0),
                 pos_embed: str = "official", swin_depth: int = 16, mlp_ratio: float = 4.0,
                 rngs: nnx.Rngs, dtype: Any = None, remat: bool | str = False,
                 attention_impl: str | None = None, scan_layers: bool = False):
        if decoder_mode not in DECODER_MODES:
            raise ValueError(f"decoder_mode must be one of {DECODER_MODES}, got {decoder_mode!r}")
        self.encoder = AudioEncoder(variant, target_length=target_length, num_mel_bins=num_mel_bins,
                                    pos_embed=pos_embed, rngs=rngs, dtype=dtype, remat=remat,
                                    attention_impl=attention_impl, scan_layers=scan_layers)
        grid, patch = self.encoder.grid, self.encoder.patch_size
        self.decoder_mode = decoder_mode
        self.decoder_embed = dense(self.encoder.width, decoder_width, ("embed", "embed"), rngs=rngs, dtype=dtype)
        self.mask_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, decoder_width)),
                                    logical_axes=(None, None, "embed"))
        self.decoder_pos_embed = Buffer(audio_pos_embed(decoder_width, *grid, mode=pos_embed)[None])
        swin = decoder_mode == "swin"
        # Official swin decoder: 16 blocks and 16 heads hard-coded, independent of decoder_depth.
        make_block = (swin_block_factory(decoder_width, decoder_heads, grid, window=window, shift=shift,
                                         mlp_ratio=mlp_ratio, dtype=dtype) if swin else None)
        super().__init__(decoder_width, swin_depth if swin else decoder_depth, decoder_heads, mlp_ratio, rngs=rngs,
                         dtype=dtype, attention_impl=attention_impl, remat=remat,
                         scan_layers=scan_layers and not swin, names=DECODER_NAMES, make_block=make_block)
        self.decoder_pred = dense(decoder_width, patch * patch, ("embed", "patch"), rngs=rngs, dtype=dtype)

    @property
    def patch_size(self) -> int:
        """Patch size of the encoder."""
        return self.encoder.patch_size

    @property
    def num_patches(self) -> int:
        """Number of patch tokens L."""
        return self.encoder.num_patches

    def decode(self, latent: jax.Array, mask: Mask, keys: jax.Array | None = None) -> jax.Array:
        """Embed, append mask tokens, unshuffle, add positions, (drop cls for swin), blocks, predict."""
        x = unshuffle_with_mask_tokens(self.decoder_embed(latent), self.mask_token[...], mask.ids_restore)
        x = x + self.decoder_pos_embed[...].astype(x.dtype)
        if self.decoder_mode == "swin":
            x = x[:, 1:]  # the official code removes cls before the local-attention blocks
            # Independent dropout per block, still one stream per example.
            per_block = None if keys is None else [
                jax.vmap(lambda kk, i=i: jax.random.fold_in(kk, i))(keys) for i in range(len(self.decoder_blocks))]
            x = self.run_stack(x, keys=per_block)
        else:
            x = self.run_stack(x)
        x = self.decoder_pred(x)
        return x if self.decoder_mode == "swin" else x[:, 1:]

    def __call__(self, spec: jax.Array, mask: Mask, *, keys: jax.Array | None = None) -> tuple[jax.Array, dict]:
        latent, aux = self.encoder(spec, mask)
        pred = self.decode(latent, mask, keys)
        return pred, {"latent": latent, "cls": aux["cls"]}
