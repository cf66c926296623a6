"""ColorMAE (specs/methods_vision.md section 9): MAE with filtered-noise masks, in maskjax.

References: the official ``ColorMasking.color_noise_mask`` (the ``int(L(1-r))`` largest window
values stay visible; ``tests/mim_mask_reference.ref_color_keep``) and ``extract_windows`` (one crop
offset and one pair of flips for the whole pattern stack; ``ref_color_window``). The loss is
checked against MAE's own forward under the same mask (only the mask may differ), and the masks'
statistics against uniform random masks.
"""
from __future__ import annotations

import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.config import apply_overrides, load_config
from maskjax.masking import Mask, mask_from_noise, uniform_noise
from maskjax.masking.color_noise import color_noise_patterns
from maskjax.methods import make_method
from maskjax.models.layers import patchify
from maskjax.objectives.pixels import masked_mse, norm_pix_target
from tests.mim_mask_reference import ref_color_keep, ref_color_window

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "colormae" / "vit_b.py")
TINY = {"model.variant": "mu/4", "data.image_size": 16, "model.decoder_width": 32, "model.decoder_depth": 1,
        "model.decoder_heads": 2, "global_batch": 16, "optim.base_lr": 1e-2, "progress": False}


def _config(arg="smoke", **overrides):
    config = load_config(f"{CONFIG}:{arg}")
    apply_overrides(config, {**TINY, **overrides})
    return config


def _keys(seed, n):
    return jax.random.split(jax.random.key(seed), n)


@pytest.fixture(scope="module")
def tiny_model():
    """The smoke recipe at test size (norm-pix target, as the paper) and one model built from it."""
    config = _config()
    assert config.loss.norm_pix
    method = make_method(config)
    return config, method, method.build(nnx.Rngs(0))


def _neighbour_visible_rate(hidden: np.ndarray, grid: int) -> float:
    """Of the right and lower neighbours of visible patches, the fraction that are visible too."""
    vis = ~hidden.reshape(-1, grid, grid)
    both = (vis[:, :, 1:] & vis[:, :, :-1]).sum() + (vis[:, 1:, :] & vis[:, :-1, :]).sum()
    return float(both / (vis[:, :, :-1].sum() + vis[:, :-1, :].sum()))


@pytest.mark.parametrize("sharing", ["example", "batch"])
def test_mask_keeps_exactly_the_top_len_keep_values(sharing):
    method = make_method(_config(**{"colormae.sharing": sharing, "colormae.num_patterns": 6}))
    grid, n = 14, 12
    keys = _keys(0, n)
    windows, mask = jax.jit(lambda k: (method.mask_windows(k, grid, jnp.int32(3)),
                                       mask_from_noise(method.mask_noise(k, grid, jnp.int32(3)), 0.75)))(keys)
    windows, got_hidden, got_keep = np.asarray(windows), np.asarray(mask.mask), np.asarray(mask.ids_keep)
    len_keep = int(grid * grid * 0.25)
    assert got_keep.shape == (n, len_keep) == (n, 49)
    for i in range(n):
        ids_keep, hidden = ref_color_keep(windows[i], 0.75)  # the official argsort(descending)
        np.testing.assert_array_equal(got_hidden[i], hidden)
        np.testing.assert_array_equal(got_keep[i], ids_keep)
        flat = windows[i].reshape(-1)
        assert flat[~hidden].min() > flat[hidden].max()  # exactly the largest values are visible
        assert flat.max() == pytest.approx(1.0)          # NormalizeBySliceMax


def test_loss_is_maes_forward_under_the_colour_mask(tiny_model):
    _, method, model = tiny_model
    images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    keys = _keys(2, 4)
    windows = np.asarray(jax.jit(lambda k: method.mask_windows(k, 4))(keys))
    # Reference: the official mask from the windows; MAE's model (its decoder unshuffles
    # [visible in ids_keep order, mask tokens] with ids_restore) and norm-pix MSE on hidden patches.
    ids_keep, hidden = (np.stack(a) for a in zip(*(ref_color_keep(w, 0.75) for w in windows)))
    order = np.concatenate([ids_keep, np.stack([np.flatnonzero(h) for h in hidden])], axis=1)
    mask = Mask(ids_keep=jnp.asarray(ids_keep, jnp.int32), mask=jnp.asarray(hidden),
                ids_restore=jnp.asarray(np.argsort(order, axis=1), jnp.int32))

    @nnx.jit
    def both(model, images, keys, mask):
        loss, metrics = method.loss(model, {"image": images}, keys, True, step=jnp.int32(0))
        pred, _ = model(images, mask)
        expected, _ = masked_mse(pred, norm_pix_target(patchify(images, 4)), mask.mask)
        return loss, metrics["loss"], expected

    loss, logged, expected = both(model, images, keys, mask)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    assert float(logged) == float(loss)


def test_green_masks_are_clustered_and_unbiased_in_position():
    grid, n = 14, 512
    colors = ("green", "red", "blue")
    methods = {c: make_method(_config(**{"colormae.color": c})) for c in colors}

    @jax.jit
    def masks(keys):
        out = {c: mask_from_noise(m.mask_noise(keys, grid), 0.75).mask for c, m in methods.items()}
        return {**out, "random": mask_from_noise(uniform_noise(keys, n, grid * grid), 0.75).mask}

    hidden = {k: np.asarray(v) for k, v in masks(_keys(3, n)).items()}
    rates = {k: _neighbour_visible_rate(v, grid) for k, v in hidden.items()}
    for color in colors:
        assert (hidden[color].sum(axis=1) == grid * grid - 49).all()  # MAE's count, every example
    # Stationary noise and per-example crops: every position is visible 1/4 of the time.
    freq = (~hidden["green"]).mean(axis=0)
    assert np.abs(freq - 0.25).max() < 5 * np.sqrt(0.25 * 0.75 / n)
    # Random masks: a visible patch's neighbour is visible with probability (49 - 1) / 195.
    assert rates["random"] == pytest.approx(48 / 195, abs=0.02)
    # Band-pass green keeps visible patches in small clusters, low-pass red in larger blobs;
    # high-pass blue spreads them out (the colours' intended structure).
    assert rates["red"] > rates["green"] > rates["random"] + 0.1
    assert rates["blue"] < rates["random"] - 0.05


def test_batch_sharing_uses_one_crop_and_flip_per_step():
    g, size = 6, 8
    method = make_method(_config(**{"colormae.sharing": "batch", "colormae.num_patterns": g,
                                    "colormae.field_size": size, "data.image_size": 16}))
    grid, n = 4, 24
    keys = _keys(4, n)
    # The fixed stack: pattern_seed 0's fields (the stand-in for the official npz).
    windows_and_stack = jax.jit(lambda k, s: (method.mask_windows(k, grid, s),
                                              color_noise_patterns(jax.random.key(0), g, "green", size, (0.7, 1.4))))
    stack = np.asarray(windows_and_stack(keys, jnp.int32(0))[1], np.float64)
    draws = lambda k, s: windows_and_stack(k, s)[0]

    transforms = list(itertools.product(range(size - grid + 1), range(size - grid + 1), (False, True),
                                        (False, True)))
    crops = np.array([[ref_color_window(stack[j], *t[:2], grid, *t[2:]) for j in range(g)] for t in transforms])

    def shared_transform(windows):
        """The (top, left, hflip, vflip) that map some slice of the stack to every window at once."""
        close = np.abs(crops[:, :, None] - windows[None, None]).max(axis=(-2, -1)) < 1e-5  # [T, g, n]
        return [t for t, ok in zip(transforms, close.any(axis=1).all(axis=1)) if ok]

    w3 = np.asarray(draws(keys, jnp.int32(3)))
    assert shared_transform(w3), "no single crop and flip explains every window of the step"
    assert len({tuple(np.round(w, 5).ravel()) for w in w3}) <= g  # slices of the fixed stack only
    # A sample's window does not depend on the rest of the batch (micro-batching, sharding)...
    others = jnp.concatenate([keys[5:9], _keys(5, n - 4)])
    np.testing.assert_array_equal(np.asarray(draws(others, jnp.int32(3)))[:4], w3[5:9])
    # ...and the shared crop is the step's: the same at the same step (a resume), new at another.
    np.testing.assert_array_equal(np.asarray(draws(keys, jnp.int32(3))), w3)
    crops = {tuple(shared_transform(np.asarray(draws(keys, jnp.int32(s))))[0]) for s in range(6)}
    assert len(crops) > 1


def test_check_config_messages():
    from maskjax.errors import ConfigError
    from maskjax.train.validate import validate_config

    validate_config(_config())
    for overrides, match in [({"colormae.color": "pink"}, "not a noise colour"),
                             ({"colormae.sharing": "global"}, "'example'.*'batch'"),
                             ({"colormae.sigma_narrow": 2.0}, "sigma_narrow < sigma_wide"),
                             ({"colormae.field_size": 3}, "field_size >= 4"),
                             ({"colormae.num_patterns": 0}, "at least 1"),
                             ({"masking.ratio": 0.99}, "keeps 0 of the 16 patches")]:
        with pytest.raises(ConfigError, match=match):
            validate_config(_config(**overrides))
    with pytest.raises(ValueError, match="noise colours"):
        load_config(f"{CONFIG}:color=pink")


def test_configs_follow_the_recipe():
    full = load_config(CONFIG)
    assert (full.method, full.colormae.color, full.model.variant, full.masking.ratio) == ("colormae", "green",
                                                                                         "B/16", 0.75)
    assert full.loss.norm_pix and full.global_batch == 4096 and full.epochs == 800
    assert full.optim.base_lr * full.global_batch / full.optim.lr_batch_denominator == pytest.approx(2.4e-3)
    assert load_config(f"{CONFIG}:color=purple").colormae.color == "purple"
    cifar = load_config(f"{CONFIG}:cifar")
    assert (cifar.model.variant, cifar.data.image_size, cifar.model.decoder_width) == ("Pico/4", 32, 96)


def test_features_reconstruct_and_flops(tiny_model):
    config, method, model = tiny_model
    images = jax.random.normal(jax.random.key(5), (3, 16, 16, 3))
    cls, recon, masked = nnx.jit(lambda m, x: (
        method.features(m, x),
        *(lambda o: (o["reconstruction"], o["masked"]))(method.reconstruct(m, x, jax.random.key(6)))))(model, images)
    assert cls.shape == (3, 32)
    hidden_pixels = np.isnan(np.asarray(masked)).any(axis=-1)
    assert recon.shape == images.shape and hidden_pixels.mean() == pytest.approx(0.75)
    # The mask adds no matmul: MAE's analytic count.
    from maskjax.models.flop_count import mae_flops

    count = method.flops(16)
    assert count.method == "colormae" and count.train == pytest.approx(mae_flops(config, 16).train)


@pytest.mark.slow  # three trainer runs: ~40 s of CPU with a cold compile cache
def test_trains_and_resumes_exactly(tmp_path):
    from maskjax.train.loop import train

    # "batch" sharing: the step's crop must come back identical after a resume.
    overrides = {"total_steps": 4, "colormae.sharing": "batch", "colormae.num_patterns": 8}
    straight = train(_config(**overrides), str(tmp_path / "straight"), run_evals=False)
    first = train(_config(**overrides), str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    resumed = train(_config(**overrides), str(tmp_path / "split"), run_evals=False)
    assert first.step == 2 and resumed.step == straight.step == 4
    losses = lambda r: {h["step"]: h["loss"] for h in r.history}
    split = {**losses(first), **losses(resumed)}
    np.testing.assert_allclose([split[s] for s in range(1, 5)], [losses(straight)[s] for s in range(1, 5)],
                               rtol=1e-6)
    assert all(np.isfinite(list(split.values())))
