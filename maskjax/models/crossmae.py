"""CrossMAE (TonyLianLong/CrossMAE ``models_cross.py``, ``transformer_utils.py``), NNX.

specs/methods_vision.md section 11. The encoder is MAE's ViT (:class:`~maskjax.models.vit.ViT`,
same parameter paths under ``encoder``, so the probe and fine-tune evaluators load it as MAE's) run
on the visible tokens; the decoder differs from MAE's:

- the encoder hands over *every* block's output (before the final LayerNorm, which CrossMAE's
  pre-training never applies) and, with ``use_input`` (``--use_input``), the blocks' input tokens:
  ``k = depth (+1)`` feature maps [B, 1+K, D_enc], cls token included;
- :class:`WeightedFeatureMaps` (``--weight_fm``) mixes them into one map per decoder layer with a
  bias-free ``Linear(k -> decoder_depth)``;
- decoder layer ``i`` is a :class:`CrossAttentionBlock`: its queries (the reconstructed positions
  only, ``mask_token + decoder_pos_embed``) attend to ``dec_norms[i](mixed_i)``; there is no
  self-attention among the queries (``self_attn=False``, the official default);
- ``decoder_norm`` then ``decoder_pred`` give pixels of the reconstructed positions only.

Only the ``--weight_fm`` path exists here: every released run uses it, and the official code's
other path calls an encoder norm it never defines.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models.layers import Buffer, Mlp, attend, dense, layer_norm, sincos_2d
from maskjax.models.remat import remat_block, resolve_remat
from maskjax.models.scan import stacked_blocks
from maskjax.models.vit import ViT


class CrossAttention(nnx.Module):
    """Multi-head attention of decoder queries ``x`` over encoder features ``y`` (official ``CrossAttention``).

    ``q = Linear(dec -> dec)``, ``kv = Linear(enc -> 2 dec)`` (keys are the first ``dec``
    channels, values the second), both biased (``qkv_bias=True``), scale ``head_dim ** -0.5``,
    then ``proj``. The query and key lengths differ: P reconstructed positions over 1 + K tokens.
    """

    def __init__(self, encoder_dim: int, decoder_dim: int, num_heads: int, *, rngs: nnx.Rngs,
                 dtype: Any = None, attention_impl: str | None = None):
        if decoder_dim % num_heads:
            raise ValueError(f"decoder width {decoder_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.q = dense(decoder_dim, decoder_dim, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.kv = dense(encoder_dim, 2 * decoder_dim, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.proj = dense(decoder_dim, decoder_dim, ("heads", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        b, n, c = x.shape
        m, heads = y.shape[1], self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads)
        kv = self.kv(y).reshape(b, m, 2, heads, c // heads)
        out = attend(q, kv[:, :, 0], kv[:, :, 1], self.attention_impl)
        return self.proj(out.reshape(b, n, c))


class CrossAttentionBlock(nnx.Module):
    """``x += CrossAttn(LN(x), y)`` then ``x += MLP(LN(x))`` (official ``CrossAttentionBlock``, no self-attention).

    ``y`` is the (already normalised) encoder feature map of this decoder layer.
    """

    def __init__(self, encoder_dim: int, decoder_dim: int, num_heads: int, mlp_ratio: float = 4.0, *,
                 rngs: nnx.Rngs, dtype: Any = None, attention_impl: str | None = None):
        self.norm1 = layer_norm(decoder_dim, rngs=rngs, dtype=dtype)
        self.cross_attn = CrossAttention(encoder_dim, decoder_dim, num_heads, rngs=rngs, dtype=dtype,
                                         attention_impl=attention_impl)
        self.norm2 = layer_norm(decoder_dim, rngs=rngs, dtype=dtype)
        self.mlp = Mlp(decoder_dim, int(decoder_dim * mlp_ratio), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        x = x + self.cross_attn(self.norm1(x), y)
        return x + self.mlp(self.norm2(x))


class WeightedFeatureMaps(nnx.Module):
    """``Linear(k -> decoder_depth, bias=False)`` over the stacked encoder feature maps.

    The kernel [k, decoder_depth] is drawn from N(0, 1/sqrt(k)) (official init: std
    ``1 / sqrt(k)``); ``mixed[j] = sum_i kernel[i, j] * maps[i]``.
    """

    def __init__(self, num_maps: int, decoder_depth: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.dtype = dtype
        self.linear = dense(num_maps, decoder_depth, (None, None), rngs=rngs, dtype=dtype, use_bias=False,
                            kernel_init=nnx.initializers.normal(stddev=1.0 / math.sqrt(num_maps)))

    def __call__(self, maps: jax.Array) -> jax.Array:
        """maps [k, B, T, D] -> mixed [decoder_depth, B, T, D] (layer-major, ready to scan over)."""
        kernel = self.linear.kernel[...].astype(maps.dtype)
        return jnp.einsum("kbtd,kj->jbtd", maps, kernel)


class CrossMAE(nnx.Module):
    """MAE's ViT encoder on the visible tokens plus CrossMAE's cross-attention decoder.

    ``__call__(images, mask)`` with a :class:`~maskjax.masking.partial_reconstruction.PartialMask`
    returns ``(pred, aux)``: pred [B, P, p*p*C] are the pixels of the P reconstructed positions in
    ``mask.ids_recon`` (ascending) order; aux holds the last block's output (``latent``).
    """

    def __init__(self, variant: str, *, image_size: int, in_chans: int = 3, rngs: nnx.Rngs,
                 decoder_width: int = 512, decoder_depth: int = 12, decoder_heads: int = 16,
                 mlp_ratio: float = 4.0, use_input: bool = True, dtype: Any = None,
                 remat: bool | str = False, attention_impl: str | None = None, scan_layers: bool = False):
        if decoder_depth < 1:
            raise ValueError(f"CrossMAE needs at least one decoder block, got decoder_depth {decoder_depth}")
        self.encoder = ViT(variant, image_size=image_size, in_chans=in_chans, rngs=rngs, dtype=dtype,
                           remat=remat, attention_impl=attention_impl, scan_layers=scan_layers)
        enc, grid, patch = self.encoder.width, self.encoder.grid, self.encoder.patch_size
        self.use_input = use_input
        self.remat = resolve_remat(remat)
        self.scan_layers = scan_layers
        self.num_feature_maps = self.encoder.depth + int(use_input)
        self.wfm = WeightedFeatureMaps(self.num_feature_maps, decoder_depth, rngs=rngs, dtype=dtype)
        make_norm = lambda r: layer_norm(enc, rngs=r, dtype=dtype)
        make_block = lambda r: CrossAttentionBlock(enc, decoder_width, decoder_heads, mlp_ratio, rngs=r,
                                                   dtype=dtype, attention_impl=attention_impl)
        if scan_layers:
            # Stacked along a leading "layers" axis, as the encoder's blocks (maskjax.models.scan).
            self.dec_norms = stacked_blocks(make_norm, decoder_depth, rngs)
            self.decoder_blocks = stacked_blocks(make_block, decoder_depth, rngs)
        else:
            self.dec_norms = nnx.List([make_norm(rngs) for _ in range(decoder_depth)])
            self.decoder_blocks = nnx.List([make_block(rngs) for _ in range(decoder_depth)])
        self.mask_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, decoder_width)),
                                    logical_axes=(None, None, "embed"))
        self.decoder_pos_embed = Buffer(sincos_2d(decoder_width, grid, grid, cls_token=True)[None])
        self.decoder_norm = layer_norm(decoder_width, rngs=rngs, dtype=dtype)
        self.decoder_pred = dense(decoder_width, patch * patch * in_chans, ("embed", "patch"), rngs=rngs,
                                  dtype=dtype)

    @property
    def patch_size(self) -> int:
        """Patch size of the encoder."""
        return self.encoder.patch_size

    @property
    def num_patches(self) -> int:
        """Number of patch tokens L."""
        return self.encoder.num_patches

    def feature_maps(self, images: jax.Array, mask) -> jax.Array:
        """The encoder's k feature maps [k, B, 1+K, D]: its input tokens (``use_input``), then each block's output.

        ``mask`` needs only ``ids_keep`` (the visible tokens). The blocks run under the encoder's
        remat policy; no final LayerNorm (CrossMAE's pre-training never applies it).
        """
        tokens = self.encoder.embed(images, mask)
        blocks = self.encoder.stack_blocks
        if isinstance(blocks, nnx.List):
            call = remat_block(self.encoder.remat, lambda blk, y: blk(y))
            x, outputs = tokens, []
            for block in blocks:
                x = call(block, x)
                outputs.append(x)
            maps = jnp.stack(outputs)
        else:
            # The scan carries the tokens and also emits each block's output (stacked on axis 0).
            body = remat_block(self.encoder.remat, lambda blk, y: (lambda z: (z, z))(blk(y)))
            _, maps = nnx.scan(body, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0))(blocks, tokens)
        if self.use_input:
            maps = jnp.concatenate([tokens[None], maps])  # the official list puts the input first
        return maps

    def queries(self, ids_recon: jax.Array, dtype: Any) -> jax.Array:
        """Decoder queries [B, P, D_dec]: ``mask_token`` plus the decoder position of each reconstructed token."""
        pos = self.decoder_pos_embed[...][0, 1:].astype(dtype)
        return jnp.take(pos, ids_recon, axis=0) + self.mask_token[...].astype(dtype)

    def decode(self, maps: jax.Array, ids_recon: jax.Array) -> jax.Array:
        """Pixels [B, P, p*p*C] of the positions ``ids_recon`` [B, P] from the feature maps [k, B, T, D]."""
        mixed = self.wfm(maps)
        x = self.queries(ids_recon, maps.dtype)
        step = lambda blk, norm, h, y: blk(h, norm(y))
        if isinstance(self.decoder_blocks, nnx.List):
            call = remat_block(self.remat, step)
            for i, (block, norm) in enumerate(zip(self.decoder_blocks, self.dec_norms, strict=True)):
                x = call(block, norm, x, mixed[i])
        else:
            body = remat_block(self.remat, step)
            x = nnx.scan(body, in_axes=(0, 0, nnx.Carry, 0), out_axes=nnx.Carry)(
                self.decoder_blocks, self.dec_norms, x, mixed)
        return self.decoder_pred(self.decoder_norm(x))

    def __call__(self, images: jax.Array, mask) -> tuple[jax.Array, dict]:
        maps = self.feature_maps(images, mask)
        return self.decode(maps, mask.ids_recon), {"latent": maps[-1]}
