"""Scanned transformer layers: one stacked block applied with ``nnx.scan`` (``config.model.scan_layers``).

A deep model's unrolled block loop makes XLA compile every block separately; with the blocks'
parameters stacked along a leading "layers" axis and one block body inside a ``scan``, the
compiled program holds a single block, which cuts compile time for deep models (the step does
the same arithmetic). The parameter tree changes from ``blocks/{0..N-1}/...`` to ``blocks/...``
with a leading axis of size N; :func:`stack_layers` / :func:`unstack_layers` convert between
the two layouts (e.g. to load unscanned weights into a scanned model).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models.remat import remat_block

LAYERS_AXIS = "layers"
BLOCK_LISTS = ("blocks", "decoder_blocks", "layers")  # the attribute names that hold block stacks (backbone.py)


def stacked_blocks(make_block: Callable[[nnx.Rngs], nnx.Module], depth: int, rngs: nnx.Rngs) -> nnx.Module:
    """``depth`` blocks built by ``nnx.vmap`` as one module whose variables have a leading layer axis.

    Each variable's ``logical_axes`` metadata gains a leading :data:`LAYERS_AXIS` (a sharding rule
    maps it to no mesh axis), so the stacked parameters shard like their unstacked blocks.
    """
    if depth < 1:
        raise ValueError(f"scan_layers needs at least one block, got depth {depth}")
    keys = jax.random.split(rngs.params(), depth)
    blocks = nnx.vmap(lambda key: make_block(nnx.Rngs(params=key)), in_axes=0, out_axes=0)(keys)
    for _, node in nnx.iter_graph(blocks):
        if isinstance(node, nnx.Variable):
            axes = node.get_metadata().get("logical_axes")
            inner = tuple(axes) if axes else (None,) * (node[...].ndim - 1)
            node.set_metadata(logical_axes=(LAYERS_AXIS,) + inner)
    return blocks


def scan_blocks(blocks: nnx.Module, x: jax.Array, remat: str = "none", keys: jax.Array | None = None,
                *args: Any) -> jax.Array:
    """Applies stacked ``blocks`` in order with ``nnx.scan``: ``x = block_i(x, *args[, keys[i]])``.

    ``args`` are passed unchanged to every block; ``keys`` (one per layer, or None) is scanned
    over; ``remat`` is a policy name of :mod:`maskjax.models.remat` applied to the block body.
    Models reach it through :func:`maskjax.models.backbone.apply_blocks`.
    """
    if keys is None:
        body = remat_block(remat, lambda blk, y: blk(y, *args))
        return nnx.scan(body, in_axes=(0, nnx.Carry), out_axes=nnx.Carry)(blocks, x)
    body = remat_block(remat, lambda blk, y, k: blk(y, *args, k))
    return nnx.scan(body, in_axes=(0, nnx.Carry, 0), out_axes=nnx.Carry)(blocks, x, keys)


def _is_layer_list(node: Any) -> bool:
    return isinstance(node, dict) and bool(node) and all(str(k).isdigit() for k in node)


def _map_block_stacks(tree: Any, names: tuple, is_target: Callable[[Any], bool],
                      convert: Callable[[dict], dict]) -> Any:
    """``tree`` with every entry called one of ``names`` (at any depth) that ``is_target`` replaced by ``convert``."""
    if not isinstance(tree, dict):
        return tree
    return {key: convert(value) if key in names and is_target(value)
            else _map_block_stacks(value, names, is_target, convert)
            for key, value in tree.items()}


def _is_stacked(node: Any) -> bool:
    return isinstance(node, dict) and bool(node) and not _is_layer_list(node)


def stack_layers(tree: Any, names: Iterable[str] = BLOCK_LISTS) -> Any:
    """Pure-dict tree with ``name/{0..N-1}/...`` -> ``name/...`` stacked along a new leading axis.

    Applies to every dict entry called one of ``names`` anywhere in ``tree`` (e.g. ``params`` and
    ``params["encoder"]``); other entries are returned unchanged.
    """
    def stack(layers: dict) -> dict:
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[str(i)] for i in range(len(layers))])

    return _map_block_stacks(tree, tuple(names), _is_layer_list, stack)


def unstack_layers(tree: Any, names: Iterable[str] = BLOCK_LISTS) -> Any:
    """Inverse of :func:`stack_layers`: ``name/...`` with a leading axis N -> ``name/{0..N-1}/...``."""
    def unstack(stacked: dict) -> dict:
        depth = jax.tree.leaves(stacked)[0].shape[0]
        return {str(i): jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(depth)}

    return _map_block_stacks(tree, tuple(names), _is_stacked, unstack)


def is_scanned(tree: Any, names: Iterable[str] = BLOCK_LISTS) -> bool:
    """True when some ``names`` entry of the pure-dict ``tree`` holds stacked (scanned) layers."""
    names = tuple(names)
    if not isinstance(tree, dict):
        return False
    for key, value in tree.items():
        if key in names and _is_stacked(value):
            return True
        if is_scanned(value, names):
            return True
    return False
