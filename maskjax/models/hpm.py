"""HPM (Hard Patches Mining, Wang et al., CVPR 2023): MAE plus a loss-predictor decoder and an EMA teacher.

Haochen-Wang409/HPM ``models_mae_learn_loss.py`` (specs/methods_vision.md section 10):

* the MAE encoder on the visible patches and MAE's decoder (the "reconstructor": ``decoder_blocks``,
  ``decoder_norm``, ``decoder_pred``), as :class:`~maskjax.models.mae.MaskedAutoencoder`;
* a second decoder branch of the same width and depth, the **loss predictor**
  (``decoder_blocks_losspred``, ``decoder_norm_losspred``, ``decoder_pred_losspred``: its own LN and
  Linear(dec -> p*p*C)), whose output averaged over the last axis is one predicted loss per token;
* both branches share ``decoder_embed``, the mask token and the decoder position embedding, and read
  the same input ``[cls + pos_cls, visible + pos, mask tokens + pos]``: visible and hidden tokens in
  ascending position order (torch's ``x[~mask]`` / ``x[mask]``), **not** MAE's unshuffle, so the
  predictions of the hidden tokens are the last ``M`` outputs;
* an EMA **teacher**: a copy of the whole model made at initialisation (timm ``ModelEma`` deep-copies
  the freshly initialised model), held as :class:`EMATeacher` variables. They are not
  ``nnx.Param``, so the trainer keeps them in the train state's ``extra`` (checkpointed, no
  gradient, sharded by the parameters' logical axes) and the method updates them after each step.

Parameter names follow the official state dict, top level (the model is the backbone of its
reconstructor, as ``MaskedAutoencoder``); the teacher lives under ``teacher``. :func:`hpm_flops` is
the analytic count of a step (the teacher's forward counted once: it has no backward pass).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskjax.masking import Mask
from maskjax.models.backbone import Backbone, apply_blocks
from maskjax.models.flop_count import TRAIN_MULTIPLIER, FlopCount, mae_flops, matmul, scaled, transformer_layer
from maskjax.models.layers import dense
from maskjax.models.mae import MaskedAutoencoder

LOSS_PREDICTOR_NAMES = ("decoder_blocks_losspred", "decoder_norm_losspred")


class EMATeacher(nnx.Variable):
    """An EMA copy of a parameter: non-gradient state (the train state's ``extra``), updated by the method."""


def teacher_copy(module: nnx.Module) -> nnx.Module:
    """A deep copy of ``module`` whose ``nnx.Param`` variables are :class:`EMATeacher` variables.

    Values and metadata (the logical sharding axes) are copied, so the teacher starts equal to the
    student and is sharded as it; buffers (fixed position embeddings) stay buffers.
    """
    copy = nnx.clone(module)
    for path, node in list(nnx.iter_graph(copy)):
        if not isinstance(node, nnx.Param):
            continue
        parent = copy
        for part in path[:-1]:
            parent = parent[part] if isinstance(parent, nnx.List) else getattr(parent, part)
        teacher = EMATeacher(node[...], **node.get_metadata())
        if isinstance(parent, nnx.List):
            parent[path[-1]] = teacher
        else:
            setattr(parent, path[-1], teacher)
    return copy


def visible_and_hidden_positions(hidden: jax.Array, num_visible: int) -> tuple[jax.Array, jax.Array]:
    """Positions of the visible and of the hidden tokens, each in ascending order: int32 [B, K], [B, L-K].

    ``hidden`` [B, L] (True = masked) must hide exactly ``L - num_visible`` tokens per row. This is
    torch's boolean indexing ``x[~mask]`` / ``x[mask]`` that the official model uses.
    """
    order = jnp.argsort(hidden.astype(jnp.int32), axis=1, stable=True).astype(jnp.int32)
    return order[:, :num_visible], order[:, num_visible:]


class HPMAutoencoder(MaskedAutoencoder):
    """MAE encoder, reconstructor and loss-predictor decoders, and (``teacher=True``) their EMA teacher.

    ``__call__(images, ids_visible, ids_hidden)`` returns ``(pred, loss_pred, aux)``: pixel
    predictions [B, M, p*p*C] and predicted losses [B, M] of the hidden tokens in the order of
    ``ids_hidden`` (ascending positions, :func:`visible_and_hidden_positions`); aux holds the
    encoder's cls feature. :meth:`predict_loss` is the teacher's pass on the whole image.
    """

    def __init__(self, variant: str, *, image_size: int, in_chans: int = 3, rngs: nnx.Rngs,
                 decoder_width: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 mlp_ratio: float = 4.0, dtype: Any = None, remat: bool | str = False,
                 attention_impl: str | None = None, scan_layers: bool = False, teacher: bool = True):
        super().__init__(variant, image_size=image_size, in_chans=in_chans, rngs=rngs,
                         decoder_width=decoder_width, decoder_depth=decoder_depth, decoder_heads=decoder_heads,
                         mlp_ratio=mlp_ratio, dtype=dtype, remat=remat, attention_impl=attention_impl,
                         scan_layers=scan_layers)
        # A Backbone builds the loss predictor's blocks and norm exactly as the reconstructor's; its
        # two attributes move to the top level so the parameter paths are the official ones.
        predictor = Backbone(decoder_width, decoder_depth, decoder_heads, mlp_ratio, rngs=rngs, dtype=dtype,
                             attention_impl=attention_impl, remat=remat, scan_layers=scan_layers,
                             names=LOSS_PREDICTOR_NAMES)
        self.decoder_blocks_losspred = predictor.decoder_blocks_losspred
        self.decoder_norm_losspred = predictor.decoder_norm_losspred
        patch = self.encoder.patch_size
        self.decoder_pred_losspred = dense(decoder_width, patch * patch * in_chans, ("embed", "patch"),
                                           rngs=rngs, dtype=dtype)
        if teacher:
            # Last, so the copy holds every student module and no teacher of its own.
            self.teacher = teacher_copy(self)

    def decoder_input(self, latent: jax.Array, ids_visible: jax.Array | None,
                      ids_hidden: jax.Array | None) -> jax.Array:
        """``[cls + pos_cls, visible + pos, mask token + pos]`` [B, 1 + L, Dd] (official ``forward_decoder``).

        ``latent`` is the encoder output [B, 1 + K, D] for the visible tokens at ``ids_visible``;
        None for both ids means every token is visible, in order (the teacher's pass).
        """
        x = self.decoder_embed(latent)
        pos = self.decoder_pos_embed[...].astype(x.dtype)  # [1, 1 + L, Dd]
        patch_pos = pos[0, 1:]
        if ids_visible is None:
            return jnp.concatenate([x[:, :1] + pos[:, :1], x[:, 1:] + patch_pos[None]], axis=1)
        visible = x[:, 1:] + jnp.take(patch_pos, ids_visible, axis=0)
        hidden = self.mask_token[...].astype(x.dtype) + jnp.take(patch_pos, ids_hidden, axis=0)
        return jnp.concatenate([x[:, :1] + pos[:, :1], visible, hidden], axis=1)

    def loss_predictor(self, x: jax.Array) -> jax.Array:
        """The loss-predictor branch on the decoder input [B, 1 + L, Dd]: one scalar per token [B, 1 + L]."""
        x = apply_blocks(self.decoder_blocks_losspred, x, self.remat)
        x = self.decoder_pred_losspred(self.decoder_norm_losspred(x))
        return x.astype(jnp.float32).mean(axis=-1)

    def __call__(self, images: jax.Array, ids_visible: jax.Array,
                 ids_hidden: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
        num_visible = ids_visible.shape[1]
        mask = Mask(ids_keep=ids_visible, ids_restore=None, mask=None)  # the encoder gathers ids_keep only
        latent, aux = self.encoder(images, mask)
        x = self.decoder_input(latent, ids_visible, ids_hidden)
        start = 1 + num_visible  # the hidden tokens are the last M of the sequence
        pred = self.decoder_pred(self.run_stack(x))[:, start:]
        loss_pred = self.loss_predictor(x)[:, start:]
        return pred, loss_pred, {"latent": latent, "cls": aux["cls"]}

    def predict_loss(self, images: jax.Array) -> jax.Array:
        """Predicted loss [B, L] of every patch with nothing masked (what the teacher computes for HPM's mask).

        Only the loss-predictor branch runs: the official teacher pass also runs the reconstructor,
        whose output the mask does not use.
        """
        latent, _ = self.encoder(images)
        return self.loss_predictor(self.decoder_input(latent, None, None))[:, 1:]


@dataclasses.dataclass
class NoGradFlopCount(FlopCount):
    """A :class:`FlopCount` where part of the forward pass (the EMA teacher's) has no backward pass."""

    no_grad_forward: float = 0.0

    @property
    def train(self) -> float:
        """3 x the trained parts' forward + 1 x the teacher's forward."""
        return TRAIN_MULTIPLIER * (self.forward - self.no_grad_forward) + self.no_grad_forward


def hpm_flops(config, global_batch: int) -> NoGradFlopCount:
    """Matmul FLOPs of one HPM step: MAE's count (flop_count.mae_flops), the loss-predictor branch
    on all ``1 + L`` decoder tokens, and the teacher's forward on the whole image (patch embedding,
    encoder on ``1 + L`` tokens, decoder embedding and loss-predictor branch; no backward)."""
    from maskjax.models.vit import parse_variant

    size, patch = parse_variant(config.model.variant)
    m = config.model
    tokens = (config.data.image_size // patch) ** 2
    pixels = patch * patch * m.get("in_chans", 3)
    width, dec = size.width, m.decoder_width
    predictor = (m.decoder_depth * transformer_layer(1 + tokens, dec, 4 * dec) + matmul(1 + tokens, dec, pixels))
    teacher = (matmul(tokens, pixels, width) + size.depth * transformer_layer(1 + tokens, width,
                                                                              int(width * size.mlp_ratio))
               + matmul(1 + tokens, width, dec) + predictor)
    parts = dict(mae_flops(config, 1).parts, loss_predictor=predictor, teacher_forward=teacher)
    count = scaled("hpm", parts, global_batch, "image patch (all L patches of an image)", tokens)
    return NoGradFlopCount(**dataclasses.asdict(count), no_grad_forward=teacher * global_batch)
