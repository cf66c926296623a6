"""maskjax -> Hugging Face -> maskjax is exact (bitwise), in memory, through files and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

pytest.importorskip("safetensors")

from maskjax.convert import (ArchitectureMismatchError, ConversionError, ModelSpec, hf_to_maskjax,  # noqa: E402
                             load_converted_variables, load_hf, maskjax_to_hf, save_converted, save_hf)
from maskjax.convert.cli import main as convert_main  # noqa: E402
from maskjax.convert.common import flatten  # noqa: E402
from maskjax.convert.hf_vit import legacy_keys  # noqa: E402
from tests.convert.helpers import SMALL_MAE, random_variables  # noqa: E402

SPECS = {
    "mae": SMALL_MAE,
    "encoder": ModelSpec(kind="encoder", variant="mu/4", image_size=16),
    "classifier": ModelSpec(kind="classifier", variant="mu/4", image_size=16, num_classes=5, pool="cls",
                            learned_pos_embed=True),
}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    fa, fb = flatten(a), flatten(b)
    assert sorted(fa) == sorted(fb)
    for path in fa:
        x, y = np.asarray(fa[path]), np.asarray(fb[path])
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert x.tobytes() == y.tobytes(), f"{'/'.join(path)} changed in the round trip"


def _same_spec(a: ModelSpec, b: ModelSpec) -> None:
    assert dataclasses.replace(a, source="") == dataclasses.replace(b, source="")


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_round_trip_in_memory_is_exact(kind):
    spec = SPECS[kind]
    params, extra = random_variables(spec, seed=7)
    sd, config = maskjax_to_hf(spec, params, extra)
    spec2, params2, extra2 = hf_to_maskjax(sd, config)
    _same_spec(spec, spec2)
    assert_bitwise_equal(params, params2)
    assert_bitwise_equal(extra, extra2)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_round_trip_through_hf_folder_is_exact(kind, tmp_path):
    spec = SPECS[kind]
    params, extra = random_variables(spec, seed=8)
    folder = save_hf(str(tmp_path), spec, params, extra)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    spec2, params2, extra2 = hf_to_maskjax(*load_hf(folder))
    _same_spec(spec, spec2)
    assert_bitwise_equal(params, params2)
    assert_bitwise_equal(extra, extra2)


def test_cli_round_trip_converted_dir(tmp_path):
    params, extra = random_variables(SMALL_MAE, seed=9)
    src = save_converted(str(tmp_path / "mj"), SMALL_MAE, params, extra)
    assert convert_main(["maskjax-to-hf", src, str(tmp_path / "hf")]) == 0
    assert convert_main(["hf-to-maskjax", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    spec2, params2, extra2 = load_converted_variables(str(tmp_path / "back"))
    _same_spec(SMALL_MAE, spec2)
    assert_bitwise_equal(params, params2)
    assert_bitwise_equal(extra, extra2)
    # outputs are never overwritten by accident
    assert convert_main(["maskjax-to-hf", src, str(tmp_path / "hf")]) == 2


def test_cli_exports_a_training_workdir(tmp_path, tiny):
    """A maskjax training run's newest checkpoint (params only; optimizer state skipped) -> HF."""
    import jax
    import optax

    from maskjax.core.checkpoint import Checkpointer

    config = tiny()
    spec = ModelSpec(kind="mae", variant="mu/4", image_size=16, decoder_width=32, decoder_depth=1, decoder_heads=2,
                     decoder_mlp_ratio=4.0, norm_pix=bool(config.loss.norm_pix), mask_ratio=float(config.masking.ratio))
    params, extra = random_variables(spec, seed=10)
    workdir = tmp_path / "run"
    os.makedirs(workdir)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    state = {"step": jax.numpy.asarray(3, jax.numpy.int32), "params": params,
             "opt_state": optax.adamw(1e-3).init(params), "extra": extra}
    ckpt = Checkpointer(str(workdir / "checkpoints"))
    ckpt.save(3, state, None, {"process_count": 1, "num_workers": 0})
    ckpt.close()
    assert convert_main(["maskjax-to-hf", str(workdir), str(tmp_path / "hf")]) == 0
    config_json = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config_json["norm_pix_loss"] == bool(config.loss.norm_pix)
    spec2, params2, extra2 = hf_to_maskjax(*load_hf(str(tmp_path / "hf")))
    assert (spec2.variant, spec2.decoder_depth, spec2.decoder_heads) == ("mu/4", 1, 2)
    assert_bitwise_equal(params, params2)
    assert_bitwise_equal(extra, extra2)


def test_reads_transformers_5_names_and_save_pretrained_output(tmp_path):
    """transformers 5 renames modules in memory and writes MAE decoder layers under another name."""
    assert legacy_keys({"vit.layers.3.attention.q_proj.weight": 0, "layers.0.mlp.fc2.bias": 0,
                        "decoder.decoder_encoder.layer.1.attention.o_proj.bias": 0,
                        "decoder.decoder_layers.0.mlp.fc1.weight": 0}) == {
        "vit.encoder.layer.3.attention.attention.query.weight": 0, "encoder.layer.0.output.dense.bias": 0,
        "decoder.decoder_layers.1.attention.output.dense.bias": 0,
        "decoder.decoder_layers.0.intermediate.dense.weight": 0}
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    params, extra = random_variables(SMALL_MAE, seed=12)
    hf = transformers.ViTMAEForPreTraining.from_pretrained(save_hf(str(tmp_path / "a"), SMALL_MAE, params, extra))
    hf.save_pretrained(str(tmp_path / "b"))  # whatever layout the installed transformers writes
    spec2, params2, extra2 = hf_to_maskjax(*load_hf(str(tmp_path / "b")))
    assert_bitwise_equal(params, params2)
    assert_bitwise_equal(extra, extra2)


# --- HF-side errors -------------------------------------------------------------------------

def _hf(kind="mae"):
    spec = SPECS[kind]
    return maskjax_to_hf(spec, *random_variables(spec, seed=13))


def test_hf_config_mismatches_are_refused():
    sd, config = _hf()
    with pytest.raises(ArchitectureMismatchError, match="hidden_act='gelu_new'"):
        hf_to_maskjax(sd, dict(config, hidden_act="gelu_new"))
    with pytest.raises(ArchitectureMismatchError, match="num_attention_heads=4; this maskjax ViT size has 2 heads"):
        hf_to_maskjax(sd, dict(config, num_attention_heads=4))
    with pytest.raises(ArchitectureMismatchError, match="unsupported Hugging Face architecture 'ViTMSNModel'"):
        hf_to_maskjax(sd, dict(config, architectures=["ViTMSNModel"]))
    with pytest.raises(ArchitectureMismatchError, match="checkpoint is ViT mu/4 but Pico/4 was requested"):
        hf_to_maskjax(sd, config, variant="Pico/4")
    with pytest.warns(UserWarning, match="layer_norm_eps=1e-12"):
        hf_to_maskjax(sd, dict(config, layer_norm_eps=1e-12))


def test_hf_missing_and_misshapen_keys_are_named():
    sd, config = _hf()
    broken = {k: v for k, v in sd.items() if k != "decoder.decoder_layers.1.attention.attention.key.bias"}
    key = r"'decoder\.decoder_layers\.1\.attention\.attention\.key\.bias'"
    with pytest.raises(ConversionError, match=r"missing 1 key.*" + key):
        hf_to_maskjax(broken, config)
    broken = dict(sd, **{"vit.encoder.layer.0.attention.attention.value.weight": np.zeros((32, 16), np.float32)})
    with pytest.raises(ConversionError, match=r"'vit\.encoder\.layer\.0\.attention\.attention\.value\.weight': "
                                              r"checkpoint has shape \(32, 16\), maskjax mae mu/4 expects \(32, 32\)"):
        hf_to_maskjax(broken, config)


def test_gap_classifier_has_no_hf_equivalent():
    spec = dataclasses.replace(SPECS["classifier"], pool="gap")
    with pytest.raises(ConversionError, match="no Hugging Face ViT equivalent"):
        maskjax_to_hf(spec, *random_variables(spec, seed=14))
