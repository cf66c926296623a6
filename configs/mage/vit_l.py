"""MAGE ViT-L class-unconditional pre-training on ImageNet 256x256 tokens (Li et al., CVPR 2023;
LTH14/mage README; specs/methods_text_gen.md 10).

The ViT-B recipe (``configs/mage/vit_b.py``: tokens, masking, optimiser, 1600 epochs at batch
4096) with the ViT-L encoder (24 blocks, 1024 wide, 16 heads) and a decoder of 8 blocks of 1024
with 16 heads (``mage_vit_large_patch16``); the same README pre-training command with
``--model mage_vit_large_patch16``.

Expected (the README's numbers for the released checkpoint; not measured by us):
class-unconditional FID 9.10 and IS 105.1 (``--temp 6.0 --num_iter 20``), linear probe 78.9 %
(blr 0.05), fine-tuning 83.9 %. Same deviation and data requirements as ViT-B.

Command:
  maskjax train --config configs/mage/vit_l.py --workdir runs/mage_vit_l
``:smoke`` runs two CPU steps of a micro model on synthetic 16x16 token grids.
"""

import importlib.util
import pathlib

from maskjax.methods.mage import VIT_L

README_RESULTS = {
    "ImageNet 256 unconditional FID (20 steps, temp 6.0)": (9.10, "README, released checkpoint"),
    "ImageNet 256 unconditional IS": (105.1, "README, released checkpoint"),
    "ImageNet linear probe top-1 %": (78.9, "README, released checkpoint"),
    "ImageNet fine-tuning top-1 %": (83.9, "README, released checkpoint"),
}


def _vit_b():
    # Config files are loaded by path, not as a package: load the sibling recipe the same way.
    spec = importlib.util.spec_from_file_location("mage_vit_b_recipe", pathlib.Path(__file__).with_name("vit_b.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    """``arg``: smoke."""
    return _vit_b().imagenet_recipe(arg, VIT_L)
