"""MAGE ViT-B class-unconditional pre-training on ImageNet 256x256 tokens (Li et al., CVPR 2023;
LTH14/mage README command and ``main_pretrain.py``; specs/methods_text_gen.md 10).

Recipe: 16x16 tokens of MAGE's VQGAN (codebook 1024; the JAX-trained, strong-augmentation
tokenizer ``vqgan_jax_strongaug.ckpt``, not MaskGIT's), vocabulary 1024 + 1000 + 1; encoder ViT-B
(12 blocks, 768 wide, 12 heads), decoder 8 blocks of 768 with 16 heads, dropout 0.1; mask rate
TruncNorm(0.55, 0.25, [0.5, 1.0]) per batch, 128 tokens dropped; label smoothing 0.1; AdamW
(0.9, 0.95), blr 1.5e-4 x 4096 / 256, weight decay 0.05 (none on biases and norms), 40 warm-up
epochs then half-cycle cosine to 0, 1600 epochs, batch 4096, gradient clip 3.0. ``mage.ratio_groups``
64: the README run draws one rate per GPU (64 GPUs x 64 images) each step.

Expected (the README's numbers for the released checkpoint, converted from JAX; not measured by
us): class-unconditional FID 11.1 and IS 81.2 (``gen_img_uncond.py --temp 6.0 --num_iter 20``,
torch-fidelity against the 256x256 validation images), linear probe 74.7 % (90 epochs, LARS, blr
0.1, global pool, BatchNorm head), fine-tuning 82.5 %.

Deviation: the official tokenizes each step's augmented images (RandomResizedCrop(256, scale 0.2-1)
+ flip) on the fly; maskjax trains on tokens written once by ``maskjax tokenize-images``, so the
augmentation is whatever was tokenized. The linear-probe and fine-tuning protocols need the
tokenizer in the loop and are not wired as evaluators here.

Not runnable here: it needs ImageNet tokenized with MAGE's tokenizer into
``$MASKJAX_IMAGENET256_MAGE_TOKENS/{train,val}`` (or ``$MASKJAX_DATA_DIR/imagenet256_mage_tokens``)
and the README's 64 V100s (or a TPU/GPU pod).

Command:
  maskjax train --config configs/mage/vit_b.py --workdir runs/mage_vit_b
``:smoke`` runs two CPU steps of a micro model on synthetic 16x16 token grids (same vocabulary).
"""

from maskjax.config import dataset_path, method_config, parse_arg, smoke
from maskjax.data.image_tokens import synthetic_token_data
from maskjax.methods.mage import MAGE, VIT_B

README_RESULTS = {
    "ImageNet 256 unconditional FID (20 steps, temp 6.0)": (11.1, "README, released checkpoint"),
    "ImageNet 256 unconditional IS": (81.2, "README, released checkpoint"),
    "ImageNet linear probe top-1 %": (74.7, "README, released checkpoint"),
    "ImageNet fine-tuning top-1 %": (82.5, "README, released checkpoint"),
}
# A micro model for the :smoke variants (the recipe's run and data shape, not its model).
SMOKE_MODEL = dict(variant="mage-smoke", width=32, depth=2, heads=2, decoder_width=32, decoder_depth=1,
                   decoder_heads=2)


def imagenet_recipe(arg, model: dict):
    """The README's pre-training recipe with encoder/decoder ``model`` (VIT_B or VIT_L)."""
    args = parse_arg(arg, smoke=False)
    c = MAGE.fill_config(method_config("mage"), **model)
    root = dataset_path("imagenet256_mage_tokens", "MASKJAX_IMAGENET256_MAGE_TOKENS")
    c.data.update(dict(kind="array_record_tokens", path=str(root / "train"), eval_path=str(root / "val"),
                       grid_size=16, codebook_size=1024, num_classes=1000))
    c.mage.update(dict(mask_ratio_min=0.5, mask_ratio_max=1.0, mask_ratio_mu=0.55, mask_ratio_std=0.25,
                       ratio_groups=64, label_smoothing=0.1, sample_steps=20, choice_temperature=6.0,
                       sample_schedule="cosine", feature_pool="avg"))
    c.global_batch = 4096
    c.epochs = 1600
    c.optim.update(dict(name="adamw", base_lr=1.5e-4, lr_batch_denominator=256, b1=0.9, b2=0.95, eps=1e-8,
                        weight_decay=0.05, schedule="cosine", min_lr=0.0, warmup_epochs=40.0))
    c.optim.grad_clip = 3.0
    c.checkpoint.every_steps = 5000
    c.log_every_steps = 100
    if args.smoke:
        c.model.update(SMOKE_MODEL)
        smoke(c, data=synthetic_token_data)
    return c


def get_config(arg=None):
    """``arg``: smoke."""
    return imagenet_recipe(arg, VIT_B)
