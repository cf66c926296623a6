"""Targets and losses: pure ``jnp`` functions of arrays (no models, no data)."""

from maskjax.objectives.pixels import (denormalize_prediction, masked_mse, norm_pix_target, patch_stats,
                                       weighted_token_mean)

__all__ = ["denormalize_prediction", "masked_mse", "norm_pix_target", "patch_stats", "weighted_token_mean"]
