"""Figures of the masked-image-modeling methods that reconstruct or predict a target: MaskFeat's HOG
maps and MFM's spectra (the ``figures`` hook and evaluator), CrossMAE's partial reconstruction and
SimMIM's pixel reconstruction (the ``reconstruction`` evaluator's ``reconstruct``).

Every model is a randomly initialised tiny one (its parameters drawn from numpy: no initialiser is
compiled); each figure is one jitted program. The checks are on what a figure must show whatever
the weights: the target panels against independent computations (a flat image has no HOG glyph, an
edge's glyph runs along it, a sinusoid's spectrum peaks at its frequency, a low-pass filter removes
it), and the blank (grey) parts exactly where nothing is predicted.
"""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from PIL import Image

from maskjax.config import apply_overrides, load_config
from maskjax.core.mesh import logical_to_spec, make_mesh, normalize_rules
from maskjax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from maskjax.eval.reconstruction import MIN_TILE_PX, method_figures, reconstruction_figure
from maskjax.methods import make_method
from maskjax.models.layers import sincos_2d

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
TINY = {"model.variant": "mu/4", "data.image_size": 16, "global_batch": 16, "progress": False}
MEAN, STD = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)


def _config(recipe: str, **overrides):
    config = load_config(f"{CONFIGS / recipe}:smoke")
    apply_overrides(config, {**TINY, **overrides})
    return config


def random_model(method, seed: int = 0, sharded: bool = False):
    """``method.build()`` with N(0, 0.3^2) parameters and real sin-cos buffers, no initialiser compiled.

    ``sharded``: every variable placed on the config's mesh by its logical axes, as the evaluators
    receive a restored model (:func:`maskjax.eval.features.fresh_model`).
    """
    config = method.config
    mesh = make_mesh(config.mesh) if sharded else None
    rules = normalize_rules(config.sharding_rules) if sharded else None
    graphdef, state = nnx.split(nnx.eval_shape(lambda: method.build(nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(state):
        shape, dtype = var.get_value().shape, var.get_value().dtype
        if isinstance(var, nnx.Param):
            value = 0.3 * rng.standard_normal(shape)
        else:  # the only buffers of these models: MAE-style sin-cos tables with a cls row
            assert "pos_embed" in str(path), path
            grid = math.isqrt(shape[1] - 1)
            value = sincos_2d(shape[-1], grid, grid, cls_token=True)[None]
        value = jnp.asarray(value, dtype)
        if mesh is not None:
            spec = logical_to_spec(var.get_metadata().get("logical_axes"), shape, mesh, rules)
            value = jax.device_put(value, NamedSharding(mesh, spec))
        var.set_value(value)
    return nnx.merge(graphdef, state)


def normalize(unit: np.ndarray) -> np.ndarray:
    """[0, 1] RGB -> the ImageNet normalisation of the batches (what the models receive)."""
    return ((unit - MEAN) / STD).astype(np.float32)


def patch_blank(image: np.ndarray, patch: int) -> np.ndarray:
    """[B, H, W, C] -> bool [B, H/p, W/p]: the patches whose every value is NaN."""
    b, h, w, c = image.shape
    tiles = np.isnan(image).reshape(b, h // patch, patch, w // patch, patch, c)
    return tiles.all(axis=(2, 4, 5))


# --- MaskFeat: HOG maps ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def maskfeat():
    """(method, sharded random model) of a 16x16, 4x4-patch MaskFeat with one 4x4 HOG cell per token."""
    method = make_method(_config("maskfeat/vit_b.py", **{"maskfeat.hog_cell": 4}))
    return method, random_model(method, sharded=True)


def _edge_images() -> np.ndarray:
    """[flat 0.5, vertical edge, horizontal edge, random] in normalised space, 16x16 (4 images)."""
    flat = np.full((16, 16, 3), 0.5, np.float32)  # 0.5 - 0.5 ...: Sobel sums cancel exactly
    vertical = np.where(np.arange(16)[None, :, None] < 8, -1.0, 1.0) * np.ones((16, 16, 3), np.float32)
    horizontal = vertical.transpose(1, 0, 2)
    noise = np.random.default_rng(0).standard_normal((16, 16, 3))
    return np.stack([flat, vertical, horizontal, noise]).astype(np.float32)


def test_hog_figure_draws_the_target_and_the_prediction_on_masked_tokens_only(maskfeat):
    method, model = maskfeat
    images = _edge_images()
    key = jax.random.key(3)
    figures = method_figures(method, model, images, key)
    assert list(figures) == ["hog"]
    columns, caption = figures["hog"]
    assert list(columns) == ["image", "masked", "target HOG", "predicted HOG"]
    # 4x4 cells of 4 pixels, each glyph 16 pixels wide: 64x64 tiles, images enlarged 4x to match.
    assert all(v.shape == (4, 64, 64, 3) for v in columns.values())
    assert "9 unsigned orientation bins per 4x4-pixel cell" in caption
    want = np.clip(images * STD + MEAN, 0, 1).repeat(4, 1).repeat(4, 2)
    np.testing.assert_allclose(columns["image"], want, atol=1e-6)

    target = columns["target HOG"][..., 0]
    tiles = target.reshape(4, 4, 16, 4, 16).transpose(0, 1, 3, 2, 4)  # [B, cell row, cell col, 16, 16]
    # A flat image has no gradient: every glyph is black.
    assert (target[0] == 0).all()
    # A vertical edge between pixel columns 7 and 8 votes only in cell columns 1 and 2, all into
    # bin 4 (gx != 0, gy == 0): an exactly vertical line through the middle of those cells.
    lit = tiles[1] > 0
    assert not lit[:, [0, 3]].any() and lit[:, [1, 2]].any(axis=(2, 3)).all()
    assert set(np.nonzero(lit[:, [1, 2]].any(axis=(0, 1, 2)))[0]) == {7, 8}
    # A horizontal edge: cell rows 1 and 2 only, lines far wider than tall (bin 0: 0-20 degrees).
    lit = tiles[2] > 0
    assert not lit[[0, 3]].any() and lit[[1, 2]].any(axis=(2, 3)).all()
    rows, cols = np.nonzero(lit[1, 0])
    assert cols.max() - cols.min() >= 12 and rows.max() - rows.min() <= 4
    assert 0 <= target.min() and target.max() <= 1

    # The prediction is drawn on the masked tokens (the training mask of each example's key,
    # split from the figure's key) and blank on the visible ones; "masked" hides the same tokens.
    hidden = np.asarray(jax.jit(lambda k: method.masks(jax.random.split(k, 4), 4))(key)).reshape(4, 4, 4)
    assert hidden.any() and (~hidden).any()
    np.testing.assert_array_equal(patch_blank(columns["predicted HOG"], 16), ~hidden)
    np.testing.assert_array_equal(patch_blank(columns["masked"], 16), hidden)
    assert not np.isnan(columns["predicted HOG"][np.repeat(np.repeat(hidden, 16, 1), 16, 2)]).any()


def test_token_cells_inverts_the_per_token_target_order():
    from maskjax.methods.maskfeat import token_cells
    from maskjax.objectives.hog import hog_cells, hog_token_targets

    # 16x16 patches of 2x2 cells of 8 pixels: the (channel, bin, cell row, cell column) order matters.
    images = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
    tokens, cells = jax.jit(lambda x: (hog_token_targets(x, 16, 8, 9), hog_cells(x, 9, 8)))(images)
    np.testing.assert_array_equal(np.asarray(token_cells(np.asarray(tokens), 2, 2, 3, 9)), np.asarray(cells))


def test_figures_evaluator_writes_the_pngs(maskfeat, tmp_path):
    from maskjax.data.modalities import get_modality
    from maskjax.eval.cli import resolve_evals
    from maskjax.eval.registry import EvalContext, run_evaluators

    method, model = maskfeat
    config = method.config
    # `maskjax eval --evals figures` adds the evaluator with its defaults when the config has none.
    assert resolve_evals(config, "figures") == ["figures"]
    config.evals.figures.num_images = 4
    source = get_modality("image").open_source(config, "eval")
    ctx = EvalContext(config=config, workdir=str(tmp_path), step=7, method=method, train_source=None,
                      eval_source=source, final=False)
    assert run_evaluators(model, ctx, ["figures"]) == {}
    ctx.final = True
    run_evaluators(model, ctx, ["figures"])
    for name in ("hog_7.png", "hog.png"):
        with Image.open(tmp_path / name) as png:
            width, height = png.size
        # 4 columns of 64-pixel tiles enlarged to MIN_TILE_PX (128), 6-pixel gaps; 4 rows under a caption.
        assert width == 4 * (MIN_TILE_PX + 6) + 6 and height > 4 * (MIN_TILE_PX + 6)


def test_figures_evaluator_names_a_method_without_figures(tmp_path):
    from maskjax.data.modalities import get_modality
    from maskjax.errors import UsageError
    from maskjax.eval.registry import EvalContext, run_evaluators

    config = _config("simmim/vit_b_800ep.py", **{"masking.mask_patch_size": 8})
    config.evals.figures = dict(type="figures", num_images=2)
    ctx = EvalContext(config=config, workdir=str(tmp_path), step=0, method=make_method(config),
                      train_source=None, eval_source=get_modality("image").open_source(config, "eval"), final=True)
    with pytest.raises(UsageError, match="'simmim' has no figures"):
        run_evaluators(None, ctx, ["figures"])


# --- MFM: spectra ------------------------------------------------------------------------------------


def test_spectra_figure_shows_the_spectrum_the_mask_and_the_prediction():
    radius = 4.0
    method = make_method(_config("mfm/vit_b.py", **{"mfm.radius1": radius}))
    model = random_model(method)
    k = 6  # cycles per 16 pixels: outside the low-pass disk of radius 4
    x = np.arange(16)
    sinusoid = np.broadcast_to((0.5 + 0.3 * np.cos(2 * np.pi * k * x / 16))[None, :, None], (16, 16, 3))
    noise = np.random.default_rng(2).uniform(0.1, 0.9, (16, 16, 3))
    unit = np.stack([sinusoid, noise]).astype(np.float32)
    columns, caption = method_figures(method, model, normalize(unit), jax.random.key(0))["spectra"]
    assert list(columns) == ["original", "corrupted input", "reconstruction", "spectrum", "kept frequencies",
                             "spectrum of input", "predicted spectrum"]
    assert all(v.shape == (2, 16, 16, 3) and np.isfinite(v).all() and 0 <= v.min() and v.max() <= 1
               for v in columns.values())
    assert "alternate low-pass / high-pass" in caption
    np.testing.assert_allclose(columns["original"], unit, atol=1e-5)

    spectrum = columns["spectrum"][..., 0]
    centre = (8, 8)  # fftshift: the zero frequency of a 16-point transform sits at index 8
    # The horizontal sinusoid: brightest (1, the scale) at (0, +-k) cycles, i.e. columns 8 -+ 6 of
    # the centre row, everything else but the zero frequency near 0.
    others = spectrum[0].copy()
    others[centre] = 0
    peaks = set(zip(*np.nonzero(np.isclose(others, 1.0, atol=1e-5))))
    assert peaks == {(8, 8 - k), (8, 8 + k)}
    others[8, [8 - k, 8 + k]] = 0
    assert others.max() < 0.01
    # The random image's panel, against numpy: log(1 + |ortho FFT|), channel mean, scaled by the
    # largest non-zero frequency.
    mag = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(unit[1], axes=(0, 1), norm="ortho"), axes=(0, 1))).mean(-1))
    scale = np.delete(mag.ravel(), 8 * 16 + 8).max()
    np.testing.assert_allclose(spectrum[1], np.clip(mag / scale, 0, 1), atol=1e-5)

    # Row 0 is low-pass (kept: distance to the centre < radius), row 1 high-pass (the complement).
    d2 = (np.arange(16)[:, None] - 8) ** 2 + (np.arange(16)[None, :] - 8) ** 2
    np.testing.assert_array_equal(columns["kept frequencies"][0, ..., 0], (d2 < radius ** 2).astype(np.float32))
    np.testing.assert_array_equal(columns["kept frequencies"][1, ..., 0], (d2 >= radius ** 2).astype(np.float32))
    # The low-pass filter removed the sinusoid: its input is flat, its input spectrum dark at +-k.
    np.testing.assert_allclose(columns["corrupted input"][0], 0.5, atol=1e-5)
    assert columns["spectrum of input"][0, 8, [8 - k, 8 + k], 0].max() < 0.01
    # The predicted spectrum is the reconstruction's (scaled by the same original's maximum).
    assert not np.allclose(columns["predicted spectrum"], columns["spectrum"], atol=1e-3)


# --- CrossMAE: partial reconstruction ----------------------------------------------------------------


def test_crossmae_figure_shows_exactly_the_reconstructed_patches(tmp_path):
    config = _config("crossmae/vit_s.py", **{"model.decoder_width": 8, "model.decoder_depth": 1,
                                             "model.decoder_heads": 2, "crossmae.kept_mask_ratio": 0.25})
    method = make_method(config)
    model = random_model(method)
    images = normalize(np.random.default_rng(4).uniform(0, 1, (3, 16, 16, 3)))
    captured = {}

    @nnx.jit
    def reconstruct(m, x):
        out = method.reconstruct(m, x, jax.random.key(5))
        captured["caption"] = out.pop("caption")
        return out

    out = {k: np.asarray(v) for k, v in reconstruct(model, images).items()}
    assert sorted(out) == ["masked", "original", "reconstructed only", "reconstruction"]
    hidden = patch_blank(out["masked"], 4)
    only = ~patch_blank(out["reconstructed only"], 4)
    # 16 patches: 4 visible, 12 hidden, 4 of them (kept_mask_ratio 0.25 of 16) reconstructed and
    # shown alone; visible and hidden-but-not-reconstructed patches are blank.
    assert (hidden.sum((1, 2)) == 12).all() and (only.sum((1, 2)) == 4).all()
    np.testing.assert_array_equal(only, hidden & ~patch_blank(out["reconstruction"], 4))
    mask = np.repeat(np.repeat(only, 4, 1), 4, 2)
    np.testing.assert_array_equal(out["reconstructed only"][mask], out["reconstruction"][mask])
    assert not np.allclose(out["reconstructed only"][mask], out["original"][mask])
    assert "4 of 16 patches reconstructed" in captured["caption"]


# --- SimMIM: pixel reconstruction --------------------------------------------------------------------


class JittedReconstruct:
    """``method`` whose ``reconstruct`` runs as one jitted program (column order and caption kept).

    The evaluator calls ``reconstruct`` eagerly, compiling each operation on its own: seconds per
    model on a CPU, and the drawing under test is the same.
    """

    def __init__(self, method):
        self.method = method

    def reconstruct(self, model, images, key, stats="visible"):
        """``method.reconstruct`` under ``nnx.jit``."""
        meta = {}

        def run(m, x, k):
            out = self.method.reconstruct(m, x, k, stats=stats)
            meta["caption"], meta["order"] = out.pop("caption"), list(out)
            return out

        out = nnx.jit(run)(model, images, key)
        return {**{k: out[k] for k in meta["order"]}, "caption": meta["caption"]}


def test_simmim_reconstruction_png_hides_whole_mask_units(tmp_path):
    method = make_method(_config("simmim/vit_b_800ep.py", **{"masking.mask_patch_size": 8}))
    model = random_model(method)
    images = normalize(np.random.default_rng(6).uniform(0.05, 0.95, (2, 16, 16, 3)))
    path = reconstruction_figure(JittedReconstruct(method), model, images, jax.random.key(7),
                                 str(tmp_path / "recon.png"))
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    tile, pad, rows = MIN_TILE_PX, 6, 2  # 16-pixel images enlarged 8x to 128
    assert png.shape[1] == 3 * (tile + pad) + pad
    top = png.shape[0] - pad - rows * (tile + pad)  # the tiles sit under the caption, bottom-aligned

    def cell(row, col):
        y, x = top + row * (tile + pad), pad + col * (tile + pad)
        return png[y:y + tile, x:x + tile]

    for row in range(rows):
        original, masked, recon = cell(row, 0), cell(row, 1), cell(row, 2)
        grey = (masked == 128).all(-1)
        # 8-pixel mask units of a 16-pixel image (64-pixel squares here): ceil(4 x 0.6) = 3 of 4
        # hidden, each whole; visible pixels are the input in every column.
        units = grey.reshape(2, 64, 2, 64).transpose(0, 2, 1, 3).reshape(4, -1)
        assert units.all(1).sum() == 3 and (units.all(1) | ~units.any(1)).all()
        np.testing.assert_array_equal(masked[~grey], original[~grey])
        np.testing.assert_array_equal(recon[~grey], original[~grey])
        assert (recon[grey] != original[grey]).any()  # the prediction, not the input
