"""Checkpoint/resume: exact resumption in a fresh process, restore onto another device count,
and refusal of a data-state restore that cannot be exact."""

import os
import shutil
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskjax.core.checkpoint import Checkpointer, DataStateMismatch
from maskjax.train.metrics import read_metrics
from tests.conftest import REPO_ROOT, TINY_FLAGS

STEPS = 6


def _run(workdir, devices: int, *extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "maskjax.train", f"--config={REPO_ROOT}/configs/mae/default.py:smoke",
           f"--workdir={workdir}", *TINY_FLAGS, f"--config.total_steps={STEPS}",
           "--config.log_every_steps=1", "--config.checkpoint.every_steps=3", "--config.progress=false",
           "--skip_evals", *extra]
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(str(workdir))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    _run(root / "straight", 8)
    _run(root / "split", 8, f"--stop_at_step={STEPS // 2}")
    shutil.copytree(root / "split", root / "split_1dev")
    _run(root / "split", 8)                 # fresh process, same 8 devices
    _run(root / "split_1dev", 1)            # fresh process, 1 device
    return root


def test_resume_in_fresh_process_gives_the_same_losses(runs):
    straight, split = _losses(runs / "straight"), _losses(runs / "split")
    assert sorted(straight) == list(range(1, STEPS + 1))
    assert sorted(split) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([split[s] for s in range(1, STEPS + 1)],
                               [straight[s] for s in range(1, STEPS + 1)], rtol=1e-6)
    assert straight[STEPS] != straight[1]


def test_state_restores_onto_a_different_device_count(runs):
    straight, moved = _losses(runs / "straight"), _losses(runs / "split_1dev")
    np.testing.assert_allclose([moved[s] for s in range(1, STEPS + 1)],
                               [straight[s] for s in range(1, STEPS + 1)], rtol=1e-5)


def _iterator(num_workers=0):
    ds = grain.MapDataset.range(100).batch(4).to_iter_dataset()
    return iter(ds)


def test_data_state_restore_with_other_worker_count_is_refused(tmp_path):
    state = {"w": jnp.arange(4.0), "step": jnp.int32(3)}
    it = _iterator()
    next(it), next(it)
    ckpt = Checkpointer(str(tmp_path / "ck"))
    ckpt.save(3, state, it, {"process_count": 1, "num_workers": 0})
    ckpt.wait()
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    with pytest.raises(DataStateMismatch, match=r"num_workers: saved 0, now 2.*data_state_mismatch=reset"):
        ckpt.restore(3, target, _iterator(), {"process_count": 1, "num_workers": 2})
    fresh = _iterator()
    restored, data_ok = ckpt.restore(3, target, fresh, {"process_count": 1, "num_workers": 2}, "reset")
    assert not data_ok
    np.testing.assert_array_equal(restored["w"], state["w"])
    np.testing.assert_array_equal(next(fresh), np.arange(4))  # data order restarted, said so
    same = _iterator()
    restored, data_ok = ckpt.restore(3, target, same, {"process_count": 1, "num_workers": 0})
    assert data_ok
    np.testing.assert_array_equal(next(same), np.arange(8, 12))  # resumed exactly
    ckpt.close()
