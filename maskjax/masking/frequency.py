"""MFM (Masked Frequency Modeling) masks: a low- or high-pass circular mask on the image's spectrum.

specs/methods_vision.md 12(a), Jiahao000/MFM ``data/data_mfm.py::FreqMaskGenerator`` and
``models/mfm.py::MFM.frequency_transform``:

* on the **fftshift-ed** spectrum of an ``H x W`` image (centre ``(H//2, W//2)``),
  ``M[y, x] = 0 if r1^2 <= (x - cx)^2 + (y - cy)^2 < r2^2 else 1`` with r1 = 16, r2 = 999: M keeps
  the frequencies inside radius 16 (a low-pass mask);
* per sample, ``torch.bernoulli(sample_ratio)`` (0.5): 1 -> M (low-pass, high frequencies masked),
  0 -> 1 - M (high-pass, low frequencies masked);
* corruption of the [0, 1] image, the same mask for every channel:
  ``real(ifft2(ifftshift(fftshift(fft2(x)) * mask)))``, clamped to [0, 1] (then the data pipeline's
  ImageNet normalisation). The loss averages over the masked frequencies, ``1 - mask``.

The official radius is fixed (r1 = 16, r2 = 999; only the low/high choice is random). The radii
here may also be traced scalars, so a caller can draw them per sample without recompiling. Masks
are float32 [H, W] (1 = frequency kept), in the shifted layout, pure and vmappable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mfm_base_mask(height: int, width: int, radius1=16, radius2=999) -> jax.Array:
    """The low-pass mask M float32 [H, W] on the shifted spectrum (0 on the ring r1 <= r < r2)."""
    cy, cx = height // 2, width // 2
    y = jnp.arange(height, dtype=jnp.float32)[:, None] - cy
    x = jnp.arange(width, dtype=jnp.float32)[None, :] - cx
    d2 = x * x + y * y  # exact integers in float32 for any realistic image size
    radius1 = jnp.asarray(radius1, jnp.float32)
    radius2 = jnp.asarray(radius2, jnp.float32)
    ring = (d2 >= radius1 * radius1) & (d2 < radius2 * radius2)
    return jnp.where(ring, 0.0, 1.0).astype(jnp.float32)


def mfm_mask_from_uniform(u, base_mask: jax.Array, sample_ratio: float = 0.5) -> jax.Array:
    """``torch.bernoulli(sample_ratio)`` from a uniform ``u``: M (low-pass) if u < ratio, else 1 - M."""
    return jnp.where(jnp.asarray(u) < sample_ratio, base_mask, 1.0 - base_mask)


def mfm_freq_mask(key: jax.Array, height: int = 224, width: int = 224, radius1=16, radius2=999,
                  sample_ratio: float = 0.5) -> jax.Array:
    """One MFM frequency mask float32 [H, W] from a PRNG key (low-pass with probability ``sample_ratio``)."""
    u = jax.random.uniform(key, ())
    return mfm_mask_from_uniform(u, mfm_base_mask(height, width, radius1, radius2), sample_ratio)


def mfm_is_low_pass(freq_mask: jax.Array) -> jax.Array:
    """True where a mask [..., H, W] keeps its centre (DC) frequency, i.e. is the low-pass choice."""
    height, width = freq_mask.shape[-2:]
    return freq_mask[..., height // 2, width // 2] > 0.5


def mfm_corrupt(images: jax.Array, freq_mask: jax.Array) -> jax.Array:
    """MFM's corruption of [0, 1] images [..., H, W, C] by a frequency mask [..., H, W] (shifted layout).

    ``real(ifft2(ifftshift(fftshift(fft2(x)) * mask)))`` per channel, then clamp to [0, 1].
    """
    x = jnp.moveaxis(images.astype(jnp.float32), -1, -3)  # [..., C, H, W]
    spectrum = jnp.fft.fftshift(jnp.fft.fft2(x), axes=(-2, -1))
    spectrum = spectrum * freq_mask[..., None, :, :]
    out = jnp.fft.ifft2(jnp.fft.ifftshift(spectrum, axes=(-2, -1))).real
    return jnp.moveaxis(jnp.clip(out, 0.0, 1.0), -3, -1).astype(jnp.float32)
