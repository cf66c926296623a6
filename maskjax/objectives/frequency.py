"""MFM's frequency loss: a distance between ortho-FFT spectra, averaged over the masked frequencies.

specs/methods_vision.md 12(b), Jiahao000/MFM ``models/frequency_loss.py::FrequencyLoss`` with the
defaults MFM pre-trains with (``loss_gamma`` 1, ``patch_factor`` 1, no ``ave_spectrum``, no spectrum
weight matrix) and ``models/mfm.py::MFM.forward`` with ``RECOVER_TARGET_TYPE: masked``:

* ``F(x) = fftshift(fft2(x, norm="ortho"))`` per image and channel;
* per frequency ``d = sqrt(dRe^2 + dIm^2 + 1e-12) ** gamma``, a tensor [N, P, C, H, W] (P = 1 patch);
* ``loss = sum(d * (1 - mask)) / sum(1 - mask) / C / P`` where ``mask`` [N, H, W] is 1 on the kept
  frequencies. Both sums run over the **whole (per-GPU) batch**: the result is one ratio of sums,
  not a mean of per-image ratios, so a low-pass image (98.4% of its frequencies masked at r1 = 16
  on 224x224) weighs far more than a high-pass one (1.6%).

The official code takes that ratio over each GPU's batch (128 images) and DDP averages the
gradients of the 16 per-GPU losses. ``group_size`` reproduces it: the batch is cut into
consecutive groups of ``group_size`` images, each group's ratio is taken, and the groups are
averaged; 0 takes one ratio over the whole (micro-)batch.

Images are channel-last [N, H, W, C] (maskjax's layout); the spectra are computed in float32.
Only the settings MFM uses are implemented: the spectrum weight matrix, ``ave_spectrum`` and
``patch_factor > 1`` are not (the official masked reduction cannot broadcast a [N, H, W] mask
against ``patch_factor > 1`` patch spectra anyway).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FREQUENCY_DISTANCE_EPS = 1e-12  # inside the square root, as FrequencyLoss.loss_formulation


def ortho_spectrum(images: jax.Array) -> jax.Array:
    """``fftshift(fft2(x, norm="ortho"))`` of channel-last images [..., H, W, C] -> complex [..., C, H, W]."""
    x = jnp.moveaxis(images.astype(jnp.float32), -1, -3)
    return jnp.fft.fftshift(jnp.fft.fft2(x, norm="ortho"), axes=(-2, -1))


def frequency_distance(pred: jax.Array, target: jax.Array, gamma: float = 1.0) -> jax.Array:
    """Per-frequency distance [..., C, H, W]: ``sqrt(dRe^2 + dIm^2 + 1e-12) ** gamma`` of the shifted spectra."""
    diff = ortho_spectrum(pred) - ortho_spectrum(target)
    distance = jnp.sqrt(jnp.square(diff.real) + jnp.square(diff.imag) + FREQUENCY_DISTANCE_EPS)
    return distance if gamma == 1.0 else distance ** gamma


def masked_frequency_loss(pred: jax.Array, target: jax.Array, freq_mask: jax.Array, *, gamma: float = 1.0,
                          group_size: int = 0) -> jax.Array:
    """MFM's loss: the frequency distance averaged over the masked frequencies (module docstring).

    Args:
      pred, target: images [B, H, W, C] (MFM: the ImageNet-normalised prediction and original).
      freq_mask: [B, H, W] in the fftshift-ed layout, 1 where a frequency was kept, 0 where it was
        masked (``maskjax.masking.frequency.mfm_freq_mask``); only the masked ones are scored.
      gamma: the distance's exponent (``loss_gamma``; MFM uses 1).
      group_size: images per ratio of sums (the official per-GPU batch); 0 = the whole batch.

    Returns the scalar ``mean over groups of sum(d * (1 - mask)) / sum(1 - mask) / C``. A group
    with no masked frequency would divide by zero in the official code; here its denominator is
    clamped to 1 (the count is a whole number, so any real count is unchanged).
    """
    distance = frequency_distance(pred, target, gamma)  # [B, C, H, W]
    hidden = 1.0 - freq_mask.astype(jnp.float32)          # [B, H, W]
    batch, channels = distance.shape[0], distance.shape[-3]
    if hidden.shape != (batch,) + distance.shape[-2:]:
        raise ValueError(f"freq_mask has shape {hidden.shape}, expected {(batch,) + distance.shape[-2:]}")
    per_image = jnp.sum(distance * hidden[:, None], axis=(1, 2, 3))  # channels, rows, columns
    counts = jnp.sum(hidden, axis=(1, 2))
    group = group_size or batch
    if batch % group:
        raise ValueError(f"the batch of {batch} images is not a multiple of group_size {group_size}")
    per_group = per_image.reshape(-1, group).sum(axis=1)
    count_group = counts.reshape(-1, group).sum(axis=1)
    return jnp.mean(per_group / jnp.maximum(count_group, 1.0)) / channels
