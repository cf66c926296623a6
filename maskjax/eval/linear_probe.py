"""A simple, correct linear probe of a frozen encoder's cls feature.

Features are standardised with the training set's mean and variance (a BatchNorm without
affine parameters in its inference form, as MAE's probe head), then a softmax linear
classifier is fitted by full-batch Adam. The paper protocol (LARS, augmentation, schedules)
belongs to the evaluation suite; this is the quick check the quick start prints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     num_classes: int, *, steps: int = 500, lr: float = 0.01,
                     weight_decay: float = 1e-4, seed: int = 0) -> dict[str, float]:
    """Fits softmax regression on standardised features; returns train and test top-1 accuracy."""
    mean = train_x.mean(0, keepdims=True)
    std = np.sqrt(train_x.var(0, keepdims=True) + 1e-6)
    xtr = jnp.asarray((train_x - mean) / std)
    xte = jnp.asarray((test_x - mean) / std)
    ytr = jnp.asarray(train_y)
    dim = xtr.shape[1]
    params = {"w": 0.01 * jax.random.truncated_normal(jax.random.key(seed), -2, 2, (dim, num_classes)),
              "b": jnp.zeros((num_classes,))}
    tx = optax.adamw(lr, weight_decay=weight_decay)

    def loss_fn(p):
        logits = xtr @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, ytr).mean()

    @jax.jit
    def fit(p):
        def body(carry, _):
            p, s = carry
            g = jax.grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
        return p

    params = fit(params)
    accuracy = lambda x, y: float(np.mean(np.argmax(np.asarray(x @ params["w"] + params["b"]), -1) == y))
    return {"train_accuracy": accuracy(xtr, train_y), "test_accuracy": accuracy(xte, test_y)}
