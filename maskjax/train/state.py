"""Train state: created abstractly, then materialised already sharded by a jitted init.

The state is a plain pytree ``{"step", "params", "opt_state", "extra"}`` whose params and
non-trainable variables are pure dicts with string keys (``nnx.List`` indices become "0", "1",
... so Orbax round trips are exact). The NNX model is rebuilt inside jitted code with
:meth:`ModelTemplate.merge`; the graph definition stays static.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maskjax.train.sharding import flat_reference, logical_to_spec, tree_shardings_like


def to_tree(state: nnx.State) -> dict:
    """nnx.State -> nested dict of arrays with string keys."""

    def strkeys(node):
        if isinstance(node, dict):
            return {str(k): strkeys(v) for k, v in node.items()}
        return node

    return strkeys(nnx.to_pure_dict(state))


@dataclasses.dataclass
class ModelTemplate:
    """The static half of an NNX model: graph definition plus abstract params and buffers."""

    graphdef: Any
    abstract_params: nnx.State
    abstract_extra: nnx.State

    @classmethod
    def from_builder(cls, build: Callable[[nnx.Rngs], nnx.Module]) -> "ModelTemplate":
        """Traces ``build`` abstractly (no memory, no devices) to get the model's structure."""
        model = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
        graphdef, params, extra = nnx.split(model, nnx.Param, ...)
        return cls(graphdef, params, extra)

    def merge(self, params: dict, extra: dict) -> nnx.Module:
        """Rebuilds the model from pure-dict params and buffers (works on tracers)."""
        p = copy.deepcopy(self.abstract_params)
        e = copy.deepcopy(self.abstract_extra)
        nnx.replace_by_pure_dict(p, params)
        nnx.replace_by_pure_dict(e, extra)
        return nnx.merge(self.graphdef, p, e)

    def logical_axes(self) -> dict:
        """Pure dict (string keys) of each parameter's logical axis names (None = replicated)."""
        def axes(state):
            flat = {}
            for path, var in nnx.to_flat_state(state):
                flat[tuple(str(k) for k in path)] = var.get_metadata().get("logical_axes")
            return flat
        return {"params": axes(self.abstract_params), "extra": axes(self.abstract_extra)}

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(int(x.size) for x in jax.tree.leaves(self.abstract_params))


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
