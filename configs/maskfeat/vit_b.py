"""MaskFeat ViT-B/16 on ImageNet-1K: the official HOG pre-training recipe (specs section 4).

Source: facebookresearch/SlowFast (commit 287ec00), ``configs/masked_ssl/in1k_VIT_B_MaskFeat_PT.yaml``
and ``_FT.yaml``, ``projects/maskfeat/README.md``; paper: Wei et al., "Masked Feature Prediction
for Self-Supervised Visual Pre-Training", CVPR 2022. Block-wise masks at ratio 0.4 (78 of 196
tokens at most, blocks of at least 15), masked tokens replaced by a mask token, HOG targets
(9 bins, 8x8 cells, 108 values per token) regressed with MSE on the masked tokens from the last
block through LayerNorm + Linear. ViT-B/16 with a learned position embedding and a cls token,
drop path 0. AdamW (0.9, 0.999), wd 0.05 (none on 1-D parameters), lr 2e-4 x batch / 256, 30
warm-up epochs then cosine to 1e-6 x batch / 256, gradient clipping at L2 norm **0.02**.

Command (data prepared as TFDS imagenet2012 ArrayRecord, as the MAE recipes):
  maskjax train --config configs/maskfeat/vit_b.py --workdir gs://BUCKET/maskfeat_vit_b
  maskjax eval --config configs/maskfeat/vit_b.py --workdir gs://BUCKET/maskfeat_vit_b --evals finetune
Hardware of the reference: SlowFast runs of 8 GPUs per machine x 32 images (``BATCH_SIZE: 256`` per
machine); the number of machines of the released run is not stated. ``global_batch`` 2048 (8
machines) is an assumption [unconfirmed]; the lr follows it linearly as SlowFast's
``BASE_LR_SCALE_NUM_SHARDS`` does (lr, warm-up start and end lr x machines).
Expected (the official README's number, not a maskjax measurement): ImageNet-1K fine-tune top-1
**84.0** after 1600 pre-training epochs (the released checkpoint) and the fine-tuning recipe below.

Arguments: ``epochs=1600`` (default: the released checkpoint) or ``epochs=300`` (the yaml's
MAX_EPOCH); ``smoke`` (this model, two CPU steps on the bundled images); ``cifar`` (the shared
CIFAR-10 comparison, ``maskjax.config.mim_comparison``); ``cifar,smoke``.

Known differences: the warm-up starts at 0, not WARMUP_START_LR 1e-6 x machines; the pre-training
crop is the official RandomResizedCrop(scale=(0.5, 1), aspect (0.75, 1.333)) + flip
(``data.augment="maskfeat"``);
maskjax's AdamW decays pos_embed and cls_token (3-D), as the official ``ZERO_DECAY_POS_CLS: False``
does. Model-side differences are listed in maskjax/methods/maskfeat.py.
"""

import ml_collections
from ml_collections import config_dict

from maskjax.config import method_config, mim_comparison, parse_arg, smoke

VARIANT = "B/16"
GLOBAL_BATCH = 2048
# in1k_VIT_B_MaskFeat_FT.yaml: 100 epochs, 20 warm-up, BASE_LR 2e-3 at 512 images per machine
# (blr 1e-3 per 256), layer decay 0.65, drop path 0.1, mean pooling, RandAug m9-mstd0.5, colour
# jitter 0.4, random erasing 0.25, mixup 0.8 / cutmix 1.0, smoothing 0.1, end lr 1e-6.
FINETUNE = dict(type="finetune", epochs=100, batch_size=512, blr=1e-3, layer_decay=0.65, drop_path=0.1,
                weight_decay=0.05, warmup_epochs=20, min_lr=1e-6, mixup=0.8, cutmix=1.0, label_smoothing=0.1,
                pool="gap", after_training=False)


def get_config(arg=None):
    """MaskFeat ViT-B/16; ``arg``: "epochs=1600|300", "smoke", "cifar" (comma-separated)."""
    return maskfeat_imagenet(arg, VARIANT, FINETUNE)


def maskfeat_imagenet(arg, variant: str, finetune: dict):
    """The official MaskFeat ImageNet-1K pre-training recipe for ``variant`` (shared by vit_l.py)."""
    args = parse_arg(arg, smoke=False, cifar=False, epochs=1600)
    if args.epochs not in (300, 1600):
        raise ValueError(f"the official runs are 300 (yaml) or 1600 (released) epochs, got {args.epochs}")
    c = method_config("maskfeat")
    c.model = ml_collections.ConfigDict(dict(variant=variant, in_chans=3))
    c.model.attention_impl = config_dict.placeholder(str)
    c.model.scan_layers = False
    c.data.kind = "tfds"
    c.data.name = "imagenet2012"
    c.data.split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = 224
    c.data.augment = "maskfeat"
    c.data.num_workers = 8
    c.global_batch = GLOBAL_BATCH
    c.epochs = args.epochs
    c.optim.base_lr = 2e-4              # "bs256"
    c.optim.lr_batch_denominator = 256
    c.optim.b1, c.optim.b2 = 0.9, 0.999  # SOLVER.BETAS default
    c.optim.weight_decay = 0.05
    c.optim.warmup_epochs = 30.0
    c.optim.min_lr = 1e-6 * GLOBAL_BATCH / 256  # COSINE_END_LR, scaled with the machines like the lr
    c.optim.grad_clip = 0.02             # CLIP_GRAD_L2NORM
    c.compute_dtype = "bfloat16"
    c.checkpoint.every_steps = 2000
    c.log_every_steps = 100
    c.evals.knn = dict(type="knn", every_steps=10000, train_examples=50000, test_examples=10000)
    c.evals.finetune = dict(finetune)
    c.evals.figures = dict(type="figures", num_images=8)  # target and predicted HOG maps (hog.png)
    if args.cifar:
        mim_comparison(c)
        # 32x32 images with 4x4 patches: an 8x8 token grid. The mask ratio is a fraction of the
        # grid and carries over (round(64 x 0.4) = 26 tokens at most, blocks of at least 5). HOG
        # cells of 8x8 pixels would be larger than a 4x4 token, so the cell is scaled with the
        # patch (8 of 16 -> 2 of 4 would leave 2x2-pixel cells, too few votes for a histogram):
        # 4x4-pixel cells, one cell per token, 3 x 9 = 27 target values per token. The optimiser is
        # the comparison's (no clipping): the official clip of 0.02 belongs to the ImageNet recipe.
        c.maskfeat.hog_cell = 4
        c.compute_dtype = "float32"
        c.data.num_workers = 0
    if args.smoke:
        smoke(c, global_batch=8, steps=2)
        c.data.num_workers = 0
        c.compute_dtype = "float32"
    return c
