"""One trainer per workdir: ``WORKDIR/.maskjax.lock`` held with ``fcntl.flock``.

Two trainers in one workdir (a job resubmitted while the old one still runs, a typo in
``--workdir``) would interleave checkpoints and metrics and silently corrupt the run. The lock is
an advisory ``flock`` on a file that records the holder (host, PID, start time):

* the kernel drops a ``flock`` when its process dies, however it dies (kill -9 included), so a
  crashed run never blocks the next one;
* a live holder makes a second trainer fail at once with :class:`WorkdirLocked`, which names it;
* a clean release empties the file, so a non-empty file found unlocked means the previous run
  died without releasing it: the new run takes it over and says so.

The file is never deleted: deleting it would let a third process lock a new file of the same
name while another still holds the old one. ``flock`` works on local disks and on NFSv4 / Lustre
mounts that support it; on a filesystem without locks the call fails and the error says so.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket

from maskjax.errors import UserError

LOCK_NAME = ".maskjax.lock"


class WorkdirLocked(UserError, RuntimeError):
    """Another live run holds the workdir."""


def _describe(holder: dict) -> str:
    return (f"host {holder.get('host', '?')}, PID {holder.get('pid', '?')}"
            f"{', started ' + holder['started'] if holder.get('started') else ''}")


class WorkdirLock:
    """Context manager holding ``WORKDIR/.maskjax.lock`` (a no-op when ``enabled`` is False).

    After ``__enter__``, ``took_over`` holds the stale holder's record when the previous run
    died with the lock (else None).
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.enabled = enabled
        self.took_over: dict | None = None
        self._file = None

    def acquire(self) -> None:
        """Takes the lock or raises :class:`WorkdirLocked` naming the live holder."""
        if not self.enabled:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read(f)
            f.close()
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WorkdirLocked(
                    f"workdir {os.path.dirname(self.path)} is in use by another training run "
                    f"({_describe(holder)}); stop that run or choose another --workdir "
                    f"(lock file {self.path})") from None
            raise WorkdirLocked(f"cannot lock {self.path}: {e} (the filesystem may not support "
                                f"flock)") from e
        previous = _read(f)
        self.took_over = previous or None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}))
        f.flush()
        self._file = f

    def release(self) -> None:
        """Empties the file (a clean exit) and drops the lock."""
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def describe_takeover(self) -> str | None:
        """A sentence about the stale lock taken over, or None."""
        if not self.took_over:
            return None
        return (f"took over a stale lock in {os.path.dirname(self.path)} from a run that ended "
                f"without releasing it ({_describe(self.took_over)})")

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read(f) -> dict:
    """The holder record in the lock file; {} when empty (released cleanly) or unreadable."""
    try:
        f.seek(0)
        text = f.read().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {"host": "?", "pid": "?"}
