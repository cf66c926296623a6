"""RandAugment (timm rand-m9-mstd0.5-inc1) and RandomErasing (timm, pixel mode)."""
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from maskjax.data import augment as aug
from maskjax.data.transforms import Normalize, RandomHorizontalFlip, RandomResizedCrop

FILL = (124, 116, 104)


def _image(h=24, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _op(image, name, arg, resample=Image.Resampling.BICUBIC):
    return np.asarray(aug.apply_op(Image.fromarray(image), name, arg, fill=FILL, resample=resample))


def test_fill_is_rounded_imagenet_mean():
    assert aug.FILL_IMAGENET == FILL


def test_level_to_arg_at_magnitude_9():
    # timm LEVEL_TO_ARG values for m = 9 (level 0.9).
    assert aug.level_to_arg("Rotate", 9) == pytest.approx(27.0)
    assert aug.level_to_arg("Rotate", 9, negate=True) == pytest.approx(-27.0)
    assert aug.level_to_arg("ShearX", 9) == pytest.approx(0.27)
    assert aug.level_to_arg("TranslateYRel", 9, negate=True) == pytest.approx(-0.405)
    assert aug.level_to_arg("PosterizeIncreasing", 9) == 4 - 3
    assert aug.level_to_arg("SolarizeIncreasing", 9) == 256 - 230
    assert aug.level_to_arg("SolarizeAdd", 9) == 99
    assert aug.level_to_arg("ContrastIncreasing", 9) == pytest.approx(1.81)
    assert aug.level_to_arg("ContrastIncreasing", 9, negate=True) == pytest.approx(0.19)
    assert aug.level_to_arg("ColorIncreasing", 10, negate=True) == pytest.approx(0.1)
    assert aug.level_to_arg("Invert", 9) is None
    # The non-increasing variants of the default (inc0) set.
    assert aug.level_to_arg("Posterize", 9) == 3
    assert aug.level_to_arg("Solarize", 9) == 230
    assert aug.level_to_arg("Brightness", 9) == pytest.approx(1.72)
    with pytest.raises(ValueError):
        aug.level_to_arg("Cutout", 5)


def test_increasing_op_set_is_timm_inc1():
    ops = aug.RandAugment().ops
    assert ops == aug.RAND_INCREASING_OPS and len(ops) == 15
    assert "Cutout" not in ops and "TranslateX" not in ops
    assert aug.RandAugment(increasing=False).ops == aug.RAND_OPS


def test_color_ops_against_hand_formulas():
    x = _image()
    np.testing.assert_array_equal(_op(x, "Invert", None), 255 - x)
    # PosterizeIncreasing at m9 keeps 1 bit.
    np.testing.assert_array_equal(_op(x, "PosterizeIncreasing", 1), x & 0b1000_0000)
    np.testing.assert_array_equal(_op(x, "PosterizeIncreasing", 0), np.zeros_like(x))
    np.testing.assert_array_equal(_op(x, "Posterize", 8), x)
    # Solarize inverts values >= threshold; threshold 256 is the identity.
    np.testing.assert_array_equal(_op(x, "SolarizeIncreasing", 128), np.where(x >= 128, 255 - x, x))
    np.testing.assert_array_equal(_op(x, "SolarizeIncreasing", 256), x)
    # SolarizeAdd adds (capped) to values below 128.
    expected = np.where(x < 128, np.minimum(255, x.astype(int) + 99), x).astype(np.uint8)
    np.testing.assert_array_equal(_op(x, "SolarizeAdd", 99), expected)
    # Brightness blends with black: x * f, within PIL's rounding.
    got = _op(x, "BrightnessIncreasing", 0.5).astype(int)
    assert np.abs(got - x.astype(float) * 0.5).max() <= 1.0
    # Contrast blends with the mean luminance (a constant grey).
    grey = np.asarray(Image.fromarray(x).convert("L"), dtype=float).mean()
    got = _op(x, "ContrastIncreasing", 1.5).astype(float)
    assert np.abs(got - np.clip(grey + 1.5 * (x - grey), 0, 255)).max() <= 1.5
    # Colour does nothing to a grey image; sharpness nothing to a flat one.
    g = np.repeat(x[:, :, :1], 3, axis=2)
    np.testing.assert_array_equal(_op(g, "ColorIncreasing", 1.9), g)
    flat = np.full((16, 16, 3), 77, np.uint8)
    np.testing.assert_array_equal(_op(flat, "SharpnessIncreasing", 1.9), flat)


def test_autocontrast_and_equalize():
    x = np.random.default_rng(1).integers(50, 151, (20, 20, 3), dtype=np.uint8)
    x[0, 0], x[0, 1] = 50, 150  # make the per-channel range exactly [50, 150]
    got = _op(x, "AutoContrast", None).astype(float)
    assert np.abs(got - (x.astype(float) - 50) * 255 / 100).max() <= 1.0
    np.testing.assert_array_equal(_op(x, "Equalize", None), np.asarray(ImageOps.equalize(Image.fromarray(x))))


def test_geometric_ops():
    x = _image(20, 20)
    # Rotating by 0 is an exact copy; by 90 (square image) it is a counter-clockwise transpose.
    np.testing.assert_array_equal(_op(x, "Rotate", 0.0), x)
    np.testing.assert_array_equal(_op(x, "Rotate", 90.0), np.rot90(x))
    # A zero shear is the identity.
    np.testing.assert_array_equal(_op(x, "ShearX", 0.0), x)
    # TranslateXRel by 0.25 of 20 px: out[:, j] = in[:, j + 5]; the exposed strip is the fill.
    got = _op(x, "TranslateXRel", 0.25)
    np.testing.assert_array_equal(got[:, :13], x[:, 5:18])
    np.testing.assert_array_equal(got[:, 15:], np.broadcast_to(FILL, (20, 5, 3)))
    got = _op(x, "TranslateYRel", -0.25)
    np.testing.assert_array_equal(got[7:], x[2:15])
    np.testing.assert_array_equal(got[:5], np.broadcast_to(FILL, (5, 20, 3)))
    # Shear is PIL's affine map (1, f, 0, 0, 1, 0) with the fill colour.
    ref = Image.fromarray(x).transform((20, 20), Image.Transform.AFFINE, (1, 0.27, 0, 0, 1, 0),
                                       resample=Image.Resampling.BICUBIC, fillcolor=FILL)
    np.testing.assert_array_equal(_op(x, "ShearX", 0.27), np.asarray(ref))
    assert (_op(x, "ShearY", -0.3) == np.array(FILL, np.uint8)).all(axis=-1).any()


def test_rand_augment_shape_dtype_and_determinism():
    ra = aug.RandAugment()
    element = {"image": _image(32, 40), "label": 3}
    out1 = ra.random_map(element, np.random.default_rng(5))
    out2 = ra.random_map(element, np.random.default_rng(5))
    assert out1["image"].dtype == np.uint8 and out1["image"].shape == (32, 40, 3)
    assert out1["label"] == 3
    np.testing.assert_array_equal(out1["image"], out2["image"])
    np.testing.assert_array_equal(element["image"], _image(32, 40))  # input not mutated
    outs = [ra.random_map(element, np.random.default_rng(s))["image"] for s in range(20)]
    assert sum(not np.array_equal(o, element["image"]) for o in outs) >= 10
    # With num_ops=0 or prob=0 nothing happens.
    np.testing.assert_array_equal(aug.RandAugment(num_ops=0).augment(element["image"], np.random.default_rng(0)),
                                  element["image"])
    np.testing.assert_array_equal(aug.RandAugment(prob=0.0).augment(element["image"], np.random.default_rng(0)),
                                  element["image"])


def test_magnitude_noise_is_clipped():
    rng = np.random.default_rng(0)
    draws = np.array([aug.RandAugment(magnitude=9, magnitude_std=0.5).sample_magnitude(rng) for _ in range(2000)])
    assert draws.min() >= 0 and draws.max() <= 10
    assert abs(draws.mean() - 9) < 0.1 and 0.35 < draws.std() < 0.55  # the clip at 10 narrows it
    assert (draws == 10).mean() > 0.01  # N(9, 0.5) exceeds 10 about 2% of the time
    wide = np.array([aug.RandAugment(magnitude=5, magnitude_std=10).sample_magnitude(rng) for _ in range(500)])
    assert (wide == 0).any() and (wide == 10).any() and wide.min() >= 0 and wide.max() <= 10
    assert aug.RandAugment(magnitude_std=0).sample_magnitude(rng) == 9.0
    uniform = [aug.RandAugment(magnitude_std=float("inf")).sample_magnitude(rng) for _ in range(200)]
    assert 0 <= min(uniform) and max(uniform) <= 9


def test_random_erasing_area_and_pixels():
    re = aug.RandomErasing(prob=1.0)
    h, w = 40, 48
    rng = np.random.default_rng(0)
    fracs = []
    for _ in range(300):
        boxes = re.sample_boxes(rng, h, w)
        assert len(boxes) <= 1
        for top, left, bh, bw in boxes:
            assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
            assert bh < h and bw < w
            # Rounding h and w moves the area by at most ~sqrt(area) + 1/4 pixels.
            slack = (math.sqrt(bh * bw) + 0.25) / (h * w)
            frac = bh * bw / (h * w)
            assert 0.02 - slack <= frac <= 1 / 3 + slack
            ratio = bh / bw
            assert 0.3 * 0.7 < ratio < 1 / 0.3 / 0.7
            fracs.append(frac)
    assert len(fracs) > 280 and min(fracs) < 0.06 and max(fracs) > 0.25
    # Pixel mode: the erased box holds fresh N(0, 1) noise, the rest is untouched.
    image = np.full((h, w, 3), 7.0, np.float32)
    out = aug.RandomErasing(prob=1.0).random_map({"image": image, "label": 0}, np.random.default_rng(3))["image"]
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_array_equal(image, 7.0)  # input not mutated
    erased = out != 7.0
    assert erased.any()
    noise = out[erased]
    assert abs(noise.mean()) < 0.3 and 0.7 < noise.std() < 1.3
    rows, cols = np.nonzero(erased.any(-1))
    assert erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one solid box
    with pytest.raises(ValueError):
        aug.RandomErasing(prob=1.0).erase(np.zeros((8, 8, 3), np.uint8), rng)


def test_random_erasing_frequency_and_modes():
    re = aug.RandomErasing()  # prob 0.25
    assert re.prob == 0.25 and re.mode == "pixel"
    rng = np.random.default_rng(1)
    n = 4000
    hits = sum(bool(re.sample_boxes(rng, 64, 64)) for _ in range(n))
    # Binomial(4000, 0.25): sd 27; 5 sd either side. (A box fails all 10 tries ~never here.)
    assert abs(hits - 0.25 * n) < 5 * math.sqrt(n * 0.25 * 0.75)
    image = np.ones((32, 32, 3), np.float32)
    const = aug.RandomErasing(prob=1.0, mode="const").erase(image, np.random.default_rng(0))
    assert set(np.unique(const)) == {0.0, 1.0}
    rand = aug.RandomErasing(prob=1.0, mode="rand").erase(image, np.random.default_rng(0))
    box = rand[(rand != 1.0).any(-1)]
    assert (box == box[0]).all()  # one colour per box


def test_finetune_transforms_order_and_output():
    tfs = aug.finetune_train_transforms(16)
    assert [type(t) for t in tfs] == [RandomResizedCrop, RandomHorizontalFlip, aug.RandAugment,
                                      Normalize, aug.RandomErasing]
    assert tfs[0].scale == (0.08, 1.0) and tfs[4].prob == 0.25
    element = {"image": _image(30, 20), "label": 1}
    rng = np.random.default_rng(0)
    for t in tfs:
        element = t.random_map(element, rng) if hasattr(t, "random_map") else t.map(element)
    assert element["image"].shape == (16, 16, 3) and element["image"].dtype == np.float32
    ev = aug.finetune_eval_transforms(224)
    assert ev[0].crop_pct == 0.875 and int(ev[0].size / ev[0].crop_pct) == 256
    assert aug.finetune_eval_transforms(384)[0].crop_pct == 1.0


def test_transforms_pickle():
    # grain ships transforms to worker processes by pickling them.
    import pickle

    for t in (aug.RandAugment(), aug.RandomErasing()):
        clone = pickle.loads(pickle.dumps(t))
        assert vars(clone) == vars(t)
