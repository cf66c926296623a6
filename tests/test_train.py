"""Trainer behaviour: metrics, NaN stop, schedules per step."""

import json
import os

import numpy as np
import pytest

from maskjax.train.loop import NonFiniteLoss, train
from maskjax.train.metrics import read_metrics


def test_train_writes_metrics_config_and_learns(tiny, tmp_path):
    config = tiny(**{"total_steps": 8, "log_every_steps": 2})
    result = train(config, str(tmp_path))
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    for key in ("loss", "lr", "grad_norm", "steps_per_sec", "data_wait"):
        assert key in records[0]
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["model"]["variant"] == "mu/4"
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert os.path.isdir(tmp_path / "checkpoints" / "8")


def test_nan_loss_stops_with_the_step_named(tiny, tmp_path):
    config = tiny(**{"total_steps": 6, "optim.base_lr": 1e30, "log_every_steps": 100})
    # The first non-finite check may be the updated parameters' norm rather than the loss.
    with pytest.raises(NonFiniteLoss, match=r"(loss|grad_norm|param_norm) is (nan|inf) at step \d"):
        train(config, str(tmp_path))
    # Nothing non-finite was checkpointed.
    assert not os.path.exists(tmp_path / "checkpoints") or not any(
        d.isdigit() for d in os.listdir(tmp_path / "checkpoints"))


def test_lr_follows_warmup_then_cosine_per_step(tiny, tmp_path):
    config = tiny(**{"total_steps": 10, "optim.warmup_epochs": 0.0, "log_every_steps": 1})
    result = train(config, str(tmp_path))
    lrs = np.array([h["lr"] for h in result.history])
    peak = config.optim.base_lr * config.global_batch / 256
    assert lrs[0] == pytest.approx(peak)
    assert np.all(np.diff(lrs) < 0)
    assert lrs[-1] == pytest.approx(peak * 0.5 * (1 + np.cos(np.pi * 9 / 10)), rel=1e-5)
