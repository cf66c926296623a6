"""Reconstruction figures: original | masked | reconstruction, for any method with ``reconstruct``.

The method (the contract's optional ``reconstruct``) runs its own forward pass and returns
arrays in the input's normalisation plus a caption; this module only draws them. For MAE with a
norm-pix target the caption names how predictions were de-normalised: ``"hidden"`` uses each
hidden patch's own ground-truth statistics (the official demo; it leaks them), ``"visible"``
one mean and variance per image from its visible patches only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskjax.data.transforms import IMAGENET_MEAN, IMAGENET_STD

# The caption and column names are set in CAPTION_PT points at FIGURE_DPI, the resolution written
# into the PNG: 11 pt is 15 px, legible at 100% zoom (Pillow's default font is 10 px, ~7.5 pt).
CAPTION_PT = 11
FIGURE_DPI = 96
# Small images are enlarged to at least this many pixels per tile (32x32 CIFAR: x4), so the
# caption is not wider than the images it describes; 224x224 ImageNet images stay as they are.
MIN_TILE_PX = 128


def caption_font_px() -> int:
    """The caption's font size in pixels (:data:`CAPTION_PT` at :data:`FIGURE_DPI`)."""
    return round(CAPTION_PT * FIGURE_DPI / 72)


def caption_font(px: int | None = None) -> ImageFont.ImageFont:
    """A scalable font of ``px`` pixels (default :func:`caption_font_px`)."""
    px = px or caption_font_px()
    try:
        return ImageFont.load_default(size=px)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:
        pass
    try:  # older Pillow: matplotlib (a dependency) ships DejaVu Sans
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), px)
    except Exception:  # noqa: BLE001 - no usable TrueType font: the small bitmap one still says it
        return ImageFont.load_default()


def wrap_text(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels in ``font`` (a longer single word keeps its line)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}" if line else word
            if line and font.getlength(trial) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        if line:
            lines.append(line)
    return lines


def _denormalize(x: np.ndarray) -> np.ndarray:
    x = x * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return np.clip(np.nan_to_num(x, nan=0.5), 0.0, 1.0)


def save_grid(columns: dict[str, np.ndarray], path: str, caption: str, scale: int | None = None) -> str:
    """Writes a PNG with one row per image and one column per entry of ``columns``, captioned.

    ``scale`` enlarges each image (nearest neighbour); by default small images are enlarged to
    about :data:`MIN_TILE_PX` pixels. Text is :data:`CAPTION_PT` points at :data:`FIGURE_DPI`.
    """
    names = list(columns)
    n, h, w, _ = columns[names[0]].shape
    scale = scale or max(1, -(-MIN_TILE_PX // max(h, w)))
    ch, cw, pad = h * scale, w * scale, 6
    width = len(names) * (cw + pad) + pad
    font = caption_font()
    line_h = round(caption_font_px() * 1.3)
    lines = wrap_text(caption, font, width - 2 * pad)
    # Caption lines, a gap, then one line of column names right above the tiles.
    header = pad + line_h * len(lines) + (pad if lines else 0) + line_h
    canvas = Image.new("RGB", (width, header + n * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(names):
        draw.text((pad + j * (cw + pad), header - line_h), name, fill="black", font=font)
        for i in range(n):
            tile = Image.fromarray((columns[name][i] * 255).round().astype(np.uint8))
            tile = tile.resize((cw, ch), Image.NEAREST)
            canvas.paste(tile, (pad + j * (cw + pad), header + i * (ch + pad)))
    for k, line in enumerate(lines):
        draw.text((pad, pad + line_h * k), line, fill="black", font=font)
    canvas.save(path, dpi=(FIGURE_DPI, FIGURE_DPI))
    return path


def reconstruction_figure(method, model, images, key, path: str, stats: str = "visible") -> str:
    """Writes ``method.reconstruct``'s original | masked | reconstruction grid of ``images`` to ``path``."""
    cols = method.reconstruct(model, images, key, stats=stats)
    caption = cols.pop("caption", "")
    return save_grid({k: _denormalize(np.asarray(v)) for k, v in cols.items()}, path, caption)
