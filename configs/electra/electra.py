"""ELECTRA pre-training (Clark et al., ICLR 2020; google-research/electra).

``configure_pretraining.py`` (specs/methods_text_gen.md 6): generator 1/4 of the discriminator
width (Base 1/3), shared embeddings, 15 % ELECTRA masking (85 % [MASK] / 15 % kept, 25 % for
Large), Gumbel sampling at temperature 1, discriminator weight 50; AdamW without bias
correction (0.9, 0.999, eps 1e-6, wd 0.01, clip 1.0), lr warmup multiplying a linear decay.

| size  | lr   | batch | seq | steps | embedding | generator |
|-------|------|-------|-----|-------|-----------|-----------|
| Small | 5e-4 | 128   | 128 | 1M    | 128       | 1/4       |
| Base  | 2e-4 | 256   | 512 | 766k  | 768       | 1/3       |
| Large | 2e-4 | 2048  | 512 | 400k  | 1024      | 1/4       |

Expected (README, released models, GLUE test; not measured by us): Small 77.4, Base 82.7,
Large 85.2; dev MNLI 81.3 / 88.8 / 90.9. Base/Large step counts are the paper's Table 6
[paper, recalled - UNVERIFIED].

Command:
  maskjax train --config configs/electra/electra.py:size=Small \
      --config.data.vocab_path=vocab.txt --config.data.data_dir=~/tensorflow_datasets
"""

from maskjax.config import parse_arg, text_base_config, text_smoke, tfds_wikipedia

RECIPES = {
    "Small": dict(variant="electra-small", lr=5e-4, batch=128, seq_len=128, steps=1_000_000, gen=0.25, mask=0.15),
    "Base": dict(variant="electra-base", lr=2e-4, batch=256, seq_len=512, steps=766_000, gen=1 / 3, mask=0.15),
    "Large": dict(variant="electra-large", lr=2e-4, batch=2048, seq_len=512, steps=400_000, gen=0.25, mask=0.25),
}


def get_config(arg=None):
    """``arg``: size=Small|Base|Large, steps (default: the recipe's), smoke."""
    args = parse_arg(arg, size="Small", steps=0, smoke=False)
    if args.size not in RECIPES:
        raise ValueError(f"size must be one of {sorted(RECIPES)}, got {args.size!r}")
    r = RECIPES[args.size]
    c = text_base_config()
    c.method = "electra"
    c.model.variant = r["variant"]
    c.model.generator_fraction = r["gen"]
    c.model.hidden_act = "gelu_tanh"
    c.model.disc_weight = 50.0
    c.model.gen_weight = 1.0
    c.model.temperature = 1.0
    tfds_wikipedia(c, seq_len=r["seq_len"])
    c.masking.kind = "electra"
    c.masking.ratio = r["mask"]
    c.masking.max_predictions = int((r["mask"] + 0.005) * r["seq_len"])
    c.global_batch = r["batch"]
    c.total_steps = args.steps or r["steps"]
    c.optim.base_lr = r["lr"]
    c.optim.schedule = "linear_electra"
    c.optim.warmup_steps = 10_000
    c.checkpoint.every_steps = 10_000
    c.evals.mlm = dict(type="mlm", every_steps=50_000, batches=20)
    if args.smoke:
        text_smoke(c)
        c.data.seq_len = 128
        c.masking.max_predictions = int((r["mask"] + 0.005) * 128)
    return c
