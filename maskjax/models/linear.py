"""A 2-D matmul whose backward pass is laid out for XLA:CPU's fast GEMM path.

The kernel gradient of ``y = x @ w`` is ``x^T @ g``: a dot contracting the *leading* (batch x
tokens) dimension of both operands. XLA:CPU (jax 0.10) runs that form through a slow path, about
1.5-1.8x slower than the same product with a row-major left operand (measured on one core of the
2-core AMD EPYC of docs/performance.md: [3152, 512]^T @ [3152, 2048] 175 ms vs 105 ms after
transposing x first). The custom backward transposes the narrower operand explicitly (a cheap
copy) and keeps XLA from folding that transpose back into the dot with ``optimization_barrier``.

Used by :class:`maskjax.models.layers.Dense` on the CPU backend only: GPU and TPU matmul units take
transposed operands at full speed, where the extra copy would only cost.
"""

from __future__ import annotations

import jax


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
