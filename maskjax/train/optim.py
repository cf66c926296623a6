"""Optimisers and learning-rate schedules of the trainer.

They live in :mod:`maskjax.optim` (below train and eval, which both use them); this module
re-exports them so existing imports keep working.
"""

from __future__ import annotations

from maskjax.optim.optimizers import (  # noqa: F401 - re-exported
    OPTIMIZERS,
    ScaleByAdamNoBiasCorrectionState,
    mae_decay_mask,
    make_optimizer,
    scale_by_adam_no_bias_correction,
)
from maskjax.optim.schedules import (  # noqa: F401 - re-exported
    SCHEDULES,
    make_schedule,
    peak_lr,
    warmup_cosine,
    warmup_linear,
)
