"""MAE as Spatiotemporal Learners (facebookresearch/mae_st ``models_mae.py``), NNX.

Videos are [B, T, H, W, 3]. A ``Conv3d`` with kernel = stride = (t_patch, p, p) (a Linear on
tubelets, :class:`maskjax.models.video_layers.TubeletEmbed`) gives T' x H' x W' tokens ordered
(t, h, w). Masking is MAE's random masking over all spacetime tokens; the position embedding is
added **after** masking by gathering it at ``ids_keep`` (specs/methods_vision.md section 7):

* ``sep_pos_embed=True``: learned spatial (1, H'W', D) + temporal (1, T', D) tables, token
  ``t * H'W' + s`` gets ``spatial[s] + temporal[t]``, and a separate ``class`` embedding for the
  cls token, all ``trunc_normal(0.02)``; otherwise one learned (1, [1+]L, D) table.
* ``cls_embed=True``: a cls token in the encoder (removed from its output) and a separate
  ``decoder_cls_token`` in the decoder. The official code never initialises
  ``decoder_cls_token``, so it stays at zero.
* The decoder predicts ``t_pred_patch * p * p * 3`` values per token, ``t_pred_patch =
  t_patch * pred_t_dim // num_frames``, against :func:`mae_st_target`.
* Init: xavier-uniform linears (``q``, ``k`` and ``v`` are three separate ``Linear(D, D)`` in the
  official ``video_vit.Attention``, so the fused qkv kernel is three independent xavier blocks),
  xavier on the conv weight viewed as [D, fan_in] with PyTorch's default conv bias, mask token
  normal(0.02). ``trunc_init=True``: linears trunc_normal(0.02), the conv weight trunc_normal(1)
  (timm's default std, cut at +-2), the mask token trunc_normal(0.02).

The separable tables live in a sub-module named ``pos_embed`` (``pos_embed/spatial`` ...): the
fine-tuning layer decay and weight-decay rules match path components, which gives them layer 0 and
no weight decay like the official ``name.startswith("pos_embed")`` / ``no_weight_decay``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.masking import Mask, unshuffle_with_mask_tokens
from maskjax.models.backbone import DECODER_NAMES, Backbone, Encoder
from maskjax.models.layers import dense
from maskjax.models.video_layers import TubeletEmbed
from maskjax.models.vit import parse_variant


def _trunc_normal(key: jax.Array, shape, std: float, bound: float) -> jax.Array:
    """timm ``trunc_normal_(std=std, a=-bound, b=bound)`` (absolute bounds, as timm's default +-2)."""
    return std * jax.random.truncated_normal(key, -bound / std, bound / std, shape, jnp.float32)


class PosEmbed(nnx.Module):
    """Learned position embeddings of MAE-ST, separable (space + time + class) or joint."""

    def __init__(self, grid: tuple[int, int, int], dim: int, *, separable: bool, with_cls: bool, rngs: nnx.Rngs):
        gt, gh, gw = grid
        self.grid = grid
        self.separable = separable
        self.has_cls = with_cls
        axes = (None, None, "embed")
        if separable:
            self.spatial = nnx.Param(_trunc_normal(rngs.params(), (1, gh * gw, dim), 0.02, 2.0), logical_axes=axes)
            self.temporal = nnx.Param(_trunc_normal(rngs.params(), (1, gt, dim), 0.02, 2.0), logical_axes=axes)
            if with_cls:
                self.cls = nnx.Param(_trunc_normal(rngs.params(), (1, 1, dim), 0.02, 2.0), logical_axes=axes)
        else:
            n = gt * gh * gw + int(with_cls)
            self.table = nnx.Param(_trunc_normal(rngs.params(), (1, n, dim), 0.02, 2.0), logical_axes=axes)

    def patch_table(self) -> jax.Array:
        """[1, L, D] embeddings of the patch tokens in (t, h, w) order."""
        if self.separable:
            gt = self.grid[0]
            spatial, temporal = self.spatial[...], self.temporal[...]
            # spatial.repeat(1, T', 1) + repeat_interleave(temporal, H'W', dim=1)
            return jnp.tile(spatial, (1, gt, 1)) + jnp.repeat(temporal, spatial.shape[1], axis=1)
        return self.table[...][:, int(self.has_cls):]

    def cls_table(self) -> jax.Array:
        """[1, 1, D] embedding of the cls token."""
        if not self.has_cls:
            raise ValueError("this position embedding has no cls entry (cls_embed=False)")
        return self.cls[...] if self.separable else self.table[...][:, :1]


def _init_linears(module: nnx.Module, key: jax.Array, trunc_init: bool) -> None:
    """Re-initialises Block linears as the official per-module init (see the module docstring)."""
    for path, node in nnx.iter_graph(module):
        if not isinstance(node, nnx.Linear) or "patch_embed" in path:
            continue
        key, sub = jax.random.split(key)
        shape = node.kernel.shape  # [in, out], or [layers, in, out] in a scanned stack
        if trunc_init:
            node.kernel[...] = _trunc_normal(sub, shape, 0.02, 2.0)
        elif path and path[-1] == "qkv":
            # Official q, k, v are three Linear(D, D), each xavier-uniform on its own fan (per layer).
            parts = jax.random.split(sub, 3)
            init = nnx.initializers.xavier_uniform(batch_axis=tuple(range(len(shape) - 2)))
            node.kernel[...] = jnp.concatenate([init(k, shape[:-1] + (shape[-1] // 3,)) for k in parts], axis=-1)


class MaeSTEncoder(Encoder):
    """MAE-ST ViT encoder: tubelet embed, masking, gathered positions, cls, blocks, final norm.

    ``__call__(video, mask=None)`` -> ``(tokens [B, (1+)K, D], aux)``; aux ``cls`` (when
    ``cls_embed``), ``tokens`` (patch tokens after the norm) and ``pooled`` (mean of the patch
    tokens before the norm, the mae_st fine-tuning ``x[:, 1:].mean(1)`` that precedes its norm).
    """

    pooled_from = "blocks"

    def __init__(self, variant: str, *, num_frames: int = 16, image_size: int = 224, t_patch: int = 2,
                 sep_pos_embed: bool = True, cls_embed: bool = True, rngs: nnx.Rngs, dtype: Any = None,
                 drop_path: float = 0.0, remat: bool | str = False, attention_impl: str | None = None,
                 trunc_init: bool = False, scan_layers: bool = False):
        size, patch = parse_variant(variant)
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not divisible by the patch size {patch} of {variant!r}")
        if t_patch < 1 or num_frames % t_patch:
            raise ValueError(f"num_frames {num_frames} is not divisible by the temporal patch size {t_patch}")
        self.patch_size = patch
        self.t_patch = t_patch
        self.grid = (num_frames // t_patch, image_size // patch, image_size // patch)
        self.width = size.width
        self.depth = size.depth
        self.cls_embed = cls_embed
        self.patch_embed = TubeletEmbed(t_patch, patch, 3, size.width, rngs=rngs, dtype=dtype, init="xavier")
        if trunc_init:
            kernel = self.patch_embed.proj.kernel
            kernel[...] = _trunc_normal(rngs.params(), kernel.shape, 1.0, 2.0)
        if cls_embed:
            self.cls_token = nnx.Param(_trunc_normal(rngs.params(), (1, 1, size.width), 0.02, 2.0),
                                       logical_axes=(None, None, "embed"))
        self.pos_embed = PosEmbed(self.grid, size.width, separable=sep_pos_embed, with_cls=cls_embed, rngs=rngs)
        super().__init__(size.width, size.depth, size.heads, size.mlp_ratio, rngs=rngs, dtype=dtype,
                         attention_impl=attention_impl, drop_path=drop_path, remat=remat,
                         scan_layers=scan_layers)
        _init_linears(self.blocks, rngs.params(), trunc_init)

    @property
    def num_patches(self) -> int:
        """Number of spacetime tokens L = T' * H' * W'."""
        return int(np.prod(self.grid))

    @property
    def num_prefix_tokens(self) -> int:
        """1 with ``cls_embed``, else 0."""
        return int(self.cls_embed)

    def patch_tokens(self, video: jax.Array) -> jax.Array:
        """[B, T, H, W, 3] -> tubelet embeddings [B, L, D] ordered (t, h, w)."""
        gt, gh, gw = self.grid
        expected = (gt * self.t_patch, gh * self.patch_size, gw * self.patch_size, 3)
        if video.ndim != 5 or video.shape[1:] != expected:
            raise ValueError(f"expected a video [B, {', '.join(map(str, expected))}] (num_frames, image_size, "
                             f"image_size, 3), got shape {video.shape}")
        return self.patch_embed(video)

    def patch_positions(self, dtype: Any) -> jax.Array:
        """The learned (separable or joint) table of the patch tokens.

        The official code gathers it at the kept indices after masking; adding it first and
        gathering the sum (:meth:`Encoder.embed`) gives the same values.
        """
        return self.pos_embed.patch_table().astype(dtype)

    def cls_embedding(self, dtype: Any) -> jax.Array | None:
        """The cls token plus its own position embedding, or None without ``cls_embed``."""
        if not self.cls_embed:
            return None
        return (self.cls_token[...] + self.pos_embed.cls_table()).astype(dtype)


class MaeST(Backbone):
    """MAE-ST encoder-decoder. ``__call__(video, mask) -> (pred [B, L, t_pred_patch*p*p*3], aux)``.

    The model is the :class:`~maskjax.models.backbone.Backbone` of its decoder (``decoder_blocks``,
    ``decoder_norm`` at the top level, as the official model).
    """

    def __init__(self, variant: str, *, num_frames: int = 16, image_size: int = 224, t_patch: int = 2,
                 pred_t_dim: int = 8, sep_pos_embed: bool = True, cls_embed: bool = True,
                 decoder_width: int = 512, decoder_depth: int = 4, decoder_heads: int = 16,
                 mlp_ratio: float = 4.0, rngs: nnx.Rngs, dtype: Any = None, remat: bool | str = False,
                 attention_impl: str | None = None, trunc_init: bool = False, scan_layers: bool = False):
        self.t_pred_patch = t_pred_patch_size(num_frames, t_patch, pred_t_dim)
        self.encoder = MaeSTEncoder(variant, num_frames=num_frames, image_size=image_size, t_patch=t_patch,
                                    sep_pos_embed=sep_pos_embed, cls_embed=cls_embed, rngs=rngs, dtype=dtype,
                                    remat=remat, attention_impl=attention_impl, trunc_init=trunc_init,
                                    scan_layers=scan_layers)
        self.pred_t_dim = pred_t_dim
        self.cls_embed = cls_embed
        patch = self.encoder.patch_size
        self.decoder_embed = dense(self.encoder.width, decoder_width, ("embed", "embed"), rngs=rngs, dtype=dtype)
        if cls_embed:
            # Created as zeros and never initialised by the official code.
            self.decoder_cls_token = nnx.Param(jnp.zeros((1, 1, decoder_width)), logical_axes=(None, None, "embed"))
        mask_init = (_trunc_normal(rngs.params(), (1, 1, decoder_width), 0.02, 2.0) if trunc_init
                     else 0.02 * jax.random.normal(rngs.params(), (1, 1, decoder_width)))
        self.mask_token = nnx.Param(mask_init, logical_axes=(None, None, "embed"))
        self.decoder_pos_embed = PosEmbed(self.encoder.grid, decoder_width, separable=sep_pos_embed,
                                          with_cls=cls_embed, rngs=rngs)
        super().__init__(decoder_width, decoder_depth, decoder_heads, mlp_ratio, rngs=rngs, dtype=dtype,
                         attention_impl=attention_impl, remat=remat, scan_layers=scan_layers,
                         names=DECODER_NAMES)
        self.decoder_pred = dense(decoder_width, self.t_pred_patch * patch * patch * 3, ("embed", "patch"),
                                  rngs=rngs, dtype=dtype)
        key = rngs.params()
        _init_linears(self.decoder_blocks, key, trunc_init)
        if trunc_init:
            for layer in (self.decoder_embed, self.decoder_pred):
                key, sub = jax.random.split(key)
                layer.kernel[...] = _trunc_normal(sub, layer.kernel.shape, 0.02, 2.0)

    @property
    def patch_size(self) -> int:
        """Spatial patch size."""
        return self.encoder.patch_size

    @property
    def num_patches(self) -> int:
        """Number of spacetime tokens L."""
        return self.encoder.num_patches

    def decode(self, latent: jax.Array, mask: Mask) -> jax.Array:
        """Embed (no cls), append mask tokens, unshuffle, prepend decoder cls, add positions, predict."""
        x = unshuffle_with_mask_tokens(self.decoder_embed(latent), self.mask_token[...], mask.ids_restore, 0)
        b, _, d = x.shape
        pos = self.decoder_pos_embed.patch_table()
        if self.cls_embed:
            cls = jnp.broadcast_to(self.decoder_cls_token[...].astype(x.dtype), (b, 1, d))
            x = jnp.concatenate([cls, x], axis=1)
            pos = jnp.concatenate([self.decoder_pos_embed.cls_table(), pos], axis=1)
        x = x + pos.astype(x.dtype)
        x = self.decoder_pred(self.run_stack(x))
        return x[:, int(self.cls_embed):]

    def __call__(self, video: jax.Array, mask: Mask) -> tuple[jax.Array, dict]:
        tokens, aux = self.encoder(video, mask)
        latent = tokens[:, int(self.cls_embed):]  # the official encoder drops cls before decoding
        pred = self.decode(latent, mask)
        return pred, {"latent": latent, "cls": aux.get("cls")}


def t_pred_patch_size(num_frames: int, t_patch: int, pred_t_dim: int) -> int:
    """``t_patch * pred_t_dim // num_frames``; must be exact so the target fills every token."""
    if pred_t_dim < 1 or (t_patch * pred_t_dim) % num_frames:
        raise ValueError(f"t_patch ({t_patch}) * pred_t_dim ({pred_t_dim}) must be a positive multiple of "
                         f"num_frames ({num_frames}) so each token predicts whole target frames")
    return t_patch * pred_t_dim // num_frames


def torch_linspace_long(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps).long()`` on CPU: float32 maths, then truncation.

    PyTorch fills the first half as ``start + step * i`` and the second half as
    ``end - step * (steps - 1 - i)`` (so the last value is exactly ``end``).
    """
    if steps < 1:
        raise ValueError(f"linspace needs at least one step, got {steps}")
    if steps == 1:
        return np.array([int(np.float32(start))], np.int64)
    start32, end32 = np.float32(start), np.float32(end)
    step = (end32 - start32) / np.float32(steps - 1)
    i = np.arange(steps)
    half = steps // 2
    values = np.where(i < half, start32 + step * i.astype(np.float32),
                      end32 - step * (steps - 1 - i).astype(np.float32)).astype(np.float32)
    return np.trunc(values).astype(np.int64)


def target_frame_indices(num_frames: int, pred_t_dim: int) -> np.ndarray:
    """Frames of the prediction target: ``torch.linspace(0, T - 1, pred_t_dim).long()``."""
    return torch_linspace_long(0, num_frames - 1, pred_t_dim)
