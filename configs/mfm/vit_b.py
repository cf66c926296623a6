"""MFM (Masked Frequency Modeling) ViT-B/16 on ImageNet-1K: the official 300-epoch pre-training recipe.

Source: Jiahao000/MFM (ICLR 2023), ``configs/vit_base/mfm_pretrain__vit_base__img224__300ep.yaml`` +
``config.py`` defaults, docs/PRETRAIN.md; specs/methods_vision.md section 12. Per image a
circular mask of radius 16 on the shifted 224x224 spectrum keeps the low (p = 0.5) or the high
frequencies; the ViT (learnable abs. pos-embed, cls token, no layer scale/RPB, drop path 0) sees
the corrupted image and a linear head predicts the original; the loss is the ortho-FFT distance
on the masked frequencies. AdamW (0.9, 0.95), wd 0.05, clip 3.0, lr 3e-4 x batch / 512 (1.2e-3 at
2048), 20 warm-up epochs then cosine to min lr 2.5e-6 x 2048 / 512, RandomResizedCrop(224, (0.2,
1), bicubic) + flip.

Command (data prepared as TFDS imagenet2012 ArrayRecord, as the MAE recipes):
  maskjax train --config configs/mfm/vit_b.py --workdir gs://BUCKET/mfm_vit_b
  maskjax eval --config configs/mfm/vit_b.py --workdir gs://BUCKET/mfm_vit_b --evals finetune
Hardware of the reference: 16 GPUs x 128 images (docs/PRETRAIN.md; the GPU type is not stated),
apex AMP O1.
Expected (the paper's / official README's number, not a maskjax measurement): ViT-B/16, 300
epochs pre-training + 100 epochs fine-tuning, ImageNet-1K top-1 **83.1**.

Arguments: ``smoke`` (two CPU steps of this model on the bundled images), ``cifar`` (the shared
CIFAR-10 comparison, ``maskjax.config.mim_comparison``), ``cifar,smoke``.

Known differences from the official run (see maskjax/methods/mfm.py): the warm-up starts at 0, not
at WARMUP_LR 2.5e-7 x 4, and the cosine starts at the end of the warm-up (timm's
CosineLRScheduler counts it from step 0); bf16 compute instead of fp16 AMP. The official
``no_weight_decay`` exemptions (pos_embed, cls_token) are kept through ``optim.no_weight_decay_names``.
"""

import ml_collections
from ml_collections import config_dict

from maskjax.config import method_config, mim_comparison, parse_arg, smoke

OFFICIAL_SIZE, OFFICIAL_RADIUS1 = 224, 16.0


def get_config(arg=None):
    """MFM ViT-B/16; ``arg``: "smoke", "cifar", "cifar,smoke"."""
    args = parse_arg(arg, smoke=False, cifar=False)
    c = method_config("mfm")
    c.model = ml_collections.ConfigDict(dict(variant="B/16", in_chans=3))
    c.model.attention_impl = config_dict.placeholder(str)
    c.model.scan_layers = False
    c.data.kind = "tfds"
    c.data.name = "imagenet2012"
    c.data.split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = OFFICIAL_SIZE
    c.data.augment = "mae"        # RandomResizedCrop(scale=(0.2, 1), bicubic) + flip: MFMTransform
    c.data.num_workers = 8
    c.global_batch = 2048         # 16 GPUs x 128
    c.epochs = 300
    c.optim.base_lr = 3e-4
    c.optim.lr_batch_denominator = 512
    c.optim.warmup_epochs = 20.0
    c.optim.min_lr = 2.5e-6 * 2048 / 512  # MIN_LR is scaled like the lr (main_mfm.py)
    c.optim.weight_decay = 0.05
    c.optim.no_weight_decay_names = ("pos_embed", "cls_token")  # VisionTransformerForMFM.no_weight_decay
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.grad_clip = 3.0
    c.compute_dtype = "bfloat16"
    # The official loss is a ratio of sums over each GPU's 128 images, averaged over GPUs by DDP.
    c.mfm.loss_group_size = 128
    c.checkpoint.every_steps = 2000
    c.log_every_steps = 100
    c.evals.reconstruction = dict(type="reconstruction", num_images=8)
    c.evals.figures = dict(type="figures", num_images=8)  # spectra of input, mask and prediction (spectra.png)
    c.evals.knn = dict(type="knn", every_steps=10000, train_examples=50000, test_examples=10000)
    # configs/vit_base/finetune__vit_base__img224__100ep.yaml: 100 epochs, warm-up 5, BASE_LR 2e-3 x
    # 2048 / 512 (= blr 1e-3 x 2048 / 256 in maskjax's /256 rule), MIN_LR 2.5e-7 x 4, layer decay 0.8,
    # drop path 0.1, mean pooling, mixup 0.8 / cutmix 1.0 / smoothing 0.1 (config.py defaults).
    c.evals.finetune = dict(type="finetune", epochs=100, batch_size=2048, blr=1e-3, layer_decay=0.8,
                            drop_path=0.1, weight_decay=0.05, warmup_epochs=5, min_lr=1e-6, mixup=0.8,
                            cutmix=1.0, label_smoothing=0.1, pool="gap", after_training=False)
    if args.cifar:
        mim_comparison(c)
        # The comparison's optimiser: its lr is stated per 256 (as MAE's) and decays to 0. MFM's own
        # choices stay: learnable position embedding, official init, clip 3.0, betas (0.9, 0.95).
        c.optim.lr_batch_denominator = 256
        c.optim.min_lr = 0.0
        c.compute_dtype = "float32"
        # 32x32 images with 4x4 patches: the radius is in frequency bins, and a spectrum of S bins
        # spans the same frequencies (in cycles per image width) as 224 bins do at 224, so the same
        # relative cut-off is r1 = 16 x 32 / 224 ~ 2.29 bins (the low-pass mask keeps 21 of 1,024
        # frequencies at 32, 793 of 50,176 at 224: ~2% and ~1.6%). radius2 = 999 still covers all.
        c.mfm.radius1 = OFFICIAL_RADIUS1 * c.data.image_size / OFFICIAL_SIZE
        c.mfm.loss_group_size = 0  # the comparison's batch of 128 is the official per-GPU batch
        c.data.num_workers = 0
    if args.smoke:
        smoke(c, global_batch=8, steps=2)
        c.data.num_workers = 0
        c.compute_dtype = "float32"
        c.mfm.loss_group_size = 0
    return c
