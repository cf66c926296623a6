"""Device mesh and the logical-axis -> mesh-axis rules that shard parameters and batches.

Below ``maskjax.train`` and ``maskjax.eval``: the trainer shards its state with these rules and
the evaluators shard their input batches over the same mesh (``maskjax.core.sharding``
re-exports everything here).

Every parameter carries logical axis names (``logical_axes`` metadata, e.g. ("embed", "mlp")).
The config's rules map each logical name onto mesh axes; FSDP is the default (``embed`` on
``fsdp``, ``mlp``/``heads`` on ``tensor``, the batch on ``data`` x ``fsdp``). A dimension that a
rule's mesh axes do not divide stays replicated, so tiny test models and odd widths still run
on any mesh rather than failing inside XLA.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("patch", None),
    ("vocab", "tensor"),
    ("layers", None),  # the stacked-blocks axis of scanned layers (model.scan_layers): never sharded
)


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolves a {data, fsdp, tensor} shape where at most one entry is -1 (fill the rest).

    Raises a clear ValueError when the product does not match the number of devices.
    """
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: axis sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices: "
                f"{num_devices} is not divisible by the fixed axes' product {known}")
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but "
            f"{num_devices} are available; make data*fsdp*tensor equal the device count "
            f"(or set one axis to -1)")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(shape: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh with Auto axis types over ``devices`` (default: all)."""
    devices = list(jax.devices()) if devices is None else list(devices)
    sizes = resolve_mesh_shape(shape, len(devices))
    if len(devices) == len(jax.devices()):
        # jax.make_mesh picks a topology-aware device order on TPUs/GPUs.
        return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def normalize_rules(rules: Iterable[Sequence[Any]] | None) -> dict[str, tuple[str, ...]]:
    """Turns [(logical, mesh_axes | None), ...] into {logical: tuple of mesh axes}."""
    out: dict[str, tuple[str, ...]] = {}
    for item in rules if rules is not None else DEFAULT_RULES:
        name, axes = item
        if axes is None:
            out[name] = ()
        elif isinstance(axes, str):
            out[name] = (axes,)
        else:
            out[name] = tuple(axes)
        for axis in out[name]:
            if axis not in MESH_AXES:
                raise ValueError(f"sharding rule {name!r} -> {axes!r}: unknown mesh axis {axis!r}; "
                                 f"mesh axes are {MESH_AXES}")
    return out


def logical_to_spec(logical_axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, tuple[str, ...]]) -> P:
    """PartitionSpec for one array: each dim gets its rule's mesh axes if they divide it evenly.

    Mesh axes of size 1 are dropped and a mesh axis is used at most once per array.
    """
    if not logical_axes:
        return P()
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        axes = tuple(a for a in rules.get(name, ()) if mesh.shape[a] > 1 and a not in used) if name else ()
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % size == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def batch_sharding(mesh: Mesh, rules: Mapping[str, tuple[str, ...]] | None = None) -> NamedSharding:
    """Sharding of a batch: the leading axis over the 'batch' rule's mesh axes."""
    rules = rules if rules is not None else normalize_rules(None)
    axes = tuple(a for a in rules.get("batch", BATCH_AXES) if mesh.shape[a] > 1)
    return NamedSharding(mesh, P(axes if axes else None))


def batch_divisor(mesh: Mesh, rules: Mapping[str, tuple[str, ...]] | None = None) -> int:
    """How many ways the batch axis is split (the data-parallel size)."""
    rules = rules if rules is not None else normalize_rules(None)
    return math.prod(mesh.shape[a] for a in rules.get("batch", BATCH_AXES))
