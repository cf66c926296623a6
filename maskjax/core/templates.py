"""The static half of an NNX model (graph definition, abstract parameters and buffers) and the
way back from pure-dict variables to a module.

Below ``maskjax.train``, ``maskjax.eval`` and ``maskjax.convert``: the trainer rebuilds its model
from the train state with it, the converters build and fill models with it, and neither may import
the other's internals (pyproject.toml, ``[tool.importlinter]``). ``maskjax.core.state``
re-exports it.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import jax
from flax import nnx


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
