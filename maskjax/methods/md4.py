"""MD4 (google-deepmind/md4, "Simplified and Generalized Masked Diffusion for Discrete Data") on
characters, and the pieces every character language model here shares (:class:`CharMethod`).

MD4 (specs/methods_text_gen.md 12a-12c, 12e): absorbing-state diffusion with the mask id
``V`` = 27; times ``t`` drawn antithetically for the batch, each token kept with probability
``alpha_t`` (Bernoulli, :func:`maskjax.masking.diffusion.forward_sample`); the LLaMA-style
network (:class:`~maskjax.models.llama.LlamaTransformer`) is conditioned on ``t`` by adaLN-zero
(``time_features="t"``) and predicts the V data symbols; the loss is the continuous-time ELBO
``(alpha'_t / (1 - alpha_t)) sum_masked log p(x_n | z_t)`` (or the T-step discrete one) plus
the reconstruction term, in bits per character (:func:`maskjax.objectives.diffusion.md4_loss`).
Samples come from MD4's ancestral sampler on the cosine grid.

Every method of this family (``mdlm``, ``md4``, ``genmd4``, ``causal_lm``) reports its loss in
nats and bits per character and supplies ``eval_stats``: summed held-out negative ELBO / NLL in
nats (``nll_sum``, so the ``mlm`` evaluator's ``exp(loss)`` is a per-character perplexity bound)
and bits (``bits_sum``), the number of characters (``count``) and ``correct``: characters the
model gets right, an observed one counting as right (diffusion) or the argmax next character
(causal LM). Randomness: masks and dropout from the per-example keys; the (antithetic) times from
one key per (micro-)batch, the first example's, as both references couple a batch's times.
With ``<method>.ema_decay`` > 0 the model carries an exponential moving average of its parameters
(:func:`attach_ema`, updated in ``after_step``, checkpointed with the state) and evaluation,
sampling and features use it, as MD4 and MDLM evaluate their EMA weights.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from ml_collections import config_dict

from maskjax.data.text import chars   # registers the "chars" data modality
from maskjax.masking import diffusion as dm
from maskjax.methods import register
from maskjax.methods.base import Method
from maskjax.methods.mae import compute_dtype
from maskjax.methods.text_common import split_example_keys
from maskjax.models.flop_count import matmul, scaled
from maskjax.objectives import diffusion as obj

LN2 = math.log(2.0)
EMA_KEY = "ema"

# MD4-S (configs/md4/text8.py): 12 layers, 12 heads of 64, GLU MLP, depth-scaled init, adaLN-zero.
LLAMA_MODEL = dict(variant="md4-s", vocab_size=chars.VOCAB_SIZE, feature_dim=64, heads=12, depth=12,
                   mlp_type="glu", cond_type="adaln_zero", depth_scaled_init=True, outside_embed=True,
                   dropout=0.0, scan_layers=False)


class EmaWeights(nnx.Variable):
    """An exponential moving average of a parameter: part of the train state, never optimised."""


def attach_ema(model: nnx.Module) -> nnx.Module:
    """Adds ``model.ema``: a copy of every parameter as :class:`EmaWeights` (same logical axes, so
    it shards like the parameters), nested like the train state's ``params``; returns ``model``."""
    tree: dict = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        node = tree
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = EmaWeights(var[...], **var.get_metadata())
    setattr(model, EMA_KEY, nnx.data(tree))
    return model


def ema_view(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` whose parameters are its EMA weights (``model`` itself without them)."""
    ema = getattr(model, EMA_KEY, None)
    if not ema:
        return model
    view = nnx.clone(model)
    for path, var in nnx.iter_graph(view):
        if isinstance(var, nnx.Param):
            node = ema
            for key in path:
                node = node[str(key)]
            var[...] = node[...]
    return view


class CharMethod(Method):
    """Shared parts of the character language models: data, model options, features, eval sums.

    Subclasses set ``MODEL`` / ``SMALL`` / ``SMOKE`` (their ``config.model`` defaults), :meth:`network`,
    ``loss``, :meth:`heldout_sums` and ``sample``.
    """

    modality = "chars"
    MODEL: ClassVar[dict] = LLAMA_MODEL
    # The small character-run model (configs' :shakespeare / :wikitext) and the smoke model.
    SMALL: ClassVar[dict] = dict(variant="md4-chars-small", feature_dim=64, heads=4, depth=6)
    SMOKE: ClassVar[dict] = dict(variant="md4-smoke", feature_dim=16, heads=2, depth=2)

    @classmethod
    def fill_config(cls, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """Adds this family's ``model``, ``data`` (characters) and ``masking`` sections to a
        :func:`maskjax.config.method_config` config and returns it.

        ``masking.eval_ratio`` is only there because the ``mlm`` evaluator reads it; the
        diffusion ELBO integrates over all masking rates and ignores it.
        """
        config.model = ml_collections.ConfigDict(dict(cls.MODEL))
        config.model.attention_impl = config_dict.placeholder(str)
        config.data = chars.char_data_section()
        config.masking = ml_collections.ConfigDict(dict(eval_ratio=0.0))
        return config

    @classmethod
    def config_section(cls) -> dict:
        """``ema_decay`` (0: off; MD4 and MDLM: 0.9999) of the weights that evaluation and sampling
        use, and ``ema_warmup``: MDLM's ``min(decay, (1 + n) / (10 + n))`` after n updates."""
        return dict(ema_decay=0.0, ema_warmup=False)

    @classmethod
    def char_run(cls, config: ml_collections.ConfigDict, files: dict, *, smoke: bool = False, steps: int = 20_000,
                 batch: int = 64, lr: float = 5e-4, seq_len: int = 256) -> ml_collections.ConfigDict:
        """Points a recipe at character ``files`` (``data`` fields: path, eval_path, doc_format) and
        shrinks it to the small character run (``SMALL`` model, ``steps`` x ``batch`` blocks of
        ``seq_len``, warm-up 1/40 of the run, held-out ``mlm`` evaluation) or, with ``smoke``, to
        the ``SMOKE`` model on 64-character blocks (the caller adds maskjax.config.smoke)."""
        config.data.update(dict(eval_path=None, doc_format="plain", train_stride=None, heldout_fraction=0.1))
        config.data.update(files)
        config.data.seq_len = 64 if smoke else seq_len
        config.model.update(dict(cls.SMOKE if smoke else cls.SMALL, vocab_size=chars.VOCAB_SIZE))
        config.global_batch, config.total_steps = batch, steps
        config.optim.base_lr = lr
        config.optim.warmup_steps = max(1, steps // 40)
        config[cls.name].ema_decay = 0.999      # a horizon of 1,000 steps for the short runs
        config.checkpoint.every_steps = max(1, steps // 10)
        config.log_every_steps = max(1, min(100, steps // 100))
        config.evals = ml_collections.ConfigDict()
        config.evals.mlm = dict(type="mlm", every_steps=max(1, steps // 10), batch_size=batch, batches=20)
        return config

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """The ``model`` section exists and its sizes make sense."""
        m = config.get("model")
        if m is None or "depth" not in m:
            errors.append(f"method {cls.name!r} needs the character-model sections: call "
                          f"{cls.__name__}.fill_config(method_config({cls.name!r}))")
            return
        if m.get("mlp_type", "swiglu") not in ("swiglu", "geglu", "glu"):
            errors.append(f"unknown model.mlp_type {m.mlp_type!r}; use swiglu, geglu or glu")
        if m.get("cond_type", "adaln_zero") not in ("adaln_zero", "adaln"):
            errors.append(f"unknown model.cond_type {m.cond_type!r}; use adaln_zero or adaln")
        if not 0.0 <= m.get("dropout", 0.0) < 1.0:
            errors.append(f"model.dropout must be in [0, 1), got {m.get('dropout')}")

    # --- shared helpers -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """V, the data symbols (27 for characters); the mask / start id is V."""
        return int(self.config.model.vocab_size)

    @property
    def mask_id(self) -> int:
        """The absorbing state's id: V (MD4 and MDLM both append it after the data vocabulary)."""
        return self.vocab_size

    def model_kwargs(self) -> dict:
        """Run options every character model takes: compute dtype, remat, scan, attention core."""
        m = self.config.model
        return dict(dtype=compute_dtype(self.config.get("compute_dtype", "float32")),
                    remat=self.config.get("remat", False), scan_layers=bool(m.get("scan_layers", False)),
                    attention_impl=m.get("attention_impl", None))

    def llama(self, *, causal: bool = False, time_conditioning: bool = True):
        """A :class:`~maskjax.models.llama.LlamaTransformer` factory from ``config.model``."""
        from maskjax.models.llama import LlamaTransformer

        m = self.config.model
        return functools.partial(
            LlamaTransformer, self.vocab_size + 1, self.vocab_size, feature_dim=m.feature_dim, heads=m.heads,
            depth=m.depth, mlp_type=m.mlp_type, depth_scaled_init=m.depth_scaled_init,
            time_conditioning=time_conditioning, cond_type=m.get("cond_type", "adaln_zero"), causal=causal,
            outside_embed=m.outside_embed, dropout=m.dropout, **self.model_kwargs())

    def network(self, rngs):
        """The method's network (without EMA weights)."""
        raise NotImplementedError

    def build(self, rngs):
        """:meth:`network`, with EMA copies of its parameters when ``ema_decay`` > 0."""
        model = self.network(rngs)
        return attach_ema(model) if self.ema_decay else model

    @property
    def ema_decay(self) -> float:
        """The EMA decay (0: no EMA)."""
        return float(self.config[self.name].get("ema_decay", 0.0))

    def after_step(self, params, extra, step):
        """Moves the EMA weights towards the updated parameters (MD4's ``x + (1 - r)(y - x)``)."""
        if not self.ema_decay or EMA_KEY not in extra:
            return extra
        decay = jnp.asarray(self.ema_decay, jnp.float32)
        if self.config[self.name].get("ema_warmup", False):
            n = jnp.asarray(step, jnp.float32)
            decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
        ema = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), extra[EMA_KEY], params)
        return {**extra, EMA_KEY: ema}

    def eval_model(self, model):
        """The model that evaluation, sampling and features use: its EMA weights when there are some."""
        return ema_view(model)

    @staticmethod
    def time_key(keys: jax.Array, salt: int = 0) -> jax.Array:
        """The batch's time-sampling key, from the first example's key."""
        return jax.random.fold_in(keys[0], 1_000_003 + salt)

    def features(self, model, inputs, pool=None):
        """Mean over positions of the last hidden states of the clean characters [B, D]."""
        ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs
        hidden = self.hidden_states(self.eval_model(model), jnp.asarray(ids, jnp.int32))
        return hidden.mean(axis=1).astype(jnp.float32)

    def hidden_states(self, model, ids):
        """The network's last hidden states of clean input [B, L, D] (``t = 0``)."""
        return model.hidden(ids, jnp.zeros((ids.shape[0],), jnp.float32))[0]

    def feature_name(self, pool=None) -> str:
        """What :meth:`features` returns."""
        return "mean hidden state"

    def eval_stats(self, model, batch, keys, options):
        """Summed held-out statistics of one batch (module docstring); ``options["rate"]`` is ignored."""
        del options
        return self.heldout_sums(self.eval_model(model), batch["input_ids"], keys)

    def heldout_sums(self, model, x0, keys) -> dict:
        """``{"nll_sum", "bits_sum", "correct", "count"}`` of clean characters ``x0`` [B, L]."""
        raise NotImplementedError

    def sample_length(self) -> int:
        """Length of generated sequences: the data's block length."""
        return int(self.config.data.seq_len)


def _sums(nats_per_seq: jax.Array, correct: jax.Array, length: int) -> dict:
    """Summable statistics from per-sequence nats [B] and a bool/0-1 [B, L] correctness map."""
    nll = jnp.sum(nats_per_seq.astype(jnp.float32))
    return {"nll_sum": nll, "bits_sum": nll / LN2, "correct": jnp.sum(correct.astype(jnp.float32)),
            "count": jnp.asarray(nats_per_seq.shape[0] * length, jnp.float32)}


def reconstruction_correct(logits: jax.Array, x0: jax.Array, zt: jax.Array, mask_id: int) -> jax.Array:
    """[B, L] bool: observed at ``z_t``, or masked and the denoiser's argmax is ``x0``."""
    guess = jnp.argmax(logits[..., :mask_id], axis=-1)
    return (zt != mask_id) | (guess == x0)


def llama_flops(config, global_batch: int, method: str, *, passes: int = 1, cond: bool = True) -> Any:
    """Forward matmul FLOPs of the LLaMA stack per step (``passes`` forward passes per example)."""
    from maskjax.models.llama import mlp_hidden

    m = config.model
    tokens, fd = int(config.data.seq_len), int(m.feature_dim)
    width = fd * int(m.heads)
    hidden = mlp_hidden(width)
    layer = (matmul(tokens, width, 4 * width) + 2 * matmul(tokens, width, tokens)
             + 3 * matmul(tokens, width, hidden))
    parts = {"blocks": int(m.depth) * layer, "head": matmul(tokens, width, int(m.vocab_size))}
    if m.outside_embed:
        parts["embed_proj"] = matmul(tokens, fd, width)
    if cond:
        parts["time_cond"] = (matmul(1, fd, 4 * fd) + matmul(1, 4 * fd, fd)
                              + (6 * int(m.depth) + 2) * matmul(1, fd, width))
    parts = {k: passes * v for k, v in parts.items()}
    return scaled(method, parts, global_batch, "character (seq_len per block)", tokens)


@register("md4")
class MD4(CharMethod):
    """MD4 on characters (module docstring)."""

    attention_impls = ("xla", "cudnn", "blockwise", "bhtd")

    @classmethod
    def config_section(cls) -> dict:
        """MD4's text8 options (md4/configs/md4/text8.py)."""
        return dict(super().config_section(), noise_schedule="linear", cont_time=True, timesteps=1000,
                    antithetic=True, time_features="t", eps=dm.MD4_EPS, sampling_grid="cosine", sample_steps=1000)

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """Model sizes plus a known schedule, time features and sampling grid."""
        super().check_config(config, errors)
        own = config.get(cls.name, {})
        try:
            dm.md4_alpha(0.5, own.get("noise_schedule", "linear"))
        except ValueError as e:
            errors.append(f"{cls.name}.noise_schedule: {e}")
        if own.get("time_features", "t") not in ("t", "none"):
            errors.append(f"{cls.name}.time_features must be 't' or 'none', got {own.get('time_features')!r}")
        if own.get("sampling_grid", "cosine") not in ("cosine", "uniform"):
            errors.append(f"{cls.name}.sampling_grid must be 'cosine' or 'uniform'")
        if not own.get("cont_time", True) and int(own.get("timesteps", 0)) < 1:
            errors.append(f"{cls.name}.cont_time=False needs timesteps >= 1")

    @property
    def own(self):
        """This method's section of the config."""
        return self.config[self.name]

    @property
    def time_conditioned(self) -> bool:
        """Whether the network sees ``t`` (``time_features="t"``, MD4's default)."""
        return self.own.get("time_features", "t") == "t"

    def network(self, rngs):
        """MD4's LLaMA-style classifier: V + 1 input ids, V outputs, adaLN-zero on ``t``."""
        return self.llama(time_conditioning=self.time_conditioned)(rngs=rngs)

    def alpha(self, t):
        """``alpha_t`` of the configured schedule."""
        return dm.md4_alpha(t, self.own.noise_schedule, eps=self.own.eps)

    def denoise(self, model, zt, t, dropout_keys=None):
        """Logits [B, L, V] of ``x0`` given ``z_t`` (``t`` dropped when not time-conditioned)."""
        return model(zt, t if self.time_conditioned else None, dropout_keys=dropout_keys)

    def draw(self, x0, keys):
        """``(t, z_t, weight)``: antithetic times, Bernoulli-masked input, the ELBO weight (<= 0)."""
        own = self.own
        t = dm.md4_sample_t(self.time_key(keys), x0.shape[0], antithetic=own.antithetic)
        if own.cont_time:
            weight = dm.md4_dgamma_times_alpha(t, own.noise_schedule, eps=own.eps)
        else:
            t = dm.discretize_time(t, int(own.timesteps))
            weight = dm.md4_discrete_weight(t, int(own.timesteps), own.noise_schedule, eps=own.eps)
        zt, _ = dm.forward_sample(keys, x0, self.alpha(t), self.mask_id)
        return t, zt, weight

    def elbo(self, model, x0, keys, train: bool):
        """``(loss in bits per character, metrics, per-sequence nats [B], logits, z_t)``."""
        mask_keys, drop_keys = split_example_keys(keys, 2)
        t, zt, weight = self.draw(x0, mask_keys)
        logits = self.denoise(model, zt, t, drop_keys if train else None)
        loss, metrics = obj.md4_loss(logits, x0, zt, weight, mask_id=self.mask_id, alpha_0=self.alpha(0.0))
        per_seq = obj.md4_diffusion_loss(logits, x0, zt, weight, self.mask_id) + obj.md4_recon_loss(
            x0.shape[1], self.vocab_size, self.alpha(0.0))
        return loss, metrics, per_seq, logits, zt

    def loss(self, model, batch, keys, train, step=None):
        """MD4's NELBO in bits per character (``loss``), also in nats (``nats_per_char``)."""
        x0 = batch["input_ids"]
        loss, metrics, _, _, zt = self.elbo(model, x0, keys, train)
        metrics = dict(metrics, bits_per_char=loss, nats_per_char=loss * LN2,
                       mask_rate=jnp.mean((zt == self.mask_id).astype(jnp.float32)))
        return loss, metrics

    def heldout_sums(self, model, x0, keys) -> dict:
        """Summed per-sequence NELBO (diffusion + reconstruction) of held-out blocks."""
        _, _, per_seq, logits, zt = self.elbo(model, x0, keys, train=False)
        return _sums(per_seq, reconstruction_correct(logits, x0, zt, self.mask_id), x0.shape[1])

    def sample(self, model, key, num):
        """``num`` sequences [num, seq_len] (int32 character ids) from MD4's ancestral sampler
        (``sample_steps`` steps on ``sampling_grid``); :func:`maskjax.data.text.chars.decode` prints them."""
        keys = jax.random.split(key, num)
        model = self.eval_model(model)
        denoiser = lambda z, t: self.denoise(model, z, t)
        return dm.ancestral_sample(keys, denoiser, self.sample_length(), int(self.own.sample_steps), self.alpha,
                                   self.mask_id, grid=self.own.sampling_grid)

    def flops(self, global_batch):
        """The LLaMA stack on every position, once per example."""
        return llama_flops(self.config, global_batch, self.name, cond=self.time_conditioned)
