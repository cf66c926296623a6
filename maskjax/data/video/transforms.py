"""Clip transforms: VideoMAE's GroupMultiScaleCrop, the eval resize + crop, and normalisation.

Elements are dicts ``{"frames": uint8[T, H, W, 3], "label": int}`` (other keys pass through);
`NormalizeVideo` turns them into the batchable ``{"video": f32[T, S, S, 3], "label": int32}``.
Every transform is a top-level class so grain can pickle it to worker processes.

`GroupMultiScaleCrop` is MCG-NJU/VideoMAE ``transforms.py::GroupMultiScaleCrop`` (itself from
TSN) with ``max_distort=1, fix_crop=True, more_fix_crop=True``: the crop side is one of
``int(min(H, W) * s)`` for ``s`` in ``scales`` (snapped to ``input_size`` when within 3 pixels),
width and height from scales at most ``max_distort`` apart, placed at one of 13 fixed offsets
(corners, center, edge centers and quarter points); the same box for every frame of the clip,
then a bilinear resize to ``input_size``. No flip (VideoMAE pre-training has none). Python's
``random.choice`` is replaced by a uniform draw from numpy's ``Generator``.
"""
from __future__ import annotations

from typing import Sequence

import grain
import numpy as np
from PIL import Image

from maskjax.data.transforms import IMAGENET_MEAN, IMAGENET_STD

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)
_BILINEAR = Image.Resampling.BILINEAR


def multiscale_crop_sizes(image_w: int, image_h: int, input_size: Sequence[int],
                          scales: Sequence[float] = MULTISCALE_SCALES, max_distort: int = 1) -> list[tuple[int, int]]:
    """The candidate ``(crop_w, crop_h)`` pairs of ``_sample_crop_size`` (duplicates kept: they
    weigh the uniform choice exactly as ``random.choice`` over the official list does)."""
    input_w, input_h = input_size
    base = min(image_w, image_h)
    sizes = [int(base * s) for s in scales]
    crop_h = [input_h if abs(x - input_h) < 3 else x for x in sizes]
    crop_w = [input_w if abs(x - input_w) < 3 else x for x in sizes]
    return [(w, h) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w) if abs(i - j) <= max_distort]


def fixed_crop_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int,
                       more_fix_crop: bool = True) -> list[tuple[int, int]]:
    """``fill_fix_offset``: the 5 (or 13 with ``more_fix_crop``) ``(w_offset, h_offset)`` positions."""
    ws, hs = (image_w - crop_w) // 4, (image_h - crop_h) // 4
    offsets = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
    if more_fix_crop:
        offsets += [(0, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 4 * hs), (2 * ws, 0),
                    (ws, hs), (3 * ws, hs), (ws, 3 * hs), (3 * ws, 3 * hs)]
    return offsets


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (PIL) resize of every frame of uint8[T, H, W, 3] to (height, width)."""
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), _BILINEAR)) for f in frames])


def crop_resize_frames(frames: np.ndarray, box: tuple[int, int, int, int], out_h: int, out_w: int) -> np.ndarray:
    """Crops ``box = (top, left, h, w)`` from every frame, then resizes bilinearly to (out_h, out_w)."""
    top, left, h, w = box
    if top < 0 or left < 0 or top + h > frames.shape[1] or left + w > frames.shape[2]:
        raise ValueError(f"crop box {box} does not fit frames of size {frames.shape[1:3]}")
    crop = np.ascontiguousarray(frames[:, top:top + h, left:left + w])
    return resize_frames(crop, out_h, out_w)


class GroupMultiScaleCrop(grain.transforms.RandomMap):
    """VideoMAE's pre-training crop (module docstring); one box per clip, bilinear resize.

    Args:
      input_size: output side (int) or ``(width, height)`` as in the official code.
      scales: crop sides relative to the shorter frame side.
      max_distort: how many scale steps width and height may differ.
      more_fix_crop: 13 fixed offsets instead of 5.
    """

    def __init__(self, input_size: int | Sequence[int] = 224, scales: Sequence[float] = MULTISCALE_SCALES,
                 max_distort: int = 1, more_fix_crop: bool = True):
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"input_size must be a positive int or (width, height), got {input_size!r}")
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be in (0, 1], got {tuple(scales)}")
        self.input_size = (int(size[0]), int(size[1]))
        self.scales = tuple(float(s) for s in scales)
        self.max_distort = int(max_distort)
        self.more_fix_crop = bool(more_fix_crop)

    def sample_box(self, rng: np.random.Generator, image_w: int, image_h: int) -> tuple[int, int, int, int]:
        """One ``(top, left, crop_h, crop_w)`` box for a clip of ``image_w x image_h`` frames."""
        pairs = multiscale_crop_sizes(image_w, image_h, self.input_size, self.scales, self.max_distort)
        crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
        offsets = fixed_crop_offsets(image_w, image_h, crop_w, crop_h, self.more_fix_crop)
        w_off, h_off = offsets[int(rng.integers(len(offsets)))]
        return h_off, w_off, crop_h, crop_w

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Returns the element with its frames cropped (same box for all) and resized."""
        frames = element["frames"]
        box = self.sample_box(rng, frames.shape[2], frames.shape[1])
        out = dict(element)
        out["frames"] = crop_resize_frames(frames, box, self.input_size[1], self.input_size[0])
        return out


def short_side_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Eval preprocessing: resize the shorter side to ``size`` (bilinear), then a centered
    ``size x size`` crop (VideoMAE's single-view test crop)."""
    from maskjax.data.video.sampling import eval_crop_boxes

    (new_h, new_w), (box,) = eval_crop_boxes(frames.shape[1], frames.shape[2], size, 1)
    resized = resize_frames(frames, new_h, new_w)
    top, left, h, w = box
    return np.ascontiguousarray(resized[:, top:top + h, left:left + w])


class ResizeCenterCropVideo(grain.transforms.Map):
    """`short_side_center_crop` as a grain transform."""

    def __init__(self, size: int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)

    def map(self, element: dict) -> dict:
        """Returns the element with its frames resized and center-cropped to ``size x size``."""
        out = dict(element)
        out["frames"] = short_side_center_crop(element["frames"], self.size)
        return out


def normalize_frames(frames: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8[..., 3] -> f32 ``(x / 255 - mean) / std`` (``ToTorchFormatTensor`` + ``GroupNormalize``)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"normalize_frames expects uint8 frames, got {frames.dtype}")
    # x * (1 / (255 std)) - mean / std, in place: two passes over the float copy instead of four
    # (a 16x224x224 clip is 2.4M values; this step dominated the CPU cost after decoding).
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    shift = (np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
    out = frames.astype(np.float32)
    out *= scale
    out -= shift
    return out


class NormalizeVideo(grain.transforms.Map):
    """``{"frames": uint8, "label"}`` -> ``{"video": f32[T, S, S, 3], "label": int32}`` (ImageNet stats)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def map(self, element: dict) -> dict:
        """Normalises the frames and keeps exactly ``video`` and ``label`` (batchable)."""
        return {"video": normalize_frames(element["frames"], self.mean, self.std),
                "label": np.int32(element["label"])}
