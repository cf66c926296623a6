"""A toy method that lives outside the maskjax package: the proof that a new method is one file.

"Toy masked regression": patches are embedded by one linear layer, a per-example masking rate
in ``[min_rate, max_rate]`` hides a different number of patches in each image (a rate mask with
weights, as MaskGIT or masked diffusion draw it), hidden patch embeddings are replaced by a
learned mask token, a two-layer MLP mixes each token with the image's mean token, and a linear
head predicts the hidden patches' pixels. An EMA copy of the patch embedding (a non-gradient
"teacher", as I-JEPA or data2vec keep) is updated after every optimizer step by ``after_step``.

It is registered through the ``maskjax.methods`` entry point group (the test writes the
distribution metadata); a real package would declare, in its ``pyproject.toml``::

    [project.entry-points."maskjax.methods"]
    toy_masked_regression = "toy_masked_regression"

The same file is also the method's config (``get_config``), so
``maskjax train --config tests/plugins/toy_masked_regression.py`` runs it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.config import embedded_data, method_config, parse_arg, smoke
from maskjax.masking import rate_mask
from maskjax.methods import Method, register
from maskjax.models.flop_count import matmul, scaled
from maskjax.models.layers import patchify
from maskjax.objectives import weighted_token_mean

NAME = "toy_masked_regression"


class Teacher(nnx.Variable):
    """Non-gradient state: the EMA of the patch embedding (lives in the train state's ``extra``)."""


class ToyModel(nnx.Module):
    """Linear patch embedding, mask token, token-plus-context MLP and a pixel head."""

    def __init__(self, *, patch: int, width: int, rngs: nnx.Rngs):
        pixels = patch * patch * 3
        self.patch = patch
        self.embed = nnx.Linear(pixels, width, rngs=rngs)
        self.mask_token = nnx.Param(jnp.zeros((width,)))
        self.mix = nnx.Linear(2 * width, width, rngs=rngs)
        self.head = nnx.Linear(width, pixels, rngs=rngs)
        self.teacher = Teacher(self.embed.kernel[...])

    def encode(self, images: jax.Array, hidden: jax.Array | None = None) -> jax.Array:
        """Token features [B, L, width]; ``hidden`` [B, L] (True = masked) swaps in the mask token."""
        x = self.embed(patchify(images, self.patch))
        if hidden is not None:
            x = jnp.where(hidden[..., None], self.mask_token[...], x)
        context = jnp.broadcast_to(x.mean(axis=1, keepdims=True), x.shape)
        return jax.nn.gelu(self.mix(jnp.concatenate([x, context], axis=-1)))

    def __call__(self, images: jax.Array, hidden: jax.Array) -> jax.Array:
        """Predicted pixels [B, L, patch * patch * 3] of every patch."""
        return self.head(self.encode(images, hidden))


@register(NAME)
class ToyMaskedRegression(Method):
    """Per-example-rate masked patch regression with an EMA teacher (a toy; see the module docstring)."""

    modality = "image"

    @classmethod
    def config_section(cls) -> dict:
        """The method's own options, at ``config.toy_masked_regression``."""
        return {"patch": 4, "width": 32, "min_rate": 0.25, "max_rate": 0.75, "ema_decay": 0.9}

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """The patch divides the image; the rates are an interval in (0, 1]."""
        own = config[NAME]
        if config.data.image_size % own.patch:
            errors.append(f"{NAME}.patch {own.patch} does not divide data.image_size {config.data.image_size}")
        if not 0.0 < own.min_rate <= own.max_rate <= 1.0:
            errors.append(f"{NAME}: need 0 < min_rate <= max_rate <= 1, got {own.min_rate}, {own.max_rate}")

    def build(self, rngs):
        """A :class:`ToyModel` of the configured patch size and width."""
        own = self.config[NAME]
        return ToyModel(patch=own.patch, width=own.width, rngs=rngs)

    def num_patches(self) -> int:
        """Patches per image."""
        return (self.config.data.image_size // self.config[NAME].patch) ** 2

    def loss(self, model, batch, keys, train, step=None):
        """Squared error on the hidden patches, each example hiding its own drawn fraction."""
        own = self.config[NAME]
        images = batch["image"]
        rate_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        rates = jax.vmap(lambda k: jax.random.uniform(k, (), minval=own.min_rate, maxval=own.max_rate))(rate_keys)
        hidden = rate_mask(keys, self.num_patches(), rates, minimum=1)
        pred = model(images, hidden)
        per_patch = jnp.mean(jnp.square(pred - patchify(images, own.patch)), axis=-1)
        loss = weighted_token_mean(per_patch, hidden)
        return loss, {"loss": loss, "hidden_fraction": jnp.mean(hidden.astype(jnp.float32))}

    def after_step(self, params, extra, step):
        """EMA of the patch embedding into the teacher variable."""
        decay = float(self.config[NAME].ema_decay)
        teacher = decay * extra["teacher"] + (1.0 - decay) * params["embed"]["kernel"]
        return {**extra, "teacher": teacher}

    def features(self, model, inputs, pool=None):
        """Mean-pooled token features of the unmasked images."""
        return model.encode(inputs).mean(axis=1)

    def flops(self, global_batch):
        """Embedding, MLP and head matmuls on every patch, x3 for training."""
        own, tokens = self.config[NAME], self.num_patches()
        pixels = own.patch * own.patch * 3
        parts = {"embed": matmul(tokens, pixels, own.width), "mix": matmul(tokens, 2 * own.width, own.width),
                 "head": matmul(tokens, own.width, pixels)}
        return scaled(NAME, parts, global_batch, "image patch", tokens)


def get_config(arg=None):
    """The toy method on the embedded CIFAR-10 subset at 16x16; ``arg``: "smoke"."""
    args = parse_arg(arg, smoke=False)
    c = method_config(NAME)
    embedded_data(c, image_size=16)
    c.data.crop_pct = 1.0
    c.data.augment = "none"
    c.global_batch = 16
    c.total_steps = 6
    c.optim.base_lr = 1e-3
    c.optim.warmup_epochs = 0.0
    c.progress = False
    c.evals.probe = dict(type="quick_probe", train_examples=64, test_examples=32, steps=20)
    c.evals.knn = dict(type="knn", train_examples=64, test_examples=32, k=5)
    if args.smoke:
        smoke(c, global_batch=16, steps=2)
    return c
