"""Masked (absorbing-state) diffusion: noise schedules, time sampling, the forward process and samplers.

MDLM (kuleshov-group/mdlm), MD4 and GenMD4 (google-deepmind/md4) as pure ``jnp`` functions
(specs/methods_text_gen.md sections 11-13). Every schedule is described by ``alpha_t``, the
probability that a token is still unmasked at time ``t`` in [0, 1] (t = 0 clean, t = 1 all
masked), and by the weight its continuous-time NELBO puts on ``-log p(x0 | x_t)`` at a masked
position, ``-alpha'_t / (1 - alpha_t)``. The three codebases write that weight differently and we
keep each one's form and sign, because the losses in :mod:`maskjax.objectives.diffusion` multiply
by them exactly as the originals do:

* MDLM: ``sigma(t)`` with ``alpha_t = exp(-sigma)`` and weight ``dsigma / expm1(sigma)`` (>= 0);
* MD4: ``alpha_t = (1 - 2 eps) * alpha~(t) + eps`` and ``dgamma_times_alpha = alpha' / (1 - alpha)``
  (<= 0; its loss multiplies by the (<= 0) masked log-likelihood);
* GenMD4: one exponent per vocabulary token, ``alpha_t(v) = 1 - (1 - eps) t^{w_v}`` (no eps at
  t = 0; the time is rescaled to [t1, 1] instead), ``dgamma_times_alpha = -w_v / t``.

The masking itself is Bernoulli per token (each token hidden independently with probability
``1 - alpha_t``), which is what the diffusion ELBOs assume. It is deliberately a different function
from the count-based masks of MaskGIT / MAGE (exactly a rounded count hidden,
:func:`count_hidden`, :func:`maskjax.masking.rate_mask`): the spec's section 13 asks to keep them
apart, and an ELBO evaluated on count-based masks is not the ELBO.

Masks take ``keys``, one typed PRNG key per example, so an example's mask does not depend on the
batch it lands in. Time sampling takes one key for the whole batch on purpose: the antithetic /
low-discrepancy samplers couple the examples of a batch, as in both codebases.

The reverse process is here too, for any denoiser passed in as a function: MD4's ancestral sampler
(MDLM's ``ddpm`` sampler on a uniform grid) and MaskGIT's confidence decoding (spec 9d).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from maskjax.masking.rates import mask_from_counts
from maskjax.masking.text import _per_example_keys

MDLM_SCHEDULES = ("loglinear", "geometric", "linear", "cosine", "cosinesqr")
MDLM_EPS = 1e-3            # LogLinearNoise / CosineNoise / CosineSqrNoise default eps
MDLM_SAMPLING_EPS = 1e-3   # training.sampling_eps: t is drawn in [1e-3, 1]
# Defaults of the two sigma-range schedules: GeometricNoise's constructor, and
# configs/noise/linear.yaml for Linear (its constructor says 0 / 10, the config overrides it).
MDLM_SIGMA_RANGE = {"geometric": (1e-3, 1.0), "linear": (1e-3, 7.0)}
MD4_EPS = 1e-4
GENMD4_EPS = 1e-4
GENMD4_T1 = 1e-3


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


# ------------------------------------------------------------------------------------------
# MDLM schedules (noise_schedule.py): total noise sigma(t) and its rate dsigma/dt.


def mdlm_noise(t, kind: str = "loglinear", *, eps: float = MDLM_EPS,
               sigma_min: float | None = None, sigma_max: float | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """MDLM's ``(sigma(t), dsigma/dt)`` for ``kind`` in :data:`MDLM_SCHEDULES`; ``alpha_t = exp(-sigma)``.

    * ``loglinear`` (default): ``sigma = -log1p(-(1 - eps) t)``, ``dsigma = (1 - eps) / (1 - (1 - eps) t)``,
      so the mask probability is ``(1 - eps) t``;
    * ``cosine``: ``sigma = -log(eps + (1 - eps) cos(pi t / 2))``;
    * ``cosinesqr``: ``sigma = -log(eps + (1 - eps) cos^2(pi t / 2))``;
    * ``geometric``: ``sigma = sigma_min^(1 - t) sigma_max^t``;
    * ``linear``: ``sigma = sigma_min + t (sigma_max - sigma_min)``.

    ``eps`` is used by loglinear/cosine/cosinesqr, ``sigma_min``/``sigma_max`` by geometric/linear
    (defaults :data:`MDLM_SIGMA_RANGE`). The last two never mask everything (alpha_1 = exp(-sigma_max)).
    """
    if kind not in MDLM_SCHEDULES:
        raise ValueError(f"unknown MDLM noise schedule {kind!r}; expected one of {MDLM_SCHEDULES}")
    t = _f32(t)
    if kind == "loglinear":
        return -jnp.log1p(-(1.0 - eps) * t), (1.0 - eps) / (1.0 - (1.0 - eps) * t)
    if kind in ("cosine", "cosinesqr"):
        half = 0.5 * math.pi * t
        if kind == "cosine":
            cos, sin = jnp.cos(half), jnp.sin(half)
        else:  # d/dt cos^2(pi t / 2) = -(pi / 2) sin(pi t)
            cos, sin = jnp.cos(half) ** 2, jnp.sin(math.pi * t)
        sigma = -jnp.log(eps + (1.0 - eps) * cos)
        return sigma, 0.5 * math.pi * (1.0 - eps) * sin / ((1.0 - eps) * cos + eps)
    lo, hi = MDLM_SIGMA_RANGE[kind]
    lo = lo if sigma_min is None else sigma_min
    hi = hi if sigma_max is None else sigma_max
    if kind == "geometric":
        sigma = lo ** (1.0 - t) * hi ** t
        return sigma, sigma * (math.log(hi) - math.log(lo))
    return lo + t * (hi - lo), jnp.full_like(t, hi - lo)


def mdlm_alpha(t, kind: str = "loglinear", **kwargs) -> jax.Array:
    """Keep-probability ``alpha_t = exp(-sigma(t))`` of an MDLM schedule (kwargs: :func:`mdlm_noise`)."""
    return jnp.exp(-mdlm_noise(t, kind, **kwargs)[0])


def mdlm_mask_prob(t, kind: str = "loglinear", **kwargs) -> jax.Array:
    """MDLM's ``move_chance = 1 - exp(-sigma(t))``: each token's probability to be masked at ``t``."""
    return -jnp.expm1(-mdlm_noise(t, kind, **kwargs)[0])


def mdlm_loss_weight(t, kind: str = "loglinear", **kwargs) -> jax.Array:
    """MDLM's continuous-time NELBO weight ``dsigma / expm1(sigma)`` = ``-alpha'_t / (1 - alpha_t)`` >= 0.

    For loglinear it is ``1 / t`` whatever ``eps`` (spec 11c).
    """
    sigma, dsigma = mdlm_noise(t, kind, **kwargs)
    return dsigma / jnp.expm1(sigma)


# ------------------------------------------------------------------------------------------
# MD4 schedules (md4/models/diffusion/md4.py::MaskingSchedule).


def _md4_kind(kind: str) -> tuple[str, float]:
    if kind in ("linear", "cosine"):
        return kind, 1.0
    if kind.startswith("poly"):
        try:  # the reference parses the exponent the same way: float(kind.replace('poly', ''))
            exponent = float(kind[4:])
        except ValueError:
            exponent = float("nan")
        if exponent > 0:
            return "poly", exponent
    raise ValueError(f"unknown MD4 masking schedule {kind!r}; expected 'linear', 'cosine' or "
                     f"'polyK' with K > 0 (e.g. 'poly2')")


def md4_alpha(t, kind: str = "linear", *, eps: float = MD4_EPS) -> jax.Array:
    """MD4's ``alpha_t = (1 - 2 eps) alpha~(t) + eps``; alpha~ is ``1 - t``, ``1 - cos(pi/2 (1 - t))``
    or ``1 - t^K`` (``kind`` = linear, cosine, polyK). So ``alpha_0 = 1 - eps``, ``alpha_1 = eps``."""
    name, k = _md4_kind(kind)
    t = _f32(t)
    if name == "linear":
        base = 1.0 - t
    elif name == "cosine":
        base = 1.0 - jnp.cos(0.5 * math.pi * (1.0 - t))
    else:
        base = 1.0 - t ** k
    return (1.0 - 2.0 * eps) * base + eps


def md4_dalpha(t, kind: str = "linear", *, eps: float = MD4_EPS) -> jax.Array:
    """``d alpha_t / dt`` of :func:`md4_alpha` (the derivative of alpha~ times ``1 - 2 eps``)."""
    name, k = _md4_kind(kind)
    t = _f32(t)
    if name == "linear":
        base = -jnp.ones_like(t)
    elif name == "cosine":
        base = -0.5 * math.pi * jnp.sin(0.5 * math.pi * (1.0 - t))
    else:
        base = -k * t ** (k - 1.0)
    return (1.0 - 2.0 * eps) * base


def md4_logsnr(t, kind: str = "linear", *, eps: float = MD4_EPS) -> jax.Array:
    """MD4's ``gamma_t = log(alpha_t / (1 - alpha_t))`` (``MaskingSchedule.__call__``)."""
    a = md4_alpha(t, kind, eps=eps)
    return jnp.log(a / (1.0 - a))


def md4_dgamma_times_alpha(t, kind: str = "linear", *, eps: float = MD4_EPS) -> jax.Array:
    """MD4's continuous-time weight ``alpha'_t / (1 - alpha_t)`` (<= 0; ``-1/t`` for linear, eps = 0)."""
    return md4_dalpha(t, kind, eps=eps) / (1.0 - md4_alpha(t, kind, eps=eps))


def md4_discrete_weight(t, num_steps: int, kind: str = "linear", *, eps: float = MD4_EPS) -> jax.Array:
    """MD4's discrete-time weight ``T expm1(gamma_t - gamma_s) alpha_s`` with ``s = t - 1/T`` (<= 0).

    ``t`` must already be on the grid (:func:`discretize_time`). Algebraically it is
    ``T (alpha_t - alpha_s) / (1 - alpha_t)``; the logSNR form is the reference's and also holds
    at eps = 0 (gamma = +-inf gives expm1(-inf) = -1).
    """
    t = _f32(t)
    s = t - 1.0 / num_steps
    return num_steps * jnp.expm1(md4_logsnr(t, kind, eps=eps) - md4_logsnr(s, kind, eps=eps)) * md4_alpha(
        s, kind, eps=eps)


# ------------------------------------------------------------------------------------------
# GenMD4 (md4/models/diffusion/genmd4.py::LearnableVecMaskingSchedule): one exponent per token.


def genmd4_param_init(vocab_size: int, power_init: float = 1.0) -> jax.Array:
    """The raw parameter ``w`` [V] whose softplus is ``power_init`` everywhere (``log(expm1(p))``)."""
    if not power_init > 0:
        raise ValueError(f"power_init must be positive, got {power_init}")
    return jnp.full((vocab_size,), math.log(math.expm1(power_init)), jnp.float32)


def genmd4_power(w: jax.Array) -> jax.Array:
    """The per-token exponents ``softplus(w)`` [V] (positive), differentiable in ``w``."""
    return jax.nn.softplus(_f32(w))


def genmd4_alpha(t, power: jax.Array, *, eps: float = GENMD4_EPS) -> jax.Array:
    """``alpha_t(v) = 1 - (1 - eps) t^{w_v}``: shape ``t.shape + [V]`` (alpha_0 = 1, alpha_1 = eps)."""
    return 1.0 - (1.0 - eps) * _f32(t)[..., None] ** power


def genmd4_dgamma_times_alpha(t, power: jax.Array) -> jax.Array:
    """``alpha'_t(v) / (1 - alpha_t(v)) = -w_v / t`` (the eps cancels): shape ``t.shape + [V]``."""
    return -power / _f32(t)[..., None]


def genmd4_keep_prob(x0: jax.Array, t, power: jax.Array, *, eps: float = GENMD4_EPS) -> jax.Array:
    """Each token's own keep-probability ``alpha_t(x0_n)`` [B, L] for ``t`` [B] (GenMD4 forward_sample)."""
    w_x = power[x0]
    return 1.0 - (1.0 - eps) * _f32(t)[:, None] ** w_x


def genmd4_time(u, t1: float = GENMD4_T1) -> jax.Array:
    """GenMD4's rescaling of a uniform ``u`` in [0, 1) to ``t = (1 - t1) u + t1`` in [t1, 1)."""
    return (1.0 - t1) * _f32(u) + t1


# ------------------------------------------------------------------------------------------
# Time sampling.


def md4_sample_t(key: jax.Array, batch: int, *, antithetic: bool = True) -> jax.Array:
    """MD4's times [B]: ``mod(U + arange(B) / B, 1)`` with one ``U`` per batch (antithetic), else iid.

    Antithetic draws put exactly one time in each ``[i/B, (i+1)/B)``, shifted together, which
    cuts the variance of the batch-mean loss; every single ``t`` is still uniform on [0, 1).
    """
    if not antithetic:
        return jax.random.uniform(key, (batch,), jnp.float32)
    u = jax.random.uniform(key, (), jnp.float32)
    return jnp.mod(u + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)


def mdlm_sample_t(key: jax.Array, batch: int, *, antithetic: bool = True,
                  sampling_eps: float = MDLM_SAMPLING_EPS, shared_offset: bool = False) -> jax.Array:
    """MDLM's ``_sample_t``: ``u_i = (U_i / B + i / B) mod 1``, ``t = (1 - sampling_eps) u + sampling_eps``.

    The code draws ``U = torch.rand(B)``, one uniform per stratum (stratified sampling); the spec's
    section 11a says "one U per batch", which is ``shared_offset=True`` (then the same set of times
    as MD4's). Both give a uniform ``t`` on [sampling_eps, 1) and one time per stratum; the default
    follows the code. ``antithetic=False`` draws iid times.
    """
    if not antithetic:
        u = jax.random.uniform(key, (batch,), jnp.float32)
    else:
        shape = () if shared_offset else (batch,)
        jitter = jax.random.uniform(key, shape, jnp.float32)
        u = jnp.mod(jitter / batch + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
    return (1.0 - sampling_eps) * u + sampling_eps


def discretize_time(t, num_steps: int) -> jax.Array:
    """Rounds ``t`` in [0, 1) up to the grid {1/T, ..., 1}: ``(floor(t T) + 1) / T`` (MD4, MDLM T > 0)."""
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    return (jnp.floor(_f32(t) * num_steps) + 1.0) / num_steps


# ------------------------------------------------------------------------------------------
# The forward process.


def bernoulli_hidden(keys: jax.Array, keep_prob: jax.Array, length: int) -> jax.Array:
    """Hides each token independently with probability ``1 - keep_prob``: bool [B, L] (True = masked).

    ``keep_prob`` is ``alpha_t`` per example [B] (MDLM, MD4) or per token [B, L] (GenMD4).
    """
    keep_prob = _f32(keep_prob)
    keys = _per_example_keys(keys, keep_prob.shape[0])
    keep_prob = jnp.broadcast_to(keep_prob.reshape(keep_prob.shape[0], -1), (keep_prob.shape[0], length))
    # u < alpha keeps the token: P(keep) = alpha exactly (as jax.random.bernoulli, which MD4 uses).
    u = jax.vmap(lambda k: jax.random.uniform(k, (length,), jnp.float32))(keys)
    return ~(u < keep_prob)


def absorb(x0: jax.Array, hidden: jax.Array, mask_id: int) -> jax.Array:
    """``z_t``: ``x0`` with the hidden positions replaced by ``mask_id`` (the absorbing state)."""
    return jnp.where(hidden, jnp.asarray(mask_id, x0.dtype), x0)


def forward_sample(keys: jax.Array, x0: jax.Array, keep_prob: jax.Array, mask_id: int
                   ) -> tuple[jax.Array, jax.Array]:
    """Draws ``z_t ~ q(z_t | x0)`` by Bernoulli masking; returns ``(z_t, hidden)`` both [B, L]."""
    hidden = bernoulli_hidden(keys, keep_prob, x0.shape[1])
    return absorb(x0, hidden, mask_id), hidden


def count_hidden(keys: jax.Array, length: int, mask_prob: jax.Array) -> jax.Array:
    """Count-based masking: exactly ``round(length * mask_prob)`` positions per example, uniformly.

    ``round`` is ``jnp.round`` (half to even) in float32. This is NOT the diffusion forward
    process (see the module docstring); it is here so the two can be compared and never mixed up.
    """
    mask_prob = _f32(mask_prob)
    keys = _per_example_keys(keys, mask_prob.shape[0])
    counts = jnp.clip(jnp.round(mask_prob * length), 0, length).astype(jnp.int32)
    noise = jax.vmap(lambda k: jax.random.uniform(k, (length,), jnp.float32))(keys)
    return mask_from_counts(noise, counts)


# ------------------------------------------------------------------------------------------
# Samplers: the reverse process, given any denoiser ``denoiser(z, t) -> logits [B, L, V]``.
# The loops are lax.fori_loop, so ``num_steps`` may be a Python int or a traced scalar.


def md4_sampling_grid(i, num_steps, grid: str = "cosine") -> tuple[jax.Array, jax.Array]:
    """MD4's ``get_sampling_grid``: step ``i`` (0-based) goes from ``t = (T - i) / T`` to ``s = t - 1/T``;
    ``grid="cosine"`` maps both through ``cos(pi/2 (1 - t))`` (MD4's default), ``"uniform"`` keeps them."""
    if grid not in ("cosine", "uniform"):
        raise ValueError(f"grid must be 'cosine' or 'uniform', got {grid!r}")
    t = (_f32(num_steps) - _f32(i)) / _f32(num_steps)
    s = t - 1.0 / _f32(num_steps)
    if grid == "cosine":
        t, s = jnp.cos(0.5 * math.pi * (1.0 - t)), jnp.cos(0.5 * math.pi * (1.0 - s))
    return s, t


def ancestral_step(keys: jax.Array, zt: jax.Array, logits: jax.Array, alpha_s, alpha_t,
                   mask_id: int) -> jax.Array:
    """One MD4 ``ancestral`` step z_t -> z_s: each masked token unmasks with probability
    ``p = (alpha_s - alpha_t) / (1 - alpha_t)`` to a token drawn from ``softmax(logits)``, i.e. it
    draws from ``[p softmax(logits), 1 - p]`` over V + 1 classes; unmasked tokens are copied.

    ``keys`` [B] per example, ``zt`` [B, L], ``logits`` [B, L, V], ``alpha_s``/``alpha_t`` scalars or [B].
    """
    keys = _per_example_keys(keys, zt.shape[0])
    p = (_f32(alpha_s) - _f32(alpha_t)) / (1.0 - _f32(alpha_t))
    p = jnp.broadcast_to(jnp.reshape(p, (-1, 1, 1)), (zt.shape[0], 1, 1))
    log_probs = jnp.concatenate([jnp.log(p) + jax.nn.log_softmax(logits.astype(jnp.float32), -1),
                                 jnp.broadcast_to(jnp.log1p(-p), zt.shape + (1,))], axis=-1)
    draw = jax.vmap(lambda k, lp: jax.random.categorical(k, lp, axis=-1))(keys, log_probs)
    vocab = logits.shape[-1]
    draw = jnp.where(draw == vocab, mask_id, draw).astype(zt.dtype)   # class V is "stay masked"
    return jnp.where(zt == mask_id, draw, zt)


def ancestral_sample(keys: jax.Array, denoiser, length: int, num_steps, alpha_fn, mask_id: int, *,
                     grid: str = "cosine") -> jax.Array:
    """MD4's ancestral sampler from all-masked: ``num_steps`` :func:`ancestral_step` on
    :func:`md4_sampling_grid`, then MD4's ``decode``: a token still masked at t = 0 (possible
    when alpha_0 < 1) takes the denoiser's argmax. ``alpha_fn(t)`` is the schedule (e.g.
    ``partial(md4_alpha, kind="linear")``); step i uses ``fold_in(key, i)`` per example. [B, L] int32."""
    batch = keys.shape[0]
    z = jnp.full((batch, length), mask_id, jnp.int32)

    def body(i, z):
        s, t = md4_sampling_grid(i, num_steps, grid)
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        logits = denoiser(z, jnp.full((batch,), t))
        return ancestral_step(step_keys, z, logits, alpha_fn(s), alpha_fn(t), mask_id)

    z = jax.lax.fori_loop(0, num_steps, body, z)
    final = jnp.argmax(denoiser(z, jnp.zeros((batch,), jnp.float32)), axis=-1).astype(jnp.int32)
    return jnp.where(z == mask_id, final, z)


def maskgit_step(keys: jax.Array, cur: jax.Array, logits: jax.Array, step, num_steps, num_unknown_start,
                 mask_id: int, choice_temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """One step of MaskGIT's confidence decoding (``parallel_decode.py::decode``, spec 9d).

    Every unknown token is sampled from ``softmax(logits)``; with ``r = (step + 1) / T`` the
    ``n = max(1, min(#unknown - 1, floor(N0 cos(pi/2 r))))`` sampled tokens of lowest confidence
    ``log p(sampled) + choice_temperature (1 - r) Gumbel`` (known tokens: +inf) are masked again.
    Returns ``(sampled, next_cur)``: the step's output is ``sampled`` (complete), the next input
    ``next_cur``. ``num_unknown_start`` [B] is N0, the masks at the start.
    """
    keys = _per_example_keys(keys, cur.shape[0])
    unknown = cur == mask_id
    draw_keys, gumbel_keys = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k))(keys), 1, 0)
    logits = logits.astype(jnp.float32)
    sampled = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, axis=-1))(draw_keys, logits)
    sampled = jnp.where(unknown, sampled, cur).astype(cur.dtype)
    r = (_f32(step) + 1.0) / _f32(num_steps)
    ratio = jnp.clip(jnp.cos(0.5 * math.pi * r), 1e-6, 1.0)   # MaskGIT's cosine mask_schedule, clipped
    n_mask = jnp.floor(_f32(num_unknown_start) * ratio)
    n_mask = jnp.maximum(1.0, jnp.minimum(jnp.sum(unknown, axis=-1) - 1.0, n_mask)).astype(jnp.int32)
    log_p = jax.nn.log_softmax(logits, -1)
    picked = jnp.take_along_axis(log_p, sampled[..., None].astype(jnp.int32), -1)[..., 0]
    picked = jnp.where(unknown, picked, jnp.inf)
    gumbel = jax.vmap(lambda k: jax.random.gumbel(k, cur.shape[1:], jnp.float32))(gumbel_keys)
    confidence = picked + choice_temperature * (1.0 - r) * gumbel
    cut_off = jnp.take_along_axis(jnp.sort(confidence, axis=-1), n_mask[:, None], axis=-1)
    return sampled, jnp.where(confidence < cut_off, mask_id, sampled).astype(cur.dtype)


def maskgit_decode(keys: jax.Array, denoiser, init: jax.Array, num_steps, mask_id: int, *,
                   choice_temperature: float = 1.0) -> jax.Array:
    """MaskGIT's decoding loop from ``init`` [B, L] (``mask_id`` = unknown): ``num_steps`` of
    :func:`maskgit_step`, returning the last step's sampled ids (``final_seqs[:, -1]``). The
    denoiser is called with ``t`` = the fraction of unknown tokens (MaskGIT's is time-free)."""
    n0 = jnp.sum(init == mask_id, axis=-1).astype(jnp.float32)

    def body(i, carry):
        _, cur = carry
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        t = jnp.mean((cur == mask_id).astype(jnp.float32), axis=-1)
        return maskgit_step(step_keys, cur, denoiser(cur, t), i, num_steps, n0, mask_id, choice_temperature)

    sampled, _ = jax.lax.fori_loop(0, num_steps, body, (init, init))
    return sampled
