"""Vision Transformer encoder (MAE flavour) and the one variant table every ViT model reads."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
from flax import nnx

from maskjax.models.backbone import Encoder
from maskjax.models.layers import Buffer, PatchEmbed, sincos_2d


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


class ViT(Encoder):
    """ViT encoder with fixed 2-D sin-cos position embeddings and a cls token (MAE encoder).

    ``__call__(images, mask=None)`` returns ``(tokens, aux)``: tokens are [B, 1+K, D] after the
    final LayerNorm (cls first, then the visible tokens in ``mask.ids_keep`` order, or all
    tokens when ``mask`` is None); ``aux`` holds ``cls`` and the patch ``tokens`` for evaluators.
    The blocks are a :class:`~maskjax.models.backbone.Backbone` (``blocks``, ``norm``).
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
        self.patch_embed = PatchEmbed(patch, in_chans, size.width, rngs=rngs, dtype=dtype)
        self.cls_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, size.width)),
                                   logical_axes=(None, None, "embed"))
        self.pos_embed = Buffer(sincos_2d(size.width, self.grid, self.grid, cls_token=True)[None])
        # Stochastic depth (drop_path) is used only by fine-tuning.
        super().__init__(size.width, size.depth, size.heads, size.mlp_ratio, rngs=rngs, dtype=dtype,
                         attention_impl=attention_impl, drop_path=drop_path, remat=remat,
                         scan_layers=scan_layers)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens L = (image_size / patch)^2."""
        return self.grid * self.grid

    @property
    def num_prefix_tokens(self) -> int:
        """The cls token."""
        return 1

    def patch_tokens(self, images: jax.Array) -> jax.Array:
        """[B, H, W, C] -> patch embeddings [B, L, D]."""
        return self.patch_embed(images)

    def patch_positions(self, dtype: Any) -> jax.Array:
        """The sin-cos rows of the patch tokens (``pos_embed`` is a learned Param once fine-tuned)."""
        return self.pos_embed[...].astype(dtype)[:, 1:]

    def cls_embedding(self, dtype: Any) -> jax.Array:
        """MAE adds the position embedding before masking and the cls token (with its row) after it."""
        return (self.cls_token[...] + self.pos_embed[...].astype(dtype)[:, :1]).astype(dtype)
