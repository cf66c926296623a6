"""The video input pipeline of VideoMAE / VideoMAE V2 / MAE-ST.

Modules (each imported on demand, so ``import maskjax.data.video.modality`` stays cheap):

- ``decode``: PyAV decoding (`video_info`, `read_frames`, `write_video`).
- ``sampling``: the official frame sampling (VideoMAE pre-training and multi-view testing).
- ``transforms``: GroupMultiScaleCrop, eval resize + center crop, normalisation.
- ``sources``: video folders, pre-decoded ArrayRecord clips, TFDS, moving CIFAR.
- ``predecode``: the one-time decode of a video folder into ArrayRecord shards of JPEG frames.
- ``moving_cifar``: synthetic clips of CIFAR-10 images moving over a canvas.
- ``pipeline``: the grain pipeline (`make_video_pipeline`, `take_clips`, `take_views`).
- ``modality``: the ``"video"`` modality the trainer uses.
- ``benchmark``: clips/s of the pipeline on this machine.
"""
