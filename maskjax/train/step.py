"""The jitted train step: per-example keys, gradient accumulation, optimiser update."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from maskjax.core.keys import example_keys
from maskjax.core.state import ModelTemplate

# The metrics key under which a method's loss may return non-gradient batch statistics (e.g. an EMA
# codebook's counts): averaged over micro-batches like any metric, never logged, passed to after_step.
BATCH_STATS = "batch_stats"


def split_micro(tree: Any, accum: int) -> Any:
    """[B, ...] -> [accum, B/accum, ...] with micro-batch i = rows i, i+accum, i+2*accum, ...

    The strided split keeps every micro-batch spread evenly over the devices that hold the
    batch, so no data moves between devices.
    """
    def split(x):
        return x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, tree)


def make_loss_and_grad(method, template: ModelTemplate, accum: int, micro_sharding=None) -> Callable:
    """``(params, extra, batch, keys, step) -> ((loss, metrics), grads)`` averaged over micro-batches.

    ``step`` (the optimiser step, traced) reaches ``method.loss`` for schedules inside the loss,
    such as a masking rate that decays over training.
    """

    def loss_fn(params, extra, batch, keys, step=None):
        model = template.merge(params, extra)
        return method.loss(model, batch, keys, True, step=step)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
        return grad_fn

    def accumulated(params, extra, batch, keys, step=None):
        micro = split_micro({"batch": batch, "keys": keys}, accum)
        if micro_sharding is not None:
            micro = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, micro_sharding), micro)
        zeros = jax.tree.map(jnp.zeros_like, params)

        def body(carry, mb):
            grads_sum, loss_sum, metrics_sum = carry
            (loss, metrics), grads = grad_fn(params, extra, mb["batch"], mb["keys"], step)
            grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
            metrics_sum = jax.tree.map(jnp.add, metrics_sum, metrics)
            return (grads_sum, loss_sum + loss, metrics_sum), None

        first = jax.tree.map(lambda x: x[0], micro)
        metrics_shape = jax.eval_shape(lambda: grad_fn(params, extra, first["batch"], first["keys"], step)[0][1])
        init_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)
        (grads, loss, metrics), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), init_metrics), micro)
        scale = 1.0 / accum
        return (loss * scale, jax.tree.map(lambda m: m * scale, metrics)), jax.tree.map(lambda g: g * scale, grads)

    return accumulated


def make_train_step(method, template: ModelTemplate, tx: optax.GradientTransformation, schedule: Callable,
                    *, base_key: jax.Array, global_batch: int, accum: int, state_shardings: Any,
                    batch_sharding: NamedSharding) -> Callable:
    """Returns the jitted ``step(state, batch) -> (state, metrics)`` with the state donated."""
    if global_batch % accum:
        raise ValueError(f"global batch {global_batch} is not divisible by grad_accum {accum}")
    micro_sharding = NamedSharding(batch_sharding.mesh, P(None, *batch_sharding.spec))
    loss_and_grad = make_loss_and_grad(method, template, accum, micro_sharding)

    def step(state, batch):
        keys = example_keys(base_key, state["step"], global_batch)
        keys = jax.lax.with_sharding_constraint(keys, batch_sharding)
        (loss, metrics), grads = loss_and_grad(state["params"], state["extra"], batch, keys, state["step"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(metrics)
        batch_stats = metrics.pop(BATCH_STATS, None)
        # param_norm is of the *updated* params: with loss and grad_norm it lets the loop refuse
        # to checkpoint a state that went NaN/inf (one cheap reduction, fused with the update).
        metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state["step"]),
                       param_norm=optax.tree.norm(params))
        # Non-gradient state (an EMA teacher, ...) follows the updated params: the method's hook.
        if batch_stats is None:
            extra = method.after_step(params, state["extra"], state["step"] + 1)
        else:
            extra = method.after_step(params, state["extra"], state["step"] + 1, batch_stats=batch_stats)
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "extra": extra}
        return new_state, metrics

    replicated = NamedSharding(batch_sharding.mesh, P())
    return jax.jit(step, donate_argnums=(0,), in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated))
