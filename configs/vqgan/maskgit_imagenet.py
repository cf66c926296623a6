"""MaskGIT's VQGAN tokenizer on ImageNet 256x256 (google-research/maskgit ``maskgit/configs/vqgan_config.py``
+ ``base_config.py``; specs/methods_text_gen.md 9e).

Recipe (the official config's values; the tokenizer's trainer is not released): encoder and decoder
of 128 filters with channel multipliers [1, 1, 2, 2, 4] (f = 16: 256x256 -> 16x16 tokens), 2
residual blocks per level, GroupNorm, swish, average-pool down-sampling; VQ with 1024 codes of 256
dimensions, commitment 0.25, entropy loss 0.1 (temperature 0.01, "softmax"); non-saturating GAN
with the StyleGAN discriminator, generator weight 0.1, R1 penalty 10; Adam (beta1 0, beta2 0.99),
lr 1e-4 for both players (one optimizer here, see maskjax/methods/vqgan.py), constant after the
base config's 2,000 warm-up steps; batch 256, 1M steps, float32.

Deviations: no perceptual loss (weight 0.1 officially; its pretrained network cannot be had
offline); the reconstruction loss is L2 (the trainer that would say L1 or L2 is not released); no
Polyak (EMA 0.999) copy of the weights; images are resized + center-cropped without augmentation
(the official preprocessing is not released).

Expected (the official README's number, not measured by us): reconstruction FID 2.28 at 256 px,
with the perceptual loss this recipe lacks, so expect a worse FID here.
Not runnable on this machine: ImageNet (TFDS ``imagenet2012``, prepared by the user) and accelerator
compute are needed.

Command:
  maskjax train --config configs/vqgan/maskgit_imagenet.py --workdir runs/vqgan_in256
  maskjax tokenize-images --workdir runs/vqgan_in256 --out $MASKJAX_DATA_DIR/imagenet256_tokens --split train
``:smoke`` runs two CPU steps of a narrow model (32 filters, the same multipliers) on the bundled
CIFAR-10 images at 32 px.
"""

from maskjax.config import method_config, parse_arg, smoke

PAPER_RESULTS = {"ImageNet 256 reconstruction FID": (2.28, "official README, with the perceptual loss")}


def get_config(arg=None):
    """``arg``: "smoke" for a two-step CPU run of a narrow model."""
    args = parse_arg(arg, smoke=False)
    c = method_config("vqgan")
    c.vqgan.update(dict(quantizer="vq", codebook_size=1024, embedding_dim=256, filters=128,
                        channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=2, conv_downsample=False,
                        norm_groups=32, commitment_cost=0.25, entropy_loss_ratio=0.1, entropy_temperature=0.01,
                        entropy_loss_type="softmax", l1_weight=0.0, l2_weight=1.0, gan_weight=0.1,
                        gan_start_step=0, r1_cost=10.0, disc_channel_multiplier=1, disc_max_channels=512,
                        disc_blur=True))
    c.data.kind = "tfds"
    c.data.name = "imagenet2012"
    c.data.split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = 256
    c.data.augment = "none"
    c.data.num_workers = 8
    c.global_batch = 256
    c.total_steps = 1_000_000
    c.optim.update(dict(name="adamw", base_lr=1e-4, lr_batch_denominator=0, b1=0.0, b2=0.99, eps=1e-8,
                        weight_decay=0.0, schedule="constant", min_lr=0.0, warmup_steps=2000))
    c.compute_dtype = "float32"
    c.checkpoint.every_steps = 10_000
    c.log_every_steps = 100
    c.evals.reconstruction = dict(type="reconstruction", every_steps=10_000, num_images=8)
    if args.smoke:
        c.vqgan.update(dict(filters=32, embedding_dim=32, disc_max_channels=32))
        smoke(c)
        c.data.image_size = 32
        c.data.crop_pct = 1.0
        c.data.num_workers = 0
    return c
