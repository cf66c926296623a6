"""I-JEPA's networks (facebookresearch/ijepa ``src/models/vision_transformer.py``), NNX.

* :class:`JepaViT`: the context / target encoder, a ViT **without a cls token** with fixed 2-D
  sin-cos position embeddings and a final LayerNorm (official ``VisionTransformer``). Besides the
  encoder contract of :class:`~maskjax.models.backbone.Encoder` (``__call__(images) -> (tokens,
  aux)``), :meth:`JepaViT.context` runs it on a subset of the patches given as index arrays with a
  validity mask.
* :class:`Predictor`: the narrow ViT of ``VisionTransformerPredictor``: Linear(D -> P) + sin-cos
  position of each context token, mask tokens carrying the target positions' sin-cos rows,
  ``depth`` blocks (the encoder's head count), LayerNorm, Linear(P -> D).
* :class:`IJEPAModel`: context encoder + predictor (the trained parameters) + the target encoder,
  an EMA copy of the context encoder whose variables are :class:`TargetParam` (an ``nnx.Variable``
  that is not an ``nnx.Param``: it lands in the train state's ``extra`` and is checkpointed, and
  the optimiser never sees it).

Static shapes. The official masks have a batch-dependent length; here the context and target index
arrays are cut to static bounds (:func:`max_context_tokens`, :func:`max_target_tokens`) and a
validity mask marks the real entries. Padded entries are **masked out of attention as keys** in
every block (:class:`MaskedAttention`), so a valid token's output is exactly the official one: the
padded keys get a softmax weight of exactly 0, and LayerNorm / MLP act on each token alone. The
padded tokens' own outputs are never read by a valid token nor by the loss (the loss weights them
with 0), so their gradients are exactly 0.

Initialisation (``src/helper.py::init_model``): every Linear weight (the patch embedding's
convolution included) trunc_normal(std 0.02, cut at +-2, i.e. a plain normal), biases 0, LayerNorm
1/0, mask token trunc_normal(0.02). The layers are built with zeros and :func:`official_init` draws
all these weights in one call (a draw per layer made the CPU compile of the init several times
slower). The constructors' ``fix_init_weight`` (attn.proj and mlp.fc2 of
block ``i`` divided by ``sqrt(2 (i + 1))``) is **undone** by ``init_model``, which re-draws every
Linear after building the models; ``fix_init_weight=True`` applies it anyway (the constructors'
init).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskjax.models.attention import prescaled_attention
from maskjax.models.backbone import Backbone, Encoder
from maskjax.models.flop_count import FlopCount, matmul, transformer_layer
from maskjax.models.layers import Attention, Block, Buffer, Mlp, PatchEmbed, dense, layer_norm, sincos_2d
from maskjax.models.remat import maybe_remat_core
from maskjax.models.vit import parse_variant

INIT_STD = 0.02          # official init_std / helper.init_weights
TARGET_LN_EPS = 1e-5     # F.layer_norm's default eps (the target normalisation)


class TargetParam(nnx.Variable):
    """A target-encoder weight: EMA state updated after each step, never optimised."""


# --- attention with a key-padding mask ----------------------------------------------------------

def masked_attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, impl: str | None) -> jax.Array:
    """Softmax attention on [B, T, H, Dh] inputs over the keys where ``key_mask`` [B, T] is True.

    XLA's masked ``dot_product_attention`` unless ``impl`` is "cudnn" (the fused kernel takes the
    mask at its full [B, 1, T, T] shape); the blockwise / [B, H, T, D] cores take no mask, so those
    settings fall back to XLA here (unmasked calls still use them).
    """
    def core(q, k, v, key_mask):
        mask = key_mask.astype(bool)[:, None, None, :]
        if impl == "cudnn":
            mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
            return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
        return prescaled_attention(q, k, v, mask=mask)

    return maybe_remat_core(core)(q, k, v, key_mask)


def _zero_dense(in_features: int, out_features: int, axes: tuple, *, rngs: nnx.Rngs, dtype: Any = None):
    """A :func:`~maskjax.models.layers.dense` layer with a zero kernel: :func:`official_init` draws
    every kernel afterwards in one call (a random draw per layer would cost seconds of CPU compile)."""
    return dense(in_features, out_features, axes, rngs=rngs, dtype=dtype, kernel_init=nnx.initializers.zeros)


class MaskedAttention(Attention):
    """:class:`~maskjax.models.layers.Attention` (same parameters) with an optional key mask."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype: Any = None,
                 attention_impl: str | None = None):
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.qkv = _zero_dense(dim, 3 * dim, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.proj = _zero_dense(dim, dim, ("heads", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        if key_mask is None:
            return super().__call__(x)
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        out = masked_attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], key_mask, self.attention_impl)
        return self.proj(out.reshape(b, t, d))


class JepaMlp(Mlp):
    """:class:`~maskjax.models.layers.Mlp` built with zero kernels (drawn by :func:`official_init`)."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.fc1 = _zero_dense(dim, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = _zero_dense(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)


class JepaPatchEmbed(PatchEmbed):
    """:class:`~maskjax.models.layers.PatchEmbed` (a Linear on patchified pixels, the official stride-p
    convolution) built with zeros: :func:`official_init` draws its weight, the bias stays 0."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.patch_size = patch_size
        self.proj = nnx.Linear(
            patch_size * patch_size * in_chans, dim, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=nnx.with_metadata(nnx.initializers.zeros, logical_axes=("patch", "embed")),
            bias_init=nnx.with_metadata(nnx.initializers.zeros, logical_axes=("embed",)), rngs=rngs)


class MaskedBlock(Block):
    """The pre-LN timm block (same parameter paths as :class:`~maskjax.models.layers.Block`) whose
    attention ignores the keys where ``key_mask`` is False. Called ``block(x, key_mask, key)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, rngs: nnx.Rngs,
                 dtype: Any = None, drop_path: float = 0.0, attention_impl: str | None = None):
        # Block.__init__ is not called: it would build (and draw) a plain Attention first.
        self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.attn = MaskedAttention(dim, num_heads, rngs=rngs, dtype=dtype, attention_impl=attention_impl)
        self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.mlp = JepaMlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)
        self.drop_path = drop_path

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None, key: jax.Array | None = None) -> jax.Array:
        k1 = k2 = None
        if key is not None:
            k1, k2 = jax.random.split(key)
        x = x + self._drop(self.attn(self.norm1(x), key_mask), k1)
        return x + self._drop(self.mlp(self.norm2(x)), k2)


def masked_blocks(width: int, heads: int, mlp_ratio: float, dtype: Any, attention_impl: str | None):
    """Block factory of :class:`MaskedBlock` for :class:`~maskjax.models.backbone.Backbone`."""
    def make(rngs: nnx.Rngs, index: int, drop_path: float) -> nnx.Module:
        del index
        return MaskedBlock(width, heads, mlp_ratio, rngs=rngs, dtype=dtype, drop_path=drop_path,
                           attention_impl=attention_impl)
    return make


class _KeyMaskedStack:
    """Mixin: the blocks always get a key-mask argument (None = every token is real), so a
    drop-path key never lands in the mask's place (``block(x, key_mask, key)``)."""

    def run_blocks(self, x, key=None, *, args=(), keys=None):
        return Backbone.run_blocks(self, x, key, args=args or (None,), keys=keys)


# --- encoder and predictor ------------------------------------------------------------------------

class JepaViT(_KeyMaskedStack, Encoder):
    """I-JEPA's ViT encoder: no cls token, fixed sin-cos positions, final LayerNorm (eps 1e-6).

    ``__call__(images, mask=None, *, drop_key=None)`` returns ``(tokens, aux)``: tokens [B, L, D]
    after the final norm; ``aux`` holds ``tokens`` and ``pooled`` (their mean, I-JEPA's frozen
    feature). :meth:`context` encodes only the given patches.
    """

    pooled_from = "norm"

    def __init__(self, variant: str, *, image_size: int, in_chans: int = 3, rngs: nnx.Rngs,
                 dtype: Any = None, drop_path: float = 0.0, remat: bool | str = False,
                 attention_impl: str | None = None, scan_layers: bool = False):
        size, patch = parse_variant(variant)
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch}")
        self.patch_size = patch
        self.grid = image_size // patch
        self.width, self.depth, self.num_heads = size.width, size.depth, size.heads
        self.dtype = dtype
        self.patch_embed = JepaPatchEmbed(patch, in_chans, size.width, rngs=rngs, dtype=dtype)
        self.pos_embed = Buffer(sincos_2d(size.width, self.grid, self.grid)[None])
        super().__init__(size.width, size.depth, size.heads, size.mlp_ratio, rngs=rngs, dtype=dtype,
                         attention_impl=attention_impl, drop_path=drop_path, remat=remat,
                         scan_layers=scan_layers,
                         make_block=masked_blocks(size.width, size.heads, size.mlp_ratio, dtype, attention_impl))

    @property
    def num_patches(self) -> int:
        """Number of patch tokens L = grid^2."""
        return self.grid * self.grid

    def patch_tokens(self, images: jax.Array) -> jax.Array:
        """[B, H, W, C] -> patch embeddings [B, L, D]."""
        return self.patch_embed(images)

    def patch_positions(self, dtype: Any) -> jax.Array:
        """The fixed sin-cos rows [1, L, D]."""
        return self.pos_embed[...].astype(dtype)

    def context(self, images: jax.Array, ids: jax.Array, valid: jax.Array) -> jax.Array:
        """Encodes the patches ``ids`` [B, n, K] of each image (n context masks), padded entries
        (``valid`` [B, K] False) masked out of attention: [B * n, K, D] after the final norm, in
        the official ``apply_masks`` order (example-major here; the loss pairs them explicitly)."""
        x = self.patch_tokens(images)
        x = x + self.patch_positions(x.dtype)
        b, n, k = ids.shape
        x = jnp.take_along_axis(x[:, None], ids[..., None], axis=2).reshape(b * n, k, x.shape[-1])
        key_mask = jnp.broadcast_to(valid[:, None], (b, n, k)).reshape(b * n, k)
        return self.final_norm(self.run_blocks(x, args=(key_mask,)))


class Predictor(_KeyMaskedStack, Backbone):
    """``VisionTransformerPredictor``: context tokens + positional mask tokens -> target features.

    Parameter names follow the official module (``predictor_embed``, ``mask_token``,
    ``predictor_blocks``, ``predictor_norm``, ``predictor_proj``; ``predictor_pos_embed`` fixed).
    """

    def __init__(self, *, grid: int, width: int, pred_width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, rngs: nnx.Rngs, dtype: Any = None, remat: bool | str = False,
                 attention_impl: str | None = None, scan_layers: bool = False):
        self.predictor_embed = _zero_dense(width, pred_width, ("embed", "embed"), rngs=rngs, dtype=dtype)
        # trunc_normal(0.02), drawn by official_init with the Linear weights.
        self.mask_token = nnx.Param(jnp.zeros((1, 1, pred_width)), logical_axes=(None, None, "embed"))
        self.predictor_pos_embed = Buffer(sincos_2d(pred_width, grid, grid)[None])
        super().__init__(pred_width, depth, heads, mlp_ratio, rngs=rngs, dtype=dtype, attention_impl=attention_impl,
                         remat=remat, scan_layers=scan_layers, names=("predictor_blocks", "predictor_norm"),
                         make_block=masked_blocks(pred_width, heads, mlp_ratio, dtype, attention_impl))
        self.predictor_proj = _zero_dense(pred_width, width, ("embed", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, context: jax.Array, context_ids: jax.Array, context_valid: jax.Array,
                 target_ids: jax.Array, target_valid: jax.Array) -> jax.Array:
        """Predictions [N, M, Kt, D] for the M target masks of each of the N context sequences.

        ``context`` [N, Kc, D] (encoder output), ``context_ids`` / ``context_valid`` [N, Kc],
        ``target_ids`` [N, M, Kt], ``target_valid`` [N, Kt]. Each (sequence, target mask) pair is
        one predictor sequence: the Kc context tokens, then Kt mask tokens; padded entries of both
        are masked out of attention.
        """
        z = self.predictor_embed(context)
        pos = self.predictor_pos_embed[...].astype(z.dtype)[0]          # [L, P]
        z = z + jnp.take(pos, context_ids, axis=0)
        tokens = self.mask_token[...].astype(z.dtype) + jnp.take(pos, target_ids, axis=0)  # [N, M, Kt, P]
        n, m, kt, p = tokens.shape
        kc = z.shape[1]
        x = jnp.concatenate([jnp.broadcast_to(z[:, None], (n, m, kc, p)), tokens], axis=2)
        key_mask = jnp.concatenate([jnp.broadcast_to(context_valid[:, None], (n, m, kc)),
                                    jnp.broadcast_to(target_valid[:, None], (n, m, kt))], axis=2)
        x = self.run_stack(x.reshape(n * m, kc + kt, p), args=(key_mask.reshape(n * m, kc + kt),))
        return self.predictor_proj(x[:, kc:]).reshape(n, m, kt, -1)


# --- initialisation and the target copy ---------------------------------------------------------

def trunc_normal(key: jax.Array, shape: tuple, std: float) -> jax.Array:
    """``trunc_normal_(std=std)`` of ijepa's ``src/utils/tensors.py``: cut at +-2 (absolute)."""
    return jnp.clip(std * jax.random.normal(key, shape, jnp.float32), -2.0, 2.0)


def official_init(module: nnx.Module, key: jax.Array, std: float = INIT_STD, extra: tuple = ()) -> None:
    """``helper.init_model``'s init: every Linear (patch embedding included) weight trunc_normal(std),
    bias 0 (LayerNorms are already 1 / 0); the variables in ``extra`` (the mask token) trunc_normal
    too. One normal draw for all of them, sliced in graph order (one draw per layer would cost
    seconds of CPU compile)."""
    linears = [node for _, node in nnx.iter_graph(module) if isinstance(node, nnx.Linear)]
    targets = [layer.kernel for layer in linears] + list(extra)
    sizes = [int(np.prod(var[...].shape)) for var in targets]
    draws = trunc_normal(key, (sum(sizes),), std)
    if not jax.sharding.get_abstract_mesh().empty:
        # Drawn whole on every device, then sliced: partitioning the draw and the slices over a
        # mesh took XLA:CPU 30x longer to compile (sharded init of the trainer).
        draws = jax.lax.with_sharding_constraint(draws, jax.sharding.PartitionSpec())
    start = 0
    for var, size in zip(targets, sizes):
        var[...] = draws[start:start + size].reshape(var[...].shape)
        start += size
    for layer in linears:
        if layer.bias is not None:
            layer.bias[...] = jnp.zeros_like(layer.bias[...])


def fix_init_weight(blocks: nnx.Module) -> None:
    """Divides attn.proj and mlp.fc2 of block ``i`` by ``sqrt(2 (i + 1))`` (stacked blocks: per layer)."""
    from maskjax.models.backbone import stack_depth

    depth = stack_depth(blocks)
    scale = 1.0 / np.sqrt(2.0 * np.arange(1, depth + 1))
    if isinstance(blocks, nnx.List):
        for block, s in zip(blocks, scale):
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.kernel[...] = layer.kernel[...] * float(s)
        return
    for layer in (blocks.attn.proj, blocks.mlp.fc2):
        layer.kernel[...] = layer.kernel[...] * jnp.asarray(scale, jnp.float32)[:, None, None]


def _set_child(parent: Any, name: Any, value: Any) -> None:
    if isinstance(parent, nnx.List):
        parent[name] = value
    else:
        setattr(parent, name, value)


def _child(parent: Any, name: Any) -> Any:
    return parent[name] if isinstance(parent, nnx.List) else getattr(parent, name)


def convert_params(module: nnx.Module, from_type: type, to_type: type) -> nnx.Module:
    """Replaces, in place, every ``from_type`` variable of ``module`` by a ``to_type`` one with the
    same value and metadata (logical axes: the copy shards like the original); returns ``module``."""
    for path, node in list(nnx.iter_graph(module)):
        if isinstance(node, from_type):
            parent = module
            for name in path[:-1]:
                parent = _child(parent, name)
            _set_child(parent, path[-1], to_type(node[...], **node.get_metadata()))
    return module


# --- the model -------------------------------------------------------------------------------------

class IJEPAModel(nnx.Module):
    """Context encoder + predictor (trained) and the EMA target encoder (:class:`TargetParam`)."""

    def __init__(self, variant: str, *, image_size: int, in_chans: int = 3, pred_width: int = 384,
                 pred_depth: int = 12, rngs: nnx.Rngs, dtype: Any = None, remat: bool | str = False,
                 attention_impl: str | None = None, scan_layers: bool = False, fix_init: bool = False):
        common = dict(rngs=rngs, dtype=dtype, remat=remat, attention_impl=attention_impl, scan_layers=scan_layers)
        self.encoder = JepaViT(variant, image_size=image_size, in_chans=in_chans, **common)
        enc = self.encoder
        self.predictor = Predictor(grid=enc.grid, width=enc.width, pred_width=pred_width, depth=pred_depth,
                                   heads=enc.num_heads, **common)
        official_init(nnx.List([self.encoder, self.predictor]), rngs.params(), extra=(self.predictor.mask_token,))
        if fix_init:
            fix_init_weight(self.encoder.blocks)
            fix_init_weight(self.predictor.predictor_blocks)
        # train.py: target_encoder = copy.deepcopy(encoder), then requires_grad False.
        self.target_encoder = convert_params(nnx.clone(self.encoder), nnx.Param, TargetParam)

    @property
    def patch_size(self) -> int:
        """Patch size of the encoders."""
        return self.encoder.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image."""
        return self.encoder.num_patches

    def target_features(self, images: jax.Array) -> jax.Array:
        """``F.layer_norm(target_encoder(images))`` [B, L, D] in float32, no gradient (official
        ``forward_target`` before the gather)."""
        h, _ = self.target_encoder(images)
        h = h.astype(jnp.float32)
        mean = h.mean(axis=-1, keepdims=True)
        var = jnp.square(h - mean).mean(axis=-1, keepdims=True)  # biased, as torch's layer_norm
        return jax.lax.stop_gradient((h - mean) * jax.lax.rsqrt(var + TARGET_LN_EPS))

    def target_as_encoder(self) -> JepaViT:
        """A standalone :class:`JepaViT` whose **parameters** hold the target encoder's weights (what
        fine-tuning trains: I-JEPA evaluates the target encoder)."""
        return convert_params(nnx.clone(self.target_encoder), TargetParam, nnx.Param)


# --- static token bounds and FLOPs --------------------------------------------------------------

def max_target_tokens(grid: int, scale: tuple[float, float], aspect: tuple[float, float]) -> int:
    """Upper bound of a predictor block's h * w (the target length) over every uniform draw.

    ``h = round(sqrt(k r))``, ``w = round(sqrt(k / r))`` with ``k = int(L s) <= k_max``, so
    ``h w <= (sqrt(k r) + 1/2)(sqrt(k / r) + 1/2) <= k_max + sqrt(k_max)(sqrt(r) + 1/sqrt(r))/2 + 1/4``
    (``sqrt(r) + 1/sqrt(r)`` is largest at an end of the aspect range), and also
    ``h w <= min(round(sqrt(k_max r_max)), grid - 1) * min(round(sqrt(k_max / r_min)), grid - 1)``.
    """
    k_max = math.floor(grid * grid * max(scale) * (1 + 1e-6))
    spread = max(math.sqrt(a) + 1 / math.sqrt(a) for a in aspect)
    analytic = math.floor(k_max + 0.5 * math.sqrt(k_max) * spread + 0.25 + 1e-3)
    h = min(math.floor(math.sqrt(k_max * max(aspect)) + 0.5 + 1e-6), grid - 1)
    w = min(math.floor(math.sqrt(k_max / min(aspect)) + 0.5 + 1e-6), grid - 1)
    return max(1, min(analytic, h * w, grid * grid))


def max_context_tokens(grid: int, scale: tuple[float, float]) -> int:
    """Upper bound of the context length: the largest (square, aspect 1) context block before the
    target blocks are removed from it, ``min(round(sqrt(int(L s_max))), grid - 1)^2``."""
    k_max = math.floor(grid * grid * max(scale) * (1 + 1e-6))
    side = min(math.floor(math.sqrt(k_max) + 0.5 + 1e-6), grid - 1)
    return max(1, side * side)


@dataclasses.dataclass
class JepaFlopCount(FlopCount):
    """A :class:`FlopCount` where part of the forward pass (the target encoder) has no backward."""

    no_grad_forward: float = 0.0

    @property
    def train(self) -> float:
        """3 x the trained parts' forward + 1 x the target encoder's forward."""
        return 3 * (self.forward - self.no_grad_forward) + self.no_grad_forward


def ijepa_flops(variant: str, *, image_size: int, in_chans: int, pred_width: int, pred_depth: int,
                context_tokens: int, target_tokens: int, npred: int, nenc: int, global_batch: int) -> JepaFlopCount:
    """Matmul FLOPs of one I-JEPA step at the static token bounds the compiled step runs.

    Per example: the patch embedding on all L patches (twice: context and target encoder), the
    context encoder on ``nenc`` sequences of ``context_tokens``, the predictor on ``nenc * npred``
    sequences of ``context_tokens + target_tokens`` (embedding on the context tokens, projection
    on the target tokens), the target encoder (forward only) on all L tokens.
    """
    size, patch = parse_variant(variant)
    tokens = (image_size // patch) ** 2
    d, p, mlp = size.width, pred_width, int(size.width * size.mlp_ratio)
    embed = matmul(tokens, patch * patch * in_chans, d)
    seqs = nenc * npred
    per = {
        "patch_embed": embed,
        "context_encoder": nenc * size.depth * transformer_layer(context_tokens, d, mlp),
        "predictor_embed": nenc * matmul(context_tokens, d, p),
        "predictor": seqs * pred_depth * transformer_layer(context_tokens + target_tokens, p, 4 * p),
        "predictor_proj": seqs * matmul(target_tokens, p, d),
        "target_encoder": embed + size.depth * transformer_layer(tokens, d, mlp),
    }
    parts = {k: v * global_batch for k, v in per.items()}
    return JepaFlopCount(method="ijepa", global_batch=global_batch, forward=sum(parts.values()), parts=parts,
                         token="image patch (all L patches of an image)", tokens_per_example=tokens,
                         no_grad_forward=parts["target_encoder"])
