"""Pieces shared by the masked-language-model methods: special ids, candidates, keys, checks."""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp

from maskjax.methods.base import Method
from maskjax.methods.mae import compute_dtype

MASKING_KINDS = ("bert", "whole_word", "uniform", "span", "ngram", "electra")
RATE_SCHEDULES = ("constant", "linear", "cosine", "step")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Token ids the masking must know: never-masked specials, [MASK], and the vocabulary size."""

    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    vocab_size: int

    @classmethod
    def from_config(cls, config) -> "SpecialIds":
        """Reads the ids from ``data.vocab_path`` (filled in by the text modality's ``prepare``)."""
        from maskjax.data.text import load_tokenizer

        path = config.data.get("vocab_path")
        if not path:
            raise ValueError("data.vocab_path is not set: the text modality's prepare() resolves it "
                             "(maskjax train does this); set it to a vocab.txt to build the method directly")
        tok = load_tokenizer(path, lowercase=config.data.get("lowercase", True))
        return cls(tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id, tok.vocab_size)

    @classmethod
    def synthetic(cls, vocab_size: int) -> "SpecialIds":
        """The stand-in ids of the text modality's synthetic batches (bench, fitcheck; no vocabulary)."""
        from maskjax.data.text.modality import SYNTHETIC_IDS

        return cls(vocab_size=int(vocab_size), **SYNTHETIC_IDS)

    def candidates(self, input_ids: jax.Array, input_mask: jax.Array) -> jax.Array:
        """Positions that may be masked: real tokens other than [CLS], [SEP] and [MASK]."""
        special = (input_ids == self.cls_id) | (input_ids == self.sep_id) | (input_ids == self.mask_id)
        return (input_mask > 0) & ~special


class TextMethod(Method):
    """Shared parts of the masked-LM methods: text modality, special ids, synthetic-data stand-ins."""

    modality = "text"
    # BERT/ELECTRA attention takes a padding mask, which only these two cores accept.
    attention_impls = ("xla", "cudnn")

    @functools.cached_property
    def ids(self) -> SpecialIds:
        """Special token ids, read from the vocabulary on first use (building needs none)."""
        return SpecialIds.from_config(self.config)

    def use_synthetic_data(self) -> None:
        """Without a vocabulary file, uses the synthetic batches' stand-in special ids."""
        path = self.config.data.get("vocab_path")
        if not (path and os.path.exists(path)):
            self.ids = SpecialIds.synthetic(self.config.model.vocab_size)

    def features(self, model, inputs, pool=None):
        """The encoder's [CLS] hidden state (``inputs``: a dict with ``input_ids``, ``segment_ids``, ``input_mask``)."""
        hidden, _ = self.encoder(model)(inputs["input_ids"], inputs.get("segment_ids"), inputs.get("input_mask"))
        return hidden[:, 0]

    def eval_stats(self, model, batch, keys, options):
        """Masked-token sums at a fixed [MASK]-only ``options["rate"]`` (the held-out MLM evaluator)."""
        return self.heldout_stats(model, batch, keys, float(options["rate"]))


def split_example_keys(keys: jax.Array, n: int) -> list[jax.Array]:
    """``n`` independent [B] key arrays from per-example keys (masking, dropout, sampling...)."""
    return [jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys) for i in range(n)]


def model_kwargs(config) -> dict:
    """Constructor arguments every text model shares, from ``config.model`` and the run options."""
    m = config.model
    return dict(vocab_size=m.vocab_size, max_positions=m.max_positions, type_vocab_size=m.type_vocab_size,
                dropout=m.dropout, attention_dropout=m.attention_dropout, hidden_act=m.hidden_act,
                dtype=compute_dtype(config.get("compute_dtype", "float32")), remat=config.get("remat", False),
                attention_impl=m.get("attention_impl", None), scan_layers=bool(m.get("scan_layers", False)))


def check_text_config(config, errors: list[str]) -> None:
    """Model size, masking kind, replacement mix and rate schedule make sense together."""
    from maskjax.models.bert import TEXT_SIZES

    m, k = config.model, config.masking
    if m.variant not in TEXT_SIZES:
        errors.append(f"unknown text model.variant {m.variant!r}; known: {list(TEXT_SIZES)}")
    if k.get("kind") not in MASKING_KINDS:
        errors.append(f"unknown masking.kind {k.get('kind')!r}; use one of {MASKING_KINDS}")
    mix = tuple(k.get("mix", (0.8, 0.1, 0.1)))
    if len(mix) != 3 or min(mix) < 0 or abs(sum(mix) - 1.0) > 1e-6:
        errors.append(f"masking.mix {mix} must be three non-negative fractions ([MASK], random, kept) summing to 1")
    schedule = k.get("schedule", "constant")
    if schedule not in RATE_SCHEDULES:
        errors.append(f"unknown masking.schedule {schedule!r}; use one of {RATE_SCHEDULES}")
    elif schedule != "constant":
        if not config.get("total_steps"):
            errors.append(f"masking.schedule={schedule!r} needs total_steps (the schedule's length)")
        if not 0.0 < k.get("final_ratio", 0.0) < 1.0:
            errors.append(f"masking.final_ratio must be in (0, 1), got {k.get('final_ratio')}")
        top = max(k.ratio, k.final_ratio)
        if top * config.data.seq_len > k.max_predictions + 1:
            errors.append(f"masking.max_predictions {k.max_predictions} is below the schedule's peak "
                          f"{top} x seq_len {config.data.seq_len}; raise it (predictions past it are dropped)")
    if config.data.get("seq_len") and k.ratio * config.data.seq_len > k.max_predictions + 1:
        errors.append(f"masking.max_predictions {k.max_predictions} is below masking.ratio {k.ratio} x "
                      f"data.seq_len {config.data.seq_len}; raise it (e.g. to {int(k.ratio * config.data.seq_len + 1)})")


def rate_schedule(config):
    """``step -> masking rate`` from ``config.masking`` (constant unless a schedule is named)."""
    from maskjax.masking import mask_rate_schedule

    k = config.masking
    kind = k.get("schedule", "constant")
    if kind == "constant":
        return mask_rate_schedule("constant", k.ratio)
    return mask_rate_schedule(kind, k.ratio, k.final_ratio, int(config.total_steps))


def current_rate(schedule, step) -> jax.Array:
    """The rate at ``step`` (the schedule's start when there is no step, e.g. in evaluation)."""
    return schedule(jnp.zeros((), jnp.int32) if step is None else step)
