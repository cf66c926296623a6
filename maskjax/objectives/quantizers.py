"""Vector quantizers of image tokenizers: MaskGIT's nearest-neighbour VQ, an EMA-codebook VQ and FSQ.

jax/numpy only. Latents are ``[..., D]``; token ids are int32 ``[...]``.

**VQ** (google-research/maskgit ``nets/vqgan_tokenizer.py::VectorQuantizer`` and
``libml/losses.py``, specs/methods_text_gen.md 9e): squared Euclidean distances
``|z|^2 - 2 z.e + |e|^2``, the nearest code, and (training) the losses

- ``e_latent_loss = commitment_cost * mean((sg(q) - z)^2)`` (0.25 in the official config),
- ``q_latent_loss = mean((q - sg(z))^2)`` (moves the codebook),
- ``entropy_loss = ratio * (sample_entropy - avg_entropy)`` of ``softmax(-distances / T)`` (ratio
  0.1, T 0.01, "softmax" type; computed as ``losses.entropy_loss``, including its
  ``log_softmax(affinity + 1e-5)`` and ``log(avg + 1e-5)``),

and the straight-through output ``z + sg(q - z)``: the forward value is the code, the gradient
with respect to ``z`` is the identity.

**EMA VQ** (van den Oord et al. 2017, appendix A.1; DeepMind's Sonnet ``VectorQuantizerEMA``):
the codebook is not a parameter but follows exponential moving averages of the per-code counts
``N`` and sums ``m`` of the latents assigned to it, ``e_i = m_i / N_i``, with the counts
Laplace-smoothed ``N_i <- (N_i + eps) / (n + K eps) * n`` (``n = sum N``, eps 1e-5). The
averages are zero-debiased as Sonnet's ``assign_moving_average`` (TF1's default
``zero_debias=True``): a hidden sum starts at zero and the average is ``hidden / (1 - decay^t)``
after ``t`` updates. Deviation, on purpose: a code never assigned since the start keeps its
initial vector, where Sonnet's formula sets it to ``0 / smoothed count = 0`` at the first update
(every unused code would collapse onto the same zero vector). Only the commitment loss trains
the encoder (plus the optional entropy loss, as for VQ).

**FSQ** (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple", appendix A.1):
each of the ``d = len(levels)`` channels is bounded ``tanh(z + shift) * half_l - offset`` with
``half_l = (L - 1)(1 - 1e-3) / 2``, ``offset = 0.5`` for even ``L`` (else 0), ``shift =
tan(offset / half_l)`` (the paper's code; ``atanh`` would centre exactly, the two differ below
1e-3), rounded with a straight-through gradient and divided by ``L // 2``: values on the grid
``(k - L // 2) / (L // 2)``, ``k = 0 .. L-1``, inside [-1, 1]. The implicit codebook has
``prod(levels)`` codes; index ``sum_j k_j * prod(levels[:j])``.

**Metrics**: codebook usage = the fraction of the ``K`` codes used at least once in the batch;
perplexity = ``exp(H(p))`` of the batch's code frequencies (exact, ``0 log 0 = 0``; the official
``get_perplexity`` adds 1e-5 inside the log).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ENTROPY_EPS = 1e-5     # losses.entropy_loss: log_softmax(affinity + 1e-5), log(avg_probs + 1e-5)
LAPLACE_EPS = 1e-5     # Sonnet VectorQuantizerEMA's epsilon
FSQ_EPS = 1e-3         # the FSQ paper's bound margin

sg = jax.lax.stop_gradient


class Quantized(NamedTuple):
    """A quantizer's output: the straight-through latents, ids, scalar losses and (EMA) batch statistics."""

    quantized: jax.Array          # [..., D]: the code vectors in the forward pass, identity gradient to z
    ids: jax.Array                # int32 [...]
    losses: dict                  # scalar terms; "quantizer_loss" is their sum
    stats: dict | None = None     # EMA quantizer: per-token code frequencies and latent sums


# --- nearest-neighbour VQ ------------------------------------------------------------------------

def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """``|z|^2 - 2 z e^T + |e|^2``: [N, D] x [K, D] -> [N, K] (``losses.squared_euclidean_distance``)."""
    a2 = jnp.sum(z ** 2, axis=1, keepdims=True)
    b2 = jnp.sum(codebook.T ** 2, axis=0, keepdims=True)
    return a2 - 2.0 * (z @ codebook.T) + b2


def nearest_codes(z: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(ids int32 [...], distances [..., K])`` of latents ``z`` [..., D] to the codebook [K, D]."""
    flat = z.reshape(-1, z.shape[-1])
    distances = squared_distances(flat, codebook.astype(flat.dtype)).reshape(z.shape[:-1] + (codebook.shape[0],))
    return jnp.argmin(distances, axis=-1).astype(jnp.int32), distances


def entropy_loss(affinity: jax.Array, loss_type: str = "softmax", temperature: float = 1.0) -> jax.Array:
    """``losses.entropy_loss``: mean per-sample entropy minus the entropy of the mean code distribution.

    ``affinity`` [..., K] (the official call passes ``-distances``); minimising it makes each
    latent confident about one code while the batch spreads over many.
    """
    flat = affinity.reshape(-1, affinity.shape[-1]).astype(jnp.float32) / temperature
    probs = jax.nn.softmax(flat, axis=-1)
    log_probs = jax.nn.log_softmax(flat + ENTROPY_EPS, axis=-1)
    if loss_type == "softmax":
        target = probs
    elif loss_type == "argmax":
        onehot = jax.nn.one_hot(jnp.argmax(flat, axis=-1), flat.shape[-1], dtype=flat.dtype)
        target = probs - sg(probs - onehot)
    else:
        raise ValueError(f"entropy loss type {loss_type!r}: use softmax or argmax")
    avg = jnp.mean(target, axis=0)
    avg_entropy = -jnp.sum(avg * jnp.log(avg + ENTROPY_EPS))
    sample_entropy = -jnp.mean(jnp.sum(target * log_probs, axis=-1))
    return sample_entropy - avg_entropy


def _entropy_term(distances, ratio, loss_type, temperature) -> jax.Array:
    if not ratio:
        return jnp.zeros((), jnp.float32)
    return entropy_loss(-distances, loss_type, temperature) * ratio


def vq_quantize(z: jax.Array, codebook: jax.Array, *, commitment_cost: float = 0.25, entropy_loss_ratio: float = 0.0,
                entropy_temperature: float = 0.01, entropy_loss_type: str = "softmax") -> Quantized:
    """MaskGIT's ``VectorQuantizer`` in training mode (module docstring); ``codebook`` is a parameter."""
    ids, distances = nearest_codes(z, codebook)
    q = jnp.take(codebook, ids, axis=0).astype(z.dtype)
    e_latent = (jnp.mean((sg(q) - z) ** 2) * commitment_cost).astype(jnp.float32)
    q_latent = jnp.mean((q - sg(z)) ** 2).astype(jnp.float32)
    entropy = _entropy_term(distances, entropy_loss_ratio, entropy_loss_type, entropy_temperature)
    losses = {"quantizer_loss": e_latent + q_latent + entropy, "e_latent_loss": e_latent,
              "q_latent_loss": q_latent, "entropy_loss": entropy}
    return Quantized(straight_through(z, q), ids, losses)


def straight_through(z: jax.Array, q: jax.Array) -> jax.Array:
    """``z + sg(q - z)``: the value of ``q``, the gradient of the identity with respect to ``z``."""
    return z + sg(q - z)


# --- EMA-codebook VQ ------------------------------------------------------------------------------

def ema_vq_quantize(z: jax.Array, codebook: jax.Array, *, commitment_cost: float = 0.25,
                    entropy_loss_ratio: float = 0.0, entropy_temperature: float = 0.01,
                    entropy_loss_type: str = "softmax") -> Quantized:
    """EMA VQ in training mode: nearest code of a non-gradient codebook, commitment (+ entropy) loss.

    ``stats``: ``{"frequency": [K] share of this batch's latents assigned to each code,
    "mean_sum": [K, D] sum of the latents assigned to each code / number of latents}``. Shares
    (not raw counts) so that the mean over equal micro-batches is the whole batch's value;
    :func:`ema_codebook_update` multiplies them back by the batch's latent count.
    """
    codebook = sg(codebook)
    ids, distances = nearest_codes(z, codebook)
    q = jnp.take(codebook, ids, axis=0).astype(z.dtype)
    e_latent = (jnp.mean((sg(q) - z) ** 2) * commitment_cost).astype(jnp.float32)
    entropy = _entropy_term(distances, entropy_loss_ratio, entropy_loss_type, entropy_temperature)
    flat = sg(z).reshape(-1, z.shape[-1]).astype(jnp.float32)
    onehot = jax.nn.one_hot(ids.reshape(-1), codebook.shape[0], dtype=jnp.float32)
    n = flat.shape[0]
    stats = {"frequency": onehot.sum(axis=0) / n, "mean_sum": (onehot.T @ flat) / n}
    losses = {"quantizer_loss": e_latent + entropy, "e_latent_loss": e_latent, "entropy_loss": entropy}
    return Quantized(straight_through(z, q), ids, losses, stats)


def ema_codebook_update(state: dict, frequency: jax.Array, mean_sum: jax.Array, latents: int, decay: float,
                        eps: float = LAPLACE_EPS) -> dict:
    """One EMA codebook update (module docstring) from a batch of ``latents`` latent vectors.

    ``state``: ``{"ema_codebook" [K, D], "ema_count" [K], "ema_sum" [K, D], "ema_updates" []}``
    (the hidden, not yet debiased, averages); ``frequency``/``mean_sum`` as
    :func:`ema_vq_quantize` returns them. Returns the new state (same keys).
    """
    counts = frequency.astype(jnp.float32) * latents
    sums = mean_sum.astype(jnp.float32) * latents
    hidden_count = decay * state["ema_count"] + (1.0 - decay) * counts
    hidden_sum = decay * state["ema_sum"] + (1.0 - decay) * sums
    updates = state["ema_updates"] + 1
    debias = 1.0 - jnp.power(jnp.float32(decay), updates.astype(jnp.float32))
    count, total = hidden_count / debias, hidden_sum / debias
    n = jnp.sum(count)
    k = count.shape[0]
    smoothed = (count + eps) / (n + k * eps) * n
    codebook = jnp.where((hidden_count > 0)[:, None], total / smoothed[:, None], state["ema_codebook"])
    return {"ema_codebook": codebook.astype(state["ema_codebook"].dtype), "ema_count": hidden_count,
            "ema_sum": hidden_sum, "ema_updates": updates}


# --- FSQ ------------------------------------------------------------------------------------------

def round_ste(x: jax.Array) -> jax.Array:
    """``round(x)`` forward, identity gradient."""
    return x + sg(jnp.round(x) - x)


def _levels(levels: Sequence[int]) -> np.ndarray:
    arr = np.asarray(levels, np.int64)
    if arr.ndim != 1 or arr.size == 0 or np.any(arr < 2):
        raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {list(levels)}")
    return arr


def fsq_codebook_size(levels: Sequence[int]) -> int:
    """``prod(levels)``: the implicit codebook's size."""
    return int(np.prod(_levels(levels)))


def fsq_bound(z: jax.Array, levels: Sequence[int], eps: float = FSQ_EPS) -> jax.Array:
    """The paper's ``bound``: ``tanh(z + shift) * half_l - offset`` per channel (module docstring)."""
    lv = _levels(levels).astype(np.float64)
    half_l = (lv - 1) * (1 - eps) / 2
    offset = np.where(lv % 2 == 1, 0.0, 0.5)
    shift = np.tan(offset / half_l)
    f = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return jnp.tanh(z.astype(jnp.float32) + f(shift)) * f(half_l) - f(offset)


def fsq_quantize(z: jax.Array, levels: Sequence[int]) -> Quantized:
    """FSQ of ``z`` [..., len(levels)]: straight-through rounding of the bound latents, scaled to [-1, 1].

    No auxiliary loss (the paper's point): ``losses`` holds a zero ``quantizer_loss``.
    """
    if z.shape[-1] != len(levels):
        raise ValueError(f"FSQ with {len(levels)} levels needs {len(levels)} channels, got {z.shape[-1]}")
    half_width = jnp.asarray(_levels(levels) // 2, jnp.float32)
    codes = round_ste(fsq_bound(z, levels)) / half_width
    ids = fsq_codes_to_indices(sg(codes), levels)
    return Quantized(codes.astype(z.dtype), ids, {"quantizer_loss": jnp.zeros((), jnp.float32)})


def fsq_codes_to_indices(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Grid codes [..., d] in [-1, 1] -> int32 ids ``sum_j k_j prod(levels[:j])``, ``k_j = code_j * (L_j // 2) + L_j // 2``."""
    lv = _levels(levels)
    half_width = jnp.asarray(lv // 2, jnp.float32)
    digits = jnp.round(codes.astype(jnp.float32) * half_width + half_width).astype(jnp.int32)
    basis = jnp.asarray(np.concatenate([[1], np.cumprod(lv[:-1])]), jnp.int32)
    return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)


def fsq_indices_to_codes(ids: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Inverse of :func:`fsq_codes_to_indices`: int ids [...] -> grid codes [..., d] (float32)."""
    lv = _levels(levels)
    basis = jnp.asarray(np.concatenate([[1], np.cumprod(lv[:-1])]), jnp.int32)
    digits = (jnp.asarray(ids, jnp.int32)[..., None] // basis) % jnp.asarray(lv, jnp.int32)
    half_width = jnp.asarray(lv // 2, jnp.float32)
    return (digits.astype(jnp.float32) - half_width) / half_width


# --- metrics --------------------------------------------------------------------------------------

def code_counts(ids: jax.Array, codebook_size: int) -> jax.Array:
    """How many times each of the ``codebook_size`` codes occurs in ``ids`` (float32 [K])."""
    return jnp.zeros((codebook_size,), jnp.float32).at[jnp.asarray(ids).reshape(-1)].add(1.0)


def codebook_usage(ids: jax.Array, codebook_size: int) -> jax.Array:
    """The fraction of the ``codebook_size`` codes that occur at least once in ``ids``."""
    return jnp.mean((code_counts(ids, codebook_size) > 0).astype(jnp.float32))


def perplexity(ids: jax.Array, codebook_size: int) -> jax.Array:
    """``exp(-sum p log p)`` of the code frequencies in ``ids`` (``0 log 0 = 0``): from 1 (one code) to K."""
    counts = code_counts(ids, codebook_size)
    p = counts / jnp.sum(counts)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    return jnp.exp(-jnp.sum(plogp))
