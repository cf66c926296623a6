"""VideoMAE V2 dual masking (Wang et al., CVPR 2023; OpenGVLab/VideoMAEv2), ViT-B and ViT-g hybrid.

The official repository released the dual-masking model and data code but never the launch of the
dual-masking pre-training; this recipe is built from its ``scripts/pretrain/vit_{b,g}_hybrid_pt.sh``
and code (specs/methods_vision.md section 6): encoder tube masking at 0.9; decoder running-cell
masking at 0.5 (exactly half of the tokens are reconstructed; the loss counts only tokens both
hidden from the encoder and decoded); decoder depth 4; AdamW (0.9, 0.95), wd 0.05; warmup_lr 1e-6
and min_lr 1e-5 (scaled); 16 frames at stride 4.

- ``size=g``: ViT-g/14 (1408 wide, 40 deep, mlp 48/11), decoder 512 / 8 heads, 64 GPUs x 32 clips,
  lr 6e-4 x 2048 / 256, clip_grad 0.02, warmup 30, 300 epochs x ``num_sample 4`` = "1200 epochs".
- ``size=B``: lr 1e-3 x batch / 256, warmup 20, 200 epochs x 4 repeats.

Repeated augmentation (``num_sample 4``: four crops of each decoded clip in one batch) is not
built; the epochs below count the repeats as passes (300 x 4 = 1200), which sees the same number
of clips per step. Command:

  maskjax train --config configs/videomae_v2/videomae_v2.py:size=g --config.data.path=/data/hybrid \\
      --workdir gs://BUCKET/videomae_v2_g

Expected (official MODEL_ZOO, not measured by us): ViT-g fine-tuned K400 87.2 (88.4 with K710
post-pre-training), SSv2 77.0; distilled ViT-B K400 86.6. ``:smoke`` runs two steps of the same
model on moving-CIFAR clips (CPU).
"""

from maskjax.config import parse_arg
from maskjax.config import media_smoke, video_base_config


def get_config(arg=None):
    """``arg``: size=B|g, epochs (default 800 for B = 200 x 4, 1200 for g = 300 x 4), smoke."""
    args = parse_arg(arg, size="g", epochs=0, smoke=False)
    if args.size not in ("B", "g"):
        raise ValueError(f"size must be 'B' or 'g', got {args.size!r}")
    c = video_base_config()
    c.method = "videomae_v2"
    giant = args.size == "g"
    c.model.variant = "g/14" if giant else "B/16"
    c.model.decoder_width, c.model.decoder_heads, c.model.decoder_depth = (512, 8, 4) if giant else (384, 6, 4)
    c.masking.kind = "tube"
    c.masking.ratio = 0.9
    c.masking.decoder_ratio = 0.5
    c.global_batch = 2048
    c.epochs = args.epochs or (1200 if giant else 800)
    c.optim.base_lr = 6e-4 if giant else 1e-3
    c.optim.warmup_epochs = 30.0 * 4 if giant else 20.0 * 4
    c.optim.min_lr = 1e-5 * c.global_batch / 256
    if giant:
        c.optim.grad_clip = 0.02
        c.remat = True   # the scripts run ViT-g with activation checkpointing (--with_checkpoint)
    c.checkpoint.every_steps = 5000
    if args.smoke:
        media_smoke(c)
    return c
