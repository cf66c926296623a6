"""Converted models on disk: a JSON model description plus an Orbax checkpoint of the variables.

Layout of a converted directory::

    OUT_DIR/maskjax_model.json   ModelSpec: kind, variant, image size, decoder sizes, head, source
    OUT_DIR/variables/           Orbax (StandardCheckpointer): {"params": ..., "extra": ...}

``params`` and ``extra`` are the same pure nested dicts with string keys that the train state
holds (``maskjax.core.trees.to_tree``): ``params`` are the trainable ``nnx.Param`` s, ``extra``
the buffers (fixed position embeddings). :func:`load_converted` rebuilds the NNX model.
Training work directories (``config.json`` + ``checkpoints/``) can be read too, see
:func:`read_train_workdir`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from maskjax.convert.common import ConversionError, JsonSpec, Path, flatten, fmt_path, unflatten
from maskjax.progress import phase

SPEC_FILE = "maskjax_model.json"
VARIABLES_DIR = "variables"
KINDS = ("mae", "encoder", "classifier")


@dataclasses.dataclass
class ModelSpec(JsonSpec):
    """Everything needed to rebuild a converted maskjax model (stored as ``maskjax_model.json``).

    ``kind``: ``"mae"`` (:class:`~maskjax.models.mae.MaskedAutoencoder`), ``"encoder"``
    (:class:`~maskjax.models.vit.ViT`) or ``"classifier"``
    (:class:`~maskjax.models.classifier.ViTClassifier`). ``norm_pix`` and ``mask_ratio`` record
    how the model was trained when the source says so (None = unknown); ``source`` is provenance.
    """

    kind: str
    variant: str
    image_size: int
    in_chans: int = 3
    decoder_width: int | None = None
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    decoder_mlp_ratio: float | None = None
    num_classes: int | None = None
    pool: str | None = None
    learned_pos_embed: bool | None = None
    norm_pix: bool | None = None
    mask_ratio: float | None = None
    source: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model kind must be one of {KINDS}, got {self.kind!r}")

    def build(self, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
        """Builds the NNX model (random weights); ``kwargs`` go to the model (dtype, remat, ...)."""
        if self.kind == "mae":
            from maskjax.models.mae import MaskedAutoencoder

            return MaskedAutoencoder(self.variant, image_size=self.image_size, in_chans=self.in_chans,
                                     decoder_width=self.decoder_width, decoder_depth=self.decoder_depth,
                                     decoder_heads=self.decoder_heads,
                                     mlp_ratio=self.decoder_mlp_ratio or 4.0, rngs=rngs, **kwargs)
        if self.kind == "encoder":
            from maskjax.models.vit import ViT

            return ViT(self.variant, image_size=self.image_size, in_chans=self.in_chans, rngs=rngs, **kwargs)
        from maskjax.models.classifier import ViTClassifier

        return ViTClassifier(self.variant, image_size=self.image_size, num_classes=self.num_classes,
                             pool=self.pool, learned_pos_embed=bool(self.learned_pos_embed),
                             in_chans=self.in_chans, rngs=rngs, **kwargs)



@functools.lru_cache(maxsize=8)
def _template(spec_json: str):
    # Tracing a model abstractly takes seconds for ViT-B and up; converters ask for the same
    # structure several times, so it is built once per spec.
    from maskjax.core.templates import ModelTemplate

    spec = ModelSpec.from_dict(json.loads(spec_json))
    return ModelTemplate.from_builder(spec.build)


def template(spec: ModelSpec):
    """The :class:`maskjax.core.templates.ModelTemplate` (graph + abstract variables) of ``spec``'s model."""
    return _template(spec.to_json())


def layout(spec: ModelSpec) -> tuple[set[Path], dict[Path, tuple[int, ...]]]:
    """(paths of trainable params, shape of every variable) of ``spec``'s model, without memory."""
    t = template(spec)
    p = flatten(nnx.to_pure_dict(t.abstract_params))
    e = flatten(nnx.to_pure_dict(t.abstract_extra))
    shapes = {k: tuple(v.shape) for k, v in {**p, **e}.items()}
    return set(p), shapes


def split_variables(spec: ModelSpec, flat: Mapping[Path, np.ndarray]) -> tuple[dict, dict]:
    """Flat variables -> (params, extra) nested dicts, checking they are exactly the model's."""
    param_paths, shapes = layout(spec)
    missing = [fmt_path(p) for p in shapes if p not in flat]
    extra_paths = [fmt_path(p) for p in flat if p not in shapes]
    if missing or extra_paths:
        raise ConversionError(f"variables do not match a {spec.kind} {spec.variant} model: missing "
                              f"{missing[:8]}, unexpected {extra_paths[:8]}")
    params = unflatten({k: v for k, v in flat.items() if k in param_paths})
    extra = unflatten({k: v for k, v in flat.items() if k not in param_paths})
    return params, extra


def join_variables(params: Mapping, extra: Mapping) -> dict[Path, np.ndarray]:
    """(params, extra) nested dicts -> one flat dict of numpy arrays."""
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    flat.update({k: np.asarray(v) for k, v in flatten(extra).items()})
    return flat


def model_variables(model: nnx.Module) -> tuple[dict, dict]:
    """(params, extra) pure nested dicts (string keys, numpy arrays) of an NNX model."""
    _, params, extra = nnx.split(model, nnx.Param, ...)
    to_np = lambda tree: unflatten({k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(tree)).items()})
    return to_np(params), to_np(extra)


def merge_model(spec: ModelSpec, params: Mapping, extra: Mapping, **kwargs: Any) -> nnx.Module:
    """The NNX model of ``spec`` holding ``params`` and ``extra`` (which must be exactly its variables).

    ``kwargs`` (dtype, remat, attention_impl, ...) change how the model computes, not its variables.
    """
    split_variables(spec, join_variables(params, extra))
    params = jax.tree.map(jax.numpy.asarray, dict(params))
    extra = jax.tree.map(jax.numpy.asarray, dict(extra))
    if not kwargs:
        return template(spec).merge(params, extra)
    from maskjax.core.templates import ModelTemplate

    return ModelTemplate.from_builder(lambda rngs: spec.build(rngs, **kwargs)).merge(params, extra)


def save_converted(out_dir: str, spec: ModelSpec, params: Mapping, extra: Mapping, *,
                   overwrite: bool = False) -> str:
    """Writes ``maskjax_model.json`` and the Orbax ``variables/`` checkpoint; returns ``out_dir``."""
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    target = os.path.join(out_dir, VARIABLES_DIR)
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; choose another output directory or pass --overwrite")
    split_variables(spec, join_variables(params, extra))  # refuse to write a tree the spec cannot load
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


def read_spec(path: str) -> ModelSpec:
    """The :class:`ModelSpec` of a converted directory."""
    file = os.path.join(path, SPEC_FILE)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{path} is not a converted maskjax model (no {SPEC_FILE}); convert a "
                                f"checkpoint first with `maskjax convert ...`")
    with open(file) as f:
        return ModelSpec.from_dict(json.load(f))


def _abstract_target(spec: ModelSpec) -> dict:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    param_paths, shapes = layout(spec)
    sds = {k: jax.ShapeDtypeStruct(s, np.float32, sharding=device) for k, s in shapes.items()}
    return {"params": unflatten({k: v for k, v in sds.items() if k in param_paths}),
            "extra": unflatten({k: v for k, v in sds.items() if k not in param_paths})}


def load_converted_variables(path: str) -> tuple[ModelSpec, dict, dict]:
    """(spec, params, extra) of a converted directory; arrays are restored onto one device."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    spec = read_spec(path)
    with phase(f"reading {path}"):
        checkpointer = ocp.StandardCheckpointer()
        tree = checkpointer.restore(os.path.join(path, VARIABLES_DIR), _abstract_target(spec))
        checkpointer.close()
    return spec, tree["params"], tree["extra"]


def load_converted(path: str, **kwargs: Any) -> nnx.Module:
    """Loads a converted directory as an NNX model (``kwargs`` go to the model, e.g. ``dtype``)."""
    spec, params, extra = load_converted_variables(path)
    return merge_model(spec, params, extra, **kwargs)


def read_train_workdir(workdir: str, step: int | None = None) -> tuple[ModelSpec, dict, dict]:
    """(spec, params, extra) from a maskjax training work directory (newest step by default).

    Reads ``config.json`` for the architecture and restores only params and buffers from the
    Orbax ``state`` item (the optimizer state is not needed for conversion).
    """
    import orbax.checkpoint as ocp

    workdir = os.path.abspath(workdir)
    config_file = os.path.join(workdir, "config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not (os.path.exists(config_file) and os.path.isdir(ckpt_dir)):
        raise FileNotFoundError(f"{workdir} is neither a converted model ({SPEC_FILE}) nor a training "
                                f"work directory (config.json + checkpoints/)")
    with open(config_file) as f:
        config = json.load(f)
    if config.get("method") != "mae":
        raise ConversionError(f"only MAE training runs convert; {workdir} is method {config.get('method')!r}")
    m = config["model"]
    if m.get("scan_layers"):
        raise ConversionError(f"{workdir} was trained with model.scan_layers=True (blocks stacked along a "
                              f"leading layer axis); conversion reads unscanned runs only: unstack the "
                              f"params with maskjax.models.scan.unstack_layers first")
    spec = ModelSpec(kind="mae", variant=m["variant"], image_size=int(config["data"]["image_size"]),
                     in_chans=int(m.get("in_chans", 3)), decoder_width=int(m["decoder_width"]),
                     decoder_depth=int(m["decoder_depth"]), decoder_heads=int(m["decoder_heads"]),
                     decoder_mlp_ratio=4.0, norm_pix=bool(config["loss"]["norm_pix"]),
                     mask_ratio=float(config["masking"]["ratio"]), source=f"maskjax run {workdir}")
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
