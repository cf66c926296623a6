"""MDLM on OpenWebText (Sahoo et al., NeurIPS 2024; kuleshov-group/mdlm ``configs/config.yaml``).

Recipe (specs/methods_text_gen.md 11): the DDiT "small" (12 blocks, width 768, 12 heads,
cond_dim 128, MLP ratio 4, dropout 0.1, rotary positions, untied embeddings), SUBS
parameterisation, log-linear schedule (eps 1e-3), stratified times in [1e-3, 1], continuous-time
NELBO, no time conditioning; GPT-2 tokens (50257 + the mask id), 1024-token wrapped blocks;
AdamW lr 3e-4 (0.9, 0.999, eps 1e-8), weight decay 0, constant lr after 2,500 warm-up steps
(``optim.schedule=constant``), clipping 1.0, bf16, batch 512,
1M steps, EMA 0.9999 (warm-up ``(1 + n) / (10 + n)``); 128-step sampling (``ddpm_cache``).

Expected (the paper's numbers, not measured by us): OpenWebText test perplexity MDLM <= 22.98
(23.21 in an earlier version) [paper, recalled], SEDD <= 24.10, AR 17.54 [paper/web].

This recipe records the paper's settings and cannot run as is: maskjax has no GPT-2-tokenized
OpenWebText pipeline (the method's modality is text8-style characters) and OpenWebText is not in
../shared/data. The variants train the same method on characters.

Command:
  maskjax train --config configs/mdlm/owt.py:shakespeare --workdir runs/mdlm_shakespeare
  maskjax train --config configs/mdlm/owt.py:wikitext --workdir runs/mdlm_wikitext
(DiT of 6 blocks, width 256; 20k steps of 64 blocks of 256 characters); ``:smoke`` runs two CPU steps.
"""

from maskjax.config import char_corpus, dataset_path, method_config, parse_arg, smoke
from maskjax.methods.mdlm import MDLM

PAPER_RESULTS = {"OpenWebText test perplexity (upper bound)": (22.98, "paper, recalled (23.21 earlier)"),
                 "AR baseline perplexity": (17.54, "paper/web")}




def mdlm_optimizer(c) -> None:
    """MDLM's AdamW, constant lr after warm-up, clip 1.0."""
    c.optim.update(dict(name="adamw", base_lr=3e-4, lr_batch_denominator=0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, schedule="constant", grad_clip=1.0, warmup_steps=2500))


def get_config(arg=None):
    """``arg``: shakespeare | wikitext | smoke, and steps, batch, lr (of the character variants)."""
    args = parse_arg(arg, shakespeare=False, wikitext=False, smoke=False, steps=20_000, batch=64, lr=3e-4)
    c = MDLM.fill_config(method_config("mdlm"))
    c.model.vocab_size = 50257                 # GPT-2; MDLM appends the mask id 50257
    c.data.path = str(dataset_path("openwebtext") / "train.txt")   # no such pipeline: see the docstring
    c.data.seq_len = 1024
    c.mdlm.ema_decay = 0.9999                  # with MDLM's (1 + n) / (10 + n) warm-up
    c.compute_dtype = "bfloat16"
    c.global_batch = 512
    c.total_steps = 1_000_000
    mdlm_optimizer(c)
    c.checkpoint.every_steps = 10_000
    c.log_every_steps = 100
    c.evals.mlm = dict(type="mlm", every_steps=10_000, batch_size=512)
    if args.smoke or args.shakespeare or args.wikitext:
        MDLM.char_run(c, char_corpus(args.wikitext), smoke=args.smoke, steps=args.steps, batch=args.batch, lr=args.lr)
        c.compute_dtype = "float32"
    if args.smoke:
        smoke(c, data=lambda _: None)
    return c
