"""LARS as MAE's linear probe uses it (facebookresearch/mae ``util/lars.py``)."""

from __future__ import annotations

import jax
import optax


def lars(learning_rate, *, momentum: float = 0.9, trust_coefficient: float = 0.001,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
    """MAE's ``util/lars.py`` LARS as an optax chain.

    Order as the official code: decay and trust-ratio scaling on >1-D parameters, momentum
    accumulated on the scaled gradient, then the learning rate (optax.lars applies the lr
    before the momentum, which differs while the lr changes).
    """
    mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    return optax.chain(
        optax.masked(optax.add_decayed_weights(weight_decay), mask),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient), mask),
        optax.trace(decay=momentum),
        optax.scale_by_learning_rate(learning_rate),
    )
