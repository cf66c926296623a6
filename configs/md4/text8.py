"""MD4 on text8 (Shi et al., NeurIPS 2024; google-deepmind/md4 ``configs/md4/text8.py``).

Recipe (specs/methods_text_gen.md 12): MD4-S, a LLaMA-style transformer of 12 layers, 12 heads
of 64 (width 768), GLU MLP, depth-scaled init, adaLN-zero time conditioning, outside embedding;
linear schedule, continuous time, antithetic times; 256-character blocks of text8 (27 symbols),
every window of the training stream (MD4's overlapping ``ChunkDataSource``), disjoint blocks
held out; AdamW lr 3e-4 (0.9, 0.999), weight decay 0, no clipping, 2,000 warm-up steps then
cosine decay; batch 512, 1M steps; EMA 0.9999 of the weights for evaluation and sampling;
ancestral sampling on the cosine grid.

Expected (the paper's number, not measured by us): text8 test bits per character <= 1.37
[paper, recalled - UNVERIFIED, spec 14], with the EMA (0.9999) weights evaluated. Not measured
here: text8 is not in ../shared/data; put the extracted ``text8`` file in ``$MASKJAX_DATA_DIR/text8/``
(or ``$MASKJAX_TEXT8``); its last 10 % (MD4's valid + test) is held out.

Command:
  maskjax train --config configs/md4/text8.py --workdir runs/md4_text8
Variants on the shared character data (``SMALL`` model: 6 layers, width 256; 20k steps of 64
blocks of 256 characters, lr 5e-4 = MD4's sweep value; held-out ``mlm`` evaluation = the NELBO):
  maskjax train --config configs/md4/text8.py:shakespeare --workdir runs/md4_shakespeare
  maskjax train --config configs/md4/text8.py:wikitext --workdir runs/md4_wikitext
``:smoke`` runs two CPU steps of a micro model on Tiny Shakespeare.
"""

from maskjax.config import char_corpus, dataset_path, method_config, parse_arg, smoke
from maskjax.methods.md4 import MD4

PAPER_RESULTS = {"text8 test bpc (upper bound)": (1.37, "paper, recalled - UNVERIFIED")}




def get_config(arg=None):
    """``arg``: shakespeare | wikitext | smoke, and steps, batch, lr (of the character variants)."""
    return text8_recipe(MD4, "md4", arg, char_lr=5e-4)


def text8_recipe(method, name: str, arg, *, char_lr: float):
    """MD4's text8 recipe for ``method`` (registered as ``name``); shared by configs/genmd4/text8.py.

    ``char_lr``: the default lr of the small character variants (:meth:`char_run`).
    """
    args = parse_arg(arg, shakespeare=False, wikitext=False, smoke=False, steps=20_000, batch=64, lr=char_lr)
    c = method.fill_config(method_config(name))
    c.data.path = str(dataset_path("text8", "MASKJAX_TEXT8") / "text8")
    c.data.seq_len = 256
    c.data.train_stride = 1
    c.data.heldout_fraction = 0.1
    c[name].ema_decay = 0.9999
    c.global_batch = 512
    c.total_steps = 1_000_000
    c.optim.update(dict(name="adamw", base_lr=3e-4, lr_batch_denominator=0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, schedule="cosine", min_lr=0.0, grad_clip=None, warmup_steps=2000))
    c.checkpoint.every_steps = 5000
    c.log_every_steps = 500
    c.evals.mlm = dict(type="mlm", every_steps=5000, batch_size=512)
    if args.smoke or args.shakespeare or args.wikitext:
        method.char_run(c, char_corpus(args.wikitext), smoke=args.smoke, steps=args.steps, batch=args.batch, lr=args.lr)
    if args.smoke:
        smoke(c, data=lambda _: None)
    return c
