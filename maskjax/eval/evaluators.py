"""The built-in evaluators: reconstruction figure, quick probe, MAE linear probe, kNN."""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from maskjax.data.modalities import get_modality
from maskjax.eval.finetune import mae_finetune
from maskjax.eval.knn import knn_accuracy
from maskjax.eval.linear_probe import extract_features, fit_linear_probe
from maskjax.eval.mae_probe import mae_linear_probe
from maskjax.eval.reconstruction import reconstruction_figure
from maskjax.eval.registry import register


def subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """A fixed random subset (sources are often sorted by class, so never take the first n)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_total)[: min(n, n_total)])


def method_features(method, model, inputs: np.ndarray) -> np.ndarray:
    """Frozen features ``method.features(model, x)`` of ``inputs``, jitted, in batches (numpy [N, D])."""
    apply = jax.jit(lambda m, x: method.features(m, x))
    return extract_features(lambda x: apply(model, x), inputs)


def _num_classes(*label_arrays) -> int:
    return int(max(int(np.max(y)) for y in label_arrays) + 1)


def source_classes(source, options) -> int:
    """Number of classes: ``options.num_classes`` or the source's ``class_names``."""
    if options.get("num_classes"):
        return int(options.num_classes)
    names = getattr(source, "class_names", None)
    if not names:
        raise ValueError("the data source does not list its classes; set num_classes in the evaluator options")
    return len(names)


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


@register("reconstruction")
def reconstruction(model, options, ctx) -> dict:
    """Writes ``reconstruction[_step].png``: original | masked | reconstruction."""
    config = ctx.config
    idx = subset(len(ctx.eval_source), options.get("num_images", 8), seed=1)
    images, _ = _take(ctx, ctx.eval_source, idx)
    name = "reconstruction.png" if ctx.final else f"reconstruction_{ctx.step}.png"
    path = os.path.join(ctx.workdir, name)
    reconstruction_figure(ctx.method, model, images, jax.random.key(0), path, stats=options.get("stats", "visible"))
    _say(f"wrote {path}")
    return {}


def _take(ctx, source, indices):
    """``(inputs, labels)`` of ``source[indices]`` with the eval preprocessing of the method's modality."""
    return get_modality(ctx.method.modality).take_examples(ctx.config, source, indices)


def _probe_data(options, ctx):
    tr = subset(len(ctx.train_source), options.get("train_examples", 4000), seed=2)
    te = subset(len(ctx.eval_source), options.get("test_examples", 1000), seed=3)
    xtr, ytr = _take(ctx, ctx.train_source, tr)
    xte, yte = _take(ctx, ctx.eval_source, te)
    return xtr, ytr, xte, yte


@register("quick_probe")
def quick_probe(model, options, ctx) -> dict:
    """Standardised frozen cls features + softmax regression, against a random-init encoder."""
    xtr, ytr, xte, yte = _probe_data(options, ctx)
    classes = _num_classes(ytr, yte)
    steps = options.get("steps", 500)
    feats = lambda m, x: method_features(ctx.method, m, x)
    trained = fit_linear_probe(feats(model, xtr), ytr, feats(model, xte), yte, classes, steps=steps)
    out = {"top1": trained["test_accuracy"]}
    if options.get("random_baseline", True):
        random_model = ctx.method.build(nnx.Rngs(params=jax.random.key(ctx.config.seed + 12345)))
        base = fit_linear_probe(feats(random_model, xtr), ytr, feats(random_model, xte), yte, classes, steps=steps)
        out["random_init_top1"] = base["test_accuracy"]
    _say(f"linear probe (frozen cls feature, {len(ytr)} train / {len(yte)} test images): top-1 "
         f"{100 * out['top1']:.1f}% pre-trained"
         + (f" vs {100 * out['random_init_top1']:.1f}% random-init encoder" if "random_init_top1" in out else ""))
    return out


@register("knn")
def knn(model, options, ctx) -> dict:
    """Cosine kNN (k=20, T=0.07) on frozen cls features of the training and held-out splits."""
    xtr, ytr, xte, yte = _probe_data(options, ctx)
    acc = knn_accuracy(method_features(ctx.method, model, xtr), ytr, method_features(ctx.method, model, xte), yte,
                       _num_classes(ytr, yte),
                       k=options.get("k", 20), temperature=options.get("temperature", 0.07))
    _say(f"kNN (k={options.get('k', 20)}): top-1 {100 * acc:.1f}%")
    return {"top1": acc}


@register("linear_probe")
def linear_probe(model, options, ctx) -> dict:
    """MAE's linear-probe protocol (LARS, BatchNorm without affine, TF-style crops)."""
    config = ctx.config
    out = mae_linear_probe(
        ctx.method.encoder(model), ctx.train_source, ctx.eval_source, image_size=config.data.image_size,
        num_classes=source_classes(ctx.train_source, options),
        epochs=options.get("epochs", 90), batch_size=options.get("batch_size", 16384),
        blr=options.get("blr", 0.1), warmup_epochs=options.get("warmup_epochs", 10),
        crop_pct=config.data.crop_pct, cache_features=options.get("cache_features", False),
        seed=config.seed, max_eval=options.get("max_eval", None), train_examples=options.get("train_examples", None))
    _say(f"MAE linear probe: top-1 {100 * out['top1']:.1f}%")
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
                       seed=config.seed, variant=config.model.variant, **kwargs)
    _say(f"MAE fine-tune: top-1 {100 * out['top1']:.1f}% after {out['steps']} steps")
    return out
