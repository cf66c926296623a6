"""MaskGIT class-conditional on CIFAR-10 tokens, sized for a CPU (maskjax's recipe, not a paper's).

The method is the paper's (specs/methods_text_gen.md 9: ``[class] + tokens``, vocabulary codebook
+ 10 + 1, cosine masking with r ~ U[0, 1), label-smoothed (0.1) cross-entropy on masked tokens
only, Adam (0.9, 0.96), weight decay 4.5e-2, EMA 0.999; decoding with choice temperature 4.5 and
the cosine schedule, 8 steps by default) at CPU scale: 8x8 tokens per 32x32 image (a tokenizer
with down-sampling factor 4), a 4-layer transformer of width 128 (4 heads, FFN 512, dropout 0.1),
batch 128 for 5,000 steps, lr 5e-4 with a 250-step warm-up and cosine decay (a short run; the
official constant lr after warm-up serves 2M steps). These sizes and the lr are chosen, not tuned;
no result is claimed here (the table of docs/results/ measures FID against steps and schedules).

Data: CIFAR-10 tokenized once by ``maskjax tokenize-images`` with the CIFAR-10 VQ tokenizer into
``$MASKJAX_CIFAR10_TOKENS/{train,test}`` (or ``$MASKJAX_DATA_DIR/cifar10_tokens``); the codebook size
must be the tokenizer's (``:codebook=N``, default 1024). ``:synthetic`` trains on synthetic class
prototypes instead (no tokenizer needed).

Command:
  maskjax train --config configs/maskgit/cifar10.py --workdir runs/maskgit_cifar10
  maskjax train --config configs/maskgit/cifar10.py:codebook=512,steps=2000 --workdir runs/maskgit_c10_short
``:smoke`` runs two CPU steps of a micro transformer on synthetic 8x8 token grids.
"""

from maskjax.config import dataset_path, method_config, parse_arg, smoke
from maskjax.data.image_tokens import synthetic_token_data
from maskjax.methods.maskgit import MaskGIT

CPU_MODEL = dict(variant="maskgit-cifar", hidden=128, depth=4, heads=4, intermediate=512, dropout=0.1,
                 attention_dropout=0.1)
SMOKE_MODEL = dict(variant="maskgit-smoke", hidden=32, depth=2, heads=2, intermediate=64)


def get_config(arg=None):
    """``arg``: smoke | synthetic, and codebook, steps, batch, lr."""
    args = parse_arg(arg, smoke=False, synthetic=False, codebook=1024, steps=5000, batch=128, lr=5e-4)
    c = MaskGIT.fill_config(method_config("maskgit"), **CPU_MODEL)
    root = dataset_path("cifar10_tokens", "MASKJAX_CIFAR10_TOKENS")
    c.data.update(dict(kind="array_record_tokens", path=str(root / "train"), eval_path=str(root / "test"),
                       grid_size=8, codebook_size=args.codebook, num_classes=10))
    c.maskgit.update(dict(mask_schedule="cosine", label_smoothing=0.1, sample_steps=8, choice_temperature=4.5,
                          sample_schedule="cosine", ema_decay=0.999))
    c.global_batch = args.batch
    c.total_steps = args.steps
    c.optim.update(dict(name="adamw", base_lr=args.lr, lr_batch_denominator=0, b1=0.9, b2=0.96, eps=1e-8,
                        weight_decay=4.5e-2, schedule="cosine", min_lr=0.0, warmup_steps=max(1, args.steps // 20)))
    c.checkpoint.every_steps = max(1, args.steps // 10)
    c.log_every_steps = max(1, min(50, args.steps // 100))
    if args.synthetic:
        synthetic_token_data(c, examples=10_000, eval_examples=1_000)
    if args.smoke:
        c.model.update(SMOKE_MODEL)
        smoke(c, data=synthetic_token_data)
    return c
