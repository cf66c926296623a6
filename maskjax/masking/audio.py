"""AudioMAE time/frequency masking: drop whole time rows and frequency columns of the token grid.

Follows facebookresearch/AudioMAE ``random_masking_2d`` (specs/methods_vision.md section 8a):
per sample, shuffle the ``T`` time rows by uniform noise and keep the first
``int(T * (1 - mask_t_prob))``; independently shuffle the ``F`` frequency columns and keep the
first ``int(F * (1 - mask_f_prob))``. A token is hidden when its row **or** its column is dropped
(``mask = 1 - (1 - mask_t) * (1 - mask_f)``), so the visible tokens are the intersection and their
number is fixed. Tokens are time-major: ``index = row * F + col``.

Two orders of ``ids_keep`` exist in the official code (attention does not care, but gathers and
parity tests do):

* ``order="pretrain"`` (``models_mae.py``): visible tokens in ascending token index. The official
  code sorts ``index + 999 * mask``, which is this order whenever ``T * F <= 999``; we add
  ``T * F`` instead of 999 so the order stays correct for any grid. ``ids_restore`` is the
  inverse of that sort (masked tokens follow, also ascending).
* ``order="finetune"`` (``models_vit.py``): kept rows in their shuffle order, and within each row
  the kept columns in their shuffle order (``ids_keep[t' * F' + f'] = row[t'] * F + col[f']``).
  The official function returns no ``ids_restore``; ours puts the hidden tokens after the kept
  ones in ascending index.

Unstructured pre-training masking (the AudioMAE default) is MAE's :func:`mask_from_noise`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.masking.random import Mask, uniform_noise

ORDERS = ("pretrain", "finetune")


def num_kept_lines(count: int, prob: float, what: str) -> int:
    """Rows (or columns) AudioMAE keeps: ``int(count * (1 - prob))``; at least one must remain."""
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {prob}")
    keep = int(count * (1 - prob))
    if keep < 1:
        raise ValueError(f"{what}={prob} keeps none of the {count} token lines; lower it")
    return keep


def time_freq_mask_from_noise(noise_t: jax.Array, noise_f: jax.Array, mask_t_prob: float,
                              mask_f_prob: float, order: str = "pretrain") -> Mask:
    """Builds the time/frequency mask from per-sample row noise [B, T] and column noise [B, F].

    Small noise = kept, as ``torch.argsort`` ascending in the official code. Taking the noise
    makes parity tests against a transcription of the official function possible.
    """
    if order not in ORDERS:
        raise ValueError(f"time/frequency mask order must be one of {ORDERS}, got {order!r}")
    b, t = noise_t.shape
    bf, f = noise_f.shape
    if b != bf:
        raise ValueError(f"row noise has batch {b} but column noise has batch {bf}")
    keep_t = num_kept_lines(t, mask_t_prob, "mask_t_prob")
    keep_f = num_kept_lines(f, mask_f_prob, "mask_f_prob")
    shuffle_t = jnp.argsort(noise_t, axis=1)
    shuffle_f = jnp.argsort(noise_f, axis=1)
    # A line is dropped iff its rank in its shuffle is >= the number kept.
    drop_t = jnp.argsort(shuffle_t, axis=1) >= keep_t  # [B, T]
    drop_f = jnp.argsort(shuffle_f, axis=1) >= keep_f  # [B, F]
    mask = (drop_t[:, :, None] | drop_f[:, None, :]).reshape(b, t * f)
    length, kept = t * f, keep_t * keep_f
    index = jnp.arange(length, dtype=jnp.int32)
    if order == "pretrain":
        # Ascending index with every hidden token pushed past every visible one.
        ids_shuffle = jnp.argsort(index[None, :] + length * mask.astype(jnp.int32), axis=1)
    else:
        kept_ids = (shuffle_t[:, :keep_t, None] * f + shuffle_f[:, None, :keep_f]).reshape(b, kept)
        # Hidden tokens after the kept ones, ascending (stable sort on the hidden flag).
        rest = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)[:, kept:]
        ids_shuffle = jnp.concatenate([kept_ids, rest], axis=1)
    ids_shuffle = ids_shuffle.astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    return Mask(ids_keep=ids_shuffle[:, :kept], ids_restore=ids_restore, mask=mask)


def time_freq_mask(keys: jax.Array, batch: int, t_rows: int, f_cols: int, mask_t_prob: float,
                   mask_f_prob: float, order: str = "pretrain") -> Mask:
    """AudioMAE ``random_masking_2d`` on a (t_rows, f_cols) time-major token grid.

    ``keys``: one key or ``batch`` per-example keys (see :func:`uniform_noise`). Each example
    draws its row noise and then its column noise from its own key, as the official code draws
    ``noise_t`` before ``noise_f``; keep count ``int(T(1-pt)) * int(F(1-pf))`` per sample.
    """
    noise = uniform_noise(keys, batch, t_rows + f_cols)
    return time_freq_mask_from_noise(noise[:, :t_rows], noise[:, t_rows:], mask_t_prob, mask_f_prob, order)
