"""Method registry: a method = masking + model + objective, wired in one small file.

A method subclasses :class:`~maskjax.methods.base.Method` (the written-down contract) and
registers itself with ``@register("name")``. The registry finds methods without a hand-kept
import list: every module of this package is imported on first lookup, and so is every entry
point of the ``maskjax.methods`` group, so a package outside maskjax adds a method by declaring
``[project.entry-points."maskjax.methods"] name = "my_package.my_method"``. The trainer,
evaluators, bench and fitcheck look methods up here by the config's ``method`` name and never
branch on it (``docs/adding_a_method.md``).
"""

from __future__ import annotations

from typing import Callable

from maskjax.methods.base import Method, NotSupported

__all__ = ["Method", "NotSupported", "known_methods", "make_method", "method_class", "method_modality",
           "register"]

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator that registers a :class:`Method` subclass under ``name`` (sets ``cls.name``)."""

    def wrap(cls):
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) needs a subclass of maskjax.methods.Method, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"method name {name!r} is taken by {existing.__module__}.{existing.__qualname__}")
        if "name" not in cls.__dict__:
            cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _discover() -> None:
    from maskjax import plugins

    plugins.discover("maskjax.methods", plugins.METHODS, skip=("base",))


def known_methods() -> list[str]:
    """Names of all registered methods (built-in and entry-point plugins)."""
    _discover()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    """The registered class of method ``name`` (clear error listing the known ones)."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def method_modality(name: str) -> str:
    """The data modality method ``name`` trains on."""
    return method_class(name).modality


def make_method(config) -> Method:
    """Instantiates the method named by ``config.method`` (clear error listing the known ones)."""
    return method_class(config.method)(config)
