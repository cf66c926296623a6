"""Per-example image transforms for grain pipelines.

Every transform is a top-level class (grain pickles transforms to ship them to worker processes,
so lambdas and closures are not allowed; specs/jax_ecosystem.md gotcha G3). Elements are dicts
``{"image": ..., "label": ...}``; a transform rewrites ``"image"`` and passes every other key
through unchanged.

Images between transforms are ``uint8`` HxWx3 numpy arrays until `Normalize`, which produces
``float32`` HxWx3 (channels last, the layout the models expect).
"""
from __future__ import annotations

import io
import math
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# MAE (and torchvision's default for its recipes) resizes with bicubic interpolation.
_BICUBIC = Image.Resampling.BICUBIC


def to_rgb_uint8(image: Any) -> np.ndarray:
    """Returns ``image`` (encoded bytes, PIL image or array) as a uint8 HxWx3 RGB array.

    Grayscale (HxW or HxWx1) is replicated to three channels and an alpha channel is dropped, so
    every downstream transform can rely on exactly three channels.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(bytes(image))) as pil:
            # convert() also forces the lazy decode while the buffer is still open.
            return np.asarray(pil.convert("RGB"), dtype=np.uint8)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        # Only integer pixel values in [0, 255] are meaningful here; floats would be ambiguous
        # (0..1 or 0..255?) so they are rejected rather than silently rescaled.
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"expected uint8 image array, got dtype {arr.dtype}")
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
    channels = arr.shape[2]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 4:
        arr = arr[:, :, :3]
    elif channels != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _with_image(element: dict, image: np.ndarray) -> dict:
    """Returns a shallow copy of ``element`` with a new image (inputs are never mutated)."""
    out = dict(element)
    out["image"] = image
    return out


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic resize of a uint8 HxWx3 array to (height, width) via PIL."""
    if image.shape[0] == height and image.shape[1] == width:
        return image  # PIL would still resample (and slightly blur) a same-size resize.
    return np.asarray(Image.fromarray(image).resize((width, height), _BICUBIC))


class DecodeImage(grain.transforms.Map):
    """Decodes ``element["image"]`` (any PIL-readable bytes, or an array) to uint8 HxWx3 RGB."""

    def map(self, element: dict) -> dict:
        """Returns the element with its image decoded."""
        return _with_image(element, to_rgb_uint8(element["image"]))


def random_resized_crop_params(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Samples a crop box ``(top, left, crop_height, crop_width)`` like torchvision.

    This is torchvision's ``RandomResizedCrop.get_params``: up to 10 attempts at a box whose area
    is ``U(scale)`` of the image and whose aspect ratio (w/h) is log-uniform in ``ratio``; the
    first box that fits is placed uniformly at random. If none fits, the fallback is a central
    crop whose aspect ratio is the image's, clamped into ``ratio``. Only the random number
    generator differs (numpy's instead of torch's), so streams are not bit-identical to torch.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        # Python's round() (banker's rounding), as torchvision uses.
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def tf_random_resized_crop_params(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """MAE's ``util/crop.py`` "TF-style" crop box, used by its linear probe.

    One draw of area and log-uniform aspect ratio, the box clamped to the image (no rejection
    loop, no central fallback), placed uniformly at random; as BYOL's TF code.
    """
    target_area = height * width * rng.uniform(scale[0], scale[1])
    aspect_ratio = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = min(int(round(math.sqrt(target_area * aspect_ratio))), width)
    h = min(int(round(math.sqrt(target_area / aspect_ratio))), height)
    w, h = max(w, 1), max(h, 1)
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w


class RandomResizedCrop(grain.transforms.RandomMap):
    """MAE's pre-training crop: a torchvision-style random resized crop, then bicubic resize.

    Args:
      size: output side length (the output is ``size x size``).
      scale: range of the crop area as a fraction of the image area (MAE uses (0.2, 1.0)).
      ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.
      tf_style: use MAE's TF-style box (:func:`tf_random_resized_crop_params`, linear probe)
        instead of torchvision's.
    """

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        tf_style: bool = False,
    ):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {tuple(scale)}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.tf_style = bool(tf_style)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Returns the element with its uint8 image cropped and resized to ``size x size``."""
        image = to_rgb_uint8(element["image"])
        height, width = image.shape[:2]
        params = tf_random_resized_crop_params if self.tf_style else random_resized_crop_params
        top, left, h, w = params(rng, height, width, self.scale, self.ratio)
        # Crop, then resize (not PIL's resize(box=...)): that is torchvision's PIL code path, and
        # box-resizing would sample support pixels from outside the crop.
        crop = image[top : top + h, left : left + w]
        return _with_image(element, _resize(np.ascontiguousarray(crop), self.size, self.size))


class RandomHorizontalFlip(grain.transforms.RandomMap):
    """Mirrors the image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Returns the element, flipped with probability ``p``."""
        # Always draw, so the RNG stream does not depend on the outcome.
        if rng.random() < self.p:
            image = np.asarray(element["image"])
            return _with_image(element, np.ascontiguousarray(image[:, ::-1]))
        return element


class ResizeCenterCrop(grain.transforms.Map):
    """Evaluation preprocessing: resize the shorter side to ``int(size / crop_pct)``, center crop.

    With the default ``crop_pct=0.875`` a 224 crop comes from a 256 resize (the ImageNet eval
    convention). ``crop_pct=1.0`` resizes the shorter side straight to ``size``; an image already
    ``size x size`` then passes through unchanged (no resampling), the right choice for CIFAR at
    its native 32x32.
    """

    def __init__(self, size: int, crop_pct: float = 0.875):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.size = int(size)
        self.crop_pct = float(crop_pct)

    def __call__(self, image: Any) -> np.ndarray:
        """Applies the resize + center crop to a single image (any `to_rgb_uint8` input)."""
        image = to_rgb_uint8(image)
        height, width = image.shape[:2]
        # int() truncation and `long = int(short_target * long / short)` follow torchvision's
        # Resize(int) so sizes agree with the usual eval transforms.
        short_target = max(self.size, int(self.size / self.crop_pct))
        if height <= width:
            new_h, new_w = short_target, max(self.size, int(short_target * width / height))
        else:
            new_h, new_w = max(self.size, int(short_target * height / width)), short_target
        image = _resize(image, new_w, new_h)
        # torchvision's center_crop rounds the offset: int(round((H - size) / 2)).
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        crop = image[top : top + self.size, left : left + self.size]
        return np.ascontiguousarray(crop)

    def map(self, element: dict) -> dict:
        """Returns the element with its image resized and center-cropped to ``size x size``."""
        return _with_image(element, self(element["image"]))


class Normalize(grain.transforms.Map):
    """uint8 HWC -> float32 HWC ``(x / 255 - mean) / std`` (per channel)."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, image: Any) -> np.ndarray:
        """Normalizes a single uint8 HxWx3 image to float32."""
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"Normalize expects uint8 images, got {image.dtype}")
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (image.astype(np.float32) / np.float32(255.0) - mean) / std

    def map(self, element: dict) -> dict:
        """Returns the element with its image normalized to float32."""
        return _with_image(element, self(element["image"]))
