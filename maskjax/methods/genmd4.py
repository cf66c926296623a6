"""GenMD4 (google-deepmind/md4 ``models/diffusion/genmd4.py``): MD4 with a learnable,
state-dependent masking schedule, on characters.

Each symbol ``v`` has its own schedule ``alpha_t(v) = 1 - (1 - eps) t^{w_v}`` with ``w_v =
softplus(param_v)`` initialised to ``power_init`` (specs/methods_text_gen.md 12d); times are
drawn antithetically and rescaled to ``[t1, 1]``. The loss draws two masked sequences at the
same times and averages their diffusion losses; the exponents get their gradient through the
sampling distribution by REINFORCE leave-one-out (:func:`maskjax.objectives.diffusion.genmd4_loss`),
and the reported bound (``nelbo``, bits per character) excludes that surrogate term.

The official code has no sampler for GenMD4; :meth:`GenMD4.sample` runs the state-dependent
version of MD4's ancestral step: a masked position becomes ``v`` with probability
``p(v | z_t) (alpha_s(v) - alpha_t(v)) / (1 - alpha_t(v))`` and stays masked otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.masking import diffusion as dm
from maskjax.methods import register
from maskjax.methods.md4 import LN2, MD4, _sums, llama_flops, reconstruction_correct
from maskjax.methods.text_common import split_example_keys
from maskjax.objectives import diffusion as obj


class GenMD4Model(nnx.Module):
    """MD4's network (``net``) plus the schedule's raw exponents ``w`` [V] (``softplus(w)`` = powers)."""

    def __init__(self, net: nnx.Module, vocab_size: int, power_init: float = 1.0):
        self.net = net
        self.w = nnx.Param(dm.genmd4_param_init(vocab_size, power_init), logical_axes=("vocab",))

    def power(self) -> jax.Array:
        """The per-symbol exponents ``softplus(w)`` [V]."""
        return dm.genmd4_power(self.w[...])

    def hidden(self, ids, t=None, *, dropout_keys=None):
        """The network's ``(hidden states, cond)``."""
        return self.net.hidden(ids, t, dropout_keys=dropout_keys)

    def __call__(self, ids, t=None, *, dropout_keys=None):
        return self.net(ids, t, dropout_keys=dropout_keys)


def genmd4_ancestral_step(keys: jax.Array, zt: jax.Array, logits: jax.Array, power: jax.Array, s, t, mask_id: int,
                          *, eps: float = dm.GENMD4_EPS) -> jax.Array:
    """One reverse step ``z_t -> z_s`` under per-symbol schedules (module docstring); ``s``/``t`` scalars."""
    a_t = dm.genmd4_alpha(jnp.asarray(t, jnp.float32), power, eps=eps)
    a_s = dm.genmd4_alpha(jnp.asarray(s, jnp.float32), power, eps=eps)
    unmask = (a_s - a_t) / (1.0 - a_t)                                         # [V]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * unmask       # [B, L, V]
    stay = jnp.maximum(1.0 - jnp.sum(probs, axis=-1, keepdims=True), 0.0)
    log_probs = jnp.log(jnp.concatenate([probs, stay], axis=-1))
    draw = jax.vmap(lambda k, lp: jax.random.categorical(k, lp, axis=-1))(keys, log_probs)
    draw = jnp.where(draw == logits.shape[-1], mask_id, draw).astype(zt.dtype)  # class V: stay masked
    return jnp.where(zt == mask_id, draw, zt)


@register("genmd4")
class GenMD4(MD4):
    """GenMD4 on characters (module docstring)."""

    @classmethod
    def config_section(cls) -> dict:
        """MD4's options with GenMD4's ``poly`` schedule, ``power_init`` and ``t1`` (genmd4/text8.py)."""
        own = MD4.config_section()
        own.update(noise_schedule="poly", power_init=1.0, t1=dm.GENMD4_T1, eps=dm.GENMD4_EPS)
        return own

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """Model sizes, the learnable ``poly`` schedule (continuous time only), positive ``power_init``."""
        from maskjax.methods.md4 import CharMethod

        CharMethod.check_config(config, errors)
        own = config.get(cls.name, {})
        if own.get("noise_schedule", "poly") != "poly":
            errors.append("genmd4.noise_schedule must be 'poly' (the learnable per-symbol schedule)")
        if not own.get("cont_time", True):
            errors.append("genmd4 has only the continuous-time loss (cont_time=True), as the reference")
        if not own.get("power_init", 1.0) > 0:
            errors.append(f"genmd4.power_init must be > 0, got {own.get('power_init')}")
        if not 0.0 < own.get("t1", dm.GENMD4_T1) < 1.0:
            errors.append(f"genmd4.t1 must be in (0, 1), got {own.get('t1')}")

    def network(self, rngs):
        """MD4's network and the schedule's exponents."""
        net = self.llama(time_conditioning=self.time_conditioned)(rngs=rngs)
        return GenMD4Model(net, self.vocab_size, float(self.own.power_init))

    def draw_pair(self, model, x0, keys):
        """``(t, z_t^1, z_t^2, power)``: times in [t1, 1] and two independent masked draws."""
        power = model.power()
        t = dm.genmd4_time(dm.md4_sample_t(self.time_key(keys), x0.shape[0], antithetic=self.own.antithetic),
                           self.own.t1)
        keep = dm.genmd4_keep_prob(x0, t, power, eps=self.own.eps)
        k1, k2 = split_example_keys(keys, 2)
        zt_1, _ = dm.forward_sample(k1, x0, keep, self.mask_id)
        zt_2, _ = dm.forward_sample(k2, x0, keep, self.mask_id)
        return t, zt_1, zt_2, power

    def loss(self, model, batch, keys, train, step=None):
        """The RLOO surrogate (``loss``) and the bound ``nelbo``, bits per character (+ nats)."""
        x0 = batch["input_ids"]
        mask_keys, drop_keys = split_example_keys(keys, 2)
        t, zt_1, zt_2, power = self.draw_pair(model, x0, mask_keys)
        b = x0.shape[0]
        # One forward pass over both draws ([2B, L]); dropout keys differ between the halves.
        drop = None
        if train:
            d1, d2 = split_example_keys(drop_keys, 2)
            drop = jnp.concatenate([d1, d2])
        logits = self.denoise(model, jnp.concatenate([zt_1, zt_2]), jnp.concatenate([t, t]), drop)
        loss, metrics = obj.genmd4_loss(logits[:b], logits[b:], x0, zt_1, zt_2, t, power, mask_id=self.mask_id,
                                        t1=self.own.t1, eps=self.own.eps)
        masked = jnp.mean((jnp.concatenate([zt_1, zt_2]) == self.mask_id).astype(jnp.float32))
        metrics = dict(metrics, bits_per_char=metrics["nelbo"], nats_per_char=metrics["nelbo"] * LN2,
                       mask_rate=masked)
        return loss, metrics

    def heldout_sums(self, model, x0, keys) -> dict:
        """Summed NELBO with one masked draw per sequence (an unbiased estimate of the bound)."""
        power = model.power()
        mask_keys, _ = split_example_keys(keys, 2)
        t = dm.genmd4_time(dm.md4_sample_t(self.time_key(mask_keys), x0.shape[0], antithetic=self.own.antithetic),
                           self.own.t1)
        zt, _ = dm.forward_sample(mask_keys, x0, dm.genmd4_keep_prob(x0, t, power, eps=self.own.eps), self.mask_id)
        logits = self.denoise(model, zt, t)
        per_seq = (obj.genmd4_diffusion_loss(logits, x0, zt, t, power, self.mask_id)
                   + obj.genmd4_recon_loss(x0, power, t1=self.own.t1, eps=self.own.eps))
        return _sums(per_seq, reconstruction_correct(logits, x0, zt, self.mask_id), x0.shape[1])

    def sample(self, model, key, num):
        """``num`` sequences [num, seq_len] from the state-dependent ancestral sampler (module docstring)."""
        model = self.eval_model(model)
        power, length, steps = model.power(), self.sample_length(), int(self.own.sample_steps)
        keys = jax.random.split(key, num)
        z = jnp.full((num, length), self.mask_id, jnp.int32)

        def body(i, z):
            s, t = dm.md4_sampling_grid(i, steps, self.own.sampling_grid)
            step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
            logits = self.denoise(model, z, jnp.full((num,), t))
            return genmd4_ancestral_step(step_keys, z, logits, power, s, t, self.mask_id, eps=self.own.eps)

        z = jax.lax.fori_loop(0, steps, body, z)
        final = jnp.argmax(self.denoise(model, z, jnp.zeros((num,), jnp.float32)), axis=-1).astype(jnp.int32)
        return jnp.where(z == self.mask_id, final, z)

    def flops(self, global_batch):
        """Two forward passes of the LLaMA stack per example (the two masked draws)."""
        return llama_flops(self.config, global_batch, self.name, passes=2, cond=self.time_conditioned)
