"""MD4's LLaMA-style transformer (google-deepmind/md4 ``networks/transformer.py`` + the text
classifier of ``models/backward.py``), NNX, and the same stack with a causal mask for the
autoregressive character baseline.

Numerics follow the reference (specs/methods_text_gen.md 12e):

- blocks ``h = x + attn(norm(x))``, ``out = h + ffn(norm(h))``; the norm is **RMSNorm** (eps
  1e-5, learned scale) without conditioning. With a conditioning vector (MD4's time embedding,
  ``cond_type`` "adaln_zero" / "adaln") the norms are parameter-free LayerNorms modulated by
  ``act(cond) @ W`` (6 x width: shift, scale, gate of attention and MLP; W zero-initialised for
  adaln_zero, so every block starts as the identity), ``act`` being the MLP's activation;
- attention: bias-free q/k/v/o projections, **RoPE** on q and k in the interleaved (complex
  pair) layout of llama2.c, bidirectional (diffusion) or causal (``causal=True``);
- MLP: bias-free ``w2(act(w1 x) * w3 x)`` (GLU family: ``swiglu`` SiLU, ``geglu`` tanh-GELU,
  ``glu`` sigmoid), hidden ``multiple_of * ceil(int(8 width / 3) / multiple_of)``;
  ``depth_scaled_init`` draws its weights from ``variance_scaling(2 / depth, fan_in, truncated_normal)``;
- input: ``outside_embed`` embeds the V + 1 ids (the mask id included) in ``feature_dim`` and
  projects them to the width with a biased Dense (MD4's text8 setting); otherwise the embedding
  has the full width; output: RMSNorm (or modulated LayerNorm) then a zero-initialised bias-free
  Dense to the V data symbols, so the initial prediction is uniform;
- time conditioning: sinusoidal embedding (sin then cos) of ``1000 t`` in ``feature_dim``,
  Dense(4 feature_dim) -> SiLU -> Dense(feature_dim) (``CondEmbedding``).

Flax defaults are kept where the reference uses them: LeCun-normal Dense kernels with zero
biases, embeddings ``N(0, 1 / dim)``. Dropout is per example (``dropout_keys`` [B]), on the
residual branches as MD4's ``Dropout1d``: one mask per example and channel, shared by all
positions. MD4's dropout on the attention probabilities is not implemented (its default rate is 0).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models.attention import scale_queries
from maskjax.models.backbone import Backbone
from maskjax.models.bert import dropout as apply_dropout, keep_masks, split_keys
from maskjax.models.layers import attend, dense
from maskjax.models.remat import maybe_remat_core

MLP_TYPES = ("swiglu", "geglu", "glu")
COND_TYPES = ("adaln_zero", "adaln")
NORM_EPS = 1e-5
ROPE_THETA = 10000.0
TIME_SCALE = 1000.0   # MD4 embeds t * 1000


def mlp_activation(kind: str):
    """The GLU family's gate activation (MD4's ``activation_map``): SiLU, tanh-GELU (flax's default) or sigmoid."""
    if kind == "swiglu":
        return jax.nn.silu
    if kind == "geglu":
        return lambda x: jax.nn.gelu(x, approximate=True)
    if kind == "glu":
        return jax.nn.sigmoid
    raise ValueError(f"unknown mlp_type {kind!r}; use one of {MLP_TYPES}")


def mlp_hidden(width: int, multiple_of: int = 32, hidden: int | None = None) -> int:
    """llama2.c's FFN width: ``int(2 * 4 width / 3)`` rounded up to ``multiple_of`` (unless given)."""
    if hidden:
        return int(hidden)
    h = int(2 * 4 * width / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def rms_norm(x: jax.Array, scale: jax.Array | None, eps: float = NORM_EPS) -> jax.Array:
    """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis, computed in float32."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    return y.astype(x.dtype)


def plain_layer_norm(x: jax.Array, eps: float = NORM_EPS) -> jax.Array:
    """LayerNorm without scale or bias (flax ``LayerNorm(use_bias=False, use_scale=False)``), in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: ``x * (1 + scale) + shift`` with per-example ``shift``/``scale`` [B, 1, D] (or [B, D])."""
    if shift.ndim == x.ndim - 1:
        shift, scale = shift[:, None], scale[:, None]
    return x * (1.0 + scale.astype(x.dtype)) + shift.astype(x.dtype)


def rope_tables(length: int, head_dim: int, theta: float = ROPE_THETA) -> tuple[jax.Array, jax.Array]:
    """``(cos, sin)`` [length, head_dim / 2] of the angles ``p / theta^(2i / head_dim)`` (float32)."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, *, interleaved: bool = True) -> jax.Array:
    """Rotates [B, L, H, D] queries or keys by position.

    ``interleaved`` (llama2.c / MD4): channel pairs ``(2i, 2i+1)`` are rotated by angle i;
    otherwise (GPT-NeoX / flash-attn ``rotate_half``, MDLM's DiT) the pairs are ``(i, i + D/2)``.
    Rotation in float32, result in ``x``'s dtype.
    """
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    x32 = x.astype(jnp.float32)
    if interleaved:
        pairs = x32.reshape(x.shape[:-1] + (-1, 2))
        re, im = pairs[..., 0], pairs[..., 1]
        out = jnp.stack([re * c - im * s, re * s + im * c], axis=-1).reshape(x.shape)
    else:
        half = x.shape[-1] // 2
        x1, x2 = x32[..., :half], x32[..., half:]
        out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    return out.astype(x.dtype)


def attention_core(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, impl: str | None) -> jax.Array:
    """Softmax attention on [B, L, H, D]: :func:`maskjax.models.layers.attend` (any core) when
    bidirectional; with a causal mask, ``jax.nn.dot_product_attention(is_causal=True)`` ("xla" or
    "cudnn"; the blockwise cores take no mask)."""
    if not causal:
        return attend(q, k, v, impl)
    if impl not in (None, "xla", "cudnn"):
        raise ValueError(f"causal attention supports attention_impl None, 'xla' or 'cudnn', got {impl!r}")
    core = lambda q, k, v: jax.nn.dot_product_attention(scale_queries(q), k, v, scale=1.0, is_causal=True,
                                                        implementation=impl)
    return maybe_remat_core(core)(q, k, v)


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """MD4's ``get_timestep_embedding``: [sin | cos] of ``t * 10000^(-i / (dim/2 - 1))`` (float32 [B, dim])."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10_000) / (half - 1)))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _ffn_init(scale: float):
    return nnx.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class RMSNorm(nnx.Module):
    """RMSNorm with a learned scale (ones)."""

    def __init__(self, dim: int, eps: float = NORM_EPS):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], self.eps)


class LlamaBlock(nnx.Module):
    """One MD4 transformer block: RMSNorm blocks, or adaLN-modulated ones when ``cond_dim`` is set.

    ``__call__(x, cos, sin, cond, key=None)``: ``cos``/``sin`` rotary tables, ``cond`` [B, cond_dim]
    or None, ``key`` per-example dropout keys [B] (None: no dropout).
    """

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, mlp_type: str = "swiglu", hidden: int,
                 ffn_init_scale: float = 1.0, cond_dim: int | None = None, cond_type: str = "adaln_zero",
                 causal: bool = False, dropout: float = 0.0, norm_eps: float = NORM_EPS, dtype: Any = None,
                 attention_impl: str | None = None):
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        if cond_type not in COND_TYPES:
            raise ValueError(f"unknown cond_type {cond_type!r}; use one of {COND_TYPES}")
        mlp_activation(mlp_type)
        self.heads, self.mlp_type, self.causal = heads, mlp_type, causal
        self.dropout, self.norm_eps, self.attention_impl = dropout, norm_eps, attention_impl
        proj = lambda i, o, axes: dense(i, o, axes, rngs=rngs, dtype=dtype, use_bias=False,
                                        kernel_init=nnx.initializers.lecun_normal())
        self.wq = proj(width, width, ("embed", "heads"))
        self.wk = proj(width, width, ("embed", "heads"))
        self.wv = proj(width, width, ("embed", "heads"))
        self.wo = proj(width, width, ("heads", "embed"))
        ffn = lambda i, o, axes: dense(i, o, axes, rngs=rngs, dtype=dtype, use_bias=False,
                                       kernel_init=_ffn_init(ffn_init_scale))
        self.w1 = ffn(width, hidden, ("embed", "mlp"))
        self.w3 = ffn(width, hidden, ("embed", "mlp"))
        self.w2 = ffn(hidden, width, ("mlp", "embed"))
        if cond_dim:
            init = nnx.initializers.zeros if cond_type == "adaln_zero" else nnx.initializers.lecun_normal()
            self.ada = dense(cond_dim, 6 * width, (None, "embed"), rngs=rngs, dtype=dtype, kernel_init=init)
            self.attention_norm = self.ffn_norm = None
        else:
            self.ada = None
            self.attention_norm, self.ffn_norm = RMSNorm(width, norm_eps), RMSNorm(width, norm_eps)

    def attention(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """Bias-free multi-head attention with interleaved RoPE on q and k."""
        b, l, d = x.shape
        split = lambda t: t.reshape(b, l, self.heads, d // self.heads)
        q = apply_rope(split(self.wq(x)), cos, sin, interleaved=True)
        k = apply_rope(split(self.wk(x)), cos, sin, interleaved=True)
        out = attention_core(q, k, split(self.wv(x)), causal=self.causal, impl=self.attention_impl)
        return self.wo(out.reshape(b, l, d))

    def feed_forward(self, x: jax.Array) -> jax.Array:
        """``w2(act(w1 x) * w3 x)``."""
        return self.w2(mlp_activation(self.mlp_type)(self.w1(x)) * self.w3(x))

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, cond: jax.Array | None,
                 key: jax.Array | None = None) -> jax.Array:
        keep_a, keep_f = keep_masks(key, (self.dropout, self.dropout), ((1, x.shape[-1]), (1, x.shape[-1])))
        drop = lambda y, keep: apply_dropout(y, keep, self.dropout)
        if self.ada is None:
            h = x + drop(self.attention(self.attention_norm(x), cos, sin), keep_a)
            return h + drop(self.feed_forward(self.ffn_norm(h)), keep_f)
        if cond is None:
            raise ValueError("this block was built with adaLN conditioning: pass cond")
        mod = self.ada(mlp_activation(self.mlp_type)(cond))[:, None, :]
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = jnp.split(mod.astype(x.dtype), 6, axis=-1)
        norm = lambda y: plain_layer_norm(y, self.norm_eps)
        h = x + gate_a * drop(self.attention(modulate(norm(x), shift_a, scale_a), cos, sin), keep_a)
        return h + gate_f * drop(self.feed_forward(modulate(norm(h), shift_f, scale_f)), keep_f)


class CondEmbedding(nnx.Module):
    """MD4's time embedding: sinusoid(``dim``) -> Dense(4 dim) -> SiLU -> Dense(dim)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.dim = dim
        init = nnx.initializers.lecun_normal()
        self.dense0 = dense(dim, 4 * dim, (None, "mlp"), rngs=rngs, dtype=dtype, kernel_init=init)
        self.dense1 = dense(4 * dim, dim, ("mlp", None), rngs=rngs, dtype=dtype, kernel_init=init)

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.dense1(jax.nn.silu(self.dense0(timestep_embedding(t, self.dim))))


class LlamaTransformer(Backbone):
    """MD4's text classifier / the causal character LM: ids [B, L] -> logits [B, L, vocab_out] (float32).

    Args:
      vocab_in: input ids (V + 1 with the diffusion mask or an AR start token); vocab_out: V.
      feature_dim, heads: width = ``feature_dim * heads`` (MD4-S: 64 x 12 = 768); ``feature_dim`` is
        also the size of the outside embedding and of the time embedding.
      depth, mlp_type, multiple_of, hidden, depth_scaled_init, norm_eps: the blocks (module docstring).
      time_conditioning: build the time embedding and adaLN blocks (``cond_type``); else RMSNorm blocks.
      causal: causal attention (the autoregressive baseline).
      outside_embed: embed in ``feature_dim`` then project (MD4 text8); else embed at full width.
      dropout: residual dropout rate (and on the embeddings when not ``outside_embed``, as MD4).
      dtype, attention_impl, remat, scan_layers: as :class:`~maskjax.models.backbone.Backbone`.
    """

    def __init__(self, vocab_in: int, vocab_out: int, *, rngs: nnx.Rngs, feature_dim: int = 64, heads: int = 12,
                 depth: int = 12, mlp_type: str = "swiglu", multiple_of: int = 32, hidden: int | None = None,
                 depth_scaled_init: bool = False, time_conditioning: bool = True, cond_type: str = "adaln_zero",
                 causal: bool = False, outside_embed: bool = True, dropout: float = 0.0,
                 norm_eps: float = NORM_EPS, dtype: Any = None, attention_impl: str | None = None,
                 remat: bool | str = False, scan_layers: bool = False):
        width = feature_dim * heads
        self.width, self.heads, self.depth, self.dtype = width, heads, depth, dtype
        self.feature_dim, self.dropout, self.outside_embed = feature_dim, dropout, outside_embed
        emb_init = nnx.with_metadata(nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0),
                                     logical_axes=("vocab", "embed"))
        self.embed = nnx.Embed(vocab_in, feature_dim if outside_embed else width, param_dtype=jnp.float32,
                               embedding_init=emb_init, rngs=rngs)
        self.embed_proj = (dense(feature_dim, width, (None, "embed"), rngs=rngs, dtype=dtype,
                                 kernel_init=nnx.initializers.lecun_normal()) if outside_embed else None)
        self.cond_embed = CondEmbedding(feature_dim, rngs=rngs, dtype=dtype) if time_conditioning else None
        cond_dim = feature_dim if time_conditioning else None
        hid = mlp_hidden(width, multiple_of, hidden)
        scale = 2.0 / depth if depth_scaled_init else 1.0
        make = lambda r, i, rate: LlamaBlock(width, heads, rngs=r, mlp_type=mlp_type, hidden=hid, ffn_init_scale=scale,
                                             cond_dim=cond_dim, cond_type=cond_type, causal=causal, dropout=dropout,
                                             norm_eps=norm_eps, dtype=dtype, attention_impl=attention_impl)
        super().__init__(width, depth, heads, rngs=rngs, dtype=dtype, attention_impl=attention_impl, remat=remat,
                         scan_layers=scan_layers, final_norm=False, names=("blocks", None), make_block=make)
        self.mlp_type, self.norm_eps = mlp_type, norm_eps
        if time_conditioning:
            init = nnx.initializers.zeros if cond_type == "adaln_zero" else nnx.initializers.lecun_normal()
            self.out_ada = dense(cond_dim, 2 * width, (None, "embed"), rngs=rngs, dtype=dtype, kernel_init=init)
            self.out_norm = None
        else:
            self.out_ada, self.out_norm = None, RMSNorm(width, norm_eps)
        self.head = dense(width, vocab_out, ("embed", "vocab"), rngs=rngs, dtype=dtype, use_bias=False,
                          kernel_init=nnx.initializers.zeros)

    def hidden(self, ids: jax.Array, t: jax.Array | None = None, *,
               dropout_keys: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        """``(h, cond)``: the blocks' output [B, L, width] (before the output norm) and the time embedding."""
        from maskjax.models.bert import as_keys

        keys = as_keys(dropout_keys)
        x = jnp.take(self.embed.embedding[...], ids, axis=0)
        x = x.astype(self.dtype) if self.dtype is not None else x
        pair = split_keys(keys, 2)   # per example: one key for the embedding dropout, one for the blocks
        emb_keys, layer_keys = (None, None) if pair is None else (pair[:, 0], pair[:, 1])
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        elif self.dropout:
            (keep,) = keep_masks(emb_keys, (self.dropout,), (x.shape[1:],))
            x = apply_dropout(x, keep, self.dropout)
        cond = None
        if self.cond_embed is not None:
            if t is None:
                raise ValueError("this model is time-conditioned: pass t")
            cond = self.cond_embed(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (ids.shape[0],)) * TIME_SCALE)
        cos, sin = rope_tables(ids.shape[1], self.width // self.heads)
        per_layer = split_keys(layer_keys, self.depth)
        block_keys = None if per_layer is None else [per_layer[:, i] for i in range(self.depth)]
        return self.run_blocks(x, args=(cos, sin, cond), keys=block_keys), cond

    def logits(self, h: jax.Array, cond: jax.Array | None) -> jax.Array:
        """Output norm (RMSNorm, or adaLN-modulated LayerNorm) and the zero-initialised head, float32."""
        if self.out_ada is None:
            h = self.out_norm(h)
        else:
            shift, scale = jnp.split(self.out_ada(mlp_activation(self.mlp_type)(cond)), 2, axis=-1)
            h = modulate(plain_layer_norm(h, self.norm_eps), shift, scale)
        return self.head(h).astype(jnp.float32)

    def __call__(self, ids: jax.Array, t: jax.Array | None = None, *,
                 dropout_keys: jax.Array | None = None) -> jax.Array:
        h, cond = self.hidden(ids, t, dropout_keys=dropout_keys)
        return self.logits(h, cond)
