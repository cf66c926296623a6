"""Layer-wise lr decay + AdamW for ViT fine-tuning.

Lives in :mod:`maskjax.optim.layer_decay` (the fine-tuning evaluators use it too); re-exported
here so existing imports keep working.
"""

from __future__ import annotations

from maskjax.optim.layer_decay import (  # noqa: F401 - re-exported
    NO_WEIGHT_DECAY_NAMES,
    finetune_decay_mask,
    layer_decay_adamw,
    layer_id,
    layer_scales,
    path_strings,
    scale_by_tree,
)
