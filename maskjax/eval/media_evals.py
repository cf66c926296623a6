"""Evaluators of the video and audio families: a frozen-feature probe and end-to-end fine-tuning.

Both read examples through the method's modality (``Modality.take_examples``), so one evaluator
serves VideoMAE, VideoMAE V2, MAE-ST and AudioMAE. The encoder contract: ``encoder(x, mask=None)``
returns ``(tokens, aux)`` with ``aux["pooled"]`` (the mean of the patch tokens; VideoMAE and
AudioMAE fine-tune from mean pooling) and, where the model has one, ``aux["cls"]``.

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

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from maskjax.eval.evaluators import _say, subset
from maskjax.eval.linear_probe import fit_linear_probe
from maskjax.eval.registry import register
from maskjax.models.layers import layer_norm
from maskjax.train.layer_decay import layer_decay_adamw
from maskjax.train.optim import warmup_cosine


def _modality(ctx):
    from maskjax.data.modalities import get_modality
    from maskjax.methods import method_modality

    return get_modality(method_modality(ctx.config.method))


def take_split(ctx, source, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random subset of ``n`` examples of ``source`` with eval preprocessing."""
    idx = subset(len(source), n, seed)
    return _modality(ctx).take_examples(ctx.config, source, idx)


def pooled_features(encoder, inputs: np.ndarray, pool: str = "pooled", batch_size: int = 64) -> np.ndarray:
    """Frozen features ``aux[pool]`` ("pooled" = mean of patch tokens, or "cls") of ``inputs``."""
    fn = jax.jit(lambda enc, x: enc(x)[1][pool])
    out = [np.asarray(fn(encoder, jnp.asarray(inputs[i:i + batch_size])))
           for i in range(0, len(inputs), batch_size)]
    return np.concatenate(out, axis=0).astype(np.float32)


@register("feature_probe")
def feature_probe(model, options, ctx) -> dict:
    """Softmax regression on standardised frozen features, against a random-init encoder.

    Options: ``train_examples``, ``test_examples``, ``pool`` ("pooled" | "cls"), ``steps``,
    ``random_baseline`` (default True).
    """
    xtr, ytr = take_split(ctx, ctx.train_source, options.get("train_examples", 2000), seed=2)
    xte, yte = take_split(ctx, ctx.eval_source, options.get("test_examples", 500), seed=3)
    classes = int(max(ytr.max(), yte.max()) + 1)
    pool, steps = options.get("pool", "pooled"), options.get("steps", 500)
    enc = getattr(model, "encoder", model)
    out = {"top1": fit_linear_probe(pooled_features(enc, xtr, pool), ytr, pooled_features(enc, xte, pool), yte,
                                    classes, steps=steps)["test_accuracy"]}
    if options.get("random_baseline", True):
        renc = getattr(ctx.method.build(nnx.Rngs(params=jax.random.key(ctx.config.seed + 12345))), "encoder")
        out["random_init_top1"] = fit_linear_probe(
            pooled_features(renc, xtr, pool), ytr, pooled_features(renc, xte, pool), yte, classes,
            steps=steps)["test_accuracy"]
    _say(f"feature probe ({pool}, {len(ytr)} train / {len(yte)} test): top-1 {100 * out['top1']:.1f}%"
         + (f" vs {100 * out['random_init_top1']:.1f}% random-init" if "random_init_top1" in out else ""))
    return out


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


def finetune_arrays(encoder, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, *,
                    num_classes: int, epochs: float = 10, batch_size: int = 32, lr: float = 1e-3,
                    layer_decay: float = 0.75, weight_decay: float = 0.05, warmup_epochs: float = 1,
                    min_lr: float = 1e-6, label_smoothing: float = 0.1, pool: str = "pooled",
                    head_init_scale: float = 0.001, train_mask_fn=None, seed: int = 0) -> dict[str, float]:
    """Fine-tunes a copy of ``encoder`` + head on in-memory arrays; returns test metrics.

    ``ytr``/``yte`` are int labels [n] (softmax, top-1) or multi-hot [n, C] (BCE, mAP). ``xte`` may
    carry a view axis [n, V, ...]: predictions are then averaged over the views (softmax or
    sigmoid), VideoMAE's multi-view testing. ``train_mask_fn(key, batch) -> Mask`` drops tokens
    during training (AudioMAE's time/frequency masking); testing never masks.
    """
    multilabel = ytr.ndim == 2
    enc_graph, enc_state = nnx.split(encoder)
    model = PooledClassifier(nnx.merge(enc_graph, jax.tree.map(jnp.array, enc_state)),
                             _width(encoder), num_classes, pool=pool, head_init_scale=head_init_scale,
                             rngs=nnx.Rngs(params=jax.random.key(seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n = len(xtr)
    batch_size = max(1, min(batch_size, n))
    steps_per_epoch = max(n // batch_size, 1)
    total = max(int(epochs * steps_per_epoch), 1)
    schedule = warmup_cosine(lr, int(warmup_epochs * steps_per_epoch), total, min_lr)
    tx = layer_decay_adamw(schedule, params, len(encoder.blocks), layer_decay, weight_decay)
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

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed + 1)
    loss = jnp.nan
    for i in range(total):
        if i % steps_per_epoch == 0:
            order = rng.permutation(n)
        idx = order[(i % steps_per_epoch) * batch_size:(i % steps_per_epoch + 1) * batch_size]
        params, opt, loss = step(params, opt, jnp.asarray(xtr[idx]), jnp.asarray(ytr[idx]), jax.random.fold_in(key, i))
    probs = _predict(lambda x: logits_of(params, x), xte, multilabel, views=xte.ndim == xtr.ndim + 1)
    out = {"final_train_loss": float(loss), "steps": total}
    if multilabel:
        out["mAP"] = mean_average_precision(probs, yte)
    else:
        out["top1"] = float(np.mean(np.argmax(probs, -1) == yte))
    return out


def _predict(apply, xte: np.ndarray, multilabel: bool, views: bool, batch_size: int = 32) -> np.ndarray:
    fn = jax.jit(lambda x: jax.nn.sigmoid(apply(x)) if multilabel else jax.nn.softmax(apply(x), axis=-1))
    out = []
    for i in range(0, len(xte), batch_size):
        chunk = xte[i:i + batch_size]
        if views:
            b, v = chunk.shape[:2]
            probs = np.asarray(fn(jnp.asarray(chunk.reshape((b * v,) + chunk.shape[2:]))))
            out.append(probs.reshape(b, v, -1).mean(1))
        else:
            out.append(np.asarray(fn(jnp.asarray(chunk))))
    return np.concatenate(out, 0)


def _width(encoder) -> int:
    for name in ("width", "embed_dim", "dim"):
        if hasattr(encoder, name):
            return int(getattr(encoder, name))
    raise ValueError("cannot tell the encoder's width (expected a `width` attribute)")


@register("media_finetune")
def media_finetune(model, options, ctx) -> dict:
    """End-to-end fine-tuning of the pre-trained video/audio encoder (module docstring).

    Options: ``train_examples``, ``test_examples``, ``epochs``, ``batch_size``, ``lr``,
    ``layer_decay``, ``weight_decay``, ``warmup_epochs``, ``label_smoothing``, ``pool``,
    ``head_init_scale``, ``multi_view`` (video: test on ``data.test_clips x data.test_crops`` views),
    ``mask_t_prob`` / ``mask_f_prob`` (audio: time/frequency token dropping while training),
    ``random_baseline`` (also fine-tune a random-init encoder, default False).
    """
    if jax.process_count() > 1:
        raise NotImplementedError("the media fine-tune evaluator runs on one host")
    xtr, ytr = take_split(ctx, ctx.train_source, options.get("train_examples", 2000), seed=2)
    modality = _modality(ctx)
    n_test = options.get("test_examples", 500)
    if options.get("multi_view", False) and hasattr(modality, "take_views"):
        idx = subset(len(ctx.eval_source), n_test, 3)
        xte, yte = modality.take_views(ctx.config, ctx.eval_source, idx)
    else:
        xte, yte = take_split(ctx, ctx.eval_source, n_test, seed=3)
    classes = options.get("num_classes") or (ytr.shape[1] if ytr.ndim == 2 else int(max(ytr.max(), yte.max()) + 1))
    kwargs = {k: options[k] for k in ("epochs", "batch_size", "lr", "layer_decay", "weight_decay", "warmup_epochs",
                                      "label_smoothing", "pool", "head_init_scale") if k in options}
    mask_fn = _train_mask_fn(ctx, options)
    enc = getattr(model, "encoder", model)
    out = finetune_arrays(enc, xtr, ytr, xte, yte, num_classes=int(classes), train_mask_fn=mask_fn,
                          seed=ctx.config.seed, **kwargs)
    if options.get("random_baseline", False):
        renc = ctx.method.build(nnx.Rngs(params=jax.random.key(ctx.config.seed + 12345))).encoder
        base = finetune_arrays(renc, xtr, ytr, xte, yte, num_classes=int(classes), train_mask_fn=mask_fn,
                               seed=ctx.config.seed, **kwargs)
        out.update({f"random_init_{k}": v for k, v in base.items() if k in ("top1", "mAP")})
    metric = "mAP" if "mAP" in out else "top1"
    _say(f"fine-tune ({len(xtr)} train / {len(xte)} test, {out['steps']} steps): {metric} "
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
