"""Progress for everything that takes longer than a few seconds: a bar on a terminal, plain lines in logs.

One small API serves the evaluators, the data tools and checkpoint conversion::

    with progress(total=len(batches), desc="kNN features", unit="ex") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

    for doc in progress(documents, total=n, desc="tokenize", unit="doc"):
        ...

    with phase("compiling the train step"):   # "compiling the train step: 12.3s"
        ...

On a terminal (the stream's ``isatty()``) it draws a tqdm bar with rate and ETA. Elsewhere (CI,
``> log``, a pod's log collector) a bar would be a smear of carriage returns, so it prints a
plain line at most every ``MASKJAX_PROGRESS_INTERVAL`` seconds (default 15) and a final line::

    kNN features: 1200/4000 ex (30%), 310 ex/s, ETA 9s
    kNN features: 4000/4000 ex (100%) in 13s, 307 ex/s

Anything finished within ``QUIET_BELOW`` seconds prints nothing, so quick phases stay quiet.
Only process 0 of a multi-process JAX job prints. ``MASKJAX_PROGRESS=0`` (or off/false/no)
silences it; ``MASKJAX_PROGRESS=plain`` prints plain lines even on a terminal.

This module sits in the bottom import layer: it imports only the standard library and tqdm, and
looks at JAX only through ``sys.modules`` (it never imports or starts JAX itself).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator

ENV_MODE = "MASKJAX_PROGRESS"
ENV_INTERVAL = "MASKJAX_PROGRESS_INTERVAL"
# Seconds between plain lines: often enough to see a job is alive, rare enough for a log.
DEFAULT_INTERVAL = 15.0
# Phases shorter than this print nothing (neither a bar nor a final line).
QUIET_BELOW = 2.0

__all__ = ["ProgressBar", "enabled", "format_duration", "format_rate", "interval", "is_main_process", "mode",
           "phase", "progress", "use_bar", "write"]


def mode() -> str:
    """``"off"``, ``"plain"`` or ``"auto"`` (a bar on a terminal, plain lines elsewhere), from ``MASKJAX_PROGRESS``."""
    value = os.environ.get(ENV_MODE, "auto").strip().lower()
    if value in ("0", "off", "false", "no", "none"):
        return "off"
    if value in ("plain", "lines", "log"):
        return "plain"
    return "auto"


def interval() -> float:
    """Seconds between plain progress lines (``MASKJAX_PROGRESS_INTERVAL``, default 15)."""
    try:
        return max(float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL)), 0.0)
    except ValueError:
        return DEFAULT_INTERVAL


def is_main_process() -> bool:
    """False on JAX processes other than 0; True when JAX is not loaded or not started.

    Looks only at modules already imported: importing JAX here would make this module heavy,
    and asking ``jax.process_index()`` before JAX has started would start its backends (and,
    on a GPU host, claim the GPU's memory) in a CPU-only job such as tokenization.
    """
    jax = sys.modules.get("jax")
    if jax is None:
        return True
    try:
        bridge = sys.modules.get("jax._src.xla_bridge")
        if bridge is not None and bridge.backends_are_initialized():
            return jax.process_index() == 0
        distributed = sys.modules.get("jax._src.distributed")
        # jax.distributed.initialize() sets the process id before any backend starts.
        return distributed is None or int(distributed.global_state.process_id or 0) == 0
    except Exception:  # private JAX internals moved: print rather than fail a job over progress
        return True


def enabled() -> bool:
    """Whether progress prints at all here (not switched off, and this is process 0)."""
    return mode() != "off" and is_main_process()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def use_bar(stream) -> bool:
    """Whether progress on ``stream`` is a tqdm bar (a terminal, mode auto) rather than plain lines."""
    return mode() == "auto" and _isatty(stream)


def format_duration(seconds: float) -> str:
    """1h02m, 3m05s, 12s or 2.4s (``?`` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    seconds = max(int(round(seconds)), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def format_rate(rate: float, unit: str) -> str:
    """``3.1 it/s``, ``310 ex/s``, ``62.9k doc/s``, or ``12 s/it`` for slow steps."""
    if 0 < rate < 1:
        return f"{1 / rate:.3g} s/{unit}"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if rate >= scale:
            return f"{rate / scale:.3g}{suffix} {unit}/s"
    return f"{rate:.3g} {unit}/s"


def _count(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else f"{n:.1f}"


def write(message: str, stream=None) -> None:
    """Prints ``message`` without breaking an active bar (tqdm clears and redraws it).

    Use it (rather than ``print``) for messages printed while a bar may be drawn.
    """
    stream = sys.stdout if stream is None else stream
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None and getattr(tqdm_module.tqdm, "_instances", None):
        tqdm_module.tqdm.write(message, file=stream)
        stream.flush()
    else:
        print(message, file=stream, flush=True)


class ProgressBar:
    """Progress of one phase: a tqdm bar on a terminal, periodic plain lines elsewhere, or nothing.

    Made by :func:`progress`. ``update(n)`` counts work done (call it per batch, not per element
    of a hot loop); ``set_postfix`` adds text to the line; ``close()`` (or leaving the ``with``
    block, or exhausting the wrapped iterable) prints the final line.
    """

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", *, stream=None, every: float | None = None, quiet_below: float | None = None,
                 initial: float = 0, clock: Callable[[], float] = time.monotonic, disable: bool = False):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = initial
        self.stream = sys.stderr if stream is None else stream  # resolved now, so capture works
        self.every = interval() if every is None else every
        # With lines asked for every 0 s (tests, debugging) the final line is always wanted too.
        self.quiet_below = min(QUIET_BELOW if quiet_below is None else quiet_below, self.every)
        self._clock = clock
        self._initial = initial
        self._t0 = self._last_t = clock()
        self._last_n = initial
        self._next = self._t0 + self.every
        self._postfix = ""
        self._printed = False
        self._closed = False
        self._bar = None
        self.disabled = disable or not enabled()
        if not self.disabled and use_bar(self.stream):
            from tqdm import tqdm

            # delay: a bar that would vanish within QUIET_BELOW is never drawn; leave=None keeps a
            # finished top-level bar on screen but clears one nested under another (training's).
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, initial=initial,
                             delay=self.quiet_below, leave=None, dynamic_ncols=True)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress bar wraps no iterable; call update(n) instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: float = 1) -> None:
        """Counts ``n`` more units done; prints a plain line when one is due."""
        if self._closed:
            return
        self.n += n  # counted even when silent, so callers may read n either way
        if self.disabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now >= self._next:
            self._line(now)

    def set_postfix(self, **values: Any) -> None:
        """Shows ``key value`` pairs after the counts (e.g. ``loss=0.41``); formats floats to 4 digits."""
        self.set_postfix_str(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in values.items()))

    def set_postfix_str(self, text: str) -> None:
        """Shows ``text`` after the counts."""
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def _counts(self) -> str:
        if self.total:
            return f"{_count(self.n)}/{_count(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"
        return f"{_count(self.n)} {self.unit}"

    def _line(self, now: float) -> None:
        # The rate of the last interval, not since the start: the first batches often include
        # compilation, which would make the ETA far too long for the rest of the phase.
        dt = now - self._last_t
        rate = (self.n - self._last_n) / dt if dt > 0 else 0.0
        parts = [self._counts(), format_rate(rate, self.unit)]
        if self.total:
            parts.append("ETA " + format_duration((self.total - self.n) / rate if rate > 0 else math.inf))
        if self._postfix:
            parts.append(self._postfix)
        print(f"{self.desc}: " + ", ".join(parts), file=self.stream, flush=True)
        self._printed = True
        self._last_t, self._last_n = now, self.n
        self._next = now + self.every

    def close(self) -> None:
        """Ends the phase: the final line (count, time taken, mean rate) unless it was quick and silent."""
        if self._closed:
            return
        self._closed = True
        if self.disabled:
            return
        if self._bar is not None:
            self._bar.close()
            return
        elapsed = self._clock() - self._t0
        if not self._printed and elapsed < self.quiet_below:
            return
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self._counts()} in {format_duration(elapsed)}", format_rate(rate, self.unit)]
        if self._postfix:
            parts.append(self._postfix)
        print(f"{self.desc}: " + ", ".join(parts), file=self.stream, flush=True)


def progress(iterable: Iterable | None = None, total: float | None = None, desc: str = "", unit: str = "it",
             **kwargs: Any) -> ProgressBar:
    """A :class:`ProgressBar`: iterate over it (wrapping ``iterable``) or use it in ``with`` and call ``update``.

    ``total`` defaults to ``len(iterable)`` when it has one. Keyword options: ``stream``
    (default stderr), ``every`` (seconds between plain lines), ``quiet_below``, ``initial``,
    ``clock`` (for tests), ``disable`` (a silent bar, so callers need no second code path).
    """
    return ProgressBar(iterable, total, desc, unit, **kwargs)


@contextlib.contextmanager
def phase(desc: str, *, stream=None, quiet_below: float | None = None) -> Iterator[None]:
    """One step without a count (compiling, reading a checkpoint): a line with the time it took.

    Prints ``desc ...`` once the phase has run ``quiet_below`` seconds (default
    :data:`QUIET_BELOW`, or less when ``MASKJAX_PROGRESS_INTERVAL`` is; 0 prints it at once) and
    ``desc: 12.3s`` when it ends, so a long silent wait says what it is waiting for. A quicker
    phase prints nothing.
    """
    if not enabled():
        yield
        return
    stream = sys.stderr if stream is None else stream
    quiet_below = min(QUIET_BELOW, interval()) if quiet_below is None else quiet_below
    started = threading.Event()  # set once the start line is out

    def announce():
        write(f"{desc} ...", stream)
        started.set()

    # A timer thread, so the start line appears while the phase is still running.
    timer = threading.Timer(quiet_below, announce) if quiet_below > 0 else None
    if timer is None:
        announce()
    else:
        timer.daemon = True
        timer.start()
    t0 = time.monotonic()
    outcome = ""
    try:
        yield
    except BaseException:
        outcome = "failed after "  # the error itself is the caller's to report
        raise
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()  # an announce already running finishes first, so lines stay in order
        elapsed = time.monotonic() - t0
        if started.is_set() or elapsed >= quiet_below:
            write(f"{desc}: {outcome}{elapsed:.1f}s", stream)
