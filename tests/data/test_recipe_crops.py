"""Pre-training crops of the MIM recipes (SimMIM, MaskFeat, I-JEPA): area and aspect ranges, flips."""

from __future__ import annotations

import numpy as np
import pytest

from maskjax.data.pipeline import AUGMENTATIONS, RECIPE_CROPS, train_augmentation
from maskjax.data.transforms import RandomHorizontalFlip, RandomResizedCrop, random_resized_crop_params


@pytest.mark.parametrize("name, scale, flip", [("simmim", (0.67, 1.0), True), ("maskfeat", (0.5, 1.0), True),
                                               ("ijepa", (0.3, 1.0), False)])
def test_recipe_crop_areas_stay_in_the_recipe_range(name, scale, flip):
    assert name in AUGMENTATIONS
    transforms = train_augmentation(name, 32)
    crop = transforms[0]
    assert isinstance(crop, RandomResizedCrop) and crop.scale == scale
    assert any(isinstance(t, RandomHorizontalFlip) for t in transforms) == flip
    rng = np.random.default_rng(0)
    areas, aspects = [], []
    for _ in range(2000):
        _, _, h, w = random_resized_crop_params(rng, 256, 256, crop.scale, crop.ratio)
        areas.append(h * w / 256 ** 2)
        aspects.append(w / h)
    # Rounding h and w to integers moves the area by at most ~1/128 of the side each way.
    assert min(areas) >= scale[0] - 0.02 and max(areas) <= 1.0
    # MAE's 0.2 lower bound would show up as areas well below the recipe's minimum.
    assert np.quantile(areas, 0.02) < scale[0] + 0.05
    lo, hi = RECIPE_CROPS[name][1]
    assert min(aspects) >= lo * 0.95 and max(aspects) <= hi * 1.05


def test_the_image_modality_accepts_the_recipe_crops():
    from maskjax.config import load_config
    from maskjax.train.validate import validate_config

    config = load_config("configs/mae/default.py:smoke")
    config.data.augment = "ijepa"
    validate_config(config)
