"""Audio input for AudioMAE: Kaldi fbank features, WAV / FSDD / TFDS sources, grain pipeline.

The ``"audio"`` `maskjax.data.modalities.Modality` lives in ``maskjax.data.audio.modality``.
"""

# `fbank` the function stays in its module: exporting it here would shadow the submodule.
from maskjax.data.audio.fbank import fbank_stats, mel_banks, normalize, num_frames, pad_or_crop
from maskjax.data.audio.pipeline import make_audio_pipeline, take_spectrograms
from maskjax.data.audio.sources import (
    AUDIO_KINDS,
    FsddSource,
    TfdsAudioSource,
    WavFolderSource,
    open_audio_source,
    read_wav,
)

__all__ = [
    "AUDIO_KINDS", "FsddSource", "TfdsAudioSource", "WavFolderSource", "fbank_stats", "make_audio_pipeline",
    "mel_banks", "normalize", "num_frames", "open_audio_source", "pad_or_crop", "read_wav", "take_spectrograms",
]
