"""VideoMAE / VideoMAE V2 pre-training model (MCG-NJU/VideoMAE ``modeling_pretrain.py``), NNX.

specs/methods_vision.md section 5 "Model" and section 6 "Model forward":

* tubelet embedding ``Conv3d(k=s=(2, p, p))`` with PyTorch's default init (never re-initialised);
* a fixed interleaved 1-D sinusoid table over the flattened (t, h, w) tokens, added **before**
  the masked tokens are dropped; no cls token;
* BEiT-style attention (learnable q and v biases, k bias fixed at zero), LayerNorm eps 1e-6,
  xavier-uniform / zero Linear init, no layer-scale, no drop path in pre-training;
* ``encoder_to_decoder`` Linear without bias, PyTorch default init;
* mask token trunc-normal(0.02) truncated at +-1 sigma (+-0.02 absolute);
* decoder input ``cat([x_vis + pos[vis], mask_token + pos[decoded]])`` (no unshuffle) and the
  prediction ``head(norm(x[:, -N:]))`` for the N decoded positions only.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.masking import Mask
from maskjax.masking.video import hidden_ids
from maskjax.models.backbone import DECODER_NAMES, Backbone, Encoder
from maskjax.models.layers import Buffer, _init_with_axes, dense
from maskjax.models.video_layers import TubeletEmbed, sinusoid_table
from maskjax.models.vit import parse_variant

# Decoder (width, heads) of each size (spec section 5 table; V2 uses 512 for H and g).
VIDEOMAE_DECODERS = {"S": (192, 3), "B": (384, 6), "L": (512, 8), "H": (640, 8), "g": (512, 8)}
VIDEOMAE_V2_DECODERS = {**VIDEOMAE_DECODERS, "H": (512, 8)}


def _torch_linear_init(fan_in: int):
    # PyTorch's nn.Linear default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class VideoMAEEncoder(Encoder):
    """VideoMAE encoder: tubelet embedding + fixed sinusoid positions + q/v-bias blocks + LN.

    ``__call__(video, mask=None)`` returns ``(tokens, aux)``: tokens [B, K, D] after the final
    LayerNorm (the visible tokens in ``mask.ids_keep`` order, or all L tokens without a mask);
    ``aux = {"tokens": tokens, "pooled": mean over tokens}`` (VideoMAE fine-tunes from the mean).
    """

    pooled_from = "norm"

    def __init__(self, variant: str, *, num_frames: int, image_size: int, tubelet: int = 2,
                 in_chans: int = 3, rngs: nnx.Rngs, dtype: Any = None, drop_path: float = 0.0,
                 remat: bool | str = False, attention_impl: str | None = None, scan_layers: bool = False):
        size, patch = parse_variant(variant)
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by the patch size {patch} of {variant!r}")
        if num_frames % tubelet:
            raise ValueError(f"num_frames {num_frames} is not divisible by the tubelet size {tubelet}")
        self.patch_size = patch
        self.tubelet = tubelet
        self.grid = (num_frames // tubelet, image_size // patch, image_size // patch)
        self.width = size.width
        self.depth = size.depth
        self.patch_embed = TubeletEmbed(tubelet, patch, in_chans, size.width, rngs=rngs, dtype=dtype,
                                        init="torch_default")
        self.pos_embed = Buffer(sinusoid_table(self.num_patches, size.width)[None])
        super().__init__(size.width, size.depth, size.heads, size.mlp_ratio, rngs=rngs, dtype=dtype,
                         attention_impl=attention_impl, qkv_bias="qv", drop_path=drop_path, remat=remat,
                         scan_layers=scan_layers)

    @property
    def num_patches(self) -> int:
        """Number of tokens L = (T/t) * (H/p) * (W/p)."""
        t, h, w = self.grid
        return t * h * w

    def patch_tokens(self, video: jax.Array) -> jax.Array:
        """[B, T, H, W, C] -> tubelet embeddings [B, L, D]."""
        x = self.patch_embed(video)
        if x.shape[1] != self.num_patches:
            raise ValueError(f"video {video.shape} gives {x.shape[1]} tokens; the model was built for "
                             f"{self.num_patches} (grid {self.grid})")
        return x

    def patch_positions(self, dtype: Any) -> jax.Array:
        """The fixed sinusoid table, added before masked tokens are dropped (VideoMAE's encoder)."""
        return self.pos_embed[...].astype(dtype)


class VideoMAE(Backbone):
    """VideoMAE (and V2 dual masking) encoder-decoder; the Backbone of its decoder (``decoder_blocks``).

    ``__call__(video, mask, decode_ids=None)`` returns ``(pred, aux)``: ``pred`` [B, N, t*p*p*C]
    predicts the N positions ``decode_ids`` [B, N] (default: the encoder-hidden positions in
    the mask's order, ascending for tube masks); ``aux`` holds ``tokens`` (encoder output),
    ``pooled`` and the ``decode_ids`` used.
    """

    def __init__(self, variant: str, *, num_frames: int, image_size: int, tubelet: int = 2,
                 in_chans: int = 3, decoder_width: int, decoder_depth: int, decoder_heads: int,
                 rngs: nnx.Rngs, dtype: Any = None, remat: bool | str = False,
                 attention_impl: str | None = None, decoder_mlp_ratio: float | None = None,
                 scan_layers: bool = False):
        self.encoder = VideoMAEEncoder(variant, num_frames=num_frames, image_size=image_size, tubelet=tubelet,
                                       in_chans=in_chans, rngs=rngs, dtype=dtype, remat=remat,
                                       attention_impl=attention_impl, scan_layers=scan_layers)
        size, patch = parse_variant(variant)
        if decoder_width % decoder_heads:
            raise ValueError(f"decoder_width {decoder_width} is not divisible by decoder_heads {decoder_heads}")
        # The official PretrainVisionTransformer passes one mlp_ratio to encoder and decoder.
        mlp_ratio = size.mlp_ratio if decoder_mlp_ratio is None else decoder_mlp_ratio
        self.in_chans = in_chans
        width = size.width
        self.encoder_to_decoder = nnx.Linear(
            width, decoder_width, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=_init_with_axes(_torch_linear_init(width), ("embed", "embed")), rngs=rngs)
        # timm trunc_normal_(std=.02, a=-.02, b=.02): a normal truncated at +-1 sigma.
        self.mask_token = nnx.Param(0.02 * jax.random.truncated_normal(rngs.params(), -1.0, 1.0,
                                                                       (1, 1, decoder_width)),
                                    logical_axes=(None, None, "embed"))
        self.decoder_pos_embed = Buffer(sinusoid_table(self.encoder.num_patches, decoder_width)[None])
        super().__init__(decoder_width, decoder_depth, decoder_heads, mlp_ratio, rngs=rngs, dtype=dtype,
                         attention_impl=attention_impl, qkv_bias="qv", remat=remat, scan_layers=scan_layers,
                         names=DECODER_NAMES)
        self.decoder_pred = dense(decoder_width, tubelet * patch * patch * in_chans, ("embed", "patch"),
                                  rngs=rngs, dtype=dtype)

    @property
    def num_patches(self) -> int:
        """Number of tokens L."""
        return self.encoder.num_patches

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T/t, H/p, W/p)."""
        return self.encoder.grid

    @property
    def patch_size(self) -> int:
        """Spatial patch size."""
        return self.encoder.patch_size

    @property
    def tubelet(self) -> int:
        """Temporal patch size."""
        return self.encoder.tubelet

    def decode(self, latent: jax.Array, ids_keep: jax.Array, decode_ids: jax.Array) -> jax.Array:
        """Decoder on ``cat([latent + pos[ids_keep], mask_token + pos[decode_ids]])``, predicting the last N."""
        x = self.encoder_to_decoder(latent)
        b, _, d = x.shape
        pos = self.decoder_pos_embed[...][0].astype(x.dtype)  # [L, Dd]
        vis = x + jnp.take(pos, ids_keep, axis=0)
        masked = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, decode_ids.shape[1], d))
        masked = masked + jnp.take(pos, decode_ids, axis=0)
        x = jnp.concatenate([vis, masked], axis=1)
        x = self.run_blocks(x)
        n = decode_ids.shape[1]
        return self.decoder_pred(self.final_norm(x[:, -n:]))

    def __call__(self, video: jax.Array, mask: Mask, decode_ids: jax.Array | None = None) -> tuple[jax.Array, dict]:
        latent, aux = self.encoder(video, mask)
        if decode_ids is None:
            decode_ids = hidden_ids(mask)
        pred = self.decode(latent, mask.ids_keep, decode_ids)
        return pred, {"tokens": latent, "pooled": aux["pooled"], "decode_ids": decode_ids}
