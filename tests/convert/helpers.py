"""Shared pieces of the converter and parity tests: random weights, HF models, differences."""

from __future__ import annotations

import numpy as np
from flax import nnx

from maskjax.convert.common import unflatten
from maskjax.convert.store import ModelSpec, layout
from maskjax.models.layers import sincos_2d
from maskjax.models.vit import parse_variant

# (id, spec) of the models the parity tests run: a micro model and the paper's ViT-B/16 MAE.
SMALL_MAE = ModelSpec(kind="mae", variant="mu/4", image_size=16, decoder_width=32, decoder_depth=2,
                      decoder_heads=4, decoder_mlp_ratio=4.0, mask_ratio=0.75, norm_pix=True)
BASE_MAE = ModelSpec(kind="mae", variant="B/16", image_size=224, decoder_width=512, decoder_depth=8,
                     decoder_heads=16, decoder_mlp_ratio=4.0, mask_ratio=0.75, norm_pix=True)
MASK_RATIO = 0.75
REL_TOL = 1e-5


def random_variables(spec: ModelSpec, seed: int = 0) -> tuple[dict, dict]:
    """Random (params, extra) for ``spec``, drawn with numpy (fast even for ViT-B).

    Every tensor is non-trivial (LayerNorm scales away from 1, non-zero biases), so a mapping
    that swaps, transposes or drops any of them changes the outputs. Fixed position embeddings
    keep their sin-cos values; a learned one gets noise on top.
    """
    rng = np.random.default_rng(seed)
    # Unit-variance uniform noise: three times faster to draw than normals for ViT-B's 110M values.
    noise = lambda shape: (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(np.sqrt(12.0))
    param_paths, shapes = layout(spec)
    flat = {}
    for path, shape in shapes.items():
        name = path[-1]
        if name in ("pos_embed", "decoder_pos_embed"):
            width, tokens = shape[-1], shape[1] - 1
            grid = int(round(tokens ** 0.5))
            value = sincos_2d(width, grid, grid, cls_token=True)[None]
            if path in param_paths:
                value = value + 0.02 * noise(shape)
        elif name == "kernel":
            value = noise(shape) / np.sqrt(shape[0])
        elif name == "scale":
            value = 1.0 + 0.1 * noise(shape)
        elif name == "bias":
            value = 0.05 * noise(shape)
        else:  # cls_token, mask_token
            value = 0.02 * noise(shape)
        flat[path] = np.asarray(value, dtype=np.float32)
    params = unflatten({k: v for k, v in flat.items() if k in param_paths})
    extra = unflatten({k: v for k, v in flat.items() if k not in param_paths})
    return params, extra


@nnx.jit
def mae_all(model, images, noise) -> dict:
    """One compiled MAE forward: both losses (norm-pix off/on), predictions, mask, encoder output."""
    from maskjax.methods.mae import mae_forward

    out = {}
    for norm_pix in (False, True):
        loss, pred, _, mask = mae_forward(model, images, noise, MASK_RATIO, norm_pix)
        out[f"loss_normpix{int(norm_pix)}"] = loss
    latent, _ = model.encoder(images, mask)
    out.update(pred=pred, mask=mask.mask, ids_restore=mask.ids_restore, latent=latent)
    return out


@nnx.jit
def apply(model, *args):
    """``model(*args)`` compiled (one XLA program instead of one per operation)."""
    return model(*args)


def inputs(spec: ModelSpec, batch: int = 2, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(images NHWC, masking noise [B, L]) as float32, images already 'normalised'."""
    rng = np.random.default_rng(seed)
    _, patch = parse_variant(spec.variant)
    images = rng.standard_normal((batch, spec.image_size, spec.image_size, spec.in_chans), dtype=np.float32)
    noise = rng.random((batch, (spec.image_size // patch) ** 2), dtype=np.float32)
    return images, noise


def nchw(images: np.ndarray):
    """NHWC numpy -> NCHW torch tensor (HF's pixel_values)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def diff(ours, ref) -> tuple[float, float]:
    """(max |ours - ref|, that divided by max |ref|): the scale-relative maximum error."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    max_abs = float(np.max(np.abs(ours - ref)))
    return max_abs, max_abs / max(float(np.max(np.abs(ref))), 1e-30)


def assert_close(name: str, ours, ref, rel_tol: float = REL_TOL) -> None:
    """Asserts the scale-relative max error is within ``rel_tol`` and prints the measured numbers."""
    max_abs, max_rel = diff(ours, ref)
    print(f"[parity] {name}: max_abs={max_abs:.3g} max_rel={max_rel:.3g}")
    assert max_rel <= rel_tol, f"{name}: max abs diff {max_abs:.3g}, relative {max_rel:.3g} > {rel_tol:g}"


def hf_from_folder(cls_name: str, folder: str, **kwargs):
    """``transformers.<cls_name>.from_pretrained(folder)`` in eval mode, asserting every key loaded."""
    import transformers

    cls = getattr(transformers, cls_name)
    model, info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    return model.eval()


def hf_from_variables(cls_name: str, spec: ModelSpec, params: dict, extra: dict):
    """The HF model holding maskjax variables, loaded by ``from_pretrained`` from memory.

    Same loading path as a folder (key renaming, strict checks) without writing ViT-B's 450 MB.
    """
    import torch
    import transformers

    from maskjax.convert.hf_vit import maskjax_to_hf

    sd, config = maskjax_to_hf(spec, params, extra)
    config_cls = transformers.ViTMAEConfig if config.pop("model_type") == "vit_mae" else transformers.ViTConfig
    config.pop("architectures")
    model, info = getattr(transformers, cls_name).from_pretrained(
        None, config=config_cls(**config), state_dict={k: torch.from_numpy(v) for k, v in sd.items()},
        output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys"), info
    return model.eval()


def official_from_hf(hf, kind: str, pool: str = "gap", head=None) -> dict[str, np.ndarray]:
    """An official-MAE (timm-named) state dict built from an HF torch module's *attributes*.

    Written independently of maskjax's converters (and of HF's key names, which changed between
    transformers 4 and 5), so a converter bug cannot cancel itself out in the tests.
    """
    vit = hf.vit
    t = lambda x: x.detach().cpu().numpy().copy()
    sd = {"cls_token": t(vit.embeddings.cls_token), "pos_embed": t(vit.embeddings.position_embeddings),
          "patch_embed.proj.weight": t(vit.embeddings.patch_embeddings.projection.weight),
          "patch_embed.proj.bias": t(vit.embeddings.patch_embeddings.projection.bias)}

    def layers(module, name):
        found = getattr(module, name, None)
        return found if found is not None else module.encoder.layer

    def block(prefix, layer):
        att = layer.attention
        q = getattr(att, "q_proj", None) or att.attention.query
        k = getattr(att, "k_proj", None) or att.attention.key
        v = getattr(att, "v_proj", None) or att.attention.value
        o = getattr(att, "o_proj", None) or att.output.dense
        fc1 = layer.mlp.fc1 if hasattr(layer, "mlp") else layer.intermediate.dense
        fc2 = layer.mlp.fc2 if hasattr(layer, "mlp") else layer.output.dense
        sd.update({
            f"{prefix}.norm1.weight": t(layer.layernorm_before.weight),
            f"{prefix}.norm1.bias": t(layer.layernorm_before.bias),
            f"{prefix}.attn.qkv.weight": np.concatenate([t(q.weight), t(k.weight), t(v.weight)], 0),
            f"{prefix}.attn.qkv.bias": np.concatenate([t(q.bias), t(k.bias), t(v.bias)], 0),
            f"{prefix}.attn.proj.weight": t(o.weight), f"{prefix}.attn.proj.bias": t(o.bias),
            f"{prefix}.norm2.weight": t(layer.layernorm_after.weight),
            f"{prefix}.norm2.bias": t(layer.layernorm_after.bias),
            f"{prefix}.mlp.fc1.weight": t(fc1.weight), f"{prefix}.mlp.fc1.bias": t(fc1.bias),
            f"{prefix}.mlp.fc2.weight": t(fc2.weight), f"{prefix}.mlp.fc2.bias": t(fc2.bias)})

    for i, layer in enumerate(layers(vit, "layers")):
        block(f"blocks.{i}", layer)
    if kind == "finetuned" and pool == "gap":
        sd["fc_norm.weight"], sd["fc_norm.bias"] = head["fc_norm.weight"], head["fc_norm.bias"]
    else:
        sd["norm.weight"], sd["norm.bias"] = t(vit.layernorm.weight), t(vit.layernorm.bias)
    if kind == "finetuned":
        sd["head.weight"], sd["head.bias"] = t(hf.classifier.weight), t(hf.classifier.bias)
    if kind == "visualize":
        dec = hf.decoder
        sd.update({"decoder_embed.weight": t(dec.decoder_embed.weight), "decoder_embed.bias": t(dec.decoder_embed.bias),
                   "mask_token": t(dec.mask_token), "decoder_pos_embed": t(dec.decoder_pos_embed),
                   "decoder_norm.weight": t(dec.decoder_norm.weight), "decoder_norm.bias": t(dec.decoder_norm.bias),
                   "decoder_pred.weight": t(dec.decoder_pred.weight), "decoder_pred.bias": t(dec.decoder_pred.bias)})
        for i, layer in enumerate(dec.decoder_layers):
            block(f"decoder_blocks.{i}", layer)
    return sd
