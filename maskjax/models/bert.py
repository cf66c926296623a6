"""BERT-style text encoders (google-research/bert ``modeling.py``) and the BERT / SpanBERT pre-training heads, NNX.

Numerics follow the original TF code (specs/methods_text_gen.md 1b, 2b): word + token-type +
learned position embeddings -> LayerNorm (eps 1e-12) -> dropout; **post-LN** blocks
``a = LN(x + Drop(Dense(SelfAttn(x))))``, ``y = LN(a + Drop(Dense(act(Dense(a)))))`` with separate
biased query/key/value projections (as Hugging Face, which makes conversion a transpose);
truncated-normal(0.02) weights, zero biases, LayerNorm 1/0.

Activation. The TF checkpoints were trained with the **tanh approximation** of GELU. Hugging Face's
``hidden_act="gelu"`` (the value in every converted BERT/ELECTRA ``config.json``) is the **exact erf**
GELU (``torch.nn.functional.gelu``), so HF runs the released weights with a slightly different
function. ``hidden_act="gelu"`` (default here) is HF's exact GELU, ``"gelu_tanh"`` the original TF
one (HF's ``gelu_new``). Conversions keep whatever the HF config says.

Init. TF uses ``truncated_normal(stddev=0.02)`` (cut at 2 stddev) for every weight including the
embeddings and does nothing special for [PAD]; HF draws an untruncated normal and zeroes the
``pad_token_id`` row of the word embeddings (and its ``nn.Embedding(padding_idx=...)`` never
updates that row). maskjax follows TF: truncated normal everywhere, no padding row.

Dropout is per example: ``dropout_keys`` is a [B] array of PRNG keys (or None = deterministic);
each example's key is split per layer (and for the embeddings), and each layer draws the masks of
one example from that example's key only, so masks do not depend on how a batch is split over
devices or steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models.attention import prescaled_attention, scale_queries
from maskjax.models.backbone import Backbone
from maskjax.models.layers import dense, dense_gelu, gelu_erf, layer_norm
from maskjax.models.remat import maybe_remat_core

BERT_LN_EPS = 1e-12
INIT_STD = 0.02
ACTIVATIONS = ("gelu", "gelu_tanh")


@dataclasses.dataclass(frozen=True)
class TextSize:
    """Depth, width and heads of one named size; ``embedding`` defaults to the width (BERT)."""

    layers: int
    hidden: int
    heads: int
    embedding: int | None = None


# BERT README's small models (Tiny..Medium) + the paper's Base/Large, ELECTRA's three released sizes
# (util/training_utils.py::get_bert_config; heads = hidden // 64), and a micro size for tests.
TEXT_SIZES: dict[str, TextSize] = {
    "mu": TextSize(2, 32, 2),
    "Tiny": TextSize(2, 128, 2),
    "Mini": TextSize(4, 256, 4),
    "Small": TextSize(4, 512, 8),
    "Medium": TextSize(8, 512, 8),
    "Base": TextSize(12, 768, 12),
    "Large": TextSize(24, 1024, 16),
    "electra-small": TextSize(12, 256, 4, embedding=128),
    "electra-base": TextSize(12, 768, 12, embedding=768),
    "electra-large": TextSize(24, 1024, 16, embedding=1024),
}


def parse_text_size(name: str) -> TextSize:
    """The :class:`TextSize` called ``name``; a clear error listing the known names otherwise."""
    if name not in TEXT_SIZES:
        raise ValueError(f"unknown text model size {name!r}; known: {list(TEXT_SIZES)}")
    return TEXT_SIZES[name]


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Everything that shapes a BERT-style encoder's parameters or numerics (hashable, JSON-able)."""

    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    ffn: int = 3072
    embedding_size: int = 768
    max_positions: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    hidden_act: str = "gelu"
    layer_norm_eps: float = BERT_LN_EPS

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS} ('gelu' = exact erf GELU as Hugging "
                             f"Face, 'gelu_tanh' = the tanh approximation of the original TF code), "
                             f"got {self.hidden_act!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not divisible by {self.heads} attention heads")
        for name in ("vocab_size", "hidden", "layers", "heads", "ffn", "embedding_size", "max_positions",
                     "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


def text_config(size: str | TextConfig | Mapping[str, Any] = "Base", **overrides: Any) -> TextConfig:
    """Resolves a size name (or a config / dict of config fields) plus explicit overrides.

    Overrides that are None are ignored, so callers can pass their optional arguments through.
    The FFN width is 4 * hidden and the embedding size the size's own (else hidden) unless given.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(size, TextConfig):
        return dataclasses.replace(size, **overrides)
    if isinstance(size, Mapping):
        return TextConfig(**{**dict(size), **overrides})
    s = parse_text_size(size)
    hidden = overrides.pop("hidden", s.hidden)
    base = {"hidden": hidden, "layers": s.layers, "heads": s.heads, "ffn": 4 * hidden,
            "embedding_size": s.embedding or hidden}
    return TextConfig(**{**base, **overrides})


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """``"gelu"``: exact erf GELU (HF ``gelu``); ``"gelu_tanh"``: tanh approximation (TF BERT, HF ``gelu_new``)."""
    if name == "gelu":
        return gelu_erf  # the erf form: cheaper than jax.nn.gelu's erfc on XLA:CPU, same values
    if name == "gelu_tanh":
        return lambda x: jax.nn.gelu(x, approximate=True)
    raise ValueError(f"unknown activation {name!r}; known: {ACTIVATIONS}")


def trunc_normal(stddev: float = INIT_STD):
    """TF's ``truncated_normal_initializer(stddev)``: a normal cut at +-2 stddev (not rescaled)."""
    return jax.nn.initializers.truncated_normal(stddev)


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple, init=None) -> nnx.Param:
    """A float32 parameter (truncated normal 0.02 unless ``init``) with ``logical_axes`` metadata."""
    init = init or trunc_normal()
    return nnx.Param(init(rngs.params(), shape, jnp.float32), logical_axes=tuple(axes))


def tdense(in_f: int, out_f: int, axes: tuple, *, rngs: nnx.Rngs, dtype: Any = None) -> nnx.Linear:
    """``layers.dense`` with BERT's truncated-normal(0.02) kernel and zero bias."""
    return dense(in_f, out_f, axes, rngs=rngs, dtype=dtype, kernel_init=trunc_normal())


# --- per-example dropout ------------------------------------------------------------------------

def as_keys(keys: jax.Array | None) -> jax.Array | None:
    """Typed PRNG keys [B]; raw uint32 key data [B, 2] is wrapped. None passes through."""
    if keys is None or jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return keys
    return jax.random.wrap_key_data(keys)


def split_keys(keys: jax.Array | None, n: int) -> jax.Array | None:
    """[B] keys -> [B, n] independent keys, each example's from its own key (None stays None)."""
    if keys is None:
        return None
    return jax.vmap(lambda k: jax.random.split(k, n))(keys)


def fold_keys(keys: jax.Array | None, salt: int) -> jax.Array | None:
    """[B] keys -> [B] keys derived with ``fold_in(key, salt)`` (None stays None)."""
    if keys is None:
        return None
    return jax.vmap(lambda k: jax.random.fold_in(k, salt))(keys)


def keep_masks(keys: jax.Array | None, rates: tuple[float, ...], shapes: tuple[tuple[int, ...], ...]) -> list:
    """Per-example keep masks [B, *shape] (``P(keep) = 1 - rate``) for several dropout sites at once.

    One uniform draw per example covers all the sites (sliced apart afterwards): the same
    distribution as one ``bernoulli`` per site, at a fraction of the compile time, because each
    draw is a separate threefry computation for XLA. None (no keys, or rate 0) for a site means
    "no dropout".
    """
    active = [i for i, r in enumerate(rates) if keys is not None and r > 0.0]
    out: list = [None] * len(rates)
    if not active:
        return out
    sizes = [math.prod(shapes[i]) for i in active]
    u = jax.vmap(lambda k: jax.random.uniform(k, (sum(sizes),)))(keys)
    start = 0
    for i, size in zip(active, sizes):
        out[i] = (u[:, start:start + size] < 1.0 - rates[i]).reshape((keys.shape[0],) + tuple(shapes[i]))
        start += size
    return out


def dropout(x: jax.Array, keep: jax.Array | None, rate: float) -> jax.Array:
    """Inverted dropout with a precomputed keep mask (identity when ``keep`` is None)."""
    if keep is None:
        return x
    if keep.shape[0] != x.shape[0]:
        raise ValueError(f"dropout_keys has {keep.shape[0]} keys for a batch of {x.shape[0]} examples")
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def attention(q, k, v, input_mask, *, keep: jax.Array | None = None, rate: float = 0.0,
              impl: str | None = None) -> jax.Array:
    """Softmax attention over non-padding keys; q/k/v are [B, L, N, D], input_mask [B, L] (1 = real).

    Without dropout this is ``jax.nn.dot_product_attention`` (fused kernels where available).
    Attention-probability dropout (``keep`` [B, N, L, L]) needs the probabilities, so that case is
    written out (softmax in float32), as BERT's ``attention_probs_dropout_prob``. Under the
    "attention" remat policy the whole core is recomputed in the backward pass.
    """
    core = lambda q, k, v, input_mask, keep: _attention_core(q, k, v, input_mask, keep, rate, impl)
    return maybe_remat_core(core)(q, k, v, input_mask, keep)


def _attention_core(q, k, v, input_mask, keep, rate: float, impl: str | None) -> jax.Array:
    mask = input_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S]: mask padding keys only, as BERT
    if keep is None:
        if impl == "cudnn":  # cuDNN wants the mask with its full query and key lengths
            mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
            return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
        return prescaled_attention(q, k, v, mask=mask, implementation=impl)
    # The 1/sqrt(D) scale on q ([B, L, N, D]), not on the [B, N, L, L] scores (see prescaled_attention).
    q = scale_queries(q)
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k).astype(jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1).astype(q.dtype), keep, rate)
    return jnp.einsum("bnqk,bknd->bqnd", probs, v)


# --- modules ------------------------------------------------------------------------------------

class TextEmbeddings(nnx.Module):
    """Word [V, E] + learned position [max_pos, E] + token type [types, E] -> LayerNorm -> dropout."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype: Any = None):
        self.cfg = cfg
        self.dtype = dtype
        e = cfg.embedding_size
        self.word_embeddings = param(rngs, (cfg.vocab_size, e), ("vocab", "embed"))
        self.position_embeddings = param(rngs, (cfg.max_positions, e), (None, "embed"))
        self.token_type_embeddings = param(rngs, (cfg.type_vocab_size, e), (None, "embed"))
        self.norm = layer_norm(e, rngs=rngs, dtype=dtype, eps=cfg.layer_norm_eps)

    def __call__(self, input_ids: jax.Array, segment_ids: jax.Array | None = None,
                 dropout_keys: jax.Array | None = None) -> jax.Array:
        length = input_ids.shape[1]
        if length > self.cfg.max_positions:
            raise ValueError(f"sequence length {length} exceeds max_positions={self.cfg.max_positions}")
        if segment_ids is None:
            segment_ids = jnp.zeros_like(input_ids)
        # Summed in float32 in HF's order ((word + type) + position), then cast to the compute dtype.
        x = jnp.take(self.word_embeddings[...], input_ids, axis=0)
        x = x + jnp.take(self.token_type_embeddings[...], segment_ids, axis=0)
        x = x + self.position_embeddings[...][:length][None]
        x = self.norm(x.astype(self.dtype) if self.dtype is not None else x)
        (keep,) = keep_masks(dropout_keys, (self.cfg.dropout,), (x.shape[1:],))
        return dropout(x, keep, self.cfg.dropout)


class BertLayer(nnx.Module):
    """One post-LN transformer block with separate biased q/k/v projections (BERT / HF ``BertLayer``)."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype: Any = None, attention_impl: str | None = None):
        h = cfg.hidden
        self.cfg = cfg
        self.attention_impl = attention_impl
        self.query = tdense(h, h, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.key = tdense(h, h, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.value = tdense(h, h, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.attention_out = tdense(h, h, ("heads", "embed"), rngs=rngs, dtype=dtype)
        self.attention_norm = layer_norm(h, rngs=rngs, dtype=dtype, eps=cfg.layer_norm_eps)
        self.ffn_in = tdense(h, cfg.ffn, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.ffn_out = tdense(cfg.ffn, h, ("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.output_norm = layer_norm(h, rngs=rngs, dtype=dtype, eps=cfg.layer_norm_eps)

    def __call__(self, x: jax.Array, input_mask: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        b, l, h = x.shape
        n, cfg = self.cfg.heads, self.cfg
        keep_p, keep_a, keep_f = keep_masks(keys, (cfg.attention_dropout, cfg.dropout, cfg.dropout),
                                            ((n, l, l), (l, h), (l, h)))
        split = lambda t: t.reshape(b, l, n, h // n)
        a = attention(split(self.query(x)), split(self.key(x)), split(self.value(x)), input_mask,
                      keep=keep_p, rate=cfg.attention_dropout, impl=self.attention_impl)
        a = self.attention_out(a.reshape(b, l, h))
        x = self.attention_norm(x + dropout(a, keep_a, cfg.dropout))
        hidden = (dense_gelu(self.ffn_in, x) if cfg.hidden_act == "gelu"
                  else activation(cfg.hidden_act)(self.ffn_in(x)))
        y = self.ffn_out(hidden)
        return self.output_norm(x + dropout(y, keep_f, cfg.dropout))


class TransformerStack(Backbone):
    """Embedding output [B, L, E] -> (ELECTRA's ``embeddings_project`` E->H if E != H) -> post-LN layers.

    The projection belongs to the stack, not to the embeddings, because ELECTRA's generator and
    discriminator share the embeddings but each projects them with its own Dense. An optional
    pooler (tanh Dense on the first token) gives ``aux["pooled"]``. The layers are a
    :class:`~maskjax.models.backbone.Backbone` of :class:`BertLayer` blocks named ``layers``
    (Hugging Face's layout) without a final norm (post-LN blocks end in their own norm).
    """

    def __init__(self, cfg: TextConfig, *, pooler: bool = False, rngs: nnx.Rngs, dtype: Any = None,
                 remat: bool | str = False, attention_impl: str | None = None, scan_layers: bool = False):
        self.cfg = cfg
        self.embeddings_project = (tdense(cfg.embedding_size, cfg.hidden, ("embed", "embed"), rngs=rngs, dtype=dtype)
                                   if cfg.embedding_size != cfg.hidden else None)
        super().__init__(cfg.hidden, cfg.layers, cfg.heads, rngs=rngs, dtype=dtype, attention_impl=attention_impl,
                         remat=remat, scan_layers=scan_layers, final_norm=False, names=("layers", None),
                         make_block=lambda r, i, rate: BertLayer(cfg, rngs=r, dtype=dtype,
                                                                 attention_impl=attention_impl))
        self.pooler = tdense(cfg.hidden, cfg.hidden, ("embed", "embed"), rngs=rngs, dtype=dtype) if pooler else None

    def __call__(self, emb: jax.Array, input_mask: jax.Array,
                 dropout_keys: jax.Array | None = None) -> tuple[jax.Array, dict]:
        x = self.embeddings_project(emb) if self.embeddings_project is not None else emb
        # Per-example dropout: each example's key split per layer, layer i gets column i ([B] keys).
        layer_keys = split_keys(dropout_keys, self.cfg.layers)
        keys = None if layer_keys is None else [layer_keys[:, i] for i in range(self.cfg.layers)]
        x = self.run_blocks(x, args=(input_mask,), keys=keys)
        aux = {}
        if self.pooler is not None:
            aux["pooled"] = jnp.tanh(self.pooler(x[:, 0]))
        return x, aux


def embedding_and_stack_keys(keys: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
    """Splits each example's key into one for the embedding dropout and one for the layers."""
    pair = split_keys(keys, 2)
    return (None, None) if pair is None else (pair[:, 0], pair[:, 1])


def _inputs(input_ids, segment_ids, input_mask, dropout_keys):
    segment_ids = jnp.zeros_like(input_ids) if segment_ids is None else segment_ids
    input_mask = jnp.ones_like(input_ids) if input_mask is None else input_mask
    return segment_ids, input_mask, as_keys(dropout_keys)


class BertEncoder(nnx.Module):
    """BERT (or ELECTRA discriminator-style, when embedding_size != hidden) encoder.

    ``__call__(input_ids, segment_ids, input_mask, *, dropout_keys=None)`` returns
    ``(hidden [B, L, H], aux)``; aux has "embeddings" (the embedding output [B, L, E]) and "pooled"
    (tanh Dense of the first token) when ``pooler=True``. ``size`` is a :data:`TEXT_SIZES` name or a
    :class:`TextConfig`; the keyword arguments override its fields.
    """

    def __init__(self, size: str | TextConfig | Mapping = "Base", *, rngs: nnx.Rngs, pooler: bool = False,
                 dtype: Any = None, remat: bool | str = False, attention_impl: str | None = None,
                 scan_layers: bool = False, **config: Any):
        self.cfg = text_config(size, **config)
        self.embeddings = TextEmbeddings(self.cfg, rngs=rngs, dtype=dtype)
        self.transformer = TransformerStack(self.cfg, pooler=pooler, rngs=rngs, dtype=dtype, remat=remat,
                                            attention_impl=attention_impl, scan_layers=scan_layers)

    @property
    def word_embeddings(self) -> nnx.Param:
        """The input embedding table [V, E] (tied to the MLM decoder)."""
        return self.embeddings.word_embeddings

    def __call__(self, input_ids: jax.Array, segment_ids: jax.Array | None = None,
                 input_mask: jax.Array | None = None, *,
                 dropout_keys: jax.Array | None = None) -> tuple[jax.Array, dict]:
        segment_ids, input_mask, keys = _inputs(input_ids, segment_ids, input_mask, dropout_keys)
        emb_keys, stack_keys = embedding_and_stack_keys(keys)
        emb = self.embeddings(input_ids, segment_ids, emb_keys)
        hidden, aux = self.transformer(emb, input_mask, stack_keys)
        return hidden, {"embeddings": emb, **aux}


class MlmHead(nnx.Module):
    """Dense(in -> E) + act -> LayerNorm -> logits = h @ word_embeddings^T + bias (tied decoder).

    BERT's ``cls/predictions`` (E = H) and ELECTRA's generator head (E = embedding size).
    """

    def __init__(self, in_features: int, cfg: TextConfig, act: str, *, rngs: nnx.Rngs, dtype: Any = None):
        self.act = act
        activation(act)  # validates the name now rather than at the first call
        self.dense = tdense(in_features, cfg.embedding_size, ("embed", "embed"), rngs=rngs, dtype=dtype)
        self.norm = layer_norm(cfg.embedding_size, rngs=rngs, dtype=dtype, eps=cfg.layer_norm_eps)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), logical_axes=("vocab",))

    def __call__(self, h: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        h = self.norm(activation(self.act)(self.dense(h)))
        return decode(h, word_embeddings, self.bias[...])


def decode(h: jax.Array, word_embeddings: jax.Array, bias: jax.Array) -> jax.Array:
    """Tied decoder: ``h @ E^T`` in the compute dtype, returned as float32 logits plus the bias."""
    logits = jnp.einsum("...e,ve->...v", h, word_embeddings.astype(h.dtype))
    return logits.astype(jnp.float32) + bias


def gather_positions(hidden: jax.Array, positions: jax.Array) -> jax.Array:
    """[B, L, D] at ``positions`` [B, P] -> [B, P, D] (ELECTRA/BERT ``gather_indexes``)."""
    return jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)


class SboHead(nnx.Module):
    """SpanBERT span-boundary head (``BertPairTargetPredictionHead``, spec 2b).

    ``h = concat(H[left], H[right], P[offset])`` -> 2 x (Dense + act -> LayerNorm eps 1e-12) ->
    tied decoder with its own bias. P is a learned [max_pair_targets, position_dim] table.
    """

    def __init__(self, cfg: TextConfig, *, max_pair_targets: int, position_dim: int, rngs: nnx.Rngs,
                 dtype: Any = None):
        if cfg.embedding_size != cfg.hidden:
            raise ValueError(f"the SBO head decodes with the tied word embeddings, so it needs "
                             f"embedding_size == hidden (got {cfg.embedding_size} and {cfg.hidden})")
        h = cfg.hidden
        self.act = cfg.hidden_act
        self.position_embeddings = param(rngs, (max_pair_targets, position_dim), (None, "embed"))
        self.dense1 = tdense(2 * h + position_dim, h, ("embed", "embed"), rngs=rngs, dtype=dtype)
        self.norm1 = layer_norm(h, rngs=rngs, dtype=dtype, eps=BERT_LN_EPS)
        self.dense2 = tdense(h, h, ("embed", "embed"), rngs=rngs, dtype=dtype)
        self.norm2 = layer_norm(h, rngs=rngs, dtype=dtype, eps=BERT_LN_EPS)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), logical_axes=("vocab",))

    def __call__(self, hidden, left, right, offset, word_embeddings) -> jax.Array:
        act = activation(self.act)
        pos = jnp.take(self.position_embeddings[...], offset, axis=0).astype(hidden.dtype)
        h = jnp.concatenate([gather_positions(hidden, left), gather_positions(hidden, right), pos], axis=-1)
        h = self.norm1(act(self.dense1(h)))
        h = self.norm2(act(self.dense2(h)))
        return decode(h, word_embeddings, self.bias[...])


class BertPretrainer(nnx.Module):
    """BERT pre-training model: encoder + MLM head (+ pooler and NSP head) (+ SpanBERT SBO head).

    ``__call__(input_ids, segment_ids, input_mask, positions, *, sbo_left=None, sbo_right=None,
    sbo_offset=None, dropout_keys=None)`` returns a dict with "hidden", "mlm_logits" [B, P, V]
    (at the prediction ``positions``) and, when enabled, "nsp_logits" [B, 2] and "sbo_logits".
    ``head_act`` is the MLM-transform activation (default: ``hidden_act``; HF's ELECTRA generator
    head is always exact GELU). ``embedding_size != hidden`` gives ELECTRA's generator (MLM head
    Dense(H -> E)).
    """

    def __init__(self, size: str | TextConfig | Mapping = "Base", *, rngs: nnx.Rngs, nsp: bool = False,
                 pooler: bool | None = None, sbo: bool = False, max_pair_targets: int = 15,
                 sbo_position_dim: int = 200, head_act: str | None = None, dtype: Any = None,
                 remat: bool | str = False, attention_impl: str | None = None, scan_layers: bool = False,
                 **config: Any):
        pooler = nsp if pooler is None else pooler
        if nsp and not pooler:
            raise ValueError("the NSP head classifies the pooled [CLS] vector: nsp=True needs pooler=True")
        self.encoder = BertEncoder(size, rngs=rngs, pooler=pooler, dtype=dtype, remat=remat,
                                   attention_impl=attention_impl, scan_layers=scan_layers, **config)
        cfg = self.cfg = self.encoder.cfg
        self.nsp, self.sbo, self.head_act = nsp, sbo, head_act or cfg.hidden_act
        self.mlm_head = MlmHead(cfg.hidden, cfg, self.head_act, rngs=rngs, dtype=dtype)
        self.nsp_head = tdense(cfg.hidden, 2, ("embed", None), rngs=rngs, dtype=dtype) if nsp else None
        self.sbo_head = (SboHead(cfg, max_pair_targets=max_pair_targets, position_dim=sbo_position_dim,
                                 rngs=rngs, dtype=dtype) if sbo else None)

    def encode(self, input_ids, segment_ids=None, input_mask=None, *, dropout_keys=None) -> tuple[jax.Array, dict]:
        """The encoder's ``(hidden, aux)``."""
        return self.encoder(input_ids, segment_ids, input_mask, dropout_keys=dropout_keys)

    def mlm_logits(self, hidden: jax.Array, positions: jax.Array) -> jax.Array:
        """MLM logits [B, P, V] (float32) at ``positions`` [B, P]: gathered first, as BERT."""
        return self.mlm_head(gather_positions(hidden, positions), self.encoder.word_embeddings[...])

    def mlm_logits_all(self, hidden: jax.Array) -> jax.Array:
        """MLM logits [B, L, V] at every position (HF ``BertForMaskedLM.logits``)."""
        return self.mlm_head(hidden, self.encoder.word_embeddings[...])

    def nsp_logits(self, aux: Mapping[str, jax.Array]) -> jax.Array:
        """Next-sentence logits [B, 2] from the encoder's pooled output (class 0 = "is next")."""
        if self.nsp_head is None:
            raise ValueError("this BertPretrainer was built with nsp=False")
        return self.nsp_head(aux["pooled"]).astype(jnp.float32)

    def sbo_logits(self, hidden, left, right, offset) -> jax.Array:
        """SBO logits [B, P, V]: boundary positions ``left``/``right`` and target ``offset`` are [B, P]."""
        if self.sbo_head is None:
            raise ValueError("this BertPretrainer was built with sbo=False")
        return self.sbo_head(hidden, left, right, offset, self.encoder.word_embeddings[...])

    def __call__(self, input_ids, segment_ids=None, input_mask=None, positions=None, *, sbo_left=None,
                 sbo_right=None, sbo_offset=None, dropout_keys=None) -> dict:
        hidden, aux = self.encode(input_ids, segment_ids, input_mask, dropout_keys=dropout_keys)
        out = {"hidden": hidden}
        out["mlm_logits"] = self.mlm_logits_all(hidden) if positions is None else self.mlm_logits(hidden, positions)
        if self.nsp_head is not None:
            out["nsp_logits"] = self.nsp_logits(aux)
        if self.sbo_head is not None and sbo_left is not None:
            out["sbo_logits"] = self.sbo_logits(hidden, sbo_left, sbo_right, sbo_offset)
        return out
