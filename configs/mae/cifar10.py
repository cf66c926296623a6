"""MAE on all of CIFAR-10 (50,000 32x32 training images): the recipe for small machines.

Not a paper recipe: MAE's ImageNet recipe scaled down for 32x32 images, with a ViT-Ti/4
encoder (64 patches of 4x4), a 4-block 256-d decoder, mask ratio 0.75, norm-pix loss, batch
512 and 15 warmup epochs. There is no paper number for it; what maskjax measured with it is
in docs/results/ (with the hardware and commit).

Data: ``cifar10/{train,test}.tar`` under ``$MASKJAX_DATA_DIR`` (default ``../shared/data`` beside the
checkout; ImageFolder layout in a tar); point ``--config.data.path`` / ``--config.data.eval_path`` elsewhere for
another copy.

Command:
  maskjax train --config configs/mae/cifar10.py --workdir runs/cifar10
  maskjax train --config configs/mae/cifar10.py:epochs=400,variant=S/4   # longer, wider
Hardware: a single GPU or TPU host; on a 2-core CPU use ``configs/mae/default.py`` instead.
"""

from maskjax.config import base_config, cifar10_folder_data, parse_arg, smoke


def get_config(arg=None):
    """CIFAR-10 MAE; ``arg``: "epochs=N", "variant=Ti/4", "smoke"."""
    args = parse_arg(arg, epochs=200, variant="Ti/4", smoke=False)
    c = base_config()
    cifar10_folder_data(c)
    c.data.image_size = 32
    c.data.crop_pct = 1.0
    c.data.num_workers = 2
    c.model.variant = args.variant
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 256, 4, 8
    c.masking.ratio = 0.75
    c.loss.norm_pix = True
    c.global_batch = 512
    c.epochs = args.epochs
    c.optim.base_lr = 1.5e-4
    c.optim.warmup_epochs = 15.0
    c.checkpoint.every_steps = 1000
    c.log_every_steps = 50
    c.evals.reconstruction = dict(type="reconstruction", num_images=8, stats="visible")
    c.evals.knn = dict(type="knn", every_steps=2000, train_examples=10000, test_examples=10000)
    c.evals.probe = dict(type="quick_probe", train_examples=10000, test_examples=10000, steps=1000)
    if args.smoke:
        smoke(c, global_batch=16)
        c.data.num_workers = 0
    return c
