"""Pure mask generators (static shapes) and mask-rate schedules."""

from maskjax.masking.random import Mask, gather_tokens, mask_from_noise, num_kept, random_mask, uniform_noise

__all__ = ["Mask", "gather_tokens", "mask_from_noise", "num_kept", "random_mask", "uniform_noise"]
