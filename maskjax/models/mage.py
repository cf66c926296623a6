"""MAGE's ViT encoder-decoder on image tokens (LTH14/mage ``models_mage.py``, spec section 10), NNX.

The official ``MaskedGenerativeEncoderViT`` forward pass, on token ids (the VQGAN runs before it):

- vocabulary ``codebook + 1000 + 1`` whatever the dataset (1000 class slots, unused by the
  class-unconditional model), the *fake class* token ``codebook + 1100 - 1024`` prepended to
  every sequence, the mask token last (``vocab - 1``): :func:`mage_vocab`;
- ``BertEmbeddings``: word [V, D] + learned position [1 + N, D] embeddings (both normal(0.02))
  -> LayerNorm (eps 1e-6) -> dropout (0.1), on the whole sequence; then the *dropped* positions
  are removed (:class:`TokenEmbeddings`, :class:`MageEncoder`);
- encoder: timm pre-LN blocks (qkv bias, exact GELU, attention-probability, projection and MLP
  dropout 0.1, no drop path) + LayerNorm (eps 1e-6) on the kept tokens: :class:`MageBlock` in a
  :class:`~maskjax.models.backbone.Backbone` (``blocks``, ``norm``);
- decoder: ``decoder_embed`` (D -> D_dec); every position that is masked (dropped, or kept with
  the [MASK] id) is filled with the embedded *class-token output* (``pad_with_cls_token=True``);
  the other positions get their own encoder output back; + ``decoder_pos_embed_learned``; decoder
  blocks (the same block) + ``decoder_norm``;
- ``MlmLayer``: Dense(D_dec -> D) -> GELU -> LayerNorm (**eps 1e-5**, PyTorch's default: the
  official layer does not pass one) -> ``h @ stop_gradient(word_embeddings)^T + bias``: tied to the
  token embedding but *detached* (the official ``word_embeddings.weight.data.detach()``), so the
  loss reaches the embedding table only through the encoder input.

Init as the official ``initialize_weights``: xavier-uniform Linear weights (qkv as one matrix),
zero biases, LayerNorm 1/0, normal(0.02) for both embedding tables and the learned decoder
position embedding, zero MLM bias.

Left out because the forward pass never reads them (``find_unused_parameters=True`` in the
official DDP): ``patch_embed``, ``cls_token``, the fixed sin-cos ``pos_embed`` /
``decoder_pos_embed``, ``mask_token`` (only used when ``pad_with_cls_token`` is False) and
``decoder_pred``. Their presence changes no output and no gradient.

Shapes are static: the encoder always sees ``1 + N - ceil(N * mask_ratio_min)`` tokens (the number
dropped does not depend on the drawn ratio; the ratio changes only how many of the kept tokens
carry the [MASK] id). ``ids_keep`` [B, K] gives their positions (the class position 0 included).

Dropout is per example (``dropout_keys`` [B] typed PRNG keys, or None = deterministic), split per
example into the embedding, the encoder layers and the decoder layers, as the BERT stack's: a
token's dropout masks do not depend on how the batch is split over devices or micro-batches.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.masking import gather_tokens
from maskjax.models.backbone import DECODER_NAMES, ENCODER_NAMES, Backbone
from maskjax.models.bert import attention as dropout_attention, decode as tied_decode
from maskjax.models.bert import dropout, keep_masks, split_keys
from maskjax.models.layers import LN_EPS, Block, dense, dense_gelu, gelu_erf, layer_norm

OFFICIAL_CLASS_SLOTS = 1000        # vocab_size = codebook + 1000 + 1 in models_mage.py
FAKE_CLASS_OFFSET = 1100 - 1024    # fake_class_label = codebook_size + 1100 - 1024
MLM_LN_EPS = 1e-5                  # MlmLayer's nn.LayerNorm(word_emb_dim) keeps PyTorch's default eps
EMBED_INIT_STD = 0.02


def mage_vocab(codebook_size: int) -> tuple[int, int, int]:
    """``(vocab_size, fake_class_id, mask_id)`` of the official layout for a codebook of ``K`` ids."""
    vocab = int(codebook_size) + OFFICIAL_CLASS_SLOTS + 1
    return vocab, int(codebook_size) + FAKE_CLASS_OFFSET, vocab - 1


def _normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple) -> nnx.Param:
    """torch ``normal_(std=0.02)`` (untruncated), float32, with logical axis names."""
    value = EMBED_INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value, logical_axes=tuple(axes))


class MageBlock(Block):
    """timm's pre-LN ``Block`` as MAGE builds it: :class:`maskjax.models.layers.Block` (same
    parameters: ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) plus
    the official dropout: attention probabilities (``attn_drop``), the attention projection
    (``proj_drop``), and the MLP after the activation and after ``fc2`` (timm 0.3.2 ``Mlp``).

    ``__call__(x, keys=None)``: ``keys`` per-example PRNG keys [B] (training) or None (inference,
    the plain block with the fused attention core).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, rngs: nnx.Rngs, dtype: Any = None,
                 attention_impl: str | None = None, drop_rate: float = 0.1, attn_drop_rate: float = 0.1):
        super().__init__(dim, num_heads, mlp_ratio, rngs=rngs, dtype=dtype, attention_impl=attention_impl)
        self.drop_rate = float(drop_rate)
        self.attn_drop_rate = float(attn_drop_rate)

    def __call__(self, x: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        if keys is None or (self.drop_rate == 0.0 and self.attn_drop_rate == 0.0):
            return super().__call__(x)
        b, t, d = x.shape
        heads, hidden = self.attn.num_heads, self.mlp.fc1.out_features
        rate, attn_rate = self.drop_rate, self.attn_drop_rate
        keep_probs, keep_proj, keep_act, keep_out = keep_masks(
            keys, (attn_rate, rate, rate, rate), ((heads, t, t), (t, d), (t, hidden), (t, d)))
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, t, 3, heads, d // heads)
        # Probability dropout needs the probabilities: BERT's explicit float32 softmax core (no padding).
        a = dropout_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], jnp.ones((b, t), jnp.int32),
                              keep=keep_probs, rate=attn_rate)
        x = x + dropout(self.attn.proj(a.reshape(b, t, d)), keep_proj, rate)
        y = dropout(dense_gelu(self.mlp.fc1, self.norm2(x)), keep_act, rate)
        return x + dropout(self.mlp.fc2(y), keep_out, rate)


def mage_block(width: int, heads: int, mlp_ratio: float, *, dtype: Any, attention_impl: str | None,
               drop_rate: float, attn_drop_rate: float):
    """Block factory for :class:`~maskjax.models.backbone.Backbone` (identical blocks: scan-able)."""
    def make(rngs: nnx.Rngs, index: int, drop_path: float) -> MageBlock:
        del index, drop_path   # the official blocks have no stochastic depth
        return MageBlock(width, heads, mlp_ratio, rngs=rngs, dtype=dtype, attention_impl=attention_impl,
                         drop_rate=drop_rate, attn_drop_rate=attn_drop_rate)
    return make


def layer_keys(keys: jax.Array | None, depth: int) -> list | None:
    """Per-example keys [B] -> one [B] key array per layer (None stays None)."""
    if keys is None:
        return None
    per_layer = split_keys(keys, depth)
    return [per_layer[:, i] for i in range(depth)]


class TokenEmbeddings(nnx.Module):
    """The official ``BertEmbeddings``: word + position embeddings -> LayerNorm (eps 1e-6) -> dropout.

    ``word_embeddings`` [V, D] (logical axes vocab, embed), ``position_embeddings`` [P, D]; the
    official ``LayerNorm`` attribute is ``norm`` here.
    """

    def __init__(self, vocab_size: int, max_positions: int, width: int, *, rngs: nnx.Rngs,
                 dropout_rate: float = 0.1, dtype: Any = None):
        self.max_positions = int(max_positions)
        self.dropout_rate = float(dropout_rate)
        self.dtype = dtype
        self.word_embeddings = _normal_param(rngs, (vocab_size, width), ("vocab", "embed"))
        self.position_embeddings = _normal_param(rngs, (max_positions, width), (None, "embed"))
        self.norm = layer_norm(width, rngs=rngs, dtype=dtype, eps=LN_EPS)

    def __call__(self, ids: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        length = ids.shape[1]
        if length > self.max_positions:
            raise ValueError(f"sequence length {length} exceeds max_positions={self.max_positions}")
        x = jnp.take(self.word_embeddings[...], ids.astype(jnp.int32), axis=0)
        x = x + self.position_embeddings[...][:length][None]
        x = self.norm(x.astype(self.dtype) if self.dtype is not None else x)
        (keep,) = keep_masks(keys, (self.dropout_rate,), (x.shape[1:],))
        return dropout(x, keep, self.dropout_rate)


class MageEncoder(Backbone):
    """Token embedding, then the kept tokens through ``blocks`` and ``norm`` (module docstring).

    :meth:`hidden` returns the block outputs before the final norm (what the official linear
    probe's global pool averages); ``__call__`` applies the norm (what the decoder reads).
    """

    def __init__(self, vocab_size: int, max_positions: int, *, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, dropout_rate: float = 0.1, attention_dropout: float = 0.1,
                 rngs: nnx.Rngs, dtype: Any = None, remat: bool | str = False,
                 attention_impl: str | None = None, scan_layers: bool = False):
        self.depth = int(depth)
        self.token_emb = TokenEmbeddings(vocab_size, max_positions, width, rngs=rngs, dropout_rate=dropout_rate,
                                         dtype=dtype)
        super().__init__(width, depth, heads, mlp_ratio, rngs=rngs, dtype=dtype, attention_impl=attention_impl,
                         remat=remat, scan_layers=scan_layers, names=ENCODER_NAMES,
                         make_block=mage_block(width, heads, mlp_ratio, dtype=dtype, attention_impl=attention_impl,
                                               drop_rate=dropout_rate, attn_drop_rate=attention_dropout))

    def hidden(self, ids: jax.Array, ids_keep: jax.Array | None = None, *,
               dropout_keys: jax.Array | None = None) -> jax.Array:
        """Block outputs [B, K, D] of the positions ``ids_keep`` [B, K] (None: all) of ``ids`` [B, L]."""
        emb_keys = block_keys = None
        if dropout_keys is not None:
            pair = split_keys(dropout_keys, 2)
            emb_keys, block_keys = pair[:, 0], pair[:, 1]
        x = self.token_emb(ids, emb_keys)   # embeddings (and their dropout) on the whole sequence
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)   # then the dropped tokens leave, as the official order
        return self.run_blocks(x, keys=layer_keys(block_keys, self.depth))

    def __call__(self, ids: jax.Array, ids_keep: jax.Array | None = None, *,
                 dropout_keys: jax.Array | None = None) -> jax.Array:
        return self.final_norm(self.hidden(ids, ids_keep, dropout_keys=dropout_keys))


class MlmLayer(nnx.Module):
    """The official ``MlmLayer``: Dense -> GELU (exact) -> LayerNorm (eps 1e-5) -> ``@ E^T + bias``."""

    def __init__(self, in_features: int, embed_dim: int, vocab_size: int, *, rngs: nnx.Rngs, dtype: Any = None):
        self.fc = dense(in_features, embed_dim, ("embed", "embed"), rngs=rngs, dtype=dtype)
        self.ln = layer_norm(embed_dim, rngs=rngs, dtype=dtype, eps=MLM_LN_EPS)
        self.bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32), logical_axes=("vocab",))

    def __call__(self, x: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        """float32 logits [..., V] against the given (already detached) embedding table [V, D]."""
        h = self.ln(gelu_erf(self.fc(x)))
        return tied_decode(h, word_embeddings, self.bias[...])


def fill_from_kept(x_kept: jax.Array, ids_keep: jax.Array, fill: jax.Array, pad: jax.Array) -> jax.Array:
    """The decoder input [B, L, D]: position ``p`` gets its kept token ``x_kept[:, k]`` where
    ``ids_keep[:, k] == p``; positions with ``fill`` True, or not kept, get ``pad`` [B, 1, D].

    The official ``x_after_pad[(1 - token_drop_mask).nonzero()] = x`` then
    ``torch.where(token_all_mask, mask_tokens, x_after_pad)``, written as a gather (static shapes).
    """
    length = fill.shape[1]
    match = ids_keep[:, None, :] == jnp.arange(length, dtype=ids_keep.dtype)[None, :, None]   # [B, L, K]
    slot = jnp.argmax(match, axis=-1)
    x = gather_tokens(x_kept, slot)
    use_pad = fill | ~jnp.any(match, axis=-1)
    return jnp.where(use_pad[..., None], jnp.broadcast_to(pad, x.shape), x)


class MaskedGenerativeEncoder(Backbone):
    """MAGE (module docstring): the encoder as a child, the model itself the backbone of its decoder
    (``decoder_blocks``, ``decoder_norm`` at the top level, as the official module).

    ``__call__(ids, ids_keep, fill, *, dropout_keys=None)``: ``ids`` [B, 1 + N] the fake class id
    then the tokens with [MASK] at the masked positions; ``ids_keep`` [B, K] the positions the
    encoder sees (the undropped ones, 0 first, in increasing order as the official boolean
    indexing keeps them); ``fill`` bool [B, 1 + N] the positions whose decoder input is the class
    output (the official ``token_all_mask``). Returns float32 logits [B, 1 + N, V].

    Args:
      vocab_size: ``codebook + 1000 + 1`` (:func:`mage_vocab`).
      num_tokens: N = h * w image tokens (position table ``1 + N``).
      width, depth, heads: the encoder (ViT-B: 768, 12, 12; ViT-L: 1024, 24, 16).
      decoder_width, decoder_depth, decoder_heads: the decoder (both official models: width = encoder
        width, 8 blocks, 16 heads).
      mlp_ratio, dropout, attention_dropout: 4, 0.1, 0.1 in the official models.
      dtype, remat, attention_impl, scan_layers: run options, as every maskjax model.
    """

    def __init__(self, vocab_size: int, num_tokens: int, *, width: int = 768, depth: int = 12, heads: int = 12,
                 decoder_width: int = 768, decoder_depth: int = 8, decoder_heads: int = 16, mlp_ratio: float = 4.0,
                 dropout: float = 0.1, attention_dropout: float = 0.1, rngs: nnx.Rngs, dtype: Any = None,
                 remat: bool | str = False, attention_impl: str | None = None, scan_layers: bool = False):
        self.num_tokens = int(num_tokens)
        self.decoder_depth = int(decoder_depth)
        self.encoder = MageEncoder(vocab_size, self.num_tokens + 1, width=width, depth=depth, heads=heads,
                                   mlp_ratio=mlp_ratio, dropout_rate=dropout, attention_dropout=attention_dropout,
                                   rngs=rngs, dtype=dtype, remat=remat, attention_impl=attention_impl,
                                   scan_layers=scan_layers)
        self.decoder_embed = dense(width, decoder_width, ("embed", "embed"), rngs=rngs, dtype=dtype)
        self.decoder_pos_embed_learned = _normal_param(rngs, (1, self.num_tokens + 1, decoder_width),
                                                       (None, None, "embed"))
        super().__init__(decoder_width, decoder_depth, decoder_heads, mlp_ratio, rngs=rngs, dtype=dtype,
                         attention_impl=attention_impl, remat=remat, scan_layers=scan_layers, names=DECODER_NAMES,
                         make_block=mage_block(decoder_width, decoder_heads, mlp_ratio, dtype=dtype,
                                               attention_impl=attention_impl, drop_rate=dropout,
                                               attn_drop_rate=attention_dropout))
        self.mlm_layer = MlmLayer(decoder_width, width, vocab_size, rngs=rngs, dtype=dtype)

    @property
    def vocab_size(self) -> int:
        """Rows of the token embedding (and columns of the logits)."""
        return int(self.encoder.token_emb.word_embeddings.shape[0])

    def decode(self, latent: jax.Array, ids_keep: jax.Array, fill: jax.Array, *,
               dropout_keys: jax.Array | None = None) -> jax.Array:
        """The official ``forward_decoder`` on the encoder output ``latent`` [B, K, D]: logits [B, L, V]."""
        x = self.decoder_embed(latent)
        x = fill_from_kept(x, ids_keep, fill, x[:, :1])   # pad_with_cls_token: the class output
        x = x + self.decoder_pos_embed_learned[...].astype(x.dtype)
        x = self.run_stack(x, keys=layer_keys(dropout_keys, self.decoder_depth))
        # The official word_embeddings.weight.data.detach(): tied, but no gradient through the head.
        table = jax.lax.stop_gradient(self.encoder.token_emb.word_embeddings[...])
        return self.mlm_layer(x, table)

    def __call__(self, ids: jax.Array, ids_keep: jax.Array, fill: jax.Array, *,
                 dropout_keys: jax.Array | None = None) -> jax.Array:
        enc_keys = dec_keys = None
        if dropout_keys is not None:
            pair = split_keys(dropout_keys, 2)
            enc_keys, dec_keys = pair[:, 0], pair[:, 1]
        latent = self.encoder(ids, ids_keep, dropout_keys=enc_keys)
        return self.decode(latent, ids_keep, fill, dropout_keys=dec_keys)

    def generation_logits(self, ids: jax.Array, mask_id: int) -> jax.Array:
        """``gen_img_uncond.py``'s forward: every token through the encoder (nothing dropped) and the
        positions holding ``mask_id`` filled with the class output. Logits [B, L, V]."""
        b, length = ids.shape
        ids_keep = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        return self(ids, ids_keep, ids == mask_id)
