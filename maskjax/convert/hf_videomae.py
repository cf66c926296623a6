"""Hugging Face ``VideoMAEForPreTraining`` checkpoints <-> maskjax :class:`~maskjax.models.video_mae.VideoMAE`.

Key layout (legacy Hub names, read by every transformers version)::

    videomae.embeddings.patch_embeddings.projection.{weight,bias}   Conv3d [D, C, t, p, p] -> TubeletEmbed
    videomae.encoder.layer.{i}.attention.attention.{query,key,value}.weight -> one qkv kernel
    videomae.encoder.layer.{i}.attention.attention.{q_bias,v_bias}   -> attn.q_bias / attn.v_bias
    videomae.layernorm.*                                            -> encoder.norm
    encoder_to_decoder.weight, mask_token, decoder.decoder_layers.{i}.*, decoder.norm.*, decoder.head.*

transformers 5 keeps the biases as ``query.bias`` / ``value.bias`` in memory and renames the Hub's
``q_bias`` / ``v_bias`` on load; both spellings are read, and the Hub spelling is written. The
sinusoid position tables are not stored by HF (they are recomputed); maskjax stores them as
buffers, and the converter checks they are the standard table before exporting.

Numerical notes: HF's decoder ``norm`` is a plain ``nn.LayerNorm`` (eps 1e-5), while the official
VideoMAE and maskjax use 1e-6 for every LayerNorm, and HF configs without ``layer_norm_eps`` use
1e-12. The weights are the same; outputs differ by about 1e-6 relative (a warning says so).
Pre-training checkpoints with ``use_mean_pooling=True`` have no encoder LayerNorm, which the
official pre-training encoder always has: they are refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import warnings
from typing import Any, Mapping

import numpy as np
from flax import nnx

from maskjax.convert.common import (ArchitectureMismatchError, ConversionError, JsonSpec, Rule, apply_rules,
                                    block_count, hf_layer_body_rules,
                                    copy_rule, flatten, fmt_path, invert_rules, linear_rule, qkv_weight_rule,
                                    unflatten)
from maskjax.convert.mae_official import size_name
from maskjax.models.layers import LN_EPS
from maskjax.models.video_layers import sinusoid_table
from maskjax.models.vit import parse_variant
from maskjax.progress import phase

SPEC_FILE = "maskjax_video_model.json"
VARIABLES_DIR = "variables"
ARCHITECTURE = "VideoMAEForPreTraining"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
_ENC = "videomae."
_PATCH_KEY = "videomae.embeddings.patch_embeddings.projection.weight"
_LEGACY = [(re.compile(r"\.attention\.attention\.query\.bias$"), ".attention.attention.q_bias"),
           (re.compile(r"\.attention\.attention\.value\.bias$"), ".attention.attention.v_bias")]
_BUFFERS = (("encoder", "pos_embed"), ("decoder_pos_embed",))


@dataclasses.dataclass
class VideoModelSpec(JsonSpec):
    """Everything needed to rebuild a converted :class:`VideoMAE` (stored as ``maskjax_video_model.json``)."""

    SPEC_NAME = "video model-spec"

    variant: str
    num_frames: int
    image_size: int
    decoder_width: int
    decoder_depth: int
    decoder_heads: int
    tubelet: int = 2
    in_chans: int = 3
    decoder_mlp_ratio: float | None = None
    norm_pix: bool | None = None
    kind: str = "videomae"
    source: str = ""

    def __post_init__(self):
        if self.kind != "videomae":
            raise ValueError(f"video model kind must be 'videomae', got {self.kind!r}")

    def build(self, rngs: nnx.Rngs, **kwargs: Any):
        """The NNX :class:`VideoMAE` (random weights); ``kwargs`` (dtype, remat, ...) change compute only."""
        from maskjax.models.video_mae import VideoMAE

        return VideoMAE(self.variant, num_frames=self.num_frames, image_size=self.image_size,
                        tubelet=self.tubelet, in_chans=self.in_chans, decoder_width=self.decoder_width,
                        decoder_depth=self.decoder_depth, decoder_heads=self.decoder_heads,
                        decoder_mlp_ratio=self.decoder_mlp_ratio, rngs=rngs, **kwargs)

    @property
    def num_patches(self) -> int:
        """Number of tokens L."""
        _, patch = parse_variant(self.variant)
        return (self.num_frames // self.tubelet) * (self.image_size // patch) ** 2



@functools.lru_cache(maxsize=8)
def _template(spec_json: str):
    # Tracing a model abstractly takes seconds for ViT-L and up; converters ask for the same
    # structure several times, so it is built once per spec.
    from maskjax.core.templates import ModelTemplate

    return ModelTemplate.from_builder(VideoModelSpec.from_dict(json.loads(spec_json)).build)


def layout(spec: VideoModelSpec) -> tuple[set, dict]:
    """(paths of trainable params, shape of every variable) of ``spec``'s model, without memory."""
    t = _template(spec.to_json())
    p = flatten(nnx.to_pure_dict(t.abstract_params))
    e = flatten(nnx.to_pure_dict(t.abstract_extra))
    return set(p), {k: tuple(v.shape) for k, v in {**p, **e}.items()}


def buffers(spec: VideoModelSpec) -> dict[tuple, np.ndarray]:
    """The fixed sinusoid tables of ``spec``'s model (encoder and decoder), [1, L, D]."""
    size, _ = parse_variant(spec.variant)
    return {("encoder", "pos_embed"): sinusoid_table(spec.num_patches, size.width)[None],
            ("decoder_pos_embed",): sinusoid_table(spec.num_patches, spec.decoder_width)[None]}


# --- rules ------------------------------------------------------------------------------------------

def tubelet_rule(path, key: str, tubelet: int, patch: int, in_chans: int) -> Rule:
    """Conv3d weight [D, C, t, p, p] <-> TubeletEmbed kernel [t*p*p*C, D] in (p0, p1, p2, c) order."""

    def to_maskjax(w):
        return w.transpose(2, 3, 4, 1, 0).reshape(tubelet * patch * patch * in_chans, w.shape[0])

    def to_source(k):
        return (k.reshape(tubelet, patch, patch, in_chans, k.shape[-1]).transpose(4, 3, 0, 1, 2),)

    return Rule(path, (key,), to_maskjax, to_source)


def _layer_rules(src: str, dst: tuple[str, ...]) -> list[Rule]:
    att = f"{src}.attention.attention"
    rules = [qkv_weight_rule(dst + ("attn", "qkv", "kernel"),
                             (f"{att}.query.weight", f"{att}.key.weight", f"{att}.value.weight")),
             copy_rule(dst + ("attn", "q_bias"), f"{att}.q_bias"),
             copy_rule(dst + ("attn", "v_bias"), f"{att}.v_bias")]
    return rules + hf_layer_body_rules(src, dst)


def videomae_rules(spec: VideoModelSpec) -> list[Rule]:
    """Key mapping between the legacy HF names and the trainable variables of ``spec``'s model."""
    size, patch = parse_variant(spec.variant)
    emb = f"{_ENC}embeddings.patch_embeddings.projection"
    rules = [tubelet_rule(("encoder", "patch_embed", "proj", "kernel"), f"{emb}.weight", spec.tubelet, patch,
                          spec.in_chans),
             copy_rule(("encoder", "patch_embed", "proj", "bias"), f"{emb}.bias")]
    for i in range(size.depth):
        rules += _layer_rules(f"{_ENC}encoder.layer.{i}", ("encoder", "blocks", str(i)))
    rules += [copy_rule(("encoder", "norm", "scale"), f"{_ENC}layernorm.weight"),
              copy_rule(("encoder", "norm", "bias"), f"{_ENC}layernorm.bias"),
              linear_rule(("encoder_to_decoder", "kernel"), "encoder_to_decoder.weight"),
              copy_rule(("mask_token",), "mask_token")]
    for i in range(spec.decoder_depth):
        rules += _layer_rules(f"decoder.decoder_layers.{i}", ("decoder_blocks", str(i)))
    rules += [copy_rule(("decoder_norm", "scale"), "decoder.norm.weight"),
              copy_rule(("decoder_norm", "bias"), "decoder.norm.bias"),
              linear_rule(("decoder_pred", "kernel"), "decoder.head.weight"),
              copy_rule(("decoder_pred", "bias"), "decoder.head.bias")]
    return rules


# --- HF -> maskjax ----------------------------------------------------------------------------------

def legacy_keys(sd: Mapping[str, Any]) -> dict[str, Any]:
    """transformers-5 in-memory names (``query.bias`` / ``value.bias``) -> Hub names (``q_bias`` / ``v_bias``)."""
    out = {}
    for key, value in sd.items():
        for pattern, repl in _LEGACY:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ConversionError(f"not a Hugging Face VideoMAEForPreTraining checkpoint: no {key!r} "
                              f"(first keys: {sorted(sd)[:4]})")
    return tuple(int(s) for s in sd[key].shape)


def hf_videomae_spec(sd: Mapping[str, Any], config: Mapping[str, Any] | None = None, *,
                     variant: str | None = None, num_frames: int | None = None, image_size: int | None = None,
                     decoder_heads: int | None = None, source: str = "") -> VideoModelSpec:
    """The :class:`VideoModelSpec` of a (legacy-keyed) HF VideoMAE state dict and its config.json.

    Shapes give width, depth, patch, tubelet and the decoder sizes; HF does not store the position
    tables, so the number of frames and the image size come from ``config`` (or the arguments).
    """
    config = dict(config or {})
    archs = config.get("architectures") or []
    if archs and archs[0] != ARCHITECTURE:
        raise ArchitectureMismatchError(f"unsupported Hugging Face architecture {archs[0]!r}; this converter "
                                        f"reads {ARCHITECTURE}")
    if config.get("model_type", "videomae") != "videomae":
        raise ArchitectureMismatchError(f"config.json has model_type={config['model_type']!r}, not 'videomae'")
    width, in_chans, tubelet, patch, patch_w = _shape(sd, _PATCH_KEY)
    if patch != patch_w:
        raise ArchitectureMismatchError(f"{_PATCH_KEY!r} has a non-square patch {patch}x{patch_w}")
    if "decoder.head.weight" not in sd:
        raise ArchitectureMismatchError("checkpoint has no decoder ('decoder.head.weight'): it is not a "
                                        f"{ARCHITECTURE} (an encoder-only or classification checkpoint)")
    if f"{_ENC}layernorm.weight" not in sd:
        raise ArchitectureMismatchError(
            f"checkpoint has no encoder LayerNorm ('{_ENC}layernorm.weight'), as HF builds it with "
            f"use_mean_pooling=True (config: {config.get('use_mean_pooling')}); the official VideoMAE "
            "pre-training encoder always ends with a LayerNorm, so maskjax cannot represent it")
    depth = block_count(sd, f"{_ENC}encoder.layer.")
    mlp = _shape(sd, f"{_ENC}encoder.layer.0.intermediate.dense.weight")[0] / width
    detected = f"{size_name(width, depth, mlp, where='Hugging Face VideoMAE checkpoint')}/{patch}"
    if variant is not None and variant != detected:
        raise ArchitectureMismatchError(f"checkpoint is ViT {detected} (width {width}, depth {depth}) but "
                                        f"{variant} was requested")
    size, _ = parse_variant(detected)
    _check_config(config, size.heads)
    dwidth = _shape(sd, "decoder.head.weight")[1]
    ddepth = block_count(sd, "decoder.decoder_layers.")
    if ddepth < 1:
        raise ConversionError("checkpoint has no decoder layers ('decoder.decoder_layers.0.*')")
    dmlp = _shape(sd, "decoder.decoder_layers.0.intermediate.dense.weight")[0] / dwidth
    dheads = int(config.get("decoder_num_attention_heads", decoder_heads or 0))
    if not dheads:
        raise ConversionError("the number of decoder heads is not in the weights: give a config.json with "
                              "decoder_num_attention_heads, or pass decoder_heads=")
    frames = int(config.get("num_frames", num_frames or 0))
    image = config.get("image_size", image_size)
    if isinstance(image, (list, tuple)):
        if len(set(image)) != 1:
            raise ArchitectureMismatchError(f"config.json has a non-square image_size {image}")
        image = image[0]
    if not frames or not image:
        raise ConversionError("HF does not store VideoMAE's position tables, so the clip shape must come from "
                              "config.json (num_frames, image_size) or from num_frames= / image_size=")
    for name, given, found in (("num_frames", num_frames, frames), ("image_size", image_size, image)):
        if given is not None and int(given) != int(found):
            raise ArchitectureMismatchError(f"config.json has {name}={found} but {given} was requested")
    if int(config.get("tubelet_size", tubelet)) != tubelet:
        raise ArchitectureMismatchError(f"config.json has tubelet_size={config['tubelet_size']} but "
                                        f"{_PATCH_KEY!r} has temporal size {tubelet}")
    spec = VideoModelSpec(variant=detected, num_frames=frames, image_size=int(image), tubelet=tubelet,
                          in_chans=in_chans, decoder_width=dwidth, decoder_depth=ddepth, decoder_heads=dheads,
                          decoder_mlp_ratio=None if math.isclose(dmlp, size.mlp_ratio) else dmlp,
                          source=source or f"Hugging Face {ARCHITECTURE} checkpoint")
    if "norm_pix_loss" in config:
        spec.norm_pix = bool(config["norm_pix_loss"])
    return spec


def _check_config(config: Mapping[str, Any], heads: int) -> None:
    if not config:
        return
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ArchitectureMismatchError(f"config.json has hidden_act={act!r}; maskjax blocks use exact (erf) GELU")
    if not config.get("qv_bias", config.get("qkv_bias", True)):
        raise ArchitectureMismatchError("config.json has qv_bias=false; VideoMAE attention has q and v biases")
    if int(config.get("num_attention_heads", heads)) != heads:
        raise ArchitectureMismatchError(f"config.json has num_attention_heads={config['num_attention_heads']}; "
                                        f"this maskjax ViT size has {heads} heads")
    eps = float(config.get("layer_norm_eps", 1e-12))
    if not math.isclose(eps, LN_EPS):
        warnings.warn(f"config.json has layer_norm_eps={eps:g}; maskjax (as the official VideoMAE) uses "
                      f"{LN_EPS:g}, so outputs differ slightly (about 1e-6 relative) from the HF model",
                      stacklevel=4)


def hf_videomae_to_maskjax(sd: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                           **kwargs: Any) -> tuple[VideoModelSpec, dict, dict]:
    """HF state dict (Hub or transformers-5 keys) + config -> (spec, params, extra) nested dicts.

    ``kwargs``: ``variant``, ``num_frames``, ``image_size``, ``decoder_heads`` (expected values or
    stand-ins for a missing config.json) and ``source``.
    """
    sd = legacy_keys({k: np.asarray(v) for k, v in sd.items()})
    spec = hf_videomae_spec(sd, config, **kwargs)
    param_paths, shapes = layout(spec)
    flat = apply_rules(sd, videomae_rules(spec), shapes, what=f"maskjax VideoMAE {spec.variant}")
    flat.update(buffers(spec))
    return spec, unflatten({k: v for k, v in flat.items() if k in param_paths}), \
        unflatten({k: v for k, v in flat.items() if k not in param_paths})


# --- maskjax -> HF ----------------------------------------------------------------------------------

def hf_videomae_config(spec: VideoModelSpec) -> dict[str, Any]:
    """A transformers ``config.json`` dict for ``spec`` (exact GELU, q/v biases, LayerNorm eps 1e-6)."""
    size, patch = parse_variant(spec.variant)
    dmlp = spec.decoder_mlp_ratio or size.mlp_ratio
    return {"architectures": [ARCHITECTURE], "model_type": "videomae", "hidden_size": size.width,
            "num_hidden_layers": size.depth, "num_attention_heads": size.heads,
            "intermediate_size": int(size.width * size.mlp_ratio), "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
            "layer_norm_eps": LN_EPS, "image_size": spec.image_size, "patch_size": patch,
            "num_channels": spec.in_chans, "num_frames": spec.num_frames, "tubelet_size": spec.tubelet,
            "qkv_bias": True, "use_mean_pooling": False, "decoder_hidden_size": spec.decoder_width,
            "decoder_num_hidden_layers": spec.decoder_depth, "decoder_num_attention_heads": spec.decoder_heads,
            "decoder_intermediate_size": int(spec.decoder_width * dmlp),
            "norm_pix_loss": True if spec.norm_pix is None else bool(spec.norm_pix), "dtype": "float32"}


def maskjax_to_hf_videomae(spec: VideoModelSpec, params: Mapping, extra: Mapping) -> tuple[dict, dict]:
    """maskjax variables -> (Hub-keyed HF state dict, config dict); the buffers must be the standard tables."""
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    extra_flat = {k: np.asarray(v) for k, v in flatten(extra).items()}
    expected = buffers(spec)
    unknown = [fmt_path(k) for k in extra_flat if k not in expected]
    if unknown:
        raise ConversionError(f"buffers without a Hugging Face counterpart: {unknown}")
    for path, table in expected.items():
        if path not in extra_flat:
            raise ConversionError(f"maskjax variables lack the buffer {fmt_path(path)!r}")
        if extra_flat[path].shape != table.shape or not np.array_equal(extra_flat[path], table):
            raise ConversionError(f"buffer {fmt_path(path)!r} is not VideoMAE's fixed sinusoid table "
                                  f"(shape {extra_flat[path].shape}, expected {table.shape}); HF recomputes it, "
                                  "so this model cannot be exported faithfully")
    return invert_rules(flat, videomae_rules(spec)), hf_videomae_config(spec)


def save_hf_videomae(out_dir: str, spec: VideoModelSpec, params: Mapping, extra: Mapping, *,
                     overwrite: bool = False) -> str:
    """Writes an HF-loadable folder: ``config.json``, ``model.safetensors``, ``preprocessor_config.json``."""
    from maskjax.convert.torch_io import save_safetensors

    weights = os.path.join(out_dir, "model.safetensors")
    if os.path.exists(weights) and not overwrite:
        raise FileExistsError(f"{weights} already exists; choose another output directory or pass --overwrite")
    sd, config = maskjax_to_hf_videomae(spec, params, extra)
    os.makedirs(out_dir, exist_ok=True)
    with phase(f"writing {weights}"):
        save_safetensors(sd, weights)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    s = spec.image_size
    processor = {"image_processor_type": "VideoMAEImageProcessor", "do_resize": True,
                 "size": {"shortest_edge": s}, "do_center_crop": True, "crop_size": {"height": s, "width": s},
                 "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(processor, f, indent=2, sort_keys=True)
    return out_dir


# --- maskjax directories ----------------------------------------------------------------------------

def save_video_converted(out_dir: str, spec: VideoModelSpec, params: Mapping, extra: Mapping, *,
                         overwrite: bool = False) -> str:
    """Writes ``maskjax_video_model.json`` and the Orbax ``variables/`` checkpoint ({"params", "extra"})."""
    import jax
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    target = os.path.join(out_dir, VARIABLES_DIR)
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; choose another output directory or pass --overwrite")
    _check_variables(spec, params, extra)  # refuse to write what the spec cannot load
    os.makedirs(out_dir, exist_ok=True)
    tree = {"params": jax.tree.map(jax.numpy.asarray, dict(params)),
            "extra": jax.tree.map(jax.numpy.asarray, dict(extra))}
    with phase(f"writing {target}"):
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(target, tree, force=overwrite)
        checkpointer.wait_until_finished()
        checkpointer.close()
    with open(os.path.join(out_dir, SPEC_FILE), "w") as f:
        f.write(spec.to_json() + "\n")
    return out_dir


def _check_variables(spec: VideoModelSpec, params: Mapping, extra: Mapping) -> None:
    param_paths, shapes = layout(spec)
    got = {k: np.shape(v) for k, v in flatten(params).items()}
    got.update({k: np.shape(v) for k, v in flatten(extra).items()})
    missing = [fmt_path(p) for p in shapes if p not in got]
    unexpected = [fmt_path(p) for p in got if p not in shapes]
    wrong = [f"{fmt_path(p)}: {got[p]} vs {shapes[p]}" for p in shapes if p in got and tuple(got[p]) != shapes[p]]
    if missing or unexpected or wrong:
        raise ConversionError(f"variables do not match a VideoMAE {spec.variant}: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}, wrong shapes {wrong[:8]}")


def _abstract_target(spec: VideoModelSpec) -> dict:
    import jax

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    param_paths, shapes = layout(spec)
    sds = {k: jax.ShapeDtypeStruct(s, np.float32, sharding=device) for k, s in shapes.items()}
    return {"params": unflatten({k: v for k, v in sds.items() if k in param_paths}),
            "extra": unflatten({k: v for k, v in sds.items() if k not in param_paths})}


def load_video_converted_variables(path: str) -> tuple[VideoModelSpec, dict, dict]:
    """(spec, params, extra) of a directory written by :func:`save_video_converted`."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    file = os.path.join(path, SPEC_FILE)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{path} is not a converted maskjax video model (no {SPEC_FILE}); convert a "
                                "checkpoint first with `maskjax convert hf-videomae-to-maskjax`")
    with open(file) as f:
        spec = VideoModelSpec.from_dict(json.load(f))
    with phase(f"reading {path}"):
        checkpointer = ocp.StandardCheckpointer()
        tree = checkpointer.restore(os.path.join(path, VARIABLES_DIR), _abstract_target(spec))
        checkpointer.close()
    return spec, tree["params"], tree["extra"]


def merge_video_model(spec: VideoModelSpec, params: Mapping, extra: Mapping, **kwargs: Any):
    """The NNX :class:`VideoMAE` of ``spec`` holding ``params`` and ``extra`` (``kwargs`` go to the model)."""
    import jax

    from maskjax.core.templates import ModelTemplate

    _check_variables(spec, params, extra)
    template = (_template(spec.to_json()) if not kwargs
                else ModelTemplate.from_builder(lambda rngs: spec.build(rngs, **kwargs)))
    return template.merge(jax.tree.map(jax.numpy.asarray, dict(params)),
                          jax.tree.map(jax.numpy.asarray, dict(extra)))


def load_video_converted(path: str, **kwargs: Any):
    """Loads a converted directory as an NNX :class:`VideoMAE`."""
    spec, params, extra = load_video_converted_variables(path)
    return merge_video_model(spec, params, extra, **kwargs)


def read_videomae_workdir(workdir: str, step: int | None = None) -> tuple[VideoModelSpec, dict, dict]:
    """(spec, params, extra) from a maskjax ``videomae`` / ``videomae_v2`` training work directory."""
    import jax
    import orbax.checkpoint as ocp

    workdir = os.path.abspath(workdir)
    config_file = os.path.join(workdir, "config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not (os.path.exists(config_file) and os.path.isdir(ckpt_dir)):
        raise FileNotFoundError(f"{workdir} is neither a converted video model ({SPEC_FILE}) nor a training "
                                "work directory (config.json + checkpoints/)")
    with open(config_file) as f:
        config = json.load(f)
    if config.get("method") not in ("videomae", "videomae_v2"):
        raise ConversionError(f"{workdir} trained method {config.get('method')!r}; maskjax-to-hf-videomae "
                              "converts 'videomae' and 'videomae_v2' runs")
    m, d = config["model"], config["data"]
    spec = VideoModelSpec(variant=m["variant"], num_frames=int(d["num_frames"]), image_size=int(d["image_size"]),
                          tubelet=int(m.get("tubelet_size", 2)), in_chans=int(m.get("in_chans", 3)),
                          decoder_width=int(m["decoder_width"]), decoder_depth=int(m["decoder_depth"]),
                          decoder_heads=int(m["decoder_heads"]), norm_pix=bool(config["loss"]["norm_pix"]),
                          source=f"maskjax run {workdir}")
    manager = ocp.CheckpointManager(ckpt_dir, item_names=("state",),
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(create=False))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    target = _abstract_target(spec)
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape,
                                                                dtype=s.dtype), target)
    with phase(f"reading step {step} of {workdir}"):
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)))["state"]
    manager.close()
    spec.source += f" step {step}"
    return spec, restored["params"], restored["extra"]


# --- command-line entry points ----------------------------------------------------------------------

def load_hf_videomae(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
    """(state dict, config.json dict or None) of an HF model folder or a single weights file."""
    from maskjax.convert.torch_io import load_state_dict

    config_file = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
    config = None
    if os.path.exists(config_file):
        with open(config_file) as f:
            config = json.load(f)
    with phase(f"reading {path}"):
        return load_state_dict(path), config


def convert_hf_videomae_checkpoint(in_path: str, out_dir: str, *, overwrite: bool = False,
                                   **kwargs: Any) -> VideoModelSpec:
    """``maskjax convert hf-videomae-to-maskjax SRC OUT``: an HF folder or weights file -> maskjax directory."""
    sd, config = load_hf_videomae(in_path)
    kwargs.setdefault("source", f"Hugging Face checkpoint {os.path.abspath(in_path)}")
    spec, params, extra = hf_videomae_to_maskjax(sd, config, **kwargs)
    save_video_converted(out_dir, spec, params, extra, overwrite=overwrite)
    return spec


def convert_maskjax_to_hf_videomae(src: str, out_dir: str, *, step: int | None = None,
                                   overwrite: bool = False) -> VideoModelSpec:
    """``maskjax convert maskjax-to-hf-videomae SRC OUT``: converted directory or training workdir -> HF folder."""
    if os.path.exists(os.path.join(src, SPEC_FILE)):
        if step is not None:
            raise ConversionError("--step applies to training workdirs only")
        spec, params, extra = load_video_converted_variables(src)
    else:
        spec, params, extra = read_videomae_workdir(src, step)
    save_hf_videomae(out_dir, spec, params, extra, overwrite=overwrite)
    return spec
