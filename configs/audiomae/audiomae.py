"""AudioMAE (Huang et al., NeurIPS 2022; facebookresearch/AudioMAE): ViT-B pre-training on AudioSet-2M.

Recipe (specs/methods_vision.md section 8; ``submit_pretrain_audioset2M.sh``): 10 s clips at 16 kHz
as Kaldi log-mel filterbanks (128 bins, 25 ms Hann window, 10 ms shift, HTK mel), 1024 frames,
normalised with AudioSet's mean / std (x2); mean removal and roll-and-gain augmentation; 16x16
patches (64 time x 8 frequency tokens); unstructured masking at 0.8; encoder ViT-B with a cls
token and fixed sin-cos positions; the Swin-style local decoder (16 blocks, 512 wide, window 4x4,
shift (2, 0)); norm-pix MSE on hidden patches; AdamW (0.9, 0.95), wd 1e-4, blr 2e-4 x batch / 256
with batch 512, 33 epochs, warmup 3.

Fine-tuning (``task=as20k`` / ``task=as2m`` set ``evals.finetune``): time/frequency token dropping
(mask_t_prob = mask_f_prob = 0.2), layer decay 0.75, wd 5e-4, BCE with logits and mAP; AS-20K 60
epochs, warmup 4, blr 1e-3; AS-2M 100 epochs, warmup 10 (the README example passes blr 2e-4).
SpecAugment (freqm 48, timem 192) and mixup 0.5 of the official fine-tuning are pipeline options
(``data.freqm`` / ``data.timem``); the in-memory evaluator reads eval-preprocessed examples, so it
does not apply them.

Data: ``root/<split>/<class>/*.wav`` (``data.kind=wav_folder``) or a prepared TFDS dataset
(``data.kind=tfds_audio``). Command:

  maskjax train --config configs/audiomae/audiomae.py --config.data.path=/data/audioset \\
      --workdir gs://BUCKET/audiomae_b

Expected (official README, not measured by us): AS-2M fine-tuned ViT-B 47.3 mAP, AS-20K about
37.0 mAP. ``:smoke`` runs two steps of the same model on the Free Spoken Digit Dataset (CPU).
"""

from maskjax.config import parse_arg
from maskjax.config import audio_base_config, media_smoke

FINETUNE = {
    "as20k": dict(epochs=60, warmup_epochs=4, lr=1e-3 * 32 / 256, batch_size=32),
    "as2m": dict(epochs=100, warmup_epochs=10, lr=2e-4 * 256 / 256, batch_size=256),
}


def get_config(arg=None):
    """``arg``: decoder=swin|global, task=as20k|as2m (fine-tune evaluator), smoke."""
    args = parse_arg(arg, decoder="swin", task="as20k", smoke=False)
    if args.task not in FINETUNE:
        raise ValueError(f"task must be one of {sorted(FINETUNE)}, got {args.task!r}")
    c = audio_base_config()
    c.model.variant = "B/16"
    c.model.decoder_mode = args.decoder
    c.masking.kind = "random"
    c.masking.ratio = 0.8
    c.checkpoint.every_steps = 5000
    c.evals.finetune = dict(type="media_finetune", every_steps=0, after_training=False,
                            layer_decay=0.75, weight_decay=5e-4, mask_t_prob=0.2, mask_f_prob=0.2,
                            # head trunc-normal std 2e-5 as MAE fine-tuning (0.02 x 0.001).
                            label_smoothing=0.0, head_init_scale=0.001, **FINETUNE[args.task])
    if args.smoke:
        media_smoke(c, audio=True)
    return c
