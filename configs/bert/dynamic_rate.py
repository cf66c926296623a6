"""Dynamic masking-rate schedule (Ankner et al., EACL 2024): linear decay from 30 % to 15 %.

specs/methods_text_gen.md 5: ``p(t) = 0.30 + (0.15 - 0.30) * t / T`` over pre-training, HF-style
Bernoulli masking of non-special tokens with 80/10/10. The authors trained MosaicML BERT-Base on
C4 at 128 tokens; the exact steps and batch are UNVERIFIED, so this recipe takes BERT-Base's
optimiser with the MosaicML-style 128-token setup. ``:schedule=constant`` is the fixed-15 %
baseline. Expected (paper abstract, not measured by us): +0.46 GLUE average for BERT-Base over
the fixed rate and up to 1.89x faster pre-training to the same quality.

Command:
  maskjax train --config configs/bert/dynamic_rate.py:schedule=linear \
      --config.data.vocab_path=vocab.txt --config.data.data_dir=~/tensorflow_datasets
"""

from maskjax.config import parse_arg, text_base_config, text_smoke


def get_config(arg=None):
    """``arg``: size, schedule=linear|cosine|step|constant, initial (0.3), final (0.15), steps, smoke."""
    args = parse_arg(arg, size="Base", schedule="linear", initial=0.3, final=0.15, steps=70_000, smoke=False)
    c = text_base_config()
    c.method = "bert"
    c.model.variant = args.size
    c.data.kind = "tfds_text"
    c.data.name = "c4/en"
    c.data.eval_split = "validation"
    c.data.seq_len = 128
    c.masking.kind = "uniform"
    c.masking.count = "bernoulli"
    c.masking.schedule = args.schedule
    c.masking.ratio = args.initial if args.schedule != "constant" else args.final
    c.masking.final_ratio = args.final
    c.masking.max_predictions = int(max(args.initial, args.final) * 128) + 8
    c.global_batch = 4096
    c.total_steps = args.steps
    c.optim.base_lr = 5e-4
    c.optim.warmup_steps = int(0.06 * args.steps)
    c.checkpoint.every_steps = 5_000
    c.evals.mlm = dict(type="mlm", every_steps=10_000, batches=20)
    if args.smoke:
        text_smoke(c)
    return c
