"""grain pipeline of AudioMAE spectrogram batches (``dataset.py::AudiosetDataset`` in numpy).

Per example: sample-rate check -> mean removal -> (train) roll + gain augmentation -> Kaldi
fbank -> zero-pad / crop to ``target_length`` frames -> (train) SpecAugment frequency and time
masks -> ``(fbank - mean) / (2 std)``. Batches are ``{"spectrogram": f32[b, T, F, 1],
"label": i32[b]}``: NHWC with time as the height, so 16x16 patches come out time-major like
AudioMAE's tokens (its (N, 1, T, F) input). The order pad/crop -> SpecAugment -> normalise is
AudioMAE's: masks are drawn over the padded length and fill with 0 before normalisation.

Random transforms are grain ``RandomMap`` s seeded from (seed, process, stream) and the
element index, so a run is reproducible and its iterator state (``get_state`` /
``set_state``) resumes it exactly.
"""

from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from maskjax.data.audio.fbank import fbank, normalize, pad_or_crop
from maskjax.data.pipeline import _process_seed, batch_and_iterate, process_shard

# AudioSet statistics (AudioMAE's defaults; config_media.audio_base_config).
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974


class PrepareWaveform(grain.transforms.Map):
    """Checks the sample rate and removes the waveform's mean (float64 from here on).

    A file at another rate raises: resampling silently would change the features the
    normalisation statistics and the model were made for.
    """

    def __init__(self, sample_rate: int):
        self.sample_rate = int(sample_rate)

    def map(self, element: dict) -> dict:
        """Returns ``{"waveform": f64[n] zero-mean, "label"}``."""
        rate = int(element["sample_rate"])
        if rate != self.sample_rate:
            raise ValueError(f"a recording has sample rate {rate} Hz but data.sample_rate is {self.sample_rate} Hz; "
                             "resample the dataset or set data.sample_rate (no silent resampling)")
        x = np.asarray(element["waveform"], np.float64).reshape(-1)
        if x.size:
            x = x - x.mean()
        return {"waveform": x, "label": element["label"]}


def roll_mag(waveform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """AudioMAE's ``_roll_mag_aug``: circular roll by ``randint(n)`` samples, gain Beta(10,10)+0.5.

    The official code calls ``len()`` on a (1, n) array, so its roll is always by 0 and only
    the gain acts; this rolls over the samples as the method describes (spec section 8).
    """
    shift = int(rng.integers(len(waveform))) if len(waveform) else 0
    gain = rng.beta(10.0, 10.0) + 0.5
    return np.roll(waveform, shift) * gain


class RollMagAug(grain.transforms.RandomMap):
    """`roll_mag` on ``element["waveform"]`` (training only)."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Returns the element with its waveform rolled and scaled."""
        return {**element, "waveform": roll_mag(element["waveform"], rng)}


class ToFbank(grain.transforms.Map):
    """Waveform -> Kaldi fbank, zero-padded / cropped to ``target_length`` frames (``f32[T, F]``)."""

    def __init__(self, sample_rate: int, num_mel_bins: int, target_length: int, frame_length_ms: float,
                 frame_shift_ms: float):
        self.sample_rate, self.num_mel_bins = int(sample_rate), int(num_mel_bins)
        self.target_length = int(target_length)
        self.frame_length_ms, self.frame_shift_ms = float(frame_length_ms), float(frame_shift_ms)

    def map(self, element: dict) -> dict:
        """Returns ``{"spectrogram": f32[T, F], "label"}``."""
        features = fbank(element["waveform"], self.sample_rate, num_mel_bins=self.num_mel_bins,
                         frame_length_ms=self.frame_length_ms, frame_shift_ms=self.frame_shift_ms)
        return {"spectrogram": pad_or_crop(features, self.target_length), "label": element["label"]}


def mask_along_axis(spec: np.ndarray, mask_param: int, axis: int, rng: np.random.Generator) -> np.ndarray:
    """torchaudio's ``FrequencyMasking`` / ``TimeMasking`` (one mask, ``iid_masks=False``, value 0).

    ``value = U * mask_param``, ``start = int(U * (size - value))``, ``end = start + int(value)``:
    one band of width uniform in [0, mask_param) at a uniform start, set to 0.
    """
    size = spec.shape[axis]
    value = rng.random() * mask_param
    start = int(rng.random() * (size - value))
    end = start + int(value)
    if end <= start:
        return spec
    out = spec.copy()
    index = [slice(None)] * spec.ndim
    index[axis] = slice(start, end)
    out[tuple(index)] = 0.0
    return out


class SpecAugment(grain.transforms.RandomMap):
    """AudioMAE fine-tuning masks on ``f32[T, F]``: a frequency band (``freqm``) then a time band (``timem``)."""

    def __init__(self, freqm: int, timem: int):
        if freqm < 0 or timem < 0:
            raise ValueError(f"freqm and timem must be >= 0, got {freqm}, {timem}")
        self.freqm, self.timem = int(freqm), int(timem)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Returns the element with its spectrogram masked."""
        spec = element["spectrogram"]
        if self.freqm:
            spec = mask_along_axis(spec, self.freqm, 1, rng)
        if self.timem:
            spec = mask_along_axis(spec, self.timem, 0, rng)
        return {**element, "spectrogram": spec}


class NormalizeSpectrogram(grain.transforms.Map):
    """``(fbank - mean) / (2 std)`` and a channel axis: ``{"spectrogram": f32[T, F, 1], "label": i32}``."""

    def __init__(self, mean: float, std: float):
        if not std > 0:
            raise ValueError(f"norm_std must be positive, got {std}")
        self.mean, self.std = float(mean), float(std)

    def map(self, element: dict) -> dict:
        """Returns exactly the two batch keys (sources may carry extra ones)."""
        spec = normalize(element["spectrogram"], self.mean, self.std)[..., None]
        return {"spectrogram": spec, "label": np.int32(element["label"])}


def make_audio_pipeline(
    source: Any,
    *,
    global_batch: int,
    train: bool,
    seed: int,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    target_length: int = 1024,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    norm_mean: float = AUDIOSET_MEAN,
    norm_std: float = AUDIOSET_STD,
    roll_mag_aug: bool = True,
    freqm: int = 0,
    timem: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
    """This process's pipeline of ``{"spectrogram": f32[b, T, F, 1], "label": i32[b]}`` batches.

    Args:
      source: a random-access source of ``{"waveform", "sample_rate", "label"}`` items.
      global_batch: batch summed over processes (divisible by ``process_count``).
      train: shuffle (per-process seed), augment and repeat; else one ordered pass, no
        augmentation.
      seed: seeds shuffling and every random transform.
      sample_rate: the rate every recording must have (checked, never resampled).
      num_mel_bins, target_length, frame_length_ms, frame_shift_ms: the fbank (``T`` =
        ``target_length``, ``F`` = ``num_mel_bins``).
      norm_mean, norm_std: dataset statistics (`maskjax.data.audio.fbank.fbank_stats`).
      roll_mag_aug: AudioMAE's roll + gain waveform augmentation (train only).
      freqm, timem: SpecAugment widths (train only; 0 = off).
      process_index, process_count, num_workers, num_epochs, drop_remainder, read_options: as
        in `maskjax.data.pipeline.make_image_pipeline`.
    """
    for name, value in (("num_mel_bins", num_mel_bins), ("target_length", target_length), ("sample_rate", sample_rate)):
        if int(value) <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    ds, process_index, per_process_batch = process_shard(
        source, global_batch=global_batch, seed=seed, process_index=process_index, process_count=process_count,
        num_epochs=num_epochs, num_workers=num_workers, drop_remainder=drop_remainder, unit="recordings")
    if train:
        ds = ds.shuffle(seed=_process_seed(seed, process_index, 0))
    ds = ds.map(PrepareWaveform(sample_rate))
    if train and roll_mag_aug:
        ds = ds.random_map(RollMagAug(), seed=_process_seed(seed, process_index, 1))
    ds = ds.map(ToFbank(sample_rate, num_mel_bins, target_length, frame_length_ms, frame_shift_ms))
    if train and (freqm or timem):
        ds = ds.random_map(SpecAugment(freqm, timem), seed=_process_seed(seed, process_index, 2))
    ds = ds.map(NormalizeSpectrogram(norm_mean, norm_std))
    return batch_and_iterate(ds, per_process_batch, train=train, num_epochs=num_epochs, num_workers=num_workers,
                             drop_remainder=drop_remainder, read_options=read_options)


def pipeline_kwargs(config_data, *, train: bool) -> dict:
    """`make_audio_pipeline` keywords from ``config.data`` (evaluation: no augmentation)."""
    d = config_data
    return dict(sample_rate=d.sample_rate, num_mel_bins=d.num_mel_bins, target_length=d.target_length,
                frame_length_ms=d.frame_length_ms, frame_shift_ms=d.frame_shift_ms, norm_mean=d.norm_mean,
                norm_std=d.norm_std, roll_mag_aug=bool(d.roll_mag_aug) and train,
                freqm=int(d.freqm) if train else 0, timem=int(d.timem) if train else 0)


def take_spectrograms(source: Any, indices: Sequence[int], config_data) -> tuple[np.ndarray, np.ndarray]:
    """Eagerly loads ``source[indices]`` with eval preprocessing (small subsets only).

    Returns ``(x f32[n, T, F, 1] normalised, y i32[n])`` for linear probes and reconstruction
    figures; the counterpart of `maskjax.data.pipeline.take_arrays`.
    """
    kw = pipeline_kwargs(config_data, train=False)
    steps = [PrepareWaveform(kw["sample_rate"]),
             ToFbank(kw["sample_rate"], kw["num_mel_bins"], kw["target_length"], kw["frame_length_ms"],
                     kw["frame_shift_ms"]),
             NormalizeSpectrogram(kw["norm_mean"], kw["norm_std"])]
    indices = [int(i) for i in indices]
    x = np.zeros((len(indices), kw["target_length"], kw["num_mel_bins"], 1), np.float32)
    y = np.zeros((len(indices),), np.int32)
    for row, index in enumerate(indices):
        item = source[index]
        for step in steps:
            item = step.map(item)
        x[row], y[row] = item["spectrogram"], item["label"]
    return x, y
