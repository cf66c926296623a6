"""MAE ViT-H/14 on ImageNet-1K: the paper recipe (shared settings in `maskjax.config.mae_imagenet`).

Arguments: `epochs=800` (default, the recommended command) or `epochs=1600` (the released
checkpoints); `smoke` runs two CPU steps of this model on the bundled images.

Command (data prepared as TFDS imagenet2012 ArrayRecord; keep the global batch at 4096 and
raise --config.grad_accum on fewer devices):
  maskjax train --config configs/mae/vit_h14_in1k.py:epochs=1600 --workdir gs://BUCKET/mae_vit_h14_in1k
  maskjax eval --config configs/mae/vit_h14_in1k.py --workdir gs://BUCKET/mae_vit_h14_in1k --evals finetune
Hardware of the reference: 64 V100 GPUs x 64 images (PyTorch repo); the paper used TPUs.
Expected (paper / official README, 1600 epochs): fine-tune top-1 86.9 (50 epochs, blr 1e-3,
layer decay 0.75, drop path 0.3), linear probe 76.6. These are the paper's numbers, not a maskjax
measurement; what maskjax has measured is in docs/results/.
"""

from maskjax.config import mae_imagenet_from_arg


def get_config(arg=None):
    """MAE ViT-H/14 on ImageNet-1K; `arg`: "epochs=800|1600", "smoke"."""
    return mae_imagenet_from_arg("H/14", arg)
