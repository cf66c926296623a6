"""Checkpoint integrity: damaged newest checkpoints fall back to the previous one (set aside,
never deleted) and resume with the same losses; nothing non-finite is ever saved.

One tiny run is trained once (module fixture); each damage kind works on a copy of its folder.
"""

import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from maskjax.core.checkpoint import Checkpointer
from maskjax.core.fingerprint import state_fingerprint
from maskjax.errors import NoUsableCheckpoint, NonFiniteLoss
from maskjax.train.loop import train

STEPS, EVERY = 6, 3
OVERRIDES = {"total_steps": STEPS, "log_every_steps": 1, "checkpoint.every_steps": EVERY}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run with checkpoints at steps 3 and 6: (workdir, {step: loss})."""
    from tests.conftest import tiny_config

    workdir = tmp_path_factory.mktemp("reliability") / "straight"
    result = train(tiny_config(**OVERRIDES), str(workdir), run_evals=False)
    losses = {h["step"]: h["loss"] for h in result.history}
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert {"3", "6"} <= set(os.listdir(workdir / "checkpoints"))
    return workdir, losses


def _array_files(step_dir):
    # OCDBT keeps array chunks in data files under state/ocdbt.process_*/d/ (the small ones there
    # and state/d/ hold b-tree nodes). Which data file a given array lands in varies between
    # runs, and some written files are not read back, so every data file is damaged.
    files = [os.path.join(root, f) for root, _, names in os.walk(step_dir / "state")
             if os.path.basename(root) == "d" and "ocdbt.process_" in root for f in names]
    files = [f for f in files if os.path.getsize(f) > 4096]
    assert files
    return files


def _truncate(step_dir):
    for path in _array_files(step_dir):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(step_dir):
    for path in _array_files(step_dir):
        data = bytearray(open(path, "rb").read())
        middle = len(data) // 2
        data[middle:middle + 8] = bytes(b ^ 0x5A for b in data[middle:middle + 8])
        open(path, "wb").write(bytes(data))  # same size, other bytes


def _delete_manifest(step_dir):
    os.remove(step_dir / "state" / "manifest.ocdbt")


def _delete_data_state(step_dir):
    for name in os.listdir(step_dir / "data"):
        if name.startswith("process_"):
            os.remove(step_dir / "data" / name)


def _empty_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text("")


def _garble_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text('{"process_count": 1, "num_wor')


def _delete_state(step_dir):
    shutil.rmtree(step_dir / "state")


DAMAGE = {
    "truncated-array-file": (_truncate, "state"),
    "flipped-bytes": (_flip_bytes, "fingerprint"),
    "deleted-manifest": (_delete_manifest, "state"),
    "deleted-data-state": (_delete_data_state, "data"),
    "empty-meta": (_empty_meta, "meta"),
    "garbled-meta": (_garble_meta, "meta"),
    "deleted-state-folder": (_delete_state, "state"),
}


def _copy(straight, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(straight[0], workdir)
    return workdir


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_and_resumes_exactly(straight, tmp_path, tiny, caplog, kind):
    damage, reason = DAMAGE[kind]
    workdir = _copy(straight, tmp_path)
    damage(workdir / "checkpoints" / "6")
    with caplog.at_level(logging.WARNING, logger="maskjax.core.checkpoint"):
        result = train(tiny(**OVERRIDES), str(workdir), run_evals=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "maskjax.core.checkpoint"]
    assert len(lines) == 1 and "checkpoint step 6 is damaged" in lines[0], lines
    assert "resuming from step 3" in lines[0]
    names = set(os.listdir(workdir / "checkpoints"))
    assert f"6.corrupt-{reason}" in names, names  # set aside, not deleted
    assert {"3", "6"} <= names  # the resumed run saved a new step 6
    resumed = {h["step"]: h["loss"] for h in result.history}
    assert sorted(resumed) == [4, 5, 6]
    np.testing.assert_allclose([resumed[s] for s in (4, 5, 6)], [straight[1][s] for s in (4, 5, 6)], rtol=1e-6)


def test_unfinished_save_does_not_block_the_next_one(straight, tmp_path, tiny):
    workdir = _copy(straight, tmp_path)
    ckdir = workdir / "checkpoints"
    os.rename(ckdir / "6", ckdir / "6.orbax-checkpoint-tmp-1234567")  # a save cut short
    result = train(tiny(**OVERRIDES), str(workdir), run_evals=False)
    assert [h["step"] for h in result.history] == [4, 5, 6]
    assert "6" in os.listdir(ckdir)


def test_no_intact_checkpoint_stops_with_one_message_and_renames_nothing(straight, tmp_path, tiny):
    workdir = _copy(straight, tmp_path)
    _empty_meta(workdir / "checkpoints" / "6")
    _delete_state(workdir / "checkpoints" / "3")
    before = sorted(os.listdir(workdir / "checkpoints"))
    with pytest.raises(NoUsableCheckpoint) as info:
        train(tiny(**OVERRIDES), str(workdir), run_evals=False)
    message = str(info.value)
    assert "\n" not in message and "step 6: its meta JSON cannot be read" in message
    assert "step 3: its arrays cannot be read" in message and "Nothing was deleted" in message
    assert sorted(os.listdir(workdir / "checkpoints")) == before


def test_divergent_run_stops_before_saving_a_non_finite_state(tmp_path, tiny):
    # lr 1e4 diverges after two finite steps (1e3 took 16 checkpoints, most of this test's time).
    config = tiny(**{"total_steps": 30, "optim.base_lr": 1e4, "log_every_steps": 100,
                     "checkpoint.every_steps": 1, "checkpoint.max_to_keep": 100})
    with pytest.raises(NonFiniteLoss, match=r"is (nan|inf) at step \d+; training stopped") as info:
        train(config, str(tmp_path), run_evals=False)
    ckdir = tmp_path / "checkpoints"
    steps = sorted(int(n) for n in os.listdir(ckdir) if n.isdigit())
    assert steps, "the run diverged before its first checkpoint; the test needs a few finite steps"
    # The message names a checkpoint that is complete on disk (not an unfinished temporary).
    assert f"newest checkpoint on disk is step {steps[-1]} " in str(info.value)
    manager = ocp.CheckpointManager(str(ckdir), item_names=("state",))
    for step in steps:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        for leaf in jax.tree.leaves(state):
            assert np.all(np.isfinite(np.asarray(leaf))), f"non-finite array in checkpoint {step}"
    manager.close()


def test_save_refuses_a_non_finite_state(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ck"))
    good = {"w": jnp.ones((4, 4)), "step": jnp.int32(1)}
    ckpt.save(1, good, None, {})
    with pytest.raises(NonFiniteLoss, match=r"step 2 has NaN or inf values in w; it was not saved.*step 1"):
        ckpt.save(2, {"w": jnp.ones((4, 4)).at[1, 2].set(jnp.nan), "step": jnp.int32(2)}, None, {})
    ckpt.close()
    assert sorted(os.listdir(tmp_path / "ck")) == ["1"]


def test_fingerprint_ignores_sharding_and_sees_one_bit():
    x = jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32)
    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
    tree = {"a": x, "b": x.astype(jnp.bfloat16), "k": jax.random.key(3), "i": jnp.int32(7)}
    sums, finite = state_fingerprint(tree)
    assert all(finite) and len(sums) == 4
    assert state_fingerprint({**tree, "a": sharded})[0] == sums
    flipped = jax.lax.bitcast_convert_type(x, jnp.uint32).at[5, 7].add(1 << 31)
    assert state_fingerprint({**tree, "a": jax.lax.bitcast_convert_type(flipped, jnp.float32)})[0][0] != sums[0]
    swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
    assert state_fingerprint({**tree, "a": swapped})[0][0] != sums[0]
