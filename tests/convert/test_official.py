"""Official MAE (timm-named) state dicts -> maskjax, checked against Hugging Face PyTorch models.

The official state dicts are assembled in the test from the HF torch modules' attributes
(``helpers.official_from_hf``), independently of the converter under test.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from maskjax.convert import (ArchitectureMismatchError, MissingKeyError, ShapeMismatchError,  # noqa: E402
                             UnexpectedKeyError, inspect_official, load_converted, maskjax_to_official,
                             merge_model, official_to_maskjax, save_hf)
from maskjax.convert.cli import main as convert_main  # noqa: E402
from maskjax.convert.torch_io import save_torch  # noqa: E402
from maskjax.masking import mask_from_noise  # noqa: E402
from tests.convert.helpers import (MASK_RATIO, SMALL_MAE, apply, assert_close, hf_from_folder, inputs,  # noqa: E402
                                   mae_all, nchw, official_from_hf, random_variables)


@pytest.fixture(scope="module")
def hf_mae(tmp_path_factory):
    """A random mu/4 ViTMAEForPreTraining (norm-pix loss) plus its images and noise."""
    params, extra = random_variables(SMALL_MAE, seed=11)
    folder = save_hf(str(tmp_path_factory.mktemp("hf_official")), SMALL_MAE, params, extra)
    hf = hf_from_folder("ViTMAEForPreTraining", folder)
    hf.config.norm_pix_loss = True
    return hf, *inputs(SMALL_MAE)


@pytest.fixture(scope="module")
def hf_classifier():
    """A random mu/4 ViTForImageClassification (every tensor random, LayerNorms included)."""
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                    image_size=16, patch_size=4, num_labels=7, layer_norm_eps=1e-6, hidden_act="gelu")
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():
        for _, p in hf.named_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return hf


def test_visualize_checkpoint_matches_hf(hf_mae, tmp_path):
    """mae_visualize_*-style state dict (encoder + decoder) -> MaskedAutoencoder: same loss/predictions."""
    hf, images, noise = hf_mae
    sd = official_from_hf(hf, "visualize")
    info = inspect_official(sd)
    assert (info["kind"], info["variant"], info["image_size"], info["decoder_depth"]) == ("visualize", "mu/4", 16, 2)
    spec, params, extra = official_to_maskjax(sd, decoder_heads=4)
    assert (spec.kind, spec.decoder_width, spec.decoder_heads) == ("mae", 32, 4)
    ours = mae_all(merge_model(spec, params, extra), jnp.asarray(images), jnp.asarray(noise))
    loss, pred = ours["loss_normpix1"], ours["pred"]
    with torch.no_grad():
        ref = hf(nchw(images), noise=torch.from_numpy(noise))
    assert_close("official visualize mu4 loss (norm_pix=True)", loss, ref.loss.numpy())
    assert_close("official visualize mu4 predictions", pred, ref.logits.numpy())


def test_pretrain_checkpoint_matches_hf_encoder(hf_mae):
    """mae_pretrain_*-style state dict (encoder only) -> ViT: same encoder output on the same mask."""
    hf, images, noise = hf_mae
    spec, params, extra = official_to_maskjax(official_from_hf(hf, "pretrain"), variant="mu/4", kind="pretrain")
    assert spec.kind == "encoder"
    latent, _ = apply(merge_model(spec, params, extra), jnp.asarray(images),
                      mask_from_noise(jnp.asarray(noise), MASK_RATIO))
    with torch.no_grad():
        ref = hf.vit(nchw(images), noise=torch.from_numpy(noise)).last_hidden_state.numpy()
    assert_close("official pretrain mu4 encoder output", latent, ref)


def test_finetuned_cls_checkpoint_matches_vit_for_image_classification(hf_classifier):
    hf = hf_classifier
    spec, params, extra = official_to_maskjax(official_from_hf(hf, "finetuned", pool="cls"), kind="finetuned")
    assert (spec.kind, spec.pool, spec.num_classes, spec.learned_pos_embed) == ("classifier", "cls", 7, True)
    images, _ = inputs(spec)
    logits, _ = apply(merge_model(spec, params, extra), jnp.asarray(images))
    with torch.no_grad():
        ref = hf(nchw(images)).logits.numpy()
    assert_close("official finetuned (cls pool) mu4 logits", logits, ref)


def test_finetuned_global_pool_checkpoint_matches_torch_reference(hf_classifier):
    """The MAE fine-tune head: mean of patch tokens (pre-norm) -> fc_norm -> head; no final norm."""
    hf = hf_classifier
    rng = np.random.default_rng(5)
    fc_norm = {"fc_norm.weight": (1 + 0.1 * rng.standard_normal(32)).astype(np.float32),
               "fc_norm.bias": (0.1 * rng.standard_normal(32)).astype(np.float32)}
    sd = official_from_hf(hf, "finetuned", pool="gap", head=fc_norm)
    assert "norm.weight" not in sd
    spec, params, extra = official_to_maskjax(sd)
    assert (spec.pool, spec.num_classes) == ("gap", 7)
    images, _ = inputs(spec)
    logits, _ = apply(merge_model(spec, params, extra), jnp.asarray(images))
    with torch.no_grad():
        hidden = hf.vit(nchw(images), output_hidden_states=True).hidden_states[-1]  # last block, before norm
        pooled = torch.nn.functional.layer_norm(hidden[:, 1:].mean(1), (32,),
                                                torch.from_numpy(fc_norm["fc_norm.weight"]),
                                                torch.from_numpy(fc_norm["fc_norm.bias"]), eps=1e-6)
        ref = hf.classifier(pooled).numpy()
    assert_close("official finetuned (global pool) mu4 logits", logits, ref)


def test_official_round_trip_and_cli(hf_mae, tmp_path):
    """.pth {"model": sd} -> `maskjax convert mae-official` -> load_converted -> official again: exact."""
    hf, _, _ = hf_mae
    sd = official_from_hf(hf, "visualize")
    save_torch(sd, str(tmp_path / "mae_visualize_vit_mu.pth"), nest="model")
    out = str(tmp_path / "converted")
    assert convert_main(["mae-official", str(tmp_path / "mae_visualize_vit_mu.pth"), out, "--variant", "mu/4",
                         "--kind", "visualize", "--decoder-heads", "4"]) == 0
    model = load_converted(out)
    spec, params, extra = official_to_maskjax(sd, decoder_heads=4)
    back = maskjax_to_official(spec, *_variables(model))
    assert sorted(back) == sorted(sd)
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key], err_msg=key)
    # and maskjax-to-official through the CLI writes the same tensors
    assert convert_main(["maskjax-to-official", out, str(tmp_path / "again.pth")]) == 0
    again = torch.load(str(tmp_path / "again.pth"), weights_only=True)["model"]
    for key in sd:
        np.testing.assert_array_equal(again[key].numpy(), sd[key], err_msg=key)


def _variables(model):
    from maskjax.convert import model_variables

    return model_variables(model)


# --- error messages -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrain_sd(hf_mae):
    return official_from_hf(hf_mae[0], "pretrain")


def test_missing_key_is_named(pretrain_sd):
    sd = dict(pretrain_sd)
    del sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(MissingKeyError, match=r"missing 1 key.*'blocks\.1\.mlp\.fc2\.bias'"):
        official_to_maskjax(sd)


def test_shape_mismatch_names_key_and_both_shapes(pretrain_sd):
    sd = dict(pretrain_sd)
    sd["blocks.1.mlp.fc2.weight"] = np.zeros((32, 100), np.float32)
    with pytest.raises(ShapeMismatchError, match=r"'blocks\.1\.mlp\.fc2\.weight': checkpoint has shape \(32, 100\), "
                                                 r"maskjax encoder mu/4 expects \(32, 128\)"):
        official_to_maskjax(sd, variant="mu/4")


def test_unexpected_key_is_named(pretrain_sd):
    sd = dict(pretrain_sd, **{"blocks.0.attn.rel_pos_h": np.zeros((3, 4), np.float32)})
    with pytest.raises(UnexpectedKeyError, match=r"'blocks\.0\.attn\.rel_pos_h'"):
        official_to_maskjax(sd)


def _abstract_official(width: int, depth: int, patch: int = 16, grid: int = 14) -> dict:
    """An official-layout pretrain state dict of zero-strided arrays: real shapes, no memory."""
    z = lambda *shape: np.broadcast_to(np.float32(0), shape)
    sd = {"cls_token": z(1, 1, width), "pos_embed": z(1, grid * grid + 1, width),
          "patch_embed.proj.weight": z(width, 3, patch, patch), "patch_embed.proj.bias": z(width),
          "norm.weight": z(width), "norm.bias": z(width)}
    for i in range(depth):
        sd.update({f"blocks.{i}.norm1.weight": z(width), f"blocks.{i}.attn.qkv.weight": z(3 * width, width),
                   f"blocks.{i}.mlp.fc1.weight": z(4 * width, width)})
    return sd


def test_wrong_architecture_large_into_base_is_refused():
    sd = _abstract_official(1024, 24)  # ViT-L/16
    assert inspect_official(sd)["variant"] == "L/16"
    with pytest.raises(ArchitectureMismatchError, match=r"checkpoint is ViT L/16 but B/16 was requested: "
                                                        r"'patch_embed\.proj\.weight' has shape \(1024, 3, 16, 16\), "
                                                        r"B/16 expects \(768, 3, 16, 16\).*24 blocks.*12"):
        official_to_maskjax(sd, variant="B/16")


def test_wrong_kind_and_unknown_size_are_refused(pretrain_sd):
    with pytest.raises(ArchitectureMismatchError, match="'pretrain' checkpoint.*not the requested 'finetuned'"):
        official_to_maskjax(pretrain_sd, kind="finetuned")
    with pytest.raises(ArchitectureMismatchError, match="no maskjax ViT size has width 1000, depth 7"):
        inspect_official(_abstract_official(1000, 7))
    with pytest.raises(ArchitectureMismatchError, match="position-embedding interpolation"):
        official_to_maskjax(pretrain_sd, image_size=32)


def test_cli_reports_errors_without_traceback(pretrain_sd, tmp_path, capsys):
    path = str(tmp_path / "ckpt.pth")
    save_torch(pretrain_sd, path, nest="model")
    assert convert_main(["mae-official", path, str(tmp_path / "out"), "--variant", "B/16"]) == 2
    err = capsys.readouterr().err
    assert "error: checkpoint is ViT mu/4 but B/16 was requested" in err and "Traceback" not in err
