"""Errors every layer may raise (standard library only, so no layer imports upward for them).

:class:`UserError` is the line between "the user can fix this" and "maskjax has a bug": every
``maskjax`` subcommand prints a UserError as one line and exits with status 2
(:func:`run_command`); anything else is a bug and keeps its traceback. ``--debug`` shows the
traceback of a UserError too.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable


class UserError(Exception):
    """A problem the user can act on (bad config, missing file, bad data): one line, exit 2."""

    exit_status = 2


class UsageError(UserError, ValueError):
    """A command-line argument is wrong (unknown flag value, bad ``--config.X=V``, missing path)."""


class DataError(UserError, ValueError):
    """The input data cannot be used: an empty folder, a file that is not the format it claims, or
    more unreadable records than ``data.max_bad_fraction`` allows. The message names the path."""


class ConfigError(UserError, ValueError):
    """The config cannot run; the message lists every problem found (``problems``: one string each)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


class NonFiniteLoss(UserError, FloatingPointError):
    """The loss, gradients or state became NaN or inf; the message names the step and the newest
    checkpoint on disk (nothing non-finite is ever saved)."""


class NoUsableCheckpoint(UserError, RuntimeError):
    """A workdir holds checkpoints but none of them restores intact; the message lists each one's
    problem. Nothing is deleted or renamed in that case, so the run cannot silently start over."""


def pop_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether it was there (or ``MASKJAX_DEBUG=1`` is set)."""
    rest = [a for a in argv if a != "--debug"]
    return rest, len(rest) != len(argv) or os.environ.get("MASKJAX_DEBUG", "") not in ("", "0")


def run_command(prog: str, command: Callable[[list[str]], int | None], argv: list[str], debug: bool = False) -> int:
    """Runs ``command(argv)``; a :class:`UserError` becomes one line on stderr and its exit status.

    ``KeyboardInterrupt`` that reaches this far (a Ctrl-C outside the training loop, which has its
    own clean stop) prints one line and returns 130. With ``debug`` both keep their traceback.
    """
    try:
        status = command(argv)
        return 0 if status is None else int(status)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: {str(e).strip() or type(e).__name__}", file=sys.stderr, flush=True)
        return e.exit_status
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
