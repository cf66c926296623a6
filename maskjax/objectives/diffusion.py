"""Masked-diffusion ELBOs as pure functions of the denoiser's output: MDLM, D3PM, MD4 and GenMD4.

Each loss takes the denoiser's logits (or log-probabilities) at ``z_t``, the clean ``x0``, ``z_t``
and the time-dependent weight, and returns what the original computes, with its normalisation
(specs/methods_text_gen.md sections 11-13). The schedules and their weights live in
:mod:`maskjax.masking.diffusion` (this module may not import it: the two are one layer).

Normalisations, kept distinct on purpose (spec 13):

* MDLM (``diffusion.py::_loss``): a per-token NELBO, averaged over ALL (non-pad) tokens of the
  batch, the unmasked ones contributing 0 through the SUBS parameterisation; nats per token, so
  ``exp(loss)`` is a perplexity bound.
* MD4 / GenMD4 (``md4.py`` / ``genmd4.py``): summed over the positions of each sequence, averaged
  over the batch, plus the reconstruction term, then divided by ``N ln 2``: bits per token.

For the same denoiser, masks and times the two agree up to that factor ``ln 2`` when their
weights agree (e.g. MDLM loglinear with eps = 0 and MD4 linear with eps = 0 both weigh ``1/t``);
``tests/test_diffusion_elbo.py`` checks it, and checks every ELBO against the exact likelihood of
a small Markov chain.

Everything is computed in float32 whatever the logits' dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# MDLM's ``self.neg_infinity``: a finite "-inf" (exp underflows to exactly 0 in float32 and
# 0 * NEG_INF stays finite, where 0 * -inf would be NaN).
NEG_INF = -1e6
LN2 = math.log(2.0)
D3PM_T_MAX = 1.0 - 1e-4   # MDLM's _d3pm_loss clamps t to [0, 1 - 1e-4]


def _log_softmax(logits: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def gather_log_prob(log_probs: jax.Array, x0: jax.Array) -> jax.Array:
    """``log_probs[..., x0]``: [B, L] from [B, L, V] and int [B, L]."""
    return jnp.take_along_axis(log_probs.astype(jnp.float32), x0[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_mean(per_token: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """``sum(per_token * m) / sum(m)`` (MDLM's ``token_nll``); a plain mean without a mask."""
    per_token = per_token.astype(jnp.float32)
    if attention_mask is None:
        return jnp.mean(per_token)
    m = attention_mask.astype(jnp.float32)
    return jnp.sum(per_token * m) / jnp.sum(m)


# ------------------------------------------------------------------------------------------
# MDLM (kuleshov-group/mdlm diffusion.py).


def subs_log_probs(logits: jax.Array, xt: jax.Array, mask_id: int) -> jax.Array:
    """MDLM's SUBS parameterisation (``_subs_parameterization``): log-probs [B, L, V] over the
    full vocabulary, the mask id included.

    * zero masking probabilities: ``logits[..., mask_id] += NEG_INF`` before the log-softmax, so
      the denoiser never predicts the mask token;
    * carry-over unmasking: at an unmasked position of ``xt`` the row is ``NEG_INF`` except 0 at
      ``xt`` itself, so the observed token is copied and the position's loss is exactly 0.
    """
    logits = logits.astype(jnp.float32).at[..., mask_id].add(NEG_INF)
    logp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    carry = jnp.where(jax.nn.one_hot(xt, logits.shape[-1], dtype=bool), 0.0, NEG_INF)
    return jnp.where((xt != mask_id)[..., None], carry, logp)


def d3pm_log_probs(logits: jax.Array, mask_id: int, *, subs_masking: bool = False) -> jax.Array:
    """MDLM's ``_d3pm_parameterization``: a plain log-softmax over V (the mask id included), with
    ``NEG_INF`` added to the mask logit when ``subs_masking``."""
    logits = logits.astype(jnp.float32)
    if subs_masking:
        logits = logits.at[..., mask_id].add(NEG_INF)
    return logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)


def mdlm_token_nll(log_probs: jax.Array, x0: jax.Array, weight: jax.Array) -> jax.Array:
    """MDLM's continuous-time per-token NELBO ``-log p(x0_i | x_t) * dsigma / expm1(sigma)`` [B, L].

    ``weight`` [B] is :func:`maskjax.masking.diffusion.mdlm_loss_weight` at each example's ``t``.
    Nothing masks the unmasked positions here, as in MDLM: with :func:`subs_log_probs` their
    ``log p`` is exactly 0.
    """
    return -gather_log_prob(log_probs, x0) * jnp.asarray(weight, jnp.float32)[:, None]


def d3pm_token_loss(log_probs: jax.Array, x0: jax.Array, xt: jax.Array, t: jax.Array, num_steps: int,
                    mask_id: int) -> jax.Array:
    """MDLM's discrete-time D3PM loss ``_d3pm_loss`` with ``T = num_steps`` steps: [B, L].

    ``t`` [B] on the grid {1/T, ..., 1} (:func:`maskjax.masking.diffusion.discretize_time`),
    ``log_probs`` over V including the mask id (its mass ``p_m`` is the D3PM model's probability
    that x0 is the mask). As MDLM, ``alpha_t = 1 - t`` (which also holds for its loglinear
    schedule, up to the common factor 1 - eps that cancels in the weights), ``t`` is clamped
    to ``1 - 1e-4``, and with ``dt = 1/T``, ``s = t - dt``::

        T * [ dt/t * (log(1 + alpha_t p_m / t) - log p(x0))
              + (1 - dt/t) * (log(1 + alpha_t p_m / t) - log(1 + alpha_s p_m / s)) ]

    at masked positions, 0 elsewhere. With SUBS (``p_m = 0``) it is ``-log p(x0) / t``. One
    departure: at ``s = 0`` (t = 1/T) the second term's coefficient is 0 but its log is 0/0 or
    log(inf) in the original (NaN); it is 0 here, its limit.
    """
    dt = 1.0 / num_steps
    t = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, D3PM_T_MAX)[:, None]
    s = t - dt
    alpha_t, alpha_s = 1.0 - t, 1.0 - s
    log_p_x0 = gather_log_prob(log_probs, x0)
    p_m = jnp.exp(log_probs[..., mask_id].astype(jnp.float32))
    term_1_log_nr = jnp.log(alpha_t * p_m / t + 1.0)
    safe_s = jnp.where(s > 0, s, 1.0)
    term_2_log_dr = jnp.where(s > 0, jnp.log(alpha_s * p_m / safe_s + 1.0), term_1_log_nr)
    loss = (dt / t) * (term_1_log_nr - log_p_x0) + (1.0 - dt / t) * (term_1_log_nr - term_2_log_dr)
    return num_steps * loss * (xt == mask_id)


def mdlm_loss(per_token: jax.Array, attention_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """MDLM's batch loss from a per-token NELBO (:func:`mdlm_token_nll` or :func:`d3pm_token_loss`):
    the mean over all non-pad tokens, in nats per token. Metrics: "nll" (the loss), "bpd"
    (``nll / ln 2``), "perplexity" (``exp(nll)``, an upper bound on the true perplexity)."""
    nll = token_mean(per_token, attention_mask)
    return nll, {"nll": nll, "bpd": nll / LN2, "perplexity": jnp.exp(nll)}


# ------------------------------------------------------------------------------------------
# MD4 (google-deepmind/md4 md4.py::MD4.diffusion_loss / recon_loss).


def masked_log_likelihood(logits: jax.Array, x0: jax.Array, zt: jax.Array, mask_id: int) -> jax.Array:
    """``sum over masked n of log softmax(logits)[n, x0_n]``: [B] (MD4's ``masked_neg_cross_ent``, <= 0).

    ``logits`` [B, L, V] over the data vocabulary (MD4's classifier has no mask output).
    """
    log_p = gather_log_prob(_log_softmax(logits), x0)
    return jnp.sum(jnp.where(zt == mask_id, log_p, 0.0), axis=1)


def md4_diffusion_loss(logits: jax.Array, x0: jax.Array, zt: jax.Array, weight: jax.Array,
                       mask_id: int) -> jax.Array:
    """MD4's per-sequence diffusion loss ``weight * sum_masked log p(x0_n | z_t)`` [B], in nats (>= 0).

    ``weight`` [B] is ``md4_dgamma_times_alpha(t)`` (continuous time) or
    ``md4_discrete_weight(t, T)`` (T steps, ``t`` on the grid); both are <= 0, as MD4's.
    """
    return jnp.asarray(weight, jnp.float32) * masked_log_likelihood(logits, x0, zt, mask_id)


def md4_recon_loss(length: int, vocab_size: int, alpha_0) -> jax.Array:
    """MD4's reconstruction term ``N (1 - alpha_0) log V`` (nats per sequence): a token still masked
    at t = 0 is decoded uniformly."""
    return length * (1.0 - jnp.asarray(alpha_0, jnp.float32)) * math.log(vocab_size)


def md4_loss(logits: jax.Array, x0: jax.Array, zt: jax.Array, weight: jax.Array, *, mask_id: int,
             alpha_0) -> tuple[jax.Array, dict]:
    """MD4's NELBO in bits per token: ``(mean_b L_diff + N (1 - alpha_0) log V) / (N ln 2)``.

    The prior term is 0, as MD4's ``latent_loss`` ("negligible": alpha_1 = eps, not 0). Metrics
    (bits per token, as MD4's ``loss2bpt``): "loss", "loss_diff", "loss_recon"; and "nelbo_nats"
    (nats per sequence).
    """
    length, vocab = logits.shape[1], logits.shape[-1]
    loss_diff = jnp.mean(md4_diffusion_loss(logits, x0, zt, weight, mask_id))
    loss_recon = md4_recon_loss(length, vocab, alpha_0)
    nats = loss_diff + loss_recon
    scale = 1.0 / (length * LN2)
    return nats * scale, {"loss": nats * scale, "loss_diff": loss_diff * scale,
                          "loss_recon": loss_recon * scale, "nelbo_nats": nats}


# ------------------------------------------------------------------------------------------
# GenMD4 (google-deepmind/md4 genmd4.py): per-token schedules alpha_t(v) = 1 - (1 - eps) t^{w_v}.


def genmd4_diffusion_loss(logits: jax.Array, x0: jax.Array, zt: jax.Array, t: jax.Array, power: jax.Array,
                          mask_id: int) -> jax.Array:
    """GenMD4's continuous-time diffusion loss [B] (nats per sequence), differentiable in ``power``.

    Per masked position the integrand over v is ``(log p(x0) + 1) 1[v = x0] - p(v)``, weighted by
    ``alpha'_t(v) / (1 - alpha_t(v)) = -w_v / t`` and summed over v, i.e.
    ``(w_x0 (-log p(x0) - 1) + sum_v w_v p(v)) / t``: the generalised KL between the true and the
    model's unmasking rates. With all ``w_v`` equal it is MD4's ``-w/t * log p(x0)``.
    """
    log_p = _log_softmax(logits)
    one_hot = jax.nn.one_hot(x0, log_p.shape[-1], dtype=jnp.float32)
    log_p_x = jnp.sum(one_hot * log_p, axis=-1, keepdims=True)
    integrand = (log_p_x + 1.0) * one_hot - jnp.exp(log_p)
    masked = jnp.sum(jnp.where((zt == mask_id)[..., None], integrand, 0.0), axis=1)   # [B, V]
    dgamma = -power / jnp.asarray(t, jnp.float32)[:, None]
    return jnp.sum(dgamma * masked, axis=-1)


def genmd4_recon_loss(x0: jax.Array, power: jax.Array, *, t1: float, eps: float) -> jax.Array:
    """GenMD4's reconstruction term at ``t1`` [B]:
    ``sum_n -(1 - eps) t1^{w_x} (w_x log t1 - logsumexp_v w_v log t1)``.

    A position still masked at t1 (probability ``(1 - eps) t1^{w_x}``) is decoded with
    ``p(v) = softmax_v(w_v log t1)``, proportional to each token's own masking probability.
    """
    log_t1 = math.log(t1)
    w_x = power[x0]
    logits = power * log_t1
    per_token = -(1.0 - eps) * jnp.exp(w_x * log_t1) * (w_x * log_t1 - jax.nn.logsumexp(logits))
    return jnp.sum(per_token, axis=1)


def genmd4_log_q(x0: jax.Array, zt: jax.Array, t: jax.Array, power: jax.Array, *, eps: float,
                 mask_id: int) -> jax.Array:
    """``log q(z_t | x0)`` [B] under the per-token schedule (the REINFORCE score's log-density)."""
    w_x = power[x0]
    t = jnp.asarray(t, jnp.float32)[:, None]
    log_q_mask = math.log(1.0 - eps) + w_x * jnp.log(t)   # log(1 - alpha_t(x)), written stably
    log_q_unmask = jnp.log(1.0 - (1.0 - eps) * t ** w_x)
    return jnp.sum(jnp.where(zt == mask_id, log_q_mask, log_q_unmask), axis=1)


def genmd4_loss(logits_1: jax.Array, logits_2: jax.Array, x0: jax.Array, zt_1: jax.Array, zt_2: jax.Array,
                t: jax.Array, power: jax.Array, *, mask_id: int, t1: float, eps: float
                ) -> tuple[jax.Array, dict]:
    """GenMD4's training loss (bits per token) from two independent draws ``z_t^1, z_t^2`` at the same ``t``.

    ``L = 0.5 (L1 + L2)`` estimates the diffusion NELBO; the schedule's exponents get their
    gradient through the sampling distribution by REINFORCE leave-one-out (RLOO), each draw's
    baseline being the other's loss: ``0.5 sg(L1 - L2) (log q(z1) - log q(z2))``, whose value is
    not 0 but whose gradient, in expectation, is ``grad E[L] - E[grad L]``. The returned loss is
    ``mean(L + rloo) + mean(recon)`` (the surrogate to differentiate); metric "nelbo" (bits per
    token) is ``mean(L) + mean(recon)``, the bound to report; "power_min/avg/max" as GenMD4's.
    """
    length = x0.shape[1]
    loss_1 = genmd4_diffusion_loss(logits_1, x0, zt_1, t, power, mask_id)
    loss_2 = genmd4_diffusion_loss(logits_2, x0, zt_2, t, power, mask_id)
    log_q_1 = genmd4_log_q(x0, zt_1, t, power, eps=eps, mask_id=mask_id)
    log_q_2 = genmd4_log_q(x0, zt_2, t, power, eps=eps, mask_id=mask_id)
    rloo = 0.5 * jax.lax.stop_gradient(loss_1 - loss_2) * (log_q_1 - log_q_2)
    loss_diff = 0.5 * (loss_1 + loss_2)
    loss_recon = jnp.mean(genmd4_recon_loss(x0, power, t1=t1, eps=eps))
    scale = 1.0 / (length * LN2)
    surrogate = (jnp.mean(loss_diff + rloo) + loss_recon) * scale
    nelbo = (jnp.mean(loss_diff) + loss_recon) * scale
    return surrogate, {"loss": surrogate, "nelbo": nelbo, "loss_diff": jnp.mean(loss_diff) * scale,
                       "loss_recon": loss_recon * scale, "power_min": jnp.min(power),
                       "power_avg": jnp.mean(power), "power_max": jnp.max(power)}
