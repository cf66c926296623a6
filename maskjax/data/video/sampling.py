"""Which frames (and which crop) of a video form a clip: the official VideoMAE sampling, exactly.

Pre-training (`train_clip_indices`) transcribes MCG-NJU/VideoMAE's ``VideoMAE`` dataset class
(``datasets.py`` imports it from ``kinetics.py``; also published as ``video_mae.py``), itself
gluon-cv's ``VideoClsCustom``: ``_sample_train_indices`` followed by
``_video_TSN_decord_batch_loader``. (That file is not in our code index; the methods were read
in gluon-cv's original and in VideoMAE-derived copies, which agree line for line.) With
``new_length = num_frames``, ``new_step = sampling_rate``, ``skip_length = new_length *
new_step`` and no temporal jitter (``temporal_jitter=False`` in ``datasets.py::
build_pretraining_dataset``). With one segment a clip is ``num_frames`` frames ``sampling_rate``
apart from a uniformly random start; a video shorter than ``skip_length`` starts at frame 0 and
stops advancing at its end, repeating its last reachable frame. The only change is the random
number generator: numpy's ``Generator`` instead of the global ``np.random`` state, so clips are
reproducible per example.

Testing (`eval_views`) transcribes ``kinetics.py::VideoClsDataset`` in ``mode='test'``
(``loadvideo_decord`` + ``__getitem__``, read in identical copies as above): take every ``sampling_rate``-th frame of the whole
video (padding with the last index up to ``num_frames``), cut ``test_num_segment`` clips of
``num_frames`` consecutive entries evenly spaced from the first to the last possible start,
resize the shorter side to ``short_side_size`` and cut ``test_num_crop`` square crops evenly
spaced along the longer side. The evaluator averages the predictions of the
``test_num_segment x test_num_crop`` views (5 x 3 for Kinetics). The official code divides by
``test_num_segment - 1`` and ``test_num_crop - 1``; for a single clip or crop we take the
centered one (as later VideoMAE versions do for ``test_num_crop == 1``).
"""
from __future__ import annotations

import dataclasses

import numpy as np


def train_clip_indices(rng: np.random.Generator, num_video_frames: int, num_frames: int = 16,
                       sampling_rate: int = 4, num_segments: int = 1) -> np.ndarray:
    """0-based frame indices int64[num_segments * num_frames] of one pre-training clip.

    Args:
      rng: the random generator (one integer draw per segment).
      num_video_frames: frames in the video (decord's ``len(vr)``).
      num_frames: frames per clip (the official ``new_length``; 16).
      sampling_rate: stride between sampled frames (``new_step``; 4 on K400, 2 on SSv2).
      num_segments: TSN segments (1 in every VideoMAE recipe).
    """
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_video_frames={num_video_frames}")
    if num_frames < 1 or sampling_rate < 1 or num_segments < 1:
        raise ValueError(f"num_frames, sampling_rate and num_segments must be >= 1, got "
                         f"{num_frames}, {sampling_rate}, {num_segments}")
    n, span = num_video_frames, num_frames * sampling_rate
    # _sample_train_indices: 1-based segment starts.
    per_segment = (n - span + 1) // num_segments
    if per_segment > 0:
        starts = np.arange(num_segments) * per_segment + rng.integers(per_segment, size=num_segments)
    elif n > max(num_segments, span):
        starts = np.sort(rng.integers(n - span + 1, size=num_segments))
    else:
        starts = np.zeros(num_segments, dtype=np.int64)
    starts = starts.astype(np.int64) + 1
    # _video_TSN_decord_batch_loader without jitter: from the 1-based start, frame `start - 1`;
    # the position advances by `sampling_rate` only while the next one stays below n (1-based),
    # so short videos repeat their last reachable frame.
    clips = []
    for start in starts:
        # Number of advances k such that start + k * rate < n, capped at num_frames - 1.
        advances = 0 if start + sampling_rate >= n else min(num_frames - 1, (n - 1 - start) // sampling_rate)
        steps = np.minimum(np.arange(num_frames), advances)
        clips.append(start - 1 + steps * sampling_rate)
    return np.concatenate(clips).astype(np.int64)


def eval_clip_starts(num_entries: int, num_frames: int, num_clips: int) -> list[int]:
    """Start positions (into the strided index list) of the ``num_clips`` evenly spaced test clips."""
    if num_clips < 1:
        raise ValueError(f"test_num_segment must be >= 1, got {num_clips}")
    slack = num_entries - num_frames
    if num_clips == 1:
        return [int(max(slack, 0) / 2.0)]
    step = max(1.0 * slack / (num_clips - 1), 0)
    return [int(chunk * step) for chunk in range(num_clips)]


def eval_clip_indices(num_video_frames: int, num_frames: int = 16, sampling_rate: int = 4,
                      test_num_segment: int = 5) -> list[np.ndarray]:
    """The frame indices of each temporal test clip (``kinetics.py`` dense sampling)."""
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_video_frames={num_video_frames}")
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"num_frames and sampling_rate must be >= 1, got {num_frames}, {sampling_rate}")
    strided = list(range(0, num_video_frames, sampling_rate))
    strided += [strided[-1]] * max(num_frames - len(strided), 0)
    strided = np.asarray(strided, np.int64)
    return [strided[s:s + num_frames] for s in eval_clip_starts(len(strided), num_frames, test_num_segment)]


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``short_side`` (VideoMAE's
    ``video_transforms.get_resize_sizes``: the longer side is truncated with int())."""
    if width < height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def eval_crop_boxes(height: int, width: int, short_side: int, test_num_crop: int = 3
                    ) -> tuple[tuple[int, int], list[tuple[int, int, int, int]]]:
    """``((resized_h, resized_w), [(top, left, size, size), ...])`` of the spatial test crops.

    Boxes are in the coordinates of the frame resized to shorter side ``short_side`` and spaced
    evenly along its longer side (``kinetics.py`` ``spatial_step``/``spatial_start``).
    """
    if test_num_crop < 1:
        raise ValueError(f"test_num_crop must be >= 1, got {test_num_crop}")
    new_h, new_w = resized_size(height, width, short_side)
    longer = max(new_h, new_w)
    if test_num_crop == 1:
        starts = [int(1.0 * (longer - short_side) / 2)]
    else:
        step = 1.0 * (longer - short_side) / (test_num_crop - 1)
        starts = [int(split * step) for split in range(test_num_crop)]
    if new_h >= new_w:
        boxes = [(s, 0, short_side, short_side) for s in starts]
    else:
        boxes = [(0, s, short_side, short_side) for s in starts]
    return (new_h, new_w), boxes


@dataclasses.dataclass(frozen=True)
class View:
    """One test view: which frames, the size to resize them to, and the crop box in that size."""

    indices: np.ndarray                  # int64[num_frames]
    resize_hw: tuple[int, int]           # (height, width) after the short-side resize
    box: tuple[int, int, int, int]       # (top, left, height, width)


def eval_views(num_video_frames: int, height: int, width: int, *, num_frames: int = 16, sampling_rate: int = 4,
               short_side: int = 224, test_num_segment: int = 5, test_num_crop: int = 3) -> list[View]:
    """All ``test_num_segment * test_num_crop`` views of a video, clip-major as the official order."""
    clips = eval_clip_indices(num_video_frames, num_frames, sampling_rate, test_num_segment)
    size, boxes = eval_crop_boxes(height, width, short_side, test_num_crop)
    return [View(indices=c, resize_hw=size, box=b) for c in clips for b in boxes]
