"""VQGAN image tokenizer (MaskGIT's, google-research/maskgit ``nets/vqgan_tokenizer.py`` and
``configs/vqgan_config.py``; specs/methods_text_gen.md 9e) trained by maskjax itself.

The official repository releases the networks, the losses module and the config, not the
trainer. Here: images (the pipeline's ImageNet normalisation, undone to the official [0, 1]
range) -> encoder (:mod:`maskjax.models.vqgan`) -> quantizer (:mod:`maskjax.objectives.quantizers`:
``vq``, ``ema`` or ``fsq``) -> decoder. Loss per step:

- reconstruction: ``l1_weight * mean|x - x_hat| + l2_weight * mean (x - x_hat)^2`` on [0, 1]
  pixels (the official ``losses.l1_loss`` / ``l2_loss``; which the trainer used is not released:
  the default is L2 alone);
- the quantizer's loss (VQ: commitment 0.25 + codebook term + entropy loss 0.1 at temperature
  0.01; EMA: commitment + entropy, the codebook follows EMAs; FSQ: none);
- optional GAN (``gan_weight`` > 0, the config's ``g_adversarial_loss_weight`` 0.1): the official
  StyleGAN discriminator with the non-saturating loss (``losses.generator_loss`` /
  ``discriminator_loss``) and the R1 penalty ``r1_cost * mean_b |grad_x D(x_b)|^2`` on real images
  (``losses.r1_gradient_penalty``, cost 10). One optimizer updates both players: the generator
  term sees the discriminator through ``stop_gradient`` copies of its parameters, and the
  discriminator terms see ``stop_gradient`` reconstructions, so each player's loss moves only its
  own parameters (a per-parameter optimizer such as Adam then equals two optimizers with the same
  settings; the official config uses Adam beta1 0, beta2 0.99, lr 1e-4 for both). Both players
  step on the same batch at once (``d_step_per_g_step`` 1); ``gan_start_step`` delays both terms.

**There is no perceptual (LPIPS) loss**: the official config weights one at 0.1, but its pretrained
network cannot be had offline, so reconstructions are blurrier than the official tokenizer's and
reconstruction FIDs are not comparable with its 2.28.

EMA codebook state lives in the train state's ``extra`` and is updated after each optimizer step
from the batch's code statistics, which ``loss`` returns under ``metrics["batch_stats"]``
(averaged over micro-batches like every metric; the trainer hands them to ``after_step``).

Tokens: :meth:`VQGAN.encode_to_ids` (images in the pipeline's normalisation -> int32 [B, h*w],
row-major) and :meth:`VQGAN.decode_ids` (ids -> [0, 1] pixels), used by ``maskjax
tokenize-images`` (:func:`tokenize_images_main`) and by MaskGIT sampling (:func:`load_tokenizer`).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from maskjax.methods import register
from maskjax.methods.base import Method, NotSupported
from maskjax.methods.mae import compute_dtype
from maskjax.objectives import quantizers as qz

NAME = "vqgan"
QUANTIZERS = ("vq", "ema", "fsq")
EMA_KEYS = ("ema_codebook", "ema_count", "ema_sum", "ema_updates")
sg = jax.lax.stop_gradient


def to_unit(images: jax.Array) -> jax.Array:
    """Pipeline-normalised images (ImageNet mean/std) -> [0, 1] pixels (float32)."""
    mean, std = jnp.asarray(IMAGENET_MEAN, jnp.float32), jnp.asarray(IMAGENET_STD, jnp.float32)
    return jnp.asarray(images, jnp.float32) * std + mean


def from_unit(pixels: jax.Array) -> jax.Array:
    """[0, 1] pixels -> the pipeline's normalisation (inverse of :func:`to_unit`)."""
    mean, std = jnp.asarray(IMAGENET_MEAN, jnp.float32), jnp.asarray(IMAGENET_STD, jnp.float32)
    return (jnp.asarray(pixels, jnp.float32) - mean) / std


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating generator loss ``mean softplus(-D(fake))`` (``losses.generator_loss``)."""
    return jnp.mean(jax.nn.softplus(-fake_logits.astype(jnp.float32)))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Non-saturating discriminator loss ``mean(softplus(-D(real)) + softplus(D(fake)))``."""
    real, fake = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
    return jnp.mean(jax.nn.softplus(-real) + jax.nn.softplus(fake))


def r1_penalty(discriminator, images: jax.Array, cost: float) -> tuple[jax.Array, jax.Array]:
    """``(logits, cost * mean_b sum |d sum(D(x_b)) / d x_b|^2)``: ``losses.r1_gradient_penalty``.

    The gradient is one VJP of the logits with ones (examples are independent: no batch norm in D).
    """
    logits, vjp = jax.vjp(discriminator, images)
    grad = vjp(jnp.ones_like(logits))[0].astype(jnp.float32)
    return logits, jnp.mean(jnp.sum(jnp.square(grad.reshape(grad.shape[0], -1)), axis=-1)) * cost


def frozen(module: nnx.Module) -> nnx.Module:
    """A copy of ``module`` whose variables are ``stop_gradient``-ed: gradients reach its inputs only."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(sg, state))


@register(NAME)
class VQGAN(Method):
    """The VQGAN tokenizer (module docstring). Features: the mean of the encoder's latents."""

    modality = "image"

    @classmethod
    def config_section(cls) -> dict:
        """The official ImageNet values (``configs/vqgan_config.py``) as defaults."""
        return {
            "quantizer": "vq",                 # vq | ema | fsq
            "codebook_size": 1024,             # vq / ema (fsq: prod(fsq_levels))
            "embedding_dim": 256,              # vq / ema (fsq: len(fsq_levels))
            "filters": 128, "channel_multipliers": (1, 1, 2, 2, 4), "num_res_blocks": 2,
            "conv_downsample": False, "norm_groups": 32,
            "commitment_cost": 0.25, "entropy_loss_ratio": 0.1, "entropy_temperature": 0.01,
            "entropy_loss_type": "softmax",
            "ema_decay": 0.99, "ema_eps": 1e-5,
            "fsq_levels": (8, 5, 5, 5),
            "l1_weight": 0.0, "l2_weight": 1.0,
            "gan_weight": 0.1, "gan_start_step": 0, "r1_cost": 10.0,
            "disc_channel_multiplier": 1, "disc_max_channels": 512, "disc_blur": True,
        }

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """Quantizer, sizes that the down-sampling and GroupNorm allow, loss weights, GAN image size."""
        own = config.get(NAME)
        if own is None:
            errors.append(f"config has no '{NAME}' section; start from maskjax.config.method_config('{NAME}')")
            return
        if own.quantizer not in QUANTIZERS:
            errors.append(f"{NAME}.quantizer={own.quantizer!r}; use one of {QUANTIZERS}")
        mults = tuple(own.channel_multipliers)
        if not mults or min(mults) < 1:
            errors.append(f"{NAME}.channel_multipliers={mults} must be a non-empty list of positive ints")
            return
        factor, size = 2 ** (len(mults) - 1), config.data.image_size
        if isinstance(size, int) and size % factor:
            errors.append(f"data.image_size {size} is not divisible by the down-sampling factor {factor} "
                          f"(2 ** (len({NAME}.channel_multipliers) - 1))")
        for width in {own.filters * m for m in mults}:
            groups = min(own.norm_groups, width)
            if width % groups:
                errors.append(f"{NAME}.norm_groups={own.norm_groups} does not divide the width {width}")
        if own.quantizer == "fsq":
            try:
                size_fsq = qz.fsq_codebook_size(tuple(own.fsq_levels))
            except ValueError as e:
                errors.append(f"{NAME}.fsq_levels: {e}")
            else:
                if size_fsq > 1 << 16:
                    errors.append(f"{NAME}.fsq_levels give {size_fsq} codes; token records hold at most 65536")
        elif own.codebook_size < 1 or own.codebook_size > 1 << 16:
            errors.append(f"{NAME}.codebook_size={own.codebook_size} must be in [1, 65536] (uint16 token ids)")
        if own.quantizer == "ema" and not 0.0 < own.ema_decay < 1.0:
            errors.append(f"{NAME}.ema_decay={own.ema_decay} must be in (0, 1)")
        if own.entropy_loss_type not in ("softmax", "argmax"):
            errors.append(f"{NAME}.entropy_loss_type={own.entropy_loss_type!r}; use softmax or argmax")
        if min(own.l1_weight, own.l2_weight) < 0 or own.l1_weight + own.l2_weight <= 0:
            errors.append(f"{NAME}.l1_weight and l2_weight must be >= 0 and not both 0")
        if own.gan_weight < 0 or own.r1_cost < 0:
            errors.append(f"{NAME}.gan_weight and r1_cost must be >= 0")
        if own.gan_weight > 0 and isinstance(size, int) and (size < 8 or size & (size - 1)):
            errors.append(f"{NAME}.gan_weight > 0 needs a power-of-two data.image_size >= 8 (the StyleGAN "
                          f"discriminator halves it to 4x4), got {size}; or set gan_weight=0")

    def __init__(self, config):
        super().__init__(config)
        own = config[NAME]
        self.own = own
        self.quantizer = own.quantizer
        self.multipliers = tuple(int(m) for m in own.channel_multipliers)
        self.factor = 2 ** (len(self.multipliers) - 1)
        self.levels = tuple(int(v) for v in own.fsq_levels)
        fsq = self.quantizer == "fsq"
        self.codebook_size = qz.fsq_codebook_size(self.levels) if fsq else int(own.codebook_size)
        self.latent_dim = len(self.levels) if fsq else int(own.embedding_dim)
        self.grid = int(config.data.image_size) // self.factor

    def build(self, rngs):
        """:class:`~maskjax.models.vqgan.VQGANTokenizer` (with the discriminator when ``gan_weight`` > 0)."""
        from maskjax.models.vqgan import VQGANTokenizer

        own, c = self.own, self.config
        return VQGANTokenizer(
            quantizer=self.quantizer, codebook_size=self.codebook_size, embedding_dim=self.latent_dim,
            filters=int(own.filters), multipliers=self.multipliers, num_res_blocks=int(own.num_res_blocks),
            image_size=int(c.data.image_size), conv_downsample=bool(own.conv_downsample),
            norm_groups=int(own.norm_groups), discriminator=own.gan_weight > 0,
            disc_channel_multiplier=int(own.disc_channel_multiplier), disc_max_channels=int(own.disc_max_channels),
            disc_blur=bool(own.disc_blur), rngs=rngs, dtype=compute_dtype(c.get("compute_dtype", "float32")))

    # --- quantization ----------------------------------------------------------------------------

    def quantize(self, model, z: jax.Array) -> qz.Quantized:
        """The configured quantizer on latents ``z`` [B, h, w, D] (training losses included)."""
        own = self.own
        entropy = dict(entropy_loss_ratio=float(own.entropy_loss_ratio),
                       entropy_temperature=float(own.entropy_temperature),
                       entropy_loss_type=own.entropy_loss_type)
        if self.quantizer == "vq":
            return qz.vq_quantize(z, model.codebook[...], commitment_cost=float(own.commitment_cost), **entropy)
        if self.quantizer == "ema":
            return qz.ema_vq_quantize(z, model.ema_codebook[...], commitment_cost=float(own.commitment_cost),
                                      **entropy)
        return qz.fsq_quantize(z, self.levels)

    def ids_to_latents(self, model, ids: jax.Array) -> jax.Array:
        """Token ids [...] -> quantized latents [..., D]."""
        if self.quantizer == "fsq":
            return qz.fsq_indices_to_codes(ids, self.levels)
        return jnp.take(model.codebook_array(), jnp.asarray(ids, jnp.int32), axis=0)

    # --- training --------------------------------------------------------------------------------

    def loss(self, model, batch, keys, train, step=None):
        """Reconstruction + quantizer (+ GAN) loss of one batch; ``keys`` are unused (no randomness)."""
        del keys
        own = self.own
        x = to_unit(batch["image"])
        z = model.encoder(x)
        q = self.quantize(model, z)
        recon = model.decoder(q.quantized).astype(jnp.float32)
        diff = recon - x
        l1, l2 = jnp.mean(jnp.abs(diff)), jnp.mean(jnp.square(diff))
        rec = own.l1_weight * l1 + own.l2_weight * l2
        total = rec + q.losses["quantizer_loss"]
        metrics = {"reconstruction_loss": rec, "l1": l1, "l2": l2, **q.losses,
                   "codebook_usage": qz.codebook_usage(q.ids, self.codebook_size),
                   "perplexity": qz.perplexity(q.ids, self.codebook_size)}
        if model.discriminator is not None and train:
            gan, gan_metrics = self.gan_terms(model.discriminator, x, recon, step)
            total = total + gan
            metrics.update(gan_metrics)
        metrics["loss"] = total
        if train and q.stats is not None:
            metrics["batch_stats"] = q.stats
        return total, metrics

    def gan_terms(self, discriminator, real: jax.Array, fake: jax.Array, step) -> tuple[jax.Array, dict]:
        """``(gan_weight * g_loss + d_loss + r1, metrics)`` with each player's gradient kept apart (module docstring)."""
        own = self.own
        g_loss = generator_loss(frozen(discriminator)(fake))               # moves the generator only
        real_logits, r1 = r1_penalty(discriminator, real, float(own.r1_cost))
        fake_logits = discriminator(sg(fake))                               # moves the discriminator only
        d_loss = discriminator_loss(real_logits, fake_logits)
        on = jnp.float32(1.0) if step is None else (jnp.asarray(step) >= int(own.gan_start_step)).astype(jnp.float32)
        total = on * (float(own.gan_weight) * g_loss + d_loss + r1)
        return total, {"g_loss": g_loss, "d_loss": d_loss, "r1_penalty": r1,
                       "d_real_logit": jnp.mean(real_logits), "d_fake_logit": jnp.mean(fake_logits)}

    def after_step(self, params, extra, step, batch_stats=None):
        """EMA quantizer: the codebook update from the batch's code statistics (no-op otherwise)."""
        if self.quantizer != "ema" or batch_stats is None:
            return extra
        latents = int(self.config.global_batch) * self.grid * self.grid
        state = qz.ema_codebook_update({k: extra[k] for k in EMA_KEYS}, batch_stats["frequency"],
                                       batch_stats["mean_sum"], latents, float(self.own.ema_decay),
                                       float(self.own.ema_eps))
        return {**extra, **state}

    # --- tokens and figures ----------------------------------------------------------------------

    def encode_to_ids(self, model, images: jax.Array, normalized: bool = True) -> jax.Array:
        """Token ids int32 [B, h*w] (row-major) of ``images`` [B, H, W, 3] (pipeline-normalised, or [0, 1]
        with ``normalized=False``)."""
        x = to_unit(images) if normalized else jnp.asarray(images, jnp.float32)
        ids = self.quantize(model, model.encoder(x)).ids
        return ids.reshape(ids.shape[0], -1)

    def decode_ids(self, model, ids: jax.Array, clip: bool = True) -> jax.Array:
        """Images [B, H, W, 3] in [0, 1] (clipped unless ``clip=False``) from ids [B, h*w] or [B, h, w]."""
        ids = jnp.asarray(ids, jnp.int32)
        if ids.ndim == 2:
            side = math.isqrt(ids.shape[1])
            if side * side != ids.shape[1]:
                raise ValueError(f"{ids.shape[1]} ids per image is not a square grid; pass [B, h, w]")
            ids = ids.reshape(ids.shape[0], side, side)
        images = model.decoder(self.ids_to_latents(model, ids).astype(jnp.float32)).astype(jnp.float32)
        return jnp.clip(images, 0.0, 1.0) if clip else images

    def reconstruct(self, model, inputs, key, stats=None):
        """Original | reconstruction (through the tokens) of pipeline-normalised ``inputs``, same normalisation."""
        del key, stats
        recon = self.decode_ids(model, self.encode_to_ids(model, inputs))
        caption = (f"{self.quantizer} tokenizer: {self.grid}x{self.grid} tokens from a {self.codebook_size}-code "
                   f"book (down-sampling {self.factor}), decoded; no perceptual loss")
        return {"original": jnp.asarray(inputs), "reconstruction": from_unit(recon), "caption": caption}

    def features(self, model, inputs, pool=None):
        """The mean over positions of the encoder's (pre-quantization) latents [B, D]."""
        if pool not in (None, "pooled"):
            raise NotSupported(f"{NAME} offers the feature 'pooled' (mean encoder latent), not {pool!r}")
        return model.encoder(to_unit(inputs)).mean(axis=(1, 2)).astype(jnp.float32)

    def feature_name(self, pool=None):
        """"pooled" (the mean encoder latent)."""
        return "pooled"

    def flops(self, global_batch):
        """Encoder, decoder, nearest-code search and (with the GAN) discriminator convs: ``tokenizer_flops``."""
        from maskjax.models.vqgan import tokenizer_flops

        own = self.own
        disc = (dict(channel_multiplier=int(own.disc_channel_multiplier), max_channels=int(own.disc_max_channels))
                if own.gan_weight > 0 else None)
        return tokenizer_flops(image_size=int(self.config.data.image_size), in_ch=3, filters=int(own.filters),
                               multipliers=self.multipliers, num_res_blocks=int(own.num_res_blocks),
                               embedding_dim=self.latent_dim, conv_downsample=bool(own.conv_downsample),
                               codebook_size=self.codebook_size, nearest_neighbour=self.quantizer != "fsq",
                               discriminator=disc, global_batch=global_batch)


# --- a trained tokenizer from its workdir, and `maskjax tokenize-images` ---------------------------

def load_tokenizer(workdir: str, step: int | None = None):
    """``(method, model, step)`` of the tokenizer trained in ``workdir`` (its ``config.json`` and newest
    checkpoint, or ``step``), restored onto this machine's devices with the run's mesh."""
    import json

    import ml_collections

    from maskjax.core.checkpoint import Checkpointer
    from maskjax.core.mesh import make_mesh, normalize_rules
    from maskjax.core.state import ModelTemplate, abstract_state
    from maskjax.errors import UsageError
    from maskjax.methods import make_method
    from maskjax.optim.optimizers import make_optimizer
    from maskjax.optim.schedules import warmup_cosine

    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise UsageError(f"{workdir!r} is not a training run (needs config.json and checkpoints/)")
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.method != NAME:
        raise UsageError(f"{workdir} trained method {config.method!r}, not the {NAME!r} tokenizer")
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise UsageError(f"no finished checkpoint in {workdir}/checkpoints")
    method = make_method(config)
    template = ModelTemplate.from_builder(method.build)
    # The optimizer only shapes the restore target; its hyper-parameters do not matter here.
    tx = make_optimizer(config.optim, warmup_cosine(0.0, 0, 1))
    mesh, rules = make_mesh(config.mesh), normalize_rules(config.sharding_rules)
    target, _ = abstract_state(template, method.build, tx, mesh, rules, jax.random.key(0))
    state, _ = ckpt.restore(step, target, None, {})
    ckpt.close()
    return method, template.merge(state["params"], state["extra"]), step


def tokenize_images_main(argv: list[str]) -> int:
    """``maskjax tokenize-images --workdir RUN --out DIR [--split train] [--step N] [--batch 256]``."""
    from maskjax.data.modalities import get_modality
    from maskjax.data.tokenize_images import build_parser, source_split, tokenize_source

    args = build_parser().parse_args(argv)
    method, model, step = load_tokenizer(args.workdir, args.step)
    config = method.config
    source = get_modality(method.modality).open_source(config, source_split(args.split))
    encode = nnx.jit(lambda m, x: method.encode_to_ids(m, x))
    meta = tokenize_source(
        source, lambda images: encode(model, images), os.path.join(args.out, args.split),
        image_size=int(config.data.image_size), crop_pct=float(config.data.crop_pct), batch_size=args.batch,
        grid=(method.grid, method.grid), codebook_size=method.codebook_size,
        source_info={"tokenizer_workdir": os.path.abspath(args.workdir), "step": int(step),
                     "quantizer": method.quantizer, "split": args.split})
    print(f"wrote {meta['num_records']} token grids of {method.grid}x{method.grid} ({method.codebook_size} codes) "
          f"to {os.path.join(args.out, args.split)}")
    return 0
