"""The built-in evaluators of every modality: frozen-feature probe, kNN, reconstruction figure, and
MAE's paper protocols (LARS linear probe, layer-decay fine-tuning).

The probe and kNN use only the method contract: examples come from the method's modality
(``Modality.take_examples``) and features from ``method.features(model, inputs, pool=...)``, run
as a sharded jit on the model's own (sharded) arrays (:mod:`maskjax.eval.features`). So one
``feature_probe`` and one ``knn`` serve MAE, VideoMAE, MAE-ST, AudioMAE and the text methods.
``quick_probe`` (the image configs') fits the probe to convergence with a held-out L2 and adds kNN.
"""

from __future__ import annotations

import os

import jax

from maskjax.eval.features import (
    RANDOM_INIT_SEED_OFFSET,
    batched_apply,
    features_fn,
    fresh_model,
    method_features,
    num_classes,
    say,
    source_classes,
    take,
)
from maskjax.eval.finetune import mae_finetune
from maskjax.eval.knn import knn_accuracy
from maskjax.eval.linear_probe import fit_linear_probe
from maskjax.eval.logistic import fit_probe
from maskjax.eval.mae_probe import mae_linear_probe
from maskjax.eval.reconstruction import reconstruction_figure
from maskjax.eval.registry import register
from maskjax.progress import phase


@register("reconstruction")
def reconstruction(model, options, ctx) -> dict:
    """Writes ``reconstruction[_step].png``: original | masked | reconstruction."""
    images, _ = take(ctx, ctx.eval_source, options.get("num_images", 8), seed=1)
    name = "reconstruction.png" if ctx.final else f"reconstruction_{ctx.step}.png"
    path = os.path.join(ctx.workdir, name)
    reconstruction_figure(ctx.method, model, images, jax.random.key(0), path, stats=options.get("stats", "visible"))
    say(f"wrote {path}")
    return {}


def probe_data(options, ctx, train_default: int, test_default: int):
    """``(xtr, ytr, xte, yte)``: fixed random subsets of the train and held-out sources."""
    xtr, ytr = take(ctx, ctx.train_source, options.get("train_examples", train_default), seed=2)
    xte, yte = take(ctx, ctx.eval_source, options.get("test_examples", test_default), seed=3)
    return xtr, ytr, xte, yte


def _probe_fit(solver: str, ftr, ytr, fte, yte, classes: int, steps: int, options) -> dict:
    """One probe fit: "lbfgs" (converged, L2 picked on held-out train rows) or "adam" (fixed steps)."""
    if solver == "lbfgs":
        kwargs = {k: options[k] for k in ("holdout", "tol") if k in options}
        if options.get("l2_grid"):
            kwargs["l2_grid"] = tuple(float(v) for v in options["l2_grid"])
        return fit_probe(ftr, ytr, fte, yte, classes, max_iter=steps, **kwargs)
    if solver == "adam":
        return fit_linear_probe(ftr, ytr, fte, yte, classes, steps=steps)
    raise ValueError(f"probe solver {solver!r}: expected 'lbfgs' or 'adam'")


def _feature_probe(model, options, ctx, *, train_default: int, test_default: int, solver: str = "adam",
                   knn_default: bool = False) -> dict:
    xtr, ytr, xte, yte = probe_data(options, ctx, train_default, test_default)
    classes = num_classes(ytr, yte)
    solver = options.get("solver", solver)
    # steps: Adam's fixed step count, or L-BFGS's cap per fit (it stops earlier at convergence).
    steps, pool = options.get("steps", 500 if solver == "adam" else 1000), options.get("pool", None)
    with_knn, k, temperature = options.get("knn", knn_default), options.get("k", 20), options.get("temperature", 0.07)
    fn = features_fn(ctx.method, pool)  # one program for the trained and the random-init model

    def evaluate(m, which, prefix):
        ftr = method_features(ctx, m, xtr, fn=fn, desc=f"probe features ({which}, train)")
        fte = method_features(ctx, m, xte, fn=fn, desc=f"probe features ({which}, test)")
        # One jitted loop per fit: a count per step would need a sync per step.
        with phase(f"probe fit ({which}, {solver})"):
            fit = _probe_fit(solver, ftr, ytr, fte, yte, classes, steps, options)
        res = {prefix + "top1": fit["test_accuracy"]}
        if solver == "lbfgs":
            res[prefix + "l2"] = fit["l2"]
            if not fit["converged"]:
                say(f"warning: the {which} probe did not converge in {steps} L-BFGS iterations (raise 'steps')")
        if with_knn:  # on the same features: no second forward pass
            res[prefix + "knn_top1"] = knn_accuracy(ftr, ytr, fte, yte, classes, k=k, temperature=temperature)
        return res

    out = evaluate(model, "pre-trained", "")
    if options.get("random_baseline", True):
        out.update(evaluate(fresh_model(ctx.method, ctx.config.seed + RANDOM_INIT_SEED_OFFSET, ctx.mesh, ctx.rules),
                            "random-init", "random_init_"))
    versus = lambda key: (f" vs {100 * out['random_init_' + key]:.1f}% random-init encoder"
                          if "random_init_" + key in out else "")
    how = ""
    if solver == "lbfgs":
        l2s = f"{out['l2']:.0e}" + (f" / {out['random_init_l2']:.0e}" if "random_init_l2" in out else "")
        how = f"; logistic regression, L2 {l2s} picked on held-out train examples"
    say(f"linear probe (frozen {ctx.method.feature_name(pool)} feature, {len(ytr)} train / {len(yte)} test "
        f"examples{how}): top-1 {100 * out['top1']:.1f}% pre-trained" + versus("top1"))
    if with_knn:
        say(f"kNN (k={k}, same features): top-1 {100 * out['knn_top1']:.1f}% pre-trained" + versus("knn_top1"))
    return out


@register("feature_probe")
def feature_probe(model, options, ctx) -> dict:
    """Softmax regression on standardised frozen features, against a random-init model (any modality).

    Options: ``train_examples`` (2000), ``test_examples`` (500), ``pool`` (passed to
    ``method.features``; None: the method's default feature), ``steps`` (500),
    ``random_baseline`` (default True), ``solver`` ("adam"; "lbfgs": :func:`quick_probe`'s
    converged fit, whose other options it then takes too), ``knn`` (False).
    """
    return _feature_probe(model, options, ctx, train_default=2000, test_default=500)


@register("quick_probe")
def quick_probe(model, options, ctx) -> dict:
    """The quick start's probe: converged logistic regression and kNN on frozen features, vs random-init.

    Unlike :func:`feature_probe`'s fixed 500 Adam steps (which underfit badly conditioned features,
    such as a random-init ViT's, more than others), the probe is fitted to convergence with an L2
    picked on a held-out part of the training examples (:func:`maskjax.eval.logistic.fit_probe`;
    docs/quick_probe.md). Options: ``train_examples`` (4000), ``test_examples`` (1000), ``pool``,
    ``steps`` (L-BFGS iteration cap per fit, 1000), ``l2_grid``, ``holdout`` (0.2), ``tol``,
    ``knn`` (True), ``k`` (20), ``temperature`` (0.07), ``random_baseline`` (True),
    ``solver`` ("lbfgs"; "adam" is the old fixed-step probe).
    """
    return _feature_probe(model, options, ctx, train_default=4000, test_default=1000, solver="lbfgs",
                          knn_default=True)


@register("knn")
def knn(model, options, ctx) -> dict:
    """Cosine kNN (k=20, T=0.07) on frozen features of the training and held-out splits (any modality).

    Options: ``train_examples`` (4000), ``test_examples`` (1000), ``pool``, ``k``, ``temperature``.
    """
    xtr, ytr, xte, yte = probe_data(options, ctx, 4000, 1000)
    fn = features_fn(ctx.method, options.get("pool", None))
    acc = knn_accuracy(method_features(ctx, model, xtr, fn=fn, desc="kNN features (train)"), ytr,
                       method_features(ctx, model, xte, fn=fn, desc="kNN features (test)"), yte,
                       num_classes(ytr, yte), k=options.get("k", 20), temperature=options.get("temperature", 0.07))
    say(f"kNN (k={options.get('k', 20)}): top-1 {100 * acc:.1f}%")
    return {"top1": acc}


@register("linear_probe")
def linear_probe(model, options, ctx) -> dict:
    """MAE's linear-probe protocol (LARS, BatchNorm without affine, TF-style crops) on the cls feature."""
    config = ctx.config
    fn = features_fn(ctx.method, "cls")
    out = mae_linear_probe(
        lambda images: batched_apply(fn, model, images, mesh=ctx.mesh, rules=ctx.rules, batch_size=512),
        ctx.train_source, ctx.eval_source, image_size=config.data.image_size,
        num_classes=source_classes(ctx.train_source, options),
        epochs=options.get("epochs", 90), batch_size=options.get("batch_size", 16384),
        blr=options.get("blr", 0.1), warmup_epochs=options.get("warmup_epochs", 10),
        crop_pct=config.data.crop_pct, cache_features=options.get("cache_features", False),
        seed=config.seed, max_eval=options.get("max_eval", None), train_examples=options.get("train_examples", None))
    say(f"MAE linear probe: top-1 {100 * out['top1']:.1f}%")
    return out


@register("finetune")
def finetune(model, options, ctx) -> dict:
    """MAE's fine-tuning protocol (layer decay, drop path, mixup/cutmix, RandAugment, erasing)."""
    config = ctx.config
    keys = ("epochs", "batch_size", "blr", "layer_decay", "drop_path", "weight_decay", "warmup_epochs",
            "min_lr", "mixup", "cutmix", "label_smoothing", "pool", "augment", "max_eval", "train_examples")
    kwargs = {k: options[k] for k in keys if k in options}
    out = mae_finetune(ctx.method.encoder(model), ctx.train_source, ctx.eval_source, image_size=config.data.image_size,
                       num_classes=source_classes(ctx.train_source, options), crop_pct=config.data.crop_pct,
                       seed=config.seed, variant=config.model.variant, build_encoder=ctx.method.finetune_encoder,
                       **kwargs)
    say(f"MAE fine-tune: top-1 {100 * out['top1']:.1f}% after {out['steps']} steps")
    return out
