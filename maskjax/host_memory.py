"""glibc malloc settings that stop XLA:CPU from re-faulting its buffers every step.

Why (docs/performance.md, "Page faults"): XLA:CPU allocates a training step's temporaries and
outputs per execution with ``malloc`` and frees them afterwards. glibc returns large blocks to the
kernel when they are freed (``mmap``-backed blocks above ``M_MMAP_THRESHOLD``, the per-thread
arenas' heaps by trimming), so the next step gets fresh pages and the kernel zero-fills each on
first touch: about 77,000 minor page faults per step of the CIFAR-10 quick-start recipe on one
core, against 13,000 to 27,000 for Hugging Face's PyTorch MAE. With one arena, no ``mmap`` and no
trimming, freed blocks stay in the process and the next step reuses them.

The settings have to be made before JAX starts its CPU backend: its thread pool's threads attach
to malloc arenas when they first allocate, and an arena created before cannot be undone.
``maskjax``'s command line calls :func:`tune_malloc` first thing; scripts that drive maskjax from
Python can call it before anything touches ``jax.devices()``. ``MASKJAX_TUNE_MALLOC=0`` turns it
off; it is skipped where another backend than the CPU will run (``JAX_PLATFORMS`` naming a
different platform first, or an installed GPU/TPU plugin when ``JAX_PLATFORMS`` is unset), and on
C libraries other than glibc.

The price: memory freed by the process is kept for reuse instead of being handed back to the
operating system, so its resident size stays at its peak.

A top-level module that imports nothing of maskjax (the standard library, and JAX's backend state
only once JAX is loaded), not part of ``maskjax.perf``: the entry points of several layers call it
(``maskjax`` itself, ``python -m maskjax.train``, ``maskjax bench``), and ``maskjax.train`` may not
import ``maskjax.perf``, which sits above it (pyproject.toml, ``[tool.importlinter]``).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# The largest trim threshold mallopt takes (an int): never trim in practice.
NEVER_TRIM = 2**31 - 1

ENV_SWITCH = "MASKJAX_TUNE_MALLOC"
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
                       "libtpu")

_applied = False


def cpu_backend_expected(environ=os.environ) -> bool:
    """Whether JAX will run on the CPU: ``JAX_PLATFORMS`` names "cpu" first, or it is unset and no
    GPU/TPU plugin is installed (found without importing it, so no backend starts)."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def _glibc():
    """The process's C library through ctypes if it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):  # musl and others have no gnu_get_libc_version
        return None
    version.restype = ctypes.c_char_p
    return libc if version() else None


def _backends_started() -> bool:
    """Whether JAX has already created its backends (too late for arena settings to reach them)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if started is not None else False


def tune_malloc(environ=os.environ) -> str:
    """Applies the settings of this module's docstring once per process; returns what happened:
    "applied", "already applied", or why not ("disabled by MASKJAX_TUNE_MALLOC=0", "not the CPU
    backend", "not glibc", "JAX backends already started", "mallopt refused")."""
    global _applied
    if _applied:
        return "already applied"
    if environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"disabled by {ENV_SWITCH}=0"
    if not cpu_backend_expected(environ):
        return "not the CPU backend"
    libc = _glibc()
    if libc is None:
        return "not glibc"
    if _backends_started():
        return "JAX backends already started"
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM))
    if not all(libc.mallopt(param, value) == 1 for param, value in settings):
        return "mallopt refused"
    _applied = True
    return "applied"
