"""SpanBERT pre-training (Joshi et al., TACL 2020; facebookresearch/SpanBERT).

Paper run (specs/methods_text_gen.md 2): no NSP, one contiguous segment of up to 512 tokens,
geometric whole-word spans (p 0.2, 1-10 words, mean 3.8), 15 % of tokens, one 80/10/10 draw per
span with random tokens from the corpus unigram distribution, span-boundary objective with 200-d
relative positions and up to 15 targets per span, weight 1.0; Adam (0.9, 0.999, eps 1e-8, bias
corrected), lr 1e-4, 10k warmup, linear decay, wd 0.01, clip 1.0, batch 256 x 512, 2.4M steps,
cased 28,996-token vocab.

Expected (README; not measured by us): SQuAD 1.1 F1 Base 92.4 (dev) / Large 94.6, SQuAD 2.0 F1
83.6 / 88.7, TACRED F1 68.2 / 70.8, coref 77.4 / 79.6.
Deviation: random replacements are uniform over the vocabulary (SpanBERT samples the corpus
stream); ``maskjax.data.text.unigram_counts`` gives the distribution for a custom method.

Command:
  maskjax train --config configs/spanbert/spanbert.py:size=Large \
      --config.data.vocab_path=bert-base-cased-vocab.txt --config.data.data_dir=~/tensorflow_datasets
"""

from maskjax.config import parse_arg, text_base_config, text_smoke, tfds_wikipedia


def get_config(arg=None):
    """``arg``: size=Base|Large, steps, smoke."""
    args = parse_arg(arg, size="Large", steps=2_400_000, smoke=False)
    c = text_base_config()
    c.method = "bert"
    c.model.variant = args.size
    c.model.sbo = True
    c.model.max_pair_targets = 15
    tfds_wikipedia(c, seq_len=512)
    c.data.lowercase = False
    c.model.vocab_size = 28996
    c.masking.kind = "span"
    c.masking.span_p = 0.2
    c.masking.max_span = 10
    c.masking.span_replacement = "span"
    c.masking.max_predictions = 80
    c.global_batch = 256
    c.total_steps = args.steps
    c.optim.base_lr = 1e-4
    c.optim.eps = 1e-8
    c.optim.bias_correction = True
    c.optim.warmup_steps = 10_000
    c.checkpoint.every_steps = 10_000
    c.evals.mlm = dict(type="mlm", every_steps=100_000, batches=20)
    if args.smoke:
        text_smoke(c)
        c.data.lowercase = True
        c.model.vocab_size = 30522
        c.data.seq_len = 128
        c.masking.max_predictions = 24
    return c
