"""A tiny masked LM on real text in CPU-minutes: the mini-reproduction recipe on WikiText-2.

Trains on WikiText-2 ``valid.txt`` (about 217k words) and evaluates on ``test.txt`` with the
held-out ``mlm`` evaluator at a fixed 15 % [MASK]-only masking, whatever the training masking.
WordPiece vocabulary of 8,192 trained on the training file. The model is BERT-Tiny
(2 layers, 128 wide; ``model=...`` for others) at 128 tokens.

Command:
  maskjax train --config configs/bert/wikitext_tiny.py:rate=0.4,mix=mask --workdir runs/mlm40
  maskjax train --config configs/bert/wikitext_tiny.py:method=electra --workdir runs/electra

``method=electra`` trains an ELECTRA of the same discriminator size (generator 1/4 wide) with
ELECTRA's masking. The measured table is docs/results/mlm_wikitext2.md (``maskjax repro``).
"""

from maskjax.config import parse_arg, text_base_config, wikitext2_data

MIXES = {"80-10-10": (0.8, 0.1, 0.1), "mask": (1.0, 0.0, 0.0)}


def get_config(arg=None):
    """``arg``: method=bert|electra, model (Tiny), rate, mix=80-10-10|mask, steps, batch, lr, smoke."""
    args = parse_arg(arg, method="bert", model="Tiny", rate=0.15, mix="80-10-10", steps=3000, batch=64,
                     lr=1e-3, seq_len=128, smoke=False)
    if args.mix not in MIXES:
        raise ValueError(f"mix must be one of {sorted(MIXES)}, got {args.mix!r}")
    c = text_base_config()
    wikitext2_data(c, vocab_size=8192)
    c.method = args.method
    c.model.variant = args.model
    c.model.vocab_size = 8192
    c.model.max_positions = 128
    c.data.seq_len = args.seq_len
    if args.method == "electra":
        c.masking.kind = "electra"
        c.model.generator_fraction = 0.25
        c.optim.schedule = "linear_electra"
    else:
        c.masking.kind = "uniform"
        c.masking.count = "exact"
        c.masking.mix = MIXES[args.mix]
    c.masking.ratio = args.rate
    c.masking.max_predictions = int(args.rate * args.seq_len) + 2
    c.global_batch = args.batch
    c.total_steps = args.steps
    c.optim.base_lr = args.lr
    c.optim.warmup_steps = max(1, args.steps // 20)
    c.checkpoint.every_steps = 1000
    c.log_every_steps = 100
    c.evals.mlm = dict(type="mlm", every_steps=0, batch_size=64)
    if args.smoke:
        c.total_steps = 3
        c.global_batch = 8
        c.log_every_steps = 1
        c.optim.warmup_steps = 1
        c.evals.mlm = dict(type="mlm", every_steps=0, batch_size=8, batches=2)
    return c
