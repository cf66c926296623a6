"""MAGE (Li et al., CVPR 2023; LTH14/mage): masked generative encoder on VQ token grids, a
representation learner (linear probe, kNN) and a class-unconditional generator (spec section 10).

Training (``models_mage.py::forward_encoder / forward_decoder / forward_loss``), per batch:

1. one mask rate ``r ~ TruncNorm(mu=0.55, std=0.25, [0.5, 1.0])`` (mean 0.694) for the batch
   (:func:`truncnorm_rates`); ``num_masked = ceil(N r)``, ``num_dropped = ceil(N * 0.5)``;
2. per example, uniform noise ranks the ``N`` tokens: the ``num_masked`` lowest are masked, the
   ``num_dropped`` lowest of those are *dropped* (:func:`drop_and_mask`); masked tokens get the
   [MASK] id (``vocab - 1``), the fake class id ``codebook + 76`` is prepended;
3. the encoder sees the undropped positions, the decoder fills every masked position with the
   class-token output (:class:`~maskjax.models.mage.MaskedGenerativeEncoder`);
4. loss: label-smoothed (0.1) cross-entropy over the codebook logits (the first ``codebook``
   columns) at the masked positions only, averaged over the batch's masked tokens (the official
   ``LabelSmoothingCrossEntropy``: ``(1 - eps) NLL + eps mean_k(-log p_k)``;
   :func:`maskjax.methods.maskgit.masked_token_loss`).

Static shapes with a variable ratio. The number of *dropped* tokens is fixed by the minimum ratio
(a Python int from the config), so the encoder always sees ``K = 1 + N - ceil(N * min)`` tokens
(129 for 16x16 grids) and the decoder ``1 + N``: no padding or attention mask is needed. The
drawn ratio is a traced scalar that only decides how many of the kept tokens carry the [MASK] id
(``rank < num_masked`` on the per-example noise ranks) and which positions the loss counts, so
one compiled step serves every ratio. This is what the official code does too (its shapes vary
only through the fixed drop count).

Which batch shares a ratio. The official draws ``mask_ratio_generator.rvs(1)`` in each forward
call, i.e. once per GPU per step (64 independent ratios per step in the README's 64-GPU run, each
shared by 64 examples). Here the step's ratios come from ``fold_in(key(config.seed), step)``, so
every micro-batch of gradient accumulation, every device and a resumed run draw the same ones;
``mage.ratio_groups`` = G > 1 draws G ratios per step and each example takes one of them
uniformly with its own key (the ImageNet recipes set 64, the official's number of per-GPU draws;
the official groups are fixed slices of 64, these are random with the same expected size).
Outside training (``step`` None) the first example's key gives the ratio.

Features (the official linear probe, ``models_vit_mage.py`` with ``--global_pool`` as in the
README): all tokens (nothing masked) after ``[fake class]``, the encoder blocks, the mean over the
image positions *before* the encoder's final norm, then ``fc_norm``, a fresh LayerNorm that the
probe freezes at its init (weight 1, bias 0): a LayerNorm without affine parameters. ``pool="cls"``
gives the other official choice, the normed class-position output.

Sampling (``gen_img_uncond.py::gen_image``): MaskGIT's loop from ``[fake class] + [MASK] * N`` with
the full encoder (nothing dropped) and the decoder filling the [MASK] positions with the class
output; categorical sampling at temperature 1, ``mask_len = floor(N cos(pi/2 (t+1)/T))`` clamped
to ``[1, #unknown - 1]``, confidence ``log p + temp (1 - r) Gumbel``. It runs through
:func:`maskjax.masking.maskgit_decode.decode`; the official keeps the ``mask_len`` lowest
confidences with ``<=`` at sorted index ``mask_len - 1`` where MaskGIT uses ``<`` at index
``mask_len``: the same set unless two confidences tie (probability 0 with Gumbel noise; at the last
step, where the temperature is 0, the re-mask is discarded anyway). README: ``--temp 6.0
--num_iter 20``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from ml_collections import config_dict

from maskjax.data import image_tokens   # registers the "image_tokens" data modality
from maskjax.masking import maskgit_decode, maskgit_schedules
from maskjax.methods import register
from maskjax.methods.mae import compute_dtype
from maskjax.methods.maskgit import TokenGridMethod, masked_token_loss
from maskjax.methods.text_common import split_example_keys
from maskjax.models.flop_count import matmul, scaled, transformer_layer
from maskjax.models.layers import LN_EPS

# models_mage.py: mage_vit_base_patch16 / mage_vit_large_patch16 (decoder as wide as the encoder).
VIT_B = dict(variant="mage-vit-b", width=768, depth=12, heads=12, decoder_width=768, decoder_depth=8,
             decoder_heads=16, mlp_ratio=4.0, dropout=0.1, attention_dropout=0.1)
VIT_L = dict(variant="mage-vit-l", width=1024, depth=24, heads=16, decoder_width=1024, decoder_depth=8,
             decoder_heads=16, mlp_ratio=4.0, dropout=0.1, attention_dropout=0.1)
RATIO_STREAM = 0x4D414745   # "MAGE": the fold_in salt of the per-step ratio key
FEATURE_POOLS = ("avg", "cls")


# --- masking (pure jax) ------------------------------------------------------------------------------

def truncnorm_rates(key: jax.Array, shape: tuple[int, ...], *, mu: float = 0.55, std: float = 0.25,
                    low: float = 0.5, high: float = 1.0) -> jax.Array:
    """Mask rates from ``scipy.stats.truncnorm((low - mu) / std, (high - mu) / std, loc=mu, scale=std)``
    (the official ``mask_ratio_generator``), float32 in ``[low, high]``."""
    z = jax.random.truncated_normal(key, (low - mu) / std, (high - mu) / std, shape, jnp.float32)
    return jnp.clip(mu + std * z, low, high)


def num_dropped(length: int, min_ratio: float) -> int:
    """Tokens dropped from the encoder input: ``ceil(length * mask_ratio_min)`` (a static int)."""
    return int(math.ceil(length * float(min_ratio)))


def masked_counts(rates: jax.Array, length: int, min_ratio: float) -> jax.Array:
    """Masked tokens per example ``ceil(length * rate)`` (int32), never below the dropped count."""
    counts = jnp.ceil(jnp.asarray(rates, jnp.float32) * length).astype(jnp.int32)
    return jnp.clip(counts, num_dropped(length, min_ratio), length)


def drop_and_mask(noise: jax.Array, dropped: int, masked: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(drop bool [B, N], mask bool [B, N])``: the ``dropped`` and ``masked[b]`` tokens of smallest
    ``noise`` (the official ``noise <= sorted_noise[count - 1]``); the dropped ones are masked too.

    Ranks make the counts exact; the official redraws the noise when two values tie, here a tie
    (two equal float32 draws, about 0.4 % of 256-token rows) is broken by position.
    """
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return ranks < dropped, ranks < jnp.asarray(masked)[:, None]


@functools.lru_cache(maxsize=32)
def _jitted_decode(graphdef, codebook_size: int, mask_id: int, schedule: str):
    """One compiled decode per model structure and schedule; steps, start and temperature traced."""

    def run(state, rng, inputs, num_iter, start_iter, choice_temperature):
        model = nnx.merge(graphdef, state)
        logits_fn = lambda ids: model.generation_logits(ids, mask_id)[..., :codebook_size]
        return maskgit_decode.decode(inputs, rng, logits_fn, mask_token_id=mask_id, num_iter=num_iter,
                                     start_iter=start_iter, choice_temperature=choice_temperature,
                                     mask_scheduling_method=schedule)

    return jax.jit(run)


@register("mage")
class MAGE(TokenGridMethod):
    """MAGE on token grids (module docstring)."""

    modality = "image_tokens"

    @classmethod
    def config_section(cls) -> dict:
        """MAGE's own options (official defaults; spec 10 and the README).

        The mask-ratio distribution (``mask_ratio_min/max/mu/std``), ``ratio_groups`` (independent
        ratios per step, module docstring), ``label_smoothing`` 0.1, generation (README: 20 steps,
        choice temperature 6.0, cosine) and ``feature_pool`` (avg: the README's ``--global_pool``).
        """
        return dict(mask_ratio_min=0.5, mask_ratio_max=1.0, mask_ratio_mu=0.55, mask_ratio_std=0.25,
                    ratio_groups=1, label_smoothing=0.1, sample_steps=20, choice_temperature=6.0,
                    sample_schedule="cosine", feature_pool="avg")

    @classmethod
    def fill_config(cls, config: ml_collections.ConfigDict, **model: Any) -> ml_collections.ConfigDict:
        """Adds the ``model`` section (ViT-B unless ``model`` overrides) and the token ``data`` section
        (16x16 grids of a 1024-code tokenizer) to a ``method_config("mage")``; returns it."""
        config.model = ml_collections.ConfigDict(dict(VIT_B, **model))
        config.model.attention_impl = config_dict.placeholder(str)
        config.model.scan_layers = False
        config.data = image_tokens.token_data_section()
        return config

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """Model sizes, ratio distribution, smoothing, decoding and pooling options are valid."""
        m, own = config.get("model"), config.get(cls.name, {})
        if m is None or "decoder_depth" not in m:
            errors.append("method 'mage' needs its model and data sections: call "
                          "MAGE.fill_config(method_config('mage'))")
            return
        for width, heads in (("width", "heads"), ("decoder_width", "decoder_heads")):
            if m[width] % m[heads]:
                errors.append(f"model.{width} {m[width]} is not divisible by model.{heads} {m[heads]}")
        for field in ("dropout", "attention_dropout"):
            if not 0.0 <= m.get(field, 0.0) < 1.0:
                errors.append(f"model.{field} must be in [0, 1), got {m.get(field)}")
        low, high = own.get("mask_ratio_min", 0.5), own.get("mask_ratio_max", 1.0)
        if not 0.0 <= low <= high <= 1.0:
            errors.append(f"mage.mask_ratio_min/max must satisfy 0 <= min <= max <= 1, got {low}, {high}")
        if own.get("mask_ratio_std", 0.25) <= 0:
            errors.append(f"mage.mask_ratio_std must be > 0, got {own.get('mask_ratio_std')}")
        if not isinstance(own.get("ratio_groups"), int) or own.get("ratio_groups") < 1:
            errors.append(f"mage.ratio_groups must be an int >= 1, got {own.get('ratio_groups')!r}")
        if not 0.0 <= own.get("label_smoothing", 0.0) < 1.0:
            errors.append(f"mage.label_smoothing must be in [0, 1), got {own.get('label_smoothing')}")
        if not isinstance(own.get("sample_steps"), int) or own.get("sample_steps") < 1:
            errors.append(f"mage.sample_steps must be an int >= 1, got {own.get('sample_steps')!r}")
        if own.get("choice_temperature", 0.0) < 0:
            errors.append(f"mage.choice_temperature must be >= 0, got {own.get('choice_temperature')}")
        try:
            maskgit_schedules.canonical_method(own.get("sample_schedule", "cosine"))
        except ValueError as e:
            errors.append(f"mage.sample_schedule: {e}")
        if own.get("feature_pool", "avg") not in FEATURE_POOLS:
            errors.append(f"mage.feature_pool must be one of {FEATURE_POOLS}, got {own.get('feature_pool')!r}")

    # --- sizes and ids ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """``K + 1000 + 1`` (the official layout, whatever the dataset's classes)."""
        from maskjax.models.mage import mage_vocab

        return mage_vocab(self.codebook_size)[0]

    @property
    def fake_class_id(self) -> int:
        """The class-slot id prepended to every sequence: ``K + 1100 - 1024``."""
        from maskjax.models.mage import mage_vocab

        return mage_vocab(self.codebook_size)[1]

    @property
    def mask_id(self) -> int:
        """The [MASK] id, the vocabulary's last."""
        return self.vocab_size - 1

    @property
    def num_dropped(self) -> int:
        """Tokens dropped from every encoder input: ``ceil(N * mask_ratio_min)``."""
        return num_dropped(self.num_tokens, self.own.mask_ratio_min)

    @property
    def num_kept(self) -> int:
        """Encoder input length: the fake class token and the ``N - num_dropped`` undropped tokens."""
        return 1 + self.num_tokens - self.num_dropped

    # --- model -------------------------------------------------------------------------------------

    def build(self, rngs):
        """The :class:`~maskjax.models.mage.MaskedGenerativeEncoder` of ``config.model``."""
        from maskjax.models.mage import MaskedGenerativeEncoder

        m = self.config.model
        return MaskedGenerativeEncoder(
            self.vocab_size, self.num_tokens, width=m.width, depth=m.depth, heads=m.heads,
            decoder_width=m.decoder_width, decoder_depth=m.decoder_depth, decoder_heads=m.decoder_heads,
            mlp_ratio=m.mlp_ratio, dropout=m.dropout, attention_dropout=m.attention_dropout, rngs=rngs,
            dtype=compute_dtype(self.config.get("compute_dtype", "float32")), remat=self.config.get("remat", False),
            attention_impl=m.get("attention_impl", None), scan_layers=bool(m.get("scan_layers", False)))

    # --- masking -----------------------------------------------------------------------------------

    def mask_rates(self, keys: jax.Array, step: jax.Array | None) -> jax.Array:
        """The mask rate of each example [B]: one per step (or ``ratio_groups`` per step), module docstring."""
        own = self.own
        if step is None:
            shared = keys[0]
        else:
            shared = jax.random.fold_in(jax.random.fold_in(jax.random.key(int(self.config.seed)), RATIO_STREAM), step)
        groups = int(own.ratio_groups)
        rates = truncnorm_rates(shared, (groups,), mu=float(own.mask_ratio_mu), std=float(own.mask_ratio_std),
                                low=float(own.mask_ratio_min), high=float(own.mask_ratio_max))
        if groups == 1:
            return jnp.broadcast_to(rates[0], keys.shape)
        which = jax.vmap(lambda k: jax.random.randint(k, (), 0, groups))(keys)
        return rates[which]

    def training_masks(self, keys: jax.Array, step: jax.Array | None = None):
        """``(dropped, masked, rates)``: bool [B, N] twice and float32 [B] (module docstring, steps 1-2)."""
        noise_keys, group_keys = split_example_keys(keys, 2)
        rates = self.mask_rates(group_keys, step)
        noise = jax.vmap(lambda k: jax.random.uniform(k, (self.num_tokens,)))(noise_keys)
        counts = masked_counts(rates, self.num_tokens, self.own.mask_ratio_min)
        dropped, masked = drop_and_mask(noise, self.num_dropped, counts)
        return dropped, masked, rates

    def encoder_inputs(self, tokens: jax.Array, dropped: jax.Array, masked: jax.Array):
        """``(ids [B, 1+N], ids_keep [B, K], fill [B, 1+N])`` for the model from the masks.

        ``ids``: fake class id then the tokens, [MASK] at masked positions; ``ids_keep``: the
        undropped positions in increasing order (0 first); ``fill``: the masked positions (the
        class position never).
        """
        b = tokens.shape[0]
        body = jnp.where(masked, self.mask_id, tokens.astype(jnp.int32))
        ids = jnp.concatenate([jnp.full((b, 1), self.fake_class_id, jnp.int32), body], axis=1)
        kept = jnp.concatenate([jnp.ones((b, 1), bool), ~dropped], axis=1)
        ids_keep = jnp.argsort(~kept, axis=1, stable=True)[:, :self.num_kept].astype(jnp.int32)
        fill = jnp.concatenate([jnp.zeros((b, 1), bool), masked], axis=1)
        return ids, ids_keep, fill

    # --- training ----------------------------------------------------------------------------------

    def loss(self, model, batch, keys, train, step=None):
        """Label-smoothed CE on the masked tokens (module docstring); metrics include ``mask_rate``."""
        tokens = batch["tokens"]
        mask_keys, drop_keys = split_example_keys(keys, 2)
        dropped, masked, rates = self.training_masks(mask_keys, step)
        ids, ids_keep, fill = self.encoder_inputs(tokens, dropped, masked)
        logits = model(ids, ids_keep, fill, dropout_keys=drop_keys if train else None)
        loss, metrics = masked_token_loss(logits[:, 1:, :self.codebook_size], tokens, masked,
                                          float(self.own.label_smoothing))
        metrics["mask_rate"] = jnp.mean(rates)
        return loss, metrics

    # --- sampling ----------------------------------------------------------------------------------

    def sample_tokens(self, model, key: jax.Array, labels=None, *, num: int | None = None,
                      num_steps: int | None = None, choice_temperature: float | None = None,
                      schedule: str | None = None, start_tokens=None, start_iter: int = 0) -> jax.Array:
        """Class-unconditional generation: token grids int32 [B, h, w] (``gen_img_uncond.py``).

        MAGE has no class input: ``labels`` (accepted so that callers of MaskGIT's signature work)
        only sets the batch size, else ``num`` does. Defaults from the config (``mage.sample_steps``
        20, ``choice_temperature`` 6.0, ``sample_schedule`` cosine: the README's FID command).
        ``start_tokens`` [B, h, w] with ``mask_id`` at the positions to generate plus ``start_iter``
        edit partially known grids. ``key``: one PRNG key for the batch.
        """
        if labels is not None:
            b = int(jnp.asarray(labels).reshape(-1).shape[0])
        elif start_tokens is not None:
            b = int(start_tokens.shape[0])
        elif num is not None:
            b = int(num)
        else:
            raise ValueError("sample_tokens needs num, labels or start_tokens to know how many grids to make")
        if start_tokens is None:
            tokens = jnp.full((b, self.num_tokens), self.mask_id, jnp.int32)
        else:
            tokens = jnp.asarray(start_tokens, jnp.int32).reshape(b, self.num_tokens)
        inputs = jnp.concatenate([jnp.full((b, 1), self.fake_class_id, jnp.int32), tokens], axis=1)
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
        """``num`` generated token grids int32 [num, h, w] (the contract's ``sample``)."""
        return self.sample_tokens(model, key, num=num)

    # --- representations and cost --------------------------------------------------------------------

    def features(self, model, inputs, pool=None):
        """The official linear-probe feature [B, D] of clean token grids (module docstring).

        ``pool`` "avg" (default ``mage.feature_pool``): LayerNorm without affine of the mean block
        output over the image positions; "cls": the final-normed output at the class position.
        """
        pool = pool or self.own.feature_pool
        if pool not in FEATURE_POOLS:
            raise ValueError(f"MAGE features pool must be one of {FEATURE_POOLS}, got {pool!r}")
        tokens = inputs["tokens"] if isinstance(inputs, dict) else inputs
        tokens = jnp.asarray(tokens, jnp.int32).reshape(tokens.shape[0], -1)
        ids = jnp.concatenate([jnp.full((tokens.shape[0], 1), self.fake_class_id, jnp.int32), tokens], axis=1)
        hidden = model.encoder.hidden(ids)
        if pool == "cls":
            return model.encoder.final_norm(hidden)[:, 0].astype(jnp.float32)
        pooled = hidden[:, 1:].mean(axis=1).astype(jnp.float32)
        # fc_norm of the probe: a new LayerNorm(eps 1e-6) frozen at weight 1, bias 0.
        mean = pooled.mean(axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(pooled - mean), axis=-1, keepdims=True)
        return (pooled - mean) * jax.lax.rsqrt(var + LN_EPS)

    def feature_name(self, pool=None) -> str:
        """What :meth:`features` returns for ``pool``."""
        pool = pool or self.own.feature_pool
        return "normed class-position output" if pool == "cls" else "global-pool (LayerNorm of the mean block output)"

    def encoder(self, model):
        """The token encoder (embedding, blocks, norm)."""
        return model.encoder

    def flops(self, global_batch):
        """Encoder on the ``K`` kept positions, decoder on all ``1 + N``, MLM head over the vocabulary."""
        m = self.config.model
        width, dec = int(m.width), int(m.decoder_width)
        kept, positions = self.num_kept, self.num_tokens + 1
        parts = {"encoder": int(m.depth) * transformer_layer(kept, width, int(width * m.mlp_ratio)),
                 "decoder_embed": matmul(kept, width, dec),
                 "decoder": int(m.decoder_depth) * transformer_layer(positions, dec, int(dec * m.mlp_ratio)),
                 "mlm_head": matmul(positions, dec, width) + matmul(positions, width, self.vocab_size)}
        return scaled(self.name, parts, global_batch, "image token (h*w per image)", self.num_tokens)
