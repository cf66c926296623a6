"""Numerical parity with Hugging Face transformers (PyTorch, CPU, float32, random weights).

With the same weights and the same masking noise, maskjax's MAE and ``ViTMAEForPreTraining``
must give the same loss (with and without norm-pix), predictions, mask, ids_restore and encoder
output; ``ViTClassifier(pool="cls")`` must match ``ViTForImageClassification``. "Same" is a
scale-relative maximum error ``max|ours - ref| / max|ref|`` of at most 1e-5; the measured
values are printed (run with ``-s``) and listed in docs/convert_mae.md.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from maskjax.convert import ModelSpec, hf_to_maskjax, merge_model, save_hf  # noqa: E402
from maskjax.models.layers import sincos_2d  # noqa: E402
from tests.convert.helpers import (BASE_MAE, SMALL_MAE, apply, assert_close, hf_from_folder,  # noqa: E402
                                   hf_from_variables, inputs, mae_all, nchw, random_variables)

MODELS = {"mu4": SMALL_MAE, "B16": BASE_MAE}
BATCH = {"mu4": 2, "B16": 1}  # one B/16 image keeps the PyTorch side at about a second per forward


# B/16 is the paper size (README "Measured"); it runs with -m slow to keep CI inside its time budget.
@pytest.fixture(scope="module", params=[pytest.param("B16", marks=pytest.mark.slow), "mu4"], ids=str)
def mae_outputs(request):
    """(name, maskjax outputs, {norm_pix: HF outputs}) for one model, same weights and noise."""
    spec = MODELS[request.param]
    params, extra = random_variables(spec, seed=0)
    hf = hf_from_variables("ViTMAEForPreTraining", spec, params, extra)
    images, noise = inputs(spec, batch=BATCH[request.param])
    ours = {k: np.asarray(v) for k, v in mae_all(merge_model(spec, params, extra), jnp.asarray(images),
                                                      jnp.asarray(noise)).items()}
    ref, latents = {}, []
    # The encoder's last_hidden_state (after its final norm) is what hf.vit returns inside the
    # full forward; a hook records it instead of running the encoder a second time.
    hook = hf.vit.register_forward_hook(lambda module, args, out: latents.append(out.last_hidden_state.numpy()))
    with torch.no_grad():
        for norm_pix in (False, True):
            hf.config.norm_pix_loss = norm_pix  # read at call time by ViTMAEForPreTraining.forward
            out = hf(nchw(images), noise=torch.from_numpy(noise))
            ref[norm_pix] = {"loss": out.loss.numpy(), "pred": out.logits.numpy(), "mask": out.mask.numpy(),
                             "ids_restore": out.ids_restore.numpy(), "latent": latents[-1]}
    hook.remove()
    return request.param, ours, ref


@pytest.mark.parametrize("norm_pix", [False, True], ids=["pix", "normpix"])
def test_mae_loss_and_predictions_match_hf(mae_outputs, norm_pix):
    name, ours, ref = mae_outputs
    assert_close(f"MAE {name} loss (norm_pix={norm_pix})", ours[f"loss_normpix{int(norm_pix)}"], ref[norm_pix]["loss"])
    assert_close(f"MAE {name} predictions (norm_pix={norm_pix})", ours["pred"], ref[norm_pix]["pred"])


def test_mae_mask_and_ids_restore_match_hf(mae_outputs):
    _, ours, ref = mae_outputs
    for norm_pix in (False, True):
        np.testing.assert_array_equal(ours["mask"].astype(np.float32), ref[norm_pix]["mask"])
        np.testing.assert_array_equal(ours["ids_restore"], ref[norm_pix]["ids_restore"])


def test_mae_encoder_output_matches_hf(mae_outputs):
    name, ours, ref = mae_outputs
    np.testing.assert_array_equal(ref[False]["latent"], ref[True]["latent"])  # the loss target does not touch it
    assert ours["latent"].shape == ref[False]["latent"].shape  # [B, 1 + kept, D], after the final norm
    assert_close(f"MAE {name} encoder last_hidden_state", ours["latent"], ref[False]["latent"])


def test_sincos_position_embeddings_equal_hf():
    """HF's fixed 2-D sin-cos table is ours exactly (B/16 encoder and decoder, L, H/14)."""
    mod = pytest.importorskip("transformers.models.vit_mae.modeling_vit_mae")
    for width, grid in [(768, 14), (512, 14), (1024, 14), (1280, 16), (32, 4)]:
        if hasattr(mod, "build_2d_sinusoidal_position_embedding"):  # transformers 5
            table = mod.build_2d_sinusoidal_position_embedding(grid, grid, width, cls_token=True)
            # HF rotates the halves to the original MAE layout (column half first), see its comment.
            table = torch.cat([table[..., width // 2:], table[..., :width // 2]], dim=-1).numpy()
        else:  # transformers 4
            table = mod.get_2d_sincos_pos_embed(width, grid, add_cls_token=True).astype(np.float32)
        np.testing.assert_array_equal(table, sincos_2d(width, grid, grid, cls_token=True))


def _hf_random_classifier(spec: ModelSpec, seed: int = 0):
    """A ViTForImageClassification with random weights everywhere (LayerNorms and biases too)."""
    from maskjax.convert.hf_vit import hf_config

    config = hf_config(spec)
    config.pop("architectures"), config.pop("model_type")
    torch.manual_seed(seed)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**config)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.05) + (1.0 if "layernorm" in name and
                                                                                name.endswith("weight") else 0.0))
    return hf


CLASSIFIER = ModelSpec(kind="classifier", variant="mu/4", image_size=16, num_classes=10, pool="cls",
                       learned_pos_embed=True)


def test_classifier_from_hf_matches_vit_for_image_classification():
    """HF (random, transformers-5 in-memory key names) -> maskjax ViTClassifier(pool="cls")."""
    hf = _hf_random_classifier(CLASSIFIER)
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    spec, params, extra = hf_to_maskjax(sd, hf_config_dict(hf))
    assert (spec.kind, spec.pool, spec.num_classes, spec.variant) == ("classifier", "cls", 10, "mu/4")
    images, _ = inputs(spec)
    logits, _ = apply(merge_model(spec, params, extra), jnp.asarray(images))
    with torch.no_grad():
        ref = hf(nchw(images)).logits.numpy()
    assert_close("classifier mu4 logits (HF -> maskjax)", logits, ref)


def hf_config_dict(hf) -> dict:
    """The config.json dict of an in-memory HF model."""
    return hf.config.to_dict()


def test_classifier_b16_to_hf_matches():
    """maskjax ViTClassifier B/16 (random) -> ViTForImageClassification: same logits."""
    spec = dataclasses.replace(CLASSIFIER, variant="B/16", image_size=224, num_classes=1000)
    params, extra = random_variables(spec, seed=3)
    hf = hf_from_variables("ViTForImageClassification", spec, params, extra)
    images, _ = inputs(spec, batch=1)
    logits, _ = apply(merge_model(spec, params, extra), jnp.asarray(images))
    with torch.no_grad():
        ref = hf(nchw(images)).logits.numpy()
    assert_close("classifier B16 logits (maskjax -> HF)", logits, ref)


def test_encoder_export_loads_as_hf_vit_model(tmp_path):
    """An encoder-only maskjax ViT exports as HF ViTModel with the same last_hidden_state."""
    spec = ModelSpec(kind="encoder", variant="mu/4", image_size=16)
    params, extra = random_variables(spec, seed=4)
    folder = save_hf(str(tmp_path), spec, params, extra)
    hf = hf_from_folder("ViTModel", folder, add_pooling_layer=False)
    images, _ = inputs(spec)
    tokens, _ = apply(merge_model(spec, params, extra), jnp.asarray(images))
    with torch.no_grad():
        ref = hf(nchw(images)).last_hidden_state.numpy()
    assert_close("encoder mu4 last_hidden_state (maskjax -> HF ViTModel)", tokens, ref)
