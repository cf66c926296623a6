"""Reconstruction figures: original | masked | reconstruction, for any method with ``reconstruct``.

The method (the contract's optional ``reconstruct``) runs its own forward pass and returns
arrays in the input's normalisation plus a caption; this module only draws them. For MAE with a
norm-pix target the caption names how predictions were de-normalised: ``"hidden"`` uses each
hidden patch's own ground-truth statistics (the official demo; it leaks them), ``"visible"``
one mean and variance per image from its visible patches only.
"""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw

from maskjax.data.transforms import IMAGENET_MEAN, IMAGENET_STD

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


def reconstruction_figure(method, model, images, key, path: str, stats: str = "visible") -> str:
    """Writes ``method.reconstruct``'s original | masked | reconstruction grid of ``images`` to ``path``."""
    cols = method.reconstruct(model, images, key, stats=stats)
    caption = cols.pop("caption", "")
    return save_grid({k: _denormalize(np.asarray(v)) for k, v in cols.items()}, path, caption)
