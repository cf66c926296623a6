"""The ``"video"`` modality: how the trainer opens, samples and batches video clips.

Train data is ``data.path`` at ``data.split``; evaluation data is ``data.eval_path`` (or
``data.path``) at ``data.eval_split``. Kinds: ``video_folder``, ``array_record_video``,
``tfds_video``, ``moving_cifar`` (`maskjax.data.video.sources.open_video_source`). Moving-CIFAR
clips are generated with ``num_frames x sampling_rate`` frames so one sampled clip spans a whole
generated clip. Heavy imports (PyAV, grain pipelines) happen inside the methods.
"""
from __future__ import annotations

import os

from maskjax.data.modalities import Modality, register_modality

VIDEO_KINDS = ("video_folder", "array_record_video", "tfds_video", "moving_cifar")
# Moving-CIFAR generator options a config may set as ``data.<name>``.
_MOVING_CIFAR_OPTIONS = ("canvas_size", "background", "distractor", "min_speed", "max_speed")


def _split_args(config, split: str) -> tuple[str | None, str]:
    d = config.data
    if split == "train":
        return d.path, d.split
    return d.eval_path or d.path, d.eval_split


@register_modality("video")
class VideoModality(Modality):
    """Video clips for VideoMAE / VideoMAE V2 / MAE-ST (``maskjax.data.video``)."""

    def open_source(self, config, split: str):
        """The source of ``split`` ("train" or "eval") from ``config.data``."""
        from maskjax.data.video.sources import open_video_source

        d = config.data
        path, name = _split_args(config, split)
        opts = {}
        if d.kind == "moving_cifar":
            opts = {k: d[k] for k in _MOVING_CIFAR_OPTIONS if k in d and d[k] is not None}
            opts["num_frames"] = int(d.num_frames) * int(d.sampling_rate)
            # A fixed generator seed: the clips are the data set, not part of the shuffling.
            opts["seed"] = 0 if split == "train" else 1
        return open_video_source(d.kind, path=path, split=name, name=d.name, data_dir=d.data_dir, **opts)

    def make_pipeline(self, config, source, *, train: bool):
        """`make_video_pipeline` with ``data.augment`` on the training split."""
        from maskjax.data.video.pipeline import make_video_pipeline

        d = config.data
        return make_video_pipeline(source, global_batch=config.global_batch, train=train, seed=d.shuffle_seed,
                                   num_frames=d.num_frames, sampling_rate=d.sampling_rate, image_size=d.image_size,
                                   augment=d.augment if train else "none", num_workers=d.num_workers)

    def batch_spec(self, config) -> dict:
        """``video`` f32[B, T, S, S, 3] and ``label`` i32[B]."""
        import jax
        import jax.numpy as jnp

        b, t, s = int(config.global_batch), int(config.data.num_frames), int(config.data.image_size)
        return {"video": jax.ShapeDtypeStruct((b, t, s, s, 3), jnp.float32),
                "label": jax.ShapeDtypeStruct((b,), jnp.int32)}

    def take_examples(self, config, source, indices):
        """Central clips f32[n, T, S, S, 3] (eval preprocessing) and int labels."""
        from maskjax.data.video.pipeline import take_clips

        return take_clips(source, indices, config.data)

    def take_views(self, config, source, indices):
        """``data.test_clips x data.test_crops`` views per video: f32[n, V, T, S, S, 3] and labels."""
        from maskjax.data.video.pipeline import take_views

        return take_views(source, indices, config.data)

    def check(self, config, errors: list[str]) -> None:
        """Kind, paths, clip length vs ``model.tubelet_size``, positive sizes, augmentation."""
        from maskjax.data.video.pipeline import VIDEO_AUGMENTATIONS

        d = config.data
        if d.kind not in VIDEO_KINDS:
            errors.append(f"unknown data.kind {d.kind!r} for video; use one of {VIDEO_KINDS}")
        elif d.kind in ("video_folder", "array_record_video"):
            if not d.get("path"):
                errors.append(f"data.path is not set (data.kind={d.kind!r} reads videos from it)")
            for field in ("path", "eval_path"):
                path = d.get(field)
                if path and not os.path.exists(path):
                    errors.append(f"data.{field} {path!r} does not exist")
        elif d.kind == "moving_cifar":
            for field in ("path", "eval_path"):  # unset = the embedded CIFAR-10 subset
                path = d.get(field)
                if path and not os.path.exists(path):
                    errors.append(f"data.{field} {path!r} does not exist (moving_cifar reads CIFAR-10 from it)")
        elif d.kind == "tfds_video" and not d.get("name"):
            errors.append("data.name is not set (data.kind='tfds_video' needs a TFDS dataset name)")
        for field in ("num_frames", "sampling_rate", "image_size"):
            value = d.get(field)
            if not isinstance(value, int) or value < 1:
                errors.append(f"data.{field} must be a positive integer, got {value!r}")
        tubelet = config.model.get("tubelet_size") if "model" in config else None
        if isinstance(d.get("num_frames"), int) and tubelet and d.num_frames % tubelet:
            errors.append(f"data.num_frames={d.num_frames} is not divisible by model.tubelet_size={tubelet}")
        if d.get("augment") not in VIDEO_AUGMENTATIONS:
            errors.append(f"unknown data.augment {d.get('augment')!r} for video; use one of {VIDEO_AUGMENTATIONS}")
        for field in ("test_clips", "test_crops"):
            value = d.get(field, 1)
            if not isinstance(value, int) or value < 1:
                errors.append(f"data.{field} must be a positive integer, got {value!r}")
