"""Kaldi log-mel filterbank features in numpy (AudioMAE's input), plus pad/crop and normalisation.

`fbank` re-implements Kaldi's ``compute-fbank-feats`` as called by AudioMAE's
``dataset.py::_wav2fbank``::

    torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, sample_frequency=sr,
        use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)

with Kaldi's other defaults: 25 ms frames, ``snip_edges`` (only frames that fit completely),
per-frame DC removal, pre-emphasis 0.97, a symmetric Hann window, the FFT size rounded up to a
power of two, the power spectrum, HTK-mel triangles between 20 Hz and Nyquist, and
``log(max(energy, float32 eps))``. With ``use_energy=False`` ``htk_compat`` changes nothing.
Everything runs in float64 and is returned as float32 (torchaudio computes in float32; the
difference is measured in ``tests/data/test_audio_fbank.py``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable

import numpy as np

# Kaldi floors energies at numeric_limits<float>::epsilon() before the log.
FLOAT_EPS = float(np.finfo(np.float32).eps)
PREEMPHASIS = 0.97
LOW_FREQ = 20.0


def _mel(freq):
    """HTK mel scale, Kaldi's ``MelScale``: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq, np.float64) / 700.0)


def frame_sizes(sample_rate: int, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0) -> tuple[int, int, int]:
    """``(window_size, window_shift, fft_size)`` in samples; Kaldi truncates ms -> samples with int()."""
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    if window_size < 2 or window_shift < 1:
        raise ValueError(f"frame_length_ms={frame_length_ms} / frame_shift_ms={frame_shift_ms} at "
                         f"sample_rate={sample_rate} give a window of {window_size} and a shift of "
                         f"{window_shift} samples; both must be at least 2 and 1")
    fft_size = 1 << (window_size - 1).bit_length()  # round_to_power_of_two
    return window_size, window_shift, fft_size


def num_frames(num_samples: int, sample_rate: int, frame_length_ms: float = 25.0,
               frame_shift_ms: float = 10.0) -> int:
    """Frames Kaldi emits with ``snip_edges=True``: ``1 + (n - window) // shift``, 0 if too short."""
    window_size, window_shift, _ = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    return 0 if num_samples < window_size else 1 + (num_samples - window_size) // window_shift


@functools.lru_cache(maxsize=32)
def mel_banks(num_mel_bins: int, fft_size: int, sample_rate: int, low_freq: float = LOW_FREQ,
              high_freq: float = 0.0) -> np.ndarray:
    """Kaldi's triangular mel filters as ``f64[num_mel_bins, fft_size // 2 + 1]`` (read-only).

    Filters are equally spaced on the mel scale between ``low_freq`` and ``high_freq`` (<= 0
    means Nyquist plus ``high_freq``), each a triangle over the mel value of the FFT bins
    ``0 .. fft_size/2 - 1``; the Nyquist bin gets weight 0 (Kaldi leaves it out). At a low
    sample rate some narrow low filters contain no FFT bin and stay all zero; their energy is
    0 and their log-mel the floor ``log(eps)``, as in Kaldi and torchaudio.
    """
    if num_mel_bins < 3:
        raise ValueError(f"num_mel_bins must be >= 3, got {num_mel_bins}")
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz); "
                         f"got low_freq={low_freq}, high_freq={high_freq}")
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    b = np.arange(num_mel_bins, dtype=np.float64)[:, None]
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    bin_mel = _mel(np.arange(fft_size // 2, dtype=np.float64) * (sample_rate / fft_size))[None, :]
    # Rising edge up to the center, falling edge after it; zero outside (left, right).
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    weights = np.maximum(0.0, np.minimum(up, down))
    banks = np.zeros((num_mel_bins, fft_size // 2 + 1), np.float64)
    banks[:, : fft_size // 2] = weights
    banks.setflags(write=False)  # shared through the cache
    return banks


@functools.lru_cache(maxsize=32)
def _sparse_banks(num_mel_bins: int, fft_size: int, sample_rate: int):
    """`mel_banks` as (FFT-bin index, weight, segment starts, filter ids) of its nonzero entries.

    Each triangle covers a contiguous run of FFT bins and every bin lies in at most two, so a
    gather + ``np.add.reduceat`` costs ~2 multiply-adds per bin and frame. A dense ``power @
    banks.T`` goes through multi-threaded OpenBLAS, whose threads spin against grain's reader
    threads and were measured 17x slower per clip on a busy 2-core machine.
    """
    banks = mel_banks(num_mel_bins, fft_size, sample_rate)
    filters, bins = np.nonzero(banks)  # row-major: grouped by filter, bins ascending
    used, starts = np.unique(filters, return_index=True)
    out = (bins, banks[filters, bins], starts, used)
    for array in out:
        array.setflags(write=False)  # shared through the cache
    return out


@functools.lru_cache(maxsize=32)
def _hann(window_size: int) -> np.ndarray:
    """Kaldi's "hanning" window: the symmetric 0.5 - 0.5 cos(2 pi n / (N - 1))."""
    n = np.arange(window_size, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / (window_size - 1))
    window.setflags(write=False)
    return window


def fbank(waveform: Any, sample_rate: int, *, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
          frame_shift_ms: float = 10.0) -> np.ndarray:
    """Kaldi log-mel filterbank of a mono waveform: ``f32[frames, num_mel_bins]``.

    Args:
      waveform: 1-D samples (any float scale; AudioMAE passes torchaudio.load's [-1, 1)).
      sample_rate: Hz.
      num_mel_bins: mel filters (AudioMAE: 128).
      frame_length_ms, frame_shift_ms: Kaldi's frame length / shift (25 / 10 ms).

    ``frames = 1 + (n - window) // shift`` (``snip_edges``); a waveform shorter than one window
    gives 0 frames (like torchaudio), which `pad_or_crop` then fills with zeros.
    """
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"fbank expects a 1-D (mono) waveform, got shape {x.shape}")
    window_size, window_shift, fft_size = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    mel_banks(int(num_mel_bins), fft_size, int(sample_rate))  # validates the arguments
    n = num_frames(x.shape[0], sample_rate, frame_length_ms, frame_shift_ms)
    if n == 0:
        return np.zeros((0, num_mel_bins), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, window_size)[::window_shift][:n]
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove_dc_offset
    # Pre-emphasis x[i] -= 0.97 x[i-1], with x[-1] := x[0] (Kaldi's convention at the frame start).
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - PREEMPHASIS * previous) * _hann(window_size)
    spectrum = np.fft.rfft(frames, n=fft_size, axis=1)  # zero-pads each frame to fft_size
    power = spectrum.real ** 2 + spectrum.imag ** 2
    bins, weights, starts, used = _sparse_banks(int(num_mel_bins), fft_size, int(sample_rate))
    energies = np.zeros((n, num_mel_bins), np.float64)  # empty filters keep energy 0
    energies[:, used] = np.add.reduceat(power[:, bins] * weights, starts, axis=1)
    return np.log(np.maximum(energies, FLOAT_EPS)).astype(np.float32)


def pad_or_crop(features: np.ndarray, target_length: int) -> np.ndarray:
    """Zero-pads at the end or crops to ``target_length`` frames (AudioMAE's ``_wav2fbank``)."""
    features = np.asarray(features)
    n = features.shape[0]
    if n >= target_length:
        return features[:target_length]
    pad = np.zeros((target_length - n,) + features.shape[1:], features.dtype)
    return np.concatenate([features, pad], axis=0)


def normalize(features: np.ndarray, mean: float, std: float) -> np.ndarray:
    """AudioMAE's normalisation ``(fbank - mean) / (std * 2)`` (float32)."""
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    out = np.array(features, np.float32)  # one copy, then in place (1024x128 per clip adds up)
    out -= np.float32(mean)
    out /= np.float32(std * 2)
    return out


def waveform_to_fbank(waveform: Any, sample_rate: int, *, num_mel_bins: int = 128, target_length: int = 1024,
                      frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0) -> np.ndarray:
    """Mean removal, `fbank` and `pad_or_crop`: AudioMAE's ``_wav2fbank`` without augmentation."""
    x = np.asarray(waveform, np.float64)
    features = fbank(x - x.mean() if x.size else x, sample_rate, num_mel_bins=num_mel_bins,
                     frame_length_ms=frame_length_ms, frame_shift_ms=frame_shift_ms)
    return pad_or_crop(features, target_length)


def fbank_stats(source: Iterable[dict] | Any, *, sample_rate: int, num_mel_bins: int = 128, target_length: int = 1024,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                limit: int | None = None) -> tuple[float, float]:
    """Dataset statistics ``(mean, std)`` of the padded/cropped fbank, for ``data.norm_mean/std``.

    Run it once on the training split of a new dataset (no augmentation, no normalisation;
    the padding zeros count, as in the AST/AudioMAE statistics)::

        src = open_audio_source("fsdd", path, "train")
        mean, std = fbank_stats(src, sample_rate=8000, num_mel_bins=128, target_length=128)

    ``source`` is a random-access source or any iterable of ``{"waveform", "sample_rate"}``
    items; ``limit`` reads only the first items. The statistics are pooled over every value
    (float64 sums), where AST averaged per-batch means and standard deviations; the two agree
    closely for large batches. Raises ValueError on a sample-rate mismatch.
    """
    total = total_sq = 0.0
    count = 0
    items = (source[i] for i in range(len(source))) if hasattr(source, "__getitem__") and hasattr(
        source, "__len__") else iter(source)
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            break
        if int(item["sample_rate"]) != int(sample_rate):
            raise ValueError(f"item {i} has sample rate {item['sample_rate']} Hz but sample_rate={sample_rate}; "
                             "resample the data first (no silent resampling)")
        f = waveform_to_fbank(item["waveform"], sample_rate, num_mel_bins=num_mel_bins, target_length=target_length,
                              frame_length_ms=frame_length_ms, frame_shift_ms=frame_shift_ms).astype(np.float64)
        total += float(f.sum())
        total_sq += float(np.square(f).sum())
        count += f.size
    if count == 0:
        raise ValueError("fbank_stats: the source is empty")
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0) * count / max(count - 1, 1)
    return float(mean), float(math.sqrt(var))
