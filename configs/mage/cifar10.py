"""MAGE on CIFAR-10 tokens, sized for a CPU (maskjax's recipe, not a paper's).

The method is the official one (specs/methods_text_gen.md 10; LTH14/mage ``models_mage.py``): one
mask rate per batch from TruncNorm(0.55, 0.25, [0.5, 1.0]), ``ceil(0.5 N)`` tokens dropped from
the encoder input, the rest of the masked tokens fed as [MASK], the decoder filling masked
positions with the class-token output, the tied detached MLM layer and label-smoothed (0.1)
cross-entropy on the masked tokens only; AdamW (0.9, 0.95), weight decay 0.05, gradient clip 3.0.
At CPU scale: 8x8 tokens per 32x32 image (a tokenizer with down-sampling factor 4; the encoder
sees 1 + 32 tokens, the decoder 1 + 64), a 4-block encoder and a 2-block decoder of width 128
(4 heads, dropout 0.1), batch 128 for 5,000 steps, lr 5e-4 with a 5 % warm-up and cosine decay.
These sizes and the lr are chosen, not tuned; no result is claimed here. The probe and kNN
evaluators read the frozen feature of the official linear probe (global pool + parameter-free
LayerNorm). Generation: 20 steps, choice temperature 6.0 (the README's ImageNet setting).

Data: CIFAR-10 tokenized once by ``maskjax tokenize-images`` with the CIFAR-10 VQ tokenizer into
``$MASKJAX_CIFAR10_TOKENS/{train,test}`` (or ``$MASKJAX_DATA_DIR/cifar10_tokens``); the codebook
size must be the tokenizer's (``:codebook=N``, default 1024). ``:synthetic`` trains on synthetic
class prototypes instead (no tokenizer needed).

Command:
  maskjax train --config configs/mage/cifar10.py --workdir runs/mage_cifar10
Hardware: a 2-core CPU (not yet timed). ``:smoke`` runs two CPU steps of a micro model on
synthetic 8x8 token grids.
"""

from maskjax.config import dataset_path, method_config, parse_arg, smoke
from maskjax.data.image_tokens import synthetic_token_data
from maskjax.methods.mage import MAGE

CPU_MODEL = dict(variant="mage-cifar", width=128, depth=4, heads=4, decoder_width=128, decoder_depth=2,
                 decoder_heads=4, mlp_ratio=4.0, dropout=0.1, attention_dropout=0.1)
SMOKE_MODEL = dict(variant="mage-smoke", width=32, depth=2, heads=2, decoder_width=32, decoder_depth=1,
                   decoder_heads=2)


def get_config(arg=None):
    """``arg``: smoke | synthetic, and codebook, steps, batch, lr."""
    args = parse_arg(arg, smoke=False, synthetic=False, codebook=1024, steps=5000, batch=128, lr=5e-4)
    c = MAGE.fill_config(method_config("mage"), **CPU_MODEL)
    root = dataset_path("cifar10_tokens", "MASKJAX_CIFAR10_TOKENS")
    c.data.update(dict(kind="array_record_tokens", path=str(root / "train"), eval_path=str(root / "test"),
                       grid_size=8, codebook_size=args.codebook, num_classes=10))
    c.mage.update(dict(mask_ratio_min=0.5, mask_ratio_max=1.0, mask_ratio_mu=0.55, mask_ratio_std=0.25,
                       ratio_groups=1, label_smoothing=0.1, sample_steps=20, choice_temperature=6.0))
    c.global_batch = args.batch
    c.total_steps = args.steps
    c.optim.update(dict(name="adamw", base_lr=args.lr, lr_batch_denominator=0, b1=0.9, b2=0.95, eps=1e-8,
                        weight_decay=0.05, schedule="cosine", min_lr=0.0, warmup_steps=max(1, args.steps // 20)))
    c.optim.grad_clip = 3.0
    c.checkpoint.every_steps = max(1, args.steps // 10)
    c.log_every_steps = max(1, min(50, args.steps // 100))
    c.evals.probe = dict(type="quick_probe", train_examples=10000, test_examples=2000)
    c.evals.knn = dict(type="knn", train_examples=10000, test_examples=2000, k=20)
    if args.synthetic:
        synthetic_token_data(c, examples=10_000, eval_examples=1_000)
    if args.smoke:
        c.model.update(SMOKE_MODEL)
        smoke(c, data=synthetic_token_data)
    return c
