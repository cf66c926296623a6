"""The autoregressive baseline of the masked diffusion recipes: a causal LLaMA-style character LM.

MD4-S's stack (12 layers, 12 heads of 64, depth-scaled init; SwiGLU MLP, RMSNorm, RoPE) with
causal attention and a start id before each block, trained by next-character cross-entropy on
the same character blocks as the diffusion methods, so its bits per character are directly
comparable with their bounds. Optimiser: MD4's (AdamW lr 3e-4 (0.9, 0.999), no weight decay,
2,000 warm-up steps + cosine). No paper number belongs to this recipe (MDLM's AR baselines are
word-piece models: spec 11f).

Command:
  maskjax train --config configs/causal_lm/chars.py --workdir runs/ar_shakespeare
  maskjax train --config configs/causal_lm/chars.py:wikitext --workdir runs/ar_wikitext
The default trains the small model (6 layers, width 256) for 20k steps of 64 blocks of 256
characters of Tiny Shakespeare; ``:full`` keeps the 12-layer model; ``:smoke`` runs two CPU steps.
"""

from maskjax.config import char_corpus, method_config, parse_arg, smoke
from maskjax.methods.causal_lm import CausalLM




def get_config(arg=None):
    """``arg``: wikitext | full | smoke, and steps, batch, lr."""
    args = parse_arg(arg, wikitext=False, shakespeare=False, full=False, smoke=False, steps=20_000, batch=64,
                     lr=5e-4)
    c = CausalLM.fill_config(method_config("causal_lm"))
    c.optim.update(dict(name="adamw", base_lr=3e-4, lr_batch_denominator=0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, schedule="cosine", min_lr=0.0, grad_clip=None, warmup_steps=2000))
    CausalLM.char_run(c, char_corpus(args.wikitext), smoke=args.smoke, steps=args.steps, batch=args.batch, lr=args.lr)
    if args.full and not args.smoke:
        c.model.update(dict(CausalLM.MODEL))
    if args.smoke:
        smoke(c, data=lambda _: None)
    return c
