"""SimMIM ViT-B/16 pre-training on ImageNet-1K for 800 epochs (microsoft/SimMIM,
``configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml``; specs §2).

The recipe: 224 px, 32-px mask units at ratio 0.6 (30 of 7x7 units = 120 of 196 tokens replaced by
the mask token), ViT-B/16 with q/v biases, layer scale 0.1, one shared relative position bias and no
absolute position embedding, drop path 0.1; a 1x1-conv + pixel-shuffle head, L1 loss on the hidden
pixels of the ImageNet-normalised image; RandomResizedCrop(scale=(0.67, 1), ratio=(3/4, 4/3)) + flip
(``data.augment="simmim"``). AdamW (0.9, 0.999), eps 1e-8, weight decay 0.05, clip 5.0,
BASE_LR 1e-4 x batch / 512 (SimMIM's rule, ``optim.lr_batch_denominator=512``), 10 warm-up epochs,
batch 2048.

Deviations, each the closest the trainer supports:
- schedule: the official *multistep* (peak lr until epoch 700, then x0.1: ``optim.schedule=
  "multistep"``, ``milestones=(0.875,)``); the warm-up starts at 0, not WARMUP_LR 5e-7.
- weight decay: the official groups exempt ``cls_token`` (``optim.no_weight_decay_names``); the mask
  token and the relative position table are decayed, as SimMIM's ViT does.
- fine-tuning (``--evals finetune``): SimMIM's own ViT with one relative position bias per block,
  each initialised from the shared one (``USE_RPB``, ``load_pretrained``), layer scale kept, mean
  pooling; the fine-tune batch size is not recorded in the spec (2048 assumed).

Command (data as TFDS imagenet2012 ArrayRecord; keep the global batch at 2048, raise
--config.grad_accum on fewer devices):
  maskjax train --config configs/simmim/vit_b_800ep.py --workdir gs://BUCKET/simmim_vit_b_800ep
Hardware of the reference: the README's pre-training example (for Swin-B) runs 16 GPUs x 128 images
(batch 2048); the GPU type is not stated.
Expected (the official README, not a maskjax measurement): ViT-B, 800 epochs pre-training at 224,
fine-tuned at 224: top-1 83.8.

Variants: ``:smoke`` two CPU steps of this model on the bundled images; ``:cifar`` the CIFAR-10
comparison (``maskjax.config.mim_comparison``, the "SimMIM" row of ``maskjax repro mim_cifar``);
``:cifar,smoke`` both.
"""

import ml_collections
from ml_collections import config_dict

from maskjax.config import core_config, method_config, mim_comparison, parse_arg, smoke


def simmim_config() -> ml_collections.ConfigDict:
    """The shared schema plus SimMIM's ``model``, ``masking`` and ``simmim`` sections at the
    official ViT-B/16 pre-training values (``simmim_pretrain__vit_base__img224__800ep.yaml`` and
    ``config.py``)."""
    c = core_config()
    c.model = ml_collections.ConfigDict(dict(
        variant="B/16", in_chans=3,
        layer_scale=0.1,           # INIT_VALUES: gamma_1/gamma_2 init (None: no layer scale)
        rel_pos_bias=True,         # USE_SHARED_RPB: one BEiT relative position bias for all blocks
        abs_pos="none",            # USE_APE False; "sincos" (fixed) | "learned" | "none"
        qkv_bias="qv",             # QKV_BIAS True in BEiT's form: q and v biases, k bias 0
        init="beit",               # trunc_normal(.02) at +-1 sigma + fix_init_weight | "timm"
        drop_path=0.1,             # DROP_PATH_RATE of the ViT pre-training config
    ))
    c.model.attention_impl = config_dict.placeholder(str)
    c.model.scan_layers = False
    # MaskGenerator: 32-px mask units, 60 % of them hidden (DATA.MASK_PATCH_SIZE, DATA.MASK_RATIO).
    c.masking = ml_collections.ConfigDict(dict(kind="patch_units", ratio=0.6, mask_patch_size=32))
    return method_config("simmim", c)


def get_config(arg=None):
    """SimMIM ViT-B/16 pre-training; ``arg``: "smoke", "cifar", "epochs=N"."""
    args = parse_arg(arg, smoke=False, cifar=False, epochs=800)
    c = simmim_config()
    c.data.kind = "tfds"
    c.data.name = "imagenet2012"
    c.data.split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = 224
    c.data.augment = "simmim"
    c.data.num_workers = 8
    c.global_batch = 2048
    c.epochs = args.epochs
    c.optim.base_lr = 1e-4
    c.optim.lr_batch_denominator = 512
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8
    c.optim.weight_decay = 0.05
    c.optim.no_weight_decay_names = ("cls_token",)  # VisionTransformerForSimMIM.no_weight_decay
    c.optim.warmup_epochs = 10.0
    c.optim.schedule = "multistep"
    c.optim.milestones = (700 / 800,)  # x0.1 at epoch 700 of 800 (a fraction: follows an epochs override)
    c.optim.gamma = 0.1
    c.optim.grad_clip = 5.0
    c.compute_dtype = "bfloat16"
    c.checkpoint.every_steps = 2000
    c.log_every_steps = 100
    c.evals.reconstruction = dict(type="reconstruction", num_images=8)
    c.evals.knn = dict(type="knn", every_steps=10000, train_examples=50000, test_examples=10000)
    # Fine-tuning (simmim_finetune__vit_base__img224__800ep.yaml): 100 epochs, 20 warm-up, BASE_LR
    # 1.25e-3 per 512 (6.25e-4 in maskjax's per-256 blr), layer decay 0.65, drop path 0.1, mean pooling,
    # mixup 0.8 / cutmix 1.0 / smoothing 0.1, RandAugment m9-mstd0.5, erasing 0.25; SimMIM's own ViT
    # with one relative position bias per block, each from the shared one (SimMIM.finetune_encoder).
    # The fine-tune batch is not in the spec [unconfirmed]: 2048 is assumed (min lr 2.5e-7 per 512).
    c.evals.finetune = dict(type="finetune", epochs=100, batch_size=2048, blr=6.25e-4, layer_decay=0.65,
                            drop_path=0.1, weight_decay=0.05, warmup_epochs=20, min_lr=1e-6, mixup=0.8,
                            cutmix=1.0, label_smoothing=0.1, pool="gap", after_training=False)
    if args.cifar:
        mim_comparison(c)
        # The comparison's backbone is MAE's ViT-Pico/4 for every row, so the encoder here has its
        # architecture (sin-cos positions, one biased qkv, no layer scale or relative bias): the
        # rows then differ only in masking, target and head, and the shared fine-tune evaluator
        # loads every weight. SimMIM's init and drop path 0.1 stay; the optimiser is the comparison's.
        c.model.layer_scale = None
        c.model.rel_pos_bias = False
        c.model.abs_pos = "sincos"
        c.model.qkv_bias = "qkv"
        c.optim.lr_batch_denominator = 256  # the comparison's lr is stated per 256, as MAE's
        c.optim.min_lr = 0.0
        c.compute_dtype = "float32"
        c.data.num_workers = 0
        # Scaled to 32x32 images with 4x4 patches: SimMIM's 32-px units are 2x2 tokens of a 14x14
        # grid (7x7 units); 8-px units are 2x2 tokens of the 8x8 grid (4x4 units), at the same
        # ratio 0.6: ceil(16 x 0.6) = 10 units = 40 of 64 tokens.
        c.masking.mask_patch_size = 8
        c.masking.ratio = 0.6
    if args.smoke:
        smoke(c)
        c.data.num_workers = 0
        c.compute_dtype = "float32"
    return c
