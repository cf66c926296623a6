"""Analytic model FLOPs of a config, through the method contract (``Method.flops``).

The conventions and the per-family counts are in :mod:`maskjax.models.flop_count`.
"""

from __future__ import annotations

from maskjax.methods import make_method
from maskjax.methods.base import NotSupported
from maskjax.models.flop_count import TRAIN_MULTIPLIER, FlopCount, matmul, transformer_layer

__all__ = ["TRAIN_MULTIPLIER", "FlopCount", "matmul", "model_flops", "transformer_layer"]


def model_flops(config, global_batch: int | None = None) -> FlopCount:
    """The analytic :class:`FlopCount` of ``config.method`` at ``global_batch`` (default the config's).

    Raises :class:`~maskjax.methods.base.NotSupported` (a ValueError's sibling with a clear
    message) when the method defines no count.
    """
    method = make_method(config)
    return method.flops(int(global_batch or config.global_batch))


def has_flops(config) -> bool:
    """Whether ``config.method`` defines an analytic count."""
    try:
        model_flops(config, 1)
    except NotSupported:
        return False
    return True
