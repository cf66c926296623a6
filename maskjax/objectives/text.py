"""Text pre-training objectives as pure functions: MLM, NSP, SpanBERT SBO, ELECTRA RTD and sampling.

Everything accumulates in float32 whatever the logits' dtype. Normalisations are the originals'
(specs/methods_text_gen.md):

- BERT MLM ``run_pretraining.py``: ``sum(w * NLL) / (sum(w) + 1e-5)``; ELECTRA's generator uses
  the same formula with 1e-6.
- SpanBERT ``spanbert_loss.py``: ``MLM_CE_sum / n_masked + SBO_CE_sum / (n_pair_targets + 1)``.
- ELECTRA discriminator: ``sum(mask * BCE) / (sum(mask) + 1e-6)`` over all ``input_mask`` tokens.
- NSP: mean cross-entropy over the batch.

Hugging Face's losses are plain means over the counted items (no epsilon), which differ from these
by a relative ``eps / count`` (about 1e-7 for 100 masked tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BERT_MLM_EPS = 1e-5
ELECTRA_EPS = 1e-6


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def token_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-item negative log-likelihood ``logsumexp(logits) - logits[label]`` in float32.

    Labels outside [0, V) (e.g. HF's -100 padding) are clipped; give them weight 0.
    """
    logits = logits.astype(jnp.float32)
    labels = jnp.clip(labels, 0, logits.shape[-1] - 1).astype(jnp.int32)
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def _weighted_ce(logits, labels, weights):
    weights = weights.astype(jnp.float32)
    nll = token_nll(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    total = jnp.sum(weights)
    return jnp.sum(weights * nll), total, _safe_div(jnp.sum(weights * correct), total)


def mlm_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array, *,
             eps: float = BERT_MLM_EPS) -> tuple[jax.Array, dict]:
    """BERT's masked-LM loss ``sum(w * NLL) / (sum(w) + eps)``.

    ``logits`` [B, P, V] at the prediction positions, ``labels`` [B, P] original ids, ``weights``
    [B, P] (1 real prediction, 0 padding). Metrics: "accuracy" (argmax over weighted predictions),
    "count" (sum of weights), "nll_sum" (the un-normalised numerator).
    """
    nll_sum, count, acc = _weighted_ce(logits, labels, weights)
    return nll_sum / (count + eps), {"accuracy": acc, "count": count, "nll_sum": nll_sum}


def spanbert_mlm_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, dict]:
    """SpanBERT's MLM normalisation ``MLM_CE_sum / n_masked`` (0 when nothing is masked)."""
    nll_sum, count, acc = _weighted_ce(logits, labels, weights)
    return _safe_div(nll_sum, count), {"accuracy": acc, "count": count, "nll_sum": nll_sum}


def sbo_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, dict]:
    """SpanBERT span-boundary loss ``SBO_CE_sum / (n_pair_targets + 1)`` (spec 2b).

    ``logits`` [B, P, V] from :meth:`BertPretrainer.sbo_logits`, ``labels`` [B, P] the span tokens,
    ``weights`` [B, P] with 0 at pad targets (ignored, as SpanBERT's padding index).
    """
    nll_sum, count, acc = _weighted_ce(logits, labels, weights)
    return nll_sum / (count + 1.0), {"accuracy": acc, "count": count, "nll_sum": nll_sum}


def nsp_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Next-sentence loss: mean cross-entropy of ``logits`` [B, 2] against ``labels`` [B] (0 = is next)."""
    nll = token_nll(logits, labels)
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return jnp.mean(nll), {"accuracy": acc}


def sigmoid_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Stable ``sigmoid_cross_entropy_with_logits``: ``max(x, 0) - x * y + log(1 + exp(-|x|))``."""
    x = logits.astype(jnp.float32)
    y = labels.astype(jnp.float32)
    return jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))


def rtd_loss(disc_logits: jax.Array, labels: jax.Array, input_mask: jax.Array, *,
             eps: float = ELECTRA_EPS) -> tuple[jax.Array, dict]:
    """ELECTRA replaced-token-detection loss: sigmoid BCE averaged over ``input_mask`` tokens.

    ``disc_logits`` [B, L], ``labels`` [B, L] (1 = replaced), ``input_mask`` [B, L] (1 = real token,
    [CLS]/[SEP] included). Prediction is ``logit > 0``. Metrics as ELECTRA's eval: "accuracy",
    "precision" (of predicted-replaced), "recall" (of truly replaced), "replaced_fraction", "count".
    """
    m = input_mask.astype(jnp.float32)
    y = labels.astype(jnp.float32)
    loss = jnp.sum(sigmoid_bce(disc_logits, y) * m) / (jnp.sum(m) + eps)
    pred = (disc_logits > 0).astype(jnp.float32)
    right = (pred == y).astype(jnp.float32)
    metrics = {"accuracy": _safe_div(jnp.sum(right * m), jnp.sum(m)),
               "precision": _safe_div(jnp.sum(right * pred * m), jnp.sum(pred * m)),
               "recall": _safe_div(jnp.sum(right * y * m), jnp.sum(y * m)),
               "replaced_fraction": _safe_div(jnp.sum(y * m), jnp.sum(m)), "count": jnp.sum(m)}
    return loss, metrics


def _typed(key: jax.Array) -> jax.Array:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def gumbel_sample(key_or_keys: jax.Array, logits: jax.Array, temperature: float = 1.0, *,
                  disallow: jax.Array | None = None) -> jax.Array:
    """Samples ids from ``softmax(logits / T)`` as ``argmax(logits / T + Gumbel)`` (ELECTRA).

    ``key_or_keys``: one PRNG key, or [B] keys (one per example, so samples do not depend on how
    the batch is split). ``disallow`` [..., V] (bool or 0/1) subtracts 1000 from those logits, as
    ELECTRA's ``disallow_correct``. No gradient flows through the sample. Returns int32 [...].
    """
    keys = _typed(key_or_keys)
    x = jax.lax.stop_gradient(logits).astype(jnp.float32) / temperature
    if disallow is not None:
        x = x - 1000.0 * disallow.astype(jnp.float32)
    if keys.ndim == 0:
        noise = jax.random.gumbel(keys, x.shape, jnp.float32)
    else:
        if keys.shape[0] != x.shape[0]:
            raise ValueError(f"got {keys.shape[0]} keys for a batch of {x.shape[0]} examples")
        noise = jax.vmap(lambda k: jax.random.gumbel(k, x.shape[1:], jnp.float32))(keys)
    return jnp.argmax(x + noise, axis=-1).astype(jnp.int32)


def electra_corrupt(input_ids: jax.Array, positions: jax.Array, sampled: jax.Array,
                    weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Scatters generator samples into the original ids; returns ``(corrupt_ids, labels)``.

    ``input_ids`` [B, L] are the ORIGINAL (unmasked) ids (ELECTRA unmasks before corrupting),
    ``positions``/``sampled`` [B, P] the prediction positions and sampled ids, ``weights`` [B, P]
    (0 = padding prediction, not scattered). As ELECTRA's ``scatter_update``: updates to position
    0 ([CLS]) are ignored, and a position drawn several times (ELECTRA samples positions with
    replacement) receives the floor of the mean of its samples. ``labels`` is 1 where the token
    changed: a sample equal to the original counts as real (0).
    """
    b, _ = input_ids.shape
    valid = jnp.ones(positions.shape, bool) if weights is None else weights > 0
    pos = jnp.where(valid, positions, 0).astype(jnp.int32)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], pos.shape)
    counts = jnp.zeros(input_ids.shape, jnp.int32).at[rows, pos].add(valid.astype(jnp.int32))
    sums = jnp.zeros(input_ids.shape, jnp.int32).at[rows, pos].add(jnp.where(valid, sampled, 0).astype(jnp.int32))
    counts = counts.at[:, 0].set(0)
    updated = counts > 0
    corrupt = jnp.where(updated, sums // jnp.maximum(counts, 1), input_ids).astype(input_ids.dtype)
    labels = (updated & (corrupt != input_ids)).astype(jnp.int32)
    return corrupt, labels
