"""MaskGIT (Chang et al., CVPR 2022; google-research/maskgit): masked generative image transformer
on VQ token grids, class-conditional (specs/methods_text_gen.md section 9).

Training (9b; the official training code is not released, its config is): each example of
tokens [h*w] with label ``y`` becomes ``[y + codebook] + tokens``; ``r ~ U[0, 1)`` per example and
``ceil(gamma(r) * N)`` uniformly chosen tokens (never the class token) are replaced by the mask id
``codebook + classes`` (:mod:`maskjax.masking.maskgit_schedules`, gamma = ``maskgit.mask_schedule``,
cosine). The bidirectional post-LN transformer (:class:`~maskjax.models.maskgit.MaskGITTransformer`)
predicts every position; the loss is the label-smoothed cross-entropy (``maskgit.label_smoothing``,
0.1) on the **masked tokens only** (the config's ``compute_loss_for_all=False``), averaged over the
batch's masked tokens. The PyTorch re-implementations average over all tokens by mistake.

Logits are taken over the codebook (the first ``codebook_size`` columns) for the loss, as for
decoding (inference.py slices them); label smoothing spreads ``epsilon`` uniformly over those
``codebook_size`` ids: ``(1 - eps) NLL + eps mean_k(-log p_k)``. MaskGIT's training code is not
released; this is the loss of MAGE (LTH14/mage ``forward_loss``: ``LabelSmoothingCrossEntropy(0.1)``
on ``logits[:, 1:, :codebook_size]``, masked mean), the same group's code on the same tokenizer.

Sampling: :meth:`MaskGIT.sample_tokens` runs the official ``parallel_decode.decode``
(:mod:`maskjax.masking.maskgit_decode`) from ``[class] + [MASK] * N`` (or from partially known
tokens with ``start_iter``, editing) and returns token grids [B, h, w]; the VQ decoder turns them
into images. :meth:`MaskGIT.sample` is the method contract's ``sample(model, key, num)``.
With ``maskgit.ema_decay`` > 0 (the official ``polyak_decay`` 0.999) sampling and features use the
EMA weights.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from ml_collections import config_dict

from maskjax.data import image_tokens   # registers the "image_tokens" data modality
from maskjax.masking import maskgit_decode, maskgit_schedules
from maskjax.methods import register
from maskjax.methods.base import Method
from maskjax.methods.mae import compute_dtype
from maskjax.methods.md4 import EMA_KEY, attach_ema, ema_view
from maskjax.methods.text_common import split_example_keys
from maskjax.models.flop_count import matmul, scaled, transformer_layer
from maskjax.objectives import weighted_token_mean

# The official ImageNet transformer (maskgit_class_cond_config.py): 24 layers, width 768, FFN 3072,
# 16 heads (the paper's text says 8: spec 9b/14), dropout 0.1 on hidden states and attention.
IMAGENET_MODEL = dict(variant="maskgit-imagenet", hidden=768, depth=24, heads=16, intermediate=3072,
                      dropout=0.1, attention_dropout=0.1)


def masked_token_loss(logits: jax.Array, targets: jax.Array, hidden: jax.Array,
                      label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """Label-smoothed cross-entropy averaged over the hidden tokens of the whole batch.

    ``logits`` [B, N, K] over the codebook, ``targets`` [B, N] ids, ``hidden`` bool [B, N]. Per token
    ``(1 - eps) * (-log p[target]) + eps * mean_k(-log p_k)`` (cross-entropy against
    ``(1 - eps) one_hot + eps / K``); unmasked positions have weight 0, so their logits do not
    matter. Metrics: ``accuracy`` (argmax on hidden tokens), ``nll`` (unsmoothed CE on them),
    ``masked_tokens`` (hidden tokens per example).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    per_token = (1.0 - label_smoothing) * nll + label_smoothing * (-jnp.mean(logp, axis=-1))
    loss = weighted_token_mean(per_token, hidden)
    correct = (jnp.argmax(logp, axis=-1) == targets).astype(jnp.float32)
    metrics = {"loss": loss, "nll": weighted_token_mean(nll, hidden),
               "accuracy": weighted_token_mean(correct, hidden),
               "masked_tokens": jnp.mean(jnp.sum(hidden.astype(jnp.float32), axis=-1))}
    return loss, metrics


@functools.lru_cache(maxsize=32)
def _jitted_decode(graphdef, codebook_size: int, mask_id: int, schedule: str):
    """One compiled decode per model structure and schedule (cached across calls); the step count,
    start step and choice temperature are traced, so a sweep over them compiles once per shape."""

    def run(state, rng, inputs, num_iter, start_iter, choice_temperature):
        model = nnx.merge(graphdef, state)
        logits_fn = lambda ids: model(ids)[..., :codebook_size]
        return maskgit_decode.decode(inputs, rng, logits_fn, mask_token_id=mask_id, num_iter=num_iter,
                                     start_iter=start_iter, choice_temperature=choice_temperature,
                                     mask_scheduling_method=schedule)

    return jax.jit(run)


class TokenGridMethod(Method):
    """Shared sizes of the methods that model grids of VQ token ids (MaskGIT, MAGE): the config's
    own section and the ``image_tokens`` data's codebook and grid."""

    @property
    def own(self):
        """This method's section of the config."""
        return self.config[self.name]

    @property
    def codebook_size(self) -> int:
        """K, the tokenizer's codebook: ids 0..K-1 are image tokens."""
        return int(self.config.data.codebook_size)

    @property
    def grid_size(self) -> int:
        """Side h = w of a token grid."""
        return int(self.config.data.grid_size)

    @property
    def num_tokens(self) -> int:
        """N = h * w image tokens per example."""
        return self.grid_size ** 2


@register("maskgit")
class MaskGIT(TokenGridMethod):
    """Class-conditional MaskGIT on token grids (module docstring)."""

    modality = "image_tokens"
    # The BERT-style attention takes a padding mask, which only these two cores accept.
    attention_impls = ("xla", "cudnn")

    @classmethod
    def config_section(cls) -> dict:
        """MaskGIT's own options (official config values; spec 9b, 9d).

        ``mask_schedule``: gamma of the training mask; ``label_smoothing`` 0.1; decoding:
        ``sample_steps`` (paper: 8 at 256 px, 12 at 512 px), ``choice_temperature`` 4.5 and
        ``sample_schedule`` (cosine); ``ema_decay`` of the weights sampling uses (0: off).
        """
        return dict(mask_schedule="cosine", label_smoothing=0.1, sample_steps=8, choice_temperature=4.5,
                    sample_schedule="cosine", ema_decay=0.0)

    @classmethod
    def fill_config(cls, config: ml_collections.ConfigDict, **model: Any) -> ml_collections.ConfigDict:
        """Adds the ``model`` section (the ImageNet transformer, ``model`` overrides) and the token
        ``data`` section to a :func:`maskjax.config.method_config` config; returns it."""
        config.model = ml_collections.ConfigDict(dict(IMAGENET_MODEL, **model))
        config.model.attention_impl = config_dict.placeholder(str)
        config.model.scan_layers = False
        config.data = image_tokens.token_data_section()
        return config

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """The model section exists and fits; schedules, smoothing and decoding settings are valid."""
        m, own = config.get("model"), config.get(cls.name, {})
        if m is None or "depth" not in m:
            errors.append("method 'maskgit' needs its model and data sections: call "
                          "MaskGIT.fill_config(method_config('maskgit'))")
            return
        if m.hidden % m.heads:
            errors.append(f"model.hidden {m.hidden} is not divisible by model.heads {m.heads}")
        for field in ("dropout", "attention_dropout"):
            if not 0.0 <= m.get(field, 0.0) < 1.0:
                errors.append(f"model.{field} must be in [0, 1), got {m.get(field)}")
        for field in ("mask_schedule", "sample_schedule"):
            try:
                maskgit_schedules.canonical_method(own.get(field, "cosine"))
            except ValueError as e:
                errors.append(f"maskgit.{field}: {e}")
        if not 0.0 <= own.get("label_smoothing", 0.0) < 1.0:
            errors.append(f"maskgit.label_smoothing must be in [0, 1), got {own.get('label_smoothing')}")
        if not isinstance(own.get("sample_steps"), int) or own.get("sample_steps") < 1:
            errors.append(f"maskgit.sample_steps must be an int >= 1, got {own.get('sample_steps')!r}")
        if own.get("choice_temperature", 0.0) < 0:
            errors.append(f"maskgit.choice_temperature must be >= 0, got {own.get('choice_temperature')}")

    # --- sizes and ids ---------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Classes; the class token of label y is ``K + y``."""
        return int(self.config.data.num_classes)

    @property
    def vocab_size(self) -> int:
        """``K + classes + 1``."""
        return self.codebook_size + self.num_classes + 1

    @property
    def mask_id(self) -> int:
        """The mask token: the vocabulary's last id, ``K + classes``."""
        return self.vocab_size - 1

    def class_tokens(self, labels: jax.Array) -> jax.Array:
        """Class-token ids [B, 1] of ``labels`` [B]: ``label + codebook_size`` (inference.py)."""
        return (jnp.asarray(labels, jnp.int32) + self.codebook_size)[:, None]

    # --- model -------------------------------------------------------------------------------------

    def network(self, rngs):
        """The transformer without EMA weights."""
        from maskjax.models.maskgit import MaskGITTransformer

        m = self.config.model
        return MaskGITTransformer(
            self.vocab_size, hidden=m.hidden, depth=m.depth, heads=m.heads, intermediate=m.intermediate,
            max_positions=self.num_tokens + 1, dropout=m.dropout, attention_dropout=m.attention_dropout, rngs=rngs,
            dtype=compute_dtype(self.config.get("compute_dtype", "float32")), remat=self.config.get("remat", False),
            attention_impl=m.get("attention_impl", None), scan_layers=bool(m.get("scan_layers", False)))

    def build(self, rngs):
        """:meth:`network`, with EMA copies of its parameters when ``maskgit.ema_decay`` > 0."""
        model = self.network(rngs)
        return attach_ema(model) if self.own.ema_decay else model

    def after_step(self, params, extra, step):
        """Moves the EMA weights towards the updated parameters: ``e + (1 - decay)(p - e)``."""
        if not self.own.ema_decay or EMA_KEY not in extra:
            return extra
        decay = jnp.asarray(self.own.ema_decay, jnp.float32)
        ema = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), extra[EMA_KEY], params)
        return {**extra, EMA_KEY: ema}

    def eval_model(self, model):
        """The model sampling and features use: its EMA weights when there are some."""
        return ema_view(model)

    # --- training ----------------------------------------------------------------------------------

    def masked_inputs(self, tokens: jax.Array, labels: jax.Array, hidden: jax.Array) -> jax.Array:
        """``[class] + tokens`` with the ``hidden`` [B, N] positions replaced by the mask id: [B, 1 + N]."""
        masked = jnp.where(hidden, self.mask_id, tokens.astype(jnp.int32))
        return jnp.concatenate([self.class_tokens(labels), masked], axis=1)

    def codebook_logits(self, model, ids: jax.Array, dropout_keys=None) -> jax.Array:
        """Logits over the codebook at the image positions: [B, N, K] (class position dropped)."""
        return model(ids, dropout_keys=dropout_keys)[:, 1:, :self.codebook_size]

    def loss(self, model, batch, keys, train, step=None):
        """Label-smoothed CE on the masked tokens of MaskGIT's training mask (module docstring)."""
        tokens, labels = batch["tokens"], batch["label"]
        mask_keys, drop_keys = split_example_keys(keys, 2)
        hidden, ratios = maskgit_schedules.training_mask(mask_keys, tokens.shape[1], self.own.mask_schedule)
        logits = self.codebook_logits(model, self.masked_inputs(tokens, labels, hidden),
                                      drop_keys if train else None)
        loss, metrics = masked_token_loss(logits, tokens, hidden, float(self.own.label_smoothing))
        metrics["mask_rate"] = jnp.mean(hidden.astype(jnp.float32))
        return loss, metrics

    def eval_stats(self, model, batch, keys, options):
        """Summed held-out masked-token statistics ``{"nll_sum", "correct", "count"}`` (unsmoothed).

        ``options["rate"]`` hides ``ceil(rate N)`` tokens per example; without it (or None) the
        training distribution (``r ~ U[0, 1)``, gamma) is used.
        """
        from maskjax.masking import rate_mask

        tokens, labels = batch["tokens"], batch["label"]
        rate = options.get("rate") if options else None
        if rate is None:
            hidden, _ = maskgit_schedules.training_mask(keys, tokens.shape[1], self.own.mask_schedule)
        else:
            hidden = rate_mask(keys, tokens.shape[1], jnp.full((tokens.shape[0],), rate, jnp.float32), minimum=1)
        logits = self.codebook_logits(self.eval_model(model), self.masked_inputs(tokens, labels, hidden))
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
        weight = hidden.astype(jnp.float32)
        return {"nll_sum": jnp.sum(nll * weight), "count": jnp.sum(weight),
                "correct": jnp.sum((jnp.argmax(logp, axis=-1) == tokens).astype(jnp.float32) * weight)}

    # --- sampling ----------------------------------------------------------------------------------

    def sample_tokens(self, model, key: jax.Array, labels, *, num_steps: int | None = None,
                      choice_temperature: float | None = None, schedule: str | None = None,
                      start_tokens=None, start_iter: int = 0) -> jax.Array:
        """Class-conditional generation: token grids int32 [B, h, w] for ``labels`` [B].

        The entry point of ``maskjax sample`` for MaskGIT: the official ``parallel_decode.decode``
        on ``[label + K] + tokens`` with the transformer's logits sliced to the codebook, returning
        the last step's ids. Defaults come from the config (``maskgit.sample_steps``,
        ``choice_temperature``, ``sample_schedule``). ``start_tokens`` [B, h, w] (or [B, N]) with
        ``mask_id`` at the positions to generate, plus ``start_iter > 0``, edits images (inference.py:
        2 of 12); without it every token is generated. ``key`` is one PRNG key for the batch (the
        official draws). One compiled program per model structure, schedule and batch shape is
        cached (steps, start and temperature are traced); pass ``labels`` / ``start_tokens`` sharded
        over the batch to decode sharded.
        """
        model = self.eval_model(model)
        labels = jnp.asarray(labels, jnp.int32).reshape(-1)
        b = labels.shape[0]
        if start_tokens is None:
            tokens = jnp.full((b, self.num_tokens), self.mask_id, jnp.int32)
        else:
            tokens = jnp.asarray(start_tokens, jnp.int32).reshape(b, self.num_tokens)
        inputs = jnp.concatenate([self.class_tokens(labels), tokens], axis=1)
        num_steps = int(num_steps or self.own.sample_steps)
        if not 0 <= int(start_iter) <= num_steps:
            raise ValueError(f"start_iter must be in [0, num_steps={num_steps}], got {start_iter}")
        temperature = float(self.own.choice_temperature if choice_temperature is None else choice_temperature)
        graphdef, state = nnx.split(model)
        decode = _jitted_decode(graphdef, self.codebook_size, self.mask_id,
                                maskgit_schedules.canonical_method(schedule or self.own.sample_schedule))
        out = decode(state, key, inputs, jnp.int32(num_steps), jnp.int32(start_iter), jnp.float32(temperature))
        return out[:, 1:].reshape(b, self.grid_size, self.grid_size)

    def sample(self, model, key, num):
        """``num`` token grids int32 [num, h, w] of labels ``0, 1, ..., classes - 1, 0, ...`` (the
        contract's ``sample``); :meth:`sample_tokens` chooses labels and decoding settings."""
        return self.sample_tokens(model, key, jnp.arange(num, dtype=jnp.int32) % self.num_classes)

    # --- representations and cost --------------------------------------------------------------------

    def features(self, model, inputs, pool=None):
        """Mean last hidden state of the image positions [B, D] for clean tokens (MaskGIT is a
        generator; this is a probe's view of it). The class position holds the mask id, so the
        label does not leak into the features."""
        tokens = inputs["tokens"] if isinstance(inputs, dict) else inputs
        tokens = jnp.asarray(tokens, jnp.int32).reshape(tokens.shape[0], -1)
        cls = jnp.full((tokens.shape[0], 1), self.mask_id, jnp.int32)
        hidden = self.eval_model(model).hidden(jnp.concatenate([cls, tokens], axis=1))
        return hidden[:, 1:].mean(axis=1).astype(jnp.float32)

    def feature_name(self, pool=None) -> str:
        """What :meth:`features` returns."""
        return "mean hidden state of the image tokens"

    def flops(self, global_batch):
        """The transformer on ``1 + N`` positions and the tied MLM head on all of them (full vocabulary)."""
        m = self.config.model
        positions = self.num_tokens + 1
        parts = {"blocks": int(m.depth) * transformer_layer(positions, int(m.hidden), int(m.intermediate)),
                 "mlm_head": matmul(positions, int(m.hidden), int(m.hidden))
                 + matmul(positions, int(m.hidden), self.vocab_size)}
        return scaled(self.name, parts, global_batch, "image token ([class] + h*w per image)", positions)
