"""JAX's persistent compilation cache (``config.compile_cache_dir``, ``--compile_cache DIR``).

With the cache on, a second start of the same program (same config, same JAX/XLA version, same
devices) loads the compiled executables from disk instead of compiling them again, which is
most of the start-up time on CPU (see docs/performance.md for the measured cold/warm start).
"""

from __future__ import annotations

import os

import jax

from maskjax.errors import UsageError


def enable_compile_cache(path: str | None) -> str | None:
    """Points JAX's persistent compilation cache at ``path`` (created if needed); None leaves it alone.

    Every program is cached, however short its compile time (``min_compile_time_secs`` 0): on CPU
    even the small init and evaluation programs take seconds to compile. The minimum entry size
    stays at JAX's default (0 = no limit unless the cache backend asks for one). Call this before
    the first compilation; returns the absolute path used.
    """
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"compile cache {path!r} exists and is not a directory (--compile_cache / "
                         f"config.compile_cache_dir)")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # JAX opens its cache once per process; forget a cache opened before so the next compilation
    # uses this directory (e.g. one set through JAX_COMPILATION_CACHE_DIR).
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    return path
