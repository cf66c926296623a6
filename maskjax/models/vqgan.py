"""The VQGAN tokenizer's networks as MaskGIT's official JAX code builds them (NNX).

google-research/maskgit ``nets/vqgan_tokenizer.py`` (``Encoder``, ``Decoder``, ``ResBlock``),
``nets/layers.py`` (``dsample``, ``upsample``) and ``nets/discriminator.py``; the official
ImageNet config is ``configs/vqgan_config.py`` (specs/methods_text_gen.md 9e):

- **Encoder**: 3x3 conv (no bias) to ``filters``; for each channel multiplier ``m_i``,
  ``num_res_blocks`` residual blocks of ``filters * m_i`` channels, then (except after the last)
  a 2x down-sampling: TF-style 2x2 average pooling (``conv_downsample=False``, the official
  setting) or a 4x4 stride-2 conv; ``num_res_blocks`` more blocks; GroupNorm, swish, a 1x1 conv
  (with bias) to ``embedding_dim``. The down-sampling factor is ``2 ** (len(multipliers) - 1)``:
  the official ``[1, 1, 2, 2, 4]`` gives f = 16.
- **Decoder**, mirrored: 3x3 conv (bias) to ``filters * m_last``, ``num_res_blocks`` blocks, then
  for each multiplier from the last: blocks of ``filters * m_i`` channels and, except at the
  first level, a nearest-neighbour 2x up-sampling followed by a 3x3 conv; GroupNorm, swish, 3x3
  conv to 3 channels.
- **Residual block**: GroupNorm, swish, 3x3 conv (no bias), GroupNorm, swish, 3x3 conv (no bias);
  when the channel count changes the official code projects the block's *output* with a 1x1
  conv (``residual = conv_fn(...)(x)`` after ``x`` was overwritten) and adds it, so such a block
  computes ``h + W h`` rather than ``h + W x``. It is reproduced as released (the released
  checkpoints were trained with it; the converter needs it).
- Flax defaults throughout: convs are ``SAME``-padded with lecun-normal kernels and zero biases;
  GroupNorm has 32 groups (``norm_groups``, lowered for narrow CPU models), eps 1e-6.

**Discriminator** (for the optional GAN loss): the official StyleGAN2-style one
(``nets/discriminator.py``; rosinality's stylegan2-pytorch ``Discriminator``): a 3x3 conv,
one residual down-sampling block per halving to 4x4 (3x3 conv, leaky-ReLU 0.2, [1, 3, 3, 1] blur
pooling with stride 2 on both paths, 1x1 projection of the shortcut, 3x3 conv, leaky-ReLU,
sum / sqrt(2)), a 3x3 conv, then Dense - leaky-ReLU - Dense(1) on the flattened 4x4 map;
xavier-uniform kernels. Widths follow StyleGAN's table (512 up to 32 px, then
``256 * channel_multiplier`` at 64 px, ...) capped at ``max_channels`` so a CPU recipe can shrink
it (512 = the official widths). No normalisation layers: R1 needs per-example gradients.

Parameters carry logical axis names: conv kernels ``(None, None, None, "embed")`` (output
channels shard over FSDP where they divide), biases and norm scales ``("embed",)``, the codebook
``("vocab", None)``. Images are NHWC in [0, 1] (the official range).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models.flop_count import FlopCount, matmul, scaled

GN_EPS = 1e-6             # flax.linen.GroupNorm's default, used by the official tokenizer
LEAKY_SLOPE = 0.2         # the official discriminator's leaky ReLU
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)   # BlurPool2D(filter_size=4)
# StyleGAN2's discriminator widths by resolution (nets/discriminator.py); None = 512 // ... scaled.
STYLEGAN_WIDTHS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def _axes(init: Any, axes: Sequence[str | None]):
    return nnx.with_metadata(init, logical_axes=tuple(axes))


def conv(in_ch: int, out_ch: int, kernel: int, *, rngs: nnx.Rngs, stride: int = 1, use_bias: bool = True,
         kernel_init: Any = None, dtype: Any = None) -> nnx.Conv:
    """A ``SAME``-padded NHWC conv with flax's defaults (lecun-normal kernel, zero bias) and logical axes."""
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=(stride, stride), padding="SAME",
                    use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=_axes(kernel_init or nnx.initializers.lecun_normal(), (None, None, None, "embed")),
                    bias_init=_axes(nnx.initializers.zeros, ("embed",)), rngs=rngs)


def group_norm(channels: int, groups: int, *, rngs: nnx.Rngs, dtype: Any = None) -> nnx.GroupNorm:
    """GroupNorm over ``min(groups, channels)`` groups, eps 1e-6 (flax's default), scale 1, bias 0."""
    groups = min(groups, channels)
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels do not split into {groups} groups; set "
                         f"model.norm_groups to a divisor of every width")
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=GN_EPS, dtype=dtype, param_dtype=jnp.float32,
                         scale_init=_axes(nnx.initializers.ones, ("embed",)),
                         bias_init=_axes(nnx.initializers.zeros, ("embed",)), rngs=rngs)


def downsample_avg(x: jax.Array) -> jax.Array:
    """``layers.dsample``: TF-style 2x2 average pooling, stride 2 (even sizes: the mean of each 2x2 block)."""
    b, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"2x average down-sampling needs even sizes, got {h}x{w}")
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
    """``layers.upsample``: nearest-neighbour resize by ``factor`` (each pixel repeated)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class ResBlock(nnx.Module):
    """The official tokenizer's residual block (module docstring, including the shortcut as released)."""

    def __init__(self, in_ch: int, out_ch: int, *, norm_groups: int, rngs: nnx.Rngs, dtype: Any = None):
        self.norm1 = group_norm(in_ch, norm_groups, rngs=rngs, dtype=dtype)
        self.conv1 = conv(in_ch, out_ch, 3, use_bias=False, rngs=rngs, dtype=dtype)
        self.norm2 = group_norm(out_ch, norm_groups, rngs=rngs, dtype=dtype)
        self.conv2 = conv(out_ch, out_ch, 3, use_bias=False, rngs=rngs, dtype=dtype)
        self.shortcut = conv(out_ch, out_ch, 1, use_bias=False, rngs=rngs, dtype=dtype) if in_ch != out_ch else None

    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        x = self.conv1(nnx.swish(self.norm1(x)))
        x = self.conv2(nnx.swish(self.norm2(x)))
        if self.shortcut is not None:
            residual = self.shortcut(x)  # the official code projects the block's output (module docstring)
        return x + residual


def _blocks(in_ch: int, out_ch: int, count: int, norm_groups: int, rngs, dtype) -> nnx.List:
    return nnx.List([ResBlock(in_ch if i == 0 else out_ch, out_ch, norm_groups=norm_groups, rngs=rngs, dtype=dtype)
                     for i in range(count)])


class Encoder(nnx.Module):
    """Images [B, H, W, C] in [0, 1] -> latents [B, H/f, W/f, embedding_dim] (module docstring)."""

    def __init__(self, *, in_ch: int, filters: int, multipliers: Sequence[int], num_res_blocks: int,
                 embedding_dim: int, conv_downsample: bool = False, norm_groups: int = 32, rngs: nnx.Rngs,
                 dtype: Any = None):
        widths = [filters * m for m in multipliers]
        self.conv_in = conv(in_ch, filters, 3, use_bias=False, rngs=rngs, dtype=dtype)
        levels, downs, prev = [], [], filters
        for i, width in enumerate(widths):
            levels.append(_blocks(prev, width, num_res_blocks, norm_groups, rngs, dtype))
            prev = width
            if i < len(widths) - 1:
                downs.append(conv(width, width, 4, stride=2, rngs=rngs, dtype=dtype) if conv_downsample else None)
        self.levels = nnx.List(levels)
        self.downsamples = nnx.List(downs)
        self.mid = _blocks(prev, prev, num_res_blocks, norm_groups, rngs, dtype)
        self.norm_out = group_norm(prev, norm_groups, rngs=rngs, dtype=dtype)
        self.conv_out = conv(prev, embedding_dim, 1, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for i, blocks in enumerate(self.levels):
            for block in blocks:
                x = block(x)
            if i < len(self.downsamples):
                down = self.downsamples[i]
                x = down(x) if down is not None else downsample_avg(x)
        for block in self.mid:
            x = block(x)
        return self.conv_out(nnx.swish(self.norm_out(x)))


class Decoder(nnx.Module):
    """Latents [B, h, w, embedding_dim] -> images [B, h*f, w*f, out_ch] (module docstring)."""

    def __init__(self, *, out_ch: int, filters: int, multipliers: Sequence[int], num_res_blocks: int,
                 embedding_dim: int, norm_groups: int = 32, rngs: nnx.Rngs, dtype: Any = None):
        widths = [filters * m for m in multipliers]
        prev = widths[-1]
        self.conv_in = conv(embedding_dim, prev, 3, rngs=rngs, dtype=dtype)
        self.mid = _blocks(prev, prev, num_res_blocks, norm_groups, rngs, dtype)
        levels, ups = [], []
        for i in reversed(range(len(widths))):   # stored from the deepest level up
            levels.append(_blocks(prev, widths[i], num_res_blocks, norm_groups, rngs, dtype))
            prev = widths[i]
            if i > 0:
                ups.append(conv(prev, prev, 3, rngs=rngs, dtype=dtype))
        self.levels = nnx.List(levels)
        self.upsample_convs = nnx.List(ups)
        self.norm_out = group_norm(prev, norm_groups, rngs=rngs, dtype=dtype)
        self.conv_out = conv(prev, out_ch, 3, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.mid:
            x = block(x)
        for i, blocks in enumerate(self.levels):
            for block in blocks:
                x = block(x)
            if i < len(self.upsample_convs):
                x = self.upsample_convs[i](upsample_nearest(x))
        return self.conv_out(nnx.swish(self.norm_out(x)))


def blur_downsample(x: jax.Array) -> jax.Array:
    """``BlurPool2D(filter_size=4)``: depthwise [1, 3, 3, 1]-outer blur, stride 2, TF ``SAME`` padding."""
    taps = jnp.asarray(BLUR_TAPS, jnp.float32)
    kernel = taps[:, None] * taps[None, :]
    kernel = kernel / jnp.sum(kernel)
    c = x.shape[-1]
    kernel = jnp.tile(kernel[:, :, None, None], (1, 1, 1, c)).astype(x.dtype)   # HWIO, one filter per channel
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", feature_group_count=c,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _leaky(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, LEAKY_SLOPE)


class DiscriminatorBlock(nnx.Module):
    """StyleGAN2's residual down-sampling block of the official discriminator."""

    def __init__(self, in_ch: int, out_ch: int, *, blur: bool, rngs: nnx.Rngs, dtype: Any = None):
        xavier = nnx.initializers.xavier_uniform()
        self.blur = blur
        self.conv1 = conv(in_ch, in_ch, 3, kernel_init=xavier, rngs=rngs, dtype=dtype)
        self.skip = conv(in_ch, out_ch, 1, use_bias=False, kernel_init=xavier, rngs=rngs, dtype=dtype)
        self.conv2 = conv(in_ch, out_ch, 3, kernel_init=xavier, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        down = blur_downsample if self.blur else downsample_avg
        residual = self.skip(down(x))
        x = _leaky(self.conv2(down(_leaky(self.conv1(x)))))
        return (residual + x) / math.sqrt(2.0)


def discriminator_widths(image_size: int, channel_multiplier: int = 1, max_channels: int = 512) -> dict[int, int]:
    """The official width table (512 up to 32 px, ``256 * channel_multiplier`` at 64 px, ...) capped at ``max_channels``."""
    return {size: min(width * (channel_multiplier if size >= 64 else 1), max_channels)
            for size, width in STYLEGAN_WIDTHS.items() if size <= max(image_size, 4)}


class Discriminator(nnx.Module):
    """The official StyleGAN2-style discriminator: images [B, S, S, C] -> logits [B, 1] (module docstring)."""

    def __init__(self, image_size: int, *, in_ch: int = 3, channel_multiplier: int = 1, max_channels: int = 512,
                 blur_resample: bool = True, rngs: nnx.Rngs, dtype: Any = None):
        log_size = int(round(math.log2(image_size)))
        if image_size < 8 or 2 ** log_size != image_size:
            raise ValueError(f"the discriminator needs a power-of-two image size >= 8, got {image_size}")
        widths = discriminator_widths(image_size, channel_multiplier, max_channels)
        xavier = nnx.initializers.xavier_uniform()
        self.conv_in = conv(in_ch, widths[image_size], 3, kernel_init=xavier, rngs=rngs, dtype=dtype)
        blocks, prev = [], widths[image_size]
        for i in range(log_size, 2, -1):
            blocks.append(DiscriminatorBlock(prev, widths[2 ** (i - 1)], blur=blur_resample, rngs=rngs, dtype=dtype))
            prev = widths[2 ** (i - 1)]
        self.blocks = nnx.List(blocks)
        self.conv_out = conv(prev, widths[4], 3, kernel_init=xavier, rngs=rngs, dtype=dtype)
        dense = lambda i, o, axes: nnx.Linear(  # noqa: E731
            i, o, dtype=dtype, param_dtype=jnp.float32, kernel_init=_axes(xavier, axes),
            bias_init=_axes(nnx.initializers.zeros, (axes[-1],)), rngs=rngs)
        self.dense = dense(4 * 4 * widths[4], widths[4], ("mlp", "embed"))
        self.logit = dense(widths[4], 1, ("embed", None))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _leaky(self.conv_in(x))
        for block in self.blocks:
            x = block(x)
        x = _leaky(self.conv_out(x))
        x = _leaky(self.dense(x.reshape(x.shape[0], -1)))
        return self.logit(x)


class CodebookEMA(nnx.Variable):
    """Non-gradient codebook state of the EMA quantizer (train state ``extra``; never optimised)."""


class VQGANTokenizer(nnx.Module):
    """Encoder + quantizer state + decoder (+ optional discriminator).

    ``quantizer``: ``"vq"`` holds a trained ``codebook`` parameter [K, D] (official init:
    variance_scaling(1, fan_in, uniform)); ``"ema"`` holds :class:`CodebookEMA` state
    (``ema_codebook`` [K, D] initialised the same way, ``ema_count`` [K], ``ema_sum`` [K, D],
    ``ema_updates`` []), updated by the method after each step; ``"fsq"`` has no codebook
    (``embedding_dim`` = number of FSQ levels). Quantization itself is in
    :mod:`maskjax.objectives.quantizers`, wired by :mod:`maskjax.methods.vqgan`.
    """

    def __init__(self, *, quantizer: str, codebook_size: int, embedding_dim: int, filters: int,
                 multipliers: Sequence[int], num_res_blocks: int, image_size: int, in_ch: int = 3,
                 conv_downsample: bool = False, norm_groups: int = 32, discriminator: bool = False,
                 disc_channel_multiplier: int = 1, disc_max_channels: int = 512, disc_blur: bool = True,
                 rngs: nnx.Rngs, dtype: Any = None):
        self.quantizer = quantizer
        self.factor = 2 ** (len(multipliers) - 1)
        self.embedding_dim = embedding_dim
        common = dict(filters=filters, multipliers=tuple(multipliers), num_res_blocks=num_res_blocks,
                      embedding_dim=embedding_dim, norm_groups=norm_groups, rngs=rngs, dtype=dtype)
        self.encoder = Encoder(in_ch=in_ch, conv_downsample=conv_downsample, **common)
        self.decoder = Decoder(out_ch=in_ch, **common)
        init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
        if quantizer == "vq":
            self.codebook = nnx.Param(init(rngs.params(), (codebook_size, embedding_dim), jnp.float32),
                                      logical_axes=("vocab", None))
        elif quantizer == "ema":
            start = init(rngs.params(), (codebook_size, embedding_dim), jnp.float32)
            self.ema_codebook = CodebookEMA(start, logical_axes=("vocab", None))
            self.ema_count = CodebookEMA(jnp.zeros((codebook_size,), jnp.float32), logical_axes=("vocab",))
            self.ema_sum = CodebookEMA(jnp.zeros((codebook_size, embedding_dim), jnp.float32),
                                       logical_axes=("vocab", None))
            self.ema_updates = CodebookEMA(jnp.zeros((), jnp.int32), logical_axes=())
        elif quantizer != "fsq":
            raise ValueError(f"unknown quantizer {quantizer!r}; use vq, ema or fsq")
        self.discriminator = (Discriminator(image_size, in_ch=in_ch, channel_multiplier=disc_channel_multiplier,
                                            max_channels=disc_max_channels, blur_resample=disc_blur, rngs=rngs,
                                            dtype=dtype) if discriminator else None)

    def codebook_array(self) -> jax.Array | None:
        """The current codebook [K, D] (the parameter, or the EMA state; None for FSQ)."""
        if self.quantizer == "vq":
            return self.codebook[...]
        if self.quantizer == "ema":
            return self.ema_codebook[...]
        return None


def conv_flops(h: int, w: int, k: int, cin: int, cout: int) -> float:
    """Forward FLOPs of a ``k x k`` conv producing an ``h x w`` map (2 per multiply-add)."""
    return matmul(h * w, k * k * cin, cout)


def _res_block_flops(h: int, w: int, cin: int, cout: int) -> float:
    flops = conv_flops(h, w, 3, cin, cout) + conv_flops(h, w, 3, cout, cout)
    return flops + (conv_flops(h, w, 1, cout, cout) if cin != cout else 0.0)


def autoencoder_flops(image_size: int, in_ch: int, filters: int, multipliers: Sequence[int], num_res_blocks: int,
                      embedding_dim: int, conv_downsample: bool) -> dict[str, float]:
    """Forward FLOPs of one image through the encoder and the decoder, by part."""
    widths = [filters * m for m in multipliers]
    size = image_size
    enc = conv_flops(size, size, 3, in_ch, filters)
    prev = filters
    for i, width in enumerate(widths):
        for r in range(num_res_blocks):
            enc += _res_block_flops(size, size, prev if r == 0 else width, width)
        prev = width
        if i < len(widths) - 1:
            size //= 2
            enc += conv_flops(size, size, 4, width, width) if conv_downsample else 0.0
    enc += num_res_blocks * _res_block_flops(size, size, prev, prev)
    enc += conv_flops(size, size, 1, prev, embedding_dim)
    dec = conv_flops(size, size, 3, embedding_dim, prev) + num_res_blocks * _res_block_flops(size, size, prev, prev)
    for i in reversed(range(len(widths))):
        for r in range(num_res_blocks):
            dec += _res_block_flops(size, size, prev if r == 0 else widths[i], widths[i])
        prev = widths[i]
        if i > 0:
            size *= 2
            dec += conv_flops(size, size, 3, prev, prev)
    dec += conv_flops(size, size, 3, prev, in_ch)
    return {"encoder": enc, "decoder": dec}


def discriminator_flops(image_size: int, in_ch: int, channel_multiplier: int, max_channels: int) -> float:
    """Forward FLOPs of the discriminator on one image (the blur is depthwise: not a matmul, not counted)."""
    widths = discriminator_widths(image_size, channel_multiplier, max_channels)
    size, prev = image_size, widths[image_size]
    flops = conv_flops(size, size, 3, in_ch, prev)
    while size > 4:
        out = widths[size // 2]
        flops += conv_flops(size, size, 3, prev, prev)
        size //= 2
        flops += conv_flops(size, size, 1, prev, out) + conv_flops(size, size, 3, prev, out)
        prev = out
    flops += conv_flops(4, 4, 3, prev, widths[4])
    return flops + matmul(1, 16 * widths[4], widths[4]) + matmul(1, widths[4], 1)


def tokenizer_flops(*, image_size: int, in_ch: int, filters: int, multipliers: Sequence[int], num_res_blocks: int,
                    embedding_dim: int, conv_downsample: bool, codebook_size: int, nearest_neighbour: bool,
                    discriminator: dict | None, global_batch: int) -> FlopCount:
    """Analytic FLOPs of one training step (``flop_count`` conventions: matmuls only, train = 3 x forward).

    The nearest-neighbour search counts its ``[N, D] @ [D, K]`` distance product. With a
    discriminator: three forward passes (fake for the generator, fake and real for the
    discriminator loss) plus one more for R1's input gradient.
    """
    parts = autoencoder_flops(image_size, in_ch, filters, multipliers, num_res_blocks, embedding_dim, conv_downsample)
    tokens = (image_size // 2 ** (len(multipliers) - 1)) ** 2
    if nearest_neighbour:
        parts["quantizer"] = matmul(tokens, embedding_dim, codebook_size)
    if discriminator:
        parts["discriminator"] = 4 * discriminator_flops(image_size, in_ch, discriminator["channel_multiplier"],
                                                         discriminator["max_channels"])
    return scaled("vqgan", parts, global_batch, "latent position (one token of the h x w grid)", tokens)
