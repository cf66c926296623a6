"""Reconstruction figures (original | masked | reconstruction, for any method with ``reconstruct``) and
the ``figures`` evaluator (any method with ``figures``: HOG targets, spectra, ...).

The method (the contract's optional ``reconstruct``) runs its own forward pass and returns
arrays in the input's normalisation plus a caption; this module only draws them. For MAE with a
norm-pix target the caption names how predictions were de-normalised: ``"hidden"`` uses each
hidden patch's own ground-truth statistics (the official demo; it leaks them), ``"visible"``
one mean and variance per image from its visible patches only.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx
from PIL import Image, ImageDraw, ImageFont

from maskjax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from maskjax.errors import UsageError
from maskjax.eval.features import say, take
from maskjax.eval.registry import register
from maskjax.methods import NotSupported

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


def display(x) -> np.ndarray:
    """A ``figures`` column for :func:`save_grid`: clipped to [0, 1], NaN (blank) drawn grey like a hidden patch."""
    return np.clip(np.nan_to_num(np.asarray(x, np.float32), nan=0.5), 0.0, 1.0)


def method_figures(method, model, images, key) -> dict[str, tuple[dict[str, np.ndarray], str]]:
    """``method.figures`` run as one jitted program: ``{name: (columns as numpy, caption)}``.

    The captions are Python strings, taken out while tracing (so they never enter the program);
    the figures and columns keep the method's order (a jitted dict comes back sorted by key).
    """
    captions: dict[str, str] = {}
    order: dict[str, list[str]] = {}

    def arrays(model, images, key):
        out = {}
        for name, columns in method.figures(model, images, key).items():
            columns = dict(columns)
            captions[name] = columns.pop("caption", "")
            order[name] = list(columns)
            out[name] = columns
        return out

    out = jax.device_get(nnx.jit(arrays)(model, images, key))
    return {name: ({k: np.asarray(out[name][k]) for k in columns}, captions[name]) for name, columns in order.items()}


def save_method_figures(method, model, images, key, directory: str, suffix: str = "") -> list[str]:
    """Writes each of :func:`method_figures` to ``<directory>/<name><suffix>.png``; returns the paths.

    The method draws (its arrays are in display space, see
    :meth:`maskjax.methods.base.Method.figures`); this only lays out the grids.
    """
    paths = []
    for name, (columns, caption) in method_figures(method, model, images, key).items():
        path = os.path.join(directory, f"{name}{suffix}.png")
        paths.append(save_grid({k: display(v) for k, v in columns.items()}, path, caption))
    return paths


@register("figures")
def figures_evaluator(model, options, ctx) -> dict:
    """Writes each of ``method.figures`` as ``<name>[_step].png`` (options: ``num_images``, default 8)."""
    images, _ = take(ctx, ctx.eval_source, options.get("num_images", 8), seed=1)
    try:
        paths = save_method_figures(ctx.method, model, images, jax.random.key(0), ctx.workdir,
                                    "" if ctx.final else f"_{ctx.step}")
    except NotSupported as e:
        raise UsageError(f"{e}: the 'figures' evaluator has nothing to draw (the 'reconstruction' "
                         "evaluator draws reconstruct() where the method has one)") from e
    for path in paths:
        say(f"wrote {path}")
    return {}
