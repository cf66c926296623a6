"""Orbax checkpoints of the train state together with the grain iterator state.

One checkpoint = ``state`` (sharded arrays, OCDBT), ``data`` (one JSON per process with the
grain iterator state) and ``meta`` (process count, data-worker count, config hash, and a content
fingerprint of the other two). The state restores onto any mesh or device count (the target
carries the current shardings). The data state only restores when the process and worker counts
match: grain's state is per process and per worker layout, and restoring it elsewhere would
silently change the data order, so that is refused with a message unless the config says
``checkpoint.data_state_mismatch = "reset"``.

Integrity: a save refuses a state with a non-finite array (:class:`~maskjax.errors.NonFiniteLoss`)
and records a per-array checksum (:mod:`maskjax.core.fingerprint`) and the sha256 of each
process's data state. :meth:`Checkpointer.restore` checks both and raises
:class:`CorruptCheckpoint`; :meth:`Checkpointer.restore_latest` then falls back to the next newest
step and renames the damaged ones ``<step>.corrupt-<reason>`` (never deletes them).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from maskjax.core.fingerprint import ALGORITHM, leaf_names, state_fingerprint, text_digest
from maskjax.errors import NoUsableCheckpoint, NonFiniteLoss, UserError

log = logging.getLogger(__name__)

# Orbax writes a step into "<step>.orbax-checkpoint-tmp-<n>" and renames it when complete.
_TMP_MARK = ".orbax-checkpoint-tmp"


class DataStateMismatch(UserError, RuntimeError):
    """The saved data-iterator state cannot be restored exactly in this run."""


class CorruptCheckpoint(RuntimeError):
    """One checkpoint step cannot be restored intact.

    ``reason`` is a short slug (it becomes part of the set-aside folder's name), ``detail`` the
    human-readable problem.
    """

    def __init__(self, step: int, reason: str, detail: str):
        super().__init__(f"checkpoint step {step}: {detail}")
        self.step, self.reason, self.detail = step, reason, detail


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

    def newest_on_disk(self) -> int | None:
        """The newest step whose save has completed (pending asynchronous saves are waited for)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # a failed pending save is not on disk; say what is
            log.warning("a pending checkpoint save failed: %s", _first_line(e))
        self.manager.reload()
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any, meta: dict, force: bool = False) -> bool:
        """Saves asynchronously (returns at once; errors surface on the next call or ``close``).

        First fingerprints ``state`` on its devices (one small sync): a state with a NaN or inf
        array raises :class:`~maskjax.errors.NonFiniteLoss` and is not saved, whatever the caller
        checked before.
        """
        sums, finite = state_fingerprint(state)
        if not all(finite):
            names = [n for n, ok in zip(leaf_names(state), finite) if not ok]
            more = f" and {len(names) - 1} more arrays" if len(names) > 1 else ""
            raise NonFiniteLoss(f"the train state at step {step} has NaN or inf values in {names[0]}{more}; "
                                f"it was not saved. {self.describe_newest()}")
        fingerprint = {"algorithm": ALGORITHM, "state": sums}
        if data_iter is not None:
            fingerprint["data"] = _gather_digests(text_digest(_data_text(data_iter)))
        items = {"state": ocp.args.StandardSave(state),
                 "meta": ocp.args.JsonSave(dict(meta, fingerprint=fingerprint))}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def describe_newest(self) -> str:
        """One sentence naming the newest complete checkpoint on disk (for error messages)."""
        newest = self.newest_on_disk()
        if newest is None:
            return f"No checkpoint is on disk in {self.directory}."
        return (f"The newest checkpoint on disk is step {newest} ({os.path.join(self.directory, str(newest))}); "
                f"a restart in the same workdir resumes from it.")

    def read_meta(self, step: int) -> dict:
        """The JSON metadata saved with ``step``."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, target: Any, data_iter: Any, expected: dict,
                on_data_mismatch: str = "error") -> tuple[Any, bool]:
        """Restores ``step`` onto ``target``'s shardings; returns (state, data_state_restored).

        ``expected`` holds this run's ``process_count`` and ``num_workers``. Raises
        :class:`CorruptCheckpoint` when the meta, data state or arrays cannot be read or do not
        match the fingerprint saved with them (the data iterator is only touched once everything
        else checked out), :class:`DataStateMismatch` when the data layout differs.
        """
        # Phases end in _agree so that with several processes all of them take the same branch
        # (a process that failed alone would otherwise leave the others in a collective).
        meta, error = None, None
        try:
            meta = self.read_meta(step)
            if not isinstance(meta, dict):
                raise ValueError(f"expected a JSON object, found {type(meta).__name__}")
        except Exception as e:
            error = CorruptCheckpoint(step, "meta", f"its meta JSON cannot be read ({_first_line(e)})")
        _agree(step, error)
        fingerprint = meta.get("fingerprint") or {}
        problems = []
        if data_iter is not None:
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
        _agree(step, self._check_data_file(step, fingerprint) if restore_data else None)
        state, error = None, None
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        except Exception as e:
            error = CorruptCheckpoint(step, "state", f"its arrays cannot be read ({_first_line(e)})")
        _agree(step, error)
        if "state" in fingerprint:
            _verify_state(step, state, fingerprint)  # identical on every process (a global reduction)
        if restore_data:
            self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iter)))
        return state, restore_data

    def restore_latest(self, target: Any, data_iter: Any, expected: dict,
                       on_data_mismatch: str = "error") -> tuple[int, Any, bool] | None:
        """Restores the newest intact checkpoint: ``(step, state, data_state_restored)``, or None
        when the directory holds no checkpoint.

        Damaged newer steps are each reported in one warning and renamed
        ``<step>.corrupt-<reason>``; unfinished saves (``*.orbax-checkpoint-tmp*``) are renamed
        ``<step>.corrupt-incomplete`` so they cannot collide with the next save. If no step
        restores, raises :class:`~maskjax.errors.NoUsableCheckpoint` and renames nothing (so a
        second start fails the same way instead of silently training from scratch).
        """
        for name in self._temporaries():
            self._set_aside(name, name.split(".")[0] + ".corrupt-incomplete")
            log.warning("checkpoint folder %s is an unfinished save; set aside as %s.corrupt-incomplete",
                        name, name.split(".")[0])
        self.manager.reload()
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        damaged: list[CorruptCheckpoint] = []
        for step in steps:
            try:
                state, data_restored = self.restore(step, target, data_iter, expected, on_data_mismatch)
            except CorruptCheckpoint as e:
                damaged.append(e)
                continue
            for e in damaged:
                aside = self._set_aside(str(e.step), f"{e.step}.corrupt-{e.reason}")
                log.warning("checkpoint step %d is damaged: %s; set aside as %s, resuming from step %d",
                            e.step, e.detail, aside, step)
            if damaged:
                self.manager.reload()
            return step, state, data_restored
        raise NoUsableCheckpoint(
            f"none of the {len(steps)} checkpoints in {self.directory} restores intact ("
            + "; ".join(f"step {e.step}: {e.detail}" for e in damaged)
            + "). Nothing was deleted or renamed: move the damaged step folders aside to start over, "
            "or train in a new workdir.")

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()

    def _check_data_file(self, step: int, fingerprint: dict) -> CorruptCheckpoint | None:
        # Checked before grain's restore so a damaged file never reaches the live iterator.
        index, count = jax.process_index(), jax.process_count()
        path = os.path.join(self.directory, str(step), "data", f"process_{index}-of-{count}.json")
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            return CorruptCheckpoint(step, "data", f"its data-iterator state cannot be read ({_first_line(e)})")
        saved = fingerprint.get("data")
        if saved is not None and (len(saved) != count or saved[index] != text_digest(text)):
            return CorruptCheckpoint(step, "data", f"its data-iterator state {os.path.basename(path)} does not "
                                                   "match its fingerprint")
        if saved is None:
            try:
                json.loads(text)
            except ValueError as e:
                return CorruptCheckpoint(step, "data", f"its data-iterator state is not JSON ({_first_line(e)})")
        return None

    def _temporaries(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(n for n in os.listdir(self.directory) if _TMP_MARK in n)

    def _set_aside(self, name: str, new_name: str) -> str:
        """Renames ``name`` to ``new_name`` (``-2``, ``-3``, ... if taken) on process 0; returns the path."""
        new = os.path.join(self.directory, new_name)
        n = 1
        while os.path.exists(new):
            n += 1
            new = os.path.join(self.directory, f"{new_name}-{n}")
        if jax.process_index() == 0:
            os.rename(os.path.join(self.directory, name), new)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"maskjax-set-aside-{new_name}")
        return new


def _verify_state(step: int, state: Any, fingerprint: dict) -> None:
    saved = fingerprint["state"]
    sums, _ = state_fingerprint(state)
    if fingerprint.get("algorithm") != ALGORITHM or len(saved) != len(sums):
        raise CorruptCheckpoint(step, "fingerprint", f"its fingerprint ({fingerprint.get('algorithm')}, "
                                f"{len(saved)} arrays) does not describe this state ({len(sums)} arrays)")
    wrong = [n for n, a, b in zip(leaf_names(state), saved, sums) if a != b]
    if wrong:
        more = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        raise CorruptCheckpoint(step, "fingerprint", f"its arrays read back with other contents than were saved "
                                f"(checksum mismatch in {wrong[0]}{more})")


def _agree(step: int, error: CorruptCheckpoint | None) -> None:
    """Raises ``error``, or a CorruptCheckpoint when another process found one (multi-process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        flags = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
        if error is None and flags.any():
            first = int(np.argmax(flags))
            error = CorruptCheckpoint(step, "elsewhere", f"process {first} could not restore it")
    if error is not None:
        raise error


def _data_text(data_iter: Any) -> str:
    # Exactly the text grain's CheckpointHandler writes, so its digest verifies the file.
    if isinstance(data_iter, grain.DatasetIterator):
        return json.dumps(data_iter.get_state(), indent=4)
    return data_iter.get_state().decode()


def _gather_digests(digest: str) -> list[str]:
    """Every process's digest, in process order (the meta JSON is written by process 0 only)."""
    if jax.process_count() == 1:
        return [digest]
    from jax.experimental import multihost_utils

    words = np.frombuffer(bytes.fromhex(digest), np.uint32)
    gathered = np.asarray(multihost_utils.process_allgather(words))
    return [row.astype(np.uint32).tobytes().hex() for row in gathered.reshape(jax.process_count(), -1)]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def process_layout(num_workers: int) -> dict:
    """What a data-iterator state depends on: the process count and the grain worker count."""
    return {"process_count": jax.process_count(), "num_workers": int(num_workers)}
