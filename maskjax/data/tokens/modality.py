"""Registers the "image_tokens" modality when modalities are discovered (the module lives in
maskjax.data.image_tokens, which the tokenizer commands import directly)."""

from maskjax.data import image_tokens  # noqa: F401
