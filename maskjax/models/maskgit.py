"""MaskGIT's bidirectional transformer (``maskgit/nets/maskgit_transformer.py``, spec 9c), NNX.

A BERT without next-sentence prediction and segment embeddings:

- word [V, D] + learned position [P, D] embeddings -> LayerNorm (eps 1e-12) -> dropout;
- post-LN blocks ``a = LN(x + Drop(Dense(SelfAttn(x))))``, ``y = LN(a + Drop(Dense(gelu(Dense(a)))))``
  with biased query/key/value/output projections, attention-probability dropout and Flax's
  default ``jax.nn.gelu`` (the **tanh** approximation), no final norm
  (:class:`maskjax.models.bert.BertLayer` with ``hidden_act="gelu_tanh"``);
- MLM head: Dense(D -> D) + gelu (tanh) + LayerNorm, then ``h @ word_embeddings^T + bias`` (tied);
- truncated normal (+-2 stddev, not rescaled) init with stddev 0.02 for every kernel and both
  embedding tables, zero biases, LayerNorm 1 / 0.

The class-conditional input is ``[class] + tokens``: ``vocab = codebook + classes + 1`` with the
class token ``label + codebook`` and the mask token ``codebook + classes`` (the last row, which
the official ``mask_token_id = -1`` reaches by wrapping: spec 9c); ``max_positions = h * w + 1``.
The model returns logits over the whole vocabulary; decoding and the loss use the first
``codebook`` columns.

Parameters carry logical axis names (``vocab``, ``embed``, ``heads``, ``mlp``), so the default
FSDP rules shard them. Dropout is per example (``dropout_keys`` [B]), as the BERT stack's: a
token's dropout mask does not depend on the batch split. (Flax's ``SelfAttention`` in the
official code broadcasts one attention-dropout mask over the batch; the distribution per example
is the same.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models.bert import (BERT_LN_EPS, MlmHead, TextConfig, TransformerStack, as_keys, dropout,
                                 embedding_and_stack_keys, keep_masks, param)
from maskjax.models.layers import layer_norm

ACTIVATION = "gelu_tanh"   # flax / jax.nn.gelu default: approximate=True


def maskgit_vocab(codebook_size: int, num_classes: int) -> tuple[int, int]:
    """``(vocab_size, mask_id)``: ``codebook + classes + 1`` entries, the mask token last."""
    vocab = int(codebook_size) + int(num_classes) + 1
    return vocab, vocab - 1


class MaskGITTransformer(nnx.Module):
    """The MaskGIT transformer (module docstring).

    ``__call__(input_ids [B, L], *, dropout_keys=None)`` returns float32 logits [B, L, V];
    :meth:`hidden` the last hidden states [B, L, D].

    Args:
      vocab_size: codebook + classes + 1 (:func:`maskgit_vocab`).
      hidden, depth, heads, intermediate: the stack's shape (official ImageNet model: 768, 24, 16, 3072).
      max_positions: position-table rows (``h * w + 1`` for ``[class] + tokens``).
      dropout, attention_dropout: hidden and attention-probability dropout (official 0.1 and 0.1).
      dtype, remat, attention_impl, scan_layers: run options, as every maskjax model.
    """

    def __init__(self, vocab_size: int, *, hidden: int = 768, depth: int = 24, heads: int = 16,
                 intermediate: int = 3072, max_positions: int = 257, dropout: float = 0.1,
                 attention_dropout: float = 0.1, rngs: nnx.Rngs, dtype: Any = None, remat: bool | str = False,
                 attention_impl: str | None = None, scan_layers: bool = False):
        self.cfg = TextConfig(vocab_size=vocab_size, hidden=hidden, layers=depth, heads=heads, ffn=intermediate,
                              embedding_size=hidden, max_positions=max_positions, type_vocab_size=1,
                              dropout=dropout, attention_dropout=attention_dropout, hidden_act=ACTIVATION,
                              layer_norm_eps=BERT_LN_EPS)
        self.dtype = dtype
        self.word_embeddings = param(rngs, (vocab_size, hidden), ("vocab", "embed"))
        self.position_embeddings = param(rngs, (max_positions, hidden), (None, "embed"))
        self.embeddings_norm = layer_norm(hidden, rngs=rngs, dtype=dtype, eps=BERT_LN_EPS)
        self.transformer = TransformerStack(self.cfg, rngs=rngs, dtype=dtype, remat=remat,
                                            attention_impl=attention_impl, scan_layers=scan_layers)
        self.mlm_head = MlmHead(hidden, self.cfg, ACTIVATION, rngs=rngs, dtype=dtype)

    @property
    def vocab_size(self) -> int:
        """Rows of the (tied) word embedding."""
        return self.cfg.vocab_size

    def embed(self, input_ids: jax.Array, dropout_keys: jax.Array | None = None) -> jax.Array:
        """Word + position embeddings -> LayerNorm -> dropout [B, L, D]."""
        length = input_ids.shape[1]
        if length > self.cfg.max_positions:
            raise ValueError(f"sequence length {length} exceeds max_positions={self.cfg.max_positions}")
        x = jnp.take(self.word_embeddings[...], input_ids.astype(jnp.int32), axis=0)
        x = x + self.position_embeddings[...][:length][None]
        x = self.embeddings_norm(x.astype(self.dtype) if self.dtype is not None else x)
        (keep,) = keep_masks(dropout_keys, (self.cfg.dropout,), (x.shape[1:],))
        return dropout(x, keep, self.cfg.dropout)

    def hidden(self, input_ids: jax.Array, *, dropout_keys: jax.Array | None = None) -> jax.Array:
        """Last hidden states [B, L, D] (post-LN blocks: no final norm)."""
        emb_keys, stack_keys = embedding_and_stack_keys(as_keys(dropout_keys))
        x = self.embed(input_ids, emb_keys)
        mask = jnp.ones(input_ids.shape, jnp.int32)   # no padding: every position attends everywhere
        h, _ = self.transformer(x, mask, stack_keys)
        return h

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The tied MLM head on hidden states: float32 logits [..., V]."""
        return self.mlm_head(hidden, self.word_embeddings[...])

    def __call__(self, input_ids: jax.Array, *, dropout_keys: jax.Array | None = None) -> jax.Array:
        return self.logits(self.hidden(input_ids, dropout_keys=dropout_keys))
