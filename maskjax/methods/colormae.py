"""ColorMAE (Hinojosa, Liu, Ghanem, ECCV 2024): MAE whose masks come from filtered ("coloured") noise.

specs/methods_vision.md section 9, carlosh93/ColorMAE ``models/utils/masking_generator.py`` and
``models/colormae.py``. Everything but the mask is MAE (same model, target and loss: :class:`MAE`
is reused unchanged): a noise pattern is filtered to a colour (red = low-pass, blue = high-pass,
green = band-pass, the paper's default, purple = band-stop; :mod:`maskjax.masking.color_noise`),
cropped to the token grid, flipped, divided by its maximum, and its ``len_keep = int(L * (1 -
ratio))`` **largest** values stay visible. The mask is data-independent and costs no extra model
compute; the patterns are generated in-graph (the official npz and its generator are not released,
so the filters are ours, see the masking module).

Randomness (``colormae.sharing``):

* ``"example"`` (default): every example filters its own white noise from its own key and takes
  its own crop and flips (:func:`~maskjax.masking.color_noise.color_noise_mask`). A filtered field
  is stationary on the torus, so per-example crops and flips leave each mask's distribution as the
  official one; only the correlation between the masks of one batch differs.
* ``"batch"``: the official sharing. The official code holds a fixed stack of patterns (the npz)
  and, per (per-GPU) batch, applies one crop offset and one pair of flips to the whole stack and
  hands slice ``i`` to the ``i``-th image (slices ``0..B-1`` only, every step). Here the stack is
  ``num_patterns`` fields generated from ``pattern_seed`` (the stand-in for the npz; 512 = the
  official per-GPU batch, i.e. the slices it ever uses); the shared crop and flips are drawn from
  ``fold_in(fold_in(key(config.seed), salt), step)`` with the optimizer step, which the train
  state restores, so a resumed run draws the same ones and every micro-batch or device shard of a
  step shares them (the official shares them per GPU); each example's slice is drawn from its own key (a sample's
  mask must not depend on its position in the batch, which changes with micro-batching), so two
  examples of a batch may share a slice, which the official fixed slices ``0..B-1`` never do.
  Outside training (``step`` None) the step-0 crop is used; ``reconstruct`` draws it from its key.
"""

from __future__ import annotations

import jax

from maskjax.masking.color_noise import (COLORS, DEFAULT_FIELD_SIZE, DEFAULT_SIGMAS, color_noise_patterns,
                                         color_noise_windows, crop_flip_normalize)
from maskjax.methods import register
from maskjax.methods.mae import MAE

NAME = "colormae"
SHARING = ("example", "batch")
_SLOT_SALT = 0x510   # folded into an example key: its slice of the shared stack ("batch")
_CROP_SALT = 0xC0F   # folded into the seed key: the step's shared crop and flips ("batch")


@register(NAME)
class ColorMAE(MAE):
    """MAE with ColorMAE's filtered-noise masks; ``config.colormae`` picks the colour and the sharing."""

    @classmethod
    def config_section(cls) -> dict:
        """Colour, sharing mode and pattern options (defaults: green, per example, our filter widths)."""
        narrow, wide = DEFAULT_SIGMAS
        return {
            "color": "green",            # red | blue | green | purple
            "sharing": "example",        # example | batch (the official per-batch crop; module docstring)
            "field_size": DEFAULT_FIELD_SIZE,  # side of the periodic noise field, in patches
            "sigma_narrow": narrow,      # filter widths in patches (ours: the paper's are unpublished)
            "sigma_wide": wide,
            "num_patterns": 512,         # "batch": size of the fixed pattern stack
            "pattern_seed": 0,           # "batch": the stack's seed (the stand-in for the npz)
        }

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """MAE's checks, then the colour, sharing, filter widths and a field that holds the token grid."""
        super().check_config(config, errors)
        own = config.get(NAME)
        if own is None:
            errors.append(f"config has no '{NAME}' section; start the recipe from "
                          f"maskjax.config.method_config('{NAME}', base_config())")
            return
        if own.color not in COLORS:
            errors.append(f"{NAME}.color={own.color!r} is not a noise colour; use one of {list(COLORS)}")
        if own.sharing not in SHARING:
            errors.append(f"{NAME}.sharing={own.sharing!r}: use 'example' (own noise per example) or 'batch' "
                          "(the official shared crop of a fixed pattern stack)")
        if not 0.0 < own.sigma_narrow < own.sigma_wide:
            errors.append(f"{NAME}: the filter widths need 0 < sigma_narrow < sigma_wide, got "
                          f"{own.sigma_narrow} and {own.sigma_wide}")
        grid = _grid_side(config)
        if grid is not None and own.field_size < grid:
            errors.append(f"{NAME}.field_size={own.field_size} is smaller than the {grid}x{grid} token grid "
                          f"the mask is cropped to; use field_size >= {grid}")
        if own.num_patterns < 1:
            errors.append(f"{NAME}.num_patterns={own.num_patterns} must be at least 1")

    def __init__(self, config):
        super().__init__(config)
        own = config[NAME]
        self.color = own.color
        self.sharing = own.sharing
        self.field_size = int(own.field_size)
        self.sigmas = (float(own.sigma_narrow), float(own.sigma_wide))
        self.num_patterns = int(own.num_patterns)
        self.pattern_seed = int(own.pattern_seed)
        self.seed = int(config.get("seed", 0))

    def mask_windows(self, keys: jax.Array, grid: int, step: jax.Array | None = None,
                     crop_key: jax.Array | None = None) -> jax.Array:
        """The normalised noise windows [B, grid, grid] whose top values stay visible.

        ``keys``: per-example keys [B]; ``step``/``crop_key``: the shared crop of ``sharing="batch"``
        (the step's, or one drawn from ``crop_key``; see the module docstring).
        """
        if self.sharing == "example":
            return color_noise_windows(keys, grid, grid, self.color, self.field_size, self.sigmas)
        stack = color_noise_patterns(jax.random.key(self.pattern_seed), self.num_patterns, self.color,
                                     self.field_size, self.sigmas)
        if crop_key is None:
            base = jax.random.fold_in(jax.random.key(self.seed), _CROP_SALT)
            crop_key = jax.random.fold_in(base, 0 if step is None else step)
        windows = crop_flip_normalize(stack, jax.random.uniform(crop_key, (4,)), (grid, grid))
        slots = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, _SLOT_SALT), (), 0,
                                                      self.num_patterns))(keys)
        return windows[slots]

    def mask_noise(self, keys: jax.Array, grid: int, step: jax.Array | None = None,
                   crop_key: jax.Array | None = None) -> jax.Array:
        """MAE's masking noise [B, L] for these masks: the negated windows (small noise = kept).

        ``mask_from_noise(-window)`` keeps the ``len_keep`` largest window values, i.e. the official
        ``argsort(window, descending=True)[:len_keep]``.
        """
        windows = self.mask_windows(keys, grid, step, crop_key)
        return -windows.reshape(windows.shape[0], -1)

    def masking_noise(self, model, keys, batch, step=None):
        """MAE's masking noise replaced by the colour-noise windows of the per-example keys (and the step)."""
        del batch
        return self.mask_noise(keys, model.encoder.grid, step)

    def figure_noise(self, model, key, batch):
        """A figure's colour-noise mask: one key per example and a crop drawn from ``key``."""
        return self.mask_noise(jax.random.split(key, batch), model.encoder.grid,
                               crop_key=jax.random.fold_in(key, _CROP_SALT))

    def mask_caption(self) -> str:
        """The figure caption's start: the noise colour and ratio."""
        return f"{self.color} noise mask, ratio {self.mask_ratio:.2f}; "

    def flops(self, global_batch):
        """MAE's count (flop_count.mae_flops): the mask adds no matmul."""
        from maskjax.models.flop_count import mae_flops

        count = mae_flops(self.config, global_batch)
        count.method = NAME
        return count


def _grid_side(config) -> int | None:
    """Tokens per side of the image, or None when the variant or image size is invalid (reported elsewhere)."""
    from maskjax.models.vit import parse_variant

    try:
        _, patch = parse_variant(config.model.variant)
    except ValueError:
        return None
    size = config.data.image_size
    return size // patch if size >= patch and size % patch == 0 else None
