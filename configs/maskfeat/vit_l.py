"""MaskFeat ViT-L/16 on ImageNet-1K: the official HOG pre-training recipe (specs section 4).

Source: facebookresearch/SlowFast (commit 287ec00), ``configs/masked_ssl/in1k_VIT_L_MaskFeat_PT.yaml``
and ``_FT.yaml``, ``projects/maskfeat/README.md``; paper: Wei et al., "Masked Feature Prediction
for Self-Supervised Visual Pre-Training", CVPR 2022. Block-wise masks at ratio 0.4 (78 of 196
tokens at most, blocks of at least 15), masked tokens replaced by a mask token, HOG targets
(9 bins, 8x8 cells, 108 values per token) regressed with MSE on the masked tokens from the last
block (the 24th) through LayerNorm + Linear. ViT-L/16 (1024 wide, 24 blocks, 16 heads) with a
learned position embedding and a cls token, drop path 0. AdamW (0.9, 0.999), wd 0.05 (none on
1-D parameters), lr 2e-4 x batch / 256, 30 warm-up epochs then cosine to 1e-6 x batch / 256,
gradient clipping at L2 norm **0.02**.

Command (data prepared as TFDS imagenet2012 ArrayRecord, as the MAE recipes):
  maskjax train --config configs/maskfeat/vit_l.py --workdir gs://BUCKET/maskfeat_vit_l
  maskjax eval --config configs/maskfeat/vit_l.py --workdir gs://BUCKET/maskfeat_vit_l --evals finetune
Hardware of the reference: SlowFast runs of 8 GPUs per machine x 32 images (``BATCH_SIZE: 256`` per
machine); the number of machines of the released run is not stated. ``global_batch`` 2048 (8
machines) is an assumption [unconfirmed]; the lr follows it linearly as SlowFast's
``BASE_LR_SCALE_NUM_SHARDS`` does (lr, warm-up start and end lr x machines).
Expected (the official README's number, not a maskjax measurement): ImageNet-1K fine-tune top-1
**85.7** after 1600 pre-training epochs (the released checkpoint) and the fine-tuning recipe below.

Arguments: ``epochs=1600`` (default: the released checkpoint) or ``epochs=300`` (the yaml's
MAX_EPOCH); ``smoke`` (this model, two CPU steps on the bundled images); ``cifar`` (the shared
CIFAR-10 comparison, ``maskjax.config.mim_comparison``); ``cifar,smoke``.

Known differences: the warm-up starts at 0, not WARMUP_START_LR 1e-6 x machines; the pre-training
crop is the official RandomResizedCrop(scale=(0.5, 1), aspect (0.75, 1.333)) + flip
(``data.augment="maskfeat"``);
maskjax's AdamW decays pos_embed and cls_token (3-D), as the official ``ZERO_DECAY_POS_CLS: False``
does. The yaml marks "no colour augmentation" as important for ViT-L: the "maskfeat" augmentation has
none. Model-side differences are listed in maskjax/methods/maskfeat.py.
"""

import importlib.util
import pathlib

# The recipe is vit_b.py's with ViT-L/16 and its fine-tuning settings (one recipe, two sizes).
_spec = importlib.util.spec_from_file_location("maskfeat_vit_b_recipe", pathlib.Path(__file__).with_name("vit_b.py"))
_vit_b = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_vit_b)

VARIANT = "L/16"
# in1k_VIT_L_MaskFeat_FT.yaml: 50 epochs, 5 warm-up, BASE_LR 1e-3 at 256 images per machine
# (blr 1e-3 per 256), layer decay 0.75, drop path 0.1, mean pooling, RandAug m9-mstd0.5, colour
# jitter 0.4, random erasing 0.25, mixup 0.8 / cutmix 1.0, smoothing 0.1, end lr 1e-6.
FINETUNE = dict(type="finetune", epochs=50, batch_size=256, blr=1e-3, layer_decay=0.75, drop_path=0.1,
                weight_decay=0.05, warmup_epochs=5, min_lr=1e-6, mixup=0.8, cutmix=1.0, label_smoothing=0.1,
                pool="gap", after_training=False)


def get_config(arg=None):
    """MaskFeat ViT-L/16; ``arg``: "epochs=1600|300", "smoke", "cifar" (comma-separated)."""
    return _vit_b.maskfeat_imagenet(arg, VARIANT, FINETUNE)
