"""A step watchdog: makes a hung training step loud instead of silent.

A multi-host job whose collective waits for a peer that died, or whose data loader deadlocked,
prints nothing at all: every process just sits in a C++ wait. :class:`StepWatchdog` runs a
daemon thread that expects :meth:`StepWatchdog.beat` after every finished step; when none
arrives within ``timeout_s`` it reports, once per stall, the last finished step, how long it
waited, the process index and the Python stack of every thread (which shows *where* the main
thread is stuck: ``next(data_iter)``, a ``device_get``, a checkpoint save...). With
``abort=True`` the process then exits non-zero so that a launcher or scheduler notices.

    with StepWatchdog(600, first_timeout_s=1800) as watchdog:
        for step in ...:
            ...
            watchdog.beat(step)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
import traceback
from typing import Callable, TextIO

from maskjax.errors import UserError

log = logging.getLogger(__name__)

#: Exit status of a process the watchdog aborted (distinct from Python's 1 and the shell's 124).
ABORT_EXIT_CODE = 75


@dataclasses.dataclass(frozen=True)
class StallReport:
    """What the watchdog knows about one stall; passed to ``on_timeout``."""

    last_step: int | None  # the last step reported finished (None: no step finished yet)
    waited_s: float  # seconds since the last beat (or since start)
    process_index: int
    stacks: str  # every Python thread's stack, formatted
    message: str  # the full report as written to stderr


def thread_stacks(skip_current: bool = True) -> str:
    """The formatted Python stack of every live thread (the watchdog's own left out)."""
    names = {t.ident: (t.name, t.daemon) for t in threading.enumerate()}
    me = threading.get_ident()
    parts = []
    for ident, frame in sorted(sys._current_frames().items()):
        if skip_current and ident == me:
            continue
        name, daemon = names.get(ident, (f"thread-{ident}", False))
        header = f'Thread "{name}" (id {ident}{", daemon" if daemon else ""}), most recent call last:'
        parts.append(header + "\n" + "".join(traceback.format_stack(frame)).rstrip())
    return "\n\n".join(parts)


def _process_index() -> int:
    # Only ask jax when it is already imported and initialised: the watchdog must never be the
    # thing that initialises a backend (that would pick devices before jax.distributed).
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            return int(jax.process_index())
        except Exception:  # noqa: BLE001 - a report must not fail for lack of an index
            pass
    return int(os.environ.get("MASKJAX_PROCESS_ID", "0") or 0)


def _in_multi_process_job() -> bool:
    # jax.distributed's own state, not jax.process_count(): that could initialise a backend
    # (and wait for peers) in the very error path that must not wait.
    state = getattr(sys.modules.get("jax._src.distributed"), "global_state", None)
    return bool(state is not None and state.client is not None and (state.num_processes or 1) > 1)


@contextlib.contextmanager
def exit_fast_on_error(code: int = 1):
    """In a multi-process run, an exception escaping this block ends the process at once.

    Without it, a process that raises goes on to Python's exit handlers, where
    ``jax.distributed.shutdown`` waits (up to 5 minutes) at a barrier for peers that are
    themselves stuck in a collective waiting for this process: nobody exits and a launcher
    cannot notice. Here the traceback is printed and the process ends with ``code`` (a
    non-zero ``SystemExit`` keeps its status and message), so the launcher stops the others
    right away. A single-process run, or ``sys.exit(0)``, is left alone.
    """
    try:
        yield
    except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt and SystemExit too
        if not _in_multi_process_job() or (isinstance(e, SystemExit) and not e.code):
            raise  # single process, or a clean exit: the normal way out
        if isinstance(e, SystemExit):
            status = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int):
                print(e.code, file=sys.stderr)  # sys.exit("message") prints it; keep that
        elif isinstance(e, UserError):
            # One line, as maskjax.errors.run_command prints it in a single process.
            print(f"maskjax train: {e}", file=sys.stderr)
            status = e.exit_status
        else:
            traceback.print_exc()
            status = code
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        os._exit(status)


class StepWatchdog:
    """Reports (and optionally aborts) when no training step finishes within ``timeout_s``.

    Args:
      timeout_s: seconds allowed between two beats; 0 or less disables the watchdog (no thread).
      on_timeout: called with a :class:`StallReport` once per stall, from the watchdog thread.
      abort: after reporting, exit the whole process with :data:`ABORT_EXIT_CODE`.
      first_timeout_s: the allowance until the first beat (compilation makes step 1 slow);
        defaults to ``timeout_s``.
      process_index: named in the report; by default ``jax.process_index()`` when jax is up.
      stream: where the report goes (default ``sys.stderr`` at report time).
    """

    def __init__(self, timeout_s: float, on_timeout: Callable[[StallReport], None] | None = None, *,
                 abort: bool = False, first_timeout_s: float | None = None,
                 process_index: int | None = None, stream: TextIO | None = None):
        self.timeout_s = float(timeout_s or 0)
        self.first_timeout_s = float(first_timeout_s) if first_timeout_s else self.timeout_s
        self.on_timeout = on_timeout
        self.abort = abort
        self.process_index = process_index
        self.stream = stream
        self.reports: list[StallReport] = []  # every stall reported so far (for callers and tests)
        self._cond = threading.Condition()
        self._last_step: int | None = None
        self._last_beat = 0.0
        self._beats = 0  # bumped by every beat: a stall is reported once per value
        self._paused = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """Whether a timeout is set (a disabled watchdog starts no thread)."""
        return self.timeout_s > 0

    def start(self) -> "StepWatchdog":
        """Starts the watchdog thread (a no-op when disabled or already started)."""
        if not self.enabled or self._thread is not None:
            return self
        with self._cond:
            self._stopping = False
            self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="maskjax-step-watchdog", daemon=True)
        self._thread.start()
        return self

    def beat(self, step: int) -> None:
        """Records that ``step`` finished; call it after every training step."""
        if self._thread is None:
            return
        with self._cond:
            self._last_step = int(step)
            self._last_beat = time.monotonic()
            self._beats += 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def paused(self):
        """No stall is reported inside this block (for long non-step work such as evaluation)."""
        with self._cond:
            self._paused += 1
        try:
            yield self
        finally:
            with self._cond:
                self._paused -= 1
                self._last_beat = time.monotonic()  # the allowance restarts after the pause
                self._cond.notify_all()

    def stop(self) -> None:
        """Stops the thread and waits for it (idempotent)."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> "StepWatchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _allowance(self) -> float:
        return self.timeout_s if self._last_step is not None else self.first_timeout_s

    def _run(self) -> None:
        reported_for = None  # the beat count of the stall already reported
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                deadline = self._last_beat + self._allowance()
                stalled = now >= deadline and not self._paused and reported_for != self._beats
                if not stalled:
                    # Wake at the deadline, or at the next beat/stop; after a report (or while
                    # paused) only a beat, a pause ending or stop() can change anything.
                    idle = reported_for == self._beats or self._paused
                    self._cond.wait(None if idle else max(deadline - now, 0.01))
                    continue
                reported_for = self._beats
                last_step, waited = self._last_step, now - self._last_beat
                self._cond.release()  # report without the lock: beat() must never block on us
                try:
                    self._report(last_step, waited)
                finally:
                    self._cond.acquire()

    def _report(self, last_step: int | None, waited: float) -> None:
        index = self.process_index if self.process_index is not None else _process_index()
        where = (f"the last finished step is {last_step}" if last_step is not None
                 else "no step has finished yet (still compiling, or stuck before the first step)")
        summary = (f"maskjax watchdog: process {index}: no training step finished for {waited:.1f} s "
                   f"(timeout {self._allowance():g} s); {where}. A peer process may have died or "
                   f"hung in a collective, or the data loader is stuck.")
        stacks = thread_stacks()
        message = f"{summary}\nPython stacks of all threads:\n{stacks}\n"
        if self.abort:
            message += f"maskjax watchdog: aborting process {index} (exit code {ABORT_EXIT_CODE}).\n"
        report = StallReport(last_step, waited, index, stacks, message)
        self.reports.append(report)
        log.error(summary)
        stream = self.stream or sys.stderr
        try:
            stream.write(message)
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not kill the watchdog
            pass
        if self.on_timeout is not None:
            try:
                self.on_timeout(report)
            except Exception:  # noqa: BLE001
                log.exception("maskjax watchdog: on_timeout raised")
        if self.abort:
            # sys.exit() from this thread would only end the thread; os._exit ends the process
            # even while the main thread is blocked inside a C++ collective.
            for s in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    s.flush()
            os._exit(ABORT_EXIT_CODE)
