"""Errors every layer may raise (standard library only, so no layer imports upward for them)."""


class ConfigError(ValueError):
    """The config cannot run; the message lists every problem found."""
