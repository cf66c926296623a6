"""ELECTRA: replaced-token detection with a small MLM generator (Clark et al., ICLR 2020).

google-research/electra ``run_pretraining.py`` (specs/methods_text_gen.md 6): the generator
fills ELECTRA-masked positions (85 % [MASK] / 15 % kept, positions drawn with replacement),
its samples (Gumbel-max at ``temperature``, no gradient) replace the originals, and the
discriminator labels every real token as original or replaced. Loss
``gen_weight * MLM + disc_weight * BCE`` with weights 1 and 50; generator and discriminator
share the embeddings.
"""

from __future__ import annotations


import jax.numpy as jnp

from maskjax.masking import electra_mask
from maskjax.methods import register
from maskjax.methods.bert import EVAL_MIX, masked_token_sums
from maskjax.methods.text_common import (
    TextMethod, check_text_config, current_rate, model_kwargs, rate_schedule, split_example_keys)
from maskjax.models.bert import BertEncoder
from maskjax.models.electra import Electra
from maskjax.objectives.text import electra_corrupt, gumbel_sample, mlm_loss, rtd_loss


@register("electra")
class ELECTRA(TextMethod):
    """Generator + discriminator pre-training; the discriminator is the model to fine-tune."""

    @staticmethod
    def check_config(config, errors: list[str]) -> None:
        """Text checks plus ELECTRA's own: its masking and no NSP/SBO heads."""
        check_text_config(config, errors)
        if config.masking.get("kind") != "electra":
            errors.append("method 'electra' uses ELECTRA's masking: set masking.kind='electra'")
        if config.model.get("nsp") or config.model.get("sbo"):
            errors.append("method 'electra' has no NSP or SBO head: set model.nsp=False and model.sbo=False")

    def __init__(self, config):
        super().__init__(config)
        self.schedule = rate_schedule(config)
        self.max_predictions = int(config.masking.max_predictions)
        m = config.model
        self.gen_weight = float(m.get("gen_weight", 1.0))
        self.disc_weight = float(m.get("disc_weight", 50.0))
        self.temperature = float(m.get("temperature", 1.0))

    def build(self, rngs):
        """An :class:`Electra` whose generator is ``model.generator_fraction`` of the discriminator."""
        m = self.config.model
        return Electra(m.variant, rngs=rngs, generator_fraction=m.get("generator_fraction", 0.25),
                       **model_kwargs(self.config))

    def _mask(self, batch, keys, rate):
        ids, imask = batch["input_ids"], batch["input_mask"]
        # ELECTRA never masks [CLS]/[SEP]/[MASK] nor position 0 (``not_first_token``).
        cand = self.ids.candidates(ids, imask) & (jnp.arange(ids.shape[1]) > 0)[None, :]
        return electra_mask(keys, ids, imask, cand, max_predictions=self.max_predictions,
                            mask_id=self.ids.mask_id, rate=rate)

    def loss(self, model, batch, keys, train, step=None):
        """Generator MLM + 50 x discriminator BCE over all real tokens."""
        mask_keys, sample_keys, drop_keys = split_example_keys(keys, 3)
        rate = current_rate(self.schedule, step)
        seg, imask = batch["segment_ids"], batch["input_mask"]
        drop = drop_keys if train else None
        tm = self._mask(batch, mask_keys, rate)
        gen_logits = model.generator_logits(tm.input_ids, seg, imask, tm.positions, dropout_keys=drop)
        mlm, mlm_metrics = mlm_loss(gen_logits, tm.labels, tm.weights)
        sampled = gumbel_sample(sample_keys, gen_logits, self.temperature)
        corrupt, labels = electra_corrupt(batch["input_ids"], tm.positions, sampled, tm.weights)
        disc_logits = model.discriminator_logits(corrupt, seg, imask, dropout_keys=drop)
        rtd, rtd_metrics = rtd_loss(disc_logits, labels, imask)
        total = self.gen_weight * mlm + self.disc_weight * rtd
        return total, {"loss": total, "mlm_loss": mlm, "mlm_accuracy": mlm_metrics["accuracy"], "rtd_loss": rtd,
                       "rtd_accuracy": rtd_metrics["accuracy"], "rtd_precision": rtd_metrics["precision"],
                       "rtd_recall": rtd_metrics["recall"], "replaced_fraction": rtd_metrics["replaced_fraction"],
                       "mask_rate": rate}

    def heldout_stats(self, model, batch, keys, rate: float) -> dict:
        """The generator's masked-token sums at a fixed [MASK]-only ``rate`` (as BERT's evaluation)."""
        from maskjax.masking import bert_mask

        ids, imask = batch["input_ids"], batch["input_mask"]
        tm = bert_mask(keys, ids, imask, self.ids.candidates(ids, imask), max_predictions=self.max_predictions,
                       mask_id=self.ids.mask_id, vocab_size=self.ids.vocab_size, rate=rate, mix=EVAL_MIX)
        logits = model.generator_logits(tm.input_ids, batch["segment_ids"], imask, tm.positions)
        return masked_token_sums(logits, tm.labels, tm.weights)

    def encoder(self, model):
        """The discriminator as a :class:`BertEncoder` sharing the model's modules (for fine-tuning)."""
        return SharedEncoder(model.cfg, model.embeddings, model.discriminator)

    def flops(self, global_batch):
        """Generator with its MLM head plus the discriminator on every token (flop_count.electra_flops)."""
        from maskjax.models.flop_count import electra_flops

        return electra_flops(self.config, global_batch)


class SharedEncoder(BertEncoder):
    """A :class:`BertEncoder` view over existing embedding and transformer modules (no copy)."""

    def __init__(self, cfg, embeddings, transformer):  # noqa: D107 - modules are shared, not built
        self.cfg = cfg
        self.embeddings = embeddings
        self.transformer = transformer
