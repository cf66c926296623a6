"""VideoMAE pre-training (Tong et al., NeurIPS 2022; MCG-NJU/VideoMAE), ViT-S/B/L/H.

Recipe (specs/methods_vision.md section 5): tube masking at 0.9 (the same spatial mask in every
temporal slot), 16 frames at stride 4 (K400) or 2 (SSv2), 2x16x16 tubelets, fixed 1-D sinusoid
positions, BEiT-style q/v biases, decoder depth 4 (S, B) or 12 (L, H), MSE on per-token
per-channel normalised pixels of the hidden tubelets; GroupMultiScaleCrop(224, [1, .875, .75,
.66]) and no flip; AdamW (0.9, 0.95), wd 0.05, lr 1.5e-4 x batch / 256 with batch 2048, warmup 40
epochs then per-step cosine to min_lr 1e-5 x batch / 256, no gradient clipping. The official
warmup starts at 1e-6 x batch / 256; ours starts at 0. UCF101 uses ratio 0.75, lr 3e-4, batch 24,
3200 epochs.

Data: videos in ``root/<split>/<class>/*.mp4``, best pre-decoded once to ArrayRecord
(``maskjax predecode-video --src root --out frames --frame_size 320``, then
``--config.data.kind=array_record_video --config.data.path=frames/train``). Command:

  maskjax train --config configs/videomae/videomae.py:size=B,dataset=k400,epochs=1600 \\
      --config.data.path=/data/k400 --workdir gs://BUCKET/videomae_b_k400

Fine-tuning (``evals.finetune``, official recipe values): AdamW (0.9, 0.999), wd 0.05, layer decay
0.75 (0.7 for S on SSv2 and UCF101), warmup 5, label smoothing 0.1, head init scale 0.001, mean
pooling; testing with 5 clips x 3 crops (K400) or 2 x 3 (SSv2). Our evaluator fine-tunes in memory
(module docstring of ``maskjax/eval/media_evals.py``): it is the protocol at small scale, not a
K400-sized fine-tuning run.

Expected (official README / MODEL_ZOO, not measured by us): K400 top-1 (16x5x3) S 79.0 (1600 ep),
B 81.5 (1600 ep), L 85.2, H 86.6; SSv2 top-1 (16x2x3) S 66.8, B 70.8 (2400 ep), L 74.3.
``:smoke`` runs two steps of the same model on moving-CIFAR clips (CPU).
"""

from maskjax.config import parse_arg
from maskjax.config import media_smoke, video_base_config

# Encoder size -> (decoder width, decoder heads, decoder depth) of the official scripts.
DECODERS = {"S": (192, 3, 4), "B": (384, 6, 4), "L": (512, 8, 12), "H": (640, 8, 12)}
# Dataset -> (sampling rate, pre-training epochs, fine-tune epochs, test clips).
DATASETS = {"k400": (4, 1600, 75, 5), "ssv2": (2, 2400, 30, 2), "ucf101": (4, 3200, 100, 5)}


def get_config(arg=None):
    """``arg``: size=S|B|L|H, dataset=k400|ssv2|ucf101, epochs (default: the dataset's), smoke."""
    args = parse_arg(arg, size="B", dataset="k400", epochs=0, smoke=False)
    if args.size not in DECODERS:
        raise ValueError(f"size must be one of {sorted(DECODERS)}, got {args.size!r}")
    if args.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {args.dataset!r}")
    rate, epochs, ft_epochs, clips = DATASETS[args.dataset]
    c = video_base_config()
    c.method = "videomae"
    c.model.variant = f"{args.size}/16"
    c.model.decoder_width, c.model.decoder_heads, c.model.decoder_depth = DECODERS[args.size]
    c.data.sampling_rate = rate
    c.data.test_clips, c.data.test_crops = clips, 3
    c.masking.kind = "tube"
    c.masking.ratio = 0.75 if args.dataset == "ucf101" else 0.9
    c.global_batch = 24 if args.dataset == "ucf101" else 2048
    c.epochs = args.epochs or epochs
    c.optim.base_lr = 3e-4 if args.dataset == "ucf101" else 1.5e-4
    c.optim.min_lr = 1e-5 * c.global_batch / 256
    c.optim.warmup_epochs = 40.0
    c.checkpoint.every_steps = 5000
    layer_decay = 0.7 if (args.size == "S" and args.dataset != "k400") else 0.75
    # lr = the scripts' base lr 5e-4 x batch / 256 (the fine-tune batch here is 512).
    c.evals.finetune = dict(
        type="media_finetune", every_steps=0, after_training=False, epochs=ft_epochs,
        lr=5e-4 * 512 / 256, layer_decay=layer_decay, weight_decay=0.05, warmup_epochs=5,
        label_smoothing=0.1, head_init_scale=0.001, multi_view=True, batch_size=512)
    if args.smoke:
        media_smoke(c)
    return c
