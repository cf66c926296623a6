"""Evaluators looked up by name from ``config.evals``; run periodically and after training.

``config.evals`` maps a name to a ConfigDict with ``type`` (a registered evaluator),
``every_steps`` (0: only after training) and the evaluator's own options. An evaluator is
``fn(model, options, context) -> dict of metrics``; the trainer and ``maskjax eval`` call
:func:`run_evaluators` and never branch on evaluator names.

The model an evaluator receives holds the train state's own arrays, sharded over
``context.mesh`` (never gathered to a host); evaluators run their per-example functions as
sharded jits (:mod:`maskjax.eval.features`). Evaluator modules register themselves when imported;
:func:`known_evaluators` finds them with :func:`maskjax.plugins.discover` (every module of this
package, plus the ``maskjax.evaluators`` entry points), so this module imports none of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax

_EVALUATORS: dict[str, Callable] = {}
# Modules of maskjax.eval that define no evaluator (commands, figures and shared helpers).
_NOT_EVALUATORS = ("cli", "plots", "registry")


@dataclasses.dataclass
class EvalContext:
    """What evaluators may use besides the model."""

    config: Any
    workdir: str
    step: int
    method: Any
    train_source: Any
    eval_source: Any
    final: bool = False
    # The mesh the model's arrays live on and the logical-axis rules (maskjax.core.mesh.normalize_rules):
    # evaluators shard their input batches with them. None: one device, unsharded.
    mesh: Any = None
    rules: Any = None


def register(name: str):
    """Decorator registering an evaluator function under ``name``."""

    def wrap(fn):
        _EVALUATORS[name] = fn
        return fn

    return wrap


def known_evaluators() -> list[str]:
    """Names of the registered evaluators."""
    # Importing the modules registers the built-in evaluators (and plugins' ones); helper modules
    # that register nothing are skipped so a lookup imports no more than it needs.
    from maskjax import plugins

    plugins.discover("maskjax.eval", plugins.EVALUATORS, skip=_NOT_EVALUATORS)
    return sorted(_EVALUATORS)


def due(config, step: int, final: bool) -> list[str]:
    """Names of the evaluators that run at ``step`` (all of them when ``final``)."""
    names = []
    for name, options in config.get("evals", {}).items():
        every = options.get("every_steps", 0)
        if (final and options.get("after_training", True)) or (not final and every and step % every == 0):
            names.append(name)
    return names


def run_evaluators(model, context: EvalContext, names: list[str]) -> dict[str, float]:
    """Runs the named evaluators; returns ``{"eval/<name>/<metric>": value}``."""
    known_evaluators()
    out: dict[str, float] = {}
    for name in names:
        options = context.config.evals[name]
        if options.type not in _EVALUATORS:
            raise ValueError(f"evals.{name}: unknown evaluator type {options.type!r}; known: {sorted(_EVALUATORS)}")
        metrics = _EVALUATORS[options.type](model, options, context)
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                out[f"eval/{name}/{key}"] = float(value)
    if out and jax.process_index() == 0:
        with open(os.path.join(context.workdir, "eval_results.jsonl"), "a") as f:
            f.write(json.dumps({"step": context.step, **out}) + "\n")
    return out
