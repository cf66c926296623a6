"""MD4 on OpenWebText (Shi et al., NeurIPS 2024; google-deepmind/md4 ``configs/md4/openwebtext.py``).

Recipe (specs/methods_text_gen.md 12e): the text8 recipe's MD4-S network, optimiser, schedule
and EMA on GPT-2 tokens (vocabulary 50257, mask id 50257), 1024-token blocks; the sweep used
dropout 0.02 and weight decay 0.03. Expected (the paper's, not measured by us): validation
perplexity about 22 for MD4-S [paper, recalled - exact values UNVERIFIED; spec 12f says do not
test against them].

This recipe records the paper's settings and cannot run as is: maskjax has no GPT-2-tokenized
OpenWebText pipeline (the method's modality is text8-style characters) and OpenWebText is not in
../shared/data. The variants train the same method on characters.

Command:
  maskjax train --config configs/md4/owt.py:shakespeare --workdir runs/md4_owt_shakespeare
  maskjax train --config configs/md4/owt.py:wikitext --workdir runs/md4_owt_wikitext
(small model, 20k steps of 64 blocks of 1024 characters); ``:smoke`` runs two CPU steps.
"""

from maskjax.config import char_corpus, dataset_path, method_config, parse_arg, smoke
from maskjax.methods.md4 import MD4

PAPER_RESULTS = {"OpenWebText validation perplexity (MD4-S)": (22.0, "about; paper, recalled - UNVERIFIED")}




def get_config(arg=None):
    """``arg``: shakespeare | wikitext | smoke, and steps, batch, lr (of the character variants)."""
    args = parse_arg(arg, shakespeare=False, wikitext=False, smoke=False, steps=20_000, batch=64, lr=5e-4)
    c = MD4.fill_config(method_config("md4"))
    c.model.vocab_size = 50257                 # GPT-2; the mask id is 50257
    c.model.dropout = 0.02                     # the sweep's value
    c.data.path = str(dataset_path("openwebtext") / "train.txt")   # no such pipeline: see the docstring
    c.data.seq_len = 1024
    c.md4.ema_decay = 0.9999
    c.global_batch = 512
    c.total_steps = 1_000_000
    c.optim.update(dict(name="adamw", base_lr=3e-4, lr_batch_denominator=0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.03, schedule="cosine", min_lr=0.0, grad_clip=None, warmup_steps=2000))
    c.checkpoint.every_steps = 5000
    c.log_every_steps = 500
    c.evals.mlm = dict(type="mlm", every_steps=5000, batch_size=512)
    if args.smoke or args.shakespeare or args.wikitext:
        MD4.char_run(c, char_corpus(args.wikitext), smoke=args.smoke, steps=args.steps, batch=args.batch, lr=args.lr,
                     seq_len=1024)
    if args.smoke:
        smoke(c, data=lambda _: None)
    return c
