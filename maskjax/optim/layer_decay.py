"""Layer-wise lr decay + AdamW for ViT fine-tuning (facebookresearch/mae ``util/lr_decay.py``).

MAE fine-tuning puts every parameter in a (layer, decay) group:

- layer id (``get_layer_id_for_vit``): ``cls_token`` / ``pos_embed`` / ``patch_embed.*`` -> 0,
  ``blocks.k.*`` -> k + 1, everything else (``fc_norm``, ``head``, a final ``norm``) -> L + 1,
  with L = depth; the group's ``lr_scale = decay ** (L + 1 - layer_id)``;
- weight decay 0 for 1-D parameters and for timm ViT's ``no_weight_decay()`` names
  (``pos_embed``, ``cls_token``, ``dist_token``), ``wd`` for the rest;

and ``util/lr_sched.py`` sets each group's lr to ``schedule(step) * lr_scale`` every iteration.
PyTorch's AdamW decays with the *group* lr (``p -= lr_group * wd * p``), so the decoupled decay
is layer-scaled too; `layer_decay_adamw` reproduces that exactly.

Parameters are matched by path components, not by a fixed nesting, so the same functions work on
a bare ViT tree (``params["blocks"]["3"]...``) and on a classifier that nests it
(``params["encoder"]["blocks"]["3"]...``).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax

# timm VisionTransformer.no_weight_decay(): exempt from weight decay whatever their rank.
# timm ViT's no_weight_decay, plus BEiT/SimMIM's no_weight_decay_keywords (relative position tables).
NO_WEIGHT_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "dist_token", "relative_position_bias_table"})
# Parameters at layer 0 (official: name in ['cls_token', 'pos_embed'] or starts with 'patch_embed').
_LAYER0_NAMES = frozenset({"cls_token", "pos_embed", "patch_embed"})


def _key_str(key: Any) -> str:
    """One jax tree-path entry (DictKey, GetAttrKey, SequenceKey, ...) as a string."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_strings(path: tuple) -> tuple[str, ...]:
    """A jax key path (from ``tree_map_with_path``) as a tuple of strings."""
    return tuple(_key_str(k) for k in path)


def layer_id(path: tuple[str, ...], depth: int) -> int:
    """The official ``get_layer_id_for_vit`` on a path of name components.

    ``cls_token``, ``pos_embed`` or ``patch_embed`` anywhere in the path -> 0; ``blocks``
    followed by an integer k -> k + 1; anything else -> ``depth + 1``. The first matching
    component wins (e.g. ``("encoder", "blocks", "3", "mlp", "fc1", "kernel")`` -> 4).
    """
    path = tuple(str(p) for p in path)
    for i, part in enumerate(path):
        if part in _LAYER0_NAMES:
            return 0
        if part == "blocks" and i + 1 < len(path) and path[i + 1].isdigit():
            block = int(path[i + 1])
            if block >= depth:
                # A scale decay**(depth - block) >= 1 would silently boost the block's lr.
                raise ValueError(f"block index {block} in {'/'.join(path)} is >= depth {depth}")
            return block + 1
    return depth + 1


def layer_scales(params: Any, depth: int, decay: float) -> Any:
    """Tree (same structure as ``params``) of Python floats ``decay ** (depth + 1 - layer_id)``.

    For ViT-B (depth 12, decay 0.65): patch_embed / cls_token / pos_embed 0.65**13, block 0
    0.65**12, ..., block 11 0.65, and the head / fc_norm 1.0.
    """
    num_layers = depth + 1
    return jax.tree_util.tree_map_with_path(
        lambda path, _: float(decay ** (num_layers - layer_id(path_strings(path), depth))), params)


def finetune_decay_mask(params: Any) -> Any:
    """Tree of bools: True where AdamW applies weight decay in MAE fine-tuning.

    False for parameters with ndim <= 1 (biases, LayerNorm scales) and for any path containing
    ``pos_embed``, ``cls_token``, ``dist_token`` (timm ViT ``no_weight_decay``) or
    ``relative_position_bias_table`` (BEiT/SimMIM ``no_weight_decay_keywords``); ``ndim <= 1``
    rather than the official ``== 1`` so scalars (none in a ViT) are not decayed either.
    """
    def decayed(path, p):
        names = path_strings(path)
        return bool(len(p.shape) > 1 and not NO_WEIGHT_DECAY_NAMES.intersection(names))

    return jax.tree_util.tree_map_with_path(decayed, params)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Stateless transform multiplying each update leaf by the matching leaf of ``scales``."""
    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(init_fn, update_fn)


def layer_decay_adamw(schedule: Callable | float, params: Any, depth: int, layer_decay: float,
                      weight_decay: float, b1: float = 0.9, b2: float = 0.999,
                      eps: float = 1e-8) -> optax.GradientTransformation:
    """AdamW whose per-parameter lr is ``schedule(step) * layer_scale`` (MAE fine-tuning).

    The update of a parameter p with gradient-derived Adam direction ``a`` is
    ``-schedule(step) * scale_p * (a + wd_p * p)``, with ``wd_p = weight_decay`` where
    `finetune_decay_mask` is True and 0 elsewhere: exactly PyTorch AdamW with param groups
    ``lr = schedule * lr_scale`` (decoupled decay uses the group lr). ``params`` only supplies
    the tree structure, shapes and paths (abstract ``ShapeDtypeStruct`` leaves are fine); the
    updates passed to the optimiser must have the same structure.
    """
    scales = layer_scales(params, depth, layer_decay)
    mask = finetune_decay_mask(params)
    return optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask),
        # scale_by_learning_rate negates, so the layer scale below must stay positive.
        optax.scale_by_learning_rate(schedule),
        scale_by_tree(scales),
    )
