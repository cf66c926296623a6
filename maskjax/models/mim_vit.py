"""Token-replacing ViT (SimMIM, MaskFeat): mask token, BEiT layer scale and shared relative position
bias, and SimMIM's linear pixel decoder.

specs/methods_vision.md 2(a)-(c), microsoft/SimMIM ``models/simmim.py::VisionTransformerForSimMIM``
and ``models/vision_transformer.py`` (a copy of BEiT's ViT):

* hidden patch embeddings are *replaced*, not dropped: ``x * (1 - w) + mask_token * w`` right after
  the patch embedding, then the cls token is prepended, then the absolute position embedding (if
  any) is added; the encoder sees every token;
* pre-LN blocks with per-channel layer scale (``gamma_1``, ``gamma_2``, init ``INIT_VALUES`` = 0.1
  for SimMIM ViT-B) on the attention and MLP branches;
* one shared BEiT relative position bias (``USE_SHARED_RPB``): a table of
  ``(2Gh-1)(2Gw-1) + 3`` entries x heads (the 3 extra ones for cls->token, token->cls, cls->cls),
  gathered by :func:`relative_position_index` and added to every block's attention logits;
* initialisation ``"beit"`` (SimMIM's ``_trunc_normal_`` override): every Linear/Conv weight, the
  cls and mask tokens and a learned position embedding trunc_normal(0.02) cut at +-1 sigma, biases
  0, then ``fix_init_weight`` divides block i's ``attn.proj`` and ``mlp.fc2`` weights by
  ``sqrt(2 (i+1))``; ``"timm"``: timm's trunc_normal(0.02) cut at +-2 absolute (a plain normal in
  effect), no rescaling (MaskFeat / SlowFast).

Parameter names follow the official ones: ``patch_embed.proj`` (the conv as a Linear on patchified
pixels, :class:`~maskjax.models.layers.PatchEmbed`), ``cls_token``, ``mask_token``, ``pos_embed``,
``rel_pos_bias.relative_position_bias_table``, ``blocks.<i>.{norm1, attn.{qkv, q_bias, v_bias,
proj}, norm2, mlp.{fc1, fc2}, gamma_1, gamma_2}``, ``norm``; SimMIM's decoder (``Conv2d(1x1)``) is
``decoder``. Without layer scale, relative bias or q/v biases and with sin-cos positions the encoder
has exactly the parameters of :class:`maskjax.models.vit.ViT` (plus ``mask_token``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.models import remat
from maskjax.models.attention import scale_queries
from maskjax.models.backbone import Encoder
from maskjax.models.layers import Attention, Buffer, Dense, Mlp, PatchEmbed, dense, layer_norm, sincos_2d
from maskjax.models.vit import parse_variant

ABS_POS = ("sincos", "learned", "none")
INITS = ("beit", "timm")
# Relative position bias: off, one table shared by all blocks (True / "shared"), one per block.
RPB_MODES = (False, True, "shared", "per_block")
# attention_impl values that take an additive bias ("blockwise" has no bias operand).
BIAS_IMPLS = ("xla", "bhtd", "cudnn")
INIT_STD = 0.02
# trunc_normal bounds in units of sigma: SimMIM/BEiT cut at +-std; timm's default at +-2 absolute.
_TRUNC_SIGMAS = {"beit": 1.0, "timm": 2.0 / INIT_STD}


def _trunc_normal(key: jax.Array, shape, sigmas: float, dtype: Any = jnp.float32) -> jax.Array:
    """normal(0, 0.02) truncated at +-``sigmas`` standard deviations."""
    return INIT_STD * jax.random.truncated_normal(key, -sigmas, sigmas, shape, dtype)


def trunc_normal_init(sigmas: float):
    """A kernel initializer drawing :func:`_trunc_normal` (BEiT/SimMIM's Linear and Conv weights).

    The layers are built with it (not re-drawn after a default init): one random draw per weight.
    """
    return lambda key, shape, dtype=jnp.float32: _trunc_normal(key, shape, sigmas, dtype)


# --- relative position bias ------------------------------------------------------------------------


def num_relative_distances(grid_h: int, grid_w: int) -> int:
    """Entries of BEiT's relative position bias table: ``(2Gh-1)(2Gw-1)`` offsets plus 3 cls entries."""
    return (2 * grid_h - 1) * (2 * grid_w - 1) + 3


def relative_position_index(grid_h: int, grid_w: int) -> np.ndarray:
    """BEiT's ``relative_position_index`` int32 [1+N, 1+N], N = Gh*Gw, token 0 = cls.

    Patch query ``a`` at (ra, ca) and key ``b`` at (rb, cb) (row-major tokens) read entry
    ``(ra - rb + Gh - 1) * (2Gw - 1) + (ca - cb + Gw - 1)``; the cls query reads entry ``n - 3``
    for every patch key, every patch query reads ``n - 2`` for the cls key, and cls->cls reads
    ``n - 1`` (``n`` = :func:`num_relative_distances`).
    """
    n = num_relative_distances(grid_h, grid_w)
    rows, cols = np.divmod(np.arange(grid_h * grid_w), grid_w)
    d_row = rows[:, None] - rows[None, :] + grid_h - 1
    d_col = cols[:, None] - cols[None, :] + grid_w - 1
    index = np.empty((grid_h * grid_w + 1,) * 2, np.int32)
    index[1:, 1:] = d_row * (2 * grid_w - 1) + d_col
    index[0, 1:] = n - 3
    index[1:, 0] = n - 2
    index[0, 0] = n - 1
    return index


class RelativePositionBias(nnx.Module):
    """The shared table ``relative_position_bias_table`` [n, heads] (zeros) and its gather.

    ``__call__()`` returns the bias [heads, 1+N, 1+N] (float32) that every block adds to its
    attention logits (query rows, key columns).
    """

    def __init__(self, grid_h: int, grid_w: int, num_heads: int):
        self.grid = (grid_h, grid_w)
        self.relative_position_bias_table = nnx.Param(
            jnp.zeros((num_relative_distances(grid_h, grid_w), num_heads), jnp.float32),
            logical_axes=(None, "heads"))

    def __call__(self) -> jax.Array:
        index = relative_position_index(*self.grid)  # a trace-time constant
        bias = jnp.take(self.relative_position_bias_table[...], index.reshape(-1), axis=0)
        return bias.reshape(index.shape + (-1,)).transpose(2, 0, 1)


# --- attention with an additive bias -----------------------------------------------------------------


def _xla_biased(q, k, v, bias):
    # jax.nn.dot_product_attention adds the bias to the float32 logits; the scale is folded into q
    # as maskjax's other cores do (one multiply of [T, D] instead of [T, T]).
    return jax.nn.dot_product_attention(scale_queries(q), k, v, bias=bias[None], scale=1.0, implementation="xla")


def _bhtd_biased(q, k, v, bias):
    qh = scale_queries(q).transpose(0, 2, 1, 3)
    s = jnp.einsum("bhqd,bkhd->bhqk", qh, k, preferred_element_type=jnp.float32) + bias[None].astype(jnp.float32)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v)


def cudnn_biased_attention(q, k, v, bias, *, implementation: str = "cudnn"):
    """cuDNN fused attention with an additive bias [H, T, T] on [B, T, H, D] inputs, any T.

    cuDNN's biased backward pass needs even lengths (``maskjax.models.attention.cudnn_attention``):
    an odd T is padded by one position whose key column gets a large negative bias (so no query
    attends to it) and whose query row is dropped. ``implementation="xla"`` runs the same padding
    on any machine (the tests compare it with the unpadded attention).
    """
    t = q.shape[1]
    bias = bias.astype(q.dtype)
    if t % 2:
        pad = lambda x: jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))  # noqa: E731
        # bf16 holds -2**40 exactly; the padded key's weight exp(-2**40 - max) underflows to 0.
        column = jnp.full(bias.shape[:2] + (1,), -(2.0 ** 40), bias.dtype)
        bias = jnp.pad(jnp.concatenate([bias, column], axis=2), ((0, 0), (0, 1), (0, 0)))
        q, k, v = pad(q), pad(k), pad(v)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias[None], implementation=implementation)
    return out[:, :t]


def biased_attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, impl: str | None = None) -> jax.Array:
    """``softmax(q k^T / sqrt(D) + bias) v`` on [B, T, H, D] inputs; ``bias`` [H, T, T] shared over the batch.

    ``impl``: None or "xla" (``jax.nn.dot_product_attention``'s XLA lowering), "bhtd" (einsums in
    the [B, H, T, D] layout) or "cudnn" (:func:`cudnn_biased_attention`). The memory-efficient
    "blockwise" core has no bias operand and is refused.
    """
    if impl is not None and impl not in BIAS_IMPLS:
        raise ValueError(f"attention_impl {impl!r} cannot add a relative position bias; use None or one of "
                         f"{BIAS_IMPLS}")
    core = {"bhtd": _bhtd_biased, "cudnn": cudnn_biased_attention}.get(impl, _xla_biased)
    # Under the "attention" remat policy the core is recomputed in the backward pass, as attend's.
    return remat.maybe_remat_core(core)(q, k, v, bias)


class BiasedAttention(Attention):
    """:class:`maskjax.models.layers.Attention` (same ``qkv``, ``q_bias``/``v_bias``, ``proj``
    parameters) whose logits take an optional additive bias [H, T, T] (BEiT's ``rel_pos_bias``).

    ``kernel_init``: the projections' weight initializer (biases start at 0)."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, kernel_init: Any, dtype: Any = None,
                 attention_impl: str | None = None, qkv_bias: str = "qkv"):
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        if qkv_bias not in ("qkv", "qv"):
            raise ValueError(f"qkv_bias must be 'qkv' (timm) or 'qv' (BEiT/VideoMAE), got {qkv_bias!r}")
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.qkv = dense(dim, 3 * dim, ("embed", "heads"), rngs=rngs, dtype=dtype, use_bias=qkv_bias == "qkv",
                         kernel_init=kernel_init)
        if qkv_bias == "qv":  # learnable q and v biases, the k bias fixed at zero
            self.q_bias = nnx.Param(jnp.zeros((dim,)), logical_axes=("heads",))
            self.v_bias = nnx.Param(jnp.zeros((dim,)), logical_axes=("heads",))
        self.proj = dense(dim, dim, ("heads", "embed"), rngs=rngs, dtype=dtype, kernel_init=kernel_init)

    def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        if bias is None:
            return super().__call__(x)
        b, t, d = x.shape
        qkv = self.qkv(x)
        if hasattr(self, "q_bias"):  # BEiT: learnable q and v biases, the k bias fixed at zero
            zeros = jnp.zeros_like(self.q_bias[...])
            qkv = qkv + jnp.concatenate([self.q_bias[...], zeros, self.v_bias[...]]).astype(qkv.dtype)
        qkv = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads)
        out = biased_attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], bias, self.attention_impl)
        return self.proj(out.reshape(b, t, d))


class _Mlp(Mlp):
    """:class:`maskjax.models.layers.Mlp` (``fc1``, ``fc2``) with the given weight initializer."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, kernel_init: Any, dtype: Any = None):
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype, kernel_init=kernel_init)
        self.fc2 = dense(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype, kernel_init=kernel_init)


class _PatchEmbed(PatchEmbed):
    """:class:`maskjax.models.layers.PatchEmbed` (``proj``) with the given weight init and a zero bias
    (SimMIM's ``_init_weights`` resets the conv's bias; MAE keeps PyTorch's default)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, *, rngs: nnx.Rngs, kernel_init: Any,
                 dtype: Any = None):
        self.patch_size = patch_size
        self.proj = dense(patch_size * patch_size * in_chans, dim, ("patch", "embed"), rngs=rngs, dtype=dtype,
                          kernel_init=kernel_init)


def _split_drop_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two drop-path keys from one key (a scalar key, or per-example keys [B] split per example)."""
    if key.ndim == 0:
        k1, k2 = jax.random.split(key)
        return k1, k2
    pairs = jax.vmap(jax.random.split)(key)
    return pairs[:, 0], pairs[:, 1]


class LayerScaleBlock(nnx.Module):
    """BEiT/SimMIM block: ``x + gamma_1 * attn(norm1(x), bias)``, ``x + gamma_2 * mlp(norm2(x))``.

    ``layer_scale`` None: no gammas (a timm/MAE block with an optional attention bias). Stochastic
    depth (timm ``DropPath``) on both branches: ``key`` is one PRNG key (one draw per example of
    the batch) or per-example keys [B] (each example's draw from its own key).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, rngs: nnx.Rngs, dtype: Any = None,
                 drop_path: float = 0.0, attention_impl: str | None = None, qkv_bias: str = "qkv",
                 layer_scale: float | None = None, kernel_init: Any = None, rel_pos_grid: int | None = None):
        kernel_init = kernel_init or trunc_normal_init(_TRUNC_SIGMAS["beit"])
        # BEiT/SimMIM fine-tuning's per-block relative position bias (USE_RPB): this block's own table.
        self.rel_pos_bias = (RelativePositionBias(rel_pos_grid, rel_pos_grid, num_heads)
                             if rel_pos_grid is not None else None)
        self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.attn = BiasedAttention(dim, num_heads, rngs=rngs, dtype=dtype, attention_impl=attention_impl,
                                    qkv_bias=qkv_bias, kernel_init=kernel_init)
        self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype, kernel_init=kernel_init)
        self.drop_path = drop_path
        if layer_scale is None:
            self.gamma_1 = self.gamma_2 = None
        else:
            self.gamma_1 = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32), logical_axes=("embed",))
            self.gamma_2 = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32), logical_axes=("embed",))

    def _branch(self, y: jax.Array, gamma: nnx.Param | None, key: jax.Array | None) -> jax.Array:
        if gamma is not None:
            y = y * gamma[...].astype(y.dtype)
        if key is None or self.drop_path == 0.0:
            return y
        keep = 1.0 - self.drop_path
        if key.ndim == 0:
            kept = jax.random.bernoulli(key, keep, (y.shape[0],))
        else:
            if key.shape[0] != y.shape[0]:
                raise ValueError(f"got {key.shape[0]} per-example drop-path keys for a batch of {y.shape[0]}")
            kept = jax.vmap(lambda k: jax.random.bernoulli(k, keep))(key)
        return y * (kept.astype(y.dtype) / keep).reshape((-1,) + (1,) * (y.ndim - 1))

    def __call__(self, x: jax.Array, bias: jax.Array | None = None, key: jax.Array | None = None) -> jax.Array:
        k1, k2 = (None, None) if key is None else _split_drop_key(key)
        if self.rel_pos_bias is not None:
            bias = self.rel_pos_bias() if bias is None else bias + self.rel_pos_bias()
        x = x + self._branch(self.attn(self.norm1(x), bias), self.gamma_1, k1)
        return x + self._branch(self.mlp(self.norm2(x)), self.gamma_2, k2)


# --- the encoder -----------------------------------------------------------------------------------


class MaskTokenViT(Encoder):
    """ViT whose hidden patch embeddings are replaced by a learned mask token (SimMIM, MaskFeat).

    ``__call__(images, hidden=None, *, drop_key=None)`` returns ``(tokens, aux)``:

    * ``hidden`` bool [B, L] (True: the patch embedding is replaced, ``x*(1-w) + mask_token*w``,
      before positions are added) or None;
    * ``tokens`` [B, 1+L, D] after the final norm, cls first;
    * ``aux``: ``tokens`` [B, L, D] patch tokens after the final norm, ``cls`` [B, D], ``pooled`` [B, D]
      (mean of the normed patch tokens), ``block_tokens`` [B, L, D] (the last block's patch tokens
      *before* the final norm);
    * ``drop_key``: stochastic depth; one PRNG key or per-example keys [B] (None: deterministic).

    Args (besides :class:`maskjax.models.vit.ViT`'s): ``layer_scale`` (BEiT gamma init, None = off),
    ``rel_pos_bias`` (True or "shared": one BEiT relative position bias for all blocks, as SimMIM
    pre-trains; "per_block": one table per block, as BEiT/SimMIM fine-tune), ``abs_pos`` ("sincos" fixed,
    "learned", "none"), ``qkv_bias`` ("qkv" timm, "qv" BEiT), ``init`` (:data:`INITS`, module docstring).
    """

    def __init__(self, variant: str, *, image_size: int, in_chans: int = 3, rngs: nnx.Rngs, dtype: Any = None,
                 drop_path: float = 0.0, remat: bool | str = False, attention_impl: str | None = None,
                 scan_layers: bool = False, layer_scale: float | None = None, rel_pos_bias: bool | str = False,
                 abs_pos: str = "sincos", qkv_bias: str = "qkv", init: str = "beit"):
        size, patch = parse_variant(variant)
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by the patch size {patch} of {variant!r}")
        if abs_pos not in ABS_POS:
            raise ValueError(f"abs_pos must be one of {ABS_POS}, got {abs_pos!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if rel_pos_bias and attention_impl is not None and attention_impl not in BIAS_IMPLS:
            raise ValueError(f"attention_impl {attention_impl!r} has no additive bias for the relative position "
                             f"bias; use None or one of {BIAS_IMPLS}")
        self.patch_size = patch
        self.grid = image_size // patch
        self.width = size.width
        self.depth = size.depth
        self.in_chans = in_chans
        self.dtype = dtype
        sigmas = _TRUNC_SIGMAS[init]
        kernel_init = trunc_normal_init(sigmas)
        self.patch_embed = _PatchEmbed(patch, in_chans, size.width, rngs=rngs, dtype=dtype, kernel_init=kernel_init)
        self.cls_token = nnx.Param(_trunc_normal(rngs.params(), (1, 1, size.width), sigmas),
                                   logical_axes=(None, None, "embed"))
        self.mask_token = nnx.Param(_trunc_normal(rngs.params(), (1, 1, size.width), sigmas),
                                    logical_axes=(None, None, "embed"))
        tokens = 1 + self.grid * self.grid
        if abs_pos == "sincos":
            self.pos_embed = Buffer(sincos_2d(size.width, self.grid, self.grid, cls_token=True)[None])
        elif abs_pos == "learned":
            self.pos_embed = nnx.Param(_trunc_normal(rngs.params(), (1, tokens, size.width), sigmas),
                                       logical_axes=(None, None, "embed"))
        else:
            self.pos_embed = None
        if rel_pos_bias not in RPB_MODES:
            raise ValueError(f"rel_pos_bias must be one of {RPB_MODES}, got {rel_pos_bias!r}")
        per_block = rel_pos_bias == "per_block"
        shared = bool(rel_pos_bias) and not per_block
        self.rel_pos_bias = RelativePositionBias(self.grid, self.grid, size.heads) if shared else None

        def make_block(block_rngs: nnx.Rngs, index: int, rate: float) -> LayerScaleBlock:
            del index  # identical blocks (scan_layers); fix_init_weight's per-block scale comes after
            return LayerScaleBlock(size.width, size.heads, size.mlp_ratio, rngs=block_rngs, dtype=dtype,
                                   drop_path=rate, attention_impl=attention_impl, qkv_bias=qkv_bias,
                                   layer_scale=layer_scale, kernel_init=kernel_init,
                                   rel_pos_grid=self.grid if per_block else None)

        super().__init__(size.width, size.depth, size.heads, size.mlp_ratio, rngs=rngs, dtype=dtype,
                         attention_impl=attention_impl, drop_path=drop_path, remat=remat,
                         scan_layers=scan_layers, make_block=make_block)
        if init == "beit":
            self._fix_init_weight()

    def _fix_init_weight(self) -> None:
        """BEiT's ``fix_init_weight``: block i's ``attn.proj`` and ``mlp.fc2`` weights / sqrt(2 (i+1))."""
        scale = 1.0 / np.sqrt(2.0 * np.arange(1, self.depth + 1))
        blocks = self.stack_blocks
        if isinstance(blocks, nnx.List):
            for s, block in zip(scale, blocks, strict=True):
                for layer in (block.attn.proj, block.mlp.fc2):
                    layer.kernel[...] = layer.kernel[...] * s
        else:  # scanned: the kernels carry a leading layer axis
            for layer in (blocks.attn.proj, blocks.mlp.fc2):
                layer.kernel[...] = layer.kernel[...] * jnp.asarray(scale, jnp.float32)[:, None, None]

    @property
    def num_patches(self) -> int:
        """Number of patch tokens L = grid^2."""
        return self.grid * self.grid

    @property
    def num_prefix_tokens(self) -> int:
        """The cls token."""
        return 1

    def patch_tokens(self, images: jax.Array) -> jax.Array:
        """[B, H, W, C] -> patch embeddings [B, L, D]."""
        return self.patch_embed(images)

    def patch_positions(self, dtype: Any) -> jax.Array:
        """Absolute position rows of the patch tokens [1, L, D] (zeros without absolute positions)."""
        if self.pos_embed is None:
            return jnp.zeros((1, self.num_patches, self.width), dtype)
        return self.pos_embed[...].astype(dtype)[:, 1:]

    def cls_embedding(self, dtype: Any) -> jax.Array:
        """The cls token plus its position row [1, 1, D]."""
        cls = self.cls_token[...].astype(dtype)
        return cls if self.pos_embed is None else cls + self.pos_embed[...].astype(dtype)[:, :1]

    def embed(self, images: jax.Array, hidden: jax.Array | None = None) -> jax.Array:
        """Patch embeddings, hidden ones replaced by the mask token, cls prepended, positions added."""
        x = self.patch_tokens(images)
        if hidden is not None:
            if hidden.shape != x.shape[:2]:
                raise ValueError(f"hidden must be [B, L] = {x.shape[:2]}, got {hidden.shape}")
            # The official blend (not a where): a hidden patch's embedding gets exactly zero gradient.
            w = hidden.astype(x.dtype)[..., None]
            x = x * (1 - w) + self.mask_token[...].astype(x.dtype) * w
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed[...].astype(x.dtype)
        return x

    def attention_bias(self) -> jax.Array | None:
        """The shared relative position bias [heads, 1+L, 1+L], or None."""
        return None if self.rel_pos_bias is None else self.rel_pos_bias()

    def block_args(self) -> tuple:
        """The extra inputs of every block: the shared relative position bias (or None)."""
        return (self.attention_bias(),)

    def adapt_pretrained(self, tree: dict) -> dict:
        """A pre-trained encoder's parameter tree, adapted to this encoder's layout.

        A per-block encoder loading a shared-bias checkpoint gets the shared table copied into every
        block, as SimMIM's ``load_pretrained`` does (``utils.py``: ``rel_pos_bias`` ->
        ``blocks.i.attn.relative_position_bias_table``); other trees are returned unchanged.
        """
        shared = tree.get("rel_pos_bias") if isinstance(tree, dict) else None
        blocks = tree.get("blocks") if isinstance(tree, dict) else None
        if shared is None or self.rel_pos_bias is not None or not isinstance(blocks, dict):
            return tree
        out = {k: v for k, v in tree.items() if k != "rel_pos_bias"}
        out["blocks"] = {i: dict(block, rel_pos_bias=shared) for i, block in blocks.items()}
        return out

    def __call__(self, images: jax.Array, hidden: jax.Array | None = None, *,
                 drop_key: jax.Array | None = None) -> tuple[jax.Array, dict]:
        x = self.embed(images, hidden)
        args = self.block_args()
        if drop_key is not None and drop_key.ndim == 1:
            # Per-example keys [B]: each example's per-block keys come from its own key, so its
            # stochastic depth does not depend on the batch split or the mesh.
            per_block = jax.vmap(lambda k: jax.random.split(k, self.depth))(drop_key)  # [B, depth]
            h = self.run_blocks(x, args=args, keys=[per_block[:, i] for i in range(self.depth)])
        else:
            h = self.run_blocks(x, drop_key, args=args)
        out = self.final_norm(h)
        patches = out[:, 1:]
        aux = {"tokens": patches, "cls": out[:, 0], "pooled": patches.mean(axis=1), "block_tokens": h[:, 1:]}
        return out, aux


# --- SimMIM's pixel decoder --------------------------------------------------------------------------


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """``torch.nn.PixelShuffle`` in NHWC: [B, h, w, C*r*r] -> [B, h*r, w*r, C].

    Channel ``c*r*r + i*r + j`` of input pixel (y, x) goes to output pixel (y*r + i, x*r + j),
    channel ``c`` (PyTorch's channel-major order, not maskjax's (row, col, channel) patchify order).
    """
    b, h, w, d = x.shape
    r = factor
    if d % (r * r):
        raise ValueError(f"pixel_shuffle: {d} channels are not divisible by factor^2 = {r * r}")
    c = d // (r * r)
    x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * r, w * r, c)


def _torch_conv_default(fan_in: int, axes: tuple):
    # PyTorch's Conv2d default (kaiming_uniform(a=sqrt(5)) for the weight, and the bias):
    # U(+-1/sqrt(fan_in)); SimMIM never re-initialises its decoder.
    bound = 1.0 / math.sqrt(fan_in)
    init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
    return nnx.with_metadata(init, logical_axes=axes)


class SimMIMModel(nnx.Module):
    """:class:`MaskTokenViT` + SimMIM's linear decoder: a 1x1 conv (``decoder``, width -> r*r*C) on
    the normed patch tokens, then ``PixelShuffle(r)`` with r = the patch size (``encoder_stride``).

    ``__call__(images, hidden, *, drop_key=None)`` returns ``(reconstruction [B, H, W, C] float32,
    encoder aux)``. Encoder options are passed through ``encoder_kwargs``.
    """

    def __init__(self, variant: str, *, image_size: int, in_chans: int = 3, rngs: nnx.Rngs, dtype: Any = None,
                 **encoder_kwargs: Any):
        self.encoder = MaskTokenViT(variant, image_size=image_size, in_chans=in_chans, rngs=rngs, dtype=dtype,
                                    **encoder_kwargs)
        self.encoder_stride = self.encoder.patch_size
        out = self.encoder_stride ** 2 * in_chans
        width = self.encoder.width
        self.decoder = Dense(width, out, use_bias=True, dtype=dtype, param_dtype=jnp.float32,
                             kernel_init=_torch_conv_default(width, ("embed", "patch")),
                             bias_init=_torch_conv_default(width, ("patch",)), rngs=rngs)

    @property
    def patch_size(self) -> int:
        """Patch size of the encoder (= the decoder's upsampling factor)."""
        return self.encoder.patch_size

    @property
    def num_patches(self) -> int:
        """Number of patch tokens L."""
        return self.encoder.num_patches

    def __call__(self, images: jax.Array, hidden: jax.Array | None, *,
                 drop_key: jax.Array | None = None) -> tuple[jax.Array, dict]:
        _, aux = self.encoder(images, hidden, drop_key=drop_key)
        g = self.encoder.grid
        z = self.decoder(aux["tokens"]).reshape(images.shape[0], g, g, -1)
        return pixel_shuffle(z, self.encoder_stride).astype(jnp.float32), aux


__all__ = [
    "ABS_POS", "RPB_MODES", "BIAS_IMPLS", "INITS", "BiasedAttention", "LayerScaleBlock", "MaskTokenViT", "RelativePositionBias",
    "SimMIMModel", "biased_attend", "cudnn_biased_attention", "num_relative_distances", "pixel_shuffle",
    "relative_position_index", "trunc_normal_init",
]
