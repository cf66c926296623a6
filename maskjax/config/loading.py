"""Loading ``file.py[:arg]`` configs, parsing their argument, applying dotted overrides."""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import ml_collections

from maskjax.errors import ConfigError, UsageError


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` by calling its ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not path:
        raise UsageError(f"--config {spec!r}: no file named; expected FILE.py[:ARG]")
    if not file.is_file():
        near = sorted(p.name for p in file.parent.glob("*.py")) if file.parent.is_dir() else []
        hint = f" ({file.parent}/ has: {', '.join(near)})" if near else ""
        raise UsageError(f"config file {path!r} not found{hint}")
    module_spec = importlib.util.spec_from_file_location(f"maskjax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config(arg) function")
    return module.get_config(arg or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
    """Sets dotted keys (``optim.base_lr``) on a config; unknown keys raise a clear error."""
    for dotted, value in overrides.items():
        node = config
        parts = dotted.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise ConfigError(f"unknown config field {dotted!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config field {dotted!r}")
        node[parts[-1]] = value


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses a config argument ``"smoke"`` or ``"epochs=1600,smoke"`` against typed defaults.

    A bare word sets a boolean default to True; ``key=value`` is converted to the default's type.
    Unknown keys raise a clear error listing the accepted ones.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"unknown config argument {key!r} (after the ':' of --config); accepted: "
                              f"{sorted(defaults)}")
        kind = type(defaults[key])
        if not eq:
            if kind is not bool:
                raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
            out[key] = True
        elif kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            try:
                out[key] = kind(value)
            except ValueError:
                raise ConfigError(f"config argument {key}={value!r}: expected {kind.__name__}") from None
    return ml_collections.ConfigDict(out)
