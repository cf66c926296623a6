"""Kaldi fbank in numpy (`maskjax.data.audio.fbank`) against torchaudio and hand-checkable facts.

The reference is torchaudio 2.11's ``compliance/kaldi.py`` run from its wheel (see
`tests.audio_helpers.load_torchaudio_kaldi`) with AudioMAE's exact call, in float32 as
AudioMAE runs it. Measured max |ours - torchaudio| on the log-mel values:

- all 3,000 FSDD recordings (8 kHz): 1.01e-3 (128 bins) and 1.01e-3 (64 bins) over every
  value; 2.8e-4 / 5.7e-4 over values above -10. The largest gaps sit next to the log floor,
  where torchaudio's float32 power spectrum loses digits; torchaudio run in float64 differs by
  at most 2.8e-4 (its mel filters are float32; they match ours to 1.5e-5).
- a synthetic 16 kHz signal: 1.8e-3 (128 bins) / 5.0e-4 (64 bins) over every value, 1.9e-4
  above -10.
- the empty low filters at 8 kHz / 128 bins (FFT bins of 31.25 Hz): exactly the floor
  log(float32 eps) = -15.942 in both.

Tolerances: 3e-3 on every value, 1e-3 on values above -10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from maskjax.data.audio import fbank as fb
from maskjax.data.audio.sources import FsddSource
from tests.audio_helpers import FSDD_TAR, load_torchaudio_kaldi, torchaudio_fbank

ATOL = 3e-3       # every value, including those next to the log floor
ATOL_LIVE = 1e-3  # values above -10 (energy >= 4.5e-5), clear of float32 cancellation
LOG_EPS = math.log(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def kaldi():
    return load_torchaudio_kaldi()


@pytest.fixture(scope="module")
def fsdd_all():
    if not FSDD_TAR.exists():
        pytest.skip(f"{FSDD_TAR} is not present")
    return FsddSource(FSDD_TAR, "all")


def _ours(waveform, sample_rate, bins):
    x = np.asarray(waveform, np.float64)
    return fb.fbank(x - x.mean(), sample_rate, num_mel_bins=bins)


@pytest.mark.parametrize("bins", [128, 64])
def test_fbank_matches_torchaudio_on_fsdd(kaldi, fsdd_all, bins):
    for index in range(0, len(fsdd_all), 100):  # 30 recordings: every digit and speaker
        item = fsdd_all[index]
        assert item["sample_rate"] == 8000
        ref = torchaudio_fbank(kaldi, item["waveform"], 8000, bins)
        ours = _ours(item["waveform"], 8000, bins)
        assert ours.shape == ref.shape and ours.dtype == np.float32
        _assert_close(ours, ref)


def _assert_close(ours, ref):
    diff = np.abs(ours - ref)
    assert diff.max() < ATOL, diff.max()
    assert diff[ref > -10].max() < ATOL_LIVE, diff[ref > -10].max()


def test_empty_low_filters_hit_the_same_floor(kaldi, fsdd_all):
    # 8 kHz, 256-point FFT: 31.25 Hz bins, narrower than the lowest of 128 mel filters.
    empty = np.where(fb.mel_banks(128, 256, 8000).sum(axis=1) == 0)[0]
    assert len(empty) > 0
    ref_banks, _ = kaldi.get_mel_banks(128, 256, 8000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    np.testing.assert_array_equal(np.where(ref_banks.numpy().sum(axis=1) == 0)[0], empty)
    item = fsdd_all[5]
    ref = torchaudio_fbank(kaldi, item["waveform"], 8000, 128)
    ours = _ours(item["waveform"], 8000, 128)
    np.testing.assert_allclose(ref[:, empty], LOG_EPS, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours[:, empty], LOG_EPS, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sample_rate,fft", [(8000, 256), (16000, 512), (44100, 2048)])
def test_mel_banks_match_torchaudio(kaldi, sample_rate, fft):
    ref, _ = kaldi.get_mel_banks(128, fft, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
    ref = np.pad(ref.numpy(), ((0, 0), (0, 1)))  # kaldi.fbank appends the zero Nyquist column
    np.testing.assert_allclose(fb.mel_banks(128, fft, sample_rate), ref, rtol=0, atol=3e-5)


@pytest.mark.parametrize("bins", [128, 64])
def test_fbank_matches_torchaudio_synthetic_16k(kaldi, bins):
    rng = np.random.default_rng(0)
    sr, n = 16000, 16000 + 1234  # a length that is not a whole number of shifts
    t = np.arange(n) / sr
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + 1500 * t ** 2))
    x = (chirp + 0.2 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(n) + 0.05).astype(np.float32)
    ref = torchaudio_fbank(kaldi, x, sr, bins)
    ours = _ours(x, sr, bins)
    assert ours.shape == ref.shape == (1 + (n - 400) // 160, bins)
    _assert_close(ours, ref)


@pytest.mark.parametrize("n", [200, 201, 279, 280, 281, 8000, 12345])
def test_frame_count_at_8k(n):
    x = np.random.default_rng(n).standard_normal(n)
    assert fb.fbank(x, 8000).shape == (1 + (n - 200) // 80, 128)
    assert fb.num_frames(n, 8000) == 1 + (n - 200) // 80


def test_too_short_gives_no_frames_then_zero_padding():
    out = fb.fbank(np.ones(199), 8000, num_mel_bins=64)
    assert out.shape == (0, 64)
    np.testing.assert_array_equal(fb.pad_or_crop(out, 16), np.zeros((16, 64), np.float32))


def test_pure_tone_peaks_in_its_mel_bin():
    sr, bins, b = 16000, 128, 40
    # Centre of filter b on the HTK mel scale between 20 Hz and Nyquist (hand formula).
    mel = lambda f: 1127 * math.log(1 + f / 700)  # noqa: E731
    step = (mel(8000) - mel(20)) / (bins + 1)
    centre_hz = 700 * (math.exp((mel(20) + (b + 1) * step) / 1127) - 1)
    t = np.arange(sr) / sr
    out = fb.fbank(np.sin(2 * np.pi * centre_hz * t), sr, num_mel_bins=bins)
    assert np.all(np.argmax(out, axis=1) == b)


def test_gain_shifts_log_mel_by_log_gain_squared():
    x = np.random.default_rng(1).standard_normal(4000)
    a, b = fb.fbank(x, 8000, num_mel_bins=64), fb.fbank(3.0 * x, 8000, num_mel_bins=64)
    live = a > LOG_EPS + 1  # away from the floor
    np.testing.assert_allclose((b - a)[live], math.log(9.0), atol=1e-4)


def test_pad_or_crop_and_normalize_by_hand():
    f = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(fb.pad_or_crop(f, 2), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(fb.pad_or_crop(f, 4), [[0, 1], [2, 3], [4, 5], [0, 0]])
    np.testing.assert_allclose(fb.normalize(np.float32([[1.0, 5.0]]), 3.0, 2.0), [[-0.5, 0.5]])
    with pytest.raises(ValueError, match="std"):
        fb.normalize(f, 0.0, 0.0)


def test_fbank_stats_match_torchaudio_features(kaldi, fsdd_all):
    items = [fsdd_all[i] for i in (0, 777, 2999)]
    ref = np.concatenate([np.pad(r[:64], ((0, max(0, 64 - len(r))), (0, 0)))
                          for r in (torchaudio_fbank(kaldi, it["waveform"], 8000, 128) for it in items)])
    mean, std = fb.fbank_stats(items, sample_rate=8000, num_mel_bins=128, target_length=64)
    assert mean == pytest.approx(float(ref.mean()), abs=1e-3)
    assert std == pytest.approx(float(ref.std(ddof=1)), abs=1e-3)
    with pytest.raises(ValueError, match="16000"):
        fb.fbank_stats(items, sample_rate=16000, num_mel_bins=128, target_length=64)


def test_bad_arguments():
    with pytest.raises(ValueError, match="1-D"):
        fb.fbank(np.zeros((2, 400)), 8000)
    with pytest.raises(ValueError, match="frame_length_ms"):
        fb.fbank(np.zeros(400), 8000, frame_length_ms=0.1)
