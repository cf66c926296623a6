"""Config schemas of the video (VideoMAE, VideoMAE V2, MAE-ST) and audio (AudioMAE) families.

Both start from :func:`maskjax.config.base_config` (optimiser, mesh, checkpoint and evaluator
fields are shared) and replace the ``model``, ``masking`` and ``data`` sections. Defaults are the
official pre-training recipes (specs/methods_vision.md sections 5-8); recipes under
``configs/`` override them.
"""

from __future__ import annotations

import pathlib

import ml_collections
from ml_collections import config_dict

from maskjax.config import base_config

# ImageNet statistics: VideoMAE and MAE-ST normalise frames with them.
_PATH_FIELDS = ("path", "eval_path", "name", "data_dir")


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
    for field in _PATH_FIELDS:
        c.data[field] = config_dict.placeholder(str)
    c.data.num_train_examples = config_dict.placeholder(int)
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
    for field in _PATH_FIELDS:
        c.data[field] = config_dict.placeholder(str)
    c.data.num_train_examples = config_dict.placeholder(int)
    c.global_batch = 512
    c.epochs = 33
    c.optim.base_lr = 2e-4
    c.optim.weight_decay = 1e-4
    c.optim.warmup_epochs = 3.0
    return c


def shared_data_dir() -> pathlib.Path:
    """``../shared/data`` beside the checkout (the offline stand-ins of the datasets)."""
    return pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def fsdd_data(config: ml_collections.ConfigDict) -> None:
    """Points an audio config at the Free Spoken Digit Dataset (8 kHz, official split)."""
    import os

    path = os.environ.get("MASKJAX_FSDD") or str(shared_data_dir() / "fsdd" / "recordings.tar")
    config.data.kind = "fsdd"
    config.data.path = path
    config.data.eval_path = path
    config.data.split = "train"
    config.data.eval_split = "test"
    config.data.sample_rate = 8000


def embedded_cifar_tars() -> tuple[str, str]:
    """The CIFAR-10 subset shipped in the package (train, test tars): moving-CIFAR clips for smoke runs."""
    from maskjax.data import embedded_cifar10_path

    root = embedded_cifar10_path()
    return f"{root}/train.tar.gz", f"{root}/test.tar.gz"


def moving_cifar_data(config: ml_collections.ConfigDict, *, embedded: bool = True) -> None:
    """Points a video config at synthetic moving-CIFAR-10 clips (``maskjax.data.video.moving_cifar``).

    ``embedded``: the 10,000-image subset inside the package; else the full CIFAR-10 tars in
    ``../shared/data/cifar10`` (``$MASKJAX_CIFAR10`` overrides the folder).
    """
    import os

    if embedded:
        train, test = embedded_cifar_tars()
    else:
        root = pathlib.Path(os.environ.get("MASKJAX_CIFAR10") or shared_data_dir() / "cifar10")
        train, test = str(root / "train.tar"), str(root / "test.tar")
    config.data.kind = "moving_cifar"
    config.data.path = train
    config.data.eval_path = test
    config.data.split = "train"
    config.data.eval_split = "test"


def media_smoke(config: ml_collections.ConfigDict, *, global_batch: int = 8, steps: int = 2) -> None:
    """Shrinks a video/audio recipe's run (not its model) to a few CPU steps on bundled data."""
    if config.method == "audiomae":
        fsdd_data(config)
    else:
        moving_cifar_data(config)
    config.global_batch = global_batch
    config.grad_accum = 1
    config.total_steps = steps
    config.optim.warmup_epochs = 0.0
    config.evals = ml_collections.ConfigDict()
