"""MaskFeat: Masked Feature Prediction (Wei et al., CVPR 2022), the ImageNet ViT recipe.

specs/methods_vision.md section 4 (facebookresearch/SlowFast 287ec00: ``slowfast/models/masked.py``
``MaskMViT._maskfeat_forward``, ``operators.py::HOGLayerC``, ``head_helper.py::MSSeparateHead``,
``datasets/imagenet.py::_prepare_im_masked``, ``configs/masked_ssl/in1k_VIT_{B,L}_MaskFeat_PT.yaml``).

* Masking: BEiT's block-wise generator on the token grid with MaskFeat's arguments
  (:func:`maskjax.masking.block.maskfeat_mask`: ``num_mask = round(L * 0.4)``, blocks of at least
  ``num_mask // 5`` patches); the count is not fixed (at most ``num_mask``), so the mask is a
  [B, L] boolean and the loss is weighted by it (static shapes).
* Model (:class:`maskjax.models.mim_vit.MaskTokenViT`): hidden patch embeddings are *replaced* by a
  learned mask token (``x * (1 - w) + mask_token * w``), the cls token is prepended, then the
  position embedding is added; the encoder sees every token. The official 2-D MaskFeat ViT is
  SlowFast's MViT with ``PATCH_2D`` and no pooling: a plain ViT with a **learned** absolute
  position embedding (``USE_ABS_POS`` True, ``USE_FIXED_SINCOS_POS`` False, ``SEP_POS_EMBED`` False),
  qkv bias, no layer scale, no relative position bias, initialised with torch's
  ``trunc_normal_(std=0.02)`` (cut at +-2 absolute: a plain normal in effect) for the position
  embedding, the cls and mask tokens and the Linear/patch-embedding weights: ``abs_pos="learned"``,
  ``init="timm"`` here (both options of the method's section).
* Head (``MSSeparateHead``, head type "separate", no transformer): LayerNorm (eps 1e-6) + Linear
  (D -> C * 9 * (p / cell)^2, trunc_normal(0.02), bias 0) on the last block's patch tokens
  *before* any final norm (``MaskMViT`` deletes the encoder's norm; ``PRETRAIN_DEPTH`` is the last
  block, 11 for ViT-B, 23 for ViT-L): ``aux["block_tokens"]``.
* Target (:mod:`maskjax.objectives.hog`): HOG of the model's input image, i.e. the
  ImageNet-normalised batch as it arrives: per channel, 9 unsigned orientation bins, hard votes,
  8x8-pixel cells, L2-normalised per (channel, cell); 108 values per 16x16 token.
* Loss: ``nn.MSELoss`` on ``x[mask]``: the mean over the masked tokens of the whole batch and
  over the target dimensions (:func:`maskjax.objectives.weighted_token_mean` of the per-token
  mean). The official head projects only the masked tokens; here every token is projected and
  the unmasked ones get weight 0 (same loss and gradients, static shapes).

Known differences from the official code: MViT initialises Linear biases and LayerNorm biases to
0.02 (``_init_weights``) where ``MaskTokenViT`` uses 0; the patch-embedding conv bias is reset to 0
instead of torch's default uniform; the final LayerNorm the official pre-training model deletes is
kept (it gets no gradient from this loss, so it stays at its identity init and only serves
``features`` and fine-tuning).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from maskjax.masking.block import maskfeat_block_params, maskfeat_mask
from maskjax.methods import register
from maskjax.methods.mae import EncoderMethod, check_vit_config, compute_dtype
from maskjax.models.layers import dense, layer_norm
from maskjax.models.mim_vit import ABS_POS, INITS, MaskTokenViT
from maskjax.models.vit import parse_variant
from maskjax.objectives import weighted_token_mean
from maskjax.objectives.hog import HOG_BINS, HOG_CELL, hog_cells, hog_target_dim, hog_token_targets

NAME = "maskfeat"
HEAD_INIT_STD = 0.02
# A HOG cell is drawn at least this many pixels wide in the figure: 9 line orientations in an
# 8-pixel square (ImageNet's cell) are not told apart, in 16 they are.
GLYPH_MIN_PX = 16


def _torch_trunc_normal(std: float = HEAD_INIT_STD):
    """``nn.init.trunc_normal_(w, std=std)``: a normal cut at +-2 (absolute), i.e. at +-2/std sigma."""
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, dtype)
    return init


class HOGHead(nnx.Module):
    """``MSSeparateHead`` for one prediction depth without a transformer: LayerNorm(eps 1e-6) + Linear.

    Parameters: ``norm`` (weight 1, bias 0) and ``projection`` (trunc_normal(0.02) weight, bias 0),
    the official ``transforms.0.0`` and ``projections.0``.
    """

    def __init__(self, width: int, target_dim: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.norm = layer_norm(width, rngs=rngs, dtype=dtype)  # eps 1e-6, as partial(nn.LayerNorm, eps=1e-6)
        self.projection = dense(width, target_dim, ("embed", "patch"), rngs=rngs, dtype=dtype,
                                kernel_init=_torch_trunc_normal())

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.projection(self.norm(tokens))


class MaskFeatModel(nnx.Module):
    """:class:`MaskTokenViT` encoder + :class:`HOGHead` (``pred_head``) on the last block's patch tokens.

    ``__call__(images, hidden, *, drop_key=None)`` returns ``(predictions [B, L, target_dim]
    float32, encoder aux)``; ``hidden`` [B, L] bool, True = replaced by the mask token.
    """

    def __init__(self, variant: str, *, image_size: int, target_dim: int, rngs: nnx.Rngs, in_chans: int = 3,
                 dtype: Any = None, remat: bool | str = False, attention_impl: str | None = None,
                 scan_layers: bool = False, abs_pos: str = "learned", init: str = "timm"):
        self.encoder = MaskTokenViT(variant, image_size=image_size, in_chans=in_chans, rngs=rngs, dtype=dtype,
                                    remat=remat, attention_impl=attention_impl, scan_layers=scan_layers,
                                    abs_pos=abs_pos, qkv_bias="qkv", init=init)
        self.pred_head = HOGHead(self.encoder.width, target_dim, rngs=rngs, dtype=dtype)

    @property
    def patch_size(self) -> int:
        """Patch size of the encoder."""
        return self.encoder.patch_size

    @property
    def num_patches(self) -> int:
        """Number of patch tokens L."""
        return self.encoder.num_patches

    def __call__(self, images: jax.Array, hidden: jax.Array | None, *,
                 drop_key: jax.Array | None = None) -> tuple[jax.Array, dict]:
        _, aux = self.encoder(images, hidden, drop_key=drop_key)
        return self.pred_head(aux["block_tokens"]).astype(jnp.float32), aux


def maskfeat_loss(pred: jax.Array, target: jax.Array, hidden: jax.Array) -> jax.Array:
    """``nn.MSELoss()(pred[mask], target[mask])``: mean over the masked tokens of the batch and the dims.

    ``pred``, ``target`` [B, L, D]; ``hidden`` [B, L] (True = masked). A batch without any masked
    token gives 0 (the official loss would be NaN).
    """
    per_token = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    return weighted_token_mean(per_token, hidden)


def orientation_stencils(nbins: int, size: int) -> np.ndarray:
    """One anti-aliased line per orientation bin through the centre of a ``size`` square: [nbins, size, size].

    ``HOGLayerC`` puts a gradient in bin ``b`` when ``theta = atan2(gx, gy)`` (mod pi) lies in
    ``[b pi / nbins, (b + 1) pi / nbins)``; with its kernels ``(gy, gx)`` is minus the (row,
    column) derivative, so the gradient points along ``(cos theta, sin theta)`` in (row, column)
    and the edge along ``(-sin theta, cos theta)``. As skimage's HOG picture, the line is drawn
    along the *edge* at the bin's centre angle (a vertical edge -> bin 4 of 9 -> a vertical line),
    about one pixel wide, ending a pixel short of the square's border.
    """
    theta = (np.arange(nbins) + 0.5) * np.pi / nbins
    edge_row, edge_col = -np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    rows, cols = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    across = np.abs(rows * edge_col - cols * edge_row)   # distance from the line
    along = np.abs(rows * edge_row + cols * edge_col)    # distance from the centre along it
    return (np.clip(1.0 - across, 0.0, 1.0) * (along <= size / 2.0 - 1.0)).astype(np.float32)


def hog_glyphs(cells: jax.Array, size: int) -> jax.Array:
    """Histograms [B, Hc, Wc, nbins] drawn as orientation glyphs: grey [B, Hc * size, Wc * size].

    Each cell is the pixel-wise max over bins of ``value x`` :func:`orientation_stencils`, values
    clipped to [0, 1] on an absolute scale (an L2-normalised histogram has no bin above 1), so a
    target and a prediction drawn this way compare directly. An all-zero histogram is black.
    """
    b, hc, wc, nbins = cells.shape
    values = jnp.clip(cells.astype(jnp.float32), 0.0, 1.0)
    stencils = jnp.asarray(orientation_stencils(nbins, size))
    glyphs = (values[..., None, None] * stencils).max(axis=3)  # [B, Hc, Wc, size, size]
    return glyphs.transpose(0, 1, 3, 2, 4).reshape(b, hc * size, wc * size)


def token_cells(tokens: jax.Array, grid: int, per: int, channels: int, nbins: int) -> jax.Array:
    """Per-token HOG vectors [B, L, C * nbins * per^2] (:func:`hog_token_targets` order) back to cells.

    Returns [B, grid * per, grid * per, C, nbins], the layout of :func:`hog_cells`.
    """
    b = tokens.shape[0]
    x = tokens.reshape(b, grid, grid, channels, nbins, per, per)
    return x.transpose(0, 1, 5, 2, 6, 3, 4).reshape(b, grid * per, grid * per, channels, nbins)


@register(NAME)
class MaskFeat(EncoderMethod):
    """Masked Feature Prediction with HOG targets (module docstring).

    Features: ``pooled`` (the mean of the normed patch tokens; default, as the official fine-tuning
    pools the patch tokens, ``USE_MEAN_POOLING``) or ``cls``.
    """

    modality = "image"
    default_pool: ClassVar[str] = "pooled"

    @classmethod
    def config_section(cls) -> dict:
        """MaskFeat's own options (official defaults; spec 4(a)/(b))."""
        from ml_collections import config_dict

        return {
            "mask_ratio": 0.4,       # AUG.MASK_RATIO: num_mask = round(L * ratio), min block num_mask // 5
            # AUG.MAX_MASK_PATCHES_PER_BLOCK (None: num_mask)
            "max_mask_patches_per_block": config_dict.placeholder(int),
            "hog_cell": HOG_CELL,    # HOG cell side in pixels (MaskMViT.cell_sz); must divide the patch size
            "hog_bins": HOG_BINS,    # orientation bins over 180 degrees (MaskMViT.nbins)
            "abs_pos": "learned",    # learned (official MViT) | sincos (fixed, MAE's) | none
            "init": "timm",          # timm: trunc_normal(0.02) cut at +-2 absolute (official) | beit
        }

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """ViT variant and patch size; the HOG cell divides the patch; the mask ratio masks something."""
        if "model" not in config or "variant" not in config.model:
            errors.append("maskfeat needs a model section with a ViT variant (config.model.variant, e.g. 'B/16')")
            return
        check_vit_config(config, errors)
        own = config[NAME]
        if own.abs_pos not in ABS_POS:
            errors.append(f"maskfeat.abs_pos {own.abs_pos!r} is unknown; use one of {ABS_POS}")
        if own.init not in INITS:
            errors.append(f"maskfeat.init {own.init!r} is unknown; use one of {INITS}")
        if int(own.hog_bins) < 1:
            errors.append(f"maskfeat.hog_bins must be >= 1 (official 9), got {own.hog_bins}")
        try:
            _, patch = parse_variant(config.model.variant)
        except ValueError:
            return  # reported by check_vit_config
        cell = int(own.hog_cell)
        if cell < 1 or patch % cell:
            divisors = [d for d in range(1, patch + 1) if patch % d == 0]
            errors.append(f"maskfeat.hog_cell {cell} must divide the patch size {patch} of model.variant "
                          f"{config.model.variant!r} (each token's target is its (patch / cell)^2 HOG cells); "
                          f"use one of {divisors} (official: 8 for 16x16 patches)")
        size = config.data.image_size
        if not isinstance(size, int) or size < patch or size % patch:
            return  # reported by check_vit_config
        grid = size // patch
        ratio = own.mask_ratio
        if not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
            errors.append(f"maskfeat.mask_ratio must be in (0, 1) (official 0.4), got {ratio}")
            return
        num_mask = maskfeat_block_params(grid, grid, float(ratio))["num_masking_patches"]
        if num_mask < 1:
            errors.append(f"maskfeat.mask_ratio={ratio} masks round({grid * grid} x {ratio}) = 0 of the {grid}x{grid} "
                          f"tokens: nothing to predict; raise it above {0.5 / (grid * grid):.3g}")
        if grid < 2:
            errors.append(f"a {grid}x{grid} token grid holds no masking block (blocks must be smaller than the "
                          f"grid); use a larger data.image_size or a smaller patch")
        most = own.max_mask_patches_per_block
        if most is not None and int(most) < max(num_mask // 5, 1):
            errors.append(f"maskfeat.max_mask_patches_per_block {most} is below the minimum block size "
                          f"{num_mask // 5} (= num_mask // 5); unset it (None = num_mask) or raise it")

    def __init__(self, config):
        super().__init__(config)
        own = config[NAME]
        self.mask_ratio = float(own.mask_ratio)
        most = own.max_mask_patches_per_block
        self.max_per_block = None if most is None else int(most)
        self.cell = int(own.hog_cell)
        self.nbins = int(own.hog_bins)

    def target_dim(self) -> int:
        """Size of one token's HOG target: ``in_chans * hog_bins * (patch / hog_cell)^2``."""
        _, patch = parse_variant(self.config.model.variant)
        return hog_target_dim(patch, self.cell, self.nbins, self.config.model.get("in_chans", 3))

    def build(self, rngs):
        """Builds :class:`MaskFeatModel` from ``config.model``, ``config.maskfeat`` and the image size."""
        m, c = self.config.model, self.config
        own = c[NAME]
        return MaskFeatModel(m.variant, image_size=c.data.image_size, target_dim=self.target_dim(), rngs=rngs,
                             in_chans=m.get("in_chans", 3), dtype=compute_dtype(c.get("compute_dtype", "float32")),
                             remat=c.get("remat", False), attention_impl=m.get("attention_impl", None),
                             scan_layers=bool(m.get("scan_layers", False)), abs_pos=own.abs_pos, init=own.init)

    def masks(self, keys: jax.Array, grid: int) -> jax.Array:
        """MaskFeat block-wise masks [B, grid * grid] (True = masked), one per example key."""
        draw = lambda k: maskfeat_mask(k, grid, grid, self.mask_ratio, self.max_per_block)  # noqa: E731
        hidden = jax.vmap(draw)(keys)
        return hidden.reshape(hidden.shape[0], grid * grid)

    def hog_targets(self, images: jax.Array, patch: int) -> jax.Array:
        """Per-token HOG targets [B, L, target_dim] of the (normalised) input images."""
        return hog_token_targets(images, patch, self.cell, self.nbins)

    def loss(self, model, batch, keys, train, step=None):
        """HOG regression on the masked tokens of one batch; masks from the per-example keys."""
        images = batch["image"]
        hidden = self.masks(keys, model.encoder.grid)
        pred, _ = model(images, hidden)
        loss = maskfeat_loss(pred, self.hog_targets(images, model.patch_size), hidden)
        return loss, {"loss": loss, "hidden_fraction": jnp.mean(hidden.astype(jnp.float32))}

    def figures(self, model, inputs, key):
        """``hog``: image | masked | target HOG | predicted HOG (on the masked tokens), in display space.

        The target is the HOG of the model's (normalised) input; the prediction is the head's
        output on the masked tokens of a mask drawn as in training (one key per example, split
        from ``key``), unpacked to cells (:func:`token_cells`). Both are averaged over the colour
        channels and drawn as :func:`hog_glyphs`; the visible tokens of the prediction are blank
        (they are never scored). The images are enlarged to the glyphs' size.
        """
        images = jnp.asarray(inputs, jnp.float32)
        b, _, _, channels = images.shape
        grid, patch = model.encoder.grid, model.patch_size
        per = patch // self.cell
        keys = jax.random.split(key, b) if key.ndim == 0 else key
        hidden = self.masks(keys, grid)
        pred, _ = model(images, hidden)
        target = hog_cells(images, self.nbins, self.cell).mean(axis=3)
        predicted = token_cells(pred, grid, per, channels, self.nbins).mean(axis=3)
        hidden_cells = hidden.reshape(b, grid, grid).repeat(per, 1).repeat(per, 2)
        size = self.cell * math.ceil(GLYPH_MIN_PX / self.cell)
        zoom = size // self.cell
        pixels = images * jnp.asarray(IMAGENET_STD, jnp.float32) + jnp.asarray(IMAGENET_MEAN, jnp.float32)
        pixels = jnp.clip(pixels, 0.0, 1.0).repeat(zoom, 1).repeat(zoom, 2)
        hidden_pixels = hidden_cells.repeat(size, 1).repeat(size, 2)[..., None]
        grey = lambda x: jnp.repeat(x[..., None], 3, axis=-1)  # noqa: E731
        caption = (f"MaskFeat HOG of the normalised input: {self.nbins} unsigned orientation bins per "
                   f"{self.cell}x{self.cell}-pixel cell, averaged over the colour channels; a cell is drawn as "
                   f"one line per bin along its edge direction (perpendicular to the gradient), brightness = "
                   f"the bin's value (histograms L2-normalised per channel and cell; 1 = white). Prediction "
                   f"on the masked tokens only (grey: visible tokens, never scored)")
        return {"hog": {"image": pixels, "masked": jnp.where(hidden_pixels, jnp.nan, pixels),
                        "target HOG": grey(hog_glyphs(target, size)),
                        # Blanked after drawing: NaN does not reliably survive XLA's fused clip/max.
                        "predicted HOG": jnp.where(hidden_pixels, grey(hog_glyphs(predicted, size)), jnp.nan),
                        "caption": caption}}

    def flops(self, global_batch):
        """Patch embedding on the ``L`` patches, the encoder on all ``1 + L`` tokens (masked ones are
        replaced, not dropped), the head on the ``L`` patch tokens (the official head projects only
        the masked ones; XLA computes all). The HOG target is not a matmul and is not counted."""
        from maskjax.models.flop_count import matmul, scaled, transformer_layer

        size, patch = parse_variant(self.config.model.variant)
        patches = (self.config.data.image_size // patch) ** 2
        pixels = patch * patch * self.config.model.get("in_chans", 3)
        parts = {
            "patch_embed": matmul(patches, pixels, size.width),
            "encoder": size.depth * transformer_layer(1 + patches, size.width, int(size.width * size.mlp_ratio)),
            "head": matmul(patches, size.width, self.target_dim()),
        }
        return scaled(NAME, parts, global_batch, "image patch (all L patches of an image)", patches)
