"""SimMIM with BEiT block-wise masks: the SimMIM ViT-B/16 800-epoch recipe
(``configs/simmim/vit_b_800ep.py``) with its mask units replaced by BEiT's ``MaskingGenerator``
(microsoft/unilm ``beit/masking_generator.py``; specs §3(a)): rectangles of at least 16 patches,
aspect ratio in [0.3, 1/0.3], added until 75 of the 14x14 patches are hidden (the loop may stop
short, so the count varies per image).

This is the "SimMIM with BEiT block masks" row of the masked-image-modeling comparison: the same
encoder, head and L1 pixel loss as SimMIM, only the mask differs. Block parameters are scaled to
the token grid by their share of BEiT's 196 patches (75/196 hidden, blocks of at least 16/196);
on the 14x14 grid of ViT-B/16 at 224 they are BEiT's own values.

Command (data as in vit_b_800ep.py):
  maskjax train --config configs/simmim/beit_block.py --workdir gs://BUCKET/simmim_beit_block
Hardware of the reference: none; neither repository reports this combination with these settings.
Expected: no official number (the SimMIM paper's masking-strategy ablation is not recorded in the
spec: unconfirmed). Variants as vit_b_800ep.py: ``:smoke``, ``:cifar``, ``:cifar,smoke``.
"""

import pathlib

from maskjax.config import load_config, parse_arg
from maskjax.models.vit import parse_variant

# BEiT's pre-training masks (run_beit_pretraining.py): 75 of 14x14 patches, blocks >= 16 patches.
BEIT_PATCHES, BEIT_NUM_MASK, BEIT_MIN_BLOCK = 196, 75, 16


def get_config(arg=None):
    """SimMIM ViT-B/16 with BEiT block masks; ``arg`` as vit_b_800ep.py ("smoke", "cifar", "epochs=N")."""
    args = parse_arg(arg, smoke=False, cifar=False, epochs=800)
    names = [n for n in ("cifar", "smoke") if args[n]] + [f"epochs={args.epochs}"]
    c = load_config(f"{pathlib.Path(__file__).with_name('vit_b_800ep.py')}:{','.join(names)}")
    _, patch = parse_variant(c.model.variant)
    tokens = (c.data.image_size // patch) ** 2
    c.masking.kind = "block"
    # :cifar: 8x8 = 64 tokens -> round(64 x 75/196) = 24 hidden, blocks of at least round(5.2) = 5.
    c.simmim.block.num_masking_patches = round(tokens * BEIT_NUM_MASK / BEIT_PATCHES)
    c.simmim.block.min_num_patches = max(1, round(tokens * BEIT_MIN_BLOCK / BEIT_PATCHES))
    c.simmim.block.max_num_patches = None
    c.simmim.block.min_aspect, c.simmim.block.max_aspect = 0.3, None
    return c
