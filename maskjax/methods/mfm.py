"""MFM: Masked Frequency Modeling (Xie et al., ICLR 2023; Jiahao000/MFM, specs/methods_vision.md section 12).

Per image, a circular mask on the fftshift-ed spectrum removes either the high frequencies
(low-pass, probability ``sample_ratio``) or the low ones (high-pass); the ViT sees the corrupted
image with **all** its tokens (nothing dropped or replaced), a linear head predicts the original
image, and the loss is a distance between ortho-FFT spectra averaged over the masked frequencies
(:mod:`maskjax.objectives.frequency`).

Normalisation. The official pipeline corrupts the [0, 1] image (``ToTensor``), clamps it to [0, 1]
and only then applies the ImageNet normalisation (``MFM.forward``: ``normalize_img`` of both the
corrupted input and the target). maskjax batches arrive already normalised by
``maskjax.data.transforms.Normalize`` (``(u8 / 255 - IMAGENET_MEAN) / IMAGENET_STD`` in float32;
the image pipeline always uses the ImageNet constants). So the loss undoes it in-graph
(:func:`to_unit_range`: ``x * std + mean``, which gives ``u8 / 255`` back to float32 rounding),
corrupts and clamps, and redoes it with the same float32 constants and formula
(:func:`from_unit_range`). The target is the batch as it arrives: it is already exactly
``normalize_img(x)``.

Model (``configs/vit_base/mfm_pretrain__vit_base__img224__300ep.yaml``): ViT with a learnable
absolute position embedding and a cls token, no layer scale, no relative position bias, drop
path 0; head = 1x1 conv to ``p*p*3`` + PixelShuffle(p) on the patch tokens (decoder depth 0),
here a Dense per token whose ``p*p*3`` outputs are read in PixelShuffle's (channel, row, column)
order. ``mfm.init="official"`` reproduces the official initialisation (``VisionTransformerForMFM``
overrides ``_trunc_normal_`` with bounds ``a=-std, b=std``): position embedding, cls token and
every Linear/patch-embedding weight ~ trunc-normal(0.02) cut at **+-1 sigma**, biases 0, then
``fix_init_weight`` divides ``attn.proj`` and ``mlp.fc2`` of block ``i`` (1-based) by
``sqrt(2 i)``; the head keeps PyTorch's default conv init (``U(+-1/sqrt(width))`` for weight and
bias), since ``MFM`` never re-initialises it. ``init="mae"`` keeps maskjax's MAE initialisation
(xavier, normal(0.02) cls token) with the position embedding starting from sin-cos values.

Attention bias: the official blocks have learnable q and v biases and no k bias; maskjax's ViT
has one qkv bias. A k bias adds ``q . b_k`` to every score of a query, which softmax ignores, so
the two compute the same function.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from maskjax.masking.frequency import mfm_base_mask, mfm_corrupt, mfm_freq_mask, mfm_is_low_pass
from maskjax.methods import register
from maskjax.methods.mae import EncoderMethod, check_vit_config, compute_dtype
from maskjax.models.layers import dense, unpatchify
from maskjax.models.vit import ViT, parse_variant
from maskjax.objectives.frequency import masked_frequency_loss, ortho_spectrum

NAME = "mfm"
INITS = ("official", "mae")
FILTERS = ("alternate", "random", "low", "high")
OFFICIAL_INIT_STD = 0.02


def to_unit_range(images: jax.Array) -> jax.Array:
    """ImageNet-normalised images [..., 3] back to [0, 1] pixels: ``x * std + mean`` (float32)."""
    x = images.astype(jnp.float32)
    return x * jnp.asarray(IMAGENET_STD, jnp.float32) + jnp.asarray(IMAGENET_MEAN, jnp.float32)


def from_unit_range(images: jax.Array) -> jax.Array:
    """[0, 1] pixels [..., 3] -> ImageNet-normalised, the formula and float32 constants of ``Normalize``."""
    x = images.astype(jnp.float32)
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def corrupt_normalized(images: jax.Array, freq_masks: jax.Array) -> jax.Array:
    """MFM's encoder input from normalised images [B, H, W, 3] and masks [B, H, W] (1 = kept).

    Un-normalise, ``mfm_corrupt`` (fft2 -> fftshift -> mask -> ifft -> real -> clamp to [0, 1]),
    normalise again: the official ``normalize_img(frequency_transform(x, mask))``.
    """
    return from_unit_range(mfm_corrupt(to_unit_range(images), freq_masks))


def log_spectra(images: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """``log(1 + |F|)`` of [0, 1] images [B, H, W, 3] for figures: grey [B, H, W] in [0, 1] per entry.

    ``F`` is :func:`ortho_spectrum` (fftshift-ed: the zero frequency at ``(H // 2, W // 2)``),
    its magnitude averaged over the channels. Every entry is divided by the per-image maximum of
    the *first* entry (the original) over its non-zero frequencies, so the spectra of one row
    share a scale and the zero frequency, far above the rest, saturates instead of turning every
    other frequency dark; values are clipped to [0, 1].
    """
    logs = {k: jnp.log1p(jnp.abs(ortho_spectrum(v)).mean(axis=1)) for k, v in images.items()}
    first = next(iter(logs.values()))
    h, w = first.shape[1:]
    scale = first.at[:, h // 2, w // 2].set(0.0).max(axis=(1, 2), keepdims=True)
    return {k: jnp.clip(v / jnp.maximum(scale, 1e-12), 0.0, 1.0) for k, v in logs.items()}


def pixel_shuffle_tokens(tokens: jax.Array, patch: int, grid_h: int, grid_w: int) -> jax.Array:
    """[B, L, C*p*p] head outputs -> [B, H, W, C] images, as PixelShuffle(p) after a 1x1 conv.

    PixelShuffle reads output channel ``c*p*p + i*p + j`` of token (h, w) into pixel
    ``(h*p + i, w*p + j)`` of channel ``c``; the vector is reordered to maskjax's (row, column,
    channel) patch order and unpatchified.
    """
    b, length, d = tokens.shape
    channels = d // (patch * patch)
    x = tokens.reshape(b, length, channels, patch, patch).transpose(0, 1, 3, 4, 2)
    return unpatchify(x.reshape(b, length, d), patch, grid_h, grid_w)


def _trunc_normal_1sigma(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    # timm trunc_normal_(std=0.02, a=-0.02, b=0.02): a normal cut at one standard deviation.
    return OFFICIAL_INIT_STD * jax.random.truncated_normal(key, -1.0, 1.0, shape, jnp.float32)


def _block_rescale(path: tuple, value: jax.Array, scanned: bool) -> jax.Array:
    """``fix_init_weight``: attn.proj / mlp.fc2 kernels of block i (1-based) divided by sqrt(2 i)."""
    names = tuple(str(p) for p in path)
    is_target = any(names[k:k + 2] in (("attn", "proj"), ("mlp", "fc2")) for k in range(len(names) - 1))
    if "blocks" not in names or not is_target:
        return value
    if scanned:  # stacked blocks: the leading axis is the layer index
        layer = jnp.arange(1, value.shape[0] + 1, dtype=jnp.float32).reshape((-1,) + (1,) * (value.ndim - 1))
        return value / jnp.sqrt(2.0 * layer)
    index = next(p for p in path if isinstance(p, int))
    return value / math.sqrt(2.0 * (index + 1))


def official_vit_init(encoder: ViT, key: jax.Array) -> None:
    """Re-initialises a maskjax ViT in place as ``VisionTransformerForMFM`` (module docstring).

    Every ``kernel`` (patch embedding, qkv, proj, fc1, fc2) and the cls token get trunc-normal(0.02)
    cut at +-1 sigma, every ``bias`` 0 (LayerNorm scales stay 1), then the ``fix_init_weight``
    rescale. The position embedding is set by the caller.
    """
    scanned = bool(getattr(encoder, "scan_layers", False))
    count = 0
    for path, node in nnx.iter_graph(encoder):
        if not isinstance(node, nnx.Param):
            continue
        leaf = str(path[-1])
        if leaf in ("kernel", "cls_token"):
            value = _trunc_normal_1sigma(jax.random.fold_in(key, count), node[...].shape)
            node[...] = _block_rescale(path, value, scanned)
            count += 1
        elif leaf == "bias":
            node[...] = jnp.zeros_like(node[...])


def _torch_conv_default(bound: float):
    """PyTorch's default Conv2d/Linear init for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class MFMModel(nnx.Module):
    """ViT encoder on the corrupted image + linear pixel head (1x1 conv + PixelShuffle).

    ``__call__(images)`` returns the predicted image [B, H, W, C] (normalised pixel space).
    """

    def __init__(self, variant: str, *, image_size: int, in_chans: int = 3, init: str = "official",
                 rngs: nnx.Rngs, dtype=None, remat: bool | str = False, attention_impl: str | None = None,
                 scan_layers: bool = False):
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.encoder = ViT(variant, image_size=image_size, in_chans=in_chans, rngs=rngs, dtype=dtype,
                           remat=remat, attention_impl=attention_impl, scan_layers=scan_layers)
        enc = self.encoder
        if init == "official":
            key_weights, key_pos = jax.random.split(rngs.params())
            official_vit_init(enc, key_weights)
            pos = _trunc_normal_1sigma(key_pos, enc.pos_embed[...].shape)
        else:
            pos = enc.pos_embed[...]
        # Learnable absolute position embedding (USE_APE), cls row included (timm layout).
        enc.pos_embed = nnx.Param(pos, logical_axes=(None, None, "embed"))
        bound = 1.0 / math.sqrt(enc.width)
        self.head = dense(enc.width, enc.patch_size ** 2 * in_chans, ("embed", "patch"), rngs=rngs, dtype=dtype,
                          kernel_init=_torch_conv_default(bound))
        self.head.bias[...] = _torch_conv_default(bound)(rngs.params(), self.head.bias[...].shape)

    @property
    def patch_size(self) -> int:
        """Patch size of the encoder (the PixelShuffle factor)."""
        return self.encoder.patch_size

    def __call__(self, images: jax.Array) -> jax.Array:
        _, aux = self.encoder(images)
        grid = self.encoder.grid
        return pixel_shuffle_tokens(self.head(aux["tokens"]), self.patch_size, grid, grid)


def _typed_keys(keys: jax.Array, batch: int) -> jax.Array:
    """Per-example typed keys from ``batch`` keys or one key (legacy uint32 keys are wrapped)."""
    if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.wrap_key_data(keys)
    return jax.random.split(keys, batch) if keys.ndim == 0 else keys


def _hidden_counts(size: int, radius1: float, radius2: float) -> tuple[int, int]:
    """(frequencies a low-pass mask hides, frequencies a high-pass mask hides) on a size x size spectrum."""
    c = size // 2
    d2 = (np.arange(size)[:, None] - c) ** 2 + (np.arange(size)[None, :] - c) ** 2
    ring = int(((d2 >= radius1 ** 2) & (d2 < radius2 ** 2)).sum())
    return ring, size * size - ring


@register(NAME)
class MFM(EncoderMethod):
    """Masked Frequency Modeling (module docstring). Features default to the mean of the patch
    tokens: the official fine-tuning pools them, and the pre-training head never reads the cls token."""

    modality = "image"
    default_pool: ClassVar[str] = "pooled"

    @classmethod
    def config_section(cls) -> dict:
        """MFM's own options (official defaults, ``config.py`` + the ViT-B yaml)."""
        return {
            "radius1": 16.0,        # DATA.MASK_RADIUS1, in frequency bins of the shifted spectrum
            "radius2": 999.0,       # DATA.MASK_RADIUS2 (999: the ring reaches every corner)
            "sample_ratio": 0.5,    # DATA.SAMPLE_RATIO: probability of the low-pass mask
            "loss_gamma": 1.0,      # MODEL.FREQ_LOSS.LOSS_GAMMA
            "loss_group_size": 0,   # images per ratio of sums (official: the per-GPU batch); 0 = whole batch
            "init": "official",     # official (trunc-normal +-1 sigma) | mae (xavier, sin-cos start)
        }

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """ViT variant/patch size; 3 channels; radii and ratio that hide frequencies; loss groups; init."""
        if "model" not in config or "variant" not in config.model:
            errors.append("mfm needs a model section with a ViT variant (config.model.variant, e.g. 'B/16')")
            return
        check_vit_config(config, errors)
        own = config[NAME]
        if config.model.get("in_chans", 3) != 3:
            errors.append(f"mfm normalises with the 3 ImageNet channel statistics; model.in_chans must be 3, "
                          f"got {config.model.in_chans}")
        if own.init not in INITS:
            errors.append(f"mfm.init {own.init!r} is unknown; use one of {INITS}")
        if not 0.0 <= own.sample_ratio <= 1.0:
            errors.append(f"mfm.sample_ratio {own.sample_ratio} is a probability; use a value in [0, 1]")
        if own.loss_gamma <= 0:
            errors.append(f"mfm.loss_gamma must be > 0, got {own.loss_gamma}")
        r1, r2, size = float(own.radius1), float(own.radius2), int(config.data.image_size)
        if not 0.0 < r1 < r2:
            errors.append(f"mfm needs 0 < radius1 < radius2, got radius1={r1}, radius2={r2}")
        elif size > 0:
            low_hidden, high_hidden = _hidden_counts(size, r1, r2)
            scaled = 16.0 * size / 224
            if own.sample_ratio > 0 and low_hidden == 0:
                errors.append(f"mfm.radius1={r1:g} is beyond every frequency of a {size}x{size} image: the low-pass "
                              f"mask hides nothing (the loss would be 0/0); scale the official 16 (of 224) to the "
                              f"image, e.g. mfm.radius1={scaled:.3g}")
            if own.sample_ratio < 1 and high_hidden == 0:
                errors.append(f"mfm.radius1={r1:g}, radius2={r2:g}: the high-pass mask hides no frequency of a "
                              f"{size}x{size} image; use a radius1 of at least 1")
        group, accum = int(own.loss_group_size), max(int(config.get("grad_accum", 1)), 1)
        micro = config.global_batch // accum if config.global_batch % accum == 0 else None
        if group < 0:
            errors.append(f"mfm.loss_group_size must be >= 0 (0 = the whole batch), got {group}")
        elif group and micro and micro % group:
            errors.append(f"mfm.loss_group_size {group} does not divide the micro-batch {micro} "
                          f"(global_batch / grad_accum); use a divisor of it or 0 for the whole batch")

    def __init__(self, config):
        super().__init__(config)
        own = config[NAME]
        self.radius1, self.radius2 = float(own.radius1), float(own.radius2)
        self.sample_ratio = float(own.sample_ratio)
        self.gamma = float(own.loss_gamma)
        self.group_size = int(own.loss_group_size)

    def build(self, rngs):
        """Builds :class:`MFMModel` from ``config.model`` and ``config.data.image_size``."""
        m, c = self.config.model, self.config
        return MFMModel(m.variant, image_size=c.data.image_size, in_chans=m.get("in_chans", 3),
                        init=c[NAME].init, rngs=rngs, dtype=compute_dtype(c.get("compute_dtype", "float32")),
                        remat=c.get("remat", False), attention_impl=m.get("attention_impl", None),
                        scan_layers=bool(m.get("scan_layers", False)))

    def freq_masks(self, keys: jax.Array, batch: int, size: int) -> jax.Array:
        """One low- or high-pass mask [B, H, W] per example key (1 = frequency kept)."""
        keys = _typed_keys(keys, batch)
        return jax.vmap(lambda k: mfm_freq_mask(k, size, size, self.radius1, self.radius2, self.sample_ratio))(keys)

    def loss(self, model, batch, keys, train, step=None):
        """Masked-frequency loss of one batch; each example's mask comes from its own key."""
        images = batch["image"]
        masks = self.freq_masks(keys, images.shape[0], images.shape[1])
        pred = model(corrupt_normalized(images, masks))
        loss = masked_frequency_loss(pred, images, masks, gamma=self.gamma, group_size=self.group_size)
        low = jnp.mean(mfm_is_low_pass(masks).astype(jnp.float32))
        return loss, {"loss": loss, "low_pass_fraction": low}

    def _figure_masks(self, key, batch: int, size: int, filters: str) -> jax.Array:
        """The frequency masks [B, H, W] (1 = kept) of a figure; ``filters`` as in :meth:`reconstruct`."""
        if filters not in FILTERS:
            raise ValueError(f"filters must be one of {FILTERS}, got {filters!r}")
        if filters == "random":
            return self.freq_masks(key, batch, size)
        low = jnp.arange(batch) % 2 == 0 if filters == "alternate" else jnp.full((batch,), filters == "low")
        base = mfm_base_mask(size, size, self.radius1, self.radius2)  # the low-pass mask M
        return jnp.where(low[:, None, None], base, 1.0 - base)

    def reconstruct(self, model, inputs, key, stats=None, *, filters: str = "alternate", spectra: bool = False):
        """Original | corrupted | reconstruction of normalised ``inputs`` [B, H, W, 3].

        ``filters``: "alternate" (rows alternate low-pass / high-pass, so a figure shows both),
        "random" (drawn from ``key`` as in training), "low" or "high". The reconstruction is the
        raw prediction (the loss scores only its masked frequencies). With ``spectra`` three more
        columns show ``log(1 + |F|)`` of each image (channel mean, scaled by the original's
        maximum over its non-zero frequencies, :func:`log_spectra`) as grey images. Everything is in
        the input's normalisation, as the figure evaluator expects; ``stats`` (MAE's norm-pix
        option) does not apply.
        """
        del stats
        images = jnp.asarray(inputs, jnp.float32)
        masks = self._figure_masks(key, images.shape[0], images.shape[1], filters)
        corrupted = corrupt_normalized(images, masks)
        recon = model(corrupted).astype(jnp.float32)
        out = {"original": images, "corrupted": corrupted, "reconstruction": recon}
        caption = (f"MFM, radius {self.radius1:g}: "
                   + ("rows alternate low-pass / high-pass" if filters == "alternate" else f"{filters} filters")
                   + "; reconstruction = raw prediction (loss on the masked frequencies only)")
        if spectra:
            for k, grey in log_spectra({k: to_unit_range(v) for k, v in out.items()}).items():
                out[f"spectrum {k}"] = from_unit_range(grey[..., None].repeat(3, axis=-1))
            caption += "; spectra: log(1+|F|), low frequencies at the centre"
        return {**out, "caption": caption}

    def figures(self, model, inputs, key):
        """``spectra``: the images, the kept-frequency mask and the log-magnitude spectra (display space).

        Columns: original | corrupted input | reconstruction | spectrum of the original | the
        frequency mask (white = kept, black = removed: what the loss scores) | spectrum of the
        corrupted input | spectrum of the reconstruction (the predicted spectrum). Rows alternate
        low-pass / high-pass. Spectra are :func:`log_spectra` (fftshift-ed: the zero frequency at
        row ``H // 2``, column ``W // 2``), scaled by each original's largest non-zero frequency.
        """
        out = self.reconstruct(model, inputs, key, filters="alternate")
        caption = out.pop("caption")
        unit = {k: jnp.clip(to_unit_range(v), 0.0, 1.0) for k, v in out.items()}
        spectra = log_spectra({k: to_unit_range(v) for k, v in out.items()})
        masks = self._figure_masks(key, unit["original"].shape[0], unit["original"].shape[1], "alternate")
        grey = lambda x: jnp.repeat(x[..., None], 3, axis=-1)  # noqa: E731
        columns = {"original": unit["original"], "corrupted input": unit["corrupted"],
                   "reconstruction": unit["reconstruction"], "spectrum": grey(spectra["original"]),
                   "kept frequencies": grey(masks), "spectrum of input": grey(spectra["corrupted"]),
                   "predicted spectrum": grey(spectra["reconstruction"])}
        caption += ("; spectra: log(1+|F|) of the [0, 1] image, channel mean, zero frequency at the centre, "
                    "scaled by the original's largest non-zero frequency; mask: white = kept, black = removed "
                    "(scored by the loss)")
        return {"spectra": {**columns, "caption": caption}}

    def flops(self, global_batch):
        """Patch embedding and encoder on all ``L`` patches (+ cls), the head on the ``L`` patch tokens.

        The FFTs of the corruption and the loss are not matmuls and are not counted.
        """
        from maskjax.models.flop_count import matmul, scaled, transformer_layer

        size, patch = parse_variant(self.config.model.variant)
        patches = (self.config.data.image_size // patch) ** 2
        pixels = patch * patch * self.config.model.get("in_chans", 3)
        parts = {
            "patch_embed": matmul(patches, pixels, size.width),
            "encoder": size.depth * transformer_layer(1 + patches, size.width, int(size.width * size.mlp_ratio)),
            "head": matmul(patches, size.width, pixels),
        }
        return scaled(NAME, parts, global_batch, "image patch (all L patches of an image)", patches)
