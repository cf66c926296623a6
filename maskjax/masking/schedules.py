"""Masking-rate schedules: p(step) as pure jnp functions, traceable inside the train step.

Follows "Dynamic Masking Rate Schedules for MLM Pretraining" (Ankner et al., EACL 2024; spec 5):
the best schedule decreases the rate linearly from 0.30 to 0.15 over training,
``p(t) = p_init + (p_final - p_init) * t / T``. The authors' Composer ``MLMRateSetter`` offers
constant, linear, cosine and step schedulers (``StepScheduler``: 0.30 -> 0.15 at half of
training). The returned rate is a float32 scalar meant for the ``rate`` argument of
``maskjax.masking.text`` / ``maskjax.masking.spans``, which accept a traced rate.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

SCHEDULES = ("constant", "linear", "cosine", "step")


def _check_rate(name: str, value) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:  # also rejects NaN
        raise ValueError(f"{name} masking rate must be in (0, 1), got {value}")
    return value


def mask_rate_schedule(kind: str, initial: float, final: float | None = None,
                       total_steps: int | None = None, *, at: float = 0.5
                       ) -> Callable[[jax.Array | int], jax.Array]:
    """Returns ``schedule(step) -> rate`` (float32 scalar), pure jnp and jit-able.

    Kinds (t = step clipped to [0, T], T = ``total_steps``):
      * ``"constant"``: ``initial`` (``final`` must be None or equal).
      * ``"linear"``: ``initial + (final - initial) * t / T`` (Ankner et al.: 0.30 -> 0.15).
      * ``"cosine"``: ``final + (initial - final) * (1 + cos(pi * t / T)) / 2``.
      * ``"step"``: ``initial`` while ``step < at * T``, then ``final`` (``at`` = 0.5 as the
        authors' ``StepScheduler`` default).

    Raises:
      ValueError: unknown kind, a rate outside (0, 1), a missing ``final``/``total_steps``, a
        non-positive ``total_steps`` or ``at`` outside (0, 1).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown masking-rate schedule {kind!r}; expected one of {SCHEDULES}")
    initial = _check_rate("initial", initial)
    if kind == "constant":
        if final is not None and _check_rate("final", final) != initial:
            raise ValueError(f"a constant schedule takes no different final rate, got {final}")
        return lambda step: jnp.full((), initial, jnp.float32)
    if final is None:
        raise ValueError(f"the {kind!r} schedule needs a final rate")
    final = _check_rate("final", final)
    if (total_steps is None or isinstance(total_steps, bool)
            or not isinstance(total_steps, int) or total_steps < 1):
        raise ValueError(f"the {kind!r} schedule needs total_steps >= 1, got {total_steps!r}")
    if not 0.0 < at < 1.0:
        raise ValueError(f"at (fraction of training where the step schedule switches) must be in "
                         f"(0, 1), got {at}")

    def fraction(step):
        t = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, float(total_steps))
        return t / total_steps

    if kind == "linear":
        return lambda step: jnp.float32(initial) + jnp.float32(final - initial) * fraction(step)
    if kind == "cosine":
        return lambda step: jnp.float32(final) + jnp.float32(initial - final) * 0.5 * (
            1.0 + jnp.cos(math.pi * fraction(step)))
    switch = at * total_steps
    return lambda step: jnp.where(jnp.asarray(step) < switch, jnp.float32(initial),
                                  jnp.float32(final))
