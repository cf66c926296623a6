"""Hugging Face ViTMAE / ViT checkpoints <-> maskjax, both directions.

=========================== ============================== ===============================
HF architecture             key prefixes                   maskjax model (ModelSpec.kind)
=========================== ============================== ===============================
ViTMAEForPreTraining        ``vit.*``, ``decoder.*``       MaskedAutoencoder ("mae")
ViTForImageClassification   ``vit.*``, ``classifier.*``    ViTClassifier(pool="cls") ("classifier")
ViTModel / ViTMAEModel      ``embeddings.*``, ``encoder.*`` ViT ("encoder")
=========================== ============================== ===============================

Key names: the Hub files (and every transformers 4.x) use the "legacy" layout
(``vit.encoder.layer.0.attention.attention.query.weight``); transformers 5 renames modules in
memory (``vit.layers.0.attention.q_proj.weight``) and converts on load. Both are read; maskjax
writes the legacy layout, which both major versions load. HF has separate query/key/value
Linears, concatenated into maskjax's single ``qkv``; the patch-embedding Conv2d becomes the
PatchEmbed kernel by a transpose/reshape. Everything is an exact permutation of values.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from typing import Any, Mapping

import numpy as np

from maskjax.convert.common import (ArchitectureMismatchError, ConversionError, Rule, apply_rules, block_count,
                                    conv_patch_rule, copy_rule, hf_layer_body_rules, invert_rules, linear_rule, qkv_bias_rule,
                                    qkv_weight_rule)
from maskjax.convert.mae_official import size_name
from maskjax.convert.store import ModelSpec, join_variables, layout, save_converted, split_variables
from maskjax.models.layers import LN_EPS
from maskjax.models.vit import parse_variant
from maskjax.progress import phase

ARCHITECTURES = {"ViTMAEForPreTraining": "mae", "ViTForImageClassification": "classifier",
                 "ViTModel": "encoder", "ViTMAEModel": "encoder"}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# transformers 5 in-memory names -> legacy Hub names (applied in order).
_TO_LEGACY = [
    (re.compile(r"^(vit\.)?layers\.(\d+)\."), r"\1encoder.layer.\2."),
    # transformers 5.x save_pretrained writes the MAE decoder layers under this name.
    (re.compile(r"^decoder\.decoder_encoder\.layer\.(\d+)\."), r"decoder.decoder_layers.\1."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.attention.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.attention.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.attention.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.mlp\.fc1\."), ".intermediate.dense."),
    (re.compile(r"\.mlp\.fc2\."), ".output.dense."),
]


def legacy_keys(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames transformers-5 keys to the legacy Hub layout (legacy keys pass unchanged)."""
    out = {}
    for key, value in sd.items():
        for pattern, repl in _TO_LEGACY:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _kind_from_keys(sd: Mapping[str, Any]) -> str:
    if any(k.startswith("decoder.") for k in sd):
        return "mae"
    if "classifier.weight" in sd:
        return "classifier"
    return "encoder"


def _enc_prefix(kind: str) -> str:
    return "" if kind == "encoder" else "vit."


def _strip_vit(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # An encoder-only file may still carry the "vit." prefix of a task model.
    if sd and all(k.startswith("vit.") for k in sd):
        return {k[4:]: v for k, v in sd.items()}
    return sd


def _shape(sd, key) -> tuple[int, ...]:
    if key not in sd:
        hint = ""
        if "patch_embed.proj.weight" in sd:
            hint = "; it looks like an official MAE / timm checkpoint: use `maskjax convert mae-official`"
        raise ConversionError(f"not a Hugging Face ViT / ViTMAE checkpoint: no {key!r} "
                              f"(first keys: {sorted(sd)[:4]}){hint}")
    return tuple(int(s) for s in sd[key].shape)


def hf_spec(sd: Mapping[str, np.ndarray], config: Mapping[str, Any] | None = None, *,
            variant: str | None = None, decoder_heads: int = 16, source: str = "") -> ModelSpec:
    """The maskjax :class:`ModelSpec` of a (legacy-keyed) HF state dict and its optional config.json.

    Shapes decide width, depth, patch and image size; ``config`` (when given) supplies head
    counts and is checked against maskjax's fixed choices (exact GELU, qkv bias, LayerNorm eps).
    """
    kind = _kind_from_keys(sd)
    config = dict(config or {})
    archs = config.get("architectures") or []
    if archs and archs[0] not in ARCHITECTURES:
        raise ArchitectureMismatchError(f"unsupported Hugging Face architecture {archs[0]!r}; maskjax converts "
                                        f"{sorted(ARCHITECTURES)}")
    p = _enc_prefix(kind)
    width, in_chans, patch, _ = _shape(sd, f"{p}embeddings.patch_embeddings.projection.weight")
    depth = block_count(sd, f"{p}encoder.layer.")
    mlp = _shape(sd, f"{p}encoder.layer.0.intermediate.dense.weight")[0] / width
    grid = math.isqrt(_shape(sd, f"{p}embeddings.position_embeddings")[1] - 1)
    detected = f"{size_name(width, depth, mlp, where='Hugging Face checkpoint')}/{patch}"
    if variant is not None and variant != detected:
        size, vpatch = parse_variant(variant)
        raise ArchitectureMismatchError(
            f"checkpoint is ViT {detected} but {variant} was requested: "
            f"'{p}embeddings.patch_embeddings.projection.weight' has shape {(width, in_chans, patch, patch)}, "
            f"{variant} expects {(size.width, in_chans, vpatch, vpatch)}; the checkpoint has {depth} layers, "
            f"{variant} has {size.depth}")
    size, _ = parse_variant(detected)
    if config:
        _check_config(config, size.heads)
    spec = ModelSpec(kind=kind, variant=detected, image_size=grid * patch, in_chans=in_chans,
                     source=source or f"Hugging Face {archs[0] if archs else kind} checkpoint")
    if kind == "mae":
        dwidth = _shape(sd, "decoder.decoder_embed.weight")[0]
        spec.decoder_width, spec.decoder_depth = dwidth, block_count(sd, "decoder.decoder_layers.")
        spec.decoder_heads = int(config.get("decoder_num_attention_heads", decoder_heads))
        spec.decoder_mlp_ratio = _shape(sd, "decoder.decoder_layers.0.intermediate.dense.weight")[0] / dwidth
        if "norm_pix_loss" in config:
            spec.norm_pix = bool(config["norm_pix_loss"])
        if "mask_ratio" in config:
            spec.mask_ratio = float(config["mask_ratio"])
    elif kind == "classifier":
        spec.num_classes, spec.pool, spec.learned_pos_embed = _shape(sd, "classifier.weight")[0], "cls", True
    return spec


def _check_config(config: Mapping[str, Any], heads: int) -> None:
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ArchitectureMismatchError(f"config.json has hidden_act={act!r}; maskjax blocks use exact (erf) "
                                        f"GELU, which is HF's 'gelu'")
    if not config.get("qkv_bias", True):
        raise ArchitectureMismatchError("config.json has qkv_bias=false; maskjax attention always has a qkv bias")
    if int(config.get("num_attention_heads", heads)) != heads:
        raise ArchitectureMismatchError(f"config.json has num_attention_heads={config['num_attention_heads']}; "
                                        f"this maskjax ViT size has {heads} heads")
    eps = float(config.get("layer_norm_eps", 1e-12))  # HF's default when absent
    if not math.isclose(eps, LN_EPS):
        # Not an error: the rest of the function is identical and the difference is tiny, but it is
        # not zero, and converted checkpoints must never differ silently.
        warnings.warn(f"config.json has layer_norm_eps={eps:g}; maskjax LayerNorms use {LN_EPS:g} (the official "
                      f"MAE value), so outputs will differ slightly (about 1e-6 relative) from the HF model",
                      stacklevel=3)


def _layer_rules(src: str, dst: tuple[str, ...]) -> list[Rule]:
    att = f"{src}.attention.attention"
    rules = [qkv_weight_rule(dst + ("attn", "qkv", "kernel"), (f"{att}.query.weight", f"{att}.key.weight",
                                                               f"{att}.value.weight")),
             qkv_bias_rule(dst + ("attn", "qkv", "bias"), (f"{att}.query.bias", f"{att}.key.bias",
                                                           f"{att}.value.bias"))]
    return rules + hf_layer_body_rules(src, dst)


def hf_rules(spec: ModelSpec) -> list[Rule]:
    """Key mapping between the legacy HF names and ``spec``'s maskjax variables."""
    size, patch = parse_variant(spec.variant)
    p = _enc_prefix(spec.kind)
    enc = () if spec.kind == "encoder" else ("encoder",)
    emb = f"{p}embeddings"
    rules = [copy_rule(enc + ("cls_token",), f"{emb}.cls_token"),
             copy_rule(enc + ("pos_embed",), f"{emb}.position_embeddings"),
             conv_patch_rule(enc + ("patch_embed", "proj", "kernel"), f"{emb}.patch_embeddings.projection.weight",
                             patch, spec.in_chans),
             copy_rule(enc + ("patch_embed", "proj", "bias"), f"{emb}.patch_embeddings.projection.bias")]
    for i in range(size.depth):
        rules += _layer_rules(f"{p}encoder.layer.{i}", enc + ("blocks", str(i)))
    rules += [copy_rule(enc + ("norm", "scale"), f"{p}layernorm.weight"),
              copy_rule(enc + ("norm", "bias"), f"{p}layernorm.bias")]
    if spec.kind == "classifier":
        if spec.pool != "cls":
            raise ConversionError("HF ViTForImageClassification classifies the cls token after the final norm "
                                  "(pool='cls'); a pool='gap' ViTClassifier (mean of patch tokens + fc_norm) has "
                                  "no Hugging Face ViT equivalent")
        rules += [linear_rule(("head", "kernel"), "classifier.weight"), copy_rule(("head", "bias"), "classifier.bias")]
    if spec.kind == "mae":
        rules += [linear_rule(("decoder_embed", "kernel"), "decoder.decoder_embed.weight"),
                  copy_rule(("decoder_embed", "bias"), "decoder.decoder_embed.bias"),
                  copy_rule(("mask_token",), "decoder.mask_token"),
                  copy_rule(("decoder_pos_embed",), "decoder.decoder_pos_embed")]
        for i in range(spec.decoder_depth):
            rules += _layer_rules(f"decoder.decoder_layers.{i}", ("decoder_blocks", str(i)))
        rules += [copy_rule(("decoder_norm", "scale"), "decoder.decoder_norm.weight"),
                  copy_rule(("decoder_norm", "bias"), "decoder.decoder_norm.bias"),
                  linear_rule(("decoder_pred", "kernel"), "decoder.decoder_pred.weight"),
                  copy_rule(("decoder_pred", "bias"), "decoder.decoder_pred.bias")]
    return rules


def _ignored(key: str) -> bool:
    # ViTModel's pooler (dense + tanh on the cls token) has no maskjax counterpart; it is dropped
    # with a warning (last_hidden_state is unaffected).
    return key.startswith("pooler.")


def hf_to_maskjax(sd: Mapping[str, np.ndarray], config: Mapping[str, Any] | None = None, *,
                  variant: str | None = None, decoder_heads: int = 16,
                  source: str = "") -> tuple[ModelSpec, dict, dict]:
    """HF state dict (legacy or transformers-5 keys) + optional config -> (spec, params, extra)."""
    sd = legacy_keys(sd)
    if _kind_from_keys(sd) == "encoder":
        sd = _strip_vit(sd)
    spec = hf_spec(sd, config, variant=variant, decoder_heads=decoder_heads, source=source)
    dropped = sorted(k for k in sd if _ignored(k))
    if dropped:
        warnings.warn(f"dropping {dropped}: maskjax's ViT has no pooler", stacklevel=2)
    _, shapes = layout(spec)
    flat = apply_rules(sd, hf_rules(spec), shapes, what=f"maskjax {spec.kind} {spec.variant}", ignore=_ignored)
    params, extra = split_variables(spec, flat)
    return spec, params, extra


def hf_config(spec: ModelSpec) -> dict[str, Any]:
    """A transformers ``config.json`` dict for ``spec`` (exact GELU, qkv bias, LayerNorm eps 1e-6)."""
    size, patch = parse_variant(spec.variant)
    config = {"hidden_size": size.width, "num_hidden_layers": size.depth, "num_attention_heads": size.heads,
              "intermediate_size": int(size.width * size.mlp_ratio), "hidden_act": "gelu",
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
              "layer_norm_eps": LN_EPS, "image_size": spec.image_size, "patch_size": patch,
              "num_channels": spec.in_chans, "qkv_bias": True, "dtype": "float32"}
    if spec.kind == "mae":
        config.update(model_type="vit_mae", architectures=["ViTMAEForPreTraining"],
                      decoder_hidden_size=spec.decoder_width, decoder_num_hidden_layers=spec.decoder_depth,
                      decoder_num_attention_heads=spec.decoder_heads,
                      decoder_intermediate_size=int(spec.decoder_width * (spec.decoder_mlp_ratio or 4.0)),
                      mask_ratio=spec.mask_ratio if spec.mask_ratio is not None else 0.75,
                      norm_pix_loss=bool(spec.norm_pix))
    else:
        config.update(model_type="vit", encoder_stride=patch,
                      architectures=["ViTForImageClassification" if spec.kind == "classifier" else "ViTModel"])
        if spec.kind == "classifier":
            config["id2label"] = {str(i): f"LABEL_{i}" for i in range(spec.num_classes)}
            config["label2id"] = {f"LABEL_{i}": i for i in range(spec.num_classes)}
    return config


def maskjax_to_hf(spec: ModelSpec, params: Mapping, extra: Mapping) -> tuple[dict[str, np.ndarray], dict]:
    """maskjax variables -> (legacy-keyed HF state dict, config dict)."""
    return invert_rules(join_variables(params, extra), hf_rules(spec)), hf_config(spec)


def save_hf(out_dir: str, spec: ModelSpec, params: Mapping, extra: Mapping, *, overwrite: bool = False) -> str:
    """Writes an HF-loadable folder: ``config.json``, ``model.safetensors``, ``preprocessor_config.json``."""
    from maskjax.convert.torch_io import save_safetensors

    weights = os.path.join(out_dir, "model.safetensors")
    if os.path.exists(weights) and not overwrite:
        raise FileExistsError(f"{weights} already exists; choose another output directory or pass --overwrite")
    sd, config = maskjax_to_hf(spec, params, extra)
    os.makedirs(out_dir, exist_ok=True)
    with phase(f"writing {weights}"):
        save_safetensors(sd, weights)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    # maskjax models take ImageNet-normalised pixels, as MAE's: tell HF's image processor so.
    processor = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
                 "size": {"height": spec.image_size, "width": spec.image_size}, "resample": 3,
                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(processor, f, indent=2, sort_keys=True)
    return out_dir


def load_hf(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
    """(state dict, config.json dict or None) of an HF model folder or a single weights file."""
    from maskjax.convert.torch_io import load_state_dict

    config_file = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
    config = None
    if os.path.exists(config_file):
        with open(config_file) as f:
            config = json.load(f)
    with phase(f"reading {path}"):
        return load_state_dict(path), config


def convert_hf_checkpoint(in_path: str, out_dir: str, *, overwrite: bool = False, **kwargs: Any) -> ModelSpec:
    """Reads an HF folder or weights file, converts it and writes a converted maskjax directory."""
    sd, config = load_hf(in_path)
    kwargs.setdefault("source", f"Hugging Face checkpoint {os.path.abspath(in_path)}")
    spec, params, extra = hf_to_maskjax(sd, config, **kwargs)
    save_converted(out_dir, spec, params, extra, overwrite=overwrite)
    return spec
