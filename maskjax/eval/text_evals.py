"""Evaluators for masked language models: held-out masked-token accuracy and perplexity.

The ``mlm`` evaluator corrupts held-out blocks with a fixed rate (``masking.eval_ratio``,
15 % by default) of [MASK]-only BERT masking drawn from a fixed seed, so every checkpoint and
every training recipe (15 % or 40 %, 80/10/10 or all-[MASK]) is scored on the same task. The
method supplies ``eval_stats(model, batch, keys, {"rate": rate})`` (sums), so BERT scores its MLM head
and ELECTRA its generator.
"""

from __future__ import annotations

import contextlib
import math

import jax

from maskjax.eval.features import global_batch, say
from maskjax.eval.registry import register
from maskjax.core.keys import example_keys
from maskjax.core.mesh import batch_divisor, batch_sharding
from maskjax.progress import progress


def heldout_mlm(method, model, source, *, rate: float, batch_size: int = 32, max_batches: int | None = None,
                seed: int = 0, mesh=None, rules=None) -> dict:
    """Masked-token ``accuracy``, ``loss`` (mean NLL) and ``perplexity`` over ``source`` blocks.

    Every process reads the same blocks in the same order (the result does not depend on the
    process count); the last partial batch is dropped. With a ``mesh`` each batch is sharded
    over its batch axes (when they divide the batch) and the model keeps its own sharding;
    only the summed statistics come back.
    """
    from maskjax.data.text import make_text_pipeline

    if len(source) < batch_size:
        batch_size = len(source)
    if batch_size < 1:
        raise ValueError("the held-out text source is empty")
    stats = jax.jit(lambda m, b, k: method.eval_stats(m, b, k, {"rate": rate}))
    base = jax.random.key(seed)
    totals = {"nll_sum": 0.0, "correct": 0.0, "count": 0.0}
    batches = make_text_pipeline(source, global_batch=batch_size, train=False, seed=seed,
                                 process_index=0, process_count=1)
    sharding = None
    if mesh is not None and batch_size % batch_divisor(mesh, rules) == 0:
        sharding = batch_sharding(mesh, rules)
    total = len(source) // batch_size if max_batches is None else min(len(source) // batch_size, max_batches)
    bar = progress(total=total, desc="mlm eval", unit="batch")
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext(), bar:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            # Sums are replicated scalars: readable on every process without a gather.
            out = jax.device_get(stats(model, global_batch(batch, sharding), example_keys(base, i, batch_size)))
            for key in totals:
                totals[key] += float(out[key])
            bar.update(1)  # device_get above already waited for the batch
    count = max(totals["count"], 1.0)
    loss = totals["nll_sum"] / count
    return {"accuracy": totals["correct"] / count, "loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "predictions": totals["count"]}


@register("mlm")
def mlm_evaluator(model, options, ctx) -> dict:
    """Held-out masked-token accuracy / perplexity at ``options.rate`` (default masking.eval_ratio)."""
    rate = float(options.get("rate", ctx.config.get("masking", {}).get("eval_ratio", 0.15)))
    out = heldout_mlm(ctx.method, model, ctx.eval_source, rate=rate, batch_size=options.get("batch_size", 32),
                      max_batches=options.get("batches", None), seed=options.get("seed", 0), mesh=ctx.mesh,
                      rules=ctx.rules)
    say(f"mlm eval @ {rate:.0%} masking: accuracy {out['accuracy']:.2%}, perplexity {out['perplexity']:.1f} "
        f"({int(out['predictions'])} predictions)")
    return out
