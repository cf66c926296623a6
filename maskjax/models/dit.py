"""MDLM's diffusion transformer (kuleshov-group/mdlm ``models/dit.py``, "DDiT"), NNX.

Numerics follow the reference (specs/methods_text_gen.md 11e):

- untied input embedding ``[V + 1, D]`` (the mask id included), ``kaiming_uniform(a=sqrt(5))``,
  i.e. ``U(+-1/sqrt(D))``;
- conditioning ``c = SiLU(TimestepEmbedder(sigma))``: sinusoid of 256 channels ([cos | sin],
  max period 10^4) -> Linear(cond_dim) -> SiLU -> Linear(cond_dim). MDLM's default
  ``time_conditioning: False`` feeds sigma = 0, so ``c`` is a learned constant: the method
  decides what it passes, the network always has the path;
- blocks (``DDiTBlock``): LayerNorm with a weight and no bias (eps 1e-5, float32) modulated by
  the adaLN output ``Linear(cond_dim, 6 D)`` (zero-initialised: the block is the identity at
  init), bias-free qkv and output projections, rotary embeddings in the ``rotate_half`` layout
  (flash-attn's ``apply_rotary_emb_qkv_``), bidirectional attention, an MLP with biases and
  tanh-GELU (ratio 4), residual dropout ``x + gate * dropout(branch)``;
- final layer: modulated LayerNorm (adaLN ``2 D``, zero) and a Linear to V + 1 with weight and
  bias zero.

Linear layers keep PyTorch's default init, ``U(+-1/sqrt(fan_in))`` for weights and biases.
Dropout is per example (``dropout_keys`` [B]) and elementwise, as ``F.dropout``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models.backbone import Backbone
from maskjax.models.bert import as_keys, dropout as apply_dropout, keep_masks, split_keys
from maskjax.models.layers import Dense, attend
from maskjax.models.llama import apply_rope, modulate, rope_tables

DIT_LN_EPS = 1e-5
FREQUENCY_DIM = 256


def torch_uniform(fan_in: int):
    """PyTorch's default Linear / ``kaiming_uniform(a=sqrt(5))`` init: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(in_f: int, out_f: int, axes, *, rngs: nnx.Rngs, dtype: Any = None, use_bias: bool = True,
           zero: bool = False) -> Dense:
    """A :class:`~maskjax.models.layers.Dense` with PyTorch's Linear init (``zero``: weight and bias 0)."""
    init = nnx.initializers.zeros if zero else torch_uniform(in_f)
    return Dense(in_f, out_f, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=nnx.with_metadata(init, logical_axes=tuple(axes)),
                 bias_init=nnx.with_metadata(init, logical_axes=(axes[-1],)), rngs=rngs)


def dit_timestep_embedding(t: jax.Array, dim: int = FREQUENCY_DIM, max_period: float = 10_000.0) -> jax.Array:
    """MDLM/DiT ``TimestepEmbedder.timestep_embedding``: [cos | sin] of ``t * max_period^(-i / (dim/2))``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class WeightLayerNorm(nnx.Module):
    """MDLM's ``LayerNorm``: ``F.layer_norm`` without affine parameters in float32, times a weight (ones)."""

    def __init__(self, dim: int, eps: float = DIT_LN_EPS):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        return ((x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...]).astype(x.dtype)


class TimestepEmbedder(nnx.Module):
    """sinusoid(256) -> Linear(cond_dim) -> SiLU -> Linear(cond_dim)."""

    def __init__(self, cond_dim: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.fc1 = linear(FREQUENCY_DIM, cond_dim, (None, None), rngs=rngs, dtype=dtype)
        self.fc2 = linear(cond_dim, cond_dim, (None, None), rngs=rngs, dtype=dtype)

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.silu(self.fc1(dit_timestep_embedding(t))))


class DDiTBlock(nnx.Module):
    """MDLM's adaLN-zero transformer block; ``__call__(x, cos, sin, c, key=None)`` (``c`` [B, cond_dim])."""

    def __init__(self, dim: int, heads: int, cond_dim: int, *, rngs: nnx.Rngs, mlp_ratio: int = 4,
                 dropout: float = 0.1, dtype: Any = None, attention_impl: str | None = None):
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.dropout, self.attention_impl = heads, dropout, attention_impl
        self.norm1 = WeightLayerNorm(dim)
        self.attn_qkv = linear(dim, 3 * dim, ("embed", "heads"), rngs=rngs, dtype=dtype, use_bias=False)
        self.attn_out = linear(dim, dim, ("heads", "embed"), rngs=rngs, dtype=dtype, use_bias=False)
        self.norm2 = WeightLayerNorm(dim)
        self.mlp_in = linear(dim, mlp_ratio * dim, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.mlp_out = linear(mlp_ratio * dim, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.ada = linear(cond_dim, 6 * dim, (None, "embed"), rngs=rngs, dtype=dtype, zero=True)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, c: jax.Array,
                 key: jax.Array | None = None) -> jax.Array:
        b, l, d = x.shape
        keep_a, keep_m = keep_masks(key, (self.dropout, self.dropout), ((l, d), (l, d)))
        mod = self.ada(c)[:, None, :].astype(x.dtype)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
        qkv = self.attn_qkv(modulate(self.norm1(x), shift_a, scale_a)).reshape(b, l, 3, self.heads, d // self.heads)
        q = apply_rope(qkv[:, :, 0], cos, sin, interleaved=False)
        k = apply_rope(qkv[:, :, 1], cos, sin, interleaved=False)
        a = attend(q, k, qkv[:, :, 2], self.attention_impl).reshape(b, l, d)
        x = x + gate_a * apply_dropout(self.attn_out(a), keep_a, self.dropout)
        h = self.mlp_in(modulate(self.norm2(x), shift_m, scale_m))
        h = self.mlp_out(jax.nn.gelu(h, approximate=True))
        return x + gate_m * apply_dropout(h, keep_m, self.dropout)


class DiT(Backbone):
    """MDLM's DDiT: ids [B, L] (mask id included) and sigma [B] -> logits [B, L, vocab] (float32).

    ``vocab`` counts the mask id (MDLM's ``vocab_size + 1``). MDLM small: width 768, depth 12,
    12 heads, cond_dim 128, dropout 0.1; tiny: 512 / 8 / 8.
    """

    def __init__(self, vocab: int, *, rngs: nnx.Rngs, width: int = 768, depth: int = 12, heads: int = 12,
                 cond_dim: int = 128, mlp_ratio: int = 4, dropout: float = 0.1, dtype: Any = None,
                 attention_impl: str | None = None, remat: bool | str = False, scan_layers: bool = False):
        self.width, self.heads, self.depth, self.dtype = width, heads, depth, dtype
        emb = torch_uniform(width)(rngs.params(), (vocab, width))  # kaiming_uniform on [V, D]: fan_in = D
        self.vocab_embed = nnx.Param(emb, logical_axes=("vocab", "embed"))
        self.sigma_map = TimestepEmbedder(cond_dim, rngs=rngs, dtype=dtype)
        make = lambda r, i, rate: DDiTBlock(width, heads, cond_dim, rngs=r, mlp_ratio=mlp_ratio, dropout=dropout,
                                            dtype=dtype, attention_impl=attention_impl)
        super().__init__(width, depth, heads, rngs=rngs, dtype=dtype, attention_impl=attention_impl, remat=remat,
                         scan_layers=scan_layers, final_norm=False, names=("blocks", None), make_block=make)
        self.out_norm = WeightLayerNorm(width)
        self.out_ada = linear(cond_dim, 2 * width, (None, "embed"), rngs=rngs, dtype=dtype, zero=True)
        self.out_linear = linear(width, vocab, ("embed", "vocab"), rngs=rngs, dtype=dtype, zero=True)

    def hidden(self, ids: jax.Array, sigma: jax.Array, *,
               dropout_keys: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``(h, c)``: the blocks' output [B, L, width] and the conditioning vector [B, cond_dim]."""
        x = jnp.take(self.vocab_embed[...], ids, axis=0)
        x = x.astype(self.dtype) if self.dtype is not None else x
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (ids.shape[0],))
        c = jax.nn.silu(self.sigma_map(sigma))
        cos, sin = rope_tables(ids.shape[1], self.width // self.heads)
        per_layer = split_keys(as_keys(dropout_keys), self.depth)
        keys = None if per_layer is None else [per_layer[:, i] for i in range(self.depth)]
        return self.run_blocks(x, args=(cos, sin, c), keys=keys), c

    def logits(self, h: jax.Array, c: jax.Array) -> jax.Array:
        """``DDitFinalLayer``: modulated LayerNorm and the zero-initialised Linear, float32."""
        shift, scale = jnp.split(self.out_ada(c), 2, axis=-1)
        return self.out_linear(modulate(self.out_norm(h), shift, scale)).astype(jnp.float32)

    def __call__(self, ids: jax.Array, sigma: jax.Array, *, dropout_keys: jax.Array | None = None) -> jax.Array:
        h, c = self.hidden(ids, sigma, dropout_keys=dropout_keys)
        return self.logits(h, c)
