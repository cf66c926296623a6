"""The audio modality: AudioMAE log-mel spectrograms from FSDD, WAV folders or prepared TFDS.

Reads the ``data`` fields of `maskjax.config.audio_base_config`; a method with
``modality = "audio"`` gets its batches ``{"spectrogram": f32[b, T, F, 1], "label": i32[b]}``
from here.
"""

from __future__ import annotations

import os

from maskjax.data.audio.sources import AUDIO_KINDS
from maskjax.data.modalities import Modality, register_modality

# 16x16 patches tile the (time, frequency) plane exactly only for multiples of 16.
PATCH = 16


@register_modality("audio")
class AudioModality(Modality):
    """Kaldi fbank spectrograms through `maskjax.data.audio.pipeline.make_audio_pipeline`."""

    def open_source(self, config, split: str):
        """``data.path`` at ``data.split`` for "train"; ``data.eval_path`` (or path) at ``data.eval_split``."""
        from maskjax.data.audio.sources import open_audio_source

        d = config.data
        path = d.path if split == "train" else (d.eval_path or d.path)
        name = d.split if split == "train" else d.eval_split
        return open_audio_source(d.kind, path=path, split=name, name=d.name, data_dir=d.data_dir)

    def make_pipeline(self, config, source, *, train: bool):
        """Roll + gain (``data.roll_mag_aug``) and SpecAugment (``data.freqm/timem``) on train only."""
        from maskjax.data.audio.pipeline import make_audio_pipeline, pipeline_kwargs

        d = config.data
        return make_audio_pipeline(source, global_batch=config.global_batch, train=train, seed=d.shuffle_seed,
                                   num_workers=d.num_workers, **pipeline_kwargs(d, train=train))

    def batch_spec(self, config) -> dict:
        """``spectrogram`` f32[B, frames, mel bins, 1] and ``label`` i32[B]."""
        import jax
        import jax.numpy as jnp

        b, frames, bins = int(config.global_batch), int(config.data.target_length), int(config.data.num_mel_bins)
        return {"spectrogram": jax.ShapeDtypeStruct((b, frames, bins, 1), jnp.float32),
                "label": jax.ShapeDtypeStruct((b,), jnp.int32)}

    def take_examples(self, config, source, indices):
        """Eval-preprocessed spectrograms [n, T, F, 1] and int labels (no augmentation)."""
        from maskjax.data.audio.pipeline import take_spectrograms

        return take_spectrograms(source, indices, config.data)

    def check(self, config, errors: list[str]) -> None:
        """Source fields, spectrogram size vs 16x16 patches, normalisation and augmentation fields."""
        d = config.data
        if d.kind in ("fsdd", "wav_folder"):
            for field in ("path", "eval_path"):
                path = d.get(field)
                if field == "path" and not path:
                    errors.append(f"data.path is not set (data.kind={d.kind!r} reads recordings from it)")
                elif path and not os.path.exists(path):
                    errors.append(f"data.{field} {path!r} does not exist")
        elif d.kind == "tfds_audio":
            if not d.get("name"):
                errors.append("data.name is not set (data.kind='tfds_audio' needs a TFDS dataset name, "
                              "e.g. 'spoken_digit')")
        else:
            errors.append(f"unknown data.kind {d.kind!r} for audio; use one of {AUDIO_KINDS}")
        for field in ("target_length", "num_mel_bins"):
            value = d.get(field)
            if not isinstance(value, int) or value <= 0 or value % PATCH:
                errors.append(f"data.{field}={value!r} must be a positive multiple of {PATCH} (16x16 patches)")
        if not (d.get("norm_std") or 0) > 0:
            errors.append(f"data.norm_std={d.get('norm_std')!r} must be > 0")
        if not (d.get("sample_rate") or 0) > 0:
            errors.append(f"data.sample_rate={d.get('sample_rate')!r} must be > 0")
        for field in ("frame_length_ms", "frame_shift_ms"):
            if not (d.get(field) or 0) > 0:
                errors.append(f"data.{field}={d.get(field)!r} must be > 0")
        for field in ("freqm", "timem"):
            value = d.get(field) or 0
            if value < 0:
                errors.append(f"data.{field}={value} must be >= 0")
        if (d.get("freqm") or 0) > (d.get("num_mel_bins") or 0):
            errors.append(f"data.freqm={d.freqm} is wider than data.num_mel_bins={d.num_mel_bins}")
        if (d.get("timem") or 0) > (d.get("target_length") or 0):
            errors.append(f"data.timem={d.timem} is longer than data.target_length={d.target_length}")
