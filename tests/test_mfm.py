"""MFM (Masked Frequency Modeling): the frequency loss against a numpy transcription of the official
``FrequencyLoss`` + ``MFM.forward`` reduction, the normalisation round trip around the corruption,
the PixelShuffle head layout, the official initialisation, config checks, training + exact resume
and the features / reconstruction of the method (specs/methods_vision.md section 12)."""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.masking.frequency import mfm_base_mask, mfm_freq_mask
from maskjax.objectives.frequency import masked_frequency_loss

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "mfm" / "vit_b.py")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # timm IMAGENET_DEFAULT_MEAN / STD (MFM.normalize_img)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# --- numpy transcriptions of the official code (Jiahao000/MFM c9194b1) -------------------------------

def official_tensor2freq(x: np.ndarray, patch_factor: int = 1) -> np.ndarray:
    """FrequencyLoss.tensor2freq on NCHW: patch stack [N, P, C, h, w], ortho fft2, fftshift, [re, im]."""
    _, _, h, w = x.shape
    ph, pw = h // patch_factor, w // patch_factor
    patches = [x[:, :, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw]
               for i in range(patch_factor) for j in range(patch_factor)]
    y = np.stack(patches, 1).astype(np.float64)
    freq = np.fft.fftshift(np.fft.fft2(y, norm="ortho"), axes=(-2, -1))
    return np.stack([freq.real, freq.imag], -1)


def official_mfm_loss(pred_nchw: np.ndarray, target_nchw: np.ndarray, mask: np.ndarray, gamma: float = 1.0):
    """FrequencyLoss.loss_formulation (no matrix) + MFM.forward with RECOVER_TARGET_TYPE 'masked'."""
    tmp = (official_tensor2freq(pred_nchw) - official_tensor2freq(target_nchw)) ** 2
    loss_recon = np.sqrt(tmp[..., 0] + tmp[..., 1] + 1e-12) ** gamma  # [N, P, C, H, W]
    mask = mask[:, None]                                               # mask.unsqueeze(1): [N, 1, H, W]
    in_chans = pred_nchw.shape[1]
    return (loss_recon * (1 - mask[:, None])).sum() / (1 - mask).sum() / in_chans / loss_recon.shape[1]


def official_corrupt_then_normalize(x01_nchw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MFM.frequency_transform (fft2, fftshift, mask, ifftshift, ifft2, real, clamp) then normalize_img."""
    freq = np.fft.fftshift(np.fft.fft2(x01_nchw.astype(np.float64)), axes=(-2, -1)) * mask[:, None]
    x = np.clip(np.fft.ifft2(np.fft.ifftshift(freq, axes=(-2, -1))).real, 0.0, 1.0)
    return (x - MEAN[:, None, None]) / STD[:, None, None]


# --- the loss -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_frequency_loss_matches_the_official_code(gamma):
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(4, 8, 12, 3)).astype(np.float32)   # non-square: rows and columns are not swapped
    target = rng.normal(size=(4, 8, 12, 3)).astype(np.float32)
    mask = (rng.random((4, 8, 12)) < 0.6).astype(np.float32)   # any 0/1 mask, per image
    got = masked_frequency_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask), gamma=gamma)
    want = official_mfm_loss(np.moveaxis(pred, -1, 1), np.moveaxis(target, -1, 1), mask, gamma)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_the_ratio_of_sums_runs_over_the_batch_or_over_groups():
    rng = np.random.default_rng(1)
    pred, target = (rng.normal(size=(4, 16, 16, 3)).astype(np.float32) for _ in range(2))
    keys = jax.random.split(jax.random.key(3), 4)
    masks = np.array(jax.vmap(lambda k: mfm_freq_mask(k, 16, 16, 3.0))(keys))
    masks[0], masks[1] = np.asarray(mfm_base_mask(16, 16, 3.0)), 1 - np.asarray(mfm_base_mask(16, 16, 3.0))
    p, t = np.moveaxis(pred, -1, 1), np.moveaxis(target, -1, 1)
    whole = masked_frequency_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(masks))
    np.testing.assert_allclose(float(whole), official_mfm_loss(p, t, masks), rtol=1e-5)
    # One ratio over the batch is not the mean of per-image ratios (low-pass images weigh more).
    per_image = np.mean([official_mfm_loss(p[i:i + 1], t[i:i + 1], masks[i:i + 1]) for i in range(4)])
    assert abs(float(whole) - per_image) > 1e-3
    # group_size=2: the official per-GPU loss on two "GPUs" of 2 images, averaged as DDP averages gradients.
    grouped = masked_frequency_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(masks), group_size=2)
    want = np.mean([official_mfm_loss(p[g:g + 2], t[g:g + 2], masks[g:g + 2]) for g in (0, 2)])
    np.testing.assert_allclose(float(grouped), want, rtol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of group_size 3"):
        masked_frequency_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(masks), group_size=3)


@pytest.mark.parametrize("low_pass", [True, False])
def test_only_the_masked_frequencies_are_scored(low_pass):
    """A prediction equal to the target on the masked frequencies scores ~0 whatever the kept ones hold."""
    rng = np.random.default_rng(2)
    target = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    base = np.asarray(mfm_base_mask(16, 16, 3.0))
    mask = np.stack([base if low_pass else 1 - base] * 2)
    # A real image whose spectrum lives on the kept frequencies only (the mask is point-symmetric
    # about the centre, so the filtered spectrum stays Hermitian and the real part loses nothing).
    noise = np.moveaxis(rng.normal(size=(2, 16, 16, 3)), -1, 1)
    kept = np.fft.fftshift(np.fft.fft2(noise), axes=(-2, -1)) * mask[:, None]
    other = np.moveaxis(np.fft.ifft2(np.fft.ifftshift(kept, axes=(-2, -1))).real, 1, -1) * 100.0
    loss = lambda p, m: float(masked_frequency_loss(jnp.asarray(p, jnp.float32), jnp.asarray(target), jnp.asarray(m)))
    assert loss(target + other, mask) == pytest.approx(1e-6, abs=2e-5)  # sqrt(1e-12) per frequency
    assert loss(target + other, 1 - mask) > 1.0  # the same change on the masked frequencies is scored


# --- normalisation, corruption and the head -----------------------------------------------------------

def test_normalisation_round_trip_and_corruption_match_the_official_pipeline():
    from maskjax.data.transforms import Normalize
    from maskjax.methods.mfm import corrupt_normalized, from_unit_range, to_unit_range

    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    batch = np.stack([Normalize()(im) for im in u8])   # what maskjax's pipeline feeds the loss
    unit = u8.astype(np.float32) / 255.0                 # the official ToTensor() image
    np.testing.assert_allclose(np.asarray(to_unit_range(jnp.asarray(batch))), unit, atol=1e-6)
    np.testing.assert_allclose(np.asarray(from_unit_range(jnp.asarray(unit))), batch, atol=1e-6)
    np.testing.assert_allclose(np.asarray(from_unit_range(to_unit_range(jnp.asarray(batch)))), batch, atol=2e-6)

    masks = np.stack([np.asarray(mfm_base_mask(16, 16, 2.5)), 1 - np.asarray(mfm_base_mask(16, 16, 2.5)),
                      np.ones((16, 16), np.float32)])  # low-pass, high-pass, nothing removed
    got = np.asarray(corrupt_normalized(jnp.asarray(batch), jnp.asarray(masks)))
    want = np.moveaxis(official_corrupt_then_normalize(np.moveaxis(unit, -1, 1), masks), 1, -1)
    np.testing.assert_allclose(got, want, atol=3e-5)
    np.testing.assert_allclose(got[2], batch[2], atol=3e-5)  # an all-ones mask gives the input back
    assert np.abs(got[0] - batch[0]).max() > 0.1 and np.abs(got[1] - batch[1]).max() > 0.1


def test_head_reads_outputs_in_pixel_shuffle_order():
    from maskjax.methods.mfm import pixel_shuffle_tokens

    b, c, p, gh, gw = 2, 3, 2, 3, 4
    conv_out = np.random.default_rng(4).normal(size=(b, c * p * p, gh, gw)).astype(np.float32)  # 1x1 conv, NCHW
    # torch.nn.PixelShuffle(p): out[n, ch, h*p + i, w*p + j] = in[n, ch*p*p + i*p + j, h, w]
    shuffled = np.zeros((b, c, gh * p, gw * p), np.float32)
    for ch in range(c):
        for i in range(p):
            for j in range(p):
                shuffled[:, ch, i::p, j::p] = conv_out[:, ch * p * p + i * p + j]
    tokens = conv_out.reshape(b, c * p * p, gh * gw).transpose(0, 2, 1)  # the tokens' row-major order
    got = np.asarray(pixel_shuffle_tokens(jnp.asarray(tokens), p, gh, gw))
    np.testing.assert_array_equal(got, np.moveaxis(shuffled, 1, -1))


# --- model, config, training --------------------------------------------------------------------------

def _config(**overrides):
    from maskjax.config import apply_overrides, load_config

    config = load_config(CONFIG + ":smoke")
    base = {"model.variant": "mu/4", "data.image_size": 16, "global_batch": 16, "optim.base_lr": 1e-2,
            "progress": False, "mfm.radius1": 16.0 * 16 / 224}  # the official radius scaled to 16x16
    base.update(overrides)
    apply_overrides(config, base)
    return config


def _build(config):
    """The method and its model, initialised in one compiled program (eager init compiles op by op)."""
    from maskjax.methods import make_method

    method = make_method(config)
    return method, nnx.jit(lambda: method.build(nnx.Rngs(0)))()


@pytest.fixture(scope="module")
def built():
    """One officially initialised mu/4 model at 32x32 (r1 scaled to 32), shared: each build compiles for seconds."""
    config = _config(**{"data.image_size": 32, "mfm.radius1": 16.0 * 32 / 224})
    return (config, *_build(config))


def test_official_initialisation(built):
    _, _, model = built
    enc, std = model.encoder, 0.02
    pos = np.asarray(enc.pos_embed[...])
    assert isinstance(enc.pos_embed, nnx.Param) and pos.shape == (1, 65, 32)
    # timm trunc_normal_(std, a=-std, b=std): cut at one sigma, std 0.02 * 0.5396.
    assert np.abs(pos).max() <= std and 0.9 < pos.std() / (std * 0.5396) < 1.1
    assert np.abs(np.asarray(enc.cls_token[...])).max() <= std
    params = nnx.state(model, nnx.Param)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path)
        if "bias" in name and "head" not in name:
            assert not np.asarray(leaf).any(), name
    for index, block in enumerate(enc.blocks):
        for kernel, bound in ((block.attn.proj.kernel, std / math.sqrt(2 * (index + 1))),  # fix_init_weight
                              (block.mlp.fc2.kernel, std / math.sqrt(2 * (index + 1))),
                              (block.attn.qkv.kernel, std), (block.mlp.fc1.kernel, std)):
            assert bound * 0.9 < np.abs(np.asarray(kernel[...])).max() <= bound * (1 + 1e-6), index
    head_bound = 1 / math.sqrt(32)  # PyTorch's default 1x1 conv init (MFM never re-initialises its head)
    for leaf in (model.head.kernel[...], model.head.bias[...]):
        assert 0.8 * head_bound < np.abs(np.asarray(leaf)).max() <= head_bound


def test_fix_init_weight_rescale_of_scanned_blocks():
    """With model.scan_layers the kernels are stacked: layer i (0-based) is divided by sqrt(2 (i + 1))."""
    from maskjax.methods.mfm import _block_rescale

    stacked = jnp.ones((3, 2, 2))
    got = np.asarray(_block_rescale(("blocks", "mlp", "fc2", "kernel"), stacked, scanned=True))
    np.testing.assert_allclose(got[:, 0, 0], [1 / math.sqrt(2), 1 / 2, 1 / math.sqrt(6)], rtol=1e-6)
    listed = np.asarray(_block_rescale(("blocks", 2, "attn", "proj", "kernel"), stacked[0], scanned=False))
    np.testing.assert_allclose(listed, 1 / math.sqrt(6), rtol=1e-6)
    untouched = [("blocks", 0, "attn", "qkv", "kernel"), ("blocks", "mlp", "fc1", "kernel"),
                 ("patch_embed", "proj", "kernel")]
    for path in untouched:
        assert (np.asarray(_block_rescale(path, stacked, scanned=True)) == 1).all(), path


def test_check_config_messages():
    from maskjax.errors import ConfigError
    from maskjax.train.validate import validate_config

    validate_config(_config())
    cases = {
        "mfm.radius1": (16.0, "low-pass mask hides nothing.*mfm.radius1=1.14"),
        "mfm.loss_group_size": (3, "loss_group_size 3 does not divide the micro-batch 16"),
        "mfm.init": ("xavier", "mfm.init 'xavier' is unknown"),
        "mfm.sample_ratio": (1.5, "sample_ratio 1.5 is a probability"),
        "model.in_chans": (1, "in_chans must be 3"),
    }
    for field, (value, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            validate_config(_config(**{field: value}))
    with pytest.raises(ConfigError, match="0 < radius1 < radius2"):
        validate_config(_config(**{"mfm.radius2": 0.5}))


def test_cifar_config_scales_the_radius_to_32_pixels():
    from maskjax.config import load_config
    from maskjax.config.recipes import MIM_COMPARISON

    c = load_config(CONFIG + ":cifar")
    assert c.data.image_size == 32 and c.model.variant == MIM_COMPARISON["variant"]
    assert c.mfm.radius1 == pytest.approx(16 * 32 / 224)
    paper = load_config(CONFIG)
    assert (paper.global_batch, paper.epochs, paper.optim.base_lr, paper.optim.lr_batch_denominator) == (
        2048, 300, 3e-4, 512)
    assert (paper.mfm.radius1, paper.mfm.radius2, paper.mfm.sample_ratio) == (16.0, 999.0, 0.5)


@pytest.mark.slow  # three trainer runs: 25-45 s of CPU with a cold compile cache (2 loaded cores)
def test_trains_and_resumes_exactly(tmp_path):
    from maskjax.train.loop import train

    straight = train(_config(total_steps=4), str(tmp_path / "straight"))
    first = train(_config(total_steps=4), str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    resumed = train(_config(total_steps=4), str(tmp_path / "split"))
    assert first.step == 2 and resumed.step == straight.step == 4
    losses = lambda r: {h["step"]: h["loss"] for h in r.history}
    split = {**losses(first), **losses(resumed)}
    np.testing.assert_allclose([split[s] for s in range(1, 5)], [losses(straight)[s] for s in range(1, 5)],
                               rtol=1e-6)
    assert all(np.isfinite(h["loss"]) and 0.0 <= h["low_pass_fraction"] <= 1.0 for h in straight.history)
    # The absolute position embedding is learned (USE_APE): a parameter the optimiser updates.
    assert "pos_embed" in straight.state["params"]["encoder"]


def test_loss_is_the_official_forward_on_the_drawn_masks(built):
    """method.loss = numpy MFM.forward on the model's prediction, masks drawn per example from the keys."""
    config, method, model = built
    rng = np.random.default_rng(5)
    u8 = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    unit = u8.astype(np.float32) / 255.0
    batch = {"image": jnp.asarray((unit - MEAN) / STD), "label": jnp.zeros((4,), jnp.int32)}
    keys = jax.random.split(jax.random.key(7), 4)

    @nnx.jit
    def run(model, batch, keys):
        (loss, metrics), grads = nnx.value_and_grad(lambda m: method.loss(m, batch, keys, True), has_aux=True)(model)
        masks = method.freq_masks(keys, 4, 32)
        return loss, metrics, grads, masks

    loss, metrics, grads, masks = run(model, batch, keys)
    masks = np.asarray(masks)
    np.testing.assert_array_equal(masks, np.asarray(jax.vmap(
        lambda k: mfm_freq_mask(k, 32, 32, config.mfm.radius1))(keys)))  # one mask per example key
    corrupted = np.moveaxis(official_corrupt_then_normalize(np.moveaxis(unit, -1, 1), masks), 1, -1)
    pred = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(corrupted, jnp.float32)))
    want = official_mfm_loss(np.moveaxis(pred, -1, 1), np.moveaxis(np.asarray(batch["image"]), -1, 1), masks)
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)
    assert float(metrics["low_pass_fraction"]) == np.mean(masks[:, 16, 16] == 1)
    pos_grad = np.asarray(grads["encoder"]["pos_embed"][...])
    assert np.isfinite(pos_grad).all() and np.abs(pos_grad).max() > 0  # the position embedding is learned


def test_features_reconstruction_and_flops(built):
    from maskjax.methods.mfm import corrupt_normalized

    config, method, model = built
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    base = mfm_base_mask(32, 32, config.mfm.radius1)

    @nnx.jit
    def forward(model, images):
        out = method.reconstruct(model, images, jax.random.key(1), spectra=True)
        expected = corrupt_normalized(images, jnp.stack([base, 1 - base, base, 1 - base]))  # rows: low, high, ...
        return (model.encoder(images)[0], method.features(model, images), method.features(model, images, "cls"),
                {k: v for k, v in out.items() if k != "caption"}, expected)

    tokens, pooled, cls, out, expected = forward(model, images)
    assert pooled.shape == cls.shape == (4, 32) and method.feature_name() == "pooled"
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(tokens[:, 1:].mean(axis=1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cls), np.asarray(tokens[:, 0]), rtol=1e-5, atol=1e-6)
    assert sorted(out) == sorted(["original", "corrupted", "reconstruction", "spectrum original",
                                  "spectrum corrupted", "spectrum reconstruction"])
    assert all(v.shape == images.shape and np.isfinite(np.asarray(v)).all() for v in out.values())
    np.testing.assert_allclose(np.asarray(out["corrupted"]), np.asarray(expected), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["original"]), np.asarray(images))

    # Hand count for mu/4 at 32x32: L = 64 patches of 48 values, width 32, depth 2, MLP 128, cls + 64 tokens.
    layer = 2 * 65 * 32 * 128 + 2 * 2 * 65 * 32 * 65 + 2 * 2 * 65 * 32 * 128
    forward_flops = 2 * 64 * 48 * 32 + 2 * layer + 2 * 64 * 32 * 48
    assert method.flops(16).train == pytest.approx(3 * 16 * forward_flops)
