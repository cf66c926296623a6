"""``maskjax eval`` (evaluators on a checkpoint) and ``maskjax plot`` (training curves)."""

from __future__ import annotations

import argparse
import os
import sys


def restore_model(config, workdir: str, step: int | None = None, mesh=None, rules=None):
    """Restores the model saved in ``workdir`` (newest step by default) sharded over ``mesh``.

    ``mesh``/``rules`` default to the config's (``config.mesh``, ``config.sharding_rules``).
    Returns ``(model, step, method, mesh, rules)``: the model holds the restored arrays in their
    sharded layout (nothing is gathered to a host). Only the train state is read; the data
    iterator is not.
    """
    import jax

    from maskjax.core.mesh import make_mesh, normalize_rules
    from maskjax.methods import make_method
    from maskjax.optim.optimizers import make_optimizer
    from maskjax.optim.schedules import warmup_cosine
    # The checkpoint format and state layout live in maskjax.core, shared with the trainer.
    from maskjax.core.checkpoint import Checkpointer
    from maskjax.core.state import ModelTemplate, abstract_state

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    method = make_method(config)
    template = ModelTemplate.from_builder(method.build)
    # The optimizer only shapes the restore target; its hyper-parameters do not matter here.
    tx = make_optimizer(config.optim, warmup_cosine(0.0, 0, 1))
    mesh = make_mesh(config.mesh) if mesh is None else mesh
    rules = normalize_rules(config.sharding_rules) if rules is None else rules
    target, _ = abstract_state(template, method.build, tx, mesh, rules, jax.random.key(0))
    state, _ = ckpt.restore(step, target, None, {})
    ckpt.close()
    return template.merge(state["params"], state["extra"]), step, method, mesh, rules


def load_checkpoint_model(config, workdir: str, step: int | None = None):
    """Restores the model saved in ``workdir`` (newest step by default) onto this machine's devices.

    Returns ``(model, step, method)``; the model's arrays stay sharded over the config's mesh
    (reading them, e.g. ``np.asarray``, works in a single process). Used by ``maskjax convert``.
    """
    model, step, method, _, _ = restore_model(config, workdir, step)
    return model, step, method


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
    from maskjax.data.modalities import get_modality
    from maskjax.eval.registry import EvalContext, run_evaluators

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
    model, step, method, mesh, rules = restore_model(config, args.workdir, args.step)
    modality = get_modality(method.modality)
    context = EvalContext(config=config, workdir=args.workdir, step=step, method=method,
                          train_source=modality.open_source(config, "train"),
                          eval_source=modality.open_source(config, "eval"), final=True, mesh=mesh, rules=rules)
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
