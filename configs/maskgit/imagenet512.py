"""MaskGIT class-conditional ImageNet 512x512 (Chang et al., CVPR 2022; google-research/maskgit
``maskgit_class_cond_config.py`` with ``image_size`` 512, the value its hyper-sweep lists).

Recipe: the 256-px recipe (configs/maskgit/imagenet256.py: same transformer, optimiser, masking,
loss, EMA) on 32x32 tokens of the 512-px VQGAN (f=16, codebook 1024): ``[class] + 1024 tokens``,
1025 positions. Decoding: 12 steps (the paper's for 512 px), choice temperature 4.5, cosine.

Expected (the paper's numbers, not measured by us): FID 7.32 and IS 156.0 with 12 steps [paper
Table 1, recalled; IS UNVERIFIED, spec 14]; README: FID 7.32 for the released checkpoint. Not
runnable here: tokens in ``$MASKJAX_IMAGENET512_TOKENS/{train,val}`` (``maskjax tokenize-images``)
and TPU/GPU-scale compute.

Command:
  maskjax train --config configs/maskgit/imagenet512.py --workdir runs/maskgit_in512
``:smoke`` runs two CPU steps of a micro transformer on synthetic 32x32 token grids.
"""

import importlib.util
import pathlib

# One recipe, two resolutions: the 256-px file's recipe function.
_spec = importlib.util.spec_from_file_location("maskgit_imagenet256", pathlib.Path(__file__).parent / "imagenet256.py")
_in256 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_in256)

PAPER_RESULTS = {
    "ImageNet 512 FID (12 steps)": (7.32, "paper Table 1, recalled; README"),
    "ImageNet 512 IS (12 steps)": (156.0, "paper Table 1, recalled - UNVERIFIED"),
}


def get_config(arg=None):
    """``arg``: smoke."""
    return _in256.imagenet_recipe(arg, image_size=512, sample_steps=12, env="MASKJAX_IMAGENET512_TOKENS")
