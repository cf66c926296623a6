"""Progress reporting (maskjax.progress): plain lines off a terminal, tqdm on one, silence when asked.

Also the trainer's console progress (maskjax.train.metrics.Progress) and one evaluator's progress
on tiny synthetic features, so the plumbing from evaluators to the output is covered.
"""

from __future__ import annotations

import io
import re
import sys
import types

import numpy as np
import pytest

from maskjax import progress as progress_module
from maskjax.progress import phase, progress


class FakeClock:
    """A clock the test advances by hand: periodic lines without sleeping."""

    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class TTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _default_env(monkeypatch):
    # Each test states the settings it needs; the developer's own environment must not leak in.
    monkeypatch.delenv(progress_module.ENV_MODE, raising=False)
    monkeypatch.delenv(progress_module.ENV_INTERVAL, raising=False)


def test_plain_lines_are_periodic_with_counts_rate_eta_and_a_final_line():
    clock, out = FakeClock(), io.StringIO()
    with progress(total=420, desc="probe", unit="step", stream=out, every=10, clock=clock) as bar:
        for _ in range(420):
            clock.t += 0.25  # 4 steps/s: a line every 40 steps
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 + 1  # at 10 s, 20 s, ..., 100 s, then the final line
    assert lines[0] == "probe: 40/420 step (10%), 4 step/s, ETA 1m35s"
    assert all(re.fullmatch(r"probe: \d+/420 step \(\d+%\), 4 step/s, ETA \S+", line) for line in lines[:-1])
    assert lines[-1] == "probe: 420/420 step (100%) in 1m45s, 4 step/s"


def test_eta_uses_the_recent_rate_not_the_compile_slowed_start():
    clock, out = FakeClock(), io.StringIO()
    with progress(total=100, desc="fit", stream=out, every=10, clock=clock) as bar:
        clock.t += 30  # the first step compiles
        bar.update(1)
        for _ in range(50):
            clock.t += 0.5
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[1] == "fit: 21/100 it (21%), 2 it/s, ETA 40s"


def test_unknown_total_postfix_and_iterable_wrapping():
    clock, out = FakeClock(), io.StringIO()
    bar = progress(iter(range(6)), desc="tokenize", unit="doc", stream=out, every=1, clock=clock)
    bar.set_postfix_str("3 blocks")
    for _ in bar:  # closes itself when the iterable ends
        clock.t += 0.5
    lines = out.getvalue().splitlines()
    assert lines[0] == "tokenize: 2 doc, 2 doc/s, 3 blocks"
    assert lines[-1] == "tokenize: 6 doc in 3.0s, 2 doc/s, 3 blocks"


def test_quick_phases_print_nothing():
    out = io.StringIO()
    with progress(total=10, desc="quick", stream=out) as bar:
        bar.update(10)
    with phase("quick phase", stream=out):
        pass
    assert out.getvalue() == ""


def test_phase_prints_a_line_with_the_time_and_says_when_it_failed():
    out = io.StringIO()
    with phase("compiling", stream=out, quiet_below=0):
        pass
    with pytest.raises(RuntimeError):
        with phase("reading x.pth", stream=out, quiet_below=0):
            raise RuntimeError("boom")
    assert re.fullmatch(r"compiling \.\.\.\ncompiling: \d+\.\ds\n"
                        r"reading x\.pth \.\.\.\nreading x\.pth: failed after \d+\.\ds\n", out.getvalue())


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    from tqdm import tqdm

    out = TTY()
    with progress(total=50, desc="features", unit="ex", stream=out, quiet_below=0) as bar:
        assert isinstance(bar._bar, tqdm)
        bar.update(50)
    text = out.getvalue()
    assert "\r" in text and "features: 100%|" in text and "50/50" in text
    # plain: lines even on a terminal (a terminal that records everything, say)
    monkeypatch.setenv(progress_module.ENV_MODE, "plain")
    out = TTY()
    with progress(total=50, desc="features", stream=out, every=0) as bar:
        assert bar._bar is None
        bar.update(50)
    assert "\r" not in out.getvalue() and out.getvalue().startswith("features: 50/50 it (100%)")


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_the_environment_variable_silences_everything(monkeypatch, value):
    monkeypatch.setenv(progress_module.ENV_MODE, value)
    for stream in (io.StringIO(), TTY()):
        with progress(total=5, desc="x", stream=stream, every=0) as bar:
            bar.update(5)
        with phase("y", stream=stream, quiet_below=0):
            pass
        assert stream.getvalue() == ""


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress_module.ENV_INTERVAL, "0")
    out = io.StringIO()
    with progress(total=2, desc="x", stream=out) as bar:
        bar.update(1)
        bar.update(1)
    assert len(out.getvalue().splitlines()) == 3  # a line per update, and the final line
    with phase("y", stream=out):
        pass
    assert out.getvalue().splitlines()[-1].startswith("y: ")


def _fake_jax(monkeypatch, *, initialized: bool, index: int):
    """Stands in for an imported JAX whose process index is ``index``."""
    jax = types.SimpleNamespace(process_index=lambda: index)
    bridge = types.SimpleNamespace(backends_are_initialized=lambda: initialized)
    distributed = types.SimpleNamespace(global_state=types.SimpleNamespace(process_id=index))
    monkeypatch.setitem(sys.modules, "jax", jax)
    monkeypatch.setitem(sys.modules, "jax._src.xla_bridge", bridge)
    monkeypatch.setitem(sys.modules, "jax._src.distributed", distributed)


@pytest.mark.parametrize("initialized", [True, False])
def test_only_process_zero_prints(monkeypatch, initialized):
    _fake_jax(monkeypatch, initialized=initialized, index=1)
    out = io.StringIO()
    with progress(total=5, desc="x", stream=out, every=0) as bar:
        bar.update(5)
    with phase("y", stream=out, quiet_below=0):
        pass
    assert out.getvalue() == ""
    _fake_jax(monkeypatch, initialized=initialized, index=0)
    with progress(total=5, desc="x", stream=out, every=0) as bar:
        bar.update(5)
    assert out.getvalue() != ""


def test_process_check_never_starts_jax(monkeypatch):
    # Not imported (a tokenization job): process 0 without importing anything.
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    assert progress_module.is_main_process()
    assert "jax" not in sys.modules


def test_training_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    from maskjax.train.metrics import Progress

    metrics = {"loss": 0.5, "lr": 1e-3, "grad_norm": 2.0, "data_wait": 0.1}
    out = io.StringIO()
    plain = Progress(100, 0, stream=out)
    plain.update(50, metrics, rate=10.0)
    plain.close()
    assert out.getvalue() == ("step 50/100 | loss 0.5 | lr 0.001 | grad_norm 2 | 10.00 steps/s | data wait 10% | "
                              "ETA 5.0s\n")

    tty = TTY()
    bar = Progress(100, 20, stream=tty)
    bar.update(50, metrics, rate=10.0)
    assert bar._bar is not None and "50/100" in tty.getvalue() and "loss 0.5" in tty.getvalue()
    bar.update(100, metrics, rate=10.0)  # the last step closes the bar
    assert bar._bar is None and tty.getvalue().endswith("\n") and "100/100" in tty.getvalue()
    bar.close()  # idempotent


def test_an_evaluator_reports_progress(monkeypatch, capsys):
    """kNN and the feature probe on tiny synthetic features print their phases (stderr, plain lines)."""
    import jax.numpy as jnp

    from maskjax.eval import evaluators, features

    monkeypatch.setenv(progress_module.ENV_INTERVAL, "0")  # a line per batch, and every phase
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)

    class Modality:
        def take_examples(self, config, source, idx):
            return x[idx], y[idx]

    monkeypatch.setattr(features, "get_modality", lambda name: Modality())
    method = types.SimpleNamespace(modality="fake", features=lambda model, inputs, pool=None: jnp.tanh(inputs),
                                   feature_name=lambda pool: "tanh")
    ctx = types.SimpleNamespace(method=method, mesh=None, rules=None, train_source=list(range(96)),
                                eval_source=list(range(96)), config=types.SimpleNamespace(seed=0))
    knn = evaluators.knn(None, {"train_examples": 64, "test_examples": 32}, ctx)
    probe = evaluators.feature_probe(None, {"train_examples": 64, "test_examples": 32, "steps": 20,
                                            "random_baseline": False}, ctx)
    assert 0 <= knn["top1"] <= 1 and 0 <= probe["top1"] <= 1
    err = capsys.readouterr().err.splitlines()
    for desc, total, unit in (("kNN features (train)", 64, "ex"), ("kNN features (test)", 32, "ex"),
                              ("kNN search", 32, "query"), ("probe features (pre-trained, train)", 64, "ex")):
        assert any(re.fullmatch(rf"{re.escape(desc)}: {total}/{total} {unit} \(100%\) in \S+, \S+ {unit}/s", line)
                   for line in err), (desc, err)
    assert "reading 64 examples ..." in err
    assert any(re.fullmatch(r"probe fit \(pre-trained, adam\): \d+\.\ds", line) for line in err), err
