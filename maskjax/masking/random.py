"""MAE-style random masking: a fixed number of kept tokens per sample.

Follows facebookresearch/mae ``models_mae.py::random_masking`` exactly: per-sample uniform noise,
``argsort`` for the shuffle, the first ``len_keep = int(L * (1 - ratio))`` shuffled positions are
kept. Everything here is a pure function with static output shapes, so it jits, vmaps and shards.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Mask(NamedTuple):
    """A token mask with a static number of kept tokens.

    Attributes:
      ids_keep: int32 [B, K], indices of the kept (visible) tokens, in shuffle order.
      ids_restore: int32 [B, L], the inverse permutation: ``ids_shuffle[b, ids_restore[b, i]] == i``.
      mask: bool [B, L], True where the token is hidden (the MAE "1 = removed" convention).
    """

    ids_keep: jax.Array
    ids_restore: jax.Array
    mask: jax.Array


def num_kept(length: int, ratio: float) -> int:
    """Number of visible tokens MAE keeps: ``int(L * (1 - ratio))`` (truncation, as the official code)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    keep = int(length * (1 - ratio))
    if keep < 1:
        raise ValueError(
            f"mask ratio {ratio} keeps no token of {length}; lower the ratio or use more tokens"
        )
    if keep >= length:  # only for ratios so small that 1 - ratio rounds to 1.0
        raise ValueError(f"mask ratio {ratio} hides no token of {length}; raise the ratio")
    return keep


def mask_from_noise(noise: jax.Array, ratio: float) -> Mask:
    """Builds the MAE mask from per-sample noise [B, L] (small noise = kept).

    Taking the noise as input mirrors Hugging Face ``ViTMAEModel(noise=...)``, which makes
    numerical parity tests possible with identical masks.
    """
    _, length = noise.shape
    keep = num_kept(length, ratio)
    ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    ids_keep = ids_shuffle[:, :keep]
    # Position i is hidden iff its rank in the shuffle is >= keep.
    mask = ids_restore >= keep
    return Mask(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def uniform_noise(key: jax.Array, batch: int, length: int) -> jax.Array:
    """Uniform [0, 1) noise of shape [batch, length].

    ``key`` is either one key (split over the batch) or an array of ``batch`` per-example keys.
    Per-example keys make a sample's mask independent of how the batch is split into
    micro-batches or sharded over devices, which is what lets gradient accumulation and
    different meshes reproduce the same step exactly.
    """
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape == (2,) and key.dtype == jnp.uint32:
            key = jax.random.wrap_key_data(key)  # a legacy jax.random.PRNGKey: one key
        else:
            raise TypeError(f"expected a PRNG key from jax.random.key (or per-example keys), got "
                            f"an array of shape {key.shape} and dtype {key.dtype}")
    if key.ndim == 0:
        key = jax.random.split(key, batch)
    if key.shape[0] != batch:
        raise ValueError(f"got {key.shape[0]} per-example keys for a batch of {batch}")
    return jax.vmap(lambda k: jax.random.uniform(k, (length,)))(key)


def random_mask(key: jax.Array, batch: int, length: int, ratio: float) -> Mask:
    """MAE random masking of ``length`` tokens at ``ratio`` for ``batch`` samples."""
    return mask_from_noise(uniform_noise(key, batch, length), ratio)


def gather_tokens(x: jax.Array, ids: jax.Array) -> jax.Array:
    """Gathers tokens ``x[b, ids[b, k], :]`` for x [B, L, D] and ids [B, K] -> [B, K, D]."""
    return jnp.take_along_axis(x, ids[..., None], axis=1)


def unshuffle_with_mask_tokens(x: jax.Array, mask_token: jax.Array, ids_restore: jax.Array,
                               num_prefix: int = 1) -> jax.Array:
    """MAE's decoder input: the kept tokens plus mask tokens, back in the original token order.

    ``x`` [B, num_prefix + K, D] holds ``num_prefix`` leading tokens (cls) and the K kept tokens in
    ``ids_keep`` order; ``mask_token`` [1, 1, D] fills the L - K hidden places; ``ids_restore``
    [B, L] unshuffles. The prefix stays in front: [B, num_prefix + L, D].
    """
    b, n, d = x.shape
    length = ids_restore.shape[1]
    mask_tokens = jnp.broadcast_to(mask_token.astype(x.dtype), (b, length + num_prefix - n, d))
    body = jnp.concatenate([x[:, num_prefix:], mask_tokens], axis=1)
    body = gather_tokens(body, ids_restore)  # unshuffle
    return jnp.concatenate([x[:, :num_prefix], body], axis=1) if num_prefix else body
