"""grain pipelines of video clips for pre-training and evaluation.

Training: source -> per-process shard -> shuffle -> sample a clip (VideoMAE's
``_sample_train_indices``; only its frames are decoded) -> GroupMultiScaleCrop (or resize +
center crop with ``augment="none"``) -> normalise -> batch. Evaluation: one ordered pass over
the central test clip, resized (shorter side) and center-cropped. Batches are
``{"video": f32[b, num_frames, image_size, image_size, 3], "label": i32[b]}``.

Every random step is a ``random_map`` with an explicit per-process seed (as the image pipeline),
so the stream is a function of ``(seed, process, element index)`` and the iterator resumes
exactly from ``get_state()`` (with the same ``num_workers``: see ``maskjax.data.pipeline``).
"""
from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from maskjax.data.pipeline import _process_seed, batch_and_iterate, process_shard
from maskjax.data.video.sampling import eval_clip_indices, eval_views, train_clip_indices
from maskjax.data.video.sources import clip_reader
from maskjax.data.video.transforms import (
    GroupMultiScaleCrop,
    NormalizeVideo,
    ResizeCenterCropVideo,
    normalize_frames,
    resize_frames,
    short_side_center_crop,
)

VIDEO_AUGMENTATIONS = ("multiscale_crop", "none")


def _check_clip_args(num_frames: int, sampling_rate: int, image_size: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling_rate < 1:
        raise ValueError(f"sampling_rate must be >= 1, got {sampling_rate}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")


class SampleTrainClip(grain.transforms.RandomMap):
    """Reads the frames of one random pre-training clip (`train_clip_indices`) of an item."""

    def __init__(self, num_frames: int, sampling_rate: int):
        self.num_frames, self.sampling_rate = int(num_frames), int(sampling_rate)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """``{"frames": uint8[num_frames, H, W, 3], "label"}`` of a random clip."""
        reader = clip_reader(element)
        idx = train_clip_indices(rng, reader.num_frames, self.num_frames, self.sampling_rate)
        return {"frames": reader.read(idx), "label": element["label"]}


class SampleCenterClip(grain.transforms.Map):
    """Reads the frames of the central test clip (one-segment dense sampling) of an item."""

    def __init__(self, num_frames: int, sampling_rate: int):
        self.num_frames, self.sampling_rate = int(num_frames), int(sampling_rate)

    def map(self, element: dict) -> dict:
        """``{"frames": uint8[num_frames, H, W, 3], "label"}`` of the central clip."""
        reader = clip_reader(element)
        (idx,) = eval_clip_indices(reader.num_frames, self.num_frames, self.sampling_rate, 1)
        return {"frames": reader.read(idx), "label": element["label"]}


def make_video_pipeline(
    source: Any,
    *,
    global_batch: int,
    train: bool,
    seed: int,
    num_frames: int = 16,
    sampling_rate: int = 4,
    image_size: int = 224,
    augment: str = "multiscale_crop",
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
    """This process's pipeline of ``{"video": f32[b, T, S, S, 3], "label": i32[b]}`` batches.

    Args:
      source: a video source (`maskjax.data.video.sources`).
      global_batch: clips per step over all processes (divisible by ``process_count``).
      train: shuffle, random clips, augmentation and repeat forever (unless ``num_epochs``);
        else one ordered pass of central clips with eval preprocessing.
      seed: seeds the shuffle, the clip sampling and the crops.
      num_frames, sampling_rate: clip length and frame stride (VideoMAE: 16 and 4).
      image_size: output side ``S``.
      augment: ``"multiscale_crop"`` (VideoMAE's GroupMultiScaleCrop, no flip) or ``"none"``
        (resize + center crop); evaluation always uses the latter.
      process_index, process_count, num_workers, num_epochs, drop_remainder, read_options: as
        `maskjax.data.pipeline.make_image_pipeline`.
    """
    _check_clip_args(num_frames, sampling_rate, image_size)
    if augment not in VIDEO_AUGMENTATIONS:
        raise ValueError(f"unknown video augment {augment!r}; expected one of {', '.join(VIDEO_AUGMENTATIONS)}")
    ds, process_index, per_process_batch = process_shard(
        source, global_batch=global_batch, seed=seed, process_index=process_index, process_count=process_count,
        num_epochs=num_epochs, num_workers=num_workers, drop_remainder=drop_remainder, unit="videos")
    if train:
        ds = ds.shuffle(seed=_process_seed(seed, process_index, 0))
        ds = ds.random_map(SampleTrainClip(num_frames, sampling_rate), seed=_process_seed(seed, process_index, 1))
    else:
        ds = ds.map(SampleCenterClip(num_frames, sampling_rate))
    if train and augment == "multiscale_crop":
        ds = ds.random_map(GroupMultiScaleCrop(image_size), seed=_process_seed(seed, process_index, 2))
    else:
        ds = ds.map(ResizeCenterCropVideo(image_size))
    ds = ds.map(NormalizeVideo())
    return batch_and_iterate(ds, per_process_batch, train=train, num_epochs=num_epochs, num_workers=num_workers,
                             drop_remainder=drop_remainder, read_options=read_options)


def _field(config_data, name: str, default=None):
    value = config_data.get(name, default) if hasattr(config_data, "get") else getattr(config_data, name, default)
    return default if value is None else value


def take_clips(source: Any, indices: Sequence[int], config_data) -> tuple[np.ndarray, np.ndarray]:
    """Eagerly loads the central clips of ``source[indices]`` with eval preprocessing.

    Reads ``num_frames``, ``sampling_rate`` and ``image_size`` from ``config_data`` (the
    ``config.data`` section). Returns ``(f32[n, T, S, S, 3] normalised, i32[n] labels)``.
    """
    num_frames, rate = int(_field(config_data, "num_frames")), int(_field(config_data, "sampling_rate"))
    size = int(_field(config_data, "image_size"))
    _check_clip_args(num_frames, rate, size)
    sample = SampleCenterClip(num_frames, rate)
    indices = [int(i) for i in indices]
    videos = np.zeros((len(indices), num_frames, size, size, 3), np.float32)
    labels = np.zeros((len(indices),), np.int32)
    for row, index in enumerate(indices):
        clip = sample.map(source[index])
        videos[row] = normalize_frames(short_side_center_crop(clip["frames"], size))
        labels[row] = clip["label"]
    return videos, labels


def clip_views(item: dict, *, num_frames: int, sampling_rate: int, image_size: int, test_clips: int,
               test_crops: int) -> np.ndarray:
    """The ``test_clips * test_crops`` test views of one item as uint8[V, T, S, S, 3] (clip-major).

    Every distinct frame is decoded and resized once, then each view gathers its frames and crop.
    """
    reader = clip_reader(item)
    views = eval_views(reader.num_frames, reader.height, reader.width, num_frames=num_frames,
                       sampling_rate=sampling_rate, short_side=image_size, test_num_segment=test_clips,
                       test_num_crop=test_crops)
    wanted = np.unique(np.concatenate([v.indices for v in views]))
    frames = resize_frames(reader.read(wanted), *views[0].resize_hw)
    out = []
    for view in views:
        top, left, h, w = view.box
        clip = frames[np.searchsorted(wanted, view.indices)]
        out.append(clip[:, top:top + h, left:left + w])
    return np.stack(out)


def take_views(source: Any, indices: Sequence[int], config_data) -> tuple[np.ndarray, np.ndarray]:
    """Multi-view test inputs: ``(f32[n, V, T, S, S, 3], i32[n])`` with ``V = test_clips * test_crops``.

    The views of VideoMAE's ``kinetics.py`` test mode (`maskjax.data.video.sampling.eval_views`);
    an evaluator averages its predictions over the view axis.
    """
    num_frames, rate = int(_field(config_data, "num_frames")), int(_field(config_data, "sampling_rate"))
    size = int(_field(config_data, "image_size"))
    clips, crops = int(_field(config_data, "test_clips", 1)), int(_field(config_data, "test_crops", 1))
    _check_clip_args(num_frames, rate, size)
    if clips < 1 or crops < 1:
        raise ValueError(f"data.test_clips and data.test_crops must be >= 1, got {clips}, {crops}")
    indices = [int(i) for i in indices]
    videos = np.zeros((len(indices), clips * crops, num_frames, size, size, 3), np.float32)
    labels = np.zeros((len(indices),), np.int32)
    for row, index in enumerate(indices):
        item = source[index]
        videos[row] = normalize_frames(clip_views(item, num_frames=num_frames, sampling_rate=rate, image_size=size,
                                                  test_clips=clips, test_crops=crops))
        labels[row] = item["label"]
    return videos, labels
