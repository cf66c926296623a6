"""CrossMAE ViT-B/16 on ImageNet-1K: the official recipe (TonyLianLong/CrossMAE, specs section 11).

Model: MAE's ViT-B/16 encoder and CrossMAE's decoder (512 wide, 16 heads, 12 cross-attention
blocks, ``--decoder_depth 12``) reading a learned mix of every encoder block's output and the
encoder's input (``--weight_fm --use_input``); mask ratio 0.75, norm-pix loss. Argument ``kmr``:
the kept mask ratio (the fraction of all patches reconstructed): 0.75 (default, the released
checkpoint: all 147 hidden patches of 196) or 0.25 (the README's pre-training command: 49).
Pre-training: AdamW (0.9, 0.95), wd 0.05, batch 4096, blr 1.5e-4 x 4096 / 256 times the official
``kept_mask_ratio / mask_ratio`` factor of ``main_pretrain.py`` (1/3 for kmr 0.25), 800 epochs,
40 warm-up, MAE's augmentation. Fine-tuning as the README (and MAE): 100 epochs, blr 5e-4, layer
decay 0.65, drop path 0.1, batch 1024, mixup 0.8, cutmix 1.0, reprob 0.25.

Command (data prepared as TFDS imagenet2012 ArrayRecord; keep the global batch at 4096 and raise
--config.grad_accum on fewer devices):
  maskjax train --config configs/crossmae/vit_b.py:kmr=0.25 --workdir gs://BUCKET/crossmae_vit_b
  maskjax eval --config configs/crossmae/vit_b.py:kmr=0.25 --workdir gs://BUCKET/crossmae_vit_b --evals finetune
Hardware of the reference: 4 GPUs x 1024 images with FlashAttention 2 (the README's command).
Expected (the official README, not a maskjax measurement): ImageNet-1K fine-tune top-1 83.722 for
the released kmr 0.75 checkpoint; the README gives no number for kmr 0.25 at ViT-B. What maskjax
has measured is in docs/results/.

Variants: ``:smoke`` (this model, two CPU steps on the bundled images), ``:cifar`` (the shared
CIFAR-10 comparison, ``maskjax.config.mim_comparison``), ``:cifar,smoke``; each with ``kmr=``.
"""

from maskjax.config import mae_imagenet, method_config, mim_comparison, parse_arg, smoke

MASK_RATIO = 0.75


def get_config(arg=None):
    """CrossMAE ViT-B/16; ``arg``: "kmr=0.75|0.25", "smoke", "cifar" (comma-separated)."""
    return crossmae_imagenet(arg, "B/16", (512, 12, 16))


def crossmae_imagenet(arg, variant: str, decoder: tuple[int, int, int]):
    """CrossMAE on ImageNet-1K for ``variant`` with ``decoder`` (width, depth, heads); shared by vit_s.py.

    MAE's ImageNet recipe (optimiser, data, evaluators; its ViT-B fine-tuning settings are the ones
    the CrossMAE README uses for ViT-S too) with CrossMAE's decoder and ratios.
    """
    args = parse_arg(arg, smoke=False, cifar=False, kmr=0.75)
    kmr = args.kmr
    c = method_config("crossmae", base=mae_imagenet("B/16", 800))
    c.model.variant = variant
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = decoder
    c.masking.ratio = MASK_RATIO
    c.crossmae.kept_mask_ratio = kmr
    c.crossmae.use_input = True
    # main_pretrain.py scales the lr by kept_mask_ratio / mask_ratio (no --no_lr_scale): the loss
    # averages over fewer reconstructed tokens.
    c.optim.base_lr = 1.5e-4 * kmr / MASK_RATIO
    if args.cifar:
        mim_comparison(c)
        # 32x32 images, 4x4 patches: an 8x8 grid. The ratios are fractions of the grid, so they
        # carry over (16 visible; 48 reconstructed at kmr 0.75, 16 at kmr 0.25); the decoder is
        # sized like the MAE baseline's (configs/mae/default.py: 96 wide, 2 blocks, 4 heads), so the
        # 4 encoder blocks plus the input make 5 feature maps mixed into 2 decoder layers; the
        # official lr factor is applied to the comparison's lr.
        c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 96, 2, 4
        c.optim.base_lr *= kmr / MASK_RATIO
        c.compute_dtype = "float32"
        c.data.num_workers = 0
    if args.smoke:
        smoke(c, global_batch=8, steps=2)
        c.data.num_workers = 0
        c.compute_dtype = "float32"
    return c
