"""End-to-end fine-tuning on in-memory examples (the video and audio families' evaluator).

It reads examples through the method's modality (``Modality.take_examples``) and trains a copy
of ``method.encoder(model)``, so one evaluator serves VideoMAE, VideoMAE V2, MAE-ST and AudioMAE
(the frozen-feature probe and kNN of every modality are in :mod:`maskjax.eval.evaluators`). The
encoder contract: ``encoder(x, mask=None)`` returns ``(tokens, aux)`` with ``aux["pooled"]`` (the
mean of the patch tokens; VideoMAE and AudioMAE fine-tune from mean pooling) and, where the model
has one, ``aux["cls"]``. The copied encoder keeps its parameters' sharding and the batches are
sharded over the mesh's batch axes.

``media_finetune`` follows the official recipes where the small in-memory setting allows:
AdamW (0.9, 0.999) with layer-wise lr decay and weight decay 0.05 (none on 1-D parameters),
warmup then cosine, a LayerNorm ``fc_norm`` on the pooled feature and a linear head initialised
trunc-normal(0.02) scaled by ``head_init_scale`` (VideoMAE's 0.001), label smoothing 0.1,
softmax cross-entropy for single-label data and BCE-with-logits plus mAP for multi-label data
(AudioSet). Video testing averages the softmax over ``test_clips x test_crops`` views; audio
fine-tuning can drop time/frequency token rows and columns as a regulariser (AudioMAE's
``mask_2d``). Not reproduced here (documented deviation): mixup/cutmix, RandAugment, repeated
augmentation and drop path, which need the streaming pipeline of a full-size run.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from maskjax.data.modalities import get_modality
from maskjax.eval.features import RANDOM_INIT_SEED_OFFSET, batched_apply, fresh_model, global_batch, say, subset, take
from maskjax.eval.registry import register
from maskjax.core.mesh import batch_divisor, batch_sharding
from maskjax.models.layers import layer_norm
from maskjax.optim.layer_decay import layer_decay_adamw, path_strings
from maskjax.optim.schedules import warmup_cosine
from maskjax.progress import phase, progress


class PooledClassifier(nnx.Module):
    """A pre-trained encoder + ``fc_norm`` LayerNorm + linear head on the pooled feature."""

    def __init__(self, encoder, width: int, num_classes: int, *, pool: str = "pooled",
                 head_init_scale: float = 0.001, rngs: nnx.Rngs):
        self.encoder = encoder
        self.pool = pool
        self.fc_norm = layer_norm(width, rngs=rngs)
        # VideoMAE: trunc_normal_(head.weight, std=.02), then head.weight *= init_scale.
        init = nnx.initializers.truncated_normal(stddev=0.02 * head_init_scale)
        self.head = nnx.Linear(width, num_classes, kernel_init=init, bias_init=nnx.initializers.zeros,
                               rngs=rngs)

    def __call__(self, x: jax.Array, mask=None) -> jax.Array:
        _, aux = self.encoder(x, mask)
        return self.head(self.fc_norm(aux[self.pool]))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AudioSet's mAP: the mean over classes with a positive of sklearn-style average precision.

    AP of one class = sum over positives (ranked by descending score) of precision at that rank,
    divided by the number of positives. Classes without a positive are left out.
    """
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets) > 0
    aps = []
    for c in range(scores.shape[1]):
        pos = targets[:, c]
        if not pos.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = pos[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float(precision[hits].sum() / hits.sum()))
    if not aps:
        raise ValueError("mAP needs at least one class with a positive example")
    return float(np.mean(aps))


def _loss_fn(logits: jax.Array, labels: jax.Array, num_classes: int, smoothing: float, multilabel: bool):
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)).mean()
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def encoder_blocks(params) -> int:
    """Number of transformer blocks in a parameter tree: 1 + the largest ``k`` of a ``blocks/k`` path.

    Read from the paths (as :func:`~maskjax.optim.layer_decay.layer_id` reads them) rather than
    from encoder attributes, so the layer-decay depth always matches the layer ids.
    """
    depth = 0
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = path_strings(path)
        for i, name in enumerate(names[:-1]):
            if name == "blocks" and names[i + 1].isdigit():
                depth = max(depth, int(names[i + 1]) + 1)
    return depth


def finetune_arrays(encoder, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, *,
                    num_classes: int, epochs: float = 10, batch_size: int = 32, lr: float = 1e-3,
                    layer_decay: float = 0.75, weight_decay: float = 0.05, warmup_epochs: float = 1,
                    min_lr: float = 1e-6, label_smoothing: float = 0.1, pool: str = "pooled",
                    head_init_scale: float = 0.001, train_mask_fn=None, seed: int = 0,
                    mesh=None, rules=None, desc: str = "fine-tune") -> dict[str, float]:
    """Fine-tunes a copy of ``encoder`` + head on in-memory arrays; returns test metrics.

    ``ytr``/``yte`` are int labels [n] (softmax, top-1) or multi-hot [n, C] (BCE, mAP). ``xte`` may
    carry a view axis [n, V, ...]: predictions are then averaged over the views (softmax or
    sigmoid), VideoMAE's multi-view testing. ``train_mask_fn(key, batch) -> Mask`` drops tokens
    during training (AudioMAE's time/frequency masking); testing never masks. With a ``mesh``
    (and ``rules``) the batches are sharded over its batch axes; the encoder's parameters keep
    whatever sharding they have. ``desc`` names the progress shown (steps, then test examples).
    """
    multilabel = ytr.ndim == 2
    enc_graph, enc_state = nnx.split(encoder)
    # A copy (same sharding): the caller's encoder holds the train state's arrays.
    copy = nnx.merge(enc_graph, jax.tree.map(jnp.array, enc_state))
    # The head's width from a forward pass (abstract: no compute), not from encoder attributes.
    width = jax.eval_shape(lambda e, x: e(x)[1][pool], copy, jax.ShapeDtypeStruct((1,) + xtr.shape[1:],
                                                                                 xtr.dtype)).shape[-1]
    model = PooledClassifier(copy, int(width), num_classes, pool=pool, head_init_scale=head_init_scale,
                             rngs=nnx.Rngs(params=jax.random.key(seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n = len(xtr)
    batch_size = max(1, min(batch_size, n))
    steps_per_epoch = max(n // batch_size, 1)
    total = max(int(epochs * steps_per_epoch), 1)
    schedule = warmup_cosine(lr, int(warmup_epochs * steps_per_epoch), total, min_lr)
    tx = layer_decay_adamw(schedule, params, encoder_blocks(params), layer_decay, weight_decay)
    opt = tx.init(params)

    def logits_of(p, x, mask=None):
        return nnx.merge(graphdef, p, rest)(x, mask)

    @jax.jit
    def step(p, o, x, y, key):
        mask = train_mask_fn(key, x.shape[0]) if train_mask_fn is not None else None
        loss, grads = jax.value_and_grad(
            lambda q: _loss_fn(logits_of(q, x, mask), y, num_classes, label_smoothing, multilabel))(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    # Training batches are sharded over the batch axes when they divide evenly (else replicated).
    sharding = None
    if mesh is not None and batch_size % batch_divisor(mesh, rules) == 0:
        sharding = batch_sharding(mesh, rules)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed + 1)
    loss = jnp.nan
    # Steps are counted as dispatched: progress never waits for the device.
    bar = progress(total=total, desc=desc, unit="step")
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext(), bar:
        for i in range(total):
            if i % steps_per_epoch == 0:
                order = rng.permutation(n)
                bar.set_postfix_str(f"epoch {i // steps_per_epoch + 1}/{math.ceil(total / steps_per_epoch)}")
            idx = order[(i % steps_per_epoch) * batch_size:(i % steps_per_epoch + 1) * batch_size]
            x, y = global_batch((xtr[idx], ytr[idx]), sharding)
            params, opt, loss = step(params, opt, x, y, jax.random.fold_in(key, i))
            bar.update(1)
    views = xte.ndim == xtr.ndim + 1

    @jax.jit
    def predict(p, x):
        if views:  # [b, V, ...] -> one batch of b * V clips, probabilities averaged over the views
            b, v = x.shape[:2]
            x = x.reshape((b * v,) + x.shape[2:])
        logits = logits_of(p, x)
        probs = jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, axis=-1)
        return probs.reshape(b, v, -1).mean(1) if views else probs

    probs = batched_apply(predict, params, xte, mesh=mesh, rules=rules, batch_size=32, desc=f"{desc} test")
    out = {"final_train_loss": float(loss), "steps": total}
    if multilabel:
        out["mAP"] = mean_average_precision(probs, yte)
    else:
        out["top1"] = float(np.mean(np.argmax(probs, -1) == yte))
    return out


@register("media_finetune")
def media_finetune(model, options, ctx) -> dict:
    """End-to-end fine-tuning of the pre-trained encoder (``method.encoder``) on in-memory examples.

    Options: ``train_examples``, ``test_examples``, ``epochs``, ``batch_size``, ``lr``,
    ``layer_decay``, ``weight_decay``, ``warmup_epochs``, ``label_smoothing``, ``pool``,
    ``head_init_scale``, ``multi_view`` (video: test on ``data.test_clips x data.test_crops`` views),
    ``mask_t_prob`` / ``mask_f_prob`` (audio: time/frequency token dropping while training),
    ``random_baseline`` (also fine-tune a random-init encoder, default False).
    """
    if jax.process_count() > 1:
        raise NotImplementedError("the media fine-tune evaluator runs in one process (on all its devices)")
    xtr, ytr = take(ctx, ctx.train_source, options.get("train_examples", 2000), seed=2)
    modality = get_modality(ctx.method.modality)
    n_test = options.get("test_examples", 500)
    if options.get("multi_view", False) and hasattr(modality, "take_views"):
        idx = subset(len(ctx.eval_source), n_test, 3)
        with phase(f"reading {len(idx)} multi-view test examples"):
            xte, yte = modality.take_views(ctx.config, ctx.eval_source, idx)
    else:
        xte, yte = take(ctx, ctx.eval_source, n_test, seed=3)
    classes = options.get("num_classes") or (ytr.shape[1] if ytr.ndim == 2 else int(max(ytr.max(), yte.max()) + 1))
    kwargs = {k: options[k] for k in ("epochs", "batch_size", "lr", "layer_decay", "weight_decay", "warmup_epochs",
                                      "label_smoothing", "pool", "head_init_scale") if k in options}
    kwargs.update(num_classes=int(classes), train_mask_fn=_train_mask_fn(ctx, options), seed=ctx.config.seed,
                  mesh=ctx.mesh, rules=ctx.rules)
    out = finetune_arrays(ctx.method.encoder(model), xtr, ytr, xte, yte, desc="fine-tune (pre-trained)", **kwargs)
    if options.get("random_baseline", False):
        fresh = fresh_model(ctx.method, ctx.config.seed + RANDOM_INIT_SEED_OFFSET, ctx.mesh, ctx.rules)
        base = finetune_arrays(ctx.method.encoder(fresh), xtr, ytr, xte, yte, desc="fine-tune (random-init)",
                               **kwargs)
        out.update({f"random_init_{k}": v for k, v in base.items() if k in ("top1", "mAP")})
    metric = "mAP" if "mAP" in out else "top1"
    say(f"fine-tune ({len(xtr)} train / {len(xte)} test, {out['steps']} steps): {metric} "
        f"{100 * out[metric]:.1f}%" + (f" vs {100 * out['random_init_' + metric]:.1f}% random-init"
                                       if "random_init_" + metric in out else ""))
    return out


def _train_mask_fn(ctx, options) -> Any:
    """AudioMAE fine-tuning's time/frequency token dropping, when the options ask for it."""
    pt, pf = options.get("mask_t_prob", 0.0), options.get("mask_f_prob", 0.0)
    if not (pt or pf):
        return None
    from maskjax.masking.audio import time_freq_mask

    data = ctx.config.data
    patch = int(str(ctx.config.model.variant).split("/")[1])
    rows, cols = data.target_length // patch, data.num_mel_bins // patch
    return lambda key, batch: time_freq_mask(jax.random.split(key, batch), batch, rows, cols, pt, pf,
                                             order="finetune")
