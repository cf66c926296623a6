"""Skipping unreadable records (corrupt, truncated or mislabelled files) with a bounded tolerance.

Large image collections nearly always hold a few files that do not decode (a zero-byte download,
a truncated JPEG, an HTML error page saved as ``.jpg``). Failing the run on the first one, hours
in, with PIL's traceback and no file name, is the worst outcome; silently skipping any number of
them is the second worst. :class:`SkipBadRecords` sits between a random-access source and the
pipeline and:

- decodes each record where it is read (so a failure is seen at its index, with its path);
- on failure logs one warning line naming the record (its path, tar member or record index) the
  first time this process meets it, counts it, and returns the next readable record instead
  (``index + 1``, ``index + 2``, ... wrapping around), so batch shapes stay static;
- raises :class:`~maskjax.errors.DataError` once the bad records exceed ``max_bad_fraction`` of
  the records this source has read (judged after ``min_records`` reads, or at once when all of
  the first ``all_bad_probe`` reads failed, or when no record at all is readable).

Counts for the trainer: :func:`bad_record_count` and :func:`records_read_count` are this
process's totals over every wrapped source. With grain worker processes
(``data.num_workers > 0``) the records are read, skipped, logged and checked against the
fraction inside the workers, so the warnings and the DataError still happen, but the counts live
in those workers and the trainer's process sees 0 for them (a limitation: the only channel from a
worker is the batch, and adding a key to every batch would change what every method receives).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Callable

from maskjax.errors import DataError, UserError

log = logging.getLogger(__name__)

DEFAULT_MAX_BAD_FRACTION = 0.01
# The fraction is judged only after this many reads: one bad file among the first ten would
# otherwise be a 10 % rate and stop a run whose data is 99.9 % fine.
MIN_RECORDS = 100
# ... except when every one of the first reads failed: that is a wrong path or format, not noise.
ALL_BAD_PROBE = 20

_totals_lock = threading.Lock()
_totals = {"read": 0, "bad": 0}


def bad_record_count() -> int:
    """Records skipped as unreadable so far in this process, over all sources (each encounter
    counts, so a bad file met again in a later epoch counts again).

    The training loop can log it as a metric (e.g. next to the loss every ``log_every_steps``).
    With ``data.num_workers > 0`` records are read in grain worker processes whose counts this
    process cannot see (module docstring).
    """
    return _totals["bad"]


def records_read_count() -> int:
    """Records read (good or bad) so far in this process, over all sources wrapped by
    :class:`SkipBadRecords`; the denominator of :func:`bad_record_count`."""
    return _totals["read"]


def reset_record_counts() -> None:
    """Sets this process's totals back to zero (tests, or a new run in the same process)."""
    with _totals_lock:
        _totals["read"] = _totals["bad"] = 0


def describe_record(source: Any, index: int) -> str:
    """A human-readable name of record ``index``: ``source.record_name(index)`` when the source
    has one (a file path or ``archive.tar:member``), else the index and the source's repr."""
    namer = getattr(source, "record_name", None)
    if namer is not None:
        try:
            return str(namer(index))
        except Exception:  # noqa: BLE001 - a name is a courtesy; never hide the real error behind it
            pass
    return f"record {index} of {source!r}"


def _first_line(e: BaseException) -> str:
    # PIL names the in-memory buffer ("<_io.BytesIO object at 0x...>"), which says nothing.
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


class SkipBadRecords:
    """A random-access source whose unreadable records are replaced by the next readable one.

    Args:
      source: any random-access source (``__len__`` / ``__getitem__``).
      decode: a picklable function applied to each item where it is read (e.g. image bytes to an
        array); any exception it or the read raises marks the record bad. A
        :class:`~maskjax.errors.UserError` passes through untouched.
      max_bad_fraction: largest tolerated share of bad records among those read; 0 stops at the
        first bad record.
      min_records, all_bad_probe: see the module constants.

    Keeps ``class_names`` and ``labels`` of ``source`` so callers can treat it as the source.
    """

    def __init__(self, source: Any, decode: Callable[[Any], Any], *,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, min_records: int = MIN_RECORDS,
                 all_bad_probe: int = ALL_BAD_PROBE):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.source = source
        self.decode = decode
        self.max_bad_fraction = float(max_bad_fraction)
        self.min_records = int(min_records)
        self.all_bad_probe = int(all_bad_probe)
        self.class_names = getattr(source, "class_names", None)
        self.read = 0
        self.bad = 0
        self._logged: set[int] = set()
        self._example = ""  # the newest bad record and its error, for the DataError message
        self._lock = threading.Lock()

    @property
    def labels(self):
        """The wrapped source's labels (only when it has them)."""
        return self.source.labels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        n = len(self.source)
        index = int(index) % n if n else int(index)
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                item = self.decode(self.source[j])
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - PIL, OSError, SyntaxError ...: all mean "unreadable"
                self._record_bad(j, e)
                continue
            self._count(bad=False)
            return item
        raise DataError(f"no record of {self.source!r} is readable ({self._example})")

    def _count(self, bad: bool) -> None:
        with self._lock:
            self.read += 1
            self.bad += int(bad)
        with _totals_lock:
            _totals["read"] += 1
            _totals["bad"] += int(bad)

    def _record_bad(self, index: int, error: Exception) -> None:
        self._count(bad=True)
        name = describe_record(self.source, index)
        self._example = f"e.g. {name}: {_first_line(error)}"
        with self._lock:
            first_time = index not in self._logged
            self._logged.add(index)
            read, bad = self.read, self.bad
        if first_time:
            log.warning("skipping unreadable record %s (%s)", name, _first_line(error))
        fraction = bad / read
        if bad == read >= self.all_bad_probe:  # a wrong path or format, not a few damaged files
            raise DataError(f"all of the first {read} records read are unreadable; {self._example}. Check "
                            f"that the data is the images it should be")
        if self.max_bad_fraction <= 0.0 or (read >= self.min_records and fraction > self.max_bad_fraction):
            raise DataError(
                f"{bad} of the {read} records read so far are unreadable ({fraction:.1%}, more than "
                f"data.max_bad_fraction={self.max_bad_fraction:g}); {self._example}. Fix or remove the "
                f"bad files, or raise data.max_bad_fraction")

    def __getstate__(self) -> dict:
        # grain pickles sources into worker processes: locks do not pickle, and each worker keeps
        # its own counts and its own record of what it already logged.
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_logged"] = set()
        state["read"] = state["bad"] = 0
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SkipBadRecords({self.source!r}, max_bad_fraction={self.max_bad_fraction:g})"
