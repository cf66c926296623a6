"""``maskjax eval`` (evaluators on a checkpoint) and ``maskjax plot`` (training curves)."""

from __future__ import annotations

import argparse
import os

from maskjax.errors import UsageError


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

    require_run(workdir)  # Checkpointer would create the folder of a mistyped workdir
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise UsageError(f"no finished checkpoint in {workdir}/checkpoints")
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


EVAL_DESCRIPTION = """Runs evaluators on a trained checkpoint (the newest, or --step N) and prints their metrics.
Records go to WORKDIR/eval_results.jsonl.

examples:
  maskjax eval --config configs/mae/default.py --workdir runs/default
  maskjax eval --config configs/mae/default.py --workdir runs/default --evals probe,knn
"""


def resolve_evals(config, requested: str | None) -> list[str]:
    """``config.evals`` entries named by ``--evals`` (comma-separated entry names or evaluator types).

    An entry name selects that entry; an evaluator type selects every entry of that type, or, if
    the config has none, a new entry of that type with the evaluator's default options. Unknown
    names raise :class:`~maskjax.errors.UsageError` listing both kinds.
    """
    from maskjax.eval.registry import known_evaluators

    if not requested:
        return list(config.evals)
    names: list[str] = []
    for item in filter(None, (x.strip() for x in requested.split(","))):
        if item in config.evals:
            names.append(item)
            continue
        of_type = [n for n, options in config.evals.items() if options.get("type") == item]
        if of_type:
            names += of_type
        elif item in known_evaluators():
            with config.unlocked():
                config.evals[item] = {"type": item}
            names.append(item)
        else:
            raise UsageError(f"--evals {item!r}: neither an entry of config.evals ({sorted(config.evals)}) nor an "
                             f"evaluator type ({known_evaluators()})")
    return list(dict.fromkeys(names))


def eval_main(argv: list[str]) -> int:
    """``maskjax eval --config FILE[:arg] --workdir DIR [--evals a,b] [--step N] [--config.X=V ...]``."""
    from maskjax.config.commandline import ConfigArgumentParser

    parser = ConfigArgumentParser(prog="maskjax eval", description=EVAL_DESCRIPTION)
    parser.add_argument("--workdir", required=True, help="the run's directory (holds checkpoints/)")
    parser.add_argument("--evals", default=None, help="comma-separated config.evals entry names or evaluator types "
                        "(default: every entry of config.evals)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    args = parser.parse_config_args(argv)
    config = args.config
    # Before anything else: a mistyped workdir must be an error that creates nothing.
    require_run(args.workdir)
    from maskjax.data.modalities import get_modality
    from maskjax.eval.registry import EvalContext, run_evaluators

    names = resolve_evals(config, args.evals)
    model, step, method, mesh, rules = restore_model(config, args.workdir, args.step)
    modality = get_modality(method.modality)
    context = EvalContext(config=config, workdir=args.workdir, step=step, method=method,
                          train_source=modality.open_source(config, "train"),
                          eval_source=modality.open_source(config, "eval"), final=True, mesh=mesh, rules=rules)
    results = run_evaluators(model, context, names)
    for key, value in sorted(results.items()):
        print(f"{key}: {value:.4g}")
    return 0


def require_run(workdir: str) -> None:
    """Raises :class:`~maskjax.errors.UsageError` unless ``workdir`` holds a checkpoints folder."""
    if not os.path.isdir(workdir):
        raise UsageError(f"workdir {workdir!r} does not exist (nothing was created); give the --workdir of a "
                         f"trained run")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise UsageError(f"workdir {workdir!r} holds no checkpoints/ folder: no run has saved there")


def plot_main(argv: list[str]) -> int:
    """``maskjax plot WORKDIR [--out PNG]``: loss, lr, grad norm and eval metrics over steps."""
    parser = argparse.ArgumentParser(prog="maskjax plot", description=plot_main.__doc__)
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from maskjax.eval.plots import plot_run

    print(plot_run(args.workdir, args.out))
    return 0
