"""Official MAE (facebookresearch/mae) PyTorch checkpoints <-> maskjax.

The released ``.pth`` files hold ``{"model": state_dict}`` with timm key names. Three kinds:

========== ===================================== ==================================== ==========================
kind       released files                        keys                                  maskjax model
========== ===================================== ==================================== ==========================
pretrain   ``mae_pretrain_vit_{base,large,huge}`` encoder only: ``patch_embed``,        ``ViT`` (kind "encoder")
                                                 ``cls_token``, ``pos_embed``,
                                                 ``blocks.*``, ``norm``
visualize  ``mae_visualize_vit_{base,large}``    encoder + ``decoder_*``, ``mask_token`` ``MaskedAutoencoder``
finetuned  ``mae_finetuned_vit_{base,large,huge}`` encoder + ``fc_norm`` + ``head``      ``ViTClassifier``
                                                 (global pool: no ``norm``)            (kind "classifier")
========== ===================================== ==================================== ==========================

The kind and the variant are detected from the keys and shapes; when given, they are checked
and a mismatch is an :class:`~maskjax.convert.common.ArchitectureMismatchError` naming the key
and both shapes. Attention head counts cannot be read from shapes: the encoder's come from the
variant table, the decoder's default to the official 16.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from maskjax.convert.common import (ArchitectureMismatchError, ConversionError, Rule, apply_rules, block_count,
                                    conv_patch_rule, copy_rule, invert_rules, linear_rule)
from maskjax.convert.store import ModelSpec, layout, save_converted, split_variables, join_variables
from maskjax.models.vit import VIT_SIZES, parse_variant
from maskjax.progress import phase

OFFICIAL_KINDS = {"pretrain": "encoder", "visualize": "mae", "finetuned": "classifier"}
OFFICIAL_DECODER_HEADS = 16


def size_name(width: int, depth: int, mlp_ratio: float, *, where: str) -> str:
    """The ``VIT_SIZES`` name with this width, depth and MLP ratio, or a clear error."""
    for name, size in VIT_SIZES.items():
        if size.width == width and size.depth == depth and math.isclose(size.mlp_ratio, mlp_ratio):
            return name
    known = ", ".join(f"{n} ({s.width}x{s.depth})" for n, s in VIT_SIZES.items())
    raise ArchitectureMismatchError(f"{where}: no maskjax ViT size has width {width}, depth {depth} and MLP "
                                    f"ratio {mlp_ratio:g}; known sizes (width x depth): {known}")


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in sd:
        hint = ""
        if any(k.startswith(("vit.", "embeddings.", "decoder.decoder_")) for k in sd):
            hint = "; it looks like a Hugging Face checkpoint: use `maskjax convert hf-to-maskjax`"
        raise ConversionError(f"not an official MAE / timm ViT checkpoint: no {key!r} "
                              f"(first keys: {sorted(sd)[:4]}){hint}")
    return tuple(int(s) for s in sd[key].shape)


def inspect_official(sd: Mapping[str, Any]) -> dict:
    """Architecture facts read from an official state dict's keys and shapes (no data touched)."""
    width, in_chans, patch, patch_w = _shape(sd, "patch_embed.proj.weight")
    if patch != patch_w:
        raise ConversionError(f"'patch_embed.proj.weight' has non-square patches {(patch, patch_w)}")
    depth = block_count(sd, "blocks.")
    tokens = _shape(sd, "pos_embed")[1] - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ConversionError(f"'pos_embed' has {tokens} patch positions, not a square grid")
    info = dict(width=width, depth=depth, patch=patch, in_chans=in_chans, image_size=grid * patch,
                mlp_ratio=_shape(sd, "blocks.0.mlp.fc1.weight")[0] / width)
    if "decoder_embed.weight" in sd:
        dwidth = _shape(sd, "decoder_embed.weight")[0]
        info.update(kind="visualize", decoder_width=dwidth, decoder_depth=block_count(sd, "decoder_blocks."),
                    decoder_mlp_ratio=_shape(sd, "decoder_blocks.0.mlp.fc1.weight")[0] / dwidth)
    elif "head.weight" in sd:
        info.update(kind="finetuned", num_classes=_shape(sd, "head.weight")[0],
                    pool="gap" if "fc_norm.weight" in sd else "cls")
    else:
        info["kind"] = "pretrain"
    info["variant"] = f"{size_name(width, depth, info['mlp_ratio'], where='official checkpoint')}/{patch}"
    return info


def _check_requested(info: dict, variant: str | None, kind: str | None, image_size: int | None) -> None:
    if kind is not None:
        if kind not in OFFICIAL_KINDS:
            raise ValueError(f"kind must be one of {sorted(OFFICIAL_KINDS)}, got {kind!r}")
        if kind != info["kind"]:
            why = {"visualize": "has decoder_* keys", "finetuned": "has head.* keys",
                   "pretrain": "has neither decoder_* nor head.* keys"}[info["kind"]]
            raise ArchitectureMismatchError(f"checkpoint is a {info['kind']!r} checkpoint (it {why}), "
                                            f"not the requested {kind!r}")
    if variant is not None and variant != info["variant"]:
        size, patch = parse_variant(variant)
        c = info["in_chans"]
        raise ArchitectureMismatchError(
            f"checkpoint is ViT {info['variant']} but {variant} was requested: 'patch_embed.proj.weight' has "
            f"shape {(info['width'], c, info['patch'], info['patch'])}, {variant} expects "
            f"{(size.width, c, patch, patch)}; the checkpoint has {info['depth']} blocks, {variant} has "
            f"{size.depth}. Pass --variant {info['variant']} (or omit it to auto-detect).")
    if image_size is not None and image_size != info["image_size"]:
        raise ArchitectureMismatchError(
            f"'pos_embed' is for {info['image_size']}px images ({info['image_size'] // info['patch']}^2 "
            f"patches); image size {image_size} was requested and position-embedding interpolation is "
            f"not supported by the converter")


def official_spec(sd: Mapping[str, Any], *, variant: str | None = None, kind: str | None = None,
                  image_size: int | None = None, decoder_heads: int = OFFICIAL_DECODER_HEADS,
                  source: str = "") -> ModelSpec:
    """The maskjax :class:`ModelSpec` of an official state dict (checks any requested values)."""
    info = inspect_official(sd)
    _check_requested(info, variant, kind, image_size)
    spec = ModelSpec(kind=OFFICIAL_KINDS[info["kind"]], variant=info["variant"], image_size=info["image_size"],
                     in_chans=info["in_chans"], source=source or f"official MAE {info['kind']} checkpoint")
    if info["kind"] == "visualize":
        if info["decoder_width"] % decoder_heads:
            raise ArchitectureMismatchError(f"decoder width {info['decoder_width']} ('decoder_embed.weight') "
                                            f"is not divisible by {decoder_heads} decoder heads")
        spec.decoder_width, spec.decoder_depth = info["decoder_width"], info["decoder_depth"]
        spec.decoder_heads, spec.decoder_mlp_ratio = decoder_heads, info["decoder_mlp_ratio"]
    elif info["kind"] == "finetuned":
        spec.num_classes, spec.pool, spec.learned_pos_embed = info["num_classes"], info["pool"], True
    return spec


def _block_rules(src: str, dst: tuple[str, ...]) -> list[Rule]:
    rules = []
    for norm in ("norm1", "norm2"):
        rules += [copy_rule(dst + (norm, "scale"), f"{src}.{norm}.weight"),
                  copy_rule(dst + (norm, "bias"), f"{src}.{norm}.bias")]
    for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
        path = dst + tuple(layer.split("."))
        rules += [linear_rule(path + ("kernel",), f"{src}.{layer}.weight"),
                  copy_rule(path + ("bias",), f"{src}.{layer}.bias")]
    return rules


def _ln_rules(src: str, dst: tuple[str, ...]) -> list[Rule]:
    return [copy_rule(dst + ("scale",), f"{src}.weight"), copy_rule(dst + ("bias",), f"{src}.bias")]


def official_rules(spec: ModelSpec) -> list[Rule]:
    """Key mapping between the official (timm) names and ``spec``'s maskjax variables."""
    size, patch = parse_variant(spec.variant)
    enc = () if spec.kind == "encoder" else ("encoder",)
    rules = [copy_rule(enc + ("cls_token",), "cls_token"), copy_rule(enc + ("pos_embed",), "pos_embed"),
             conv_patch_rule(enc + ("patch_embed", "proj", "kernel"), "patch_embed.proj.weight", patch, spec.in_chans),
             copy_rule(enc + ("patch_embed", "proj", "bias"), "patch_embed.proj.bias")]
    for i in range(size.depth):
        rules += _block_rules(f"blocks.{i}", enc + ("blocks", str(i)))
    if spec.kind == "classifier" and spec.pool == "gap":
        rules += _ln_rules("fc_norm", ("fc_norm",))  # the official fine-tune model has no final norm
    else:
        rules += _ln_rules("norm", enc + ("norm",))
    if spec.kind == "classifier":
        rules += [linear_rule(("head", "kernel"), "head.weight"), copy_rule(("head", "bias"), "head.bias")]
    if spec.kind == "mae":
        rules += [linear_rule(("decoder_embed", "kernel"), "decoder_embed.weight"),
                  copy_rule(("decoder_embed", "bias"), "decoder_embed.bias"),
                  copy_rule(("mask_token",), "mask_token"), copy_rule(("decoder_pos_embed",), "decoder_pos_embed")]
        for i in range(spec.decoder_depth):
            rules += _block_rules(f"decoder_blocks.{i}", ("decoder_blocks", str(i)))
        rules += _ln_rules("decoder_norm", ("decoder_norm",))
        rules += [linear_rule(("decoder_pred", "kernel"), "decoder_pred.weight"),
                  copy_rule(("decoder_pred", "bias"), "decoder_pred.bias")]
    return rules


def official_to_maskjax(sd: Mapping[str, np.ndarray], *, variant: str | None = None, kind: str | None = None,
                        image_size: int | None = None, decoder_heads: int = OFFICIAL_DECODER_HEADS,
                        source: str = "") -> tuple[ModelSpec, dict, dict]:
    """Official state dict -> (spec, params, extra) for the detected (or requested) architecture."""
    spec = official_spec(sd, variant=variant, kind=kind, image_size=image_size, decoder_heads=decoder_heads,
                         source=source)
    _, shapes = layout(spec)
    what = f"maskjax {spec.kind} {spec.variant}"
    flat = apply_rules(sd, official_rules(spec), shapes, what=what)
    params, extra = split_variables(spec, flat)
    return spec, params, extra


def maskjax_to_official(spec: ModelSpec, params: Mapping, extra: Mapping) -> dict[str, np.ndarray]:
    """maskjax variables -> an official-layout state dict (pretrain, visualize or finetuned keys)."""
    return invert_rules(join_variables(params, extra), official_rules(spec))


def convert_official_checkpoint(in_path: str, out_dir: str, *, overwrite: bool = False,
                                **kwargs: Any) -> ModelSpec:
    """Reads an official ``.pth`` safely, converts it and writes a converted maskjax directory.

    ``kwargs`` are those of :func:`official_to_maskjax` (variant, kind, image_size, decoder_heads).
    """
    import os

    from maskjax.convert.torch_io import load_state_dict

    with phase(f"reading {in_path}"):
        sd = load_state_dict(in_path)
    kwargs.setdefault("source", f"official MAE checkpoint {os.path.basename(in_path)}")
    spec, params, extra = official_to_maskjax(sd, **kwargs)
    save_converted(out_dir, spec, params, extra, overwrite=overwrite)
    return spec
