"""RoBERTa-style BERT pre-training: no NSP, dynamic masking, full-sentence blocks.

RoBERTa (Liu et al. 2019) dropped next-sentence prediction, packed contiguous text across
document boundaries (FULL-SENTENCES) and re-drew masks every epoch (dynamic masking, which
maskjax always does). This recipe keeps BERT-Base's post-LN architecture and WordPiece vocab,
and takes RoBERTa-Base's optimisation: batch 8k sequences of 512, peak lr 6e-4, 24k warmup,
500k steps, Adam (0.9, 0.98, eps 1e-6, with bias correction), wd 0.01 [paper, recalled -
UNVERIFIED]. Expected RoBERTa-Base GLUE dev MNLI about 87.6 [paper, recalled - UNVERIFIED];
ours uses a WordPiece vocab rather than RoBERTa's byte BPE, so it is "RoBERTa-style", not
RoBERTa.

Command:
  maskjax train --config configs/bert/roberta_style.py --config.data.vocab_path=vocab.txt
"""

from maskjax.config import parse_arg, text_base_config, text_smoke, tfds_wikipedia


def get_config(arg=None):
    """``arg``: size=Base|Large, steps, smoke."""
    args = parse_arg(arg, size="Base", steps=500_000, smoke=False)
    c = text_base_config()
    c.method = "bert"
    c.model.variant = args.size
    tfds_wikipedia(c, seq_len=512)
    c.masking.kind = "bert"
    c.masking.max_predictions = 80
    c.global_batch = 8192
    c.total_steps = args.steps
    c.optim.base_lr = 6e-4
    c.optim.b2 = 0.98
    c.optim.bias_correction = True
    c.optim.warmup_steps = 24_000
    c.checkpoint.every_steps = 5_000
    c.evals.mlm = dict(type="mlm", every_steps=25_000, batches=20)
    if args.smoke:
        text_smoke(c)
        c.data.seq_len = 128
        c.masking.max_predictions = 20
    return c
