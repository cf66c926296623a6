"""Pure mask generators (static shapes) and mask-rate schedules."""

from maskjax.masking.random import (
    Mask, gather_tokens, mask_from_noise, num_kept, random_mask, uniform_noise, unshuffle_with_mask_tokens)
from maskjax.masking.rates import hidden_counts, mask_from_counts, rate_mask
from maskjax.masking.schedules import mask_rate_schedule
from maskjax.masking.spans import (
    NgramSpans, SpanTargets, ngram_mask, span_length_distribution, span_mask)
from maskjax.masking.text import TokenMask, bert_mask, electra_mask, electra_max_predictions

__all__ = [
    "Mask", "gather_tokens", "mask_from_noise", "num_kept", "random_mask", "uniform_noise",
    "unshuffle_with_mask_tokens",
    "hidden_counts", "mask_from_counts", "rate_mask",
    "mask_rate_schedule",
    "NgramSpans", "SpanTargets", "ngram_mask", "span_length_distribution", "span_mask",
    "TokenMask", "bert_mask", "electra_mask", "electra_max_predictions",
]
