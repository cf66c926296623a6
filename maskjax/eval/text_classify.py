"""Sequence-classification fine-tuning of pre-trained text encoders (BERT ``run_classifier.py``).

Recipe (google-research/bert; ELECTRA's head optional): the pre-trained encoder plus a head on
the first ([CLS]) token, every weight trained; AdamW without bias correction (0.9, 0.999,
eps 1e-6), weight decay 0.01 except LayerNorm parameters and biases, gradients clipped to global
norm 1.0, lr linearly warmed up over the first 10 % of the steps and then decayed linearly to 0;
dropout 0.1; cross-entropy (MSE for STS-B-style regression); optional ELECTRA-style layer-wise
lr decay. Evaluation is deterministic (no dropout).

Parallelism: data-parallel over the local devices of ONE host (parameters replicated, each batch
split along its first axis); a multi-process run is refused. The encoder passed in is copied
(``nnx.clone`` plus fresh buffers), never modified.

Evaluators: ``glue`` (a prepared TFDS GLUE task) and ``text_classify`` (our WikiText word-order
proxy, :func:`maskjax.data.text.glue.wikitext_order_task`), both with an optional comparison
against a randomly initialised encoder of the same config.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from maskjax.eval.features import say
from maskjax.eval.registry import register
from maskjax.core.keys import example_keys
from maskjax.models.bert import activation, dropout, keep_masks, split_keys, tdense
from maskjax.optim.layer_decay import path_strings, scale_by_tree
from maskjax.optim.optimizers import make_optimizer
from maskjax.optim.schedules import warmup_linear
from maskjax.core.trees import to_tree
from maskjax.progress import progress

HEADS = ("bert", "electra")
METRICS = ("accuracy", "mcc", "f1", "pearson_spearman")
ARRAY_FIELDS = ("input_ids", "segment_ids", "input_mask")


class TextClassifier(nnx.Module):
    """A pre-trained encoder with a sequence-classification head on the [CLS] position.

    ``head="bert"`` (``run_classifier.py``): pooled = the encoder's own pooler output when it has
    one, else ``tanh(Dense(h[:, 0]))`` with a new pooler; then dropout and Dense(num_labels).
    ``head="electra"`` (Hugging Face ``ElectraClassificationHead``): dropout -> Dense(H, H) ->
    exact GELU -> dropout -> Dense(num_labels) on ``h[:, 0]``. New weights are truncated-normal
    0.02 with zero biases. ``__call__`` returns float32 logits [B, num_labels]; dropout
    (encoder's and head's) is active only when per-example ``dropout_keys`` [B] are given.
    """

    def __init__(self, encoder: nnx.Module, num_labels: int, *, rngs: nnx.Rngs, head: str = "bert",
                 dropout_rate: float = 0.1):
        if head not in HEADS:
            raise ValueError(f"unknown classifier head {head!r}; known: {HEADS}")
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
        h = encoder.cfg.hidden
        dtype = getattr(encoder.embeddings, "dtype", None)
        self.encoder = encoder
        self.head = head
        self.dropout_rate = float(dropout_rate)
        has_pooler = getattr(encoder.transformer, "pooler", None) is not None
        new_pooler = head == "bert" and not has_pooler
        self.pooler = tdense(h, h, ("embed", "embed"), rngs=rngs, dtype=dtype) if new_pooler else None
        self.dense = tdense(h, h, ("embed", "embed"), rngs=rngs, dtype=dtype) if head == "electra" else None
        self.out = tdense(h, num_labels, ("embed", None), rngs=rngs, dtype=dtype)

    def __call__(self, input_ids, segment_ids=None, input_mask=None, *, dropout_keys=None) -> jax.Array:
        enc_keys = head_keys = None
        if dropout_keys is not None:
            pair = split_keys(dropout_keys, 2)
            enc_keys, head_keys = pair[:, 0], pair[:, 1]
        hidden, aux = self.encoder(input_ids, segment_ids, input_mask, dropout_keys=enc_keys)
        width = hidden.shape[-1]
        keep1, keep2 = keep_masks(head_keys, (self.dropout_rate, self.dropout_rate), ((width,), (width,)))
        if self.head == "bert":
            pooled = aux["pooled"] if "pooled" in aux else jnp.tanh(self.pooler(hidden[:, 0]))
            x = dropout(pooled, keep1, self.dropout_rate)
        else:
            x = dropout(hidden[:, 0], keep1, self.dropout_rate)
            x = dropout(activation("gelu")(self.dense(x)), keep2, self.dropout_rate)
        return self.out(x).astype(jnp.float32)


# --- metrics (numpy) ---------------------------------------------------------------------------

def accuracy(labels, preds) -> float:
    """Fraction of equal entries."""
    return float(np.mean(np.asarray(labels) == np.asarray(preds)))


def matthews_corr(labels, preds) -> float:
    """Matthews correlation (multi-class form, as sklearn's ``matthews_corrcoef``); 0 when undefined."""
    labels, preds = np.asarray(labels).ravel(), np.asarray(preds).ravel()
    classes, inv = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    y, p = inv[: len(labels)], inv[len(labels):]
    conf = np.zeros((len(classes), len(classes)), np.float64)
    np.add.at(conf, (y, p), 1.0)
    t_k, p_k = conf.sum(1), conf.sum(0)
    c, s = np.trace(conf), conf.sum()
    denom = math.sqrt((s * s - p_k @ p_k) * (s * s - t_k @ t_k))
    return 0.0 if denom == 0 else float((c * s - t_k @ p_k) / denom)


def f1_binary(labels, preds, positive: int = 1) -> float:
    """F1 of the ``positive`` class, ``2 tp / (2 tp + fp + fn)`` (0 when there are no positives at all)."""
    labels, preds = np.asarray(labels) == positive, np.asarray(preds) == positive
    tp = float(np.sum(labels & preds))
    denom = 2 * tp + float(np.sum(~labels & preds)) + float(np.sum(labels & ~preds))
    return 0.0 if denom == 0 else 2 * tp / denom


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either input is constant (as scipy)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float("nan") if denom == 0 else float(x @ y / denom)


def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy ``rankdata(method="average")``)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inv.ravel(), ranks)
    return (sums / counts)[inv.ravel()]


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson of average ranks."""
    return pearson(rankdata(x), rankdata(y))


def task_metrics(metric: str, labels, outputs) -> dict[str, float]:
    """The metrics of a task kind from labels and predictions (class ids, or scores for regression).

    ``accuracy``; ``mcc`` (+accuracy); ``f1`` (+accuracy and their mean, GLUE's MRPC/QQP score);
    ``pearson_spearman`` (+their mean).
    """
    if metric == "pearson_spearman":
        p, s = pearson(outputs, labels), spearman(outputs, labels)
        return {"pearson": p, "spearman": s, "corr": (p + s) / 2}
    out = {"accuracy": accuracy(labels, outputs)}
    if metric == "mcc":
        out["mcc"] = matthews_corr(labels, outputs)
    elif metric == "f1":
        out["f1"] = f1_binary(labels, outputs)
        out["acc_and_f1"] = (out["f1"] + out["accuracy"]) / 2
    elif metric != "accuracy":
        raise ValueError(f"unknown metric {metric!r}; known: {METRICS}")
    return out


# --- fine-tuning -------------------------------------------------------------------------------

def text_layer_scales(params: Any, num_layers: int, decay: float | None) -> Any:
    """Per-parameter lr multipliers ``decay ** (num_layers + 1 - depth)`` (ELECTRA's layer-wise decay).

    Depth: embeddings (and ``embeddings_project``) 0, transformer layer k -> k + 1, everything
    else (poolers, the classification head) num_layers + 1, i.e. multiplier 1. ``decay`` None
    or 1 gives 1 everywhere.
    """
    def scale(path, _):
        names = path_strings(path)
        depth = num_layers + 1
        if "embeddings" in names or "embeddings_project" in names:
            depth = 0
        for i, n in enumerate(names[:-1]):
            if n == "layers" and names[i + 1].isdigit():
                depth = int(names[i + 1]) + 1
        return 1.0 if not decay else float(decay ** (num_layers + 1 - depth))

    return jax.tree_util.tree_map_with_path(scale, params)


def _check_arrays(arrays: Mapping, name: str, vocab_size: int) -> int:
    missing = [k for k in (*ARRAY_FIELDS, "label") if k not in arrays]
    if missing:
        raise ValueError(f"{name} lacks {missing}; expected {ARRAY_FIELDS + ('label',)}")
    n = len(arrays["label"])
    if n == 0:
        raise ValueError(f"{name} is empty")
    top = int(np.max(arrays["input_ids"]))
    if top >= vocab_size:
        raise ValueError(f"{name} has token id {top} but the encoder's vocabulary has {vocab_size} entries")
    return n


def finetune_classifier(encoder: nnx.Module, train_arrays: Mapping, eval_arrays: Mapping, *, num_labels: int,
                        epochs: float = 3, batch_size: int = 32, lr: float = 2e-5, warmup_fraction: float = 0.1,
                        weight_decay: float = 0.01, layer_decay: float | None = None, seed: int = 0,
                        metric: str = "accuracy", head: str = "bert", dropout_rate: float = 0.1,
                        bias_correction: bool = False, grad_clip: float | None = 1.0,
                        eval_batch_size: int = 128, desc: str = "fine-tune") -> dict[str, float]:
    """Fine-tunes a copy of ``encoder`` (BertEncoder-like) + a :class:`TextClassifier` head.

    ``train_arrays``/``eval_arrays``: dicts of ``input_ids``, ``segment_ids``, ``input_mask``
    [N, L] and ``label`` [N] (int class ids; float scores when ``num_labels == 1``).
    ``eval_arrays`` may instead map split names to such dicts (MNLI matched/mismatched); the
    metrics are then prefixed ``"<split>/"``. Training shuffles every epoch and drops the last
    partial batch (as ``run_classifier.py``); ``epochs`` may be fractional. Returns the task
    metrics (:func:`task_metrics` for ``metric``) plus ``final_train_loss`` and ``steps``.
    ``desc`` names the progress shown (steps, then each eval split's examples).
    """
    if jax.process_count() > 1:
        raise NotImplementedError("finetune_classifier runs on one host (data-parallel over its local devices); "
                                  "run the evaluator in a single process")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {METRICS}")
    regression = num_labels == 1
    if regression != (metric == "pearson_spearman"):
        raise ValueError(f"num_labels={num_labels} with metric {metric!r}: regression (num_labels=1) is scored "
                         "with 'pearson_spearman' and classification with the other metrics")
    vocab = encoder.cfg.vocab_size
    n_train = _check_arrays(train_arrays, "train_arrays", vocab)
    evals = {"": eval_arrays} if "label" in eval_arrays else dict(eval_arrays)
    for name, arr in evals.items():
        _check_arrays(arr, f"eval_arrays[{name!r}]" if name else "eval_arrays", vocab)

    # Copy the encoder (and, below, its arrays) so nothing the caller holds is touched or donated.
    model = TextClassifier(nnx.clone(encoder), num_labels, head=head, dropout_rate=dropout_rate,
                           rngs=nnx.Rngs(params=jax.random.key(seed)))
    graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), to_tree(params_state))

    batch_size = max(1, min(int(batch_size), n_train))
    steps_per_epoch = n_train // batch_size
    total = max(int(round(epochs * steps_per_epoch)), 1)
    # The lr of every step is computed here and passed to the step as an argument (the optimiser
    # runs at unit lr and the step scales its update, which scales the decoupled weight decay
    # too, as optax's lr would): lr sweeps and different step counts then share one program.
    lrs = np.asarray(warmup_linear(lr, int(warmup_fraction * total), total)(jnp.arange(total)), np.float32)
    optim = ml_collections.ConfigDict(dict(name="adamw", b1=0.9, b2=0.999, eps=1e-6, weight_decay=weight_decay,
                                           bias_correction=bias_correction, grad_clip=grad_clip))
    tx = make_optimizer(optim, lambda count: 1.0)
    if layer_decay:
        # Multiplying the final update scales the lr (and the decoupled decay) per parameter.
        tx = optax.chain(tx, scale_by_tree(text_layer_scales(params, encoder.cfg.layers, layer_decay)))

    def logits_fn(p, batch, keys=None):
        state = jax.tree.map(lambda x: x, params_state)
        nnx.replace_by_pure_dict(state, p)
        clf = nnx.merge(graphdef, state, rest)
        return clf(batch["input_ids"], batch["segment_ids"], batch["input_mask"], dropout_keys=keys)

    def loss_fn(p, batch, keys):
        logits = logits_fn(p, batch, keys)
        if regression:
            return jnp.mean(jnp.square(logits[:, 0] - batch["label"].astype(jnp.float32)))
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))

    def step(p, opt, batch, base, i, step_lr):
        # The key is an argument, not a constant, so runs that differ only in seed share one program.
        loss, grads = jax.value_and_grad(loss_fn)(p, batch, example_keys(base, i, batch_size))
        updates, opt = tx.update(grads, opt, p)
        updates = jax.tree.map(lambda u: u * step_lr, updates)
        return optax.apply_updates(p, updates), opt, loss

    # Data parallel over the local devices: replicated state, batch split along its first axis.
    mesh = jax.make_mesh((jax.local_device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    shard = lambda x: jax.device_put(x, split if x.shape[0] % mesh.size == 0 else replicated)  # noqa: E731
    params = jax.device_put(params, replicated)
    opt = jax.device_put(tx.init(params), replicated)
    train_step = jax.jit(step, donate_argnums=(0, 1))

    fields = (*ARRAY_FIELDS, "label")
    train = {k: np.asarray(train_arrays[k]) for k in fields}
    rng = np.random.default_rng(seed)
    base = jax.random.key(seed + 1)
    loss = jnp.nan
    # Steps are counted as dispatched: progress never waits for the device.
    with progress(total=total, desc=desc, unit="step") as bar:
        for i in range(total):
            if i % steps_per_epoch == 0:
                order = rng.permutation(n_train)
                bar.set_postfix_str(f"epoch {i // steps_per_epoch + 1}/{math.ceil(total / steps_per_epoch)}")
            idx = order[(i % steps_per_epoch) * batch_size:(i % steps_per_epoch + 1) * batch_size]
            batch = {k: shard(v[idx]) for k, v in train.items()}
            params, opt, loss = train_step(params, opt, batch, base, jnp.asarray(i, jnp.int32), lrs[i])
            bar.update(1)

    predict = jax.jit(lambda p, b: logits_fn(p, b))
    out: dict[str, float] = {}
    for name, arr in evals.items():
        outputs = _predict(predict, params, arr, eval_batch_size, shard, regression,
                           desc=f"{desc} eval" + (f" ({name})" if name else ""))
        prefix = f"{name}/" if name else ""
        out.update({prefix + k: v for k, v in task_metrics(metric, np.asarray(arr["label"]), outputs).items()})
    out.update(final_train_loss=float(loss), steps=total, train_examples=n_train)
    return out


def _predict(predict, params, arrays: Mapping, batch_size: int, shard, regression: bool,
             desc: str = "predict") -> np.ndarray:
    """Class ids (or scores) for every row; the last batch is padded so one program serves all."""
    n = len(arrays["label"])
    batch_size = min(batch_size, n)
    outs = []
    with progress(total=n, desc=desc, unit="ex") as bar:
        for start in range(0, n, batch_size):
            rows = np.arange(start, start + batch_size) % n  # wraps around: padding rows are discarded
            logits = np.asarray(predict(params, {k: shard(np.asarray(arrays[k])[rows]) for k in ARRAY_FIELDS}))
            outs.append(logits[: min(batch_size, n - start)])
            bar.update(len(outs[-1]))
    logits = np.concatenate(outs)
    return logits[:, 0] if regression else np.argmax(logits, -1)


# --- evaluators --------------------------------------------------------------------------------

FINETUNE_OPTIONS = ("epochs", "batch_size", "lr", "warmup_fraction", "weight_decay", "layer_decay", "head")


def _finetune_both(model, options, ctx, train, test, *, num_labels: int, metric: str) -> dict:
    """Fine-tunes the pre-trained encoder and, with ``random_init``, a freshly initialised one."""
    kwargs = {k: options[k] for k in FINETUNE_OPTIONS if k in options}
    seed = int(options.get("seed", ctx.config.seed))
    out = finetune_classifier(ctx.method.encoder(model), train, test, num_labels=num_labels, metric=metric,
                              seed=seed, desc="fine-tune (pre-trained)", **kwargs)
    if options.get("random_init", False):
        fresh = ctx.method.build(nnx.Rngs(params=jax.random.key(ctx.config.seed + 12345)))
        base = finetune_classifier(ctx.method.encoder(fresh), train, test, num_labels=num_labels, metric=metric,
                                   seed=seed, desc="fine-tune (random-init)", **kwargs)
        out.update({f"random_init_{k}": v for k, v in base.items() if k not in ("steps", "train_examples")})
    return out


def _tokenizer(ctx):
    from maskjax.data.text import load_tokenizer

    path = ctx.config.data.get("vocab_path")
    if not path:
        raise ValueError("text classification needs data.vocab_path (the pre-training vocabulary)")
    return load_tokenizer(path, lowercase=ctx.config.data.get("lowercase", True))


def _summary(out: dict, keys: tuple[str, ...]) -> str:
    shown = [k for k in out if any(k == m or k.endswith("/" + m) for m in keys)]
    text = ", ".join(f"{k} {out[k]:.4f}" for k in shown)
    base = [k for k in out if k.startswith("random_init_") and k.removeprefix("random_init_") in shown]
    if base:
        text += " vs random-init " + ", ".join(f"{k.removeprefix('random_init_')} {out[k]:.4f}" for k in base)
    return text


@register("glue")
def glue_evaluator(model, options, ctx) -> dict:
    """Fine-tunes on a prepared TFDS GLUE task (``options.task``) and scores its eval split(s).

    Options: ``task`` (required), ``data_dir``, ``seq_len`` (128), ``epochs`` (3), ``lr``
    (2e-5), ``batch_size`` (32), ``max_train_examples``, ``max_eval_examples``, ``layer_decay``,
    ``head``, ``random_init`` (also fine-tune a freshly initialised encoder).
    """
    from maskjax.data.text.glue import glue_task, load_glue

    if not options.get("task"):
        raise ValueError("evaluator 'glue' needs options.task (one of the GLUE task names)")
    task = glue_task(options.task)
    tok, seq_len, data_dir = _tokenizer(ctx), int(options.get("seq_len", 128)), options.get("data_dir")
    train = load_glue(task.name, "train", tok, seq_len, data_dir, max_examples=options.get("max_train_examples"),
                      seed=ctx.config.seed)
    evals = {s: load_glue(task.name, s, tok, seq_len, data_dir, max_examples=options.get("max_eval_examples"),
                          seed=ctx.config.seed + 1) for s in task.eval_splits}
    out = _finetune_both(model, options, ctx, train, evals if len(evals) > 1 else evals[task.eval_splits[0]],
                         num_labels=task.num_labels, metric=task.metric)
    say(f"GLUE {task.name} ({len(train['label'])} train examples, {out['steps']} steps): "
         + _summary(out, ("accuracy", "mcc", "f1", "pearson", "spearman")))
    return out


@register("text_classify")
def text_classify_evaluator(model, options, ctx) -> dict:
    """Fine-tunes on OUR WikiText word-order proxy task (original vs. words swapped; not GLUE).

    Options: ``path`` (default ``data.eval_path``), ``n_train`` (2000), ``n_test`` (500),
    ``seq_len`` (64), ``epochs`` (3), ``lr`` (2e-5), ``batch_size`` (32), ``layer_decay``,
    ``head``, ``random_init``. Returns accuracy and MCC.
    """
    from maskjax.data.text.glue import wikitext_order_task

    path = options.get("path") or ctx.config.data.get("eval_path")
    if not path:
        raise ValueError("evaluator 'text_classify' needs options.path or data.eval_path (a WikiText-style file)")
    train, test = wikitext_order_task(path, _tokenizer(ctx), seq_len=int(options.get("seq_len", 64)),
                                      n_train=int(options.get("n_train", 2000)),
                                      n_test=int(options.get("n_test", 500)), seed=int(options.get("seed", 0)))
    out = _finetune_both(model, options, ctx, train, test, num_labels=2, metric="mcc")
    say(f"word-order proxy ({len(train['label'])} train / {len(test['label'])} test sentences, "
         f"{out['steps']} steps): " + _summary(out, ("accuracy", "mcc")))
    return out
