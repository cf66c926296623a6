"""Linear-layer pieces with hand-written backward passes, each for one backend's weak spot.

:func:`bias_gelu_erf`: exact GELU of a biased output, with a backward pass XLA:GPU runs faster
(and :func:`gelu_erf`, the exact GELU itself). :func:`matmul_cpu`: a 2-D matmul whose backward pass
is laid out for XLA:CPU's fast GEMM path.

Why :func:`matmul_cpu`: the kernel gradient of ``y = x @ w`` is ``x^T @ g``, a dot contracting the
*leading* (batch x tokens) dimension of both operands. XLA:CPU (jax 0.10) runs that form through a
slow path, about 1.5-1.8x slower than the same product with a row-major left operand (measured on
one core of the 2-core AMD EPYC of docs/performance.md: [3152, 512]^T @ [3152, 2048] 175 ms vs 105
ms after transposing x first). The custom backward transposes the narrower operand explicitly (a
cheap copy) and keeps XLA from folding that transpose back into the dot with
``optimization_barrier``.

Used by :class:`maskjax.models.layers.Dense` on the CPU backend only: GPU and TPU matmul units take
transposed operands at full speed, where the extra copy would only cost.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


@jax.custom_vjp
def matmul_cpu(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for x [N, K], w [K, M] (same value and gradients; a CPU-friendly backward)."""
    return x @ w


def _fwd(x, w):
    return x @ w, (x, w)


def _bwd(residuals, g):
    x, w = residuals
    k, m = w.shape
    dx = g @ w.T
    if k <= m:   # x^T is [K, N]: the smaller copy
        dw = jax.lax.optimization_barrier(x.T) @ g
    else:        # g^T is [M, N]: the smaller copy; the [M, K] result is transposed back (a
        # second barrier, or XLA folds (g^T x)^T into the slow x^T g again)
        dw = jax.lax.optimization_barrier(jax.lax.optimization_barrier(g.T) @ x).T
    return dx.astype(x.dtype), dw.astype(w.dtype)


matmul_cpu.defvjp(_fwd, _bwd)


def use_cpu_matmul() -> bool:
    """True on the CPU backend (read at trace time)."""
    return jax.default_backend() == "cpu"


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU as ``torch.nn.GELU``: ``0.5 x (1 + erf(x / sqrt 2))``.

    ``jax.nn.gelu(approximate=False)`` computes the same function through ``erfc``, whose XLA:CPU
    lowering evaluates both branches of a select; fused into the block it costs several times
    more than this ``erf`` form (docs/performance.md). Values agree to float32 rounding.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(1.0 / math.sqrt(2.0), x.dtype)))


@jax.custom_vjp
def bias_gelu_erf(h: jax.Array, bias: jax.Array) -> jax.Array:
    """Exact GELU of ``h + bias`` (``bias`` over the last axis), as ``gelu_erf(h + bias)``.

    Same value; the backward pass differs in how it is laid out for XLA:GPU. Left to autodiff,
    XLA fuses the GELU derivative with the bias gradient's column sum into one multi-output
    reduction kernel, which streams the [tokens, 4 x width] activations at about half the GPU's
    memory rate (180 us per MAE ViT-L encoder layer on an H100, the largest non-matmul kernel of
    the step). Here the derivative is a plain elementwise kernel (computed in float32) and the sum
    a separate one: on the H100 the two take 163 us (docs/performance.md, "speed work").
    """
    return gelu_erf(h + bias)


def _bias_gelu_fwd(h, bias):
    return gelu_erf(h + bias), (h, bias)


def _bias_gelu_bwd(residuals, g):
    h, bias = residuals
    z = (h + bias).astype(jnp.float32)
    cdf = 0.5 * (1.0 + jax.lax.erf(z * (1.0 / math.sqrt(2.0))))
    pdf = jnp.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    dz = (g.astype(jnp.float32) * (cdf + z * pdf)).astype(h.dtype)
    # The barrier keeps the column sum out of the elementwise kernel (the point of this function).
    dz = jax.lax.optimization_barrier(dz)
    dbias = dz.sum(axis=tuple(range(dz.ndim - 1)), dtype=jnp.float32)
    return dz, dbias.astype(bias.dtype)


bias_gelu_erf.defvjp(_bias_gelu_fwd, _bias_gelu_bwd)


def use_split_gelu_backward() -> bool:
    """True on GPUs (read at trace time): where :func:`bias_gelu_erf`'s backward was measured faster."""
    return jax.default_backend() == "gpu"
