"""MaskGIT's mask schedules and its training mask (specs/methods_text_gen.md 9a, 9b).

:func:`schedule` is ``maskgit/libml/mask_schedule.py::schedule(ratio, total_unknown, method)``:
the fraction of tokens to mask, gamma(r), for an input ratio ``r`` in [0, 1). During training
``r ~ U[0, 1)``; at step ``t`` of ``T`` decoding steps ``r = (t + 1) / T``. The official methods:

============  ======================================  =========================================
method        gamma(r)                                paper name
============  ======================================  =========================================
``uniform``   ``1 - r``                               linear
``pow<K>``    ``1 - r**K`` (any float K: ``pow2.5``)  square (K=2), cubic (K=3), sqrt (K=0.5)
``cosine``    ``cos(pi/2 * r)``                       cosine (the paper's choice)
``log``       ``-log2(r) / log2(total_unknown)``      logarithmic
``exp``       ``1 - 2**(-log2(total_unknown)(1-r))``  exponential
============  ======================================  =========================================

and the result is clipped to ``[1e-6, 1]`` (so ``log`` at ``r = 0``, +inf, becomes 1). The
names in :data:`ALIASES` (``linear``, ``square``, ``cubic``, ``sqrt``) are maskjax conveniences
that resolve to the official names above; the official function accepts only the official ones
(it fails on any other name; :func:`schedule` raises a ValueError).

Training (paper section 3.2; the training code is not released): per example draw
``r ~ U[0, 1)`` and hide ``ceil(gamma(r) * N)`` of the ``N`` tokens, chosen uniformly. The clip
to ``[1e-6, 1]`` makes the count at least 1 for any ``N < 10**6`` (a loss on masked tokens
only is then never empty); it is also clipped to ``[1, N]`` explicitly. Shapes are static: the
mask is a boolean ``[B, N]`` (:func:`maskjax.masking.rates.mask_from_counts`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from maskjax.masking.rates import mask_from_counts

# The names the official schedule() accepts: "uniform", "cosine", "log", "exp" and "pow<K>".
OFFICIAL_METHODS = ("uniform", "cosine", "log", "exp", "pow")
# maskjax conveniences (the paper's names) -> the official method they denote.
ALIASES = {"linear": "uniform", "square": "pow2", "cubic": "pow3", "sqrt": "pow0.5"}
MIN_MASK_RATIO = 1e-6  # the official clip's lower bound ("Clamps mask into [epsilon, 1)")


def canonical_method(method: str) -> str:
    """The official name of ``method`` (aliases resolved); ValueError for an unknown name."""
    method = ALIASES.get(method, method)
    if method in ("uniform", "cosine", "log", "exp"):
        return method
    if isinstance(method, str) and method.startswith("pow"):
        try:
            float(method[3:])
        except ValueError:
            pass
        else:
            return method
    raise ValueError(f"unknown MaskGIT mask schedule {method!r}; use uniform, cosine, log, exp, pow<K> "
                     f"(e.g. pow2.5) or an alias {sorted(ALIASES)}")


def schedule(ratio, total_unknown, method: str = "cosine") -> jax.Array:
    """gamma(ratio): the mask rate in ``[1e-6, 1]`` (module docstring), float32, elementwise.

    ``ratio`` in [0, 1] (array or scalar, may be traced); ``total_unknown`` the number of tokens
    that can be masked (used by ``log`` and ``exp`` only; may be an array broadcasting with
    ``ratio``, e.g. the per-example count of masks at the start of decoding).
    """
    method = canonical_method(method)
    ratio = jnp.asarray(ratio, jnp.float32)
    if method == "uniform":
        rate = 1.0 - ratio
    elif method.startswith("pow"):
        rate = 1.0 - ratio ** float(method[3:])
    elif method == "cosine":
        rate = jax.lax.cos(math.pi / 2.0 * ratio)
    elif method == "log":
        rate = -jnp.log2(ratio) / jnp.log2(total_unknown)
    else:  # "exp"
        rate = 1.0 - jnp.exp2(-jnp.log2(total_unknown) * (1.0 - ratio))
    return jnp.clip(rate, MIN_MASK_RATIO, 1.0)


def training_counts(ratios: jax.Array, length: int, method: str = "cosine") -> jax.Array:
    """Tokens to hide per example: ``clip(ceil(gamma(r) * N), 1, N)`` as int32 [B]."""
    rates = schedule(ratios, length, method)
    counts = jnp.ceil(rates * jnp.float32(length)).astype(jnp.int32)
    return jnp.clip(counts, 1, length)


def training_mask(keys: jax.Array, length: int, method: str = "cosine") -> tuple[jax.Array, jax.Array]:
    """MaskGIT's training mask from per-example keys [B]: ``(hidden bool [B, N], ratios f32 [B])``.

    Example ``i`` draws ``r ~ U[0, 1)`` from ``fold_in(keys[i], 0)`` and the positions from
    ``fold_in(keys[i], 1)``: ``ceil(gamma(r) N)`` positions, every subset of that size equally
    likely. A sample's mask depends only on its own key (not on the batch split or the mesh).
    """
    ratios = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), (), jnp.float32))(keys)
    noise = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1), (length,), jnp.float32))(keys)
    return mask_from_counts(noise, training_counts(ratios, length, method)), ratios
