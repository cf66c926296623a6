"""Config checks that run before anything is compiled, with messages a user can act on."""

from __future__ import annotations

import math

import jax

from maskjax.core.sharding import normalize_rules, resolve_mesh_shape


from maskjax.errors import ConfigError  # noqa: E402  (re-exported: raised by validate_config)

__all__ = ["ConfigError", "validate_config"]


def _check_method(config, errors: list[str]) -> None:
    from maskjax.data.modalities import get_modality
    from maskjax.methods import method_class

    cls = method_class(config.method)
    if cls.config_section() and cls.name not in config:
        errors.append(f"config has no section {cls.name!r} with method {cls.name!r}'s options; start the "
                      f"config from maskjax.config.method_config({cls.name!r})")
    cls.check_config(config, errors)
    modality = cls.modality
    try:
        get_modality(modality).check(config, errors)
    except ValueError as e:  # an unknown modality name
        errors.append(f"method {cls.name!r}: {e}")
        return
    _check_attention(config, cls.attention_impls, errors)


def _check_attention(config, allowed: tuple | None, errors: list[str]) -> None:
    # A wrong attention_impl would otherwise fail while tracing the step, deep inside JAX.
    from maskjax.models.layers import ATTENTION_IMPLS, on_cuda

    impl = config.get("model", {}).get("attention_impl")
    if impl is None:
        return
    allowed = ATTENTION_IMPLS if allowed is None else allowed
    if impl not in allowed:
        errors.append(f"model.attention_impl={impl!r} is not available for {config.method}; use None or one of "
                      f"{allowed}")
    elif impl == "cudnn":
        if config.compute_dtype == "float32":
            errors.append("model.attention_impl='cudnn' needs compute_dtype bfloat16 or float16 (cuDNN's fused "
                          "attention has no float32 kernel)")
        if not on_cuda():
            errors.append(f"model.attention_impl='cudnn' needs an NVIDIA GPU, but JAX's backend here is "
                          f"{jax.default_backend()!r}; leave it unset (None) to let maskjax choose")


def _check_evals(config, errors: list[str]) -> None:
    # An unknown evaluator would otherwise surface only after training, when the run has ended.
    from maskjax.eval.registry import known_evaluators

    for name, options in config.get("evals", {}).items():
        kind = options.get("type")
        if kind not in known_evaluators():
            errors.append(f"evals.{name}: unknown evaluator type {kind!r}; known: {known_evaluators()}")


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


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_run_numbers(config, errors: list[str]) -> None:
    # Values that otherwise fail late or silently: a NaN/zero learning rate trains nothing (or
    # NaNs from the first step), total_steps=0 used to mean "use epochs", every_steps=0 divides
    # by zero in the loop, and max_to_keep=0 makes Orbax delete every checkpoint it writes.
    lr = config.optim.get("base_lr")
    if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
        errors.append(f"optim.base_lr must be a finite number > 0, got {lr!r}")
    positive = [("global_batch", config.get("global_batch")), ("log_every_steps", config.get("log_every_steps")),
                ("checkpoint.every_steps", config.checkpoint.get("every_steps")),
                ("checkpoint.max_to_keep", config.checkpoint.get("max_to_keep"))]
    if config.get("total_steps") is not None:  # None (unset) means: from epochs
        positive.append(("total_steps", config.total_steps))
    data = config.get("data", {})
    if "image_size" in data:
        positive.append(("data.image_size", data.image_size))
    for name, value in positive:
        if name == "checkpoint.max_to_keep" and value is None:
            continue  # Orbax: keep every checkpoint
        if not _is_number(value) or value != int(value) or value <= 0:
            hint = " (0 or less would delete every checkpoint; leave it None to keep all)" \
                if name == "checkpoint.max_to_keep" else ""
            errors.append(f"{name} must be a whole number > 0, got {value!r}{hint}")


def validate_config(config, num_devices: int | None = None, process_count: int | None = None) -> None:
    """Raises :class:`ConfigError` listing every problem with ``config``; returns None if it can run."""
    errors: list[str] = []
    num_devices = jax.device_count() if num_devices is None else num_devices
    process_count = jax.process_count() if process_count is None else process_count
    from maskjax.methods import known_methods
    from maskjax.train.optim import OPTIMIZERS, SCHEDULES

    known = config.method in known_methods()
    if not known:
        errors.append(f"unknown method {config.method!r}; known methods: {known_methods()}")
    ratio = config.get("masking", {}).get("ratio")
    if ratio is not None and not 0.0 < ratio < 1.0:
        errors.append(f"masking.ratio must be in (0, 1), got {ratio}")
    if config.compute_dtype not in ("float32", "bfloat16", "float16"):
        errors.append(f"unknown compute_dtype {config.compute_dtype!r}; use float32, bfloat16 or float16")
    if config.optim.name not in OPTIMIZERS:
        errors.append(f"unknown optim.name {config.optim.name!r}; use one of {OPTIMIZERS}")
    if config.optim.get("schedule", "cosine") not in SCHEDULES:
        errors.append(f"unknown optim.schedule {config.optim.schedule!r}; use one of {SCHEDULES}")
    if config.checkpoint.data_state_mismatch not in ("error", "reset"):
        errors.append("checkpoint.data_state_mismatch must be 'error' or 'reset'")
    _check_run_numbers(config, errors)
    if known:
        _check_method(config, errors)
    _check_evals(config, errors)
    if _is_number(config.global_batch) and config.global_batch > 0:  # else reported above
        _check_batch(config, errors, num_devices, process_count)
    if len(errors) == 1:
        raise ConfigError(f"invalid config: {errors[0]}", problems=errors)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors), problems=errors)
