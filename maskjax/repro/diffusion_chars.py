"""Masked diffusion LMs against an autoregressive LM on Tiny Shakespeare characters, at equal compute:
``maskjax repro diffusion_chars``.

Rows: MDLM, MD4 and GenMD4 (each with its own objective, schedule, network family and sampler) and
the causal LM baseline, all put on one shared setup by :func:`diffusion_comparison` (applied as
row overrides on each method's ``:shakespeare`` config): 27-symbol text8-style characters of Tiny
Shakespeare (the last 10 % held out, 827 blocks), 128-character disjoint blocks, batch 32 for
:data:`STEPS` steps (the same characters seen by every row), the same AdamW / warm-up + cosine /
clipping / EMA, and a backbone of the same shape: width 96, 4 blocks, 2 heads of 48, MLP hidden
256 (8 x width^2 weights per block in every family: DiT's 4x GELU MLP, LLaMA's GLU of 256), dropout
0. MD4, GenMD4 and the AR model share MD4's LLaMA-style stack (GLU MLP, embedding of 48 projected
to 96, depth-scaled init); the AR model drops the time conditioning and masks attention causally.
MDLM keeps its DDiT (LayerNorm, GELU, adaLN from a 48-wide condition, no time conditioning).
Per-token compute is equal (``Method.flops`` within 2 %); the time-conditioning layers (adaLN,
per sequence, not per token) are the only parameters that differ (the AR model has none).
GenMD4 pushes two masked draws of every block through the network, as the paper does, so its
step costs about twice the others' at the same characters seen.

Metrics (``maskjax/eval/diffusion_evals.py``): held-out bits per character (the negative ELBO, an
upper bound, for the diffusion rows, averaged over 4 time/mask draws per block; the exact NLL for
the AR row) and sample quality at 8, 32 and 128 sampling steps (bigram total variation to the
held-out text, and per-sample character entropy). Floors: a uniform predictor (log2 27 bits/char),
the training text's character frequencies (unigram cross-entropy), and for the sample columns
64 random training blocks scored like the samples (the distance that finite real text already has).

Sizing (one row-seed on 2 CPU cores): the training step of a 96 x 4 model on 32 x 128 characters
is 13.5 GFLOP (analytic, 3 x forward; GenMD4 about 2x) and measured 0.57 CPU-s on this machine's
AMD EPYC (about 0.3 s wall on 2 free cores); 600 steps = 2.46M characters seen (2.6 epochs of the
954k training characters) = about 340 CPU-s. Evaluation: 827 held-out blocks x 4 draws of forward
passes (about 20 CPU-s) and 64 samples x (8 + 32 + 128) steps of forward passes at batch 64 (about
70 CPU-s); compilation about 40 CPU-s. Total about 470 CPU-s, i.e. about 4 min wall on 2 free cores
per row-seed (GenMD4 about 7 min; 12 row-seeds in about an hour). Measured (MD4, seed 0): 479 CPU-s
in all (2,016 s wall on 2 cores shared with a load of about 13), test 3.365 +- 0.013 bits/char (bound),
training loss still falling: the rows compare early training at equal compute, not converged models.
``--smoke``: one seed, a 1-block model on 32-character blocks, 2 steps, 2 evaluation batches and 4
samples at 4 steps; about 120 CPU-s cold, most of it compiling the four training steps.
"""

from __future__ import annotations

import dataclasses

from maskjax.repro.ledger import Claim, Row, Table, register_table

STEPS = 600
SEQ_LEN, BATCH = 128, 32
WIDTH, DEPTH, HEADS = 96, 4, 2          # 2 heads of 48 (even: rotary)
LR, WARMUP = 1e-3, STEPS // 20
EMA = 0.99                              # a 100-step horizon: 0.99^600 leaves nothing of the init

_CONFIGS = {"mdlm": "configs/mdlm/owt.py:shakespeare", "md4": "configs/md4/text8.py:shakespeare",
            "genmd4": "configs/genmd4/text8.py:shakespeare", "causal_lm": "configs/causal_lm/chars.py"}


def comparison_overrides(method: str) -> dict:
    """The shared setup as dotted overrides for ``method``'s character config (module docstring)."""
    if method not in _CONFIGS:
        raise ValueError(f"no comparison setup for method {method!r}; known: {sorted(_CONFIGS)}")
    shared = {
        "data.seq_len": SEQ_LEN, "data.train_stride": None, "data.heldout_fraction": 0.1,
        "global_batch": BATCH, "grad_accum": 1, "total_steps": STEPS, "compute_dtype": "float32",
        # One optimiser for every row: AdamW (the papers' betas), warm-up then cosine to 0, clipping
        # at 1 (MDLM's; the diffusion losses' 1/t weights make occasional large gradients).
        "optim.name": "adamw", "optim.base_lr": LR, "optim.lr_batch_denominator": 0, "optim.b1": 0.9,
        "optim.b2": 0.999, "optim.eps": 1e-8, "optim.weight_decay": 0.0, "optim.schedule": "cosine",
        "optim.min_lr": 0.0, "optim.grad_clip": 1.0, "optim.warmup_steps": WARMUP,
        f"{method}.ema_decay": EMA, f"{method}.ema_warmup": False,
        "checkpoint.every_steps": STEPS, "log_every_steps": 50, "model.dropout": 0.0,
        "model.depth": DEPTH, "model.heads": HEADS,
    }
    if method == "mdlm":
        model = {"model.variant": f"dit-{WIDTH}x{DEPTH}", "model.width": WIDTH, "model.cond_dim": WIDTH // HEADS,
                 "model.mlp_ratio": 4}
    else:
        # MD4's stack for all three (GLU MLP, outside embedding): only the objective differs.
        model = {"model.variant": f"llama-{WIDTH}x{DEPTH}", "model.feature_dim": WIDTH // HEADS,
                 "model.mlp_type": "glu", "model.outside_embed": True, "model.depth_scaled_init": True}
    return {**shared, **model}


def diffusion_comparison(config):
    """Puts a character-LM ``config`` (mdlm, md4, genmd4, causal_lm) on the shared comparison setup."""
    from maskjax.config import apply_overrides

    apply_overrides(config, comparison_overrides(config.method))
    return config


@dataclasses.dataclass(frozen=True)
class UnitTable(Table):
    """A multi-seed table whose cells are not percentages: ``scale`` multiplies the stored metric,
    ``digits`` are shown, the columns in ``lower_is_better`` win when smaller, ``paper_setting`` says
    where the papers measured (read by :func:`maskjax.repro.seeded.render_seeded` where it supports them)."""

    scale: float = 1.0
    digits: int = 3
    unit: str = "bits/char; total variation; bits"
    lower_is_better: tuple = ()
    paper_setting: str = ""


BITS = "test bits/char (diffusion: upper bound)"
TV = "bigram TV, {} steps"
SAMPLE_STEPS = (8, 32, 128)
ENTROPY = "sample entropy (bits), 128 steps"
_METRICS = {BITS: "eval/bits/bits_per_char",
            **{TV.format(s): f"eval/samples/bigram_tv_{s}" for s in SAMPLE_STEPS},
            ENTROPY: "eval/samples/entropy_bits_128"}
_EVALS = {"bits": {"type": "char_bits", "batch_size": 64, "likelihood_samples": 4},
          "samples": {"type": "char_samples", "steps": SAMPLE_STEPS, "num": 64, "show": 2}}

AR = "autoregressive (causal LM)"
_ROWS = (
    Row("MDLM", comparison_overrides("mdlm"), {}, config=_CONFIGS["mdlm"]),
    Row("MD4", comparison_overrides("md4"), {}, config=_CONFIGS["md4"]),
    Row("GenMD4", comparison_overrides("genmd4"), {}, config=_CONFIGS["genmd4"]),
    Row(AR, comparison_overrides("causal_lm"), {}, config=_CONFIGS["causal_lm"]),
    # Floors read from the MD4 runs (no run of their own): constants of the data, not of a model.
    Row("uniform (log2 27)", comparison_overrides("md4"), {}, config=_CONFIGS["md4"], metric_prefix="uniform_"),
    Row("unigram (train frequencies)", comparison_overrides("md4"), {}, config=_CONFIGS["md4"],
        metric_prefix="unigram_"),
    Row("real text (64 train blocks)", comparison_overrides("md4"), {}, config=_CONFIGS["md4"],
        metric_prefix="data_"),
)

_MD4_PAPER = "MD4 paper (Shi et al. 2024), spec 12f: text8 MD4 <= 1.37, GenMD4 <= 1.34 bpc (recalled, UNVERIFIED)"
_MDLM_PAPER = "MDLM paper (Sahoo et al. 2024), spec 11f: OWT AR 17.54 vs MDLM <= 22.98 perplexity"
_CLAIMS = (
    Claim("MD4", "MDLM", BITS, "MD4 paper (OWT perplexity below MDLM's; the issue expects MD4 ~ MDLM)"),
    Claim("GenMD4", "MD4", BITS, _MD4_PAPER),
    Claim(AR, "GenMD4", BITS, _MDLM_PAPER + " (AR ahead of every diffusion LM at equal compute)"),
    Claim(AR, "MD4", BITS, _MDLM_PAPER),
    Claim(AR, "MDLM", BITS, _MDLM_PAPER),
    Claim("MD4", "unigram (train frequencies)", BITS, "sanity: the model learned more than character frequencies"),
    Claim(AR, "unigram (train frequencies)", BITS, "sanity: the model learned more than character frequencies"),
)

TABLE = register_table(UnitTable(
    "diffusion_chars", "Masked diffusion LMs vs an autoregressive LM at equal compute (Tiny Shakespeare characters)",
    _CONFIGS["md4"], {"evals": _EVALS}, _ROWS, _METRICS,
    "the MDLM and MD4 papers' orderings (specs/methods_text_gen.md 11f, 12f); no paper number is shown: theirs "
    "are perplexities or bits/char of other corpora",
    "AR < GenMD4 < MD4 ~ MDLM in bits per character", AR, BITS,
    setup=(f"every row: a {WIDTH}-wide, {DEPTH}-block, {HEADS}-head backbone of its method's family "
           f"(MDLM: DDiT; MD4, GenMD4, AR: MD4's LLaMA-style stack), dropout 0; Tiny Shakespeare as 27-symbol "
           f"text8-style characters, last 10 % held out; {STEPS} steps of {BATCH} disjoint {SEQ_LEN}-character "
           f"blocks ({STEPS * BATCH * SEQ_LEN / 1e6:.2f}M characters seen per row); AdamW lr {LR:g} (0.9, 0.999), "
           f"no weight decay, clipping 1.0, {WARMUP} warm-up steps then cosine to 0; EMA {EMA} weights evaluated "
           "(`maskjax.repro.diffusion_chars.diffusion_comparison`). Test bits/char over all 827 held-out blocks "
           "(diffusion: negative ELBO, 4 time/mask draws per block; AR: exact NLL). Samples: 64 per setting from each "
           "method's own sampler (MDLM ddpm on a uniform grid, MD4 ancestral on the cosine grid, GenMD4 its "
           "state-dependent ancestral step; the AR model one character per step, i.e. 128 network evaluations, "
           "shown in the 128-step column); bigram TV = total variation between the samples' and the held-out "
           "text's character-pair distributions. Floor rows: uniform and unigram predictors; 64 random "
           "training blocks scored like the samples."),
    smoke={"model.depth": 1, "data.seq_len": 32, "global_batch": 8, "total_steps": 2, "log_every_steps": 1,
           "progress": False, "optim.warmup_steps": 1, "checkpoint.every_steps": 2},
    smoke_evals={"bits": {"type": "char_bits", "batch_size": 8, "batches": 2, "likelihood_samples": 2},
                 "samples": {"type": "char_samples", "steps": (4,), "num": 4, "show": 1}},
    seeds=(0, 1, 2), claims=_CLAIMS,
    lower_is_better=(BITS, *(TV.format(s) for s in SAMPLE_STEPS)),
    paper_setting="OpenWebText, LM1B or text8, about 100M-parameter models trained for 10^5-10^6 steps",
))
