"""Reconstruction figures: original | masked | reconstruction, for any MAE checkpoint.

With a norm-pix target the model predicts per-patch *normalised* pixels, so a figure has to
de-normalise them with some mean and variance. Two choices, named in the figure's caption:

- ``"hidden"``: each hidden patch's own ground-truth statistics (what the official MAE demo
  does). Flattering: it leaks every hidden patch's mean colour and contrast.
- ``"visible"``: one mean and variance per image, pooled over its *visible* patches only; no
  information about the hidden patches reaches the picture.
"""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from maskjax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from maskjax.masking import random_mask
from maskjax.models.layers import patchify, unpatchify
from maskjax.objectives.pixels import NORM_PIX_EPS, patch_stats

STATS_CAPTIONS = {
    "hidden": "norm-pix prediction de-normalised with each hidden patch's true mean/var (leaks them)",
    "visible": "norm-pix prediction de-normalised with mean/var of the visible patches only (no leak)",
    "none": "plain pixel target: prediction shown as is",
}


def reconstruct(model, images: jax.Array, key: jax.Array, mask_ratio: float, norm_pix: bool,
                stats: str = "visible") -> dict[str, np.ndarray]:
    """Runs MAE on ``images`` [B,H,W,C] (normalised) and returns numpy images in [0, 1].

    Returns ``{"original", "masked", "reconstruction"}``; the reconstruction shows the model's
    prediction on hidden patches and the input on visible ones.
    """
    if stats not in ("hidden", "visible"):
        raise ValueError(f"stats must be 'hidden' or 'visible', got {stats!r}")
    p = model.patch_size
    b, h, w, _ = images.shape
    mask = random_mask(key, b, model.num_patches, mask_ratio)
    pred, _ = model(images, mask)
    target = patchify(images, p).astype(jnp.float32)
    hidden = mask.mask[..., None]
    if norm_pix:
        if stats == "hidden":
            mean, var = patch_stats(target)
        else:
            visible = 1.0 - hidden.astype(jnp.float32)
            count = visible.sum(axis=(1, 2), keepdims=True) * target.shape[-1]
            mean = (target * visible).sum(axis=(1, 2), keepdims=True) / count
            var = (jnp.square(target - mean) * visible).sum(axis=(1, 2), keepdims=True) / (count - 1)
        pred = pred * jnp.sqrt(var + NORM_PIX_EPS) + mean
    recon = jnp.where(hidden, pred, target)
    masked = jnp.where(hidden, jnp.nan, target)
    grid = (h // p, w // p)
    to_img = lambda x: _denormalize(np.asarray(unpatchify(x, p, *grid)))
    return {"original": _denormalize(np.asarray(images)), "masked": to_img(masked), "reconstruction": to_img(recon)}


def _denormalize(x: np.ndarray) -> np.ndarray:
    x = x * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return np.clip(np.nan_to_num(x, nan=0.5), 0.0, 1.0)


def save_grid(columns: dict[str, np.ndarray], path: str, caption: str, scale: int = 4) -> str:
    """Writes a PNG with one row per image and one column per entry of ``columns``."""
    names = list(columns)
    n, h, w, _ = columns[names[0]].shape
    ch, cw, pad = h * scale, w * scale, 4
    width = len(names) * (cw + pad) + pad
    lines = textwrap.wrap(caption, width=max(width // 6, 20))
    header = 16 + 12 * len(lines)
    canvas = Image.new("RGB", (width, header + n * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(names):
        draw.text((pad + j * (cw + pad), header - 14), name, fill="black")
        for i in range(n):
            tile = Image.fromarray((columns[name][i] * 255).round().astype(np.uint8))
            tile = tile.resize((cw, ch), Image.NEAREST)
            canvas.paste(tile, (pad + j * (cw + pad), header + i * (ch + pad)))
    for k, line in enumerate(lines):
        draw.text((pad, 2 + 12 * k), line, fill="black")
    canvas.save(path)
    return path


def reconstruction_figure(model, images, key, mask_ratio: float, norm_pix: bool, path: str,
                          stats: str = "visible") -> str:
    """Reconstructs ``images`` and writes the original | masked | reconstruction grid to ``path``."""
    cols = reconstruct(model, images, key, mask_ratio, norm_pix, stats)
    caption = f"mask ratio {mask_ratio:.2f}; " + STATS_CAPTIONS[stats if norm_pix else "none"]
    return save_grid(cols, path, caption)
