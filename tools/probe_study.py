"""The quick-probe study: old vs new probe, pre-trained vs random-init, on trained quick-start runs.

Produces the table of ``docs/quick_probe.md`` from checkpoints the quick start wrote. For each
run (a seed and its workdir) it restores the final model and builds the random-init baseline
exactly as the ``quick_probe`` evaluator does (``config.seed + RANDOM_INIT_SEED_OFFSET``), extracts
frozen features once per model and feature (``--pools``) for *all* the training and test examples
it needs, and evaluates on them:

- ``old``: the former quick probe, 500 full-batch Adam steps of softmax regression
  (:func:`maskjax.eval.linear_probe.fit_linear_probe`) on the former 4,000 / 1,000 subsets;
- ``new``: the converged, held-out-regularised probe (:func:`maskjax.eval.logistic.fit_probe`) on
  the same 4,000 / 1,000 subsets (the solver alone changes) and on ``--train-examples`` /
  ``--test-examples`` (the recipe's new probe);
- ``kNN`` (k = 20, T = 0.07) on the latter features;
- sensitivity of the new probe: the largest change of its test accuracy when its effort is doubled
  (twice the iteration cap, a 10x tighter tolerance) or its L2 is moved to a neighbouring grid value.

Subsets are the evaluators' own (``maskjax.eval.features.subset`` with seeds 2 / 3), so the ``old``
column reproduces what the quick start printed before this change. Usage::

    python tools/probe_study.py --config configs/mae/default.py \\
        --run 0=runs/qs_s0 --run 1=runs/qs_s1 --run 2=runs/qs_s2 --pools cls,pooled --json runs/probe_study.json

``--config.FIELD=VALUE`` overrides apply to every run (e.g. a variant recipe's model fields). The
markdown table goes to stdout (and ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

OLD_TRAIN, OLD_TEST = 4000, 1000   # the former quick probe's subsets (configs/mae/default.py before)


def parse_args(argv=None):
    """Command-line arguments; ``--config.FIELD=VALUE`` items are returned as overrides."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/mae/default.py")
    parser.add_argument("--run", action="append", required=True, help="SEED=WORKDIR (repeatable)")
    parser.add_argument("--pools", default="cls", help="comma-separated features: cls, pooled")
    parser.add_argument("--train-examples", type=int, default=10000)
    parser.add_argument("--test-examples", type=int, default=2000)
    parser.add_argument("--label", default="", help="recipe name for the table")
    parser.add_argument("--json", default=None, help="write every number here")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unrecognised argument {item!r}")
        key, value = item[len("--config."):].split("=", 1)
        overrides[key] = value
    return args, overrides


def _typed(config, dotted: str, text: str):
    """``text`` converted to the type of the config field ``dotted``."""
    node = config
    for part in dotted.split("."):
        node = node[part]
    if isinstance(node, bool):
        return text.lower() in ("1", "true", "yes")
    return type(node)(text) if node is not None else text


def load(config_path: str, overrides: dict, seed: int):
    """The run's config: the recipe, the overrides, and ``seed``."""
    from maskjax.config import apply_overrides, load_config

    config = load_config(config_path)
    apply_overrides(config, {k: _typed(config, k, v) for k, v in overrides.items()})
    apply_overrides(config, {"seed": seed})
    return config


def features_of_run(config, workdir: str, pools: list[str], n_train: int, n_test: int) -> dict:
    """``{(model, pool): (train features, test features)}`` and the labels, for one run.

    ``model`` is "pre-trained" (the newest checkpoint) or "random-init" (the evaluator's baseline).
    Rows are the sources' first ``n`` examples of the evaluators' fixed permutation, sorted: the
    same rows ``take(ctx, source, n, seed)`` reads, so smaller subsets are found by index.
    """
    from maskjax.data.modalities import get_modality
    from maskjax.eval.cli import restore_model
    from maskjax.eval.features import RANDOM_INIT_SEED_OFFSET, features_fn, fresh_model, method_features, subset
    from maskjax.eval.registry import EvalContext

    model, step, method, mesh, rules = restore_model(config, workdir)
    modality = get_modality(method.modality)
    train_src, eval_src = modality.open_source(config, "train"), modality.open_source(config, "eval")
    ctx = EvalContext(config=config, workdir=workdir, step=step, method=method, train_source=train_src,
                      eval_source=eval_src, final=True, mesh=mesh, rules=rules)
    idx_tr, idx_te = subset(len(train_src), n_train, 2), subset(len(eval_src), n_test, 3)
    xtr, ytr = modality.take_examples(config, train_src, idx_tr)
    xte, yte = modality.take_examples(config, eval_src, idx_te)
    models = {"pre-trained": model,
              "random-init": fresh_model(method, config.seed + RANDOM_INIT_SEED_OFFSET, mesh, rules)}
    feats = {}
    for pool in pools:
        fn = features_fn(method, pool)
        for name, m in models.items():
            feats[name, pool] = (method_features(ctx, m, xtr, fn=fn), method_features(ctx, m, xte, fn=fn))
    return {"features": feats, "ytr": ytr, "yte": yte, "idx_tr": idx_tr, "idx_te": idx_te, "step": step,
            "n_train_source": len(train_src), "n_test_source": len(eval_src)}


def rows_within(idx_all: np.ndarray, n_source: int, n: int, seed: int) -> np.ndarray:
    """Positions in ``idx_all`` of the evaluators' ``n``-example subset (which must lie inside it)."""
    from maskjax.eval.features import subset

    want = subset(n_source, n, seed)
    pos = np.searchsorted(idx_all, want)
    if not np.array_equal(idx_all[np.minimum(pos, len(idx_all) - 1)], want):
        raise ValueError(f"the {n}-example subset is not inside the extracted rows; extract all examples")
    return pos


def sensitivity(ftr, ytr, fte, yte, classes: int, base: dict) -> dict:
    """Largest |change| of the new probe's test accuracy for doubled effort / a neighbouring L2."""
    from maskjax.eval.logistic import DEFAULT_L2_GRID, fit_probe

    harder = fit_probe(ftr, ytr, fte, yte, classes, max_iter=2000, tol=1e-7)
    grid = sorted(DEFAULT_L2_GRID)
    i = grid.index(base["l2"])
    neighbours = [fit_probe(ftr, ytr, fte, yte, classes, l2=grid[j])["test_accuracy"]
                  for j in (i - 1, i + 1) if 0 <= j < len(grid)]
    return {"effort": abs(harder["test_accuracy"] - base["test_accuracy"]),
            "l2": max(abs(a - base["test_accuracy"]) for a in neighbours)}


def study_run(data: dict, pools: list[str], n_train: int, n_test: int) -> dict:
    """Every probe number of one run: ``{pool: {model: {column: value}}}``."""
    from maskjax.eval.knn import knn_accuracy
    from maskjax.eval.linear_probe import fit_linear_probe
    from maskjax.eval.logistic import fit_probe

    ytr, yte = np.asarray(data["ytr"]), np.asarray(data["yte"])
    classes = int(max(ytr.max(), yte.max()) + 1)
    old_tr = rows_within(data["idx_tr"], data["n_train_source"], min(OLD_TRAIN, n_train), 2)
    old_te = rows_within(data["idx_te"], data["n_test_source"], min(OLD_TEST, n_test), 3)
    out = {}
    for pool in pools:
        out[pool] = {}
        for model in ("pre-trained", "random-init"):
            ftr, fte = data["features"][model, pool]
            t = time.time()
            new = fit_probe(ftr, ytr, fte, yte, classes)
            seconds = time.time() - t
            row = {
                "old": fit_linear_probe(ftr[old_tr], ytr[old_tr], fte[old_te], yte[old_te], classes,
                                        steps=500)["test_accuracy"],
                "new_old_subsets": fit_probe(ftr[old_tr], ytr[old_tr], fte[old_te], yte[old_te],
                                             classes)["test_accuracy"],
                "new": new["test_accuracy"], "new_l2": new["l2"], "new_converged": new["converged"],
                "new_seconds": seconds, "new_at_grid_edge": new["at_grid_edge"],
                "knn": knn_accuracy(ftr, ytr, fte, yte, classes),
            }
            row.update({f"delta_{k}": v for k, v in sensitivity(ftr, ytr, fte, yte, classes, new).items()})
            out[pool][model] = row
            print(f"  {pool:6s} {model:11s} " + " ".join(
                f"{k}={v:.0e}" if k == "new_l2" else f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in row.items()), flush=True)
    return out


def _mean_sd(values) -> str:
    values = 100 * np.asarray(values, np.float64)
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def table(results: dict, pools: list[str], label: str, n_train: int, n_test: int) -> str:
    """Markdown: one row per (recipe, feature, probe), pre-trained / random-init / margin, mean ± sd over seeds."""
    seeds = sorted(results)
    columns = [("old", f"old probe (Adam 500 steps, {OLD_TRAIN}/{OLD_TEST})"),
               ("new_old_subsets", f"new probe ({OLD_TRAIN}/{OLD_TEST})"),
               ("new", f"new probe ({n_train}/{n_test})"),
               ("knn", f"kNN k=20 ({n_train}/{n_test})")]
    lines = [f"| recipe | feature | probe (train/test images) | pre-trained | random-init | margin | "
             f"per seed ({', '.join(map(str, seeds))}): margin |",
             "|---|---|---|---|---|---|---|"]
    for pool in pools:
        for key, title in columns:
            pre = [results[s][pool]["pre-trained"][key] for s in seeds]
            rnd = [results[s][pool]["random-init"][key] for s in seeds]
            margin = [a - b for a, b in zip(pre, rnd)]
            lines.append(f"| {label} | {pool} | {title} | {_mean_sd(pre)} | {_mean_sd(rnd)} | {_mean_sd(margin)} | "
                         + " / ".join(f"{100 * m:+.1f}" for m in margin) + " |")
    return "\n".join(lines)


def environment() -> dict:
    """Commit, CPU and versions, for the table's caption."""
    import jax

    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=False).stdout.strip()
        except OSError:
            return "?"

    cpu = [line.split(":", 1)[1].strip() for line in run(["lscpu"]).splitlines()
           if line.startswith(("Model name", "CPU(s)"))]
    dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {"commit": run(["git", "rev-parse", "--short", "HEAD"]) + ("+changes" if dirty else ""),
            "cpu": " / ".join(cpu), "jax": jax.__version__, "python": platform.python_version()}


def main(argv=None) -> int:
    """Runs the study over every ``--run`` and prints the table."""
    args, overrides = parse_args(argv)
    pools = [p for p in args.pools.split(",") if p]
    results, started = {}, time.time()
    for item in args.run:
        seed, _, workdir = item.partition("=")
        config = load(args.config, overrides, int(seed))
        print(f"run seed {seed}: {workdir}", flush=True)
        data = features_of_run(config, workdir, pools, args.train_examples, args.test_examples)
        results[int(seed)] = study_run(data, pools, args.train_examples, args.test_examples)
    env = environment()
    label = args.label or os.path.basename(args.config)
    text = table(results, pools, label, args.train_examples, args.test_examples)
    sens = [max(r[p][m]["delta_effort"], r[p][m]["delta_l2"]) for r in results.values() for p in pools
            for m in ("pre-trained", "random-init")]
    print(f"\n{text}\n\nnew probe: largest accuracy change for doubled effort or a neighbouring L2: "
          f"{100 * max(sens):.2f} points; {env}; study {time.time() - started:.0f}s")
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"env": env, "args": vars(args), "overrides": overrides,
                                                       "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
