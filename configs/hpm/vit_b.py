"""HPM (Hard Patches Mining) ViT-B/16 on ImageNet-1K: the official recipe (Haochen-Wang409/HPM, CVPR 2023;
specs section 10).

Model: MAE's ViT-B/16 encoder, its 512-wide 8-block decoder and a loss predictor of the same size,
plus an EMA teacher of the whole model. Mask ratio 0.75, easy-to-hard: the teacher's highest
predicted losses fill ``(epoch + 1) / epochs * 0.5`` of the hidden patches. Loss: MSE on raw
(ImageNet-normalised) pixels (the scripts do not pass ``--norm_pix_loss``) + the relative loss-
prediction loss (``--learning_loss --relative``). Pre-training as ``scripts/pretrain_base.sh`` and
PRETRAIN.md: AdamW (0.9, 0.95), blr 1.5e-4 x batch / 256, weight decay 0.05, 40 warm-up epochs then
cosine, RandomResizedCrop(224, 0.2-1, bicubic) + flip; 200 epochs at batch 2048 (32 x 8 GPUs x
accum 8, PRETRAIN.md) or 800 epochs at batch 256 (32 x 8 GPUs x accum 1, the 800-epoch script, as
written in the repository). Fine-tuning as ``scripts/finetune_base.sh``: 100 epochs, 5 warm-up,
blr 5e-4, layer decay 0.8, weight decay 0.05, drop path 0.1, reprob 0.25, mixup 0.8, cutmix 1.0,
batch 48 x 8 = 384.

Arguments: ``epochs=200|800`` (default 200), ``smoke`` (this model, two CPU steps on the bundled
images), ``cifar`` (the shared CIFAR-10 comparison, ``maskjax.config.mim_comparison``), ``cifar,smoke``.

Command (data prepared as TFDS imagenet2012 ArrayRecord; raise --config.grad_accum on fewer devices):
  maskjax train --config configs/hpm/vit_b.py:epochs=200 --workdir gs://BUCKET/hpm_vit_b_200
  maskjax eval --config configs/hpm/vit_b.py:epochs=200 --workdir gs://BUCKET/hpm_vit_b_200 --evals finetune
Hardware of the reference: 8 GPUs x 32 images (torch.distributed, AMP).
Expected (the official README, not a maskjax measurement): ImageNet-1K fine-tune top-1 83.0 after 200
epochs (MAE: 82.2) and 84.2 after 800 (MAE 1600 epochs: 83.6); ADE20K mIoU 42.1 / 48.5. What maskjax
has measured is in docs/results/.

The epoch of the mask and EMA schedules is the trainer's (steps per epoch = examples // batch; with
``total_steps`` set, the run spans ``epochs``): see maskjax/methods/hpm.py.
"""

from maskjax.config import mae_imagenet, method_config, mim_comparison, parse_arg, smoke

# epochs -> global batch of the official command (PRETRAIN.md for 200, scripts/pretrain_base.sh for 800).
BATCH = {200: 2048, 800: 256}


def get_config(arg=None):
    """HPM ViT-B/16; ``arg``: "epochs=200|800", "smoke", "cifar" (comma-separated)."""
    args = parse_arg(arg, epochs=200, smoke=False, cifar=False)
    if args.epochs not in BATCH:
        raise ValueError(f"the official HPM ViT-B recipes are 200 or 800 epochs, got {args.epochs}")
    c = method_config("hpm", base=mae_imagenet("B/16", args.epochs))
    c.loss.norm_pix = False
    c.global_batch = BATCH[args.epochs]
    c.evals.finetune.update(dict(epochs=100, warmup_epochs=5, blr=5e-4, layer_decay=0.8, weight_decay=0.05,
                                 drop_path=0.1, mixup=0.8, cutmix=1.0, batch_size=384))
    if args.cifar:
        mim_comparison(c)
        # 32x32 images, 4x4 patches: an 8x8 grid. The ratio is a fraction of the grid (16 of 64
        # visible; 48 hidden, up to 24 of them hard) and alpha's schedule is in epochs of the run,
        # so both carry over. Decoder and loss predictor are sized like the MAE baseline's decoder
        # (configs/mae/default.py: 96 wide, 2 blocks, 4 heads). The EMA horizons are scaled as
        # fractions of the run: in the 200-epoch recipe (625 steps per epoch, 125k steps) 1 / (1 -
        # decay) is 1,000 steps (0.8% of the run) rising to 10,000 (8%) over the first half; the
        # comparison's ~470 steps give 4 steps (decay 0.75) rising to 40 (0.975) over 3 of 6 epochs.
        # Kept at 0.999 the teacher would still be 60% its random initialisation at the end.
        c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 96, 2, 4
        c.hpm.ema_decay_start, c.hpm.ema_decay_end, c.hpm.ema_ramp_epochs = 0.75, 0.975, 3
        c.compute_dtype = "float32"
        c.data.num_workers = 0
    if args.smoke:
        smoke(c, global_batch=8, steps=2)
        c.data.num_workers = 0
        c.compute_dtype = "float32"
    return c
