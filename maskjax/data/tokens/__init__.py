"""Image-token data: the "image_tokens" modality of masked generative image models (maskjax.data.image_tokens)."""
