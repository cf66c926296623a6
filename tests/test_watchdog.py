"""The step watchdog: one loud report (with thread stacks) per stall, nothing while steps flow."""

import io
import subprocess
import sys
import threading
import time

import pytest

from maskjax.train.watchdog import ABORT_EXIT_CODE, StepWatchdog
from tests.conftest import REPO_ROOT


def _stalled_step(seconds):
    time.sleep(seconds)  # stands for a collective waiting on a dead peer


def test_stall_reports_once_with_step_and_stacks():
    stream, seen = io.StringIO(), []
    with StepWatchdog(0.3, on_timeout=seen.append, process_index=3, stream=stream) as watchdog:
        for step in range(1, 4):
            watchdog.beat(step)
        _stalled_step(2.0)  # several timeouts long: still only one report
    assert len(watchdog.reports) == 1 and seen == watchdog.reports
    report = watchdog.reports[0]
    assert report.last_step == 3 and report.process_index == 3 and report.waited_s >= 0.3
    assert "process 3: no training step finished for" in report.message
    assert "the last finished step is 3" in report.message
    assert "_stalled_step" in report.stacks and 'Thread "MainThread"' in report.stacks
    assert "maskjax-step-watchdog" not in report.stacks  # its own stack is noise
    assert stream.getvalue() == report.message


def test_beats_prevent_reports():
    with StepWatchdog(1.0, stream=io.StringIO()) as watchdog:
        for step in range(25):  # 2.5 s of steps, each well inside the timeout
            time.sleep(0.1)
            watchdog.beat(step)
    assert watchdog.reports == []


def test_each_new_stall_is_reported_again():
    with StepWatchdog(0.3, stream=io.StringIO()) as watchdog:
        watchdog.beat(1)
        _stalled_step(1.5)
        watchdog.beat(2)
        _stalled_step(1.5)
    assert [r.last_step for r in watchdog.reports] == [1, 2]


def test_first_step_allowance_and_message():
    with StepWatchdog(0.1, first_timeout_s=2.0, stream=io.StringIO()) as watchdog:
        time.sleep(0.5)  # compiling: within the first-step allowance, far beyond the step timeout
        assert watchdog.reports == []
        time.sleep(2.5)
    assert len(watchdog.reports) == 1
    assert watchdog.reports[0].last_step is None and "no step has finished yet" in watchdog.reports[0].message


def test_paused_blocks_are_not_stalls():
    with StepWatchdog(1.0, stream=io.StringIO()) as watchdog:
        watchdog.beat(1)
        with watchdog.paused():  # e.g. an evaluation between steps
            time.sleep(2.0)
        watchdog.beat(2)
    assert watchdog.reports == []


def test_zero_timeout_disables():
    before = threading.active_count()
    watchdog = StepWatchdog(0)
    with watchdog:
        assert not watchdog.enabled and watchdog._thread is None
        assert threading.active_count() == before
        watchdog.beat(1)
        time.sleep(0.1)
    assert watchdog.reports == []


def test_abort_exits_the_process_nonzero():
    code = ("import time; from maskjax.train.watchdog import StepWatchdog\n"
            "w = StepWatchdog(0.3, abort=True, process_index=1).start(); w.beat(7)\n"
            "time.sleep(30); print('not reached')")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == ABORT_EXIT_CODE
    assert time.perf_counter() - t0 < 20
    assert "the last finished step is 7" in proc.stderr and "aborting process 1" in proc.stderr
    assert "time.sleep(30)" in proc.stderr or "<string>" in proc.stderr  # the main thread's stack
    assert "not reached" not in proc.stdout


def test_exit_fast_on_error_single_process_raises_normally():
    import pytest

    from maskjax.train.watchdog import exit_fast_on_error

    with pytest.raises(ValueError, match="boom"):
        with exit_fast_on_error():
            raise ValueError("boom")


def test_exit_fast_on_error_multi_process_skips_exit_handlers():
    # A stand-in for a 2-process run: the exit handlers (where jax.distributed.shutdown would
    # wait for stuck peers) must not run; the traceback and a non-zero status come out at once.
    for body, status, text in (("raise ValueError('boom')", 1, "ValueError: boom"),
                               ("raise SystemExit('maskjax: bad config')", 1, "maskjax: bad config"),
                               ("raise SystemExit(5)", 5, ""),
                               # A user error: its one line and status 2, no traceback.
                               ("raise __import__('maskjax.errors').errors.ConfigError('bad value')", 2,
                                "maskjax train: bad value")):
        code = ("import atexit; from jax._src import distributed as d\n"
                "d.global_state.client, d.global_state.num_processes = object(), 2  # as if initialised\n"
                "from maskjax.train.watchdog import exit_fast_on_error\n"
                "atexit.register(lambda: print('exit handlers ran', flush=True))\n"
                f"with exit_fast_on_error():\n    {body}\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == status and text in proc.stderr
        assert "exit handlers ran" not in proc.stdout


@pytest.mark.slow  # a real training run; the watchdog's logic is covered by the unit tests above
def test_training_loop_beats_the_watchdog_every_step(tiny, tmp_path):
    """The loop reports each finished step to the watchdog and pauses it around evaluations."""
    from maskjax.train.loop import train
    from maskjax.train.watchdog import StepWatchdog

    class Recording(StepWatchdog):
        def __init__(self):
            super().__init__(3600.0)
            self.beats, self.pauses = [], 0

        def beat(self, step):
            self.beats.append(step)
            super().beat(step)

        def paused(self):
            self.pauses += 1
            return super().paused()

    dog = Recording()
    config = tiny(total_steps=3)
    config.evals = {"recon": {"type": "reconstruction", "every_steps": 2, "num_images": 2}}
    train(config, str(tmp_path / "run"), watchdog=dog)
    assert dog.beats == [1, 2, 3] and dog.pauses >= 1 and not dog.reports
