"""Transformer building blocks shared by the ViT-family models (NNX).

Initialisation and numerics follow facebookresearch/mae (specs/methods_vision.md sections 0.1 and
0.4): xavier-uniform linear weights with zero bias, LayerNorm eps 1e-6, pre-LN blocks with one
biased qkv projection, exact (erf) GELU as ``torch.nn.GELU``. Every parameter carries logical axis
names in its ``logical_axes`` metadata; ``maskjax.core.sharding`` maps them onto the mesh.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.models import attention, linear, remat

LN_EPS = 1e-6
Axes = Sequence[str | None]


class Buffer(nnx.Variable):
    """A fixed, non-trainable array (e.g. sin-cos position embeddings): saved, never optimised."""


def _init_with_axes(init: Any, axes: Axes):
    return nnx.with_metadata(init, logical_axes=tuple(axes))


class Dense(nnx.Linear):
    """``nnx.Linear`` that multiplies [..., in] inputs as one [N, in] matrix (same parameters).

    Why (docs/performance.md, "CPU vs PyTorch"): for a [B, T, in] input the kernel gradient
    contracts two axes, which XLA:CPU lowers through a transposed copy of the cotangent; the 2-D
    form avoids it, and on the CPU backend the matmul's backward pass is laid out for XLA:CPU's
    fast GEMM path (:func:`maskjax.models.linear.matmul_cpu`). The reshapes are free (bitcasts).
    """

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        x = inputs.reshape(-1, inputs.shape[-1]) if inputs.ndim > 2 else inputs
        if (x.ndim == 2 and out_sharding is None and self.precision is None
                and self.preferred_element_type is None and linear.use_cpu_matmul()):
            bias = self.bias[...] if self.bias is not None else None
            x, kernel, bias = self.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
            y = linear.matmul_cpu(x, kernel)
            y = y if bias is None else y + bias
        else:
            y = super().__call__(x, out_sharding)
        return y.reshape(inputs.shape[:-1] + (y.shape[-1],))

    def unbiased(self, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(inputs @ kernel, bias)`` in the compute dtype: the layer without its bias added."""
        x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], self.bias[...]), dtype=self.dtype)
        y = x.reshape(-1, x.shape[-1]) @ kernel
        return y.reshape(inputs.shape[:-1] + (y.shape[-1],)), bias


def dense_gelu(layer: Dense, x: jax.Array, *, split_backward: bool | None = None) -> jax.Array:
    """Exact GELU of a biased :class:`Dense` layer's output: ``gelu_erf(layer(x))``.

    ``split_backward`` (None: on GPUs, :func:`linear.use_split_gelu_backward`) computes it through
    :func:`linear.bias_gelu_erf`, whose backward pass XLA:GPU runs faster; the value is the same.
    """
    if split_backward is None:
        split_backward = linear.use_split_gelu_backward()
    if split_backward and layer.bias is not None:
        return linear.bias_gelu_erf(*layer.unbiased(x))
    return gelu_erf(layer(x))


def dense(
    in_features: int,
    out_features: int,
    axes: Axes,
    *,
    rngs: nnx.Rngs,
    dtype: Any = None,
    use_bias: bool = True,
    kernel_init: Any = None,
) -> nnx.Linear:
    """A :class:`Dense` layer with MAE's xavier-uniform/zero init and logical axis names ``(in, out)``."""
    kernel_init = kernel_init or nnx.initializers.xavier_uniform()
    return Dense(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_init_with_axes(kernel_init, axes),
        bias_init=_init_with_axes(nnx.initializers.zeros, (axes[-1],)),
        rngs=rngs,
    )


def layer_norm(dim: int, *, rngs: nnx.Rngs, dtype: Any = None, eps: float = LN_EPS) -> nnx.LayerNorm:
    """LayerNorm with weight 1, bias 0 and MAE's eps of 1e-6."""
    return nnx.LayerNorm(
        dim,
        epsilon=eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=_init_with_axes(nnx.initializers.ones, ("embed",)),
        bias_init=_init_with_axes(nnx.initializers.zeros, ("embed",)),
        rngs=rngs,
    )


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """1-D sin-cos embedding [P, dim]: the sin half then the cos half (not interleaved), float64."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dimension must be even, got {dim}")
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> np.ndarray:
    """MAE's 2-D sin-cos position embedding [(1+) grid_h*grid_w, dim] as float32.

    The first half of the channels encodes the column, the second half the row (the official
    ``np.meshgrid(w, h)`` order); tokens are row-major; the cls token gets a zero vector.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dimension must be a multiple of 4, got {dim}")
    cols, rows = np.meshgrid(np.arange(grid_w), np.arange(grid_h))  # 'xy' indexing, [H, W]
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)


# config.model.attention_impl values: None = jax.nn.dot_product_attention's own choice.
ATTENTION_IMPLS = ("xla", "cudnn", "blockwise", "bhtd")


# On the CPU backend, attention_impl=None picks "blockwise" from this many keys on. Whole train
# steps on two threads (docs/performance.md, "Attention chunk size and the CPU default"): faster
# than XLA's attention for the 197-token ViT-S/16 MAE decoder, slower by 4-7 % for the 65-token
# CIFAR decoder, whose float32 scores (8.6 MB per layer at batch 128) are small enough to
# materialise; XLA's attention was already as fast for the 17- and 50-token encoders. (It was 64
# until single-core measurements were replaced by two-thread ones: on one core the blockwise
# CIFAR decoder is 2-5 % faster.)
CPU_BLOCKWISE_MIN_KEYS = 128
# On NVIDIA GPUs, attention_impl=None picks cuDNN's fused kernel from this many keys on. 0: on an
# H100 cuDNN also beat XLA for the 50-token MAE ViT-L encoder (docs/performance.md, H100 row 8).
GPU_CUDNN_MIN_KEYS = 0


def default_attention_impl(num_keys: int, head_dim: int | None = None, dtype: Any = None) -> str | None:
    """What ``attention_impl=None`` means: "blockwise" on CPU for long sequences; "cudnn" on NVIDIA
    GPUs for bf16/fp16 inputs it supports (measured in docs/performance.md: XLA materialises the
    [B, H, T, T] scores, a large part of the MAE decoder's step); else JAX's own choice."""
    if jax.default_backend() == "cpu" and num_keys >= CPU_BLOCKWISE_MIN_KEYS:
        return "blockwise"
    if (num_keys >= GPU_CUDNN_MIN_KEYS and head_dim is not None and dtype is not None and on_cuda()
            and attention.cudnn_supports(dtype, head_dim)):
        return "cudnn"
    return None


@functools.cache
def on_cuda() -> bool:
    """True when the default backend is an NVIDIA GPU (cuDNN exists there, not on ROCm)."""
    if jax.default_backend() != "gpu":
        return False
    try:
        return "cuda" in jax.devices()[0].client.platform_version.lower()
    except (AttributeError, RuntimeError):
        return False


def attend(q: jax.Array, k: jax.Array, v: jax.Array, impl: str | None = None) -> jax.Array:
    """Scaled dot-product attention core on [B, T, H, Dh] inputs (no mask, no dropout).

    ``impl`` None picks :func:`default_attention_impl` (on CPU "blockwise" for 128 keys or more, on
    NVIDIA GPUs "cudnn" for bf16/fp16, otherwise ``jax.nn.dot_product_attention``'s own choice);
    "cudnn" forces the fused cuDNN kernel (odd lengths padded, :func:`attention.cudnn_attention`);
    "xla" the plain einsum lowering; "blockwise" the memory-efficient online-softmax attention with
    a recomputing backward, "bhtd" plain attention in the [B, H, T, D] layout (both in
    ``maskjax.models.attention``).
    """
    if impl is not None and impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention_impl {impl!r}; use None or one of {ATTENTION_IMPLS}")
    if impl is None:
        impl = default_attention_impl(k.shape[1], q.shape[-1], q.dtype)
    if impl == "blockwise":
        core = attention.blockwise_attention
    elif impl == "bhtd":
        core = attention.bhtd_attention
    elif impl == "cudnn":
        core = attention.cudnn_attention
    else:
        core = functools.partial(attention.prescaled_attention, implementation=impl)
    # Under the "attention" remat policy the core is recomputed in the backward pass (remat.py).
    return remat.maybe_remat_core(core)(q, k, v)


class Attention(nnx.Module):
    """Multi-head self-attention with one biased qkv projection (timm ``Attention``).

    The core is ``jax.nn.dot_product_attention``, which XLA lowers to the cuDNN fused kernel on
    GPUs (in bf16/fp16) and to plain einsums elsewhere.
    """

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype: Any = None,
                 attention_impl: str | None = None, qkv_bias: str = "qkv"):
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        if qkv_bias not in ("qkv", "qv"):
            raise ValueError(f"qkv_bias must be 'qkv' (timm) or 'qv' (BEiT/VideoMAE), got {qkv_bias!r}")
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.qkv = dense(dim, 3 * dim, ("embed", "heads"), rngs=rngs, dtype=dtype, use_bias=qkv_bias == "qkv")
        if qkv_bias == "qv":
            # BEiT-style: learnable q and v biases, the k bias fixed at zero (specs section 0.4).
            self.q_bias = nnx.Param(jnp.zeros((dim,)), logical_axes=("heads",))
            self.v_bias = nnx.Param(jnp.zeros((dim,)), logical_axes=("heads",))
        self.proj = dense(dim, dim, ("heads", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        qkv = self.qkv(x)
        if hasattr(self, "q_bias"):
            bias = jnp.concatenate([self.q_bias[...], jnp.zeros_like(self.q_bias[...]), self.v_bias[...]])
            qkv = qkv + bias.astype(qkv.dtype)
        qkv = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = attend(q, k, v, self.attention_impl)
        return self.proj(out.reshape(b, t, d))


class Mlp(nnx.Module):
    """Linear -> GELU (exact) -> Linear, hidden width ``mlp_ratio * dim``."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = dense(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(dense_gelu(self.fc1, x))


gelu_erf = linear.gelu_erf  # re-exported: the blocks' activation (defined beside its fused backward)


class Block(nnx.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``, optional drop path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, rngs: nnx.Rngs,
                 dtype: Any = None, drop_path: float = 0.0, attention_impl: str | None = None,
                 qkv_bias: str = "qkv"):
        self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.attn = Attention(dim, num_heads, rngs=rngs, dtype=dtype, attention_impl=attention_impl,
                              qkv_bias=qkv_bias)
        self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)
        self.drop_path = drop_path

    def _drop(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        # Stochastic depth per sample (timm DropPath); identity at inference or rate 0.
        if key is None or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * jax.random.bernoulli(key, keep, shape).astype(x.dtype) / keep

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        k1 = k2 = None
        if key is not None:
            k1, k2 = jax.random.split(key)
        x = x + self._drop(self.attn(self.norm1(x)), k1)
        return x + self._drop(self.mlp(self.norm2(x)), k2)


class PatchEmbed(nnx.Module):
    """Non-overlapping patch embedding as a Linear on patchified pixels.

    Equivalent to the official stride-p convolution. The kernel is [p*p*C, D] in (row, col,
    channel) order, xavier-uniform "like nn.Linear"; the bias keeps PyTorch's conv default
    uniform(+-1/sqrt(fan_in)) because MAE never resets it.
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.patch_size = patch_size
        fan_in = patch_size * patch_size * in_chans
        bound = 1.0 / math.sqrt(fan_in)
        self.proj = nnx.Linear(
            fan_in, dim, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=_init_with_axes(nnx.initializers.xavier_uniform(), ("patch", "embed")),
            bias_init=_init_with_axes(
                lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound),
                ("embed",)),
            rngs=rngs,
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.proj(patchify(images, self.patch_size))


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], per-patch order (row, col, channel) as MAE's."""
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, grid_h: int, grid_w: int) -> jax.Array:
    """Inverse of :func:`patchify`: [B, L, p*p*C] -> [B, H, W, C]."""
    b, _, d = patches.shape
    p = patch_size
    c = d // (p * p)
    x = patches.reshape(b, grid_h, grid_w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, grid_h * p, grid_w * p, c)
