"""What the quick start runs after pre-training: a reconstruction figure and a linear probe."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from maskjax.data.pipeline import take_arrays
from maskjax.eval.linear_probe import extract_features, fit_linear_probe
from maskjax.eval.reconstruction import reconstruction_figure


def _subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """A fixed random subset (sources are often sorted by class, so never take the first n)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_total)[: min(n, n_total)])


def _cls_features(model, images: np.ndarray) -> np.ndarray:
    apply = jax.jit(lambda m, x: m.encoder(x)[1]["cls"])
    return extract_features(lambda x: apply(model, x), images)


def run_post_training(result, workdir: str, *, train_source, eval_source) -> dict:
    """Writes ``reconstruction.png`` and runs the linear probe per ``config.post``; returns a summary."""
    config, post = result.config, result.config.post
    size = config.data.image_size
    summary: dict = {}
    model = result.template.merge(jax.device_get(result.state["params"]), jax.device_get(result.state["extra"]))
    if post.reconstruction:
        idx = _subset(len(eval_source), post.num_recon_images, seed=1)
        images, _ = take_arrays(eval_source, idx, size, crop_pct=config.data.crop_pct)
        path = os.path.join(workdir, "reconstruction.png")
        reconstruction_figure(model, images, jax.random.key(0), config.masking.ratio, config.loss.norm_pix, path)
        summary["reconstruction"] = path
        _say(f"wrote {path}")
    if post.linear_probe:
        tr_idx = _subset(len(train_source), post.probe_train_examples, seed=2)
        te_idx = _subset(len(eval_source), post.probe_test_examples, seed=3)
        xtr, ytr = take_arrays(train_source, tr_idx, size, crop_pct=config.data.crop_pct)
        xte, yte = take_arrays(eval_source, te_idx, size, crop_pct=config.data.crop_pct)
        num_classes = int(max(ytr.max(), yte.max()) + 1)
        pretrained = fit_linear_probe(_cls_features(model, xtr), ytr, _cls_features(model, xte), yte,
                                      num_classes, steps=post.probe_epochs * 5)
        random_model = result.method.build(nnx.Rngs(params=jax.random.key(config.seed + 12345)))
        baseline = fit_linear_probe(_cls_features(random_model, xtr), ytr, _cls_features(random_model, xte),
                                    yte, num_classes, steps=post.probe_epochs * 5)
        summary["linear_probe"] = {
            "pretrained_test_accuracy": pretrained["test_accuracy"],
            "random_init_test_accuracy": baseline["test_accuracy"],
            "train_examples": len(tr_idx), "test_examples": len(te_idx), "step": result.step}
        _say(f"linear probe (frozen cls feature, {len(tr_idx)} train / {len(te_idx)} test images): "
             f"top-1 {100 * pretrained['test_accuracy']:.1f}% pre-trained vs "
             f"{100 * baseline['test_accuracy']:.1f}% random-init encoder")
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "post_training.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)
