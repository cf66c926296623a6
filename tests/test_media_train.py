"""The video and audio methods train from their configs through the one trainer, and resume exactly.

Tiny models on the real data paths: moving-CIFAR clips made from the bundled CIFAR-10 images, and
the Free Spoken Digit Dataset from ``../shared/data`` (FSDD cases skip without it).
"""

import numpy as np
import pytest

from maskjax.config import apply_overrides, load_config
from maskjax.train.loop import train
from tests.conftest import REPO_ROOT

_VIDEO_TINY = {"model.variant": "mu/8", "data.num_frames": 4, "data.image_size": 32, "data.augment": "none",
               "model.decoder_width": 32, "model.decoder_heads": 2, "model.decoder_depth": 1}
CASES = {
    "videomae": ("configs/videomae/moving_cifar.py:smoke", _VIDEO_TINY),
    "videomae_v2": ("configs/videomae_v2/videomae_v2.py:size=B,smoke",
                    {**_VIDEO_TINY, "data.augment": "multiscale_crop", "data.sampling_rate": 2}),
    "mae_st": ("configs/mae_st/mae_st.py:smoke", {**_VIDEO_TINY, "model.pred_t_dim": 2}),
    "audiomae": ("configs/audiomae/fsdd.py:smoke", {"model.variant": "mu/16", "model.swin_depth": 2,
                                                    "model.decoder_width": 32, "model.decoder_heads": 2}),
}


def _config(name, **extra):
    spec, overrides = CASES[name]
    config = load_config(str(REPO_ROOT / spec.split(":")[0]) + ":" + spec.split(":")[1])
    apply_overrides(config, {**overrides, "progress": False, "log_every_steps": 1, **extra})
    return config


# MAE-ST's loss and gradients under jit are tested in tests/test_mae_st.py; its trainer run here goes
# with -m slow (CI time).
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "mae_st" else n
                                  for n in sorted(CASES)])
def test_trains_from_config(name, tmp_path, request):
    if name == "audiomae":
        request.getfixturevalue("shared_data")
    config = _config(name)
    result = train(config, str(tmp_path / "run"))
    assert result.step == config.total_steps
    losses = [h["loss"] for h in result.history]
    assert len(losses) == config.total_steps and np.all(np.isfinite(losses)) and losses[0] > 0


@pytest.mark.slow  # three trainings; the image and text resume tests cover the same loop by default
def test_video_resume_equals_straight_run(tmp_path):
    """3 + 3 steps with a restart give the losses of 6 straight steps (same data, masks, state)."""
    straight = train(_config("videomae_v2", total_steps=6), str(tmp_path / "a"))
    config = _config("videomae_v2", total_steps=6)
    config.checkpoint.every_steps = 3
    train(config, str(tmp_path / "b"), stop_at_step=3)
    resumed = train(config, str(tmp_path / "b"))
    a = [h["loss"] for h in straight.history][3:]
    b = [h["loss"] for h in resumed.history][-3:]
    np.testing.assert_allclose(b, a, rtol=1e-5)
