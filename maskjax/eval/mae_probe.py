"""MAE's linear-probe protocol (facebookresearch/mae ``main_linprobe.py``, specs §1(d)).

Frozen encoder; the cls token after the encoder's final norm; head = BatchNorm without affine
parameters (eps 1e-6, momentum 0.1 as ``torch.nn.BatchNorm1d``) then a Linear initialised
trunc-normal(0.01); LARS (momentum 0.9, trust coefficient 0.001, no weight decay; parameters
with ndim <= 1 get neither decay nor trust scaling); lr = blr x batch / 256 with blr 0.1;
warmup then half-cycle cosine per step; TF-style RandomResizedCrop(0.08, 1) + flip for
training and resize + center crop for evaluation.

``cache_features=True`` is the small-data variant: no augmentation, features computed once,
so many probe epochs cost almost nothing (what a CPU can afford; say so when reporting).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maskjax.data.pipeline import make_image_pipeline, take_arrays
from maskjax.data.sources import maybe_subset
from maskjax.optim.lars import lars
from maskjax.optim.schedules import peak_lr, warmup_cosine
from maskjax.progress import progress

__all__ = ["BN_EPS", "BN_MOMENTUM", "head_logits", "init_head", "lars", "mae_linear_probe"]

BN_EPS = 1e-6
BN_MOMENTUM = 0.1


def init_head(key, dim: int, num_classes: int) -> dict:
    """Head parameters (Linear, trunc-normal 0.01) and BatchNorm running statistics."""
    w = 0.01 * jax.random.truncated_normal(key, -2.0, 2.0, (dim, num_classes))
    return {"params": {"w": w, "b": jnp.zeros((num_classes,))},
            "bn": {"mean": jnp.zeros((dim,)), "var": jnp.ones((dim,))}}


def head_logits(params: dict, bn: dict, feats: jax.Array, train: bool):
    """BatchNorm (no affine) then Linear; in training returns the updated running statistics."""
    if train:
        mean, var = feats.mean(0), feats.var(0)
        n = feats.shape[0]
        new_bn = {"mean": (1 - BN_MOMENTUM) * bn["mean"] + BN_MOMENTUM * mean,
                  # torch updates the running variance with the unbiased batch variance
                  "var": (1 - BN_MOMENTUM) * bn["var"] + BN_MOMENTUM * var * n / max(n - 1, 1)}
    else:
        mean, var, new_bn = bn["mean"], bn["var"], bn
    x = (feats - mean) / jnp.sqrt(var + BN_EPS)
    return x @ params["w"] + params["b"], new_bn


def mae_linear_probe(features: Callable, train_source, eval_source, *, image_size: int, num_classes: int,
                     epochs: int = 90, batch_size: int = 16384, blr: float = 0.1, warmup_epochs: float = 10,
                     crop_pct: float = 0.875, cache_features: bool = False, seed: int = 0,
                     max_eval: int | None = None, train_examples: int | None = None) -> dict[str, float]:
    """Trains the MAE probe head on frozen features; returns top-1 accuracy.

    ``features(images) -> [B, D]``: the frozen encoder's cls feature of a numpy batch (the
    evaluator passes ``method.features(..., pool="cls")`` run as a sharded jit on the mesh). The
    head is tiny and trains on one device.
    """
    train_source = maybe_subset(train_source, train_examples, seed)
    eval_source = maybe_subset(eval_source, max_eval, seed + 1)
    n_train = len(train_source)
    batch_size = min(batch_size, n_train)
    steps_per_epoch = n_train // batch_size
    total = max(int(epochs * steps_per_epoch), 1)
    schedule = warmup_cosine(peak_lr(blr, batch_size), int(warmup_epochs * steps_per_epoch), total)
    tx = lars(schedule)
    # The head's width from a forward pass (no guessing from encoder attributes).
    dim = int(np.shape(features(take_arrays(train_source, [0], image_size, crop_pct=crop_pct)[0]))[-1])

    @jax.jit
    def step(state, feats, labels):
        def loss_fn(p):
            logits, bn = head_logits(p, state["bn"], feats, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), bn

        (loss, bn), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "bn": bn, "opt": opt}, loss

    head = init_head(jax.random.key(seed), dim, num_classes)
    state = {"params": head["params"], "bn": head["bn"], "opt": tx.init(head["params"])}
    # Steps are counted as they are dispatched (no sync for progress); the step's own inputs pace it.
    if cache_features:
        xs, ys = take_arrays(train_source, range(n_train), image_size, crop_pct=crop_pct)
        with progress(total=n_train, desc="MAE probe features", unit="ex") as bar:
            cached = []
            for i in range(0, n_train, 512):
                cached.append(np.asarray(features(xs[i:i + 512])))
                bar.update(len(cached[-1]))
        cached = np.concatenate(cached)
        rng = np.random.default_rng(seed)
        with progress(total=epochs * steps_per_epoch, desc="MAE probe", unit="step") as bar:
            for _ in range(epochs):
                order = rng.permutation(n_train)
                for j in range(steps_per_epoch):
                    idx = order[j * batch_size:(j + 1) * batch_size]
                    state, loss = step(state, jnp.asarray(cached[idx]), jnp.asarray(ys[idx]))
                    bar.update(1)
    else:
        ds = make_image_pipeline(train_source, global_batch=batch_size, image_size=image_size, train=True,
                                 seed=seed, augment="probe", process_index=0, process_count=1, num_epochs=epochs)
        for batch in progress(ds, total=epochs * steps_per_epoch, desc="MAE probe", unit="step"):
            state, loss = step(state, jnp.asarray(features(batch["image"])), jnp.asarray(batch["label"]))
    n_eval = len(eval_source)
    correct = 0
    with progress(total=n_eval, desc="MAE probe eval", unit="ex") as bar:
        for start in range(0, n_eval, 512):
            xe, ye = take_arrays(eval_source, range(start, min(start + 512, n_eval)), image_size, crop_pct=crop_pct)
            logits, _ = head_logits(state["params"], state["bn"], jnp.asarray(features(xe)), train=False)
            correct += int(np.sum(np.argmax(np.asarray(logits), -1) == ye))
            bar.update(len(ye))
    return {"top1": correct / n_eval, "final_train_loss": float(loss), "steps": total}
