"""MaskGIT class-conditional ImageNet 256x256 (Chang et al., CVPR 2022; google-research/maskgit
``maskgit/configs/maskgit_class_cond_config.py`` + ``base_config.py``; specs/methods_text_gen.md 9).

Recipe (spec 9b-9d; the training code is not released, these are the official config's values):
16x16 tokens of the official VQGAN (codebook 1024, f=16), ``[class] + 256 tokens``, vocabulary
1024 + 1000 + 1 (mask id 2024); the transformer of 24 post-LN layers, width 768, FFN 3072, 16 heads
(the paper's text says 8: spec 14), dropout 0.1; r ~ U[0, 1), ceil(cos(pi/2 r) 256) tokens masked,
label-smoothed (0.1) cross-entropy on the masked tokens only; Adam lr 1e-4 (0.9, 0.96), weight decay
4.5e-2, 5,000 warm-up steps then constant (``lr_schedule="constant"`` of base_config), batch 256,
2M steps, EMA (``polyak_decay``) 0.999. Decoding: 8 steps (the paper's for 256 px; the official
demo uses 16), choice temperature 4.5, cosine schedule.

Expected (the paper's numbers, not measured by us): FID 6.18 and IS 182.1 with 8 steps [paper
Table 1, recalled; IS UNVERIFIED, spec 14]; the released checkpoint measures FID 6.06 [README].
Not runnable here: it needs ImageNet tokenized once with the 256-px VQGAN by ``maskjax
tokenize-images`` into ``$MASKJAX_IMAGENET256_TOKENS/{train,val}`` (or
``$MASKJAX_DATA_DIR/imagenet256_tokens``), and TPU/GPU-scale compute (the paper: TPU v4).

Command:
  maskjax train --config configs/maskgit/imagenet256.py --workdir runs/maskgit_in256
``:smoke`` runs two CPU steps of a micro transformer on synthetic 16x16 token grids (same vocabulary).
"""

from maskjax.config import dataset_path, method_config, parse_arg, smoke
from maskjax.data.image_tokens import synthetic_token_data
from maskjax.methods.maskgit import MaskGIT

PAPER_RESULTS = {
    "ImageNet 256 FID (8 steps)": (6.18, "paper Table 1, recalled"),
    "ImageNet 256 IS (8 steps)": (182.1, "paper Table 1, recalled - UNVERIFIED"),
    "ImageNet 256 FID, released checkpoint": (6.06, "README"),
}
# A micro transformer for the :smoke variants (the recipe's run and data shape, not its model).
SMOKE_MODEL = dict(variant="maskgit-smoke", hidden=32, depth=2, heads=2, intermediate=64)


def imagenet_recipe(arg, *, image_size: int, sample_steps: int, env: str):
    """The official class-conditional recipe at ``image_size`` (256 or 512: 16x16 or 32x32 tokens)."""
    args = parse_arg(arg, smoke=False)
    c = MaskGIT.fill_config(method_config("maskgit"))
    root = dataset_path(f"imagenet{image_size}_tokens", env)
    c.data.update(dict(kind="array_record_tokens", path=str(root / "train"), eval_path=str(root / "val"),
                       grid_size=image_size // 16, codebook_size=1024, num_classes=1000))
    c.maskgit.update(dict(mask_schedule="cosine", label_smoothing=0.1, sample_steps=sample_steps,
                          choice_temperature=4.5, sample_schedule="cosine", ema_decay=0.999))
    c.global_batch = 256
    c.total_steps = 2_000_000
    c.optim.update(dict(name="adamw", base_lr=1e-4, lr_batch_denominator=0, b1=0.9, b2=0.96, eps=1e-8,
                        weight_decay=4.5e-2, schedule="constant", min_lr=0.0, warmup_steps=5000))
    c.checkpoint.every_steps = 10_000
    c.log_every_steps = 100
    if args.smoke:
        c.model.update(SMOKE_MODEL)
        smoke(c, data=synthetic_token_data)
    return c


def get_config(arg=None):
    """``arg``: smoke."""
    return imagenet_recipe(arg, image_size=256, sample_steps=8, env="MASKJAX_IMAGENET256_TOKENS")
