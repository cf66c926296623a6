"""The one transformer stack of every model: blocks + optional final LayerNorm (:class:`Backbone`).

Every encoder and decoder in maskjax runs its blocks through :class:`Backbone`, which owns what
used to be rebuilt per model: the block type (MAE's pre-LN :class:`~maskjax.models.layers.Block` by
default, BERT's post-LN layer or AudioMAE's swin blocks through ``make_block``), the linearly
increasing drop-path rates, the remat policy (:mod:`maskjax.models.remat`), ``scan_layers``
(:mod:`maskjax.models.scan`), the attention implementation and compute dtype of the blocks (the
blocks' parameters carry their logical sharding axes, :mod:`maskjax.models.layers`).

Parameter paths. The stack's attributes live on the module that *is* the backbone, under names it
chooses (``names``): encoders subclass :class:`Backbone` and keep ``blocks`` / ``norm``; the
MAE-family models are the backbone of their decoder and keep the official top-level
``decoder_blocks`` / ``decoder_norm``; BERT's stack keeps ``layers``. A child module holding the
stack would add a path component and break every checkpoint and converter.

:class:`Encoder` adds the embedding step shared by the ViT-family encoders (patch tokens + position
embedding, optional masking, optional cls token), so ViT, AudioMAE, VideoMAE and MAE-ST encoders
differ only in their embedding modules and in what they report in ``aux``.

Block contract: ``block(x, *args, key)``: ``args`` (e.g. BERT's padding mask) are the same for every
block; ``key`` is the block's drop-path / dropout key (a PRNG key, per-example keys [B], or None).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.masking import Mask, gather_tokens
from maskjax.models.layers import LN_EPS, Block, layer_norm
from maskjax.models.remat import block_keys, remat_block, resolve_remat
from maskjax.models.scan import scan_blocks, stacked_blocks

ENCODER_NAMES = ("blocks", "norm")
DECODER_NAMES = ("decoder_blocks", "decoder_norm")

# make_block(rngs, index, drop_path) -> block; index is the block's position (0 for scanned stacks).
BlockFactory = Callable[[nnx.Rngs, int, float], nnx.Module]


def drop_path_rates(drop_path: float, depth: int) -> list[float]:
    """Stochastic-depth rate of each block: linear from 0 to ``drop_path`` over depth (timm)."""
    return [drop_path * i / max(depth - 1, 1) for i in range(depth)]


def pre_ln_block(width: int, heads: int, mlp_ratio: float = 4.0, *, dtype: Any = None,
                 attention_impl: str | None = None, qkv_bias: str = "qkv") -> BlockFactory:
    """Factory of MAE/timm pre-LN blocks (``qkv_bias="qv"``: BEiT/VideoMAE attention biases)."""
    def make(rngs: nnx.Rngs, index: int, drop_path: float) -> nnx.Module:
        del index  # identical blocks: the factory must not depend on the position (scan_layers)
        return Block(width, heads, mlp_ratio, rngs=rngs, dtype=dtype, drop_path=drop_path,
                     attention_impl=attention_impl, qkv_bias=qkv_bias)
    return make


def stack_depth(blocks: nnx.Module) -> int:
    """Number of blocks of a block list or of a scanned stack (the leading "layers" axis)."""
    if isinstance(blocks, nnx.List):
        return len(blocks)
    return jax.tree.leaves(nnx.state(blocks))[0].shape[0]


def apply_blocks(blocks: nnx.Module, x: jax.Array, remat: str = "none", keys: Sequence | None = None,
                 *args: Any) -> jax.Array:
    """``x = block_i(x, *args[, keys[i]])`` for each block, under the remat policy ``remat``.

    The one block loop of maskjax: a list of blocks is unrolled (each block compiled separately);
    a stack built by :func:`maskjax.models.scan.stacked_blocks` runs one block body in ``nnx.scan``.
    ``keys``: one per block, or None (deterministic).
    """
    if not isinstance(blocks, nnx.List):
        keys = None if keys is None or any(k is None for k in keys) else jnp.stack(list(keys))
        return scan_blocks(blocks, x, remat, keys, *args)
    if keys is None:
        call = remat_block(remat, lambda blk, y: blk(y, *args))
        for block in blocks:
            x = call(block, x)
        return x
    call = remat_block(remat, lambda blk, y, k: blk(y, *args, k))
    for block, k in zip(blocks, keys, strict=True):
        x = call(block, x, k)
    return x


class Backbone(nnx.Module):
    """A stack of ``depth`` transformer blocks and an optional final LayerNorm.

    Args:
      width, depth, heads, mlp_ratio: the blocks' shape (``width`` also sizes the final norm).
      dtype: compute dtype of the blocks and the norm (parameters stay float32).
      attention_impl: the blocks' attention core (:func:`maskjax.models.layers.attend`).
      qkv_bias: "qkv" (timm) or "qv" (BEiT/VideoMAE) for the default pre-LN blocks.
      drop_path: maximum stochastic-depth rate, linear over the blocks (:func:`drop_path_rates`).
      remat: a remat policy (``config.remat``: bool or a name of :data:`maskjax.models.remat.REMAT_POLICIES`).
      scan_layers: build the blocks stacked along a leading "layers" axis and run them with
        ``nnx.scan`` (needs identical blocks, hence ``drop_path`` 0).
      final_norm: add the final LayerNorm (eps ``norm_eps``).
      names: attribute names of the block stack and of the final norm (see the module docstring).
      make_block: block factory ``(rngs, index, drop_path) -> block`` replacing the pre-LN blocks.
    """

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0, *, rngs: nnx.Rngs,
                 dtype: Any = None, attention_impl: str | None = None, qkv_bias: str = "qkv",
                 drop_path: float = 0.0, remat: bool | str = False, scan_layers: bool = False,
                 final_norm: bool = True, names: tuple[str, str | None] = ENCODER_NAMES,
                 make_block: BlockFactory | None = None, norm_eps: float = LN_EPS):
        self.remat = resolve_remat(remat)  # a policy name of maskjax.models.remat
        self.scan_layers = scan_layers
        self.stack_names = (names[0], names[1] if final_norm else None)
        if make_block is None:
            make_block = pre_ln_block(width, heads, mlp_ratio, dtype=dtype, attention_impl=attention_impl,
                                      qkv_bias=qkv_bias)
        if scan_layers:
            # One stacked block applied with nnx.scan: the blocks must be identical.
            if drop_path:
                raise ValueError("scan_layers needs drop_path 0 (the rate differs per block); unset "
                                 "model.scan_layers for fine-tuning with stochastic depth")
            blocks = stacked_blocks(lambda r: make_block(r, 0, 0.0), depth, rngs)
        else:
            blocks = nnx.List([make_block(rngs, i, rate)
                               for i, rate in enumerate(drop_path_rates(drop_path, depth))])
        setattr(self, names[0], blocks)
        if final_norm:
            setattr(self, names[1], layer_norm(width, rngs=rngs, dtype=dtype, eps=norm_eps))

    @property
    def stack_blocks(self) -> nnx.Module:
        """The block stack (an ``nnx.List``, or one stacked block under ``scan_layers``)."""
        return getattr(self, self.stack_names[0])

    def run_blocks(self, x: jax.Array, key: jax.Array | None = None, *, args: tuple = (),
                   keys: Sequence | None = None) -> jax.Array:
        """Applies the blocks under the remat policy.

        ``key``: one PRNG key split into one drop-path key per block; ``keys``: explicit per-block
        keys instead (e.g. per-example dropout keys [B] for each block); ``args``: extra inputs
        passed to every block after ``x`` (e.g. BERT's padding mask).
        """
        if keys is None and key is not None:
            keys = block_keys(key, stack_depth(self.stack_blocks))
        return apply_blocks(self.stack_blocks, x, self.remat, keys, *args)

    def block_args(self) -> tuple:
        """Extra inputs that every block takes after ``x`` in a plain forward (none by default; e.g.
        a shared attention bias)."""
        return ()

    def final_norm(self, x: jax.Array) -> jax.Array:
        """The final LayerNorm; identity without one (or once a fine-tuning head has removed it)."""
        name = self.stack_names[1]
        norm = getattr(self, name, None) if name else None
        return x if norm is None else norm(x)

    def run_stack(self, x: jax.Array, key: jax.Array | None = None, *, args: tuple = (),
                  keys: Sequence | None = None) -> jax.Array:
        """:meth:`run_blocks` then :meth:`final_norm`."""
        return self.final_norm(self.run_blocks(x, key, args=args, keys=keys))


class Encoder(Backbone):
    """A :class:`Backbone` behind a pluggable token embedding (the ViT-family encoders).

    Subclasses build their embedding modules, then call ``Backbone.__init__``, and define
    :meth:`patch_tokens`, :meth:`patch_positions` and (with a cls token) :meth:`cls_embedding`.
    ``pooled_from`` says what ``aux["pooled"]`` averages: the patch tokens after the blocks
    ("blocks", before the final norm), after the norm ("norm"), or nothing (None).

    ``__call__(inputs, mask=None, *, drop_key=None)`` returns ``(tokens, aux)``: tokens after the
    final norm (cls first when there is one, then the visible tokens in ``mask.ids_keep`` order, or
    all tokens); ``aux`` has ``tokens`` (patch tokens), ``cls`` (with a cls token) and ``pooled``.
    """

    pooled_from: str | None = None

    def patch_tokens(self, inputs: jax.Array) -> jax.Array:
        """Token embeddings [B, L, D] of the input (input checks included)."""
        raise NotImplementedError

    def patch_positions(self, dtype: Any) -> jax.Array:
        """Position embeddings [1, L, D] of the patch tokens, in ``dtype``."""
        raise NotImplementedError

    def cls_embedding(self, dtype: Any) -> jax.Array | None:
        """The cls token plus its position embedding [1, 1, D] in ``dtype``; None without a cls token."""
        return None

    @property
    def num_prefix_tokens(self) -> int:
        """1 with a cls token, else 0."""
        return 0

    def embed(self, inputs: jax.Array, mask: Mask | None = None) -> jax.Array:
        """Patch tokens + positions, the visible ones (``mask``), cls prepended: the blocks' input."""
        x = self.patch_tokens(inputs)
        # Positions are added before masking; gather(x + pos) equals the official gather(x) + gather(pos).
        x = x + self.patch_positions(x.dtype)
        if mask is not None:
            x = gather_tokens(x, mask.ids_keep)
        cls = self.cls_embedding(x.dtype)
        if cls is not None:
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)
        return x

    def __call__(self, inputs: jax.Array, mask: Mask | None = None, *,
                 drop_key: jax.Array | None = None) -> tuple[jax.Array, dict]:
        h = self.run_blocks(self.embed(inputs, mask), drop_key)
        x = self.final_norm(h)
        start = self.num_prefix_tokens
        aux = {"tokens": x[:, start:]}
        if start:
            aux["cls"] = x[:, 0]
        if self.pooled_from is not None:
            aux["pooled"] = (h if self.pooled_from == "blocks" else x)[:, start:].mean(axis=1)
        return x, aux
