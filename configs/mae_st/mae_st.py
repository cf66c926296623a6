"""MAE as Spatiotemporal Learners (Feichtenhofer et al., NeurIPS 2022; facebookresearch/mae_st), ViT-L K400.

Recipe (specs/methods_vision.md section 7; mae_st PRETRAIN.md): spacetime-agnostic random masking
at 0.9 over all 8x14x14 tokens; 2x16x16 patches with learned separable space / time position
embeddings and a cls token; decoder 512 wide, depth 4, 16 heads, predicting 8 target frames
(``linspace`` subsampling, one frame per token); MAE norm-pix loss on hidden tokens; AdamW (0.9,
0.95), wd 0.05, blr 1.6e-3 x batch / 256, warmup 5 of 100 epochs (x ``repeat_aug 4``; counted here
as 400 passes), clip_grad 0.02, float32, sampling rate 4. Repeated augmentation is not built.

Command:

  maskjax train --config configs/mae_st/mae_st.py --config.data.path=/data/k400 \\
      --workdir gs://BUCKET/mae_st_l_k400

Expected (SlowFast projects/mae README, not measured by us): K400 top-1 after fine-tuning
(16x4, 3x7 views) ViT-B 81.3, ViT-L 84.8, ViT-H 85.1; mae_st FINETUNE.md ViT-L sanity eval 84.35.
``:smoke`` runs two steps of the same model on moving-CIFAR clips (CPU).
"""

from maskjax.config import parse_arg
from maskjax.config import media_smoke, video_base_config


def get_config(arg=None):
    """``arg``: size=B|L|H, epochs (default 400 = 100 x 4 repeats), smoke."""
    args = parse_arg(arg, size="L", epochs=400, smoke=False)
    c = video_base_config()
    c.method = "mae_st"
    c.model.variant = f"{args.size}/16"
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 512, 4, 16
    c.model.pred_t_dim = 8
    c.masking.kind = "random"
    c.masking.ratio = 0.9
    c.data.sampling_rate = 4
    # PRETRAIN.md: 2 clips per GPU; the lr follows the effective batch, so any batch keeps the recipe.
    c.global_batch = 512
    c.epochs = args.epochs
    c.optim.base_lr = 1.6e-3
    c.optim.warmup_epochs = 5.0 * 4
    c.optim.min_lr = 0.0
    c.optim.grad_clip = 0.02
    c.checkpoint.every_steps = 5000
    if args.smoke:
        media_smoke(c)
    return c
