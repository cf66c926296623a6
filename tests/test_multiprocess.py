"""Two JAX processes on loopback (the multi-host path): train a few steps and checkpoint."""

import os
import socket
import subprocess
import sys

import pytest

from maskjax.train.metrics import read_metrics
from tests.conftest import REPO_ROOT, TINY_FLAGS

pytestmark = pytest.mark.multiprocess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, num_processes, *extra):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4")
    env.pop("XLA_FLAGS", None)
    procs = []
    for pid in range(num_processes):
        cmd = [sys.executable, "-m", "maskjax.train", f"--config={REPO_ROOT}/configs/mae/default.py:smoke",
               f"--workdir={workdir}", *TINY_FLAGS, "--config.total_steps=4", "--config.log_every_steps=1",
               "--config.checkpoint.every_steps=2", "--config.progress=false", "--skip_evals",
               "--init_timeout=60", *extra]
        if num_processes > 1:
            cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
                    f"--process_id={pid}"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, out, err))
    return outs


def test_two_processes_train_and_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    outs = _launch(workdir, 2)
    for code, out, err in outs:
        assert code == 0, err[-3000:]
    assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in outs[0][1]  # one global mesh over both processes
    steps = [r["step"] for r in read_metrics(str(workdir))]
    assert steps == [1, 2, 3, 4]  # written once (by process 0), not twice
    data_dir = workdir / "checkpoints" / "4" / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))

    # One process cannot resume the two processes' data order: refused with a clear message.
    code, out, err = _launch(workdir, 1, "--config.total_steps=6")[0]
    assert code != 0
    assert "process_count: saved 2, now 1" in err and "Traceback" not in err
    # ... unless asked to restart the data order; the model state restores onto 1 process.
    code, out, err = _launch(workdir, 1, "--config.total_steps=6", "--config.checkpoint.data_state_mismatch=reset")[0]
    assert code == 0, err[-3000:]
    assert "resumed from step 4" in out and "data order restarted" in out


@pytest.mark.slow  # two real processes, ~40 s; the agreement itself: tests/test_stop_agreement.py (CI budget)
def test_a_signal_to_one_process_stops_the_job_at_one_agreed_step(tmp_path):
    """SIGTERM reaches only process 1: both processes stop at the same log boundary, after one
    checkpoint of that step, and say so (a process stopping alone would hang the other)."""
    import signal
    import time

    workdir = tmp_path / "run"
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "maskjax.train", f"--config={REPO_ROOT}/configs/mae/default.py:smoke",
         f"--workdir={workdir}", *TINY_FLAGS, "--config.total_steps=400", "--config.log_every_steps=3",
         "--config.checkpoint.every_steps=4", "--config.progress=false", "--skip_evals", "--init_timeout=60",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"],
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(2)]
    try:
        deadline = time.monotonic() + 300
        while not (workdir / "checkpoints" / "4").is_dir():
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no checkpoint 4"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    stops = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
        line = next(x for x in err.splitlines() if "interrupted at step" in x)
        stops.append(int(line.split("interrupted at step ")[1].split()[0]))
    assert stops[0] == stops[1] and stops[0] % 3 == 0 and stops[0] < 400, stops
    assert (workdir / "checkpoints" / str(stops[0])).is_dir()
    assert max(r["step"] for r in read_metrics(str(workdir))) == stops[0]
