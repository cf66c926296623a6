"""BERT-Base / BERT-Large pre-training (Devlin et al., NAACL 2019; google-research/bert).

Recipe (specs/methods_text_gen.md 1): post-LN BERT with NSP, static-looking but here dynamic
BERT masking (15 %, 80/10/10, ``max_predictions_per_seq`` 20 at 128 tokens, 76 at 512),
AdamW without bias correction (0.9, 0.999, eps 1e-6, wd 0.01, clip 1.0), lr 1e-4, 10k warmup
steps, linear decay, batch 256, 1M steps: 90 % at 128 tokens then 10 % at 512
(``:seq_len=512,steps=100000`` for the second phase, resumed from the first one's workdir).
``:wwm`` gives whole-word masking. Data: BooksCorpus + Wikipedia; here a TFDS text dataset
(``wikipedia/20230601.en``) with the bert-base-uncased ``vocab.txt`` you provide. Command:

  maskjax train --config configs/bert/bert.py:size=Base \\
      --config.data.vocab_path=vocab.txt --config.data.data_dir=~/tensorflow_datasets

Expected (paper / README, not measured by us): GLUE test average Base 79.6, Large 82.1
[paper, recalled - UNVERIFIED]; SQuAD 1.1 dev F1 Base 88.5 (README-corroborated), Large 90.9;
MNLI 86.7 (Large, README). Whole-word masking, BERT-Large uncased: SQuAD 1.1 F1/EM 92.8/86.7 and
MNLI 87.07 vs 91.0/84.3 and 86.05 without (README).
``:smoke`` runs two steps of the same model on WikiText-2 (CPU).
"""

from maskjax.config import parse_arg, text_base_config, text_smoke, tfds_wikipedia


def get_config(arg=None):
    """``arg``: size=Base|Large, seq_len=128|512, steps, wwm, smoke."""
    args = parse_arg(arg, size="Base", seq_len=128, steps=900_000, wwm=False, smoke=False)
    c = text_base_config()
    c.method = "bert"
    c.model.variant = args.size
    c.model.nsp = True
    c.model.hidden_act = "gelu_tanh"          # the TF original's tanh-approximated GELU
    tfds_wikipedia(c, seq_len=args.seq_len)
    c.data.nsp = True
    c.masking.kind = "whole_word" if args.wwm else "bert"
    c.masking.ratio = 0.15
    c.masking.mix = (0.8, 0.1, 0.1)
    c.masking.max_predictions = 20 if args.seq_len <= 128 else 76
    c.global_batch = 256
    c.total_steps = args.steps
    c.optim.base_lr = 1e-4
    c.optim.warmup_steps = 10_000
    c.checkpoint.every_steps = 10_000
    c.log_every_steps = 100
    c.evals.mlm = dict(type="mlm", every_steps=50_000, batches=50)
    if args.smoke:
        text_smoke(c)
        c.data.nsp = True
    return c
