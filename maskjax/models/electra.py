"""ELECTRA (google-research/electra ``run_pretraining.py::PretrainingModel``), NNX.

A small generator (masked LM) and a discriminator (replaced-token detection) that **share the
embeddings** (word, position, token type and the embedding LayerNorm: one variable scope
``electra/embeddings`` in the TF code). Each network has its own ``embeddings_project`` Dense when
the embedding size differs from its hidden size; the transformer weights are not shared
(``untied_generator=True``). Generator head: Dense(E) + act -> LayerNorm -> tied embeddings^T + bias;
discriminator head: Dense(H) + act -> Dense(1) (spec 6b). See :mod:`maskjax.models.bert` for the
blocks, the GELU variants and per-example dropout keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.models.bert import (BertEncoder, MlmHead, TextConfig, TextEmbeddings, TransformerStack, _inputs,
                                 activation, embedding_and_stack_keys, fold_keys,
                                 gather_positions, tdense, text_config)

# Salts that give the generator and the discriminator different dropout masks from one key per example.
_GEN_SALT, _DISC_SALT = 1, 2


def get_generator_config(disc: TextConfig, fraction: float = 0.25, layers: float = 1.0) -> TextConfig:
    """ELECTRA's ``get_generator_config``: the generator is the discriminator scaled in width.

    hidden = round(H * fraction), layers = round(L * layers), FFN = 4 * hidden,
    heads = max(1, hidden // 64); vocabulary, embedding size, positions and dropout are shared.
    Python's ``round`` (banker's rounding) as the original.
    """
    hidden = int(round(disc.hidden * fraction))
    if hidden < 1:
        raise ValueError(f"generator fraction {fraction} of hidden size {disc.hidden} leaves no width")
    heads = max(1, hidden // 64)
    if hidden % heads:
        raise ValueError(f"generator hidden size {hidden} (= round({disc.hidden} * {fraction})) is not divisible "
                         f"by its {heads} heads (hidden // 64); choose another generator fraction")
    return dataclasses.replace(disc, hidden=hidden, layers=max(1, int(round(disc.layers * layers))),
                               ffn=4 * hidden, heads=heads)


class DiscriminatorHead(nnx.Module):
    """Dense(H, H) + act -> Dense(H, 1): one replaced/original logit per token."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype: Any = None):
        self.act = cfg.hidden_act
        self.dense = tdense(cfg.hidden, cfg.hidden, ("embed", "embed"), rngs=rngs, dtype=dtype)
        self.out = tdense(cfg.hidden, 1, ("embed", None), rngs=rngs, dtype=dtype)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return self.out(activation(self.act)(self.dense(hidden)))[..., 0].astype(jnp.float32)


class Electra(nnx.Module):
    """Generator + discriminator with shared embeddings (ELECTRA replaced-token detection).

    ``size`` names the discriminator (:data:`~maskjax.models.bert.TEXT_SIZES`, e.g. "electra-small")
    or is a :class:`TextConfig`; keyword config fields override it. The generator is
    :func:`get_generator_config` of it (``generator_fraction``, ``generator_layers``) unless
    ``generator`` gives its fields explicitly (a dict or TextConfig, e.g. from a released
    generator checkpoint). ``generator_head_act`` defaults to ``hidden_act`` (TF); HF's
    ``ElectraGeneratorPredictions`` always uses exact "gelu".

    ``__call__`` runs the discriminator as an encoder: ``(hidden [B, L, H], aux)``.
    """

    def __init__(self, size: str | TextConfig | Mapping = "electra-small", *, rngs: nnx.Rngs,
                 generator_fraction: float = 0.25, generator_layers: float = 1.0,
                 generator: TextConfig | Mapping | None = None, generator_head_act: str | None = None,
                 dtype: Any = None, remat: bool | str = False, attention_impl: str | None = None,
                 scan_layers: bool = False, **config: Any):
        cfg = self.cfg = text_config(size, **config)
        if generator is None:
            gen = get_generator_config(cfg, generator_fraction, generator_layers)
        else:
            gen = text_config(generator if isinstance(generator, TextConfig) else dataclasses.replace(
                cfg, **dict(generator)))
        self.check_shared(gen, cfg)
        self.generator_cfg = gen
        self.generator_head_act = generator_head_act or gen.hidden_act
        kw = dict(rngs=rngs, dtype=dtype, remat=remat, attention_impl=attention_impl, scan_layers=scan_layers)
        self.embeddings = TextEmbeddings(cfg, rngs=rngs, dtype=dtype)
        self.generator = TransformerStack(gen, **kw)
        self.generator_head = MlmHead(gen.hidden, gen, self.generator_head_act, rngs=rngs, dtype=dtype)
        self.discriminator = TransformerStack(cfg, **kw)
        self.discriminator_head = DiscriminatorHead(cfg, rngs=rngs, dtype=dtype)

    @staticmethod
    def check_shared(gen: TextConfig, disc: TextConfig) -> None:
        """Raises ValueError unless the two configs agree on everything the shared embeddings fix."""
        shared = ("vocab_size", "embedding_size", "max_positions", "type_vocab_size", "layer_norm_eps")
        bad = [f"{n}: generator {getattr(gen, n)} vs discriminator {getattr(disc, n)}" for n in shared
               if getattr(gen, n) != getattr(disc, n)]
        if bad:
            raise ValueError(f"generator and discriminator share the embeddings, so these must agree: {bad}")

    @property
    def word_embeddings(self) -> nnx.Param:
        """The shared input embedding table [V, E] (also the generator's tied decoder)."""
        return self.embeddings.word_embeddings

    def _run(self, stack, salt, input_ids, segment_ids, input_mask, dropout_keys):
        segment_ids, input_mask, keys = _inputs(input_ids, segment_ids, input_mask, dropout_keys)
        emb_keys, stack_keys = embedding_and_stack_keys(fold_keys(keys, salt))
        emb = self.embeddings(input_ids, segment_ids, emb_keys)
        hidden, aux = stack(emb, input_mask, stack_keys)
        return hidden, {"embeddings": emb, **aux}

    def generator_hidden(self, input_ids, segment_ids=None, input_mask=None, dropout_keys=None):
        """The generator's ``(hidden [B, L, H_gen], aux)`` on the (masked) input."""
        return self._run(self.generator, _GEN_SALT, input_ids, segment_ids, input_mask, dropout_keys)

    def generator_logits(self, input_ids, segment_ids=None, input_mask=None, positions=None,
                         dropout_keys=None) -> jax.Array:
        """Generator MLM logits (float32): [B, P, V] at ``positions`` [B, P], or [B, L, V] if None."""
        hidden, _ = self.generator_hidden(input_ids, segment_ids, input_mask, dropout_keys)
        if positions is not None:
            hidden = gather_positions(hidden, positions)
        return self.generator_head(hidden, self.word_embeddings[...])

    def discriminator_hidden(self, input_ids, segment_ids=None, input_mask=None, dropout_keys=None):
        """The discriminator's ``(hidden [B, L, H], aux)`` on the corrupted input."""
        return self._run(self.discriminator, _DISC_SALT, input_ids, segment_ids, input_mask, dropout_keys)

    def discriminator_logits(self, input_ids, segment_ids=None, input_mask=None, dropout_keys=None) -> jax.Array:
        """Replaced-token logits [B, L] (float32; > 0 means "replaced")."""
        hidden, _ = self.discriminator_hidden(input_ids, segment_ids, input_mask, dropout_keys)
        return self.discriminator_head(hidden)

    def __call__(self, input_ids, segment_ids=None, input_mask=None, *, dropout_keys=None):
        return self.discriminator_hidden(input_ids, segment_ids, input_mask, dropout_keys)


class ElectraDiscriminator(nnx.Module):
    """A stand-alone ELECTRA discriminator (HF ``ElectraForPreTraining``): encoder + RTD head.

    ``encoder`` is a :class:`~maskjax.models.bert.BertEncoder`, so the same weights fine-tune
    like BERT; ``discriminator_logits(...) -> [B, L]``; ``__call__`` returns the encoder output.
    """

    def __init__(self, size: str | TextConfig | Mapping = "electra-small", *, rngs: nnx.Rngs, dtype: Any = None,
                 remat: bool | str = False, attention_impl: str | None = None, scan_layers: bool = False,
                 **config: Any):
        self.encoder = BertEncoder(size, rngs=rngs, dtype=dtype, remat=remat, attention_impl=attention_impl,
                                   scan_layers=scan_layers, **config)
        self.cfg = self.encoder.cfg
        self.discriminator_head = DiscriminatorHead(self.cfg, rngs=rngs, dtype=dtype)

    def discriminator_logits(self, input_ids, segment_ids=None, input_mask=None, dropout_keys=None) -> jax.Array:
        """Replaced-token logits [B, L] (float32)."""
        hidden, _ = self.encoder(input_ids, segment_ids, input_mask, dropout_keys=dropout_keys)
        return self.discriminator_head(hidden)

    def __call__(self, input_ids, segment_ids=None, input_mask=None, *, dropout_keys=None):
        return self.encoder(input_ids, segment_ids, input_mask, dropout_keys=dropout_keys)
