"""Mixup / CutMix with label smoothing, as timm's ``Mixup(mode="batch")`` in MAE fine-tuning.

MAE (``main_finetune.py``) uses ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
switch_prob=0.5, mode="batch", label_smoothing=0.1)`` with ``SoftTargetCrossEntropy``. Per
call (per batch):

1. with probability ``prob`` mixing happens at all; then CutMix is chosen with probability
   ``switch_prob`` (when both alphas are > 0), else Mixup;
2. ``lam ~ Beta(alpha, alpha)`` of the chosen method;
3. Mixup: ``x = lam * x + (1 - lam) * x.flip(0)``. CutMix: a box (``rand_bbox``: side ratio
   ``sqrt(1 - lam)``, centre uniform, clipped to the image) is pasted from ``x.flip(0)`` and
   ``lam`` is corrected to ``1 - box_area / image_area``;
4. targets: smoothed one-hots (``off = s / N``, ``on = 1 - s + off``) mixed as
   ``lam * y + (1 - lam) * y.flip(0)``.

Everything is pure JAX with static shapes (the box is a mask from iota comparisons), so it
runs under ``jit``. Deviations from timm:

- Randomness is a JAX key, not ``np.random``; the box side ``int(H * sqrt(1 - lam))`` is
  computed in float32 (timm: float64), which can differ by one pixel at exact boundaries.
- timm mixes each GPU's local batch separately (MAE: 32 images per GPU, each with its own
  ``lam``). One call here mixes the whole array with one ``lam``; ``groups=G`` splits the batch
  into G contiguous groups, each flipped within itself with its own draw, which reproduces the
  per-GPU behaviour (and keeps the flip device-local when the batch is sharded G ways).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _is_number(value) -> bool:
    """True for concrete Python / numpy scalars (not tracers), which can be validated eagerly."""
    return isinstance(value, (int, float, np.integer, np.floating))


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """timm ``one_hot(on=1 - s + s/N, off=s/N)``: float32 [B, N] rows that sum to 1."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_), on, off).astype(jnp.float32)


def mix_params(key: jax.Array, height: int, width: int, *, mixup_alpha: float = 0.8,
               cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5) -> dict:
    """Draws one batch's mixing parameters (timm ``_params_per_batch`` + ``cutmix_bbox_and_lam``).

    Returns a dict of scalars: ``applied`` (bool), ``use_cutmix`` (bool), ``lam`` (float32, the
    target weight of the un-flipped sample; CutMix's is area-corrected; 1.0 when not applied)
    and the box ``yl, yh, xl, xh`` (int32, half-open; empty unless CutMix). All four
    hyper-parameters may be traced values (one compilation serves every setting); concrete ones
    are validated (at least one alpha must be > 0).
    """
    if _is_number(mixup_alpha) and _is_number(cutmix_alpha) and mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("one of mixup_alpha > 0 or cutmix_alpha > 0 is required")
    mixup_alpha = jnp.asarray(mixup_alpha, jnp.float32)
    cutmix_alpha = jnp.asarray(cutmix_alpha, jnp.float32)
    k_apply, k_switch, k_lam, k_cy, k_cx = jax.random.split(key, 5)
    applied = jax.random.uniform(k_apply) < prob
    # timm: with both methods on, CutMix with prob switch_prob; with one, always that one.
    use_cutmix = jnp.where((mixup_alpha > 0) & (cutmix_alpha > 0),
                           jax.random.uniform(k_switch) < switch_prob, cutmix_alpha > 0)
    use_cutmix = jnp.logical_and(applied, use_cutmix)
    # Both Beta draws from one log-gamma call: Beta(a, a) = G1 / (G1 + G2) =
    # sigmoid(log G1 - log G2). jax.random.beta would build two gamma rejection loops, which
    # dominate compile time; log space keeps small alphas stable (as jax.random.beta does).
    # A disabled method (alpha 0) gets a placeholder alpha of 1; its lam is never used.
    safe_mix = jnp.where(mixup_alpha > 0, mixup_alpha, 1.0)
    safe_cut = jnp.where(cutmix_alpha > 0, cutmix_alpha, 1.0)
    log_g = jax.random.loggamma(k_lam, jnp.stack([safe_mix, safe_mix, safe_cut, safe_cut]))
    lam_mix = jax.nn.sigmoid(log_g[0] - log_g[1])
    lam_cut = jax.nn.sigmoid(log_g[2] - log_g[3])
    lam = jnp.where(use_cutmix, lam_cut, lam_mix).astype(jnp.float32)

    # timm rand_bbox: cut side int(H * sqrt(1 - lam)), centre uniform in [0, H), half-sides
    # cut // 2 on each side, clipped to the image.
    ratio = jnp.sqrt(jnp.clip(1.0 - lam, 0.0, 1.0))
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    cy = jax.random.randint(k_cy, (), 0, height)
    cx = jax.random.randint(k_cx, (), 0, width)
    yl = jnp.clip(cy - cut_h // 2, 0, height)
    yh = jnp.clip(cy + cut_h // 2, 0, height)
    xl = jnp.clip(cx - cut_w // 2, 0, width)
    xh = jnp.clip(cx + cut_w // 2, 0, width)
    # No box unless CutMix is active, so `box_mask` is all False for Mixup / no mixing.
    yh = jnp.where(use_cutmix, yh, yl)
    xh = jnp.where(use_cutmix, xh, xl)
    area = (yh - yl) * (xh - xl)
    lam_corrected = 1.0 - area.astype(jnp.float32) / float(height * width)
    lam = jnp.where(use_cutmix, lam_corrected, lam)
    lam = jnp.where(applied, lam, 1.0)
    return {"applied": applied, "use_cutmix": use_cutmix, "lam": lam,
            "yl": yl, "yh": yh, "xl": xl, "xh": xh}


def box_mask(params: dict, height: int, width: int) -> jax.Array:
    """Bool [H, W] mask of the CutMix box of ``params`` (iota comparisons, static shape)."""
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    return ((rows >= params["yl"]) & (rows < params["yh"]) & (cols >= params["xl"]) & (cols < params["xh"]))


def _mix_group(key, images, labels, num_classes, mixup_alpha, cutmix_alpha, prob, switch_prob,
               label_smoothing):
    height, width = images.shape[1], images.shape[2]
    params = mix_params(key, height, width, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                        prob=prob, switch_prob=switch_prob)
    lam = params["lam"]
    flipped = images[::-1]
    # Blend in float32 so low-precision inputs do not lose the mix weights.
    x = images.astype(jnp.float32)
    xf = flipped.astype(jnp.float32)
    mixed = lam * x + (1.0 - lam) * xf
    mask = box_mask(params, height, width)[None, :, :, None]
    cut = jnp.where(mask, xf, x)
    out = jnp.where(params["use_cutmix"], cut, mixed)
    out = jnp.where(params["applied"], out, x).astype(images.dtype)
    y = smooth_one_hot(labels, num_classes, label_smoothing)
    targets = lam * y + (1.0 - lam) * y[::-1]
    return out, targets, params


def mixup_cutmix(key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int, *,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, groups: int = 1,
                 return_params: bool = False):
    """timm ``Mixup(mode="batch")``: mixes ``images`` [B, H, W, C] with their batch flip.

    Args:
      key: PRNG key (one draw of lam / method / box per group).
      images: [B, H, W, C] array (any float dtype; returned in the same dtype).
      labels: int [B] class ids.
      num_classes: N, the width of the soft targets.
      mixup_alpha, cutmix_alpha: Beta parameters (0 disables that method).
      prob: probability of mixing at all; switch_prob: probability of CutMix when both are on.
      label_smoothing: folded into the targets (timm ``mixup_target``).
      groups: mix G contiguous sub-batches independently (timm's per-GPU mixing; see the module
        docstring). B / G must be even, as timm asserts for its batch.
      return_params: also return the drawn parameters (`mix_params` dicts, stacked [G]).

    Returns:
      ``(images, soft_targets [B, N] float32)``, plus the params dict when ``return_params``.
    """
    batch = images.shape[0]
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    if labels.shape != (batch,):
        raise ValueError(f"labels must be [B]={batch}, got shape {labels.shape}")
    if groups < 1 or batch % groups or (batch // groups) % 2:
        raise ValueError(f"batch {batch} must split into {groups} groups of even size")
    kwargs = dict(num_classes=num_classes, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                  prob=prob, switch_prob=switch_prob, label_smoothing=label_smoothing)
    if groups == 1:
        out, targets, params = _mix_group(key, images, labels, **kwargs)
        params = jax.tree.map(lambda v: v[None], params)
    else:
        def one(k, x, y):
            return _mix_group(k, x, y, **kwargs)

        per = batch // groups
        out, targets, params = jax.vmap(one)(
            jax.random.split(key, groups), images.reshape(groups, per, *images.shape[1:]),
            labels.reshape(groups, per))
        out = out.reshape(images.shape)
        targets = targets.reshape(batch, num_classes)
    if return_params:
        return out, targets, params
    return out, targets


def soft_cross_entropy(logits: jax.Array, soft_targets: jax.Array, reduction: str = "mean") -> jax.Array:
    """timm ``SoftTargetCrossEntropy``: ``sum(-targets * log_softmax(logits), -1)``, mean over batch.

    ``reduction="none"`` returns the per-example losses [B]. Computed in float32.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    losses = -jnp.sum(soft_targets.astype(jnp.float32) * logp, axis=-1)
    if reduction == "none":
        return losses
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return losses.mean()
