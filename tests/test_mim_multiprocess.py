"""Every masked-image-modeling method trains in two JAX processes (the multi-host path): one global
mesh over both, losses logged once per step by process 0, and a checkpoint with both processes'
data state.

A one-process run is not a reference for the losses: each process reads its own shard of the
data, so the global batches of 1 and 2 processes differ by design (tests/test_multiprocess.py).
The methods with EMA state (HPM's teacher, I-JEPA's target encoder) also stop at a checkpoint and
resume inside the two-process job to the straight run's losses, bitwise."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]  # ~1 min per method: run with -m slow

CONFIGS = ["simmim/vit_b_800ep.py", "simmim/beit_block.py", "maskfeat/vit_b.py", "colormae/vit_b.py",
           "hpm/vit_b.py", "crossmae/vit_b.py", "mfm/vit_b.py", "ijepa/vit_b16.py"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(config: str, workdir, num_processes: int, *extra: str, total_steps: int = 2) -> list[float]:
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(8 // num_processes))
    env.pop("XLA_FLAGS", None)
    procs = []
    for pid in range(num_processes):
        cmd = [sys.executable, "-m", "maskjax.train", "--config", f"{REPO_ROOT}/configs/{config}:cifar,smoke",
               "--workdir", str(workdir), f"--config.total_steps={total_steps}", "--config.log_every_steps=1",
               "--config.progress=false", "--skip_evals", "--init_timeout=60"]
        if num_processes > 1:
            cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
                    f"--process_id={pid}"]
        cmd += list(extra)
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        try:
            _, err = p.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.mark.parametrize("config", CONFIGS)
def test_two_processes_train_and_checkpoint(config, tmp_path):
    losses = _train(config, tmp_path / "run", 2)
    assert len(losses) == 2 and np.isfinite(losses).all()  # written once (by process 0), not twice
    data_dir = tmp_path / "run" / "checkpoints" / "2" / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))


@pytest.mark.parametrize("config", ["hpm/vit_b.py", "ijepa/vit_b16.py"])
def test_two_processes_resume_exactly(config, tmp_path):
    every = "--config.checkpoint.every_steps=2"
    straight = _train(config, tmp_path / "straight", 2, every, total_steps=4)
    _train(config, tmp_path / "resumed", 2, every, "--stop_at_step=2", total_steps=4)
    resumed = _train(config, tmp_path / "resumed", 2, every, total_steps=4)
    assert len(straight) == 4
    assert resumed == straight  # the rewound metrics file holds steps 1-2 of the first run, then 3-4
