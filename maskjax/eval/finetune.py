"""MAE's end-to-end fine-tuning protocol (``main_finetune.py``, FINETUNE.md; specs §1(d)).

The pre-trained encoder initialises a :class:`ViTClassifier` (global pool + fc_norm by
default, head trunc-normal 2e-5); AdamW (0.9, 0.999) with layer-wise lr decay, weight decay
0.05 (none on 1-D parameters, pos_embed and cls_token), lr = blr x batch / 256, warmup then
cosine to min_lr per step; drop path; mixup 0.8 / cutmix 1.0 with label smoothing 0.1 folded
into the soft targets; RandomResizedCrop(0.08, 1) + flip + RandAugment(m9, mstd 0.5) + random
erasing 0.25; evaluation: resize + center crop, top-1.

This evaluator is data-parallel over the devices of one host (parameters replicated, batch
split over the local devices); several hosts and FSDP-sharded fine-tuning need the sharded
trainer, and a multi-process run is refused with a message rather than silently wrong.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from maskjax.data.pipeline import make_image_pipeline, take_arrays
from maskjax.data.sources import maybe_subset
from maskjax.eval.mixup import mixup_cutmix, soft_cross_entropy
from maskjax.models.classifier import ViTClassifier
from maskjax.optim.layer_decay import layer_decay_adamw
from maskjax.optim.schedules import peak_lr, warmup_cosine
from maskjax.core.trees import to_tree
from maskjax.progress import progress


def load_encoder_params(params: dict, encoder_params: dict) -> tuple[dict, list[str]]:
    """Copies matching encoder weights into a classifier's ``params["encoder"]``.

    Returns the new params and the list of classifier encoder paths that were *not* loaded
    (e.g. the learned pos_embed, which starts from the same sin-cos values anyway).
    """
    missing: list[str] = []

    def merge(dst, src, prefix):
        out = {}
        for key, value in dst.items():
            path = f"{prefix}/{key}"
            if isinstance(value, dict):
                out[key] = merge(value, src.get(key, {}) if isinstance(src, dict) else {}, path)
            elif isinstance(src, dict) and key in src and tuple(src[key].shape) == tuple(value.shape):
                out[key] = jnp.asarray(src[key], value.dtype)
            else:
                missing.append(path)
                out[key] = value
        return out

    params = dict(params)
    params["encoder"] = merge(params["encoder"], encoder_params, "encoder")
    return params, missing


def mae_finetune(encoder: Any, train_source, eval_source, *, image_size: int, num_classes: int,
                 epochs: int = 100, batch_size: int = 1024, blr: float = 5e-4, layer_decay: float = 0.65,
                 drop_path: float = 0.1, weight_decay: float = 0.05, warmup_epochs: float = 5,
                 min_lr: float = 1e-6, mixup: float = 0.8, cutmix: float = 1.0, label_smoothing: float = 0.1,
                 pool: str = "gap", crop_pct: float = 0.875, augment: str = "finetune", seed: int = 0,
                 max_eval: int | None = None, train_examples: int | None = None, variant: str | None = None,
                 build_encoder: Callable[..., Any] | None = None) -> dict[str, float]:
    """Fine-tunes a classifier initialised from ``encoder`` (a maskjax ViT); returns top-1.

    ``build_encoder(image_size=, drop_path=, rngs=)``: a fresh encoder of the method's own
    fine-tuning architecture (:meth:`maskjax.methods.base.Method.finetune_encoder`), or None for
    maskjax's ViT of ``variant``; an encoder with ``adapt_pretrained(tree)`` maps the pre-trained
    parameter tree onto its layout first (e.g. a shared relative position bias copied per block).
    """
    train_source = maybe_subset(train_source, train_examples, seed)
    eval_source = maybe_subset(eval_source, max_eval, seed + 1)
    if jax.process_count() > 1:
        raise NotImplementedError("the fine-tune evaluator runs on one host; run `maskjax eval --evals ...` "
                                  "in a single process (it uses all local devices)")
    variant = variant or _variant_of(encoder)
    rngs = nnx.Rngs(params=jax.random.key(seed))
    custom = build_encoder(image_size=image_size, drop_path=drop_path, rngs=rngs) if build_encoder else None
    model = ViTClassifier(variant, image_size=image_size, num_classes=num_classes, pool=pool,
                          drop_path=drop_path, rngs=rngs, encoder=custom)
    graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)
    pretrained = to_tree(nnx.state(encoder, nnx.Param))
    if hasattr(model.encoder, "adapt_pretrained"):
        pretrained = model.encoder.adapt_pretrained(pretrained)
    params, missing = load_encoder_params(to_tree(params_state), pretrained)
    n_train = len(train_source)
    batch_size = min(batch_size, n_train - n_train % 2)
    steps_per_epoch = n_train // batch_size
    total = max(int(epochs * steps_per_epoch), 1)
    schedule = warmup_cosine(peak_lr(blr, batch_size), int(warmup_epochs * steps_per_epoch), total, min_lr)
    tx = layer_decay_adamw(schedule, params, model.encoder.depth, layer_decay, weight_decay)
    template = params_state

    def apply(p, images, drop_key=None):
        state = jax.tree.map(lambda x: x, template)
        nnx.replace_by_pure_dict(state, p)
        return nnx.merge(graphdef, state, rest)(images, drop_key=drop_key)[0]

    @jax.jit
    def step(p, opt, images, labels, key):
        k_mix, k_drop = jax.random.split(key)
        images, targets = mixup_cutmix(k_mix, images, labels, num_classes, mixup_alpha=mixup,
                                       cutmix_alpha=cutmix, label_smoothing=label_smoothing)
        loss, grads = jax.value_and_grad(lambda q: soft_cross_entropy(apply(q, images, k_drop), targets))(p)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    # Data parallel over the local devices: replicated state, batch split along its first axis.
    mesh = jax.make_mesh((jax.local_device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    shard = lambda x: jax.device_put(x, split if x.shape[0] % mesh.size == 0 else replicated)
    params = jax.device_put(params, replicated)
    opt = jax.device_put(tx.init(params), replicated)
    ds = make_image_pipeline(train_source, global_batch=batch_size, image_size=image_size, train=True, seed=seed,
                             augment=augment, crop_pct=crop_pct, process_index=0, process_count=1,
                             num_epochs=epochs)
    base = jax.random.key(seed + 1)
    loss = jnp.nan
    # Steps are counted as dispatched (no sync for progress); the input pipeline paces the loop.
    for i, batch in enumerate(progress(ds, total=total, desc="MAE fine-tune", unit="step")):
        params, opt, loss = step(params, opt, shard(batch["image"]), shard(batch["label"]),
                                 jax.random.fold_in(base, i))
    predict = jax.jit(lambda p, x: jnp.argmax(apply(p, x), -1))
    n_eval = len(eval_source)
    correct = 0
    with progress(total=n_eval, desc="MAE fine-tune eval", unit="ex") as bar:
        for start in range(0, n_eval, 256):
            xe, ye = take_arrays(eval_source, range(start, min(start + 256, n_eval)), image_size, crop_pct=crop_pct)
            correct += int(np.sum(np.asarray(predict(params, shard(xe))) == ye))
            bar.update(len(ye))
    return {"top1": correct / n_eval, "final_train_loss": float(loss), "steps": total,
            "not_loaded": len(missing)}


def _variant_of(encoder) -> str:
    from maskjax.models.vit import VIT_SIZES

    for name, size in VIT_SIZES.items():
        if (size.width, size.depth) == (encoder.width, encoder.depth):
            return f"{name}/{encoder.patch_size}"
    raise ValueError("cannot tell the encoder's variant; pass variant=")
