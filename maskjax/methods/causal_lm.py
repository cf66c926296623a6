"""The autoregressive baseline of the masked diffusion methods: a causal LLaMA-style character LM.

The same stack as MD4 (:class:`~maskjax.models.llama.LlamaTransformer`: RMSNorm, interleaved
RoPE, GLU-family MLP, depth-scaled init) without time conditioning and with causal attention.
Every block is preceded by a start id (V, the id the diffusion methods use for the mask), so the
model predicts all L characters, ``p(x_1) p(x_2 | x_1) ...``, and its next-character
cross-entropy (nats and bits per character) is comparable with the diffusion bounds on the same
blocks. MDLM's AR baseline is the same idea with a BOS token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskjax.data.text import chars
from maskjax.methods import register
from maskjax.methods.md4 import LN2, CharMethod, _sums, llama_flops
from maskjax.methods.text_common import split_example_keys
from maskjax.objectives.diffusion import gather_log_prob

# LLaMA-style defaults for the baseline: MD4-S's stack with a SwiGLU MLP and a full-width embedding.
CAUSAL_MODEL = dict(variant="llama-s", vocab_size=chars.VOCAB_SIZE, feature_dim=64, heads=12, depth=12,
                    mlp_type="swiglu", cond_type="adaln_zero", depth_scaled_init=True, outside_embed=False,
                    dropout=0.0, scan_layers=False)


@register("causal_lm")
class CausalLM(CharMethod):
    """Next-character prediction with a causal transformer (module docstring)."""

    MODEL = CAUSAL_MODEL
    SMALL = dict(variant="llama-chars-small", feature_dim=64, heads=4, depth=6)
    SMOKE = dict(variant="llama-smoke", feature_dim=16, heads=2, depth=2)
    attention_impls = ("xla", "cudnn")   # the blockwise cores take no causal mask

    @classmethod
    def config_section(cls) -> dict:
        """Sampling temperature of :meth:`sample`, and the EMA options."""
        return dict(super().config_section(), temperature=1.0)

    def network(self, rngs):
        """The causal stack: V + 1 input ids (the start id), V outputs, no time conditioning."""
        return self.llama(causal=True, time_conditioning=False)(rngs=rngs)

    @property
    def start_id(self) -> int:
        """The id fed before the first character."""
        return self.vocab_size

    def shifted(self, x: jax.Array) -> jax.Array:
        """``[start, x_1, ..., x_{L-1}]``: the inputs that predict ``x`` one position ahead."""
        start = jnp.full((x.shape[0], 1), self.start_id, x.dtype)
        return jnp.concatenate([start, x[:, :-1]], axis=1)

    def token_nll(self, model, x, keys=None):
        """``(-log p(x_i | x_<i)`` [B, L] in nats, logits)``."""
        logits = model(self.shifted(x), dropout_keys=keys)
        return -gather_log_prob(jax.nn.log_softmax(logits, axis=-1), x), logits

    def loss(self, model, batch, keys, train, step=None):
        """Mean next-character cross-entropy in nats (``loss``), bits per character and accuracy."""
        x = batch["input_ids"]
        (drop_keys,) = split_example_keys(keys, 1)
        nll, logits = self.token_nll(model, x, drop_keys if train else None)
        loss = jnp.mean(nll)
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == x).astype(jnp.float32))
        return loss, {"loss": loss, "nats_per_char": loss, "bits_per_char": loss / LN2,
                      "perplexity": jnp.exp(loss), "accuracy": accuracy}

    def heldout_sums(self, model, x0, keys) -> dict:
        """Summed next-character NLL (nats, bits), correct argmax predictions, characters."""
        del keys
        nll, logits = self.token_nll(model, x0)
        return _sums(jnp.sum(nll, axis=1), jnp.argmax(logits, axis=-1) == x0, x0.shape[1])

    def hidden_states(self, model, ids):
        """The causal stack's last hidden states of the shifted input (position i has seen x_<i)."""
        return model.hidden(self.shifted(ids))[0]

    def sample(self, model, key, num):
        """``num`` sequences [num, seq_len] drawn left to right at ``causal_lm.temperature``."""
        length, temp = self.sample_length(), float(self.config.causal_lm.temperature)
        model = self.eval_model(model)
        x = jnp.zeros((num, length), jnp.int32)

        def body(i, x):
            logits = model(self.shifted(x))
            step = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False) / temp
            draw = jax.random.categorical(jax.random.fold_in(key, i), step, axis=-1).astype(jnp.int32)
            return x.at[:, i].set(draw)

        return jax.lax.fori_loop(0, length, body, x)

    def flops(self, global_batch):
        """The causal stack on every position (counted as full attention, as the other methods)."""
        return llama_flops(self.config, global_batch, self.name, cond=False)
