"""Plugin discovery: registries fill themselves from a package's modules and from entry points.

Each registry (methods, data modalities, evaluators, ledger tables) is filled by the modules
that define its entries, which register themselves with a decorator when imported. This module
finds those modules, so that no registry keeps a hand-written import list:

- every module of the registry's built-in package is imported (``pkgutil``);
- every entry point of the registry's group is loaded (``importlib.metadata``), so a package
  outside maskjax registers a method by declaring, in its ``pyproject.toml``::

      [project.entry-points."maskjax.methods"]
      my_method = "my_package.my_method"

  (the value names a module, or ``module:attribute``; loading it runs its ``@register``).

Only the standard library is imported here: every layer may use it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import sys
import threading

# Entry-point groups of the registries.
METHODS = "maskjax.methods"
MODALITIES = "maskjax.modalities"
EVALUATORS = "maskjax.evaluators"
TABLES = "maskjax.tables"

_done: set[tuple[str, str]] = set()
_lock = threading.RLock()


class PluginError(ImportError):
    """A plugin module or entry point failed to import; the message names it and the cause."""


def discover(package: str, group: str, *, skip: tuple[str, ...] = ()) -> None:
    """Imports every module of ``package`` (except names in ``skip``) and loads entry points of ``group``.

    Runs once per (package, group); later calls return at once. A module that fails to import
    raises :class:`PluginError` naming it, except for missing optional dependencies of a
    built-in module (``ModuleNotFoundError`` of a package other than maskjax), which only leave
    that module's entries unregistered.
    """
    with _lock:
        if (package, group) in _done:
            return
        _done.add((package, group))
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__, package + "."):
            short = info.name.rsplit(".", 1)[-1]
            if short.startswith("_") or short in skip:
                continue
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as e:
                if (e.name or "").split(".")[0] == "maskjax":
                    raise
                # An optional dependency of this built-in plugin is missing: skip it.
        for entry in entry_points(group):
            load_entry_point(entry)


def discover_named(package: str, module: str, group: str) -> None:
    """Imports ``<package>.<sub>.<module>`` for every sub-package that has one, then ``group``'s entry points.

    For registries whose built-in entries sit one level down (``maskjax/data/video/modality.py``).
    Runs once per (package, group), with the same error rules as :func:`discover`.
    """
    with _lock:
        key = (f"{package}/*/{module}", group)
        if key in _done:
            return
        _done.add(key)
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__, package + "."):
            if not info.ispkg:
                continue
            sub = importlib.import_module(info.name)
            if not any(m.name == module for m in pkgutil.iter_modules(sub.__path__)):
                continue
            try:
                importlib.import_module(f"{info.name}.{module}")
            except ModuleNotFoundError as e:
                if (e.name or "").split(".")[0] == "maskjax":
                    raise
        for entry in entry_points(group):
            load_entry_point(entry)


def entry_points(group: str) -> list:
    """The installed entry points of ``group`` (an empty list when there are none)."""
    return list(importlib.metadata.entry_points(group=group))


def load_entry_point(entry) -> object:
    """Loads one entry point (importing its module registers its entries); clear error on failure."""
    try:
        return entry.load()
    except Exception as e:  # noqa: BLE001 - any failure of third-party code is reported the same way
        raise PluginError(f"the {entry.group} plugin {entry.name!r} ({entry.value}) failed to load: "
                          f"{type(e).__name__}: {e}") from e


def forget(group: str) -> None:
    """Lets the next discovery for entry-point ``group`` scan again (a plugin installed after the first lookup)."""
    with _lock:
        for key in [k for k in _done if k[1] == group]:
            _done.discard(key)


def loaded(module: str) -> bool:
    """Whether ``module`` has been imported in this process."""
    return module in sys.modules
