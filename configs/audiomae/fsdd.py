"""AudioMAE mini reproduction on the Free Spoken Digit Dataset (real 8 kHz speech, CPU minutes).

Pre-trains a ViT-Pico/16 AudioMAE (96 wide, 4 deep; the official Swin-style local decoder, here
4 blocks 64 wide instead of 16 blocks 512 wide) for 8 epochs on the 2,700 training recordings of
FSDD (official split: recordings with index 0-4 are the test set), unstructured masking at 0.8,
then evaluates the frozen encoder with a linear probe and fine-tunes it for spoken-digit
classification, each against a randomly initialised encoder. Features: Kaldi log-mel filterbanks
(128 bins, 25 ms / 10 ms) of the 8 kHz audio, 64 frames (0.64 s: 93 % of FSDD clips are shorter
and zero-padded, the rest cropped), normalised with the FSDD training split's statistics. ``maskjax repro audiomae_fsdd`` runs it into docs/results/.

Command:
  maskjax train --config configs/audiomae/fsdd.py --workdir runs/audiomae_fsdd
"""

from maskjax.config import parse_arg
from maskjax.config import audio_base_config, fsdd_data, media_smoke

# FSDD train split, 8 kHz, 128 bins, 64 frames after zero-padding / cropping, mean removal, no
# augmentation: fbank_stats(FsddSource(recordings.tar, "train"), sample_rate=8000, num_mel_bins=128,
# target_length=64). (At 128 frames the statistics are -2.574 / 4.389: more padding zeros.)
FSDD_MEAN, FSDD_STD = -4.982534565548984, 4.965459124315625


def get_config(arg=None):
    """``arg``: epochs, masking=random|time_freq, smoke."""
    args = parse_arg(arg, epochs=8, masking="random", smoke=False)
    c = audio_base_config()
    fsdd_data(c)
    c.data.num_mel_bins = 128
    c.data.target_length = 64
    c.data.norm_mean, c.data.norm_std = FSDD_MEAN, FSDD_STD
    c.model.variant = "Pico/16"
    c.model.decoder_mode = "swin"
    c.model.decoder_width, c.model.decoder_heads, c.model.decoder_depth = 64, 4, 2
    # The official local decoder has 16 Swin blocks; 4 keep the two ledger rows within CPU minutes.
    c.model.swin_depth = 4
    c.masking.kind = args.masking
    c.masking.ratio = 0.8
    c.global_batch = 64
    c.epochs = args.epochs
    c.optim.base_lr = 1.5e-3
    c.optim.warmup_epochs = 2.0
    c.optim.weight_decay = 1e-4
    c.checkpoint.every_steps = 500
    c.log_every_steps = 50
    c.evals.probe = dict(type="feature_probe", train_examples=2700, test_examples=300, steps=500, pool="pooled")
    c.evals.finetune = dict(type="media_finetune", every_steps=0, train_examples=2700, test_examples=300,
                            epochs=10, batch_size=64, lr=1e-3, layer_decay=0.75, weight_decay=0.05,
                            warmup_epochs=1, mask_t_prob=0.2, mask_f_prob=0.2, label_smoothing=0.1,
                            head_init_scale=0.001, random_baseline=True)
    if args.smoke:
        media_smoke(c, audio=True)
    return c
