"""I-JEPA: Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture
(Assran et al., CVPR 2023; facebookresearch/ijepa; specs/methods_vision.md section 13).

Multi-block masking (:func:`maskjax.masking.multiblock.multiblock_masks`), a context encoder on the
context block, a predictor that predicts the EMA target encoder's layer-normed features of the
target blocks, smooth-L1 loss; the target encoder follows the context encoder by EMA with a
momentum linear from ``ema[0]`` to ``ema[1]`` (``src/train.py``). Networks: :mod:`maskjax.models.ijepa`.

**The per-batch draw.** The official collator draws one predictor and one context block size per
batch from a generator seeded by the iteration counter (the same on every GPU). Here the batch key
is ``fold_in(fold_in(key(seed), BATCH_KEY_TAG), step)`` with the optimizer ``step`` that the loss
receives: it depends on neither the batch split nor the mesh, and a resumed run draws the same
block sizes (the step is checkpointed). Outside training (``step`` None) the first example's key,
folded with the tag, stands in. Block *locations* come from each example's own key.

**Truncation groups and gradient accumulation.** Every mask is cut to the shortest one of its
truncation group (official: the per-GPU batch, 128 images in the IN-1K recipes). With
``truncate_group = G > 0`` the groups are strided (group ``g`` = examples ``g, g + B/G, ...``):
the trainer's micro-batch ``j`` under ``grad_accum = A`` holds examples ``j, j + A, ...``, so a
strided group of a micro-batch is exactly a strided group of the whole batch; with the shared
batch key the masks, and hence the loss and gradients, are those of one big batch. With
``truncate_group = 0`` the group is the whole (micro-)batch: under ``grad_accum > 1`` each
micro-batch is truncated to its own minimum, so the context lengths (not the block sizes, which are
shared) differ from one big batch's; the target length is ``h * w`` in every group, so the mean of
the micro-batch losses is still the batch mean.

**Static shapes.** The index arrays are cut to static bounds (the largest context block and the
largest target block any draw can give, :func:`maskjax.models.ijepa.max_context_tokens` /
``max_target_tokens``); entries past each mask's length are masked out of attention and weighted
0 in the loss (see the models module: exact, not approximate).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from maskjax.masking.multiblock import check_multiblock, multiblock_masks
from maskjax.methods import register
from maskjax.methods.base import Method, NotSupported
from maskjax.methods.mae import check_vit_config, compute_dtype

NAME = "ijepa"
BATCH_KEY_TAG = 0x494A4550  # "IJEP": the batch-draw stream, apart from init (0) and step (1) keys
POOLS = ("target_pooled", "pooled")


def smooth_l1(pred: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """``F.smooth_l1_loss(pred, target)`` (beta 1, mean) over the tokens with weight 1.

    ``pred``, ``target`` [..., K, D]; ``weights`` [..., K] (broadcastable): 0 for padded entries.
    """
    diff = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
    per = jnp.where(diff < 1.0, 0.5 * jnp.square(diff), diff - 0.5).sum(axis=-1)
    weights = jnp.broadcast_to(weights.astype(jnp.float32), per.shape)
    return jnp.sum(per * weights) / (jnp.maximum(jnp.sum(weights), 1.0) * pred.shape[-1])


def momentum(updates_before: jax.Array, total_steps: int, ema: tuple[float, float], ipe_scale: float) -> jax.Array:
    """EMA momentum of the ``i``-th target update (``i`` = updates before it, from 0), train.py's
    generator ``ema0 + i (ema1 - ema0) / (ipe * epochs * ipe_scale)`` with ``ipe * epochs`` =
    ``total_steps``; float32."""
    slope = (float(ema[1]) - float(ema[0])) / (total_steps * float(ipe_scale))
    return float(ema[0]) + jnp.asarray(updates_before, jnp.float32) * jnp.float32(slope)


def run_length(config) -> int | None:
    """The run's optimizer steps as the trainer counts them (``total_steps``, else ``epochs`` x
    ``num_train_examples // global_batch``, :func:`maskjax.train.loop.schedule_steps`); None when
    the config does not say (the dataset length is only known once it is opened)."""
    if config.get("total_steps") is not None:
        return int(config.total_steps)
    examples = config.data.get("num_train_examples")
    if examples:
        return int(round(config.epochs * (examples // config.global_batch)))
    return None


def ema_update(target: dict, online: dict, m: jax.Array) -> dict:
    """``target <- m target + (1 - m) online`` for every leaf of ``online`` (pure dicts); leaves of
    ``target`` that ``online`` lacks (fixed buffers such as the position table) stay."""
    out = dict(target)
    for key, value in online.items():
        if isinstance(value, dict):
            out[key] = ema_update(target[key], value, m)
        else:
            t = target[key]
            out[key] = (m * t + (1.0 - m) * value).astype(t.dtype)
    return out


def _pair(value) -> tuple[float, float]:
    return tuple(float(v) for v in value)


@register(NAME)
class IJEPA(Method):
    """I-JEPA (module docstring). Features: mean-pooled target-encoder tokens ("target_pooled",
    what I-JEPA evaluates) or context-encoder tokens ("pooled")."""

    modality = "image"

    @classmethod
    def config_section(cls) -> dict:
        """IN-1K ViT-H/14 recipe values (``configs/in1k_vith14_ep300.yaml``) as defaults."""
        return {
            "pred_depth": 12, "pred_width": 384,
            "pred_mask_scale": (0.15, 0.2), "enc_mask_scale": (0.85, 1.0), "aspect_ratio": (0.75, 1.5),
            "num_pred_masks": 4, "num_enc_masks": 1, "min_keep": 10, "allow_overlap": False,
            "ema": (0.996, 1.0), "ipe_scale": 1.0,
            # Examples per truncation group (official: the per-GPU batch); 0 = the whole micro-batch.
            "truncate_group": 0,
            # The constructors' rescale, undone by the official helper.init_model (models/ijepa.py).
            "fix_init_weight": False,
        }

    @classmethod
    def check_config(cls, config, errors: list[str]) -> None:
        """Variant and image size, predictor width, mask geometry, EMA range, run length, groups."""
        from maskjax.models.vit import parse_variant

        if "model" not in config or "variant" not in config.model:
            errors.append(f"{NAME} needs config.model.variant (a ViT such as 'H/14')")
            return
        check_vit_config(config, errors)
        own = config[NAME]
        try:
            size, patch = parse_variant(config.model.variant)
        except ValueError:
            return  # reported by check_vit_config
        width = own.pred_width
        if width < 4 or width % 4 or width % size.heads:
            errors.append(f"{NAME}.pred_width={width} must be a multiple of 4 (2-D sin-cos positions) and of the "
                          f"encoder's {size.heads} heads (the predictor uses the encoder's head count)")
        if own.pred_depth < 1:
            errors.append(f"{NAME}.pred_depth={own.pred_depth} must be at least 1")
        if own.num_pred_masks < 1 or own.num_enc_masks < 1:
            errors.append(f"{NAME}.num_pred_masks and num_enc_masks must be at least 1, got "
                          f"{own.num_pred_masks} and {own.num_enc_masks}")
        for field in ("pred_mask_scale", "enc_mask_scale", "aspect_ratio"):
            lo, hi = _pair(own[field])
            upper = math.inf if field == "aspect_ratio" else 1.0
            if not 0.0 < lo <= hi <= upper:
                errors.append(f"{NAME}.{field}={tuple(own[field])} must be (low, high) with 0 < low <= high"
                              + (" <= 1" if upper == 1.0 else ""))
                return
        size_ok = isinstance(config.data.image_size, int) and config.data.image_size % patch == 0
        if size_ok and own.num_pred_masks >= 1 and own.num_enc_masks >= 1:
            grid = config.data.image_size // patch
            try:
                check_multiblock(grid, grid, _pair(own.pred_mask_scale), _pair(own.enc_mask_scale),
                                 _pair(own.aspect_ratio), int(own.min_keep))
            except ValueError as e:
                errors.append(f"{NAME} masks on the {grid}x{grid} patch grid: {e} ({NAME}.min_keep, "
                              f"{NAME}.pred_mask_scale, {NAME}.enc_mask_scale)")
        ema0, ema1 = _pair(own.ema)
        if not 0.0 <= ema0 <= ema1 <= 1.0:
            errors.append(f"{NAME}.ema={tuple(own.ema)} must be (start, end) with 0 <= start <= end <= 1")
        if own.ipe_scale < 1.0:
            errors.append(f"{NAME}.ipe_scale={own.ipe_scale} < 1 would run the official momentum generator dry "
                          f"before the run ends; use >= 1 (1.0 in the official configs)")
        if run_length(config) is None:
            errors.append(f"{NAME}'s EMA momentum schedule needs the run length: set total_steps, or "
                          f"data.num_train_examples (with epochs)")
        group, accum = own.truncate_group, config.get("grad_accum", 1) or 1
        micro = config.global_batch // accum if accum and config.global_batch % accum == 0 else None
        if group < 0:
            errors.append(f"{NAME}.truncate_group={group} must be >= 0 (0: the whole micro-batch)")
        elif group and micro is not None and micro % group:
            errors.append(f"{NAME}.truncate_group={group} must divide the micro-batch global_batch / grad_accum = "
                          f"{micro}; use a divisor of it or 0 (the whole micro-batch)")

    def __init__(self, config):
        super().__init__(config)
        from maskjax.models.ijepa import max_context_tokens, max_target_tokens
        from maskjax.models.vit import parse_variant

        own = config[NAME]
        _, patch = parse_variant(config.model.variant)
        self.grid = config.data.image_size // patch
        self.pred_scale, self.enc_scale = _pair(own.pred_mask_scale), _pair(own.enc_mask_scale)
        self.aspect = _pair(own.aspect_ratio)
        self.npred, self.nenc = int(own.num_pred_masks), int(own.num_enc_masks)
        self.context_tokens = min(max_context_tokens(self.grid, self.enc_scale), self.grid * self.grid)
        self.target_tokens = max_target_tokens(self.grid, self.pred_scale, self.aspect)

    def build(self, rngs):
        """Builds :class:`~maskjax.models.ijepa.IJEPAModel` from ``config.model`` and ``config.ijepa``."""
        from maskjax.models.ijepa import IJEPAModel

        m, c, own = self.config.model, self.config, self.config[NAME]
        return IJEPAModel(m.variant, image_size=c.data.image_size, in_chans=m.get("in_chans", 3),
                          pred_width=own.pred_width, pred_depth=own.pred_depth, rngs=rngs,
                          dtype=compute_dtype(c.get("compute_dtype", "float32")), remat=c.get("remat", False),
                          attention_impl=m.get("attention_impl", None),
                          scan_layers=bool(m.get("scan_layers", False)), fix_init=bool(own.fix_init_weight))

    # --- masks -----------------------------------------------------------------------------------

    def batch_key(self, keys: jax.Array, step: jax.Array | None) -> jax.Array:
        """The key of the batch-wide block sizes (module docstring)."""
        if step is None:
            return jax.random.fold_in(keys[0], BATCH_KEY_TAG)
        root = jax.random.fold_in(jax.random.key(self.config.seed), BATCH_KEY_TAG)
        return jax.random.fold_in(root, step)

    def masks(self, keys: jax.Array, step: jax.Array | None = None) -> dict:
        """Multi-block masks cut to the static bounds, per example.

        Returns ``context_ids`` [B, nenc, Kc], ``context_valid`` [B, Kc], ``target_ids``
        [B, npred, Kt], ``target_valid`` [B, Kt] and the lengths ``context_len`` / ``target_len`` [B].
        """
        own = self.config[NAME]
        batch = keys.shape[0]
        group = int(own.truncate_group) or batch
        if batch % group:
            raise ValueError(f"{NAME}.truncate_group={group} does not divide the (micro-)batch of {batch}")
        groups = batch // group
        # Strided groups: group g holds examples g, g + groups, ... (accumulation-invariant).
        grouped = keys.reshape(group, groups).swapaxes(0, 1)
        draw = lambda k: multiblock_masks(
            self.batch_key(keys, step), k, self.grid, self.grid, self.pred_scale, self.enc_scale, self.aspect,
            self.npred, self.nenc, int(own.min_keep), bool(own.allow_overlap))
        out = jax.vmap(draw)(grouped)
        per_example = lambda x: x.swapaxes(0, 1).reshape((batch,) + x.shape[2:])
        per_group = lambda n: jnp.broadcast_to(n[None, :], (group, groups)).reshape(batch)
        kc, kt = self.context_tokens, self.target_tokens
        context_len, target_len = per_group(out.enc_len), per_group(out.pred_len)
        return {
            "context_ids": per_example(out.enc_ids)[..., :kc],
            "context_valid": jnp.arange(kc)[None, :] < context_len[:, None],
            "target_ids": per_example(out.pred_ids)[..., :kt],
            "target_valid": jnp.arange(kt)[None, :] < target_len[:, None],
            "context_len": context_len, "target_len": target_len,
        }

    # --- training --------------------------------------------------------------------------------

    def predict(self, model, images: jax.Array, masks: dict) -> tuple[jax.Array, jax.Array]:
        """(predictions [B, nenc, npred, Kt, D], targets [B, 1, npred, Kt, D]) for ``masks``."""
        b = images.shape[0]
        target = model.target_features(images)                                  # [B, L, D]
        target_ids = masks["target_ids"]                                        # [B, M, Kt]
        target = jnp.take_along_axis(target[:, None], target_ids[..., None], axis=2)[:, None]
        context = model.encoder.context(images, masks["context_ids"], masks["context_valid"])
        n, m = self.nenc, self.npred
        rep = lambda x: jnp.broadcast_to(x[:, None], (b, n) + x.shape[1:]).reshape((b * n,) + x.shape[1:])
        pred = model.predictor(context, masks["context_ids"].reshape(b * n, -1), rep(masks["context_valid"]),
                               rep(target_ids), rep(masks["target_valid"]))
        return pred.reshape((b, n, m) + pred.shape[2:]), target

    def loss(self, model, batch, keys, train, step=None):
        """Smooth-L1 between the predictor's output and the layer-normed target features."""
        masks = self.masks(keys, step)
        pred, target = self.predict(model, batch["image"], masks)
        loss = smooth_l1(pred, target, masks["target_valid"][:, None, None, :])
        metrics = {"loss": loss,
                   "context_tokens": jnp.mean(masks["context_len"].astype(jnp.float32)),
                   "target_tokens": jnp.mean(masks["target_len"].astype(jnp.float32))}
        if step is not None:
            metrics["ema_momentum"] = self.momentum(step)
        return loss, metrics

    def momentum(self, updates_before: jax.Array) -> jax.Array:
        """The momentum of the target update that follows optimizer step ``updates_before + 1``."""
        own = self.config[NAME]
        return momentum(updates_before, run_length(self.config), _pair(own.ema), float(own.ipe_scale))

    def after_step(self, params, extra, step):
        """``target <- m target + (1 - m) encoder`` with the momentum of update ``step - 1``."""
        m = self.momentum(step - 1)
        return {**extra, "target_encoder": ema_update(extra["target_encoder"], params["encoder"], m)}

    # --- representations -------------------------------------------------------------------------

    def features(self, model, inputs, pool=None):
        """Mean of the final-norm tokens of the target ("target_pooled") or context ("pooled") encoder."""
        pool = pool or POOLS[0]
        if pool not in POOLS:
            raise NotSupported(f"{NAME} offers the features {POOLS} (its encoders have no cls token), not {pool!r}")
        encoder = model.target_encoder if pool == "target_pooled" else model.encoder
        return encoder(inputs)[1]["pooled"]

    def feature_name(self, pool=None):
        """"target_pooled" (default) or "pooled"."""
        return pool or POOLS[0]

    def encoder(self, model):
        """A standalone ViT whose parameters are the **target** encoder's weights (I-JEPA evaluates
        the target encoder; its own variables are EMA state, not parameters, so fine-tuning gets a
        copy it can train). The context encoder is ``model.encoder``."""
        return model.target_as_encoder()

    def flops(self, global_batch):
        """Analytic matmul FLOPs at the static token bounds; the target encoder counts once (no backward)."""
        from maskjax.models.ijepa import ijepa_flops

        own, c = self.config[NAME], self.config
        return ijepa_flops(c.model.variant, image_size=c.data.image_size, in_chans=c.model.get("in_chans", 3),
                           pred_width=own.pred_width, pred_depth=own.pred_depth,
                           context_tokens=self.context_tokens, target_tokens=self.target_tokens,
                           npred=self.npred, nenc=self.nenc, global_batch=global_batch)
