"""The schedule follows an overridden total_steps, and the logged lr is the schedule's value at the
logged step (issue 25: the plot showed a warm-up peaking a log window late; a 30-step run was all
warm-up)."""

from __future__ import annotations

import json

import pytest

from maskjax.train.loop import schedule_steps, train, training_parts


def test_warmup_in_epochs_keeps_its_fraction_of_an_overridden_run(tiny):
    config = tiny(epochs=10, total_steps=None, **{"optim.warmup_epochs": 2.0})
    # 1000 examples at batch 16: 62 steps per epoch.
    assert schedule_steps(config, 1000) == (62, 620, 124)  # from epochs: 2 epochs of warm-up
    config = tiny(epochs=10, total_steps=30, **{"optim.warmup_epochs": 2.0})
    assert schedule_steps(config, 1000) == (62, 30, 6)  # 2/10 of 30 steps, not 124 (all warm-up)
    config = tiny(epochs=10, total_steps=30, **{"optim.warmup_epochs": 2.0, "optim.warmup_steps": 5})
    assert schedule_steps(config, 1000) == (62, 30, 5)  # warmup_steps: steps, as given


def test_logged_lr_is_the_schedule_at_the_logged_step(tiny, tmp_path):
    config = tiny(total_steps=8, log_every_steps=4, epochs=4, **{"optim.warmup_epochs": 2.0, "checkpoint.every_steps": 4})
    result = train(config, str(tmp_path), run_evals=False)
    _, total, warmup = schedule_steps(config, config.data.num_train_examples or 10_000)
    assert (total, warmup) == (8, 4)
    _, schedule, *_ = training_parts(config, result.method, warmup, total)
    with open(tmp_path / "metrics.jsonl") as f:
        logged = {r["step"]: r["lr"] for r in map(json.loads, f) if "lr" in r}
    assert sorted(logged) == [4, 8]
    for step, lr in logged.items():
        # The update that produced step s used schedule(s - 1); a window mean would differ.
        assert lr == pytest.approx(float(schedule(step - 1)), rel=1e-6)
    window_mean = sum(float(schedule(s)) for s in range(4)) / 4
    assert logged[4] != pytest.approx(window_mean, rel=1e-3)
