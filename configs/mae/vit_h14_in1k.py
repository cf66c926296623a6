"""MAE ViT-H/14 pre-training on ImageNet-1K (He et al., "Masked Autoencoders Are Scalable Vision Learners").

Recipe (facebookresearch/mae main_pretrain.py, PRETRAIN.md): batch 4096, AdamW (0.9, 0.95),
wd 0.05, blr 1.5e-4 (lr = blr x 4096 / 256 = 2.4e-3), 40 warmup epochs then cosine, mask
ratio 0.75, norm-pix loss, RandomResizedCrop(0.2, 1) + flip, decoder 512-d x 8 blocks.
Arguments: `epochs=800` (the recommended command; default) or `epochs=1600` (the released
checkpoints); `smoke` runs two CPU steps of the same model on the bundled images.

Command (TPU pod or GPU cluster, data prepared as TFDS imagenet2012 ArrayRecord):
  maskjax train --config configs/mae/vit_h14_in1k.py:epochs=1600 --workdir gs://BUCKET/mae_vit_h14_in1k
  # fewer devices, same result: --config.grad_accum=4 (the global batch stays 4096)
Hardware of the reference run: 64 V100 GPUs x 64 images (PyTorch repo); the paper's numbers
come from TPUs (TF).
Expected result (paper and official README, 1600 epochs + the MAE fine-tune recipe):
ImageNet-1K fine-tune top-1 86.9, linear probe 76.6 (paper, TF/TPU). These are the paper's
numbers, not a maskjax measurement; see docs/results/ for what maskjax has measured.
"""

from maskjax.recipes import mae_imagenet_from_arg


def get_config(arg=None):
    """MAE ViT-H/14 on ImageNet-1K; `arg`: "epochs=800|1600", "smoke"."""
    return mae_imagenet_from_arg("H/14", arg)
