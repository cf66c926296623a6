"""``maskjax eval`` (evaluators on a checkpoint) and ``maskjax plot`` (training curves)."""

from __future__ import annotations

import argparse
import os
import sys


def load_checkpoint_model(config, workdir: str, step: int | None = None):
    """Restores the model saved in ``workdir`` (newest step by default) onto this machine's devices.

    Returns ``(model, step, method)``. Only the train state is read; the data iterator is not.
    """
    import jax

    from maskjax.methods import make_method
    from maskjax.train.checkpoint import Checkpointer
    from maskjax.train.loop import host_model
    from maskjax.train.optim import make_optimizer, warmup_cosine
    from maskjax.train.sharding import make_mesh, normalize_rules
    from maskjax.train.state import ModelTemplate, abstract_state

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    method = make_method(config)
    template = ModelTemplate.from_builder(method.build)
    # The optimizer only shapes the restore target; its hyper-parameters do not matter here.
    tx = make_optimizer(config.optim, warmup_cosine(0.0, 0, 1))
    mesh = make_mesh(config.mesh)
    target, _ = abstract_state(template, method.build, tx, mesh, normalize_rules(config.sharding_rules),
                               jax.random.key(0))
    state, _ = ckpt.restore(step, target, None, {})
    ckpt.close()
    return host_model(template, state), step, method


def eval_main(argv: list[str]) -> int:
    """``maskjax eval --config FILE[:arg] --workdir DIR [--evals a,b] [--step N] [--override k=v ...]``."""
    parser = argparse.ArgumentParser(prog="maskjax eval", description=eval_main.__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--evals", default=None, help="comma-separated evaluator names (default: all in config.evals)")
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--override", action="append", default=[], help="config override key=value (repeatable)")
    args = parser.parse_args(argv)
    from maskjax.config import apply_overrides, load_config
    from maskjax.eval.registry import EvalContext, run_evaluators
    from maskjax.train.loop import open_eval_source, open_train_source

    config = load_config(args.config)
    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = type(_lookup(config, key))(value) if _lookup(config, key) is not None else value
    apply_overrides(config, overrides)
    names = args.evals.split(",") if args.evals else list(config.evals)
    unknown = [n for n in names if n not in config.evals]
    if unknown:
        print(f"maskjax eval: {unknown} not in config.evals ({sorted(config.evals)})", file=sys.stderr)
        return 2
    model, step, method = load_checkpoint_model(config, args.workdir, args.step)
    context = EvalContext(config=config, workdir=args.workdir, step=step, method=method,
                          train_source=open_train_source(config), eval_source=open_eval_source(config), final=True)
    results = run_evaluators(model, context, names)
    for key, value in sorted(results.items()):
        print(f"{key}: {value:.4f}")
    return 0


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def plot_main(argv: list[str]) -> int:
    """``maskjax plot WORKDIR [--out PNG]``: loss, lr, grad norm and eval metrics over steps."""
    parser = argparse.ArgumentParser(prog="maskjax plot", description=plot_main.__doc__)
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from maskjax.eval.plots import plot_run

    print(plot_run(args.workdir, args.out))
    return 0
