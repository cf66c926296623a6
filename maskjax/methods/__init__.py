"""Method registry: a method = masking + model + objective, wired in one small file.

A method is a class constructed from the whole config, with ``build(rngs) -> model`` and
``loss(model, batch, keys, train, step=None) -> (loss, metrics)``; ``keys`` are per-example PRNG keys so
a sample's randomness does not depend on batch splitting or sharding. The trainer and evaluators
look methods up here by the config's ``method`` name and never branch on it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax


class Method(Protocol):
    """What the trainer needs from a method.

    Optional: ``modality`` (default ``"image"``; selects the input pipeline in
    ``maskjax.data.modalities``) and a static ``check_config(config, errors)`` that appends a
    message per problem with the model fields before anything is compiled.
    """

    name: str

    def build(self, rngs: Any) -> Any:
        """Builds the NNX model from the config the method was made with."""

    def loss(self, model: Any, batch: dict, keys: jax.Array, train: bool,
             step: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Returns the scalar loss and a dict of scalar metrics for one (micro-)batch.

        ``step`` is the optimiser step (None outside training) for in-loss schedules.
        """


_REGISTRY: dict[str, Callable[[Any], Method]] = {}


def register(name: str):
    """Class decorator that registers a method factory under ``name``."""

    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def known_methods() -> list[str]:
    """Names of all registered methods."""
    _import_builtin_methods()
    return sorted(_REGISTRY)


def method_class(name: str) -> Callable[[Any], Method]:
    """The registered factory of method ``name`` (clear error listing the known ones)."""
    _import_builtin_methods()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def method_modality(name: str) -> str:
    """The data modality method ``name`` trains on ("image" unless it says otherwise)."""
    return getattr(method_class(name), "modality", "image")


def make_method(config: Any) -> Method:
    """Instantiates the method named by ``config.method`` (clear error listing the known ones)."""
    return method_class(config.method)(config)


def _import_builtin_methods() -> None:
    # Imported lazily so `maskjax.methods` stays importable without pulling every model in.
    from maskjax.methods import audio_mae, bert, electra, mae, mae_st, video_mae  # noqa: F401
