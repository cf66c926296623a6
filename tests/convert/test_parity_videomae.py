"""Numerical parity of maskjax's VideoMAE with Hugging Face ``VideoMAEForPreTraining`` (CPU, float32).

A small random HF model (every tensor randomised, so a swapped or transposed weight shows) is
converted; both sides get the same clip and the same tube mask (``bool_masked_pos``). Logits and
loss must agree within a scale-relative 1e-5 (HF computes its loss from ``pixel_values`` with its
own un-normalisation and per-channel target normalisation). HF's decoder LayerNorm is built
with PyTorch's default eps 1e-5 where the official model uses 1e-6; the reference is set to the
official value (and the default is checked separately to differ only slightly).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from maskjax.convert import cli  # noqa: E402
from maskjax.convert.common import (ArchitectureMismatchError, ConversionError, MissingKeyError,  # noqa: E402
                                    ShapeMismatchError, UnexpectedKeyError)
from maskjax.convert.hf_videomae import (SPEC_FILE, hf_videomae_to_maskjax, load_video_converted,  # noqa: E402
                                         load_video_converted_variables, maskjax_to_hf_videomae, merge_video_model)
from maskjax.masking.video import tube_mask  # noqa: E402
from maskjax.methods.video_mae import videomae_loss  # noqa: E402
from tests.convert.helpers import apply, assert_close, diff, hf_from_folder  # noqa: E402

BATCH, FRAMES, SIZE, PATCH, TUBELET = 2, 4, 32, 8, 2
GRID = (FRAMES // TUBELET, SIZE // PATCH, SIZE // PATCH)
RATIO = 0.75


def hf_config(**overrides):
    """A tiny VideoMAE: the "mu" ViT size (width 32, depth 2, 2 heads), decoder 16 wide, 1 layer."""
    kwargs = dict(image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=TUBELET, hidden_size=32,
                  num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, decoder_hidden_size=16,
                  decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64,
                  norm_pix_loss=True, use_mean_pooling=False, layer_norm_eps=1e-6, qkv_bias=True)
    kwargs.update(overrides)
    return transformers.VideoMAEConfig(**kwargs)


def random_hf(config, seed: int = 0):
    """An HF VideoMAEForPreTraining with every parameter random (LayerNorm scales near 1)."""
    torch.manual_seed(seed)
    model = transformers.VideoMAEForPreTraining(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm_before.weight") or name.endswith("layernorm_after.weight") \
                    or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.ndim >= 2 and name != "mask_token":
                p.copy_(torch.randn_like(p) / np.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.decoder.norm.eps = 1e-6  # the official value (HF hard-codes nn.LayerNorm's 1e-5)
    return model


def sd_numpy(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def converted():
    """(hf model, config dict, spec, params, extra, maskjax model)."""
    config = hf_config()
    hf = random_hf(config)
    spec, params, extra = hf_videomae_to_maskjax(sd_numpy(hf), config.to_dict())
    return hf, config.to_dict(), spec, params, extra, merge_video_model(spec, params, extra)


def clip_and_mask(seed: int = 3):
    rng = np.random.default_rng(seed)
    video = rng.standard_normal((BATCH, FRAMES, SIZE, SIZE, 3), dtype=np.float32)  # "normalised" frames
    keys = jax.random.split(jax.random.key(seed), BATCH)
    mask = tube_mask(keys, BATCH, GRID[0], GRID[1] * GRID[2], RATIO)
    return video, mask


def hf_forward(hf, video, mask):
    pixel_values = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 1, 4, 2, 3)))  # B T C H W
    with torch.no_grad():
        out = hf(pixel_values, bool_masked_pos=torch.from_numpy(np.array(mask.mask)))
    return out.logits.numpy(), float(out.loss)


def test_spec_detected_from_weights_and_config(converted):
    _, _, spec, _, _, model = converted
    assert (spec.variant, spec.num_frames, spec.image_size, spec.tubelet) == ("mu/8", FRAMES, SIZE, TUBELET)
    assert (spec.decoder_width, spec.decoder_depth, spec.decoder_heads) == (16, 1, 2)
    assert spec.norm_pix is True and model.grid == GRID


def test_logits_and_loss_match_hf(converted):
    hf, _, _, _, _, model = converted
    video, mask = clip_and_mask()
    ref_logits, ref_loss = hf_forward(hf, video, mask)
    pred, _ = apply(model, jnp.asarray(video), mask)
    assert pred.shape == ref_logits.shape == (BATCH, GRID[0] * int(RATIO * 16), TUBELET * PATCH * PATCH * 3)
    assert_close("VideoMAE mu/8 logits", pred, ref_logits)
    loss, _, _ = videomae_loss(model, jnp.asarray(video), mask, norm_pix=True)
    assert_close("VideoMAE mu/8 loss (norm_pix)", loss, ref_loss)
    hf.config.norm_pix_loss = False  # read at call time
    try:
        _, ref_raw = hf_forward(hf, video, mask)
    finally:
        hf.config.norm_pix_loss = True
    raw, _, _ = videomae_loss(model, jnp.asarray(video), mask, norm_pix=False)
    assert_close("VideoMAE mu/8 loss (raw pixels)", raw, ref_raw)


def test_hf_default_decoder_eps_differs_only_slightly(converted):
    hf, _, _, _, _, model = converted
    video, mask = clip_and_mask(seed=5)
    hf.decoder.norm.eps = 1e-5
    try:
        ref, _ = hf_forward(hf, video, mask)
    finally:
        hf.decoder.norm.eps = 1e-6
    _, rel = diff(apply(model, jnp.asarray(video), mask)[0], ref)
    assert 0 < rel < 1e-3


def test_round_trip_is_bitwise(converted):
    hf, config, spec, params, extra, _ = converted
    sd, out_config = maskjax_to_hf_videomae(spec, params, extra)
    original = sd_numpy(hf)
    # Hub spelling of the q/v biases on export; transformers 5 spells them query.bias / value.bias.
    renamed = {k.replace(".q_bias", ".query.bias").replace(".v_bias", ".value.bias"): v for k, v in sd.items()}
    assert set(renamed) == set(original)
    for k, v in original.items():
        assert renamed[k].dtype == v.dtype and np.array_equal(renamed[k], v), k
    for field in ("hidden_size", "num_hidden_layers", "num_frames", "tubelet_size", "decoder_hidden_size",
                  "decoder_num_attention_heads", "decoder_intermediate_size", "patch_size", "image_size"):
        assert out_config[field] == config[field], field
    # Reading the exported dict again gives the same variables, bit for bit.
    spec2, params2, extra2 = hf_videomae_to_maskjax(sd, out_config)
    assert spec2.variant == spec.variant
    flat = lambda t: {k: np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(t)[0]}
    a, b = flat(params), flat(params2)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_round_trip_through_folders(converted, tmp_path):
    hf, _, _, _, _, model = converted
    hf_dir, mj_dir, back_dir = tmp_path / "hf", tmp_path / "mj", tmp_path / "back"
    hf.save_pretrained(hf_dir)
    assert cli.main(["hf-videomae-to-maskjax", str(hf_dir), str(mj_dir)]) == 0
    assert (mj_dir / SPEC_FILE).exists()
    loaded = load_video_converted(str(mj_dir))
    video, mask = clip_and_mask(seed=7)
    ref, _ = hf_forward(hf, video, mask)
    assert_close("VideoMAE via CLI", apply(loaded, jnp.asarray(video), mask)[0], ref)
    assert cli.main(["maskjax-to-hf-videomae", str(mj_dir), str(back_dir)]) == 0
    assert cli.main(["maskjax-to-hf-videomae", str(mj_dir), str(back_dir)]) == 2  # exists, no --overwrite
    back = hf_from_folder("VideoMAEForPreTraining", str(back_dir))
    back.decoder.norm.eps = 1e-6
    for k, v in hf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert json.loads((back_dir / "config.json").read_text())["use_mean_pooling"] is False


def test_training_workdir_exports(converted, tmp_path):
    """A videomae training run's checkpoint (trainer layout) exports to a loadable HF folder."""
    from maskjax.core.checkpoint import Checkpointer

    hf, _, spec, params, extra, _ = converted
    workdir = tmp_path / "run"
    ckpt = Checkpointer(str(workdir / "checkpoints"))
    state = {"step": jnp.zeros((), jnp.int32), "params": jax.tree.map(jnp.asarray, params),
             "opt_state": {"mu": jax.tree.map(jnp.zeros_like, jax.tree.map(jnp.asarray, params))},
             "extra": jax.tree.map(jnp.asarray, extra)}
    ckpt.save(5, state, None, {"step": 5}, force=True)
    ckpt.wait()
    ckpt.close()
    config = {"method": "videomae_v2", "model": {"variant": spec.variant, "tubelet_size": TUBELET,
                                                 "decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2},
              "data": {"num_frames": FRAMES, "image_size": SIZE}, "loss": {"norm_pix": True}}
    (workdir / "config.json").write_text(json.dumps(config))
    assert cli.main(["maskjax-to-hf-videomae", str(workdir), str(tmp_path / "hf")]) == 0
    back = hf_from_folder("VideoMAEForPreTraining", str(tmp_path / "hf"))
    for k, v in hf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_mismatches_raise_clear_errors(converted, tmp_path):
    hf, config, spec, params, extra, _ = converted
    sd = sd_numpy(hf)
    bad = dict(sd)
    bad["decoder.head.weight"] = np.zeros((100, 16), np.float32)
    with pytest.raises(ShapeMismatchError, match="decoder.head.weight"):
        hf_videomae_to_maskjax(bad, config)
    bad = {k: v for k, v in sd.items() if "encoder.layer.1.output.dense.bias" not in k}
    with pytest.raises(MissingKeyError, match="encoder.layer.1.output.dense.bias"):
        hf_videomae_to_maskjax(bad, config)
    with pytest.raises(UnexpectedKeyError, match="surprise"):
        hf_videomae_to_maskjax({**sd, "decoder.surprise": np.zeros(3, np.float32)}, config)
    with pytest.raises(ArchitectureMismatchError, match="use_mean_pooling"):
        hf_videomae_to_maskjax({k: v for k, v in sd.items() if not k.startswith("videomae.layernorm")},
                               {**config, "use_mean_pooling": True})
    with pytest.raises(ArchitectureMismatchError, match="requested"):
        hf_videomae_to_maskjax(sd, config, variant="mu/16")
    with pytest.raises(ArchitectureMismatchError, match="num_frames"):
        hf_videomae_to_maskjax(sd, config, num_frames=8)
    with pytest.raises(ConversionError, match="num_frames"):
        hf_videomae_to_maskjax(sd, None, decoder_heads=2)  # no config: the clip shape is unknown
    spec2, _, _ = hf_videomae_to_maskjax(sd, None, decoder_heads=2, num_frames=FRAMES, image_size=SIZE)
    assert spec2.variant == "mu/8"
    # A model whose position buffers are not the standard table cannot be exported.
    broken = jax.tree.map(lambda x: x, extra)
    broken["decoder_pos_embed"] = np.asarray(broken["decoder_pos_embed"]) + 1.0
    with pytest.raises(ConversionError, match="sinusoid"):
        maskjax_to_hf_videomae(spec, params, broken)
    # The CLI reports (exit 1) instead of raising.
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    assert cli.main(["maskjax-to-hf-videomae", str(not_a_model), str(tmp_path / "x")]) == 2


def test_converted_directory_restores_bitwise(converted, tmp_path):
    from maskjax.convert.hf_videomae import save_video_converted

    _, _, spec, params, extra, _ = converted
    save_video_converted(str(tmp_path / "m"), spec, params, extra)
    spec2, params2, extra2 = load_video_converted_variables(str(tmp_path / "m"))
    assert spec2 == spec
    for a, b in ((params, params2), (extra, extra2)):
        la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
        assert len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))
    assert os.path.isdir(tmp_path / "m" / "variables")
