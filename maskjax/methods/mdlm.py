"""MDLM (kuleshov-group/mdlm, "Simple and Effective Masked Diffusion Language Models") on characters.

Specs/methods_text_gen.md 11: absorbing-state diffusion with the mask id V (appended after the
data vocabulary, so the network has V + 1 inputs and outputs); the log-linear schedule
(``sigma(t) = -log(1 - (1 - eps) t)``, eps 1e-3) by default; stratified ("antithetic") times
``t = (1 - 1e-3) u + 1e-3``; each token masked with probability ``1 - exp(-sigma)``; the SUBS
parameterisation (never predict the mask, copy observed tokens); the continuous-time NELBO
``-log p(x0 | x_t) dsigma / expm1(sigma)`` averaged over all tokens (nats per character; an
unmasked token contributes 0), or MDLM's T-step D3PM loss when ``num_steps`` T > 0. The network
is the DDiT (:class:`~maskjax.models.dit.DiT`); with ``time_conditioning=False`` (MDLM's default)
it receives sigma = 0. Samples: the ``ddpm`` update on a uniform grid (MDLM's ``ddpm_cache``
draws the same distribution: unmask with probability ``(t - s) / t``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.data.text import chars
from maskjax.masking import diffusion as dm
from maskjax.methods import register
from maskjax.methods.md4 import LN2, CharMethod, _sums, reconstruction_correct
from maskjax.methods.text_common import split_example_keys
from maskjax.models.flop_count import matmul, scaled
from maskjax.objectives import diffusion as obj

# MDLM "small" (configs/model/small.yaml): 12 blocks, width 768, 12 heads, cond_dim 128, dropout 0.1.
DIT_MODEL = dict(variant="mdlm-small", vocab_size=chars.VOCAB_SIZE, width=768, depth=12, heads=12, cond_dim=128,
                 mlp_ratio=4, dropout=0.1, scan_layers=False)


@register("mdlm")
class MDLM(CharMethod):
    """MDLM on characters (module docstring)."""

    MODEL = DIT_MODEL
    SMALL = dict(variant="mdlm-chars-small", width=256, depth=6, heads=4, cond_dim=128)
    SMOKE = dict(variant="mdlm-smoke", width=32, depth=2, heads=2, cond_dim=16)
    attention_impls = ("xla", "cudnn", "blockwise", "bhtd")

    @classmethod
    def config_section(cls) -> dict:
        """MDLM's defaults (configs/config.yaml, noise/loglinear.yaml)."""
        return dict(super().config_section(), noise_schedule="loglinear", eps=dm.MDLM_EPS,
                    sampling_eps=dm.MDLM_SAMPLING_EPS, antithetic=True, time_conditioning=False, num_steps=0,
                    sample_steps=128, ema_warmup=True)

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """A DiT ``model`` section, a known schedule, T >= 0."""
        m = config.get("model")
        if m is None or "cond_dim" not in m:
            errors.append("method 'mdlm' needs the DiT model section: call MDLM.fill_config(method_config('mdlm'))")
            return
        if m.width % m.heads or (m.width // m.heads) % 2:
            errors.append(f"model.width {m.width} must split into {m.heads} heads of an even size (rotary)")
        own = config.get("mdlm", {})
        if own.get("noise_schedule", "loglinear") not in dm.MDLM_SCHEDULES:
            errors.append(f"unknown mdlm.noise_schedule {own.get('noise_schedule')!r}; use one of {dm.MDLM_SCHEDULES}")
        if int(own.get("num_steps", 0)) < 0:
            errors.append("mdlm.num_steps must be 0 (continuous time) or the number of D3PM steps T")

    @property
    def own(self):
        """This method's section of the config."""
        return self.config.mdlm

    def network(self, rngs):
        """The DDiT with V + 1 inputs and outputs (the mask id included)."""
        from maskjax.models.dit import DiT

        m = self.config.model
        return DiT(self.vocab_size + 1, rngs=rngs, width=m.width, depth=m.depth, heads=m.heads, cond_dim=m.cond_dim,
                   mlp_ratio=m.mlp_ratio, dropout=m.dropout, **self.model_kwargs())

    def noise(self, t):
        """``(sigma(t), dsigma/dt)`` of the configured schedule."""
        return dm.mdlm_noise(t, self.own.noise_schedule, eps=self.own.eps)

    def conditioning(self, sigma):
        """What the network sees: sigma, or zeros without time conditioning (MDLM's ``_process_sigma``)."""
        return sigma if self.own.time_conditioning else jnp.zeros_like(sigma)

    def nelbo(self, model, x0, keys, train: bool):
        """``(per-token NELBO [B, L] in nats, SUBS log-probs, z_t)`` of clean ``x0``."""
        own = self.own
        mask_keys, drop_keys = split_example_keys(keys, 2)
        t = dm.mdlm_sample_t(self.time_key(mask_keys), x0.shape[0], antithetic=own.antithetic,
                             sampling_eps=own.sampling_eps)
        steps = int(own.num_steps)
        if steps:
            t = dm.discretize_time(t, steps)
        sigma, _ = self.noise(t)
        zt, _ = dm.forward_sample(mask_keys, x0, jnp.exp(-sigma), self.mask_id)
        logits = model(zt, self.conditioning(sigma), dropout_keys=drop_keys if train else None)
        log_probs = obj.subs_log_probs(logits, zt, self.mask_id)
        if steps:
            per_token = obj.d3pm_token_loss(log_probs, x0, zt, t, steps, self.mask_id)
        else:
            weight = dm.mdlm_loss_weight(t, own.noise_schedule, eps=own.eps)
            per_token = obj.mdlm_token_nll(log_probs, x0, weight)
        return per_token, log_probs, zt

    def loss(self, model, batch, keys, train, step=None):
        """MDLM's NELBO per character in nats (``loss``), bits (``bits_per_char``) and its perplexity bound."""
        x0 = batch["input_ids"]
        per_token, _, zt = self.nelbo(model, x0, keys, train)
        loss, metrics = obj.mdlm_loss(per_token)
        metrics = dict(metrics, nats_per_char=loss, bits_per_char=loss / LN2,
                       mask_rate=jnp.mean((zt == self.mask_id).astype(jnp.float32)))
        return loss, metrics

    def heldout_sums(self, model, x0, keys) -> dict:
        """Summed NELBO of held-out blocks (nats and bits), correct reconstructions, characters."""
        per_token, log_probs, zt = self.nelbo(model, x0, keys, train=False)
        return _sums(jnp.sum(per_token, axis=1), reconstruction_correct(log_probs, x0, zt, self.mask_id),
                     x0.shape[1])

    def hidden_states(self, model, ids):
        """The DiT's last hidden states of clean input (sigma 0)."""
        return model.hidden(ids, jnp.zeros((ids.shape[0],), jnp.float32))[0]

    def sample(self, model, key, num):
        """``num`` sequences [num, seq_len] of character ids: ``sample_steps`` ddpm steps from all-masked
        (keep-probability ``1 - t`` on a uniform grid, as ``_ddpm_caching_update``), then the argmax
        of anything left masked."""
        keys = jax.random.split(key, num)
        model = self.eval_model(model)

        def denoiser(z, t):
            sigma, _ = self.noise(t)
            return model(z, self.conditioning(sigma))[..., :self.vocab_size]   # SUBS: no mass on the mask

        return dm.ancestral_sample(keys, denoiser, self.sample_length(), int(self.own.sample_steps),
                                   lambda t: 1.0 - t, self.mask_id, grid="uniform")

    def flops(self, global_batch):
        """DiT blocks (qkv, output, attention, MLP) on every position, the output layer, the conditioning."""
        m = self.config.model
        tokens, width = int(self.config.data.seq_len), int(m.width)
        layer = (matmul(tokens, width, 4 * width) + 2 * matmul(tokens, width, tokens)
                 + 2 * matmul(tokens, width, int(m.mlp_ratio) * width))
        cond = int(m.cond_dim)
        parts = {"blocks": int(m.depth) * layer, "output": matmul(tokens, width, self.vocab_size + 1),
                 "conditioning": (matmul(1, 256, cond) + matmul(1, cond, cond)
                                  + (6 * int(m.depth) + 2) * matmul(1, cond, width))}
        return scaled("mdlm", parts, global_batch, "character (seq_len per block)", tokens)
