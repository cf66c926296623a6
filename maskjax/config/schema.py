"""The config schema: defaults every recipe starts from, per family.

:func:`core_config` holds the fields the engine reads for every method (optimiser, mesh,
checkpoint, evaluators, an image ``data`` section); :func:`base_config` adds MAE's ``model``,
``masking`` and ``loss`` sections, and the family functions replace them with their official
defaults (specs sections 1-8). A new method starts from :func:`method_config`, which adds only its
own section. The configs are locked ml-collections ConfigDicts, so a typo in an override fails.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# maskjax.core.mesh (not maskjax.core.sharding): the config schema sits below train and eval, which both
# read it, so it takes the default rules from the shared low-level mesh module.
from maskjax.core.mesh import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    """:func:`core_config` with MAE's ``model``, ``masking`` and ``loss`` sections (ViT-B/16, ratio 0.75, norm-pix)."""
    c = core_config()
    c.method = "mae"
    c.model = ml_collections.ConfigDict(dict(
        variant="B/16", in_chans=3, decoder_width=512, decoder_depth=8, decoder_heads=16))
    c.model.attention_impl = config_dict.placeholder(str)  # None = XLA picks; "cudnn" forces it
    c.model.scan_layers = False   # stack the blocks and apply them with nnx.scan (faster compile)
    c.masking = ml_collections.ConfigDict(dict(ratio=0.75))
    c.loss = ml_collections.ConfigDict(dict(norm_pix=True))
    return c


def core_config() -> ml_collections.ConfigDict:
    """Fields every method shares: run options, an image ``data`` section, optimiser, mesh, checkpoints, evals.

    ``method`` is unset; :func:`method_config` sets it and adds the method's own section.
    """
    c = ml_collections.ConfigDict()
    c.method = config_dict.placeholder(str)
    c.seed = 0
    c.compute_dtype = "float32"   # "bfloat16": bf16 compute, float32 parameters
    # Rematerialisation: False/True (off / whole block) or a policy name, "none" | "full" | "dots" |
    # "attention" (maskjax/models/remat.py); typed `object` so a bool or a name can be set.
    c.remat = config_dict.FieldReference(False, field_type=object)
    c.compile_cache_dir = config_dict.placeholder(str)  # JAX persistent compilation cache (None = off)

    c.data = ml_collections.ConfigDict(dict(
        kind="folder",            # folder (dir or tar) | array_record | tfds
        split="train",
        eval_split="test",
        image_size=224,
        augment="mae",
        crop_pct=0.875,           # eval preprocessing: resize to size/crop_pct, center crop (1.0 for 32x32 data)
        num_workers=0,
        shuffle_seed=0,
        max_bad_fraction=0.01,    # unreadable images are skipped (one warning each) up to this share, then DataError
    ))
    c.data.path = config_dict.placeholder(str)
    c.data.eval_path = config_dict.placeholder(str)
    c.data.name = config_dict.placeholder(str)       # TFDS dataset name
    c.data.data_dir = config_dict.placeholder(str)   # TFDS data_dir
    c.data.num_train_examples = config_dict.placeholder(int)  # default: len(source)

    c.global_batch = 4096
    c.grad_accum = 1
    c.epochs = 800
    # Overrides epochs when set. The schedule follows it: a warm-up given in epochs keeps its
    # fraction warmup_epochs / epochs of the run (see maskjax.train.loop.schedule_steps).
    c.total_steps = config_dict.placeholder(int)

    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", base_lr=1.5e-4, lr_batch_denominator=256, b1=0.9, b2=0.95, eps=1e-8,
        weight_decay=0.05, warmup_epochs=40.0, min_lr=0.0,
        schedule="cosine",        # cosine (MAE) | linear (BERT) | linear_electra (warmup multiplies the decay)
                                  # | multistep (SimMIM: x gamma at each milestone) | constant (MDLM)
        milestones=(),            # multistep: fractions of the run where the lr is multiplied by gamma
        no_weight_decay_names=(),  # parameter names exempt from weight decay besides 1-D ones and biases
        gamma=0.1,
        bias_correction=True,     # False: BERT/ELECTRA's AdamWeightDecayOptimizer
    ))
    # lr = base_lr * global_batch / lr_batch_denominator; 0 uses base_lr as is (BERT recipes).
    c.optim.grad_clip = config_dict.placeholder(float)
    # Overrides warmup_epochs when set; a number of steps, unchanged by a total_steps override.
    c.optim.warmup_steps = config_dict.placeholder(int)

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
    c.model.scan_layers = False   # stack the blocks and apply them with nnx.scan (faster compile)
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


# ImageNet statistics: VideoMAE and MAE-ST normalise frames with them.
_PATH_FIELDS = ("path", "eval_path", "name", "data_dir")


def _add_path_fields(data: ml_collections.ConfigDict) -> None:
    """Unset (typed) path fields of a media ``data`` section and its optional example count."""
    for field in _PATH_FIELDS:
        data[field] = config_dict.placeholder(str)
    data.num_train_examples = config_dict.placeholder(int)


def video_base_config() -> ml_collections.ConfigDict:
    """Defaults of the video family: VideoMAE ViT-B, 16 frames at stride 4, tube masking at 0.9.

    ``data.kind``: ``video_folder`` (video files decoded with PyAV, label = sub-folder),
    ``array_record_video`` (clips pre-decoded once by ``maskjax predecode-video``),
    ``tfds_video`` (a prepared TFDS dataset) or ``moving_cifar`` (synthetic clips of CIFAR-10
    images moving over a canvas, built from ``data.path``).
    """
    c = base_config()
    c.method = "videomae"
    c.model = ml_collections.ConfigDict(dict(
        variant="B/16",
        tubelet_size=2,            # temporal patch size (2x16x16 tubelets)
        decoder_width=384, decoder_depth=4, decoder_heads=6,
        pred_t_dim=8,              # MAE-ST: target frames the decoder predicts
        sep_pos_embed=True,        # MAE-ST: separable learned space / time position embeddings
        cls_embed=True,            # MAE-ST: a cls token in encoder and decoder
        trunc_init=False,          # MAE-ST: trunc-normal instead of xavier initialisation
    ))
    c.model.attention_impl = config_dict.placeholder(str)
    c.model.scan_layers = False   # stack the blocks and apply them with nnx.scan (faster compile)
    c.masking = ml_collections.ConfigDict(dict(
        kind="tube",               # tube (VideoMAE) | random (MAE-ST, spacetime-agnostic)
        ratio=0.9,
        decoder_ratio=0.0,         # VideoMAE V2 running-cell decoder masking (0.5); 0 = off
    ))
    c.loss = ml_collections.ConfigDict(dict(norm_pix=True))
    c.data = ml_collections.ConfigDict(dict(
        kind="video_folder",
        split="train", eval_split="test",
        num_frames=16, sampling_rate=4,
        image_size=224,
        augment="multiscale_crop",  # multiscale_crop (GroupMultiScaleCrop, no flip) | none
        test_clips=1, test_crops=1,  # multi-view testing of the fine-tune evaluator
        num_workers=0, shuffle_seed=0,
        frame_size=0,               # ArrayRecord pre-decoding: shorter side in pixels (0 = keep)
    ))
    _add_path_fields(c.data)
    # VideoMAE pre-training (section 5d): AdamW (0.9, 0.95), wd 0.05, lr 1.5e-4 x batch / 256,
    # warmup 40 epochs then cosine to 1e-5 (scaled).
    c.global_batch = 2048
    c.epochs = 800
    c.optim.base_lr = 1.5e-4
    c.optim.warmup_epochs = 40.0
    c.optim.min_lr = 1e-5 * c.global_batch / 256
    return c


def audio_base_config() -> ml_collections.ConfigDict:
    """Defaults of AudioMAE pre-training on AudioSet-2M (section 8d).

    ``data.kind``: ``wav_folder`` (WAV files, label = sub-folder or file-name prefix),
    ``fsdd`` (the Free Spoken Digit Dataset's ``recordings.tar``: official split, index 0-4 is
    test) or ``tfds_audio`` (a prepared TFDS dataset, e.g. ``spoken_digit``).
    """
    c = base_config()
    c.method = "audiomae"
    c.model = ml_collections.ConfigDict(dict(
        variant="B/16",
        decoder_mode="swin",       # swin (16 local-attention blocks, official default) | global
        decoder_width=512, decoder_depth=8, decoder_heads=16,
        window=(4, 4), shift=(2, 0),
        swin_depth=16,             # the official code hard-codes 16 local decoder blocks
        pos_embed="official",      # official: the sin-cos grid built (F, T)-transposed, as released; aligned
    ))
    c.model.attention_impl = config_dict.placeholder(str)
    c.model.scan_layers = False   # stack the blocks and apply them with nnx.scan (faster compile)
    c.masking = ml_collections.ConfigDict(dict(
        kind="random",             # random (unstructured, pre-training) | time_freq
        ratio=0.8, mask_t_prob=0.6, mask_f_prob=0.5,
    ))
    c.loss = ml_collections.ConfigDict(dict(norm_pix=True))
    c.data = ml_collections.ConfigDict(dict(
        kind="wav_folder",
        split="train", eval_split="test",
        sample_rate=16000,
        num_mel_bins=128, target_length=1024,
        frame_length_ms=25.0, frame_shift_ms=10.0,
        norm_mean=-4.2677393, norm_std=4.5689974,   # AudioSet statistics
        roll_mag_aug=True,
        freqm=0, timem=0,          # SpecAugment widths (fine-tuning only)
        num_workers=0, shuffle_seed=0,
    ))
    _add_path_fields(c.data)
    c.global_batch = 512
    c.epochs = 33
    c.optim.base_lr = 2e-4
    c.optim.weight_decay = 1e-4
    c.optim.warmup_epochs = 3.0
    return c


def method_config(name: str, base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """``base`` (default :func:`core_config`) set to method ``name``, with its own section at ``config.<name>``.

    The section holds the defaults of ``Method.config_section()``; a recipe file of a new method
    starts here, so ``--config.<name>.<option>=...`` overrides work like any other field.
    """
    from maskjax.methods import method_class

    config = core_config() if base is None else base
    cls = method_class(name)
    config.method = name
    section = cls.config_section()
    if section:
        config[name] = ml_collections.ConfigDict(section)
    return config
