"""ColorMAE masks: filtered ("coloured") white noise, cropped and flipped, top-k kept visible.

specs/methods_vision.md 9(a), carlosh93/ColorMAE ``models/utils/masking_generator.py::ColorMasking``
and ``models/colormae.py::ColorMAEViT.color_masking``. The official repository loads a
pre-generated stack of noise patterns (an npz, shape (Lp, M, N)) and, per batch, applies
``RandomCrop(14)`` + random H-flip + random V-flip + ``NormalizeBySliceMax`` (each slice divided by
its max) to the whole stack (one crop offset and one pair of flips for the batch), takes slices
0..B-1, and keeps as **visible** the ``len_keep = int(L * (1 - ratio))`` largest values of each
(``argsort(pattern.flatten(), descending=True)[:len_keep]``); the rest is masked, then everything
is MAE. The script that generated the patterns is not released, so the filters below are ours.

Filters (our parameters; the colours follow the paper / README descriptions, the sigmas are
unconfirmed there). White noise ``W ~ N(0, 1)`` on a periodic ``S x S`` field (``field_size``,
default 32 patches) is filtered in the FFT domain by a real, radially symmetric gain of the
frequency ``f`` in cycles per patch (``np.fft.fftfreq``). With ``g_s(f) = exp(-2 pi^2 s^2 f^2)``,
the gain of a Gaussian blur of std ``s`` patches, and two blur widths ``sigma_narrow = 0.7`` and
``sigma_wide = 1.4`` patches (:data:`DEFAULT_SIGMAS`):

* red    (low-pass)  ``g_wide``                       = ``G_wide * W``: keeps f below ~0.1;
* blue   (high-pass) ``1 - g_narrow``                 = ``W - G_narrow * W``: keeps f above ~0.2;
* green  (band-pass) ``(g_narrow - g_wide) / peak``   a difference of Gaussians, scaled to unit peak
  gain; the peak is at ``f* = sqrt(ln(s_w^2/s_n^2) / (2 pi^2 (s_w^2 - s_n^2)))`` ~ 0.22 cycles per
  patch, i.e. visible clusters about 4.6 patches apart;
* purple (band-stop) ``1 - green``                    = ``W - green``: a notch (gain 0) at ``f*``.

The unit-peak scaling of green does not change green's masks (top-k is scale invariant); it makes
purple's notch reach zero. ``tools/colormae_spectra.py OUT.png`` draws the four patterns and their
radially averaged power spectra next to these gains.

Two entry points:

* :func:`color_noise_mask` (the in-graph default): every example gets its own white noise from its
  own key, filtered, then its own crop and flips. Because the filtered field is stationary on the
  torus, the crop offset and flips do not change the distribution; they are kept to mirror the
  official pipeline. Per-example randomness keeps a sample's mask independent of batching.
* :func:`color_noise_patterns` + :func:`extract_windows` + :func:`mask_from_patterns`: the official
  path on a fixed stack (e.g. one loaded from the released npz), one crop and flip for the batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from maskjax.masking.random import Mask, mask_from_noise

COLORS = ("red", "blue", "green", "purple")
# (sigma_narrow, sigma_wide) in patches: our choice (module docstring), not a published value.
DEFAULT_SIGMAS = (0.7, 1.4)
DEFAULT_FIELD_SIZE = 32


def _gauss_gain(f2: np.ndarray, sigma: float) -> np.ndarray:
    """Gain of a Gaussian blur of std ``sigma`` at squared frequency ``f2`` (cycles per sample)."""
    return np.exp(-2.0 * math.pi ** 2 * sigma ** 2 * f2)


def color_gain(color: str, size: int, sigmas: tuple[float, float] = DEFAULT_SIGMAS) -> np.ndarray:
    """The FFT-domain gain float32 [size, size] of ``color`` (unshifted, ``np.fft.fftfreq`` layout).

    Static (numpy): it enters the graph as a constant. See the module docstring for the formulas.
    """
    if color not in COLORS:
        raise ValueError(f"unknown ColorMAE noise colour {color!r}; use one of {COLORS}")
    narrow, wide = (float(s) for s in sigmas)
    if not 0.0 < narrow < wide:
        raise ValueError(f"colour-noise sigmas must satisfy 0 < narrow < wide, got {sigmas}")
    f = np.fft.fftfreq(size)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    if color == "red":
        gain = _gauss_gain(f2, wide)
    elif color == "blue":
        gain = 1.0 - _gauss_gain(f2, narrow)
    else:
        # The difference of Gaussians peaks where d/df2 vanishes: analytic, so the notch is exact.
        f2_peak = math.log(wide ** 2 / narrow ** 2) / (2 * math.pi ** 2 * (wide ** 2 - narrow ** 2))
        peak = _gauss_gain(f2_peak, narrow) - _gauss_gain(f2_peak, wide)
        gain = (_gauss_gain(f2, narrow) - _gauss_gain(f2, wide)) / peak
        if color == "purple":
            gain = 1.0 - gain
    return gain.astype(np.float32)


def filter_white_noise(white: jax.Array, color: str,
                       sigmas: tuple[float, float] = DEFAULT_SIGMAS) -> jax.Array:
    """Filters white noise [..., S, S] in the FFT domain with :func:`color_gain`: float32 [..., S, S].

    The gain is real and even in f, so the inverse transform is real up to rounding (its real
    part is taken).
    """
    size = white.shape[-1]
    if white.shape[-2] != size:
        raise ValueError(f"colour noise fields must be square, got {white.shape[-2:]}")
    gain = jnp.asarray(color_gain(color, size, sigmas))
    return jnp.fft.ifft2(jnp.fft.fft2(white) * gain).real.astype(jnp.float32)


def color_noise_patterns(key: jax.Array, num: int, color: str = "green",
                         field_size: int = DEFAULT_FIELD_SIZE,
                         sigmas: tuple[float, float] = DEFAULT_SIGMAS) -> jax.Array:
    """A stack of ``num`` filtered-noise patterns float32 [num, S, S] (what the official npz holds)."""
    white = jax.random.normal(key, (num, field_size, field_size))
    return filter_white_noise(white, color, sigmas)


def crop_flip_normalize(patterns: jax.Array, u: jax.Array, window: tuple[int, int]) -> jax.Array:
    """RandomCrop + H-flip + V-flip + NormalizeBySliceMax on [n, S, S] from 4 uniforms ``u``.

    ``u[0], u[1]``: crop top/left, inclusive ranges as torchvision's ``RandomCrop``; ``u[2] < 0.5``:
    horizontal flip, ``u[3] < 0.5``: vertical flip (torchvision's ``torch.rand(1) < p`` with p=0.5).
    """
    wh, ww = window
    size_h, size_w = patterns.shape[-2:]
    if wh > size_h or ww > size_w:
        raise ValueError(f"window {window} is larger than the noise field {patterns.shape[-2:]}")
    top = jnp.minimum(jnp.floor(u[0] * (size_h - wh + 1)).astype(jnp.int32), size_h - wh)
    left = jnp.minimum(jnp.floor(u[1] * (size_w - ww + 1)).astype(jnp.int32), size_w - ww)
    out = jax.lax.dynamic_slice(patterns, (0, top, left), (patterns.shape[0], wh, ww))
    out = jnp.where(u[2] < 0.5, out[:, :, ::-1], out)
    out = jnp.where(u[3] < 0.5, out[:, ::-1, :], out)
    return out / jnp.max(out, axis=(1, 2), keepdims=True)


def extract_windows(key: jax.Array, patterns: jax.Array, window: int | tuple[int, int] = 14) -> jax.Array:
    """The official ``extract_windows``: one crop and one pair of flips for the whole stack [n, S, S].

    Returns float32 [n, wh, ww], each slice divided by its max.
    """
    window = (window, window) if isinstance(window, int) else tuple(window)
    return crop_flip_normalize(patterns, jax.random.uniform(key, (4,)), window)


def mask_from_patterns(windows: jax.Array, ratio: float = 0.75) -> Mask:
    """Keeps the ``int(L * (1 - ratio))`` largest values of each window [B, h, w] visible: a :class:`Mask`.

    ``ids_keep`` is in descending value order (the official ``argsort(descending=True)``); the
    rest is hidden, exactly as MAE's ``random_masking`` with the pattern as (negated) noise.
    """
    flat = windows.reshape(windows.shape[0], -1)
    return mask_from_noise(-flat, ratio)


def color_noise_windows(keys: jax.Array, grid_h: int, grid_w: int, color: str = "green",
                        field_size: int = DEFAULT_FIELD_SIZE,
                        sigmas: tuple[float, float] = DEFAULT_SIGMAS) -> jax.Array:
    """One normalised noise window per example key [B]: float32 [B, grid_h, grid_w]."""

    def one(key):
        noise_key, window_key = jax.random.split(key)
        white = jax.random.normal(noise_key, (1, field_size, field_size))
        pattern = filter_white_noise(white, color, sigmas)
        return crop_flip_normalize(pattern, jax.random.uniform(window_key, (4,)), (grid_h, grid_w))[0]

    return jax.vmap(one)(keys)


def color_noise_mask(keys: jax.Array, grid_h: int, grid_w: int, ratio: float = 0.75,
                     color: str = "green", field_size: int = DEFAULT_FIELD_SIZE,
                     sigmas: tuple[float, float] = DEFAULT_SIGMAS) -> Mask:
    """ColorMAE masking of a ``grid_h x grid_w`` token grid from per-example keys [B]: a :class:`Mask`.

    Fixed count, as MAE: ``int(L * (1 - ratio))`` visible tokens (49 of 196 at 0.75). Green is the
    paper's default colour.
    """
    return mask_from_patterns(color_noise_windows(keys, grid_h, grid_w, color, field_size, sigmas), ratio)
