"""Stopping a run cleanly on SIGINT/SIGTERM, and clearing what a hard stop leaves behind.

A scheduler's SIGTERM (preemption, ``scancel``, ``kubectl delete``) or a Ctrl-C must not lose
the steps since the last periodic checkpoint. :class:`StopSignals` turns the first SIGINT or
SIGTERM into a flag that the training loop reads at each step boundary: it finishes the step in
flight, writes its metrics, saves a checkpoint at that step and raises :class:`Interrupted`,
which ``maskjax train`` turns into one line and exit status 128 + signal (130, 143).

A second Ctrl-C means "now": the default handler is back after the first signal, so it raises
``KeyboardInterrupt`` wherever the main thread is, possibly during an asynchronous save. Orbax
writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it when complete, so such a stop
leaves at most that temporary folder; :func:`remove_partial_checkpoints` deletes these at the
next start (Orbax 0.12 would also remove one before re-saving the same step, but other steps'
folders would stay forever and other versions name them ``...-tmp-<timestamp>``).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from typing import Callable

from maskjax.errors import UserError

# Orbax's marker of a step folder that was never finalized (orbax.checkpoint atomicity_types).
TMP_MARKER = ".orbax-checkpoint-tmp"


class Interrupted(UserError):
    """Training stopped at a step boundary on a signal; the checkpoint of that step is on disk.

    ``step``: the last finished step; ``signum``: the signal; ``checkpoint_dir``: where the
    checkpoint is; ``saved``: False when no step had run yet (nothing new to save).
    """

    def __init__(self, step: int, signum: int, checkpoint_dir: str, saved: bool = True):
        self.step, self.signum, self.checkpoint_dir, self.saved = step, signum, checkpoint_dir, saved
        super().__init__(self.message)

    @property
    def signal_name(self) -> str:
        """``SIGINT``, ``SIGTERM``, ..."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_status(self) -> int:
        """The shell's convention for death by a signal: 128 + its number (130, 143)."""
        return 128 + int(self.signum)

    @property
    def message(self) -> str:
        """The one line ``maskjax train`` prints."""
        if self.saved:
            return (f"interrupted at step {self.step} ({self.signal_name}); checkpoint saved in "
                    f"{self.checkpoint_dir}; run the same command to resume")
        return (f"interrupted at step {self.step} ({self.signal_name}) before any step of this run; "
                f"nothing new to save in {self.checkpoint_dir}; run the same command to resume")


class StopSignals:
    """Context manager: while active, SIGINT and SIGTERM ask the loop to stop (see module doc).

    Handlers are installed only in the main thread (Python allows no other) and the previous
    handlers come back on exit, so ``train()`` called from a notebook or a test leaves the
    process as it found it. Elsewhere the object is inert (``signum`` stays None).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        del frame
        # Only set state here: printing or logging from a handler can re-enter a stream the
        # main thread is writing to and raise. The loop reports when it stops.
        if self.signum is None:
            self.signum = signum
            # A second Ctrl-C must stop at once, even inside a long save or compilation.
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # None means the old handler was not installed from Python; default is the best guess.
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


class StopAgreement:
    """When to stop, agreed by every process of a job.

    In one process the answer is simply "a stop signal arrived". In a multi-process job the
    processes may get their signals at different steps (or only some of them get one), and a
    process that stops alone leaves the others waiting in a collective. So they compare notes
    with one tiny host all-gather every ``every`` steps (the log interval, where the loop syncs
    anyway) and stop together at the first such step where any of them was signalled. Every
    process calls :meth:`should_stop` at the same steps, so the all-gathers pair up.
    """

    def __init__(self, signals: StopSignals | None, every: int, process_count: int = 1,
                 gather: Callable[[bool], list[bool]] | None = None):
        self.signals, self.every, self.process_count = signals, max(int(every), 1), process_count
        self._gather = gather or _allgather_flags
        self._decided = False
        self._checked: tuple[int, bool] | None = None
        self.signum: int | None = None  # the signal to report: this process's, else SIGTERM (a peer's)

    def should_stop(self, step: int) -> bool:
        """True once the job agreed to stop; checked at ``step`` (a step boundary)."""
        if self._decided or self.signals is None:
            return self._decided
        if self.process_count == 1:
            self._decided = self.signals.requested
        elif self._checked is not None and self._checked[0] == step:
            return self._checked[1]  # one all-gather per step, however often the loop asks
        elif step % self.every == 0:
            self._decided = any(self._gather(self.signals.requested))
            self._checked = (step, self._decided)
        if self._decided:
            self.signum = self.signals.signum if self.signals.signum is not None else int(signal.SIGTERM)
        return self._decided


def _allgather_flags(flag: bool) -> list[bool]:
    import numpy as np
    from jax.experimental import multihost_utils

    return [bool(x) for x in np.asarray(multihost_utils.process_allgather(np.array([flag]))).reshape(-1)]


def remove_partial_checkpoints(checkpoint_dir: str) -> list[str]:
    """Deletes the never-finalized step folders (``*.orbax-checkpoint-tmp*``) in ``checkpoint_dir``.

    Call it only while holding the workdir lock (no other writer) and on one process. Returns
    the names removed. Finalized step folders are never touched: Orbax renames a step's
    temporary folder only once everything in it is written, so those are complete.
    """
    if not os.path.isdir(checkpoint_dir):
        return []
    removed = []
    for name in sorted(os.listdir(checkpoint_dir)):
        path = os.path.join(checkpoint_dir, name)
        if TMP_MARKER in name and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed


def saved_steps(checkpoint_dir: str) -> list[int]:
    """The finalized checkpoint steps in ``checkpoint_dir`` (Orbax's default ``<step>`` folders)."""
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(int(n) for n in os.listdir(checkpoint_dir)
                  if n.isdigit() and os.path.isdir(os.path.join(checkpoint_dir, n)))
