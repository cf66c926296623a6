"""Optimisers and learning-rate schedules (optax), as the official recipes define them."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def peak_lr(base_lr: float, global_batch: int, denominator: int = 256) -> float:
    """The linear scaling rule ``lr = base_lr * global_batch / denominator`` (MAE: 256)."""
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


def _leaf_name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def mae_decay_mask(params: Any) -> Any:
    """timm 0.3.2 ``add_weight_decay`` as MAE pre-training calls it (empty skip list).

    No decay for parameters with ndim <= 1 or named ``bias``; everything else, including the
    (1, 1, D) cls and mask tokens, is decayed. Fixed position embeddings are buffers, not
    parameters, so they never reach the optimiser.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, p: bool(p.ndim > 1 and _leaf_name(path) != "bias"), params)


def make_optimizer(optim: Any, schedule: Callable) -> optax.GradientTransformation:
    """Builds the optimiser named by ``optim.name`` with ``schedule`` as its learning rate."""
    name = optim.name
    if name == "adamw":
        tx = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.get("eps", 1e-8),
                         weight_decay=optim.weight_decay, mask=mae_decay_mask)
    elif name == "sgd":
        tx = optax.sgd(schedule, momentum=optim.get("momentum", 0.9))
    else:
        raise ValueError(f"unknown optimizer {name!r}; known: adamw, sgd")
    clip = optim.get("grad_clip", None)
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx
