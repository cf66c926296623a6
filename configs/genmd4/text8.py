"""GenMD4 on text8 (Shi et al., NeurIPS 2024; google-deepmind/md4 ``configs/genmd4/text8.py``).

Recipe (specs/methods_text_gen.md 12d-12e): MD4's text8 recipe (MD4-S network, 256-character
blocks, AdamW lr 3e-4 (0.9, 0.999), no weight decay or clipping, 2,000 warm-up steps + cosine,
batch 512, 1M steps) with the learnable state-dependent ``poly`` schedule: one exponent per
symbol initialised to 1 (``power_init``), times in [1e-3, 1], two masked draws per example and
the REINFORCE leave-one-out gradient for the exponents. The logged ``loss`` is that surrogate;
``nelbo`` / ``bits_per_char`` is the bound.

Expected (the paper's number, not measured by us): text8 test bits per character <= 1.34
[paper, recalled - UNVERIFIED, spec 14], EMA (0.9999) weights evaluated. Not measured here: text8
is not in ../shared/data (``$MASKJAX_DATA_DIR/text8/text8`` or ``$MASKJAX_TEXT8``).

Command:
  maskjax train --config configs/genmd4/text8.py --workdir runs/genmd4_text8
Variants on the shared character data (small model, 20k steps of 64 x 256 characters):
  maskjax train --config configs/genmd4/text8.py:shakespeare --workdir runs/genmd4_shakespeare
  maskjax train --config configs/genmd4/text8.py:wikitext --workdir runs/genmd4_wikitext
``:smoke`` runs two CPU steps of a micro model on Tiny Shakespeare.
"""

from maskjax.config import char_corpus, dataset_path, method_config, parse_arg, smoke
from maskjax.methods.genmd4 import GenMD4

PAPER_RESULTS = {"text8 test bpc (upper bound)": (1.34, "paper, recalled - UNVERIFIED")}




def get_config(arg=None):
    """``arg``: shakespeare | wikitext | smoke, and steps, batch, lr (of the character variants)."""
    args = parse_arg(arg, shakespeare=False, wikitext=False, smoke=False, steps=20_000, batch=64, lr=3e-4)
    c = GenMD4.fill_config(method_config("genmd4"))
    c.data.path = str(dataset_path("text8", "MASKJAX_TEXT8") / "text8")
    c.data.seq_len = 256
    c.data.train_stride = 1
    c.data.heldout_fraction = 0.1
    c.genmd4.ema_decay = 0.9999
    c.global_batch = 512
    c.total_steps = 1_000_000
    c.optim.update(dict(name="adamw", base_lr=3e-4, lr_batch_denominator=0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, schedule="cosine", min_lr=0.0, grad_clip=None, warmup_steps=2000))
    c.checkpoint.every_steps = 5000
    c.log_every_steps = 500
    c.evals.mlm = dict(type="mlm", every_steps=5000, batch_size=512)
    if args.smoke or args.shakespeare or args.wikitext:
        GenMD4.char_run(c, char_corpus(args.wikitext), smoke=args.smoke, steps=args.steps, batch=args.batch,
                        lr=args.lr)
    if args.smoke:
        smoke(c, data=lambda _: None)
    return c
