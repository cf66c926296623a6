"""Vision Transformer encoder (MAE flavour) and the one variant table every ViT model reads."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.masking import Mask, gather_tokens
from maskjax.models.layers import Block, Buffer, PatchEmbed, layer_norm, sincos_2d
from maskjax.models.remat import block_keys, resolve_remat
from maskjax.models.scan import apply_blocks, stacked_blocks


@dataclasses.dataclass(frozen=True)
class ViTSize:
    """Width, depth, heads and MLP ratio of one ViT size."""

    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0


# Standard sizes (ViT paper, DeiT for Ti/S) plus two tiny ones for CPU smoke runs and tests.
VIT_SIZES: dict[str, ViTSize] = {
    "mu": ViTSize(32, 2, 2),       # micro: tests
    "Pico": ViTSize(96, 4, 3),     # CPU-minutes recipes
    "Ti": ViTSize(192, 12, 3),
    "S": ViTSize(384, 12, 6),
    "B": ViTSize(768, 12, 12),
    "L": ViTSize(1024, 24, 16),
    "H": ViTSize(1280, 32, 16),
    "g": ViTSize(1408, 40, 16, 48 / 11),  # VideoMAE V2 giant (used as "g/14")
}


def parse_variant(variant: str) -> tuple[ViTSize, int]:
    """Parses ``"B/16"`` into (size, patch size); clear errors for unknown names."""
    match = re.fullmatch(r"([A-Za-z]+)/(\d+)", variant or "")
    if not match:
        raise ValueError(f"model variant must look like 'B/16' (size/patch), got {variant!r}")
    name, patch = match.group(1), int(match.group(2))
    if patch < 1:
        raise ValueError(f"patch size must be at least 1, got {patch} in variant {variant!r}")
    if name not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {name!r} in variant {variant!r}; known: {sorted(VIT_SIZES)}")
    return VIT_SIZES[name], patch


class ViT(nnx.Module):
    """ViT encoder with fixed 2-D sin-cos position embeddings and a cls token (MAE encoder).

    ``__call__(images, mask=None)`` returns ``(tokens, aux)``: tokens are [B, 1+K, D] after the
    final LayerNorm (cls first, then the visible tokens in ``mask.ids_keep`` order, or all
    tokens when ``mask`` is None); ``aux`` holds named intermediates for evaluators.
    """

    def __init__(self, variant: str, *, image_size: int, in_chans: int = 3, rngs: nnx.Rngs,
                 dtype: Any = None, drop_path: float = 0.0, remat: bool | str = False,
                 attention_impl: str | None = None, scan_layers: bool = False):
        size, patch = parse_variant(variant)
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch}")
        self.patch_size = patch
        self.grid = image_size // patch
        self.width = size.width
        self.depth = size.depth
        self.dtype = dtype
        self.remat = resolve_remat(remat)  # a policy name of maskjax.models.remat
        self.scan_layers = scan_layers
        self.patch_embed = PatchEmbed(patch, in_chans, size.width, rngs=rngs, dtype=dtype)
        self.cls_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, size.width)),
                                   logical_axes=(None, None, "embed"))
        self.pos_embed = Buffer(sincos_2d(size.width, self.grid, self.grid, cls_token=True)[None])
        # Stochastic depth grows linearly with depth (timm), used only by fine-tuning.
        rates = [drop_path * i / max(size.depth - 1, 1) for i in range(size.depth)]
        if scan_layers:
            # One stacked block (leading "layers" axis) applied with nnx.scan: identical blocks only.
            if drop_path:
                raise ValueError("scan_layers needs drop_path 0 (the rate differs per block); unset "
                                 "model.scan_layers for fine-tuning with stochastic depth")
            self.blocks = stacked_blocks(
                lambda r: Block(size.width, size.heads, size.mlp_ratio, rngs=r, dtype=dtype,
                                attention_impl=attention_impl), size.depth, rngs)
        else:
            self.blocks = nnx.List([
                Block(size.width, size.heads, size.mlp_ratio, rngs=rngs, dtype=dtype, drop_path=r,
                      attention_impl=attention_impl)
                for r in rates
            ])
        self.norm = layer_norm(size.width, rngs=rngs, dtype=dtype)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens L = (image_size / patch)^2."""
        return self.grid * self.grid

    def run_blocks(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Applies the transformer blocks (with the remat policy and an optional drop-path key)."""
        return apply_blocks(self.blocks, x, self.remat, block_keys(key, self.depth))

    def __call__(self, images: jax.Array, mask: Mask | None = None, *,
                 drop_key: jax.Array | None = None) -> tuple[jax.Array, dict]:
        x = self.patch_embed(images)
        pos = self.pos_embed[...].astype(x.dtype)
        # MAE adds the position embedding before masking, and the cls token after it.
        x = x + pos[:, 1:]
        if mask is not None:
            x = gather_tokens(x, mask.ids_keep)
        cls = jnp.broadcast_to((self.cls_token[...] + pos[:, :1]).astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        x = self.run_blocks(x, drop_key)
        x = self.norm(x)
        return x, {"cls": x[:, 0], "tokens": x[:, 1:]}
