"""Building blocks shared by the video models (VideoMAE, VideoMAE V2, MAE-ST), NNX.

* :func:`patchify_video` / :func:`unpatchify_video`: the tubelet layout of VideoMAE's
  ``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c`` (specs/methods_vision.md section 0.3), which
  is also mae_st's ``nctuhpwq->nthwupqc``: tokens ordered (t, h, w), each token's vector ordered
  (p0, p1, p2, c), channel last.
* :class:`TubeletEmbed`: ``Conv3d(kernel=stride=(t, p, p))`` written as a Linear on patchified
  tubelets (identical maths, and a plain matmul shards and lowers better than a strided conv).
* :func:`sinusoid_table`: VideoMAE's interleaved 1-D sin/cos table (section 0.2).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.models.layers import _init_with_axes


def _check_divisible(name: str, size: int, patch: int, what: str) -> None:
    if patch < 1:
        raise ValueError(f"{what} must be at least 1, got {patch}")
    if size % patch:
        raise ValueError(f"video {name} {size} is not divisible by the {what} {patch}")


def patchify_video(video: jax.Array, tubelet: int, patch: int) -> jax.Array:
    """[B, T, H, W, C] -> [B, (T/t)(H/p)(W/p), t*p*p*C]; tokens (t, h, w), vector (p0, p1, p2, c)."""
    if video.ndim != 5:
        raise ValueError(f"expected a video [B, T, H, W, C], got shape {video.shape}")
    b, t, h, w, c = video.shape
    _check_divisible("length", t, tubelet, "tubelet size")
    _check_divisible("height", h, patch, "patch size")
    _check_divisible("width", w, patch, "patch size")
    gt, gh, gw = t // tubelet, h // patch, w // patch
    x = video.reshape(b, gt, tubelet, gh, patch, gw, patch, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # b, gt, gh, gw, p0, p1, p2, c
    return x.reshape(b, gt * gh * gw, tubelet * patch * patch * c)


def unpatchify_video(tokens: jax.Array, tubelet: int, patch: int, grid: tuple[int, int, int]) -> jax.Array:
    """Inverse of :func:`patchify_video`: [B, gt*gh*gw, t*p*p*C] -> [B, T, H, W, C].

    ``grid`` is the token grid (gt, gh, gw) = (T/t, H/p, W/p).
    """
    b, n, d = tokens.shape
    gt, gh, gw = grid
    if n != gt * gh * gw:
        raise ValueError(f"{n} tokens do not fill the grid {grid}")
    if d % (tubelet * patch * patch):
        raise ValueError(f"token size {d} is not a multiple of tubelet*patch*patch = {tubelet * patch * patch}")
    c = d // (tubelet * patch * patch)
    x = tokens.reshape(b, gt, gh, gw, tubelet, patch, patch, c)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)  # b, gt, p0, gh, p1, gw, p2, c
    return x.reshape(b, gt * tubelet, gh * patch, gw * patch, c)


def sinusoid_table(num_positions: int, dim: int) -> np.ndarray:
    """VideoMAE's fixed 1-D table [num_positions, dim] as float32 (float64 maths, as the official numpy).

    ``angle(pos, j) = pos / 10000 ** (2 * (j // 2) / dim)``; even dims take sin, odd dims cos
    (interleaved, unlike MAE's sin-half/cos-half layout). Positions are flattened (t, h, w)
    token indices, so the table is not separable in space and time.
    """
    if num_positions < 1 or dim < 1:
        raise ValueError(f"sinusoid table needs positive sizes, got {num_positions} positions x {dim} dims")
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    table = pos / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table.astype(np.float32)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class TubeletEmbed(nnx.Module):
    """Tubelet embedding: a Linear on :func:`patchify_video` vectors == ``Conv3d(k=s=(t, p, p))``.

    The kernel is [t*p*p*C, D] in (p0, p1, p2, c) order; a PyTorch Conv3d weight [D, C, t, p, p]
    maps onto it by ``w.transpose(2, 3, 4, 1, 0).reshape(-1, D)``.

    ``init``:
      * ``"torch_default"`` (VideoMAE, which never re-initialises its conv): PyTorch's
        kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)) for the weight and the bias.
      * ``"xavier"`` (MAE-ST): xavier-uniform on the weight viewed as [D, fan_in]; the bias keeps
        the PyTorch default U(+-1/sqrt(fan_in)), as MAE never resets it.
    """

    def __init__(self, tubelet: int, patch: int, in_chans: int, dim: int, *, rngs: nnx.Rngs,
                 dtype: Any = None, init: str = "torch_default"):
        if init not in ("torch_default", "xavier"):
            raise ValueError(f"TubeletEmbed init must be 'torch_default' or 'xavier', got {init!r}")
        if tubelet < 1 or patch < 1:
            raise ValueError(f"tubelet ({tubelet}) and patch ({patch}) sizes must be at least 1")
        self.tubelet = tubelet
        self.patch_size = patch
        self.in_chans = in_chans
        fan_in = tubelet * patch * patch * in_chans
        bound = 1.0 / math.sqrt(fan_in)
        kernel_init = _uniform(bound) if init == "torch_default" else nnx.initializers.xavier_uniform()
        self.proj = nnx.Linear(
            fan_in, dim, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=_init_with_axes(kernel_init, ("patch", "embed")),
            bias_init=_init_with_axes(_uniform(bound), ("embed",)),
            rngs=rngs,
        )

    def __call__(self, video: jax.Array) -> jax.Array:
        """[B, T, H, W, C] -> token embeddings [B, (T/t)(H/p)(W/p), D]."""
        if video.shape[-1] != self.in_chans:
            raise ValueError(f"video has {video.shape[-1]} channels, the tubelet embedding expects {self.in_chans}")
        return self.proj(patchify_video(video, self.tubelet, self.patch_size))
