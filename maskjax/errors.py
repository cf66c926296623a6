"""Errors every layer may raise (standard library only, so no layer imports upward for them)."""


class ConfigError(ValueError):
    """The config cannot run; the message lists every problem found."""


class NonFiniteLoss(FloatingPointError):
    """The loss, gradients or state became NaN or inf; the message names the step and the newest
    checkpoint on disk (nothing non-finite is ever saved)."""


class NoUsableCheckpoint(RuntimeError):
    """A workdir holds checkpoints but none of them restores intact; the message lists each one's
    problem. Nothing is deleted or renamed in that case, so the run cannot silently start over."""
