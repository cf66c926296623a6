"""Config checks that run before anything is compiled, with messages a user can act on."""

from __future__ import annotations

import math
import os

import jax

from maskjax.train.sharding import normalize_rules, resolve_mesh_shape


class ConfigError(ValueError):
    """The config cannot run; the message lists every problem found."""


def _check_model(config, errors: list[str]) -> None:
    from maskjax.models.vit import parse_variant

    try:
        _, patch = parse_variant(config.model.variant)
    except ValueError as e:
        errors.append(str(e))
        return
    size = config.data.image_size
    if size % patch:
        errors.append(f"data.image_size {size} is not divisible by the patch size {patch} of "
                      f"model.variant {config.model.variant!r}")
    width = config.model.get("decoder_width")
    heads = config.model.get("decoder_heads")
    if width and heads and width % heads:
        errors.append(f"model.decoder_width {width} is not divisible by model.decoder_heads {heads}")


def _check_data(config, errors: list[str]) -> None:
    data = config.data
    if data.kind in ("folder", "array_record"):
        for field in ("path", "eval_path"):
            path = data.get(field)
            if field == "path" and not path:
                errors.append(f"data.path is not set (data.kind={data.kind!r} reads images from it)")
            elif path and not os.path.exists(path):
                errors.append(f"data.{field} {path!r} does not exist")
    elif data.kind == "tfds":
        if not data.get("name"):
            errors.append("data.name is not set (data.kind='tfds' needs a TFDS dataset name)")
    else:
        errors.append(f"unknown data.kind {data.kind!r}; use 'folder', 'array_record' or 'tfds'")


def _check_batch(config, errors: list[str], num_devices: int, process_count: int) -> None:
    try:
        sizes = resolve_mesh_shape(config.mesh, num_devices)
    except ValueError as e:
        errors.append(str(e))
        return
    rules = normalize_rules(config.sharding_rules)
    mesh_shape = dict(zip(("data", "fsdp", "tensor"), sizes))
    dp = math.prod(mesh_shape[a] for a in rules.get("batch", ("data", "fsdp")))
    batch, accum = config.global_batch, config.grad_accum
    if accum < 1 or batch % accum:
        errors.append(f"global_batch {batch} is not divisible by grad_accum {accum}")
    elif (batch // accum) % dp:
        errors.append(f"the micro-batch global_batch/grad_accum = {batch // accum} is not divisible by "
                      f"the data-parallel size {dp} (mesh {mesh_shape}); choose a global batch that is a "
                      f"multiple of {dp * accum}")
    if batch % process_count:
        errors.append(f"global_batch {batch} is not divisible by the {process_count} processes")


def validate_config(config, num_devices: int | None = None, process_count: int | None = None) -> None:
    """Raises :class:`ConfigError` listing every problem with ``config``; returns None if it can run."""
    errors: list[str] = []
    num_devices = jax.device_count() if num_devices is None else num_devices
    process_count = jax.process_count() if process_count is None else process_count
    from maskjax.methods import known_methods

    if config.method not in known_methods():
        errors.append(f"unknown method {config.method!r}; known methods: {known_methods()}")
    ratio = config.masking.get("ratio")
    if ratio is not None and not 0.0 < ratio < 1.0:
        errors.append(f"masking.ratio must be in (0, 1), got {ratio}")
    if config.compute_dtype not in ("float32", "bfloat16", "float16"):
        errors.append(f"unknown compute_dtype {config.compute_dtype!r}; use float32, bfloat16 or float16")
    if config.optim.name not in ("adamw", "sgd"):
        errors.append(f"unknown optim.name {config.optim.name!r}; use 'adamw' or 'sgd'")
    if config.checkpoint.data_state_mismatch not in ("error", "reset"):
        errors.append("checkpoint.data_state_mismatch must be 'error' or 'reset'")
    _check_model(config, errors)
    _check_data(config, errors)
    _check_batch(config, errors, num_devices, process_count)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
