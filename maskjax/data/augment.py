"""MAE fine-tuning augmentation: timm's RandAugment and RandomErasing as grain transforms.

MAE's ``main_finetune.py`` builds its training transform with timm 0.3.2 ``create_transform``
(``auto_augment="rand-m9-mstd0.5-inc1"``, ``interpolation="bicubic"``, ``re_prob=0.25``,
``re_mode="pixel"``, ``re_count=1``, no colour jitter). The order is::

    RandomResizedCrop(size, scale=(0.08, 1), bicubic) -> RandomHorizontalFlip(0.5)
      -> RandAugment (uint8) -> Normalize (float32) -> RandomErasing (float32)

:func:`finetune_train_transforms` returns exactly that list. Evaluation is
``Resize(int(size / crop_pct), bicubic) + CenterCrop(size)`` with ``crop_pct = 224/256`` for
``size <= 224`` and 1.0 above (:func:`finetune_eval_transforms`).

Known deviations from timm (all deliberate):

- Randomness comes from the numpy Generator grain hands to ``random_map`` instead of Python's
  ``random``/``np.random`` globals, so streams are reproducible per element but not
  bit-identical to timm. The order of draws per op is timm's: apply? -> magnitude noise ->
  sign -> (random interpolation only).
- Ops run on uint8 HxWx3 numpy arrays (converted to PIL and back once per image), and
  RandomErasing on float32 HxWxC arrays (timm: CHW tensors); the semantics are unchanged.
- Posterize uses its own LUT (identical to PIL's) because current Pillow refuses 0 bits.
- ``interpolation="bicubic"`` (MAE's setting, which timm forwards to the geometric ops) is the
  default; ``"random"`` reproduces timm's choice between bilinear and bicubic per op.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from maskjax.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ResizeCenterCrop,
    to_rgb_uint8,
)

# timm's magnitude scale: level 10 is the strongest setting of every op.
LEVEL_DENOM = 10.0
# timm fills exposed regions with the dataset mean in 0..255: round(255 * IMAGENET_MEAN).
FILL_IMAGENET = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)  # (124, 116, 104)

# timm ``_RAND_INCREASING_TRANSFORMS`` (the ``inc1`` set): severity grows with magnitude.
RAND_INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
# timm ``_RAND_TRANSFORMS`` (``inc0``, the default without ``-inc1``).
RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)
# Ops whose argument timm negates with probability 1/2 (``_randomly_negate``).
SIGNED_OPS = frozenset({
    "Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing",
    "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
})
# Ops that resample (take ``resample`` and ``fillcolor``): timm ``_check_args_tf`` callers.
GEOMETRIC_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})

_INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def level_to_arg(name: str, magnitude: float, negate: bool = False, translate_pct: float = 0.45) -> Any:
    """timm ``LEVEL_TO_ARG[name]``: the op argument for a (clipped) magnitude in [0, 10].

    ``negate`` is the outcome of timm's ``_randomly_negate`` and only matters for `SIGNED_OPS`.
    Returns None for the argument-free ops (AutoContrast, Equalize, Invert).
    """
    level = magnitude / LEVEL_DENOM
    sign = -1.0 if negate else 1.0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return sign * level * 30.0  # degrees in [-30, 30]
    if name in ("ShearX", "ShearY"):
        return sign * level * 0.3
    if name in ("TranslateXRel", "TranslateYRel"):
        return sign * level * translate_pct  # fraction of the image side
    if name == "Posterize":
        return int(level * 4)  # bits kept, 0..4 (decreasing severity)
    if name == "PosterizeIncreasing":
        return 4 - int(level * 4)  # bits kept, 4..0
    if name == "Solarize":
        return int(level * 256)  # threshold, 0..256
    if name == "SolarizeIncreasing":
        return 256 - int(level * 256)
    if name == "SolarizeAdd":
        return int(level * 110)  # amount added below 128
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1  # enhance factor in [0.1, 1.9]
    if name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        # 1.0 is "no change"; moving towards 0.1 or 1.9 strengthens the effect.
        return max(0.1, 1.0 + sign * level * 0.9)
    raise ValueError(f"unknown RandAugment op {name!r}")


def apply_op(image: Image.Image, name: str, arg: Any, *, fill: Sequence[int] = FILL_IMAGENET,
             resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """Applies timm's ``NAME_TO_OP[name]`` with argument ``arg`` to an RGB PIL image."""
    fill = tuple(int(f) for f in fill)
    base = name.replace("Increasing", "")
    if base == "AutoContrast":
        return ImageOps.autocontrast(image)
    if base == "Equalize":
        return ImageOps.equalize(image)
    if base == "Invert":
        return ImageOps.invert(image)
    if base == "Rotate":
        # Counter-clockwise for positive degrees, about the centre, same size (PIL's rotate).
        return image.rotate(arg, resample=resample, fillcolor=fill)
    if base in ("ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        # PIL's AFFINE data maps output (x, y) to input (a x + b y + c, d x + e y + f).
        if base == "ShearX":
            matrix = (1, arg, 0, 0, 1, 0)
        elif base == "ShearY":
            matrix = (1, 0, 0, arg, 1, 0)
        elif base == "TranslateXRel":
            matrix = (1, 0, arg * image.size[0], 0, 1, 0)
        else:
            matrix = (1, 0, 0, 0, 1, arg * image.size[1])
        return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)
    if base == "Posterize":
        if arg >= 8:
            return image
        # Keep the top `arg` bits. A LUT rather than ImageOps.posterize: Pillow >= 10 rejects
        # bits=0, which PosterizeIncreasing reaches at magnitude 10; older Pillow (timm's era)
        # returned a black image for it, as this does.
        mask = ~(2 ** (8 - int(arg)) - 1) & 0xFF
        return image.point([i & mask for i in range(256)] * len(image.getbands()))
    if base == "Solarize":
        return ImageOps.solarize(image, arg)
    if base == "SolarizeAdd":
        # timm: add `arg` (capped at 255) to values below 128, leave the rest.
        lut = [min(255, i + arg) if i < 128 else i for i in range(256)]
        return image.point(lut * len(image.getbands()))
    enhancers = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
                 "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
    if base in enhancers:
        return enhancers[base](image).enhance(arg)
    raise ValueError(f"unknown RandAugment op {name!r}")


class RandAugment(grain.transforms.RandomMap):
    """timm ``rand_augment_transform("rand-m9-mstd0.5-inc1")`` on uint8 HxWx3 images.

    Per image, ``num_ops`` ops are drawn uniformly *with replacement* (timm's
    ``np.random.choice(ops, n)``). Each op then runs with probability ``prob``; its magnitude
    is ``N(magnitude, magnitude_std)`` clipped to ``[0, magnitude_max]`` (fixed when the std is
    0, ``U(0, magnitude)`` when it is inf), and signed ops flip sign with probability 1/2.

    Args:
      num_ops: ops per image (timm ``n``, default 2).
      magnitude: mean magnitude on timm's 0..10 scale (``m9``).
      magnitude_std: std of the per-op magnitude noise (``mstd0.5``); ``float("inf")`` samples
        uniformly in [0, magnitude] (timm's ``mstd > 100``).
      increasing: use the severity-increasing op set (``inc1``); else timm's default set.
      prob: probability that each drawn op is applied (timm: 0.5).
      fill: fill colour of geometric ops (timm: the ImageNet mean in 0..255).
      interpolation: ``"bicubic"`` (MAE), ``"bilinear"`` or ``"random"`` (either, per op).
      translate_pct: maximum relative translation (timm ``translate_pct``, 0.45).
      magnitude_max: upper clip of the sampled magnitude (timm ``mmax``, default 10).
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 9, magnitude_std: float = 0.5,
                 increasing: bool = True, prob: float = 0.5, fill: Sequence[int] = FILL_IMAGENET,
                 interpolation: str = "bicubic", translate_pct: float = 0.45,
                 magnitude_max: float = LEVEL_DENOM):
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        if magnitude_std < 0:
            raise ValueError(f"magnitude_std must be >= 0, got {magnitude_std}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if interpolation not in (*_INTERPOLATIONS, "random"):
            raise ValueError(f"interpolation must be bicubic, bilinear or random, got {interpolation!r}")
        if len(fill) != 3:
            raise ValueError(f"fill needs one value per RGB channel, got {tuple(fill)}")
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.ops = RAND_INCREASING_OPS if increasing else RAND_OPS
        self.prob = float(prob)
        self.fill = tuple(int(f) for f in fill)
        self.interpolation = interpolation
        self.translate_pct = float(translate_pct)
        self.magnitude_max = float(magnitude_max)

    def sample_magnitude(self, rng: np.random.Generator) -> float:
        """One op's magnitude: the noisy draw of timm ``AugmentOp.__call__``, clipped."""
        magnitude = self.magnitude
        if self.magnitude_std == float("inf"):
            magnitude = rng.uniform(0.0, magnitude)
        elif self.magnitude_std > 0:
            magnitude = rng.normal(magnitude, self.magnitude_std)
        return float(max(0.0, min(magnitude, self.magnitude_max)))

    def _resample(self, rng: np.random.Generator) -> int:
        if self.interpolation == "random":
            return (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)[int(rng.integers(2))]
        return _INTERPOLATIONS[self.interpolation]

    def augment(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Returns RandAugment of one uint8 HxWx3 image (a new array)."""
        pil = Image.fromarray(to_rgb_uint8(image))
        for index in rng.integers(0, len(self.ops), size=self.num_ops):
            name = self.ops[int(index)]
            if self.prob < 1.0 and rng.random() > self.prob:  # timm skips with prob 1 - p
                continue
            magnitude = self.sample_magnitude(rng)
            negate = bool(rng.random() > 0.5) if name in SIGNED_OPS else False
            arg = level_to_arg(name, magnitude, negate, self.translate_pct)
            resample = self._resample(rng) if name in GEOMETRIC_OPS else Image.Resampling.BICUBIC
            pil = apply_op(pil, name, arg, fill=self.fill, resample=resample)
        return np.asarray(pil, dtype=np.uint8)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Returns the element with its uint8 image augmented."""
        out = dict(element)
        out["image"] = self.augment(element["image"], rng)
        return out


class RandomErasing(grain.transforms.RandomMap):
    """timm ``RandomErasing`` on a normalised float HxWxC image (MAE: prob 0.25, pixel mode).

    With probability ``prob`` the image gets ``count`` boxes (``count`` uniform in
    ``[min_count, max_count]``). Each box tries 10 times: area ``U(min_area, max_area) * H * W /
    count``, aspect ratio (h/w) log-uniform in ``[min_aspect, max_aspect]`` (default
    ``1 / min_aspect``), ``h, w`` rounded; a box is accepted when ``h < H and w < W`` (strict,
    as timm) and placed uniformly. After 10 failures that box is skipped.

    Fill values: ``"pixel"`` per-pixel, per-channel N(0, 1); ``"rand"`` one N(0, 1) value per
    channel per box; ``"const"`` zeros (the normalised mean).
    """

    def __init__(self, prob: float = 0.25, mode: str = "pixel", min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3, max_aspect: float | None = None,
                 min_count: int = 1, max_count: int | None = None):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"mode must be pixel, rand or const, got {mode!r}")
        if not 0.0 < min_area <= max_area:
            raise ValueError(f"need 0 < min_area <= max_area, got {min_area}, {max_area}")
        max_aspect = max_aspect or 1.0 / min_aspect
        if not 0.0 < min_aspect <= max_aspect:
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.prob = float(prob)
        self.mode = mode
        self.min_area = float(min_area)
        self.max_area = float(max_area)
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.min_count = int(min_count)
        self.max_count = int(max_count or min_count)
        if not 1 <= self.min_count <= self.max_count:
            raise ValueError(f"need 1 <= min_count <= max_count, got {min_count}, {max_count}")

    def sample_boxes(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Boxes ``(top, left, h, w)`` to erase; empty when erasing is skipped or never fits."""
        if rng.random() > self.prob:
            return []
        area = height * width
        count = self.min_count
        if self.max_count != self.min_count:
            count = int(rng.integers(self.min_count, self.max_count + 1))
        boxes = []
        for _ in range(count):
            for _attempt in range(10):
                target_area = rng.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h = int(round(math.sqrt(target_area * aspect)))
                w = int(round(math.sqrt(target_area / aspect)))
                if w < width and h < height:
                    top = int(rng.integers(0, height - h + 1))  # timm randint is inclusive
                    left = int(rng.integers(0, width - w + 1))
                    boxes.append((top, left, h, w))
                    break
        return boxes

    def erase(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Returns a copy of a float HxWxC image with random boxes erased."""
        image = np.asarray(image)
        if not np.issubdtype(image.dtype, np.floating):
            # timm erases normalised tensors; on uint8 the N(0, 1) fill would be meaningless.
            raise ValueError(f"RandomErasing expects a normalised float image, got {image.dtype}")
        boxes = self.sample_boxes(rng, image.shape[0], image.shape[1])
        if not boxes:
            return image
        out = image.copy()
        channels = image.shape[2]
        for top, left, h, w in boxes:
            if self.mode == "pixel":
                values = rng.standard_normal((h, w, channels))
            elif self.mode == "rand":
                values = rng.standard_normal((1, 1, channels))
            else:
                values = np.zeros((1, 1, channels))
            out[top : top + h, left : left + w] = values.astype(image.dtype)
        return out

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        """Returns the element with its float image randomly erased."""
        out = dict(element)
        out["image"] = self.erase(element["image"], rng)
        return out


def finetune_train_transforms(image_size: int, *, scale: Sequence[float] = (0.08, 1.0),
                              hflip: float = 0.5, auto_augment: bool = True, reprob: float = 0.25,
                              mean: Sequence[float] = IMAGENET_MEAN,
                              std: Sequence[float] = IMAGENET_STD) -> list:
    """MAE fine-tuning train transforms in timm ``create_transform`` order (module docstring).

    Acts on decoded uint8 images; the last two transforms are Normalize and (when
    ``reprob > 0``) RandomErasing, so the output is float32 HxWx3.
    """
    transforms: list = [RandomResizedCrop(image_size, scale=scale)]
    if hflip > 0:
        transforms.append(RandomHorizontalFlip(hflip))
    if auto_augment:
        transforms.append(RandAugment())
    transforms.append(Normalize(mean, std))
    if reprob > 0:
        transforms.append(RandomErasing(reprob, mode="pixel", max_count=1))
    return transforms


def finetune_eval_transforms(image_size: int, crop_pct: float | None = None,
                             mean: Sequence[float] = IMAGENET_MEAN,
                             std: Sequence[float] = IMAGENET_STD) -> list:
    """MAE ``build_transform(is_train=False)``: resize ``int(size / crop_pct)``, center crop, normalise.

    ``crop_pct`` defaults to MAE's rule: 224/256 when ``image_size <= 224`` (256 -> 224), else 1.0.
    """
    if crop_pct is None:
        crop_pct = 224 / 256 if image_size <= 224 else 1.0
    return [ResizeCenterCrop(image_size, crop_pct=crop_pct), Normalize(mean, std)]
