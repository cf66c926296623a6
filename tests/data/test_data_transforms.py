"""Tests for maskjax.data.transforms (decode, RandomResizedCrop, flip, center crop, normalize)."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from maskjax.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodeImage,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ResizeCenterCrop,
    random_resized_crop_params,
)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_decode_formats():
    rgb = _image(5, 7)
    decode = DecodeImage()
    out = decode.map({"image": _png(rgb), "label": 3, "extra": "kept"})
    assert out["label"] == 3 and out["extra"] == "kept"
    np.testing.assert_array_equal(out["image"], rgb)
    gray = rgb[:, :, 0]
    for encoded in (_png(gray), gray, gray[:, :, None]):
        img = decode.map({"image": encoded})["image"]
        assert img.shape == (5, 7, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img[:, :, 2], gray)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(decode.map({"image": _png(rgba)})["image"], rgb)
    np.testing.assert_array_equal(decode.map({"image": rgb})["image"], rgb)
    with pytest.raises(ValueError, match="expected uint8"):
        decode.map({"image": rgb.astype(np.float32)})


class _ScriptedRng:
    """Stands in for np.random.Generator with fixed draws, to check the algorithm's arithmetic."""

    def __init__(self, uniforms, integers):
        self._uniforms, self._integers = list(uniforms), list(integers)

    def uniform(self, low, high):
        return low + (high - low) * self._uniforms.pop(0)

    def integers(self, low, high):
        assert low == 0
        return min(self._integers.pop(0), high - 1)


def test_crop_params_follow_torchvision_arithmetic():
    # area 100*100, U(scale) -> 0.5 => target 5000; log-ratio midpoint => ratio 1 => 71x71.
    rng = _ScriptedRng(uniforms=[(0.5 - 0.2) / 0.8, 0.5], integers=[3, 7])
    assert random_resized_crop_params(rng, 100, 100, (0.2, 1.0), (3 / 4, 4 / 3)) == (3, 7, 71, 71)
    # 20x100 image (area 2000). Attempt 1: target 2000, ratio 4/3 -> 52x39, too tall, rejected.
    # Attempt 2: target 400, ratio 4/3 -> w = round(sqrt(533.3)) = 23, h = round(sqrt(300)) = 17.
    rng = _ScriptedRng(uniforms=[1.0, 1.0, 0.0, 1.0], integers=[2, 50])
    assert random_resized_crop_params(rng, 20, 100, (0.2, 1.0), (3 / 4, 4 / 3)) == (2, 50, 17, 23)


def _fallback_box(height, width, ratio=(3 / 4, 4 / 3)):
    """torchvision's fallback, written out independently: central crop, ratio clamped."""
    if width / height < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    "height,width,expected",
    [
        (100, 100, (0, 0, 100, 100)),  # ratio 1 is in range: the whole image
        (10, 100, (0, 43, 10, 13)),  # too wide: h = 10, w = round(10 * 4/3) = 13, centred
        (100, 10, (43, 0, 13, 10)),  # too tall: w = 10, h = round(10 / (3/4)) = 13, centred
    ],
)
def test_crop_params_fallback_is_central(height, width, expected):
    # A scale above 1 never fits, so all 10 attempts fail and the fallback is used.
    rng = np.random.default_rng(0)
    got = random_resized_crop_params(rng, height, width, (2.0, 3.0), (3 / 4, 4 / 3))
    assert got == expected == _fallback_box(height, width)


@settings(max_examples=300, deadline=None)
@given(
    height=st.integers(1, 600),
    width=st.integers(1, 600),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([(0.2, 1.0), (0.08, 1.0), (0.5, 0.5)]),
)
def test_crop_params_properties(height, width, seed, scale):
    ratio = (3 / 4, 4 / 3)
    box = random_resized_crop_params(np.random.default_rng(seed), height, width, scale, ratio)
    top, left, h, w = box
    assert all(isinstance(v, int) for v in box)
    assert 0 < h <= height and 0 < w <= width
    assert 0 <= top <= height - h and 0 <= left <= width - w
    # w and h are rounded from sqrt(A*r) and sqrt(A/r) with r in `ratio`, so r lies in
    # [(w-.5)/(h+.5), (w+.5)/(h-.5)]; that interval must meet `ratio` (fallback included).
    assert (w - 0.5) / (h + 0.5) <= ratio[1] + 1e-9
    assert (w + 0.5) / (h - 0.5) >= ratio[0] - 1e-9
    # An accepted attempt has area fraction in `scale` up to the rounding of w and h;
    # otherwise the box must be the central fallback.
    tol = (0.5 * (w + h + 1) + 0.25) / (height * width)
    fraction = h * w / (height * width)
    in_scale = scale[0] - tol <= fraction <= scale[1] + tol
    assert in_scale or box == _fallback_box(height, width)


def test_random_resized_crop_output_and_determinism():
    element = {"image": _image(40, 60), "label": 1}
    crop = RandomResizedCrop(16)
    out = crop.random_map(element, np.random.default_rng(5))
    assert out["image"].shape == (16, 16, 3) and out["image"].dtype == np.uint8
    assert out["label"] == 1 and element["image"].shape == (40, 60, 3)  # input untouched
    again = crop.random_map(element, np.random.default_rng(5))
    np.testing.assert_array_equal(out["image"], again["image"])
    others = [crop.random_map(element, np.random.default_rng(s))["image"] for s in range(6, 10)]
    assert any(not np.array_equal(out["image"], o) for o in others)
    # The crop is the PIL bicubic resize of the sampled box.
    top, left, h, w = random_resized_crop_params(np.random.default_rng(5), 40, 60, (0.2, 1.0), (3 / 4, 4 / 3))
    box = Image.fromarray(element["image"][top : top + h, left : left + w])
    np.testing.assert_array_equal(out["image"], np.asarray(box.resize((16, 16), Image.BICUBIC)))
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(8, scale=(0.9, 0.1))


def test_flip_probability_and_content():
    image = _image(4, 5)
    flip = RandomHorizontalFlip(0.5)
    rng = np.random.default_rng(0)
    flipped = 0
    for _ in range(4000):
        out = flip.random_map({"image": image}, rng)["image"]
        if not np.array_equal(out, image):
            np.testing.assert_array_equal(out, image[:, ::-1])
            flipped += 1
    assert abs(flipped / 4000 - 0.5) < 0.04  # > 5 sigma from 0.5 would fail
    assert np.array_equal(RandomHorizontalFlip(0.0).random_map({"image": image}, rng)["image"], image)


def test_resize_center_crop_geometry():
    cifar = _image(32, 32)
    np.testing.assert_array_equal(ResizeCenterCrop(32, crop_pct=1.0)(cifar), cifar)  # identity
    assert ResizeCenterCrop(32)(cifar).shape == (32, 32, 3)  # 32 -> 36 -> center 32
    wide = _image(48, 64)
    out = ResizeCenterCrop(24, crop_pct=1.0).map({"image": wide, "label": 0})
    # Shorter side 48 -> 24, longer 64 -> int(24 * 64 / 48) = 32; crop columns 4..28.
    resized = np.asarray(Image.fromarray(wide).resize((32, 24), Image.BICUBIC))
    np.testing.assert_array_equal(out["image"], resized[:, 4:28])
    tall = ResizeCenterCrop(224)(_image(300, 200))
    assert tall.shape == (224, 224, 3) and tall.dtype == np.uint8
    tiny = ResizeCenterCrop(16)(_image(3, 5))  # upsampling small images works too
    assert tiny.shape == (16, 16, 3)


def test_normalize_hand_computed_pixel():
    pixel = np.array([[[255, 0, 128]]], np.uint8)
    out = Normalize().map({"image": pixel, "label": 2})
    expected = [
        (1.0 - 0.485) / 0.229,  # 2.2489083
        (0.0 - 0.456) / 0.224,  # -2.0357143
        (128 / 255 - 0.406) / 0.225,  # 0.4264924
    ]
    assert out["image"].dtype == np.float32 and out["image"].shape == (1, 1, 3)
    np.testing.assert_allclose(out["image"][0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(out["image"][0, 0], [2.2489083, -2.0357143, 0.4264924], atol=1e-6)
    assert out["label"] == 2
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="uint8"):
        Normalize()(pixel.astype(np.float32))


def test_transforms_pickle():
    for transform in (DecodeImage(), RandomResizedCrop(8), RandomHorizontalFlip(0.3),
                      ResizeCenterCrop(8), Normalize()):
        clone = pickle.loads(pickle.dumps(transform))
        assert type(clone) is type(transform) and vars(clone) == vars(transform)
