"""I-JEPA ViT-B/16 on ImageNet-1K, 300 epochs: the ViT-H/14 recipe (``configs/ijepa/vit_h14.py``:
masks, EMA, optimiser, batch 2048, and its deviations) with a ViT-B/16 encoder (a 14x14 grid at
224 px: the recipe's block scales and min_keep 10 apply as they are) and the predictor of the
official code's ``helper.init_model`` defaults, 6 blocks x 384 wide (12 heads, the encoder's).

The official repository ships no ViT-B config; the paper's own ViT-B/16 predictor settings are not
in the spec (unconfirmed), so this is a variant, not a reproduction.

Command (data as TFDS imagenet2012 ArrayRecord; raise --config.grad_accum on fewer devices):
  maskjax train --config configs/ijepa/vit_b16.py --workdir gs://BUCKET/ijepa_vit_b16
Hardware of the reference: none (no official ViT-B run). Expected: no official number.

Variants as vit_h14.py: ``:smoke``, ``:cifar`` (identical to vit_h14.py's: the comparison fixes
the backbone), ``:cifar,smoke``.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("ijepa_vit_h14_recipe", pathlib.Path(__file__).with_name("vit_h14.py"))
_recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_recipe)


def get_config(arg=None):
    """I-JEPA ViT-B/16 on ImageNet-1K; ``arg``: "smoke", "cifar"."""
    return _recipe.imagenet_recipe("B/16", arg, pred_depth=6)
