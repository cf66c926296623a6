"""Orbax checkpoints of the train state together with the grain iterator state.

One checkpoint = ``state`` (sharded arrays, OCDBT), ``data`` (one JSON per process with the
grain iterator state) and ``meta`` (process count, data-worker count, config hash). The state
restores onto any mesh or device count (the target carries the current shardings). The data
state only restores when the process and worker counts match: grain's state is per process and
per worker layout, and restoring it elsewhere would silently change the data order, so that is
refused with a message unless the config says ``checkpoint.data_state_mismatch = "reset"``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class DataStateMismatch(RuntimeError):
    """The saved data-iterator state cannot be restored exactly in this run."""


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` with maskjax's save/restore contract."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, every_steps: int = 1000):
        self.directory = os.path.abspath(directory)
        self.every_steps = max(int(every_steps), 1)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any, meta: dict, force: bool = False) -> bool:
        """Saves asynchronously (returns at once; errors surface on the next call or ``close``)."""
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def read_meta(self, step: int) -> dict:
        """The JSON metadata saved with ``step``."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, target: Any, data_iter: Any, expected: dict,
                on_data_mismatch: str = "error") -> tuple[Any, bool]:
        """Restores ``step`` onto ``target``'s shardings; returns (state, data_state_restored).

        ``expected`` holds this run's ``process_count`` and ``num_workers``.
        """
        problems = []
        if data_iter is not None:
            meta = self.read_meta(step)
            problems = [f"{k}: saved {meta.get(k)!r}, now {expected[k]!r}"
                        for k in ("process_count", "num_workers") if meta.get(k) != expected[k]]
        restore_data = data_iter is not None and not problems
        if problems and data_iter is not None:
            message = (f"checkpoint step {step} in {self.directory} was written with a different data "
                       f"layout ({'; '.join(problems)}); its data-iterator state cannot resume the "
                       f"same data order here.")
            if on_data_mismatch != "reset":
                raise DataStateMismatch(
                    message + " Run with the saved layout to resume exactly, or set "
                    "--config.checkpoint.data_state_mismatch=reset to restore the model and "
                    "optimizer and restart the data order from the beginning of the epoch stream.")
            log.warning("%s Restoring model and optimizer only; the data order restarts.", message)
        items = {"state": ocp.args.StandardRestore(target)}
        if restore_data:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restore_data

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def process_layout(num_workers: int) -> dict:
    """What a data-iterator state depends on: the process count and the grain worker count."""
    return {"process_count": jax.process_count(), "num_workers": int(num_workers)}
