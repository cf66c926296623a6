"""Runs that survive: SIGINT/SIGTERM stop at a step boundary with a checkpoint and resume exactly,
one trainer per workdir, metrics rewound on resume, result-changing config edits refused."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from maskjax.train.interrupt import Interrupted, StopSignals, remove_partial_checkpoints
from maskjax.train.metrics import read_metrics, rewind_jsonl
from maskjax.train.resume_config import config_changes, is_allowed
from maskjax.train.workdir_lock import WorkdirLock, WorkdirLocked
from tests.conftest import REPO_ROOT, TINY_FLAGS

STEPS = 6
BASE = [f"--config={REPO_ROOT}/configs/mae/default.py:smoke", *TINY_FLAGS, f"--config.total_steps={STEPS}",
        "--config.log_every_steps=1", "--config.checkpoint.every_steps=3", "--config.progress=true",
        "--skip_evals"]
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "maskjax.train", f"--workdir={workdir}", *BASE, *extra]


def _run(workdir, *extra, check=True):
    proc = subprocess.run(_cmd(workdir, *extra), env=ENV, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _interrupt(workdir, sig, when):
    """Starts a run, waits for ``when`` (a stdout line predicate or a path), sends ``sig``."""
    proc = subprocess.Popen(_cmd(workdir), env=ENV, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if isinstance(when, str):  # a path: poll for it (a finalized checkpoint folder)
        deadline = time.time() + 240
        while not os.path.exists(when) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        out_head = ""
    else:
        out_head = ""
        for line in proc.stdout:
            out_head += line
            if when(line):
                break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out_head + out, err


def _losses(workdir):
    records = read_metrics(str(workdir))
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"a step recorded twice or out of order: {steps}"
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run; every scenario compares its trajectory with this one."""
    workdir = tmp_path_factory.mktemp("signals") / "straight"
    _run(workdir)
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return workdir, losses


def _first_progress(line):
    return line.startswith("step ")


def _compiling(line):
    return "M params" in line  # printed just before the step is built and compiled


@pytest.mark.parametrize("sig,when", [(signal.SIGTERM, "progress"), (signal.SIGINT, "compile"),
                                      (signal.SIGTERM, "checkpoint")])
def test_signal_stops_with_a_checkpoint_and_resumes_exactly(reference, tmp_path, sig, when):
    ref_dir, ref = reference
    workdir = tmp_path / "run"
    trigger = {"progress": _first_progress, "compile": _compiling,
               "checkpoint": str(workdir / "checkpoints" / "3")}[when]
    code, out, err = _interrupt(workdir, sig, trigger)
    if code == 0:  # the whole run finished before the signal arrived: nothing to test here
        pytest.skip(f"run finished before {sig.name}")
    assert code == 128 + sig, (code, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("maskjax train: interrupted")]
    assert len(lines) == 1, err[-3000:]
    assert f"({sig.name})" in lines[0] and "run the same command to resume" in lines[0]
    stopped = int(lines[0].split("interrupted at step ")[1].split()[0])
    if stopped > 0:
        assert f"checkpoint saved in {workdir / 'checkpoints'}" in lines[0]
        assert os.path.isdir(workdir / "checkpoints" / str(stopped))
        assert sorted(_losses(workdir)) == list(range(1, stopped + 1))  # that step's metrics written
    assert not (workdir / ".maskjax.lock").read_text()  # released cleanly
    _run(workdir)  # resume in a fresh process
    _assert_same_trajectory(workdir, ref)


def _assert_same_trajectory(workdir, ref) -> None:
    """Every step once in metrics.jsonl, with the uninterrupted run's losses."""
    got = _losses(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in range(1, STEPS + 1)], [ref[s] for s in range(1, STEPS + 1)],
                               rtol=1e-6)


def test_killed_run_leaves_stale_lock_partial_save_and_extra_metrics(reference, tmp_path):
    """What kill -9 after step 3's checkpoint leaves: stale lock, a half-written step, metrics past 3."""
    ref_dir, ref = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    for step in (6,):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    os.makedirs(workdir / "checkpoints" / "6.orbax-checkpoint-tmp" / "state")  # a save cut short
    (workdir / ".maskjax.lock").write_text(json.dumps({"host": "gone-host", "pid": 4194301}))
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 1.0')  # torn line
    proc = _run(workdir)
    assert "took over a stale lock" in proc.stdout and "PID 4194301" in proc.stdout
    assert "resumed from step 3" in proc.stdout
    assert os.path.isdir(workdir / "checkpoints" / "6")
    assert not any("tmp" in n for n in os.listdir(workdir / "checkpoints"))
    _assert_same_trajectory(workdir, ref)


def test_changed_global_batch_on_resume_is_refused_unless_allowed(reference, tmp_path):
    ref_dir, _ = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    proc = _run(workdir, "--config.global_batch=32", "--config.log_every_steps=2", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "global_batch: 16 -> 32" in proc.stderr and "--allow_config_change" in proc.stderr
    assert "log_every_steps" not in proc.stderr.split("change the results")[1]  # allowed, not listed
    proc = _run(workdir, "--config.global_batch=32", "--allow_config_change")
    assert "global_batch: 16 -> 32" in proc.stdout and "run complete" in proc.stdout and "step 6/6" in proc.stdout


def test_second_trainer_on_a_held_workdir_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from maskjax.train.workdir_lock "
                               "import WorkdirLock; l = WorkdirLock(sys.argv[1]); l.acquire(); print('held', "
                               "flush=True); time.sleep(60)", str(tmp_path)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLocked, match=rf"in use by another training run .*PID {holder.pid}"):
            WorkdirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = WorkdirLock(str(tmp_path))  # the holder died: its flock went with it
    lock.acquire()
    assert lock.took_over["pid"] == holder.pid and "stale lock" in lock.describe_takeover()
    with pytest.raises(WorkdirLocked, match=rf"PID {os.getpid()}"):  # a second open file, same process
        WorkdirLock(str(tmp_path)).acquire()
    lock.release()
    again = WorkdirLock(str(tmp_path))
    again.acquire()
    assert again.took_over is None  # a clean release is not reported as stale
    again.release()


def test_stop_signals_set_a_flag_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a second Ctrl-C: now
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    e = Interrupted(12, signal.SIGTERM, "/w/checkpoints")
    assert e.exit_status == 143 and e.message == (
        "interrupted at step 12 (SIGTERM); checkpoint saved in /w/checkpoints; run the same command to resume")


def test_rewind_and_partial_cleanup_and_config_diff(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5')
    assert rewind_jsonl(str(path), 2) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]
    os.makedirs(tmp_path / "ck" / "4.orbax-checkpoint-tmp-123")
    os.makedirs(tmp_path / "ck" / "3")
    assert remove_partial_checkpoints(str(tmp_path / "ck")) == ["4.orbax-checkpoint-tmp-123"]
    assert os.listdir(tmp_path / "ck") == ["3"]
    changes = config_changes({"global_batch": 16, "model": {"variant": "a"}, "evals": {}},
                             {"global_batch": 16, "model": {"variant": "b"}, "evals": {"p": {"type": "x"}}})
    assert [c[0] for c in changes] == ["evals", "evals.p.type", "model.variant"]
    assert [is_allowed(c[0]) for c in changes] == [True, True, False]
