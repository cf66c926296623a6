"""Learning-rate schedules and the linear lr scaling rule, as the official recipes define them.

Pure functions of the step: the trainer and the evaluators (probes, fine-tuning) share them.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax.numpy as jnp


def peak_lr(base_lr: float, global_batch: int, denominator: int | None = 256) -> float:
    """The linear scaling rule ``lr = base_lr * global_batch / denominator`` (MAE: 256).

    ``denominator`` None or 0 means no scaling: BERT-family recipes state the absolute lr.
    """
    if not denominator:
        return float(base_lr)
    return base_lr * global_batch / denominator


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> Callable:
    """MAE's ``util/lr_sched.py`` per step: linear warmup from 0, then a half-cycle cosine to min_lr.

    Step ``s`` uses the lr of fractional epoch ``s / steps_per_epoch``, which in steps is
    ``peak * s / warmup`` during warmup and
    ``min + (peak - min) * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))`` after it.
    """
    warmup_steps = max(int(warmup_steps), 0)
    total_steps = max(int(total_steps), 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / max(warmup_steps, 1)
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        progress = jnp.clip(progress, 0.0, 1.0)
        cos = min_lr + (peak - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, warm, cos)

    return schedule


def warmup_linear(peak: float, warmup_steps: int, total_steps: int, end_lr: float = 0.0,
                  multiply_warmup: bool = False) -> Callable:
    """Linear warmup then linear decay to ``end_lr`` at ``total_steps`` (BERT / ELECTRA).

    BERT's ``optimization.py`` decays ``polynomial_decay(power=1)`` from step 0 and *replaces*
    the lr by ``peak * step / warmup`` during warmup, so after warmup the lr is
    ``end + (peak - end) * (1 - step / total)``. ELECTRA *multiplies* the decayed lr by
    ``min(1, step / warmup)`` (``multiply_warmup=True``). Both equal the decayed value after warmup.
    """
    warmup_steps = max(int(warmup_steps), 0)
    total_steps = max(int(total_steps), 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        frac = jnp.clip(step / total_steps, 0.0, 1.0)
        decayed = end_lr + (peak - end_lr) * (1.0 - frac)
        warm_frac = jnp.minimum(step / max(warmup_steps, 1), 1.0)
        if multiply_warmup:
            return decayed * jnp.where(step < warmup_steps, warm_frac, 1.0)
        return jnp.where(step < warmup_steps, peak * warm_frac, decayed)

    return schedule


def warmup_multistep(peak: float, warmup_steps: int, total_steps: int, milestones=(), gamma: float = 0.1) -> Callable:
    """Linear warm-up from 0, then ``peak * gamma ** (number of milestones passed)`` (SimMIM's multistep).

    ``milestones``: fractions of the run (SimMIM ViT-B 800 ep: ``(0.875,)``, the x0.1 at epoch
    700); step ``s`` has passed milestone ``m`` when ``s >= round(m * total_steps)``. With no
    milestones it is a warm-up then a constant lr (MDLM's ``constant`` schedule).
    """
    warmup_steps = max(int(warmup_steps), 0)
    bounds = [int(round(float(m) * max(int(total_steps), 1))) for m in milestones]

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        passed = sum((step >= b).astype(jnp.float32) for b in bounds) if bounds else 0.0
        flat = peak * jnp.power(jnp.float32(gamma), passed)
        return jnp.where(step < warmup_steps, peak * step / max(warmup_steps, 1), flat)

    return schedule


SCHEDULES = ("cosine", "linear", "linear_electra", "multistep", "constant")


def make_schedule(optim: Any, peak: float, warmup_steps: int, total_steps: int) -> Callable:
    """The lr schedule named by ``optim.schedule`` (default ``"cosine"``: MAE's warmup + cosine)."""
    kind = optim.get("schedule", "cosine")
    if kind == "cosine":
        return warmup_cosine(peak, warmup_steps, total_steps, optim.get("min_lr", 0.0))
    if kind in ("linear", "linear_electra"):
        return warmup_linear(peak, warmup_steps, total_steps, optim.get("min_lr", 0.0),
                             multiply_warmup=kind == "linear_electra")
    if kind == "multistep":
        return warmup_multistep(peak, warmup_steps, total_steps, tuple(optim.get("milestones", ()) or ()),
                                optim.get("gamma", 0.1))
    if kind == "constant":
        return warmup_multistep(peak, warmup_steps, total_steps)
    raise ValueError(f"unknown optim.schedule {kind!r}; known: {SCHEDULES}")
