"""Throughput of the real audio input pipeline (read WAV -> augment -> fbank -> batch)."""

from __future__ import annotations

import time

from maskjax.data.audio.pipeline import make_audio_pipeline, pipeline_kwargs
from maskjax.data.audio.sources import open_audio_source


def audio_pipeline_throughput(config_data, *, batches: int = 20, global_batch: int = 64, num_workers: int = 0,
                              train: bool = True, warmup: int = 1) -> dict:
    """Spectrograms per second of the training pipeline on ``config_data`` (one process).

    Opens ``data.path`` at ``data.split``, builds `make_audio_pipeline` with the config's
    augmentation, discards ``warmup`` batches (worker start-up, first reads) and times the next
    ``batches``. Returns ``dict(spectrograms_per_s, batches_per_s, seconds, batches, global_batch,
    num_workers, target_length, num_mel_bins, sample_rate, first_batch_s)``.
    """
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()  # grain workers read absl flags outside absl.app.run
    d = config_data
    source = open_audio_source(d.kind, path=d.path, split=d.split, name=d.name, data_dir=d.data_dir)
    ds = make_audio_pipeline(source, global_batch=global_batch, train=train, seed=d.shuffle_seed,
                             process_index=0, process_count=1, num_workers=num_workers,
                             num_epochs=None if train else 1, **pipeline_kwargs(d, train=train))
    it = iter(ds)
    start = time.perf_counter()
    for _ in range(warmup):
        next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        batch = next(it)
        seen += int(batch["spectrogram"].shape[0])
    seconds = time.perf_counter() - start
    close = getattr(it, "close", None)
    if callable(close):  # stop grain worker processes now rather than at garbage collection
        close()
    return dict(spectrograms_per_s=seen / seconds, batches_per_s=batches / seconds, seconds=seconds,
                batches=batches, global_batch=global_batch, num_workers=num_workers,
                target_length=int(d.target_length), num_mel_bins=int(d.num_mel_bins),
                sample_rate=int(d.sample_rate), first_batch_s=first)
