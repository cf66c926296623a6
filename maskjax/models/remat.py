"""Rematerialisation (activation checkpointing) policies for the transformer block loops.

``config.remat`` takes ``False`` / ``True`` (as before: off / the whole block) or a policy name:

- ``"none"``: store every activation the backward pass needs (fastest, most memory);
- ``"full"``: store only each block's input and recompute the whole block in the backward pass
  (``nnx.remat`` with JAX's default ``nothing_saveable``; least memory, ~1/3 more compute);
- ``"dots"``: store the outputs of the parameter matmuls (qkv, proj, fc1, fc2) and recompute
  the rest: LayerNorms, GELU and the attention core, whose matmuls have batch dims
  (``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``);
- ``"attention"``: store everything except the attention core's [B, H, T, T] scores and
  probabilities, which the backward pass recomputes from q, k, v (``jax.checkpoint`` around the
  core only; the core's own residuals are what ``attention_impl`` keeps: nothing of size T^2 for
  ``"blockwise"`` and cuDNN's fused kernel anyway).

All policies give the same loss and gradients; they trade memory for compute.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable

import jax
from flax import nnx

REMAT_POLICIES = ("none", "full", "dots", "attention")

# Set while a block runs under the "attention" policy; read by the attention cores at trace time.
_RECOMPUTE_ATTENTION = contextvars.ContextVar("maskjax_recompute_attention", default=False)


def resolve_remat(value: Any) -> str:
    """``config.remat`` (bool, None or a policy name) -> a name from :data:`REMAT_POLICIES`."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "full"
    if isinstance(value, str) and value in REMAT_POLICIES:
        return value
    raise ValueError(f"unknown remat policy {value!r} (config.remat); use True/False or one of {REMAT_POLICIES}")


@contextlib.contextmanager
def recompute_attention():
    """Within this context the attention cores are wrapped in ``jax.checkpoint`` (see :func:`maybe_remat_core`)."""
    token = _RECOMPUTE_ATTENTION.set(True)
    try:
        yield
    finally:
        _RECOMPUTE_ATTENTION.reset(token)


def maybe_remat_core(core: Callable) -> Callable:
    """``core`` itself, or ``jax.checkpoint(core)`` saving nothing when the "attention" policy is active."""
    if _RECOMPUTE_ATTENTION.get():
        return jax.checkpoint(core, policy=jax.checkpoint_policies.nothing_saveable)
    return core


def remat_block(policy: str, fn: Callable) -> Callable:
    """Wraps ``fn(block, *args)`` (a block call) with the named policy; same signature and result."""
    policy = resolve_remat(policy)
    if policy == "none":
        return fn
    if policy == "full":
        return nnx.remat(fn)
    if policy == "dots":
        return nnx.remat(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)

    def with_core_remat(*args, **kwargs):
        with recompute_attention():
            return fn(*args, **kwargs)

    return with_core_remat


def block_keys(key: jax.Array | None, num_blocks: int) -> list:
    """One drop-path/dropout key per block split from ``key``, or ``None`` for each block."""
    return [None] * num_blocks if key is None else list(jax.random.split(key, num_blocks))
