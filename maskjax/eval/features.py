"""Evaluation on the mesh: sharded, jitted per-example functions and the helpers every evaluator shares.

Evaluators receive the model built from the train state's own (sharded) arrays; nothing gathers
the parameters to a host. What runs on examples (features, logits, statistics) is a ``jax.jit``
whose input batch is sharded over the mesh's batch axes, exactly as the train step's; only the
small per-example outputs (features [N, D], logits [N, C]) come back to the host.

Every process holds the same (small) example arrays (``Modality.take_examples`` of a fixed
subset), so a global batch is assembled from each process's own copy with
``jax.make_array_from_callback``: every device takes its rows, no process needs another's data.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from maskjax.data.modalities import get_modality
from maskjax.core.mesh import batch_divisor, batch_sharding, logical_to_spec
from maskjax.progress import phase, progress, write

# Offset of the random-init baseline's seed: far from the run's own seed stream.
RANDOM_INIT_SEED_OFFSET = 12345


def say(message: str) -> None:
    """Prints ``message`` once (on process 0), without breaking a progress bar on the terminal."""
    if jax.process_index() == 0:
        write(message)


def subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """A fixed random subset (sources are often sorted by class, so never take the first n)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_total)[: min(n, n_total)])


def take(ctx, source, n: int, seed: int) -> tuple[Any, np.ndarray]:
    """``(inputs, labels)`` of a fixed random subset of ``n`` examples of ``source``.

    Read through the method's modality (``Modality.take_examples``, eval preprocessing), so one
    evaluator serves images, video, audio and text.
    """
    idx = subset(len(source), n, seed)
    # Decoding thousands of clips or recordings can take a while: say so if it does.
    with phase(f"reading {len(idx)} examples"):
        return get_modality(ctx.method.modality).take_examples(ctx.config, source, idx)


def num_classes(*label_arrays) -> int:
    """Number of classes seen in integer label arrays (max + 1)."""
    return int(max(int(np.max(y)) for y in label_arrays) + 1)


def source_classes(source, options) -> int:
    """Number of classes: ``options.num_classes`` or the source's ``class_names``."""
    if options.get("num_classes"):
        return int(options.num_classes)
    names = getattr(source, "class_names", None)
    if not names:
        raise ValueError("the data source does not list its classes; set num_classes in the evaluator options")
    return len(names)


# --- running per-example functions on the mesh ------------------------------------------------------

def _multiprocess() -> bool:
    # A function (not an inline test) so tests can exercise the multi-process gather on one process.
    return jax.process_count() > 1


def to_host(x: jax.Array) -> np.ndarray:
    """A global per-example output as a numpy array on every host.

    Only for small outputs (features, logits): with several processes the rows are
    all-gathered, which for parameters would be exactly the full gather evaluation avoids.
    """
    if _multiprocess():
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _num_rows(inputs) -> int:
    return int(jax.tree.leaves(inputs)[0].shape[0])


def global_batch(rows, sharding: NamedSharding | None):
    """``rows`` (numpy, the same on every process) as global arrays sharded by ``sharding``."""
    if sharding is None:
        return jax.tree.map(jnp.asarray, rows)
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), rows)


def batched_apply(fn: Callable, model, inputs, *, mesh=None, rules=None, batch_size: int = 256,
                  desc: str | None = None) -> Any:
    """Runs ``fn(model, batch) -> per-example outputs`` over ``inputs`` in sharded batches.

    ``fn`` must be a jitted function (make it once per evaluator so train, test and baseline
    passes share one program). ``inputs`` is an array or a dict of arrays with the example axis
    first (numpy, identical on every process). With a ``mesh`` each batch is sharded over its
    batch axes (``rules``); the batch size is a multiple of the data-parallel size and the last
    batch is padded to the same size (one program; padding rows are dropped afterwards). The
    outputs (arrays or dicts of arrays with a leading example axis) come back as numpy. With a
    ``desc``, progress is shown under that name (in examples; the first batch includes
    compilation); without, none (callers that call it per batch show their own).
    """
    n = _num_rows(inputs)
    if n == 0:
        raise ValueError("no examples to evaluate")
    sharding = batch_sharding(mesh, rules) if mesh is not None else None
    div = batch_divisor(mesh, rules) if mesh is not None else 1
    size = min(batch_size, n)
    size = int(math.ceil(size / div) * div)
    outs = []
    context = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
    bar = progress(total=n, desc=desc or "", unit="ex", disable=not desc)
    with context, bar:
        for start in range(0, n, size):
            rows = np.arange(start, start + size)
            rows = np.where(rows < n, rows, 0)  # padding repeats example 0; dropped below
            batch = jax.tree.map(lambda x: np.asarray(x)[rows], inputs)
            out = fn(model, global_batch(batch, sharding))
            keep = min(size, n - start)
            outs.append(jax.tree.map(lambda y: to_host(y)[:keep], out))
            bar.update(keep)  # after to_host, which waits for the batch anyway: no extra sync
    return jax.tree.map(lambda *ys: np.concatenate(ys, axis=0), *outs)


def features_fn(method, pool: str | None = None) -> Callable:
    """The jitted ``(model, inputs) -> [B, D]`` of ``method.features`` (``pool`` passed through)."""
    kwargs = {} if pool is None else {"pool": pool}
    return jax.jit(lambda model, x: method.features(model, x, **kwargs))


def method_features(ctx, model, inputs, *, pool: str | None = None, fn: Callable | None = None,
                    batch_size: int = 256, desc: str = "features") -> np.ndarray:
    """Frozen features ``ctx.method.features(model, inputs, pool=pool)`` as float32 numpy [N, D], on the mesh.

    ``desc`` names the progress shown while they are computed.
    """
    fn = fn or features_fn(ctx.method, pool)
    out = batched_apply(fn, model, inputs, mesh=ctx.mesh, rules=ctx.rules, batch_size=batch_size, desc=desc)
    return np.asarray(out, np.float32)


# --- a random-init model, built in the same layout as the trained one -------------------------------

def fresh_model(method, seed: int, mesh=None, rules=None):
    """``method.build`` with params from ``jax.random.key(seed)``, created directly sharded on ``mesh``.

    The baseline of the probes: one jitted init with ``out_shardings`` from the parameters'
    logical axes, so a pod-size model is never materialised on one device. The values equal an
    eager ``method.build(nnx.Rngs(params=key))``.
    """
    key = jax.random.key(seed)
    if mesh is None:
        return method.build(nnx.Rngs(params=key))
    abstract = nnx.eval_shape(lambda: method.build(nnx.Rngs(params=key)))
    graphdef, abstract_state = nnx.split(abstract)
    variables = [var for _, var in nnx.to_flat_state(abstract_state)]
    specs = [NamedSharding(mesh, logical_to_spec(var.get_metadata().get("logical_axes"), var.get_value().shape,
                                                 mesh, rules)) for var in variables]

    def init(k):
        # A list in the flat-state order (not a dict keyed by paths, whose mixed keys may not sort).
        state = nnx.state(method.build(nnx.Rngs(params=k)))
        return [var.get_value() for _, var in nnx.to_flat_state(state)]

    with jax.set_mesh(mesh):
        values = jax.jit(init, out_shardings=specs)(key)
    for var, value in zip(variables, values):
        var.set_value(value)
    return nnx.merge(graphdef, abstract_state)
