"""VideoMAE mini reproduction on moving-CIFAR-10 clips (real images moving over time, CPU minutes).

Clips are built on the fly from the CIFAR-10 images bundled in the package
(``maskjax.data.video.moving_cifar`` documents the generator): each clip moves one real image over
a canvas along a random straight path; the label is the image's class. A ViT-Pico/4 VideoMAE
(96 wide, 4 deep, tubelets 2x4x4, decoder 64 wide and 2 deep) pre-trains with tube or random
masking at 0.9, then a linear probe on the frozen mean-pooled features classifies the clips
against a randomly initialised encoder. ``maskjax repro videomae_moving_cifar`` compares tube with
random masking into docs/results/.

Command:
  maskjax train --config configs/videomae/moving_cifar.py:masking=tube --workdir runs/videomae_mc
"""

from maskjax.config import parse_arg
from maskjax.config import media_smoke, moving_cifar_data, video_base_config


def get_config(arg=None):
    """``arg``: epochs, masking=tube|random, smoke."""
    args = parse_arg(arg, epochs=2, masking="tube", smoke=False)
    c = video_base_config()
    c.method = "videomae"
    moving_cifar_data(c)
    c.data.num_frames = 8
    c.data.sampling_rate = 1
    c.data.image_size = 32
    c.data.augment = "none"
    c.model.variant = "Pico/4"
    c.model.tubelet_size = 2
    c.model.decoder_width, c.model.decoder_heads, c.model.decoder_depth = 64, 4, 2
    c.masking.kind = args.masking
    c.masking.ratio = 0.9
    c.global_batch = 64
    c.epochs = args.epochs
    c.optim.base_lr = 1.5e-3
    c.optim.min_lr = 0.0
    c.optim.warmup_epochs = 0.5
    c.checkpoint.every_steps = 500
    c.log_every_steps = 50
    c.evals.probe = dict(type="feature_probe", train_examples=2000, test_examples=1000, steps=500, pool="pooled")
    if args.smoke:
        media_smoke(c)
    return c
