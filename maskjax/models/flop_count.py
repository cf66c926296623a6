"""Analytic model FLOPs per training step, from the config alone (no tracing, no devices).

Each method's ``flops(global_batch)`` (the method contract) returns one of these counts; the
primitives :func:`matmul`, :func:`transformer_layer` and :func:`scaled` let a new method write its
own in a few lines.

Conventions (the ones MFU figures in the literature use, e.g. PaLM appendix B, MaxText):

- Only matrix multiplications count, at **2 FLOPs per multiply-add**: a ``[m, k] @ [k, n]``
  product is ``2 * m * k * n``. Attention counts its two ``N x N`` products
  (``q @ k^T`` and ``probs @ v``: ``4 * N^2 * D`` per sequence and layer); softmax, LayerNorm,
  GELU, embedding gathers, masking, the loss and the optimizer update do not count.
- A training step is **3 x the forward pass**: the backward pass costs two matmuls (gradient
  with respect to the input and to the weight) per forward matmul.

What is counted per method (per example; multiply by the global batch):

- ``mae``: the patch embedding on all ``L`` patches, the encoder blocks on the ``1 + K`` visible
  tokens (``K = int(L * (1 - ratio))``, cls included), the decoder embedding on those, the
  decoder blocks on all ``1 + L`` tokens and the pixel prediction on them.
- ``bert``: the encoder on the ``seq_len`` block (padding included: XLA computes it), the MLM
  head on the ``max_predictions`` gathered positions (dense + tied decoder over the
  vocabulary), plus the pooler/NSP head and SpanBERT's SBO head when the model has them.
- ``electra``: generator (width ``generator_fraction``) with its MLM head on the predicted
  positions, discriminator on every token with its replaced-token head.
- ``videomae`` / ``videomae_v2`` / ``mae_st`` / ``audiomae``: see their functions.

XLA's ``compiled.cost_analysis()["flops"]`` also counts elementwise work (softmax, norms, the
AdamW update: about 10-20 FLOPs per parameter) and misses a few backward matmuls that are not
needed (no input gradient for the patch embedding), so it is somewhat above this number; for
models whose width is in the hundreds the two agree within a few per cent (see
``tests/test_bench.py`` and docs/performance.md).
"""

from __future__ import annotations

import dataclasses

TRAIN_MULTIPLIER = 3  # forward + backward (2 matmuls per forward matmul)


@dataclasses.dataclass
class FlopCount:
    """Forward/training FLOPs of one step at a global batch, with a per-part breakdown."""

    method: str
    global_batch: int
    forward: float                  # one forward pass over the global batch
    parts: dict[str, float]         # forward FLOPs by part (they sum to ``forward``)
    token: str                      # what a "token" is for this method
    tokens_per_example: int

    @property
    def train(self) -> float:
        """FLOPs of one training step (3 x forward)."""
        return TRAIN_MULTIPLIER * self.forward


def matmul(m: int, k: int, n: int) -> float:
    """FLOPs of ``[m, k] @ [k, n]`` (2 per multiply-add)."""
    return 2.0 * m * k * n


def transformer_layer(tokens: int, width: int, mlp_width: int) -> float:
    """Forward FLOPs of one standard transformer layer on one sequence of ``tokens``.

    q/k/v and output projections (``4 * width^2`` weights), the two attention products and a
    two-matrix MLP of hidden size ``mlp_width``. The number of heads does not change the count.
    """
    projections = matmul(tokens, width, 4 * width)
    attention = 2 * matmul(tokens, width, tokens)  # scores q@k^T and probs@v
    mlp = 2 * matmul(tokens, width, mlp_width)
    return projections + attention + mlp


def mae_flops(config, global_batch: int) -> FlopCount:
    """MAE: patch embed + encoder on visible tokens + decoder on all tokens (module docstring)."""
    from maskjax.masking.random import num_kept
    from maskjax.models.vit import parse_variant

    size, patch = parse_variant(config.model.variant)
    m = config.model
    grid = config.data.image_size // patch
    patches = grid * grid
    pixels = patch * patch * m.get("in_chans", 3)
    visible = 1 + num_kept(patches, float(config.masking.ratio))  # + cls token
    width, dec = size.width, m.decoder_width
    parts = {
        "patch_embed": matmul(patches, pixels, width),
        "encoder": size.depth * transformer_layer(visible, width, int(width * size.mlp_ratio)),
        "decoder_embed": matmul(visible, width, dec),
        "decoder": m.decoder_depth * transformer_layer(1 + patches, dec, int(dec * 4.0)),
        "decoder_pred": matmul(1 + patches, dec, pixels),
    }
    return scaled("mae", parts, global_batch, "image patch (all L patches of an image)", patches)


def _text_stack(cfg, tokens: int) -> float:
    """A BERT-style transformer stack on one sequence, with ELECTRA's embedding projection."""
    project = matmul(tokens, cfg.embedding_size, cfg.hidden) if cfg.embedding_size != cfg.hidden else 0.0
    return project + cfg.layers * transformer_layer(tokens, cfg.hidden, cfg.ffn)


def _mlm_head(in_width: int, cfg, predictions: int) -> float:
    """Dense(in -> E) + tied decoder (E -> vocabulary) on the gathered predicted positions."""
    return matmul(predictions, in_width, cfg.embedding_size) + matmul(predictions, cfg.embedding_size, cfg.vocab_size)


def _text_cfg(config):
    from maskjax.models.bert import text_config

    m = config.model
    return text_config(m.variant, vocab_size=m.vocab_size, max_positions=m.max_positions,
                       type_vocab_size=m.type_vocab_size)


def bert_flops(config, global_batch: int) -> FlopCount:
    """BERT family: encoder on the block + MLM head on ``max_predictions`` (+ NSP, SBO)."""
    cfg = _text_cfg(config)
    tokens = int(config.data.seq_len)
    predictions = int(config.masking.max_predictions)
    m = config.model
    parts = {"encoder": _text_stack(cfg, tokens), "mlm_head": _mlm_head(cfg.hidden, cfg, predictions)}
    if m.get("nsp", False):
        parts["pooler_nsp"] = matmul(1, cfg.hidden, cfg.hidden) + matmul(1, cfg.hidden, 2)
    if m.get("sbo", False):
        h, position_dim = cfg.hidden, 200  # BertPretrainer's sbo_position_dim default
        parts["sbo_head"] = (matmul(predictions, 2 * h + position_dim, h) + matmul(predictions, h, h)
                             + matmul(predictions, h, cfg.vocab_size))
    return scaled("bert", parts, global_batch, "text token (seq_len positions of a block)", tokens)


def electra_flops(config, global_batch: int) -> FlopCount:
    """ELECTRA: generator + its MLM head on the predictions, discriminator + RTD head on all tokens."""
    from maskjax.models.electra import get_generator_config

    disc = _text_cfg(config)
    gen = get_generator_config(disc, float(config.model.get("generator_fraction", 0.25)))
    tokens = int(config.data.seq_len)
    predictions = int(config.masking.max_predictions)
    parts = {
        "generator": _text_stack(gen, tokens),
        "generator_head": _mlm_head(gen.hidden, gen, predictions),
        "discriminator": _text_stack(disc, tokens),
        "discriminator_head": matmul(tokens, disc.hidden, disc.hidden) + matmul(tokens, disc.hidden, 1),
    }
    return scaled("electra", parts, global_batch, "text token (seq_len positions of a block)", tokens)


def scaled(method: str, per_example: dict[str, float], batch: int, token: str, tokens: int) -> FlopCount:
    """A :class:`FlopCount` from per-example forward FLOPs by part, scaled to a global ``batch``."""
    parts = {k: v * batch for k, v in per_example.items()}
    return FlopCount(method=method, global_batch=batch, forward=sum(parts.values()), parts=parts,
                     token=token, tokens_per_example=tokens)


def _video_grid(config) -> tuple[int, int, int, int]:
    """(temporal slots, spatial tokens per slot, patch, tubelet) of a video config."""
    from maskjax.models.vit import parse_variant

    _, patch = parse_variant(config.model.variant)
    tubelet = int(config.model.tubelet_size)
    grid = config.data.image_size // patch
    return config.data.num_frames // tubelet, grid * grid, patch, tubelet


def videomae_flops(config, global_batch: int) -> FlopCount:
    """VideoMAE / V2: tubelet embed on all L tokens, encoder on the visible ones (tube masking
    keeps ``S - int(ratio * S)`` per slot; MAE-style random keeps ``int(L(1 - ratio))``), the
    decoder on visible + reconstructed tokens (the hidden ones, or V2's decoded half) and the
    pixel head on the reconstructed ones. No cls token.
    """
    from maskjax.masking.random import num_kept
    from maskjax.models.vit import parse_variant

    size, _ = parse_variant(config.model.variant)
    slots, spatial, patch, tubelet = _video_grid(config)
    tokens = slots * spatial
    ratio = float(config.masking.ratio)
    if config.masking.get("kind", "tube") == "tube":
        visible = slots * (spatial - int(ratio * spatial))
    else:
        visible = num_kept(tokens, ratio)
    decoder_ratio = float(config.masking.get("decoder_ratio", 0.0) or 0.0)
    decoded = tokens - int(round(tokens * decoder_ratio)) if decoder_ratio else tokens - visible
    m, width = config.model, size.width
    pixels = tubelet * patch * patch * 3
    dec = m.decoder_width
    parts = {
        "patch_embed": matmul(tokens, pixels, width),
        "encoder": size.depth * transformer_layer(visible, width, int(width * size.mlp_ratio)),
        "encoder_to_decoder": matmul(visible, width, dec),
        "decoder": m.decoder_depth * transformer_layer(visible + decoded, dec, 4 * dec),
        "decoder_pred": matmul(decoded, dec, pixels),
    }
    return scaled(config.method, parts, global_batch, "video tubelet (all tokens of a clip)", tokens)


def mae_st_flops(config, global_batch: int) -> FlopCount:
    """MAE-ST: MAE over all spacetime tokens with a cls token; the head predicts ``pred_t_dim``
    target frames (``tubelet * pred_t_dim / num_frames`` per token)."""
    from maskjax.masking.random import num_kept
    from maskjax.models.vit import parse_variant

    size, _ = parse_variant(config.model.variant)
    slots, spatial, patch, tubelet = _video_grid(config)
    tokens = slots * spatial
    visible = 1 + num_kept(tokens, float(config.masking.ratio))
    m, width, dec = config.model, size.width, config.model.decoder_width
    t_pred = tubelet * int(m.pred_t_dim) // config.data.num_frames
    pixels = t_pred * patch * patch * 3
    parts = {
        "patch_embed": matmul(tokens, tubelet * patch * patch * 3, width),
        "encoder": size.depth * transformer_layer(visible, width, int(width * size.mlp_ratio)),
        "decoder_embed": matmul(visible, width, dec),
        "decoder": m.decoder_depth * transformer_layer(1 + tokens, dec, 4 * dec),
        "decoder_pred": matmul(1 + tokens, dec, pixels),
    }
    return scaled("mae_st", parts, global_batch, "video tubelet (all tokens of a clip)", tokens)


def audiomae_flops(config, global_batch: int) -> FlopCount:
    """AudioMAE: MAE on the filterbank patches; the Swin decoder (16 blocks) attends within
    windows of ``window[0] * window[1]`` tokens, the global decoder over all tokens."""
    from maskjax.masking.random import num_kept
    from maskjax.models.vit import parse_variant

    size, patch = parse_variant(config.model.variant)
    m, d = config.model, config.data
    tokens = (d.target_length // patch) * (d.num_mel_bins // patch)
    ratio = float(config.masking.ratio)
    if config.masking.get("kind", "random") == "time_freq":
        rows, cols = d.target_length // patch, d.num_mel_bins // patch
        kept = int(rows * (1 - config.masking.mask_t_prob)) * int(cols * (1 - config.masking.mask_f_prob))
    else:
        kept = num_kept(tokens, ratio)
    visible, width, dec = 1 + kept, size.width, m.decoder_width
    if m.get("decoder_mode", "swin") == "swin":
        window = int(m.window[0]) * int(m.window[1])
        layer = matmul(tokens, dec, 4 * dec) + 2 * matmul(tokens, dec, window) + 2 * matmul(tokens, dec, 4 * dec)
        decoder = 16 * layer
    else:
        decoder = m.decoder_depth * transformer_layer(1 + tokens, dec, 4 * dec)
    parts = {
        "patch_embed": matmul(tokens, patch * patch, width),
        "encoder": size.depth * transformer_layer(visible, width, int(width * size.mlp_ratio)),
        "decoder_embed": matmul(visible, width, dec),
        "decoder": decoder,
        "decoder_pred": matmul(tokens, dec, patch * patch),
    }
    return scaled("audiomae", parts, global_batch, "spectrogram patch (all tokens of a clip)", tokens)
