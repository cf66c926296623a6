"""Paper recipes shared by several config files (the config files add docstrings and variants)."""

from __future__ import annotations

import ml_collections

from maskjax.config.loading import parse_arg
from maskjax.config.schema import base_config
from maskjax.config.smoke import smoke

# MAE fine-tuning recipes (FINETUNE.md, tuned for norm-pix checkpoints; specs §1(d)).
_FINETUNE = {"B": (100, 5e-4, 0.65, 0.1), "L": (50, 1e-3, 0.75, 0.2), "H": (50, 1e-3, 0.75, 0.3)}


def mae_imagenet_from_arg(variant: str, arg: str | None) -> ml_collections.ConfigDict:
    """Parses a config argument ("epochs=800|1600", "smoke") into :func:`mae_imagenet`."""
    args = parse_arg(arg, epochs=800, smoke=False)
    if args.epochs not in (800, 1600):
        raise ValueError(f"the paper recipes are 800 or 1600 epochs, got {args.epochs}")
    return mae_imagenet(variant, args.epochs, is_smoke=args.smoke)


def mae_imagenet(variant: str, epochs: int, *, is_smoke: bool = False) -> ml_collections.ConfigDict:
    """MAE pre-training on ImageNet-1K as ``main_pretrain.py`` + PRETRAIN.md run it.

    AdamW (0.9, 0.95), weight decay 0.05 (timm grouping), blr 1.5e-4 x 4096 / 256, 40 warmup
    epochs then half-cycle cosine to 0 per step, mask ratio 0.75, norm-pix target,
    RandomResizedCrop(224, scale=(0.2, 1), bicubic) + flip, decoder 512 x 8 x 16 heads.
    Data: TFDS ``imagenet2012`` prepared by the user (ArrayRecord); for an ImageFolder copy use
    ``--config.data.kind=folder --config.data.path=/data/imagenet --config.data.split=train
    --config.data.eval_split=val``.
    """
    c = base_config()
    c.model.variant = variant
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 512, 8, 16
    c.masking.ratio = 0.75
    c.loss.norm_pix = True
    c.data.kind = "tfds"
    c.data.name = "imagenet2012"
    c.data.split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = 224
    c.data.augment = "mae"
    c.data.num_workers = 8
    c.global_batch = 4096
    c.grad_accum = 1  # raise it when 4096 / data-parallel size does not fit in device memory
    c.epochs = epochs
    c.optim.base_lr = 1.5e-4
    c.optim.warmup_epochs = 40.0
    c.optim.weight_decay = 0.05
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.compute_dtype = "bfloat16"
    c.checkpoint.every_steps = 2000
    c.log_every_steps = 100
    c.evals.reconstruction = dict(type="reconstruction", num_images=8, stats="visible")
    c.evals.knn = dict(type="knn", every_steps=10000, train_examples=50000, test_examples=10000)
    # The paper's probe protocol; 90 epochs at batch 16384 is a job of its own, so it runs with
    # `maskjax eval --evals=linear_probe`, not automatically after pre-training.
    c.evals.linear_probe = dict(type="linear_probe", epochs=90, batch_size=16384, blr=0.1,
                                warmup_epochs=10, after_training=False)
    # FINETUNE.md per size: (epochs, blr, layer decay, drop path); batch 1024, warmup 5, min lr 1e-6.
    epochs_ft, blr_ft, decay_ft, drop_ft = _FINETUNE[variant.split("/")[0]]
    c.evals.finetune = dict(type="finetune", epochs=epochs_ft, batch_size=1024, blr=blr_ft,
                            layer_decay=decay_ft, drop_path=drop_ft, weight_decay=0.05, warmup_epochs=5,
                            min_lr=1e-6, mixup=0.8, cutmix=1.0, label_smoothing=0.1, pool="gap",
                            after_training=False)
    if is_smoke:
        smoke(c, global_batch=8, steps=2)
        c.data.num_workers = 0
        c.compute_dtype = "float32"
    return c


# The masked-image-modeling comparison on CIFAR-10 (docs/results/, the "mim_cifar" ledger table):
# every row gets this backbone, data, batch, optimiser and budget; a method's config adds only
# its own masking/target options (scaled to the 8x8 token grid) on top.
MIM_COMPARISON = dict(variant="Pico/4", image_size=32, global_batch=128, epochs=6, base_lr=1.5e-3,
                      warmup_epochs=1.0, weight_decay=0.05)


def mim_comparison(config: ml_collections.ConfigDict, *, epochs: int | None = None) -> ml_collections.ConfigDict:
    """Puts ``config`` on the shared CIFAR-10 comparison setup (:data:`MIM_COMPARISON`).

    The 10,000 bundled CIFAR-10 training images at 32x32, a ViT-Pico/4 encoder (64 tokens),
    batch 128 for ``epochs`` (default 6: the quick start's budget, about 470 steps), AdamW at the
    quick start's lr, and the converged linear probe plus kNN on the frozen features (all 10,000
    training / 2,000 test images). Model fields a method does not have are left to the method's
    config; ``config.model.variant`` is set when the config has one.
    """
    from maskjax.config.datasets import embedded_data

    setup = MIM_COMPARISON
    embedded_data(config, image_size=setup["image_size"])
    config.data.crop_pct = 1.0
    config.data.augment = "mae"
    if "model" in config and "variant" in config.model:
        config.model.variant = setup["variant"]
    config.global_batch = setup["global_batch"]
    config.epochs = epochs or setup["epochs"]
    config.total_steps = None
    config.optim.base_lr = setup["base_lr"]
    config.optim.lr_batch_denominator = 256  # a recipe's own rule (SimMIM's /512) would change the lr
    config.optim.min_lr = 0.0
    # One optimiser for every row (MAE's AdamW betas, no clipping): the rows differ only in what they
    # mask and predict, not in recipe-specific clipping (MaskFeat clips at 0.02) or betas.
    config.optim.name, config.optim.b1, config.optim.b2, config.optim.eps = "adamw", 0.9, 0.95, 1e-8
    config.optim.grad_clip = None
    config.optim.bias_correction = True
    if "no_weight_decay_names" in config.optim:
        config.optim.no_weight_decay_names = ()
    config.optim.warmup_epochs = setup["warmup_epochs"]
    config.optim.warmup_steps = None
    config.optim.weight_decay = setup["weight_decay"]
    config.optim.schedule = "cosine"
    config.checkpoint.every_steps = 500
    config.log_every_steps = 50
    config.evals = ml_collections.ConfigDict()
    # quick_probe reports the converged probe, kNN on the same features and both for a
    # random-init encoder (the baseline row's numbers come from every run).
    config.evals.probe = dict(type="quick_probe", train_examples=10000, test_examples=2000, knn=True)
    return config
