"""BERT-family masked language models in one method: BERT (+NSP), RoBERTa-style dynamic masking,
whole-word masking, uniform masking at any rate and replacement mix ("Should you mask 15%"),
masking-rate schedules (Ankner et al.), SpanBERT (+SBO) and whole-word n-gram masking.

Masking is dynamic: drawn inside the jitted step from each example's key, so every epoch sees
new masks (RoBERTa) and a resumed run draws exactly the masks of an uninterrupted one. The
``masking.kind`` picks the corruption (specs/methods_text_gen.md 1-5):

- ``bert``: BERT's count rule (round(rate * len incl. [CLS]/[SEP]), at least 1, at most
  ``max_predictions``) over single wordpieces, replacement ``mix`` (80/10/10);
- ``whole_word``: the same over whole words (a group exceeding the budget is skipped);
- ``uniform``: any rate with ``masking.count`` (exact / fairseq / bernoulli) and any ``mix``;
- ``span``: SpanBERT's geometric whole-word spans, one replacement draw per span, with the
  span-boundary objective when ``model.sbo``;
- ``ngram``: contiguous whole-word n-grams (n <= ``max_ngram``).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from maskjax.masking import bert_mask, ngram_mask, span_mask
from maskjax.methods import register
from maskjax.methods.text_common import (
    TextMethod, check_text_config, current_rate, model_kwargs, rate_schedule, split_example_keys)
from maskjax.models.bert import BertPretrainer
from maskjax.objectives.text import mlm_loss, nsp_loss, sbo_loss, spanbert_mlm_loss

# The held-out evaluation corrupts with [MASK] only, so models trained with different
# replacement mixes are scored on the same task: predict the hidden token from its context.
EVAL_MIX = (1.0, 0.0, 0.0)


@register("bert")
class BERT(TextMethod):
    """BERT (Devlin et al. 2019) and the masked-LM variants named in the module docstring."""

    @staticmethod
    def check_config(config, errors: list[str]) -> None:
        """Text model/masking checks plus: SBO needs span masking; NSP needs pair data."""
        check_text_config(config, errors)
        if config.model.get("sbo") and config.masking.get("kind") != "span":
            errors.append("model.sbo (SpanBERT's span-boundary objective) needs masking.kind='span'")
        if config.masking.get("kind") == "electra":
            errors.append("masking.kind='electra' belongs to method 'electra'")

    def __init__(self, config):
        super().__init__(config)
        self.schedule = rate_schedule(config)
        k = config.masking
        self.kind = k.kind
        self.mix = tuple(float(x) for x in k.mix)
        self.max_predictions = int(k.max_predictions)
        self.sbo = bool(config.model.get("sbo", False))
        self.nsp = bool(config.model.get("nsp", False))

    def build(self, rngs):
        """A :class:`BertPretrainer` of ``model.variant`` with the NSP / SBO heads the config asks for."""
        m = self.config.model
        return BertPretrainer(m.variant, rngs=rngs, nsp=self.nsp, sbo=self.sbo,
                              max_pair_targets=m.get("max_pair_targets", 15), **model_kwargs(self.config))

    def corrupt(self, batch: dict, keys: jax.Array, rate, *, kind: str | None = None, mix=None):
        """``(TokenMask, SpanTargets or None)`` for ``batch`` with per-example ``keys``."""
        kind = kind or self.kind
        mix = self.mix if mix is None else mix
        k = self.config.masking
        ids, imask = batch["input_ids"], batch["input_mask"]
        cand = self.ids.candidates(ids, imask)
        common = dict(max_predictions=self.max_predictions, mask_id=self.ids.mask_id,
                      vocab_size=self.ids.vocab_size, rate=rate, mix=mix)
        if kind in ("bert", "whole_word", "uniform"):
            count = "bert" if kind != "uniform" else k.get("count", "exact")
            return bert_mask(keys, ids, imask, cand, whole_word=kind == "whole_word",
                             word_start=batch["word_start"], count=count, **common), None
        if kind == "span":
            common.pop("mix")
            return span_mask(keys, ids, imask, cand, batch["word_start"], p=k.span_p, max_span=k.max_span,
                             replacement=k.span_replacement, mix=mix,
                             max_pair_targets=self.config.model.get("max_pair_targets", 15), **common)
        if kind == "ngram":
            tm, _ = ngram_mask(keys, ids, imask, cand, batch["word_start"], max_n=k.max_ngram, **common)
            return tm, None
        raise ValueError(f"unknown masking.kind {kind!r}")

    def loss(self, model, batch, keys, train, step=None):
        """MLM (+ NSP) (+ SBO) loss of one batch; masks and dropout come from per-example keys."""
        mask_keys, drop_keys = split_example_keys(keys, 2)
        rate = current_rate(self.schedule, step)
        tm, spans = self.corrupt(batch, mask_keys, rate)
        hidden, aux = model.encode(tm.input_ids, batch["segment_ids"], batch["input_mask"],
                                   dropout_keys=drop_keys if train else None)
        logits = model.mlm_logits(hidden, tm.positions)
        # SpanBERT normalises by the number of masked tokens; BERT adds 1e-5 to it.
        mlm, mlm_metrics = (spanbert_mlm_loss if self.sbo else mlm_loss)(logits, tm.labels, tm.weights)
        metrics = {"mlm_loss": mlm, "mlm_accuracy": mlm_metrics["accuracy"], "mask_rate": rate,
                   "predictions": jnp.mean(jnp.sum(tm.weights, axis=1))}
        total = mlm
        if self.nsp:
            nsp, nsp_metrics = nsp_loss(model.nsp_logits(aux), batch["nsp_label"])
            total = total + nsp
            metrics.update(nsp_loss=nsp, nsp_accuracy=nsp_metrics["accuracy"])
        if self.sbo:
            sbo_logits = model.sbo_logits(hidden, spans.left, spans.right, spans.offset)
            sbo, sbo_metrics = sbo_loss(sbo_logits, tm.labels, spans.weights)
            total = total + self.config.model.get("sbo_weight", 1.0) * sbo
            metrics.update(sbo_loss=sbo, sbo_accuracy=sbo_metrics["accuracy"])
        metrics["loss"] = total
        return total, metrics

    def heldout_stats(self, model, batch, keys, rate: float) -> dict:
        """Sums over one held-out batch at a fixed ``rate`` of [MASK]-only BERT masking.

        Returns ``{"nll_sum", "correct", "count"}`` so an evaluator can pool batches into the
        masked-token accuracy and perplexity ``exp(nll_sum / count)``.
        """
        tm, _ = self.corrupt(batch, keys, rate, kind="bert", mix=EVAL_MIX)
        hidden, _ = model.encode(tm.input_ids, batch["segment_ids"], batch["input_mask"])
        return masked_token_sums(model.mlm_logits(hidden, tm.positions), tm.labels, tm.weights)

    def encoder(self, model):
        """The BERT encoder module to fine-tune (``(hidden, aux)`` from ids, segments, mask)."""
        return model.encoder

    def flops(self, global_batch):
        """Encoder on the whole block, MLM head on the predicted positions, NSP/SBO heads (flop_count.bert_flops)."""
        from maskjax.models.flop_count import bert_flops

        return bert_flops(self.config, global_batch)


def masked_token_sums(logits, labels, weights) -> dict:
    """Summed NLL, correct predictions and count over weighted predictions (float32)."""
    from maskjax.objectives.text import token_nll

    w = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"nll_sum": jnp.sum(w * token_nll(logits, labels)), "correct": jnp.sum(w * correct), "count": jnp.sum(w)}
