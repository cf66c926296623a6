"""A VQGAN tokenizer for CIFAR-10 at 32 px, sized for a CPU (maskjax's recipe, not a paper's).

The official tokenizer's design (maskjax/methods/vqgan.py; specs/methods_text_gen.md 9e) at CPU
scale: 32 filters with channel multipliers [1, 2, 2] (down-sampling f = 4: 8x8 tokens per image,
the grid configs/maskgit/cifar10.py expects), one residual block per level, GroupNorm with 32
groups; L2 reconstruction loss; Adam (beta1 0, beta2 0.99) as the official config, lr 3e-4 with a
100-step warm-up and cosine decay over a short run; batch 64, 5,000 steps (about 6 epochs of the
50,000 training images); no augmentation (the tokens are computed once on unaugmented images).
These sizes are chosen, not tuned; no result is claimed here.

``quantizer`` picks the quantizer (the tokenizer table compares them):
- ``vq``: nearest-neighbour VQ, 1024 codes of 64 dimensions, commitment 0.25, entropy loss 0.1
  (the official settings);
- ``ema``: the same codebook size, updated by EMAs (decay 0.99, Laplace eps 1e-5), commitment 0.25,
  no entropy loss (van den Oord et al.'s EMA VQ);
- ``fsq``: FSQ with levels [8, 5, 5, 5] (1000 implicit codes, 4 channels).
``gan`` adds the official non-saturating GAN (weight 0.1, R1 10) with a 64-channel StyleGAN
discriminator, from step ``gan_start`` (default 1000). There is no perceptual loss (no pretrained
network offline).

Data: ``cifar10/{train,test}.tar`` under ``$MASKJAX_DATA_DIR`` (default ``../shared/data``).

Command:
  maskjax train --config configs/vqgan/cifar10.py:quantizer=vq --workdir runs/vqgan_cifar10_vq
  maskjax tokenize-images --workdir runs/vqgan_cifar10_vq --out $MASKJAX_DATA_DIR/cifar10_tokens --split train
  maskjax tokenize-images --workdir runs/vqgan_cifar10_vq --out $MASKJAX_DATA_DIR/cifar10_tokens --split test
Hardware: a 2-core CPU. ``:smoke`` (with any quantizer) runs two steps on the bundled CIFAR-10 subset.
"""

from maskjax.config import cifar10_folder_data, method_config, parse_arg, smoke

QUANTIZER_CHOICES = ("vq", "ema", "fsq")


def get_config(arg=None):
    """``arg``: quantizer=vq|ema|fsq, gan, gan_start, steps, batch, lr, smoke."""
    args = parse_arg(arg, quantizer="vq", gan=False, gan_start=1000, steps=5000, batch=64, lr=3e-4, smoke=False)
    if args.quantizer not in QUANTIZER_CHOICES:
        raise ValueError(f"quantizer={args.quantizer!r}: use one of {QUANTIZER_CHOICES}")
    c = method_config("vqgan")
    c.vqgan.update(dict(quantizer=args.quantizer, codebook_size=1024, embedding_dim=64, filters=32,
                        channel_multipliers=(1, 2, 2), num_res_blocks=1, norm_groups=32,
                        commitment_cost=0.25, entropy_loss_ratio=0.1 if args.quantizer == "vq" else 0.0,
                        ema_decay=0.99, fsq_levels=(8, 5, 5, 5), l1_weight=0.0, l2_weight=1.0,
                        gan_weight=0.1 if args.gan else 0.0, gan_start_step=args.gan_start, r1_cost=10.0,
                        disc_max_channels=64))
    cifar10_folder_data(c)
    c.data.image_size = 32
    c.data.crop_pct = 1.0
    c.data.augment = "none"
    c.data.num_workers = 2
    c.global_batch = args.batch
    c.total_steps = args.steps
    c.optim.update(dict(name="adamw", base_lr=args.lr, lr_batch_denominator=0, b1=0.0, b2=0.99, eps=1e-8,
                        weight_decay=0.0, schedule="cosine", min_lr=0.0, warmup_steps=min(100, args.steps)))
    c.checkpoint.every_steps = max(1, args.steps // 5)
    c.log_every_steps = max(1, min(50, args.steps // 100))
    c.evals.reconstruction = dict(type="reconstruction", num_images=8)
    if args.smoke:
        smoke(c)
        c.data.num_workers = 0
    return c
