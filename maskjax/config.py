"""The config schema every recipe fills in, and the ``file.py:arg`` loader.

Recipes under ``configs/`` start from :func:`base_config` and override fields; the config is
locked, so a typo in an override (``--config.optim.lrr``) fails with "did you mean" instead of
being silently ignored.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import ml_collections
from ml_collections import config_dict

from maskjax.train.sharding import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all methods (MAE pre-training values where a choice is needed)."""
    c = ml_collections.ConfigDict()
    c.method = "mae"
    c.seed = 0
    c.compute_dtype = "float32"   # "bfloat16": bf16 compute, float32 parameters
    # Rematerialisation: False/True (off / whole block) or a policy name, "none" | "full" | "dots" |
    # "attention" (maskjax/models/remat.py); typed `object` so a bool or a name can be set.
    c.remat = config_dict.FieldReference(False, field_type=object)
    c.compile_cache_dir = config_dict.placeholder(str)  # JAX persistent compilation cache (None = off)

    c.model = ml_collections.ConfigDict(dict(
        variant="B/16", in_chans=3, decoder_width=512, decoder_depth=8, decoder_heads=16))
    c.model.attention_impl = config_dict.placeholder(str)  # None = XLA picks; "cudnn" forces it
    c.model.scan_layers = False   # stack the blocks and apply them with nnx.scan (faster compile)
    c.masking = ml_collections.ConfigDict(dict(ratio=0.75))
    c.loss = ml_collections.ConfigDict(dict(norm_pix=True))

    c.data = ml_collections.ConfigDict(dict(
        kind="folder",            # folder (dir or tar) | array_record | tfds
        split="train",
        eval_split="test",
        image_size=224,
        augment="mae",
        crop_pct=0.875,           # eval preprocessing: resize to size/crop_pct, center crop (1.0 for 32x32 data)
        num_workers=0,
        shuffle_seed=0,
    ))
    c.data.path = config_dict.placeholder(str)
    c.data.eval_path = config_dict.placeholder(str)
    c.data.name = config_dict.placeholder(str)       # TFDS dataset name
    c.data.data_dir = config_dict.placeholder(str)   # TFDS data_dir
    c.data.num_train_examples = config_dict.placeholder(int)  # default: len(source)

    c.global_batch = 4096
    c.grad_accum = 1
    c.epochs = 800
    c.total_steps = config_dict.placeholder(int)    # overrides epochs when set

    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", base_lr=1.5e-4, lr_batch_denominator=256, b1=0.9, b2=0.95, eps=1e-8,
        weight_decay=0.05, warmup_epochs=40.0, min_lr=0.0,
        schedule="cosine",        # cosine (MAE) | linear (BERT) | linear_electra (warmup multiplies the decay)
        bias_correction=True,     # False: BERT/ELECTRA's AdamWeightDecayOptimizer
    ))
    # lr = base_lr * global_batch / lr_batch_denominator; 0 uses base_lr as is (BERT recipes).
    c.optim.grad_clip = config_dict.placeholder(float)
    c.optim.warmup_steps = config_dict.placeholder(int)  # overrides warmup_epochs when set

    # FSDP by default: every device on "fsdp"; parameters sharded along "embed", batch over data x fsdp.
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.sharding_rules = [list(rule) for rule in DEFAULT_RULES]

    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=1000, max_to_keep=3,
        data_state_mismatch="error",  # "error" | "reset": what to do when the data state cannot resume exactly
    ))
    c.log_every_steps = 50
    c.progress = True
    c.watchdog_seconds = 0  # report a step not finished after this many seconds (0 = off)

    # Evaluators by name (maskjax.eval.registry): {"name": {"type": ..., "every_steps": N, ...}}.
    # every_steps=0 runs only after training; after_training=False keeps one out of that final run.
    c.evals = ml_collections.ConfigDict()
    return c


def text_base_config() -> ml_collections.ConfigDict:
    """Defaults of the masked-language-model family (BERT's recipe where a choice is needed).

    google-research/bert: post-LN BERT-Base, 128-token blocks, 15 % masking with 80/10/10 and
    ``max_predictions_per_seq`` 20, AdamW without bias correction (0.9, 0.999, eps 1e-6, wd
    0.01), lr 1e-4 with 10k warmup steps then linear decay, clip 1.0. Recipes override fields.
    """
    c = base_config()
    c.method = "bert"
    c.model = ml_collections.ConfigDict(dict(
        variant="Base",            # maskjax.models.bert.TEXT_SIZES
        vocab_size=30522,          # padded up from the tokenizer's size when that is larger
        max_positions=512, type_vocab_size=2, dropout=0.1, attention_dropout=0.1,
        hidden_act="gelu",         # gelu (exact, as Hugging Face) | gelu_tanh (original TF BERT)
        nsp=False,                 # BERT's next-sentence head (needs data.nsp)
        sbo=False,                 # SpanBERT's span-boundary objective head
        sbo_weight=1.0, max_pair_targets=15,
        generator_fraction=0.25,   # ELECTRA: generator width / discriminator width
        disc_weight=50.0, gen_weight=1.0, temperature=1.0,
    ))
    c.model.attention_impl = config_dict.placeholder(str)
    c.masking = ml_collections.ConfigDict(dict(
        kind="bert",               # bert | whole_word | uniform | span | ngram | electra
        ratio=0.15,
        schedule="constant",       # constant | linear | cosine | step (masking-rate schedules)
        final_ratio=0.15,          # end rate of a schedule
        mix=(0.8, 0.1, 0.1),       # [MASK] / random token / unchanged
        count="bert",              # bert | exact | fairseq | bernoulli (uniform masking's count rule)
        max_predictions=20,        # static number of predicted positions per sequence
        span_p=0.2, max_span=10,   # SpanBERT geometric spans (in words)
        span_replacement="span",   # span: one 80/10/10 draw per span | word_piece: per token
        max_ngram=3,
        eval_ratio=0.15,           # the held-out evaluation always masks this fraction
    ))
    c.loss = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(dict(
        kind="text",               # text (files) | tfds_text | array_record_text (maskjax tokenize)
        split="train", eval_split="validation",
        doc_format="blank_line",   # blank_line (BERT's one-sentence-per-line files) | wikitext
        seq_len=128,
        vocab_size=30522,          # size of a vocabulary trained on the train files (no vocab_path)
        lowercase=True,
        nsp=False,                 # build [CLS] A [SEP] B [SEP] pairs with next-sentence labels
        text_field="text",
        num_workers=0, shuffle_seed=0,
    ))
    for field in ("path", "eval_path", "name", "data_dir", "vocab_path", "cache_dir"):
        c.data[field] = config_dict.placeholder(str)
    c.data.num_train_examples = config_dict.placeholder(int)
    c.global_batch = 256
    c.epochs = 40
    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", base_lr=1e-4, lr_batch_denominator=0, b1=0.9, b2=0.999, eps=1e-6,
        weight_decay=0.01, warmup_epochs=0.0, min_lr=0.0, schedule="linear", bias_correction=False))
    c.optim.grad_clip = 1.0
    c.optim.warmup_steps = 10_000
    return c


def tfds_wikipedia(config: ml_collections.ConfigDict, seq_len: int = 128) -> None:
    """Points a text recipe at TFDS ``wikipedia/20230601.en`` (prepared by the user), 1 % held out."""
    config.data.kind = "tfds_text"
    config.data.name = "wikipedia/20230601.en"
    config.data.split = "train"
    config.data.eval_split = "train[:1%]"
    config.data.seq_len = seq_len


def wikitext2_dir() -> pathlib.Path:
    """Where WikiText-2 (``valid.txt``, ``test.txt``) lives: ``$MASKJAX_WIKITEXT2`` or ``../shared/data``."""
    import os

    env = os.environ.get("MASKJAX_WIKITEXT2")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2"


def wikitext2_data(config: ml_collections.ConfigDict, vocab_size: int = 8192) -> None:
    """Points a text config at WikiText-2: train on ``valid.txt``, evaluate on ``test.txt``.

    The vocabulary is a WordPiece of ``vocab_size`` trained on the training file (cached).
    """
    root = wikitext2_dir()
    config.data.kind = "text"
    config.data.doc_format = "wikitext"
    config.data.path = str(root / "valid.txt")
    config.data.eval_path = str(root / "test.txt")
    config.data.vocab_path = None
    config.data.vocab_size = vocab_size


def text_smoke(config: ml_collections.ConfigDict, *, global_batch: int = 8, steps: int = 2) -> None:
    """Shrinks a text recipe's run (not its model) to a few CPU steps on WikiText-2."""
    wikitext2_data(config)
    _shrink_run(config, global_batch, steps)
    config.optim.warmup_steps = 1


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` by calling its ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location(f"maskjax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config(arg) function")
    return module.get_config(arg or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
    """Sets dotted keys (``optim.base_lr``) on a config; unknown keys raise a clear error."""
    for dotted, value in overrides.items():
        node = config
        parts = dotted.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise KeyError(f"unknown config field {dotted!r}")
            node = node[part]
        if parts[-1] not in node:
            raise KeyError(f"unknown config field {dotted!r}")
        node[parts[-1]] = value


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses a config argument ``"smoke"`` or ``"epochs=1600,smoke"`` against typed defaults.

    A bare word sets a boolean default to True; ``key=value`` is converted to the default's type.
    Unknown keys raise a clear error listing the accepted ones.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; accepted: {sorted(defaults)}")
        kind = type(defaults[key])
        if not eq:
            if kind is not bool:
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            out[key] = True
        elif kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = kind(value)
    return ml_collections.ConfigDict(out)


def embedded_data(config: ml_collections.ConfigDict, image_size: int | None = None) -> None:
    """Points ``config.data`` at the CIFAR-10 subset shipped inside the package (no download)."""
    from maskjax.data import embedded_cifar10_path

    root = embedded_cifar10_path()
    config.data.kind = "folder"
    config.data.path = f"{root}/train.tar.gz"
    config.data.eval_path = f"{root}/test.tar.gz"
    config.data.split = "train"
    config.data.eval_split = "test"
    config.data.name = None
    if image_size is not None:
        config.data.image_size = image_size


def smoke(config: ml_collections.ConfigDict, *, global_batch: int = 8, steps: int = 2) -> None:
    """Shrinks a recipe's run (not its model) to a few CPU steps on the embedded images."""
    embedded_data(config)
    _shrink_run(config, global_batch, steps)
    config.optim.warmup_epochs = 0.0


def _shrink_run(config: ml_collections.ConfigDict, global_batch: int, steps: int) -> None:
    """A few logged steps on whatever devices there are, with no evaluators."""
    config.global_batch = global_batch
    config.grad_accum = 1
    config.total_steps = steps
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1
    config.log_every_steps = 1
    config.checkpoint.every_steps = steps
    config.evals = ml_collections.ConfigDict()
