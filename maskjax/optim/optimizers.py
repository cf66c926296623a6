"""Optimisers (optax) as the official recipes define them: AdamW, BERT's AdamW, LAMB, SGD."""

from __future__ import annotations

import functools

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScaleByAdamNoBiasCorrectionState(NamedTuple):
    """First and second moment estimates (no step count: there is no bias correction)."""

    mu: Any
    nu: Any


def scale_by_adam_no_bias_correction(b1: float = 0.9, b2: float = 0.999,
                                     eps: float = 1e-6) -> optax.GradientTransformation:
    """BERT's ``AdamWeightDecayOptimizer`` moments: ``m / (sqrt(v) + eps)`` without bias correction.

    google-research/bert ``optimization.py`` (also ELECTRA's): ``m = b1 m + (1-b1) g``,
    ``v = b2 v + (1-b2) g^2``, update ``m / (sqrt(v) + eps)``. optax's ``scale_by_adam`` always
    corrects the bias, which changes the first ~1/(1-b2) steps, so the recipe needs its own.
    """

    def init(params):
        zeros = lambda p: jnp.zeros_like(p, jnp.float32)  # noqa: E731
        return ScaleByAdamNoBiasCorrectionState(jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        out = jax.tree.map(lambda m, v, g: (m / (jnp.sqrt(v) + eps)).astype(g.dtype), mu, nu, updates)
        return out, ScaleByAdamNoBiasCorrectionState(mu, nu)

    return optax.GradientTransformation(init, update)


OPTIMIZERS = ("adamw", "lamb", "sgd")


def _leaf_name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def mae_decay_mask(params: Any, skip: frozenset = frozenset()) -> Any:
    """timm 0.3.2 ``add_weight_decay`` as MAE pre-training calls it (``skip``: its skip list).

    The same group as BERT's ``exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"]``:
    LayerNorm parameters are 1-D and every bias is named ``bias``, while embeddings are decayed.

    No decay for parameters with ndim <= 1 or named ``bias``; everything else, including the
    (1, 1, D) cls and mask tokens, is decayed. Fixed position embeddings are buffers, not
    parameters, so they never reach the optimiser. ``skip``: parameter names exempt as well
    (``optim.no_weight_decay_names``, e.g. ``("pos_embed", "cls_token")`` for recipes whose model
    declares them in ``no_weight_decay()``: SimMIM, MFM, ColorMAE).
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, p: bool(p.ndim > 1 and _leaf_name(path) != "bias" and _leaf_name(path) not in skip), params)


def make_optimizer(optim: Any, schedule: Callable) -> optax.GradientTransformation:
    """Builds the optimiser named by ``optim.name`` with ``schedule`` as its learning rate."""
    name = optim.name
    eps = optim.get("eps", 1e-8)
    skip = frozenset(optim.get("no_weight_decay_names", ()) or ())
    decay_mask = functools.partial(mae_decay_mask, skip=skip)
    if name == "adamw" and not optim.get("bias_correction", True):
        # BERT/ELECTRA: decoupled decay added to the Adam direction, then scaled by the lr.
        tx = optax.chain(scale_by_adam_no_bias_correction(optim.b1, optim.b2, eps),
                         optax.add_decayed_weights(optim.weight_decay, decay_mask),
                         optax.scale_by_learning_rate(schedule))
    elif name == "adamw":
        tx = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=eps,
                         weight_decay=optim.weight_decay, mask=decay_mask)
    elif name == "lamb":
        # Large-batch BERT (You et al. 2020); the same no-decay group as AdamW.
        tx = optax.lamb(schedule, b1=optim.b1, b2=optim.b2, eps=eps,
                        weight_decay=optim.weight_decay, mask=decay_mask)
    elif name == "sgd":
        tx = optax.sgd(schedule, momentum=optim.get("momentum", 0.9))
    else:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    clip = optim.get("grad_clip", None)
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx
