"""Train state: created abstractly, then materialised already sharded by a jitted init.

The state is a plain pytree ``{"step", "params", "opt_state", "extra"}`` whose params and
non-trainable variables are pure dicts with string keys (``nnx.List`` indices become "0", "1",
... so Orbax round trips are exact). The NNX model is rebuilt inside jitted code with
:meth:`ModelTemplate.merge`; the graph definition stays static.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maskjax.core.templates import ModelTemplate
from maskjax.core.trees import to_tree  # noqa: F401 - also importable from here
from maskjax.core.sharding import flat_reference, logical_to_spec, tree_shardings_like


def _shardings_for(tree: dict, flat_axes: dict, mesh: Mesh, rules) -> dict:
    def pick(path, leaf):
        key = tuple(str(getattr(p, "key", p)) for p in path)
        return NamedSharding(mesh, logical_to_spec(flat_axes.get(key), leaf.shape, mesh, rules))

    return jax.tree_util.tree_map_with_path(pick, tree)


def make_init_fn(template: ModelTemplate, build: Callable[[nnx.Rngs], nnx.Module], tx) -> Callable:
    """Returns ``init(key) -> state``: builds the model from ``key`` and the optimiser state."""

    def init(key):
        model = build(nnx.Rngs(params=key))
        _, params, extra = nnx.split(model, nnx.Param, ...)
        params, extra = to_tree(params), to_tree(extra)
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": tx.init(params), "extra": extra}

    return init


def state_shardings(template: ModelTemplate, abstract_state: dict, mesh: Mesh, rules) -> dict:
    """NamedShardings for every leaf of the train state, from the parameters' logical axes."""
    axes = template.logical_axes()
    params = _shardings_for(abstract_state["params"], axes["params"], mesh, rules)
    extra = _shardings_for(abstract_state["extra"], axes["extra"], mesh, rules)
    ref = flat_reference(abstract_state["params"], params)
    opt = tree_shardings_like(abstract_state["opt_state"], ref, mesh)
    return {"step": NamedSharding(mesh, P()), "params": params, "opt_state": opt, "extra": extra}


def create_state(template: ModelTemplate, build, tx, mesh: Mesh, rules, key) -> tuple[dict, dict]:
    """Creates the train state directly in its sharded layout; returns (state, shardings).

    ``jax.eval_shape`` gives the structure, then one jitted init with ``out_shardings`` writes
    every shard on its own device: no full copy of the model ever sits on one device.
    """
    init = make_init_fn(template, build, tx)
    abstract = jax.eval_shape(init, key)
    shardings = state_shardings(template, abstract, mesh, rules)
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)(key)
    return state, shardings


def abstract_state(template: ModelTemplate, build, tx, mesh: Mesh, rules, key) -> tuple[dict, dict]:
    """Abstract train state (ShapeDtypeStructs with concrete shardings) and its shardings.

    This is the restore target for Orbax: it restores onto the current mesh, whatever mesh or
    device count the checkpoint was written with.
    """
    abstract = jax.eval_shape(make_init_fn(template, build, tx), key)
    shardings = state_shardings(template, abstract, mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return target, shardings
