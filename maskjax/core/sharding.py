"""Shardings of the train state: parameters from their logical axes, optimizer state alike.

The mesh, the rules and the batch sharding live in :mod:`maskjax.core.mesh` (evaluators use them
too); they are re-exported here so existing imports keep working.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maskjax.core.mesh import (  # noqa: F401 - re-exported
    BATCH_AXES,
    DEFAULT_RULES,
    MESH_AXES,
    batch_divisor,
    batch_sharding,
    logical_to_spec,
    make_mesh,
    normalize_rules,
    resolve_mesh_shape,
)


def _path_key(path) -> tuple[str, ...]:
    out = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                out.append(str(getattr(entry, attr)))
                break
        else:
            out.append(str(entry))
    return tuple(out)


def tree_shardings_like(tree: Any, reference: Mapping[tuple[str, ...], NamedSharding], mesh: Mesh) -> Any:
    """Shardings for a tree whose leaves mirror parameters somewhere in their path (optimizer state).

    A leaf whose key path ends with a parameter's path and has that parameter's shape gets the
    parameter's sharding (Adam's mu/nu); everything else (step counters) is replicated.
    """
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        key = _path_key(path)
        for start in range(len(key)):
            hit = reference.get(key[start:])
            if hit is not None and hit[1] == tuple(leaf.shape):
                return hit[0]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def flat_reference(tree: Any, shardings: Any) -> dict[tuple[str, ...], tuple[NamedSharding, tuple]]:
    """{key path: (sharding, shape)} of a parameter tree, for :func:`tree_shardings_like`."""
    ref = {}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    shard_leaves = jax.tree.leaves(shardings)
    for (path, leaf), sharding in zip(leaves, shard_leaves):
        ref[_path_key(path)] = (sharding, tuple(leaf.shape))
    return ref
