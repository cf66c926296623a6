"""HPM (Hard Patches Mining) easy-to-hard masks: the patches of highest predicted loss plus random ones.

specs/methods_vision.md 10(a), Haochen-Wang409/HPM ``models_mae_learn_loss.py::generate_mask`` and
``engine_pretrain.py``. With ``len_keep = int(L * (1 - ratio))`` and ``M = L - len_keep`` masked:

* ``alpha_t = (epoch + 1) / total_epochs * 0.5`` (linear from ~0 to 0.5), ``n_hard = int(M * alpha_t)``;
* the ``n_hard`` patches with the highest predicted loss (from the EMA teacher run on the full
  image) are masked, plus ``M - n_hard`` chosen uniformly at random among the other patches;
* ``n_hard == 0`` is MAE's fully random mask.

The official per-sample Python loop (``np.delete`` then ``np.random.shuffle``) becomes one sort:
the hard patches get a sort key above every uniform noise value, so ``argsort`` puts the non-hard
patches first in a uniformly random order and the hard ones last; the first ``len_keep`` are kept.
The count is fixed, so the result is an MAE :class:`~maskjax.masking.random.Mask`; ``n_hard`` may be
traced (it changes with the epoch without recompiling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.masking.random import Mask, num_kept


def hpm_alpha(epoch, total_epochs: int):
    """The easy-to-hard schedule ``alpha_t = (epoch + 1) / total_epochs * 0.5`` (float or jnp)."""
    return (epoch + 1) / total_epochs * 0.5


def hpm_num_hard_table(length: int, ratio: float, total_epochs: int) -> np.ndarray:
    """``n_hard`` for every epoch 0..total_epochs-1, computed exactly as the official float64 code.

    ``int((L - len_keep) * keep_ratio)`` with ``keep_ratio = float((epoch + 1) / total) * 0.5``. A
    table (rather than float32 arithmetic on a traced epoch) keeps the official rounding exactly.
    """
    if total_epochs < 1:
        raise ValueError(f"HPM needs total_epochs >= 1, got {total_epochs}")
    masked = length - num_kept(length, ratio)
    return np.array([int(masked * (float((e + 1) / total_epochs) * 0.5)) for e in range(total_epochs)],
                    np.int32)


def hpm_num_hard(epoch, length: int, ratio: float, total_epochs: int) -> jax.Array:
    """``n_hard`` at ``epoch`` (an int or a traced int32 scalar), clipped to the schedule's range."""
    table = jnp.asarray(hpm_num_hard_table(length, ratio, total_epochs))
    return table[jnp.clip(jnp.asarray(epoch, jnp.int32), 0, total_epochs - 1)]


def hpm_mask_from_noise(pred_loss: jax.Array, noise: jax.Array, ratio: float, num_hard) -> Mask:
    """HPM's mask from predicted losses [B, L], uniform noise [B, L] in [0, 1) and ``num_hard``.

    The ``num_hard`` highest predicted losses are masked; the other masked patches are the non-hard
    ones of largest noise (a uniformly random subset). ``num_hard`` is an int or a traced scalar
    (or [B]); it must not exceed the number masked.
    """
    _, length = pred_loss.shape
    keep = num_kept(length, ratio)
    num_hard = jnp.asarray(num_hard, jnp.int32)
    num_hard = num_hard[:, None] if num_hard.ndim == 1 else num_hard
    # Rank 0 = highest predicted loss; ties broken by position (any order is valid, as torch's).
    loss_rank = jnp.argsort(jnp.argsort(-pred_loss, axis=1, stable=True), axis=1)
    hard = loss_rank < num_hard
    # Hard patches sort after all noise (keys >= 1), the rest by noise: a random shuffle of them.
    sort_key = jnp.where(hard, 1.0 + loss_rank.astype(noise.dtype), noise)
    ids_shuffle = jnp.argsort(sort_key, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    return Mask(ids_keep=ids_shuffle[:, :keep], ids_restore=ids_restore, mask=ids_restore >= keep)


def hpm_mask(keys: jax.Array, pred_loss: jax.Array, ratio: float, epoch, total_epochs: int) -> Mask:
    """HPM's easy-to-hard mask for ``pred_loss`` [B, L] at ``epoch`` from per-example keys [B]."""
    _, length = pred_loss.shape
    noise = jax.vmap(lambda k: jax.random.uniform(k, (length,)))(keys)
    return hpm_mask_from_noise(pred_loss, noise, ratio, hpm_num_hard(epoch, length, ratio, total_epochs))
