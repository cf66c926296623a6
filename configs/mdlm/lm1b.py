"""MDLM on LM1B (Sahoo et al., NeurIPS 2024; kuleshov-group/mdlm ``configs/data/lm1b.yaml``).

Recipe (specs/methods_text_gen.md 11e): MDLM's OWT recipe (DDiT small, SUBS, log-linear schedule,
AdamW 3e-4, constant lr after 2,500 warm-up steps, clipping 1.0, batch 512, bf16) on
bert-base-uncased tokens, 128-token sentences without wrapping (``wrap: False``,
``model.length=128``). The mask is bert's ``[MASK]`` (vocabulary 30522); maskjax's model appends
its own mask id instead (30522 + 1 outputs).

Expected (the paper's numbers, not measured by us): LM1B test perplexity MDLM 23.00 for the long
run of about 327B tokens [PwC listing]; at 33B tokens MDLM <= 27.04, AR 22.32, SEDD <= 32.79
[paper, recalled - UNVERIFIED]; the AR baseline is listed as 20.09 (recollection 20.86, UNVERIFIED).

This recipe records the paper's settings and cannot run as is: maskjax has no LM1B pipeline (the
method's modality is text8-style characters) and LM1B is not in ../shared/data. 33B tokens are about 500k steps of 512 x 128 tokens (``:steps=``).

Command:
  maskjax train --config configs/mdlm/lm1b.py:wikitext --workdir runs/mdlm_lm1b_wikitext
  maskjax train --config configs/mdlm/lm1b.py:shakespeare --workdir runs/mdlm_lm1b_shakespeare
(DiT of 6 blocks, width 256, 128-character blocks); ``:smoke`` runs two CPU steps.
"""

from maskjax.config import char_corpus, dataset_path, method_config, parse_arg, smoke
from maskjax.methods.mdlm import MDLM

PAPER_RESULTS = {"LM1B test perplexity, long run (upper bound)": (23.00, "PwC listing"),
                 "LM1B test perplexity at 33B tokens (upper bound)": (27.04, "paper, recalled - UNVERIFIED")}




def get_config(arg=None):
    """``arg``: shakespeare | wikitext | smoke, and steps, batch, lr (of the character variants)."""
    args = parse_arg(arg, shakespeare=False, wikitext=False, smoke=False, steps=20_000, batch=64, lr=3e-4)
    c = MDLM.fill_config(method_config("mdlm"))
    c.model.vocab_size = 30522                 # bert-base-uncased (maskjax adds its own mask id)
    c.data.path = str(dataset_path("lm1b") / "train.txt")   # no such pipeline: see the docstring
    c.data.seq_len = 128
    c.mdlm.ema_decay = 0.9999
    c.compute_dtype = "bfloat16"
    c.global_batch = 512
    c.total_steps = 1_000_000
    c.optim.update(dict(name="adamw", base_lr=3e-4, lr_batch_denominator=0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, schedule="constant", grad_clip=1.0, warmup_steps=2500))
    c.checkpoint.every_steps = 10_000
    c.log_every_steps = 100
    c.evals.mlm = dict(type="mlm", every_steps=10_000, batch_size=512)
    if args.smoke or args.shakespeare or args.wikitext:
        MDLM.char_run(c, char_corpus(args.wikitext), smoke=args.smoke, steps=args.steps, batch=args.batch, lr=args.lr,
                      seq_len=128)
        c.compute_dtype = "float32"
    if args.smoke:
        smoke(c, data=lambda _: None)
    return c
