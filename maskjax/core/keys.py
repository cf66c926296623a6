"""Per-example PRNG keys: the contract that makes masks independent of batching and resumption.

Below ``maskjax.train`` and ``maskjax.eval``: the train step draws its masks with these keys and
the held-out evaluators draw theirs the same way (``maskjax.train.step`` re-exports it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def example_keys(base_key: jax.Array, step: jax.Array, global_batch: int) -> jax.Array:
    """Per-example keys ``fold_in(fold_in(base, step), i)`` for i in [0, global_batch).

    Folding the step number in makes a resumed run draw exactly the masks of an uninterrupted
    one; folding the example index in makes them independent of micro-batching and sharding.
    """
    step_key = jax.random.fold_in(base_key, step)
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(global_batch))
