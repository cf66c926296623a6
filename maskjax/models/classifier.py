"""ViT image classifier for fine-tuning (facebookresearch/mae ``models_vit.py``), NNX.

The encoder is a :class:`maskjax.models.vit.ViT`, so a pre-trained MAE encoder's parameters load
into ``params["encoder"]`` unchanged. Two heads:

- ``pool="gap"`` (MAE fine-tuning default, ``--global_pool``): mean of the patch tokens (cls
  excluded) -> ``fc_norm`` LayerNorm -> ``head``. The encoder's final ``norm`` is removed, as the
  official code deletes it; keeping an unused LayerNorm would only add dead parameters.
- ``pool="cls"`` (``--cls_token``, and Hugging Face ``ViTForImageClassification``): final
  ``norm`` -> cls token -> ``head``.

Position embeddings: MAE pre-training keeps them fixed (sin-cos), but MAE fine-tuning uses timm's
``VisionTransformer`` whose ``pos_embed`` is an ``nn.Parameter``: it is *trained* during
fine-tuning, starting from the loaded sin-cos values (specs/methods_vision.md section 1(c)). So
``learned_pos_embed=True`` (the default) makes it an ``nnx.Param`` initialised from sin-cos; it
is also what Hugging Face ViT checkpoints need (their position embeddings are learned).
``learned_pos_embed=False`` keeps the fixed buffer of pre-training.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models.layers import dense, layer_norm
from maskjax.models.vit import ViT

POOLS = ("gap", "cls")


def _timm_trunc_normal(std: float):
    # timm's trunc_normal_(std=s) truncates at the *absolute* bounds +-2, not at +-2 sigma: for the
    # head's std of 2e-5 that is +-1e5 sigma, i.e. effectively a plain normal. Reproduced exactly.
    return nnx.initializers.truncated_normal(stddev=std, lower=-2.0 / std, upper=2.0 / std)


class ViTClassifier(nnx.Module):
    """ViT encoder + pooling + linear head. ``__call__(images)`` returns ``(logits, aux)``.

    Args:
      variant: ViT variant such as ``"B/16"`` (see ``maskjax.models.vit.VIT_SIZES``).
      image_size: input resolution (square).
      num_classes: number of output logits.
      pool: ``"gap"`` (mean of patch tokens, ``fc_norm``) or ``"cls"`` (final norm, cls token).
      drop_path: maximum stochastic-depth rate (linear over depth), active when a ``drop_key`` is given.
      head_init_std: std of the head weight init (MAE: 2e-5); the head bias starts at 0.
      learned_pos_embed: position embedding as a trainable parameter (True) or fixed buffer.
      encoder: a ready encoder module to fine-tune instead of maskjax's ViT of ``variant`` (a
        method's own architecture, e.g. SimMIM's layer-scale ViT with per-block relative position
        biases); it needs ``width``, ``embed``, ``run_blocks``, ``block_args`` and ``final_norm``.
    """

    def __init__(self, variant: str, *, image_size: int, num_classes: int, pool: str = "gap",
                 drop_path: float = 0.0, head_init_std: float = 2e-5, learned_pos_embed: bool = True,
                 in_chans: int = 3, rngs: nnx.Rngs, dtype: Any = None, remat: bool = False,
                 attention_impl: str | None = None, encoder: nnx.Module | None = None):
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.pool = pool
        self.num_classes = num_classes
        self.encoder = encoder if encoder is not None else ViT(
            variant, image_size=image_size, in_chans=in_chans, rngs=rngs, dtype=dtype, drop_path=drop_path,
            remat=remat, attention_impl=attention_impl)
        width = self.encoder.width
        if learned_pos_embed and getattr(self.encoder, "pos_embed", None) is not None:
            self.encoder.pos_embed = nnx.Param(self.encoder.pos_embed[...], logical_axes=(None, None, "embed"))
        if pool == "gap":
            self.encoder.norm = None  # deleted in models_vit.py when global_pool is on
            self.fc_norm = layer_norm(width, rngs=rngs, dtype=dtype)
        else:
            self.fc_norm = None
        self.head = dense(width, num_classes, ("embed", None), rngs=rngs, dtype=dtype,
                          kernel_init=_timm_trunc_normal(head_init_std))

    @property
    def patch_size(self) -> int:
        """Patch size of the encoder."""
        return self.encoder.patch_size

    def features(self, images: jax.Array, *, drop_key: jax.Array | None = None) -> jax.Array:
        """Pooled features [B, D] that feed the head."""
        enc = self.encoder
        x = enc.run_blocks(enc.embed(images), drop_key, args=enc.block_args())
        if self.pool == "gap":
            return self.fc_norm(x[:, 1:].mean(axis=1))
        return enc.final_norm(x)[:, 0]

    def __call__(self, images: jax.Array, *, drop_key: jax.Array | None = None) -> tuple[jax.Array, dict]:
        feats = self.features(images, drop_key=drop_key)
        logits = self.head(feats).astype(jnp.float32)
        return logits, {"features": feats}
