"""The one command-line convention of every ``maskjax`` subcommand that runs a config.

``--config FILE[:arg]`` names the config; ``--config.X=V`` (or ``--config.X V``) overrides a field,
as ml_collections' ``config_flags`` does for absl programs. ``train``, ``eval``, ``bench``,
``fitcheck`` and ``repro`` all parse their arguments with :class:`ConfigArgumentParser`, so the
same override works on each, ``-h`` lists the command's own flags, and every mistake (a typo in
a field name, a value of the wrong type, a missing file, a bad ``:arg``) is one
:class:`~maskjax.errors.UsageError` / :class:`~maskjax.errors.ConfigError` line, exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import difflib
from typing import Any, Sequence

import ml_collections

from maskjax.config.loading import load_config
from maskjax.errors import ConfigError, UsageError

OVERRIDE_PREFIX = "--config."

CONFIG_HELP = ("config file and its optional argument, e.g. configs/mae/default.py:smoke. Any field can then "
               "be set with --config.FIELD=VALUE (e.g. --config.optim.base_lr=1e-3 --config.total_steps=200)")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates ``--config.X=V`` / ``--config.X V`` items from the other arguments.

    Returns ``(rest, [(dotted_field, text), ...])`` in command-line order (a later override of
    the same field wins, as it would on a shell command line).
    """
    rest: list[str] = []
    overrides: list[tuple[str, str]] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith(OVERRIDE_PREFIX):
            field, eq, text = item[len(OVERRIDE_PREFIX):].partition("=")
            if not field:
                raise UsageError(f"{item!r}: expected --config.FIELD=VALUE")
            if not eq:
                if i + 1 >= len(items) or items[i + 1].startswith("--"):
                    raise UsageError(f"{item!r} has no value: write --config.{field}=VALUE")
                i += 1
                text = items[i]
            overrides.append((field, text))
        else:
            rest.append(item)
        i += 1
    return rest, overrides


def _field_error(dotted: str, node: ml_collections.ConfigDict, part: str, where: str) -> ConfigError:
    keys = sorted(node.keys())
    close = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f"; fields here: {keys}"
    return ConfigError(f"--config.{dotted}: the config has no field {part!r}{where}{hint}")


def _convert(dotted: str, text: str, current: Any, field_type: Any) -> Any:
    """``text`` read as a value for a field whose type is ``field_type`` (current value ``current``)."""
    if text == "None":
        return None
    kind = field_type if field_type not in (None, type(None)) else type(current)
    if isinstance(current, ml_collections.ConfigDict) or kind in (dict, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{dotted} is a group of fields; set them one by one "
                          f"(--config.{dotted}.FIELD=VALUE; fields: {sorted(current.keys())})")
    try:
        if kind is bool:
            words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
            if text.lower() not in words:
                raise ValueError
            return words[text.lower()]
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        if kind in (tuple, list):
            value = ast.literal_eval(text)
            if not isinstance(value, (tuple, list)):
                value = (value,)
            return kind(value)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--config.{dotted}={text!r}: expected a value of type {kind.__name__} "
                          f"(the field is now {current!r})") from None
    # Untyped fields (object, or unset with no declared type): a boolean word, a Python literal,
    # else the text (so --config.remat=true and --config.remat=dots both mean what they say).
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_text_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]) -> None:
    """Sets each ``(dotted_field, text)`` on ``config``, the text read as the field's type.

    An unknown field raises :class:`ConfigError` with the closest names ("did you mean"); a value
    that does not read as the field's type raises one naming the type.
    """
    for dotted, text in overrides:
        node = config
        parts = dotted.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(f"--config.{dotted}: {'.'.join(parts[:depth])} is a value, not a group of fields")
            if part not in node:
                where = f" in config.{'.'.join(parts[:depth])}" if depth else ""
                raise _field_error(dotted, node, part, where)
            if depth < len(parts) - 1:
                node = node[part]
        last = parts[-1]
        current = node[last]
        try:
            field_type = node.get_type(last)
        except (AttributeError, KeyError, TypeError):
            field_type = type(current)
        value = _convert(dotted, text, current, field_type)
        try:
            node[last] = value
        except TypeError as e:  # ml_collections' type safety, e.g. a str into a float field
            raise ConfigError(f"--config.{dotted}={text!r}: {e}") from None


class ConfigArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser with ``--config FILE[:arg]`` and ``--config.X=V`` overrides.

    ``parse_config_args(argv)`` returns the namespace with ``.config`` replaced by the loaded,
    overridden ConfigDict (``None`` when ``--config`` is optional and absent; a list with
    ``several_configs``), ``.config_spec`` holding the ``FILE[:arg]`` text(s) and ``.overrides``
    the ``(field, text)`` pairs.
    """

    def __init__(self, *args, config_required: bool = True, several_configs: bool = False, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.several_configs = several_configs
        self.add_argument("--config", required=config_required, metavar="FILE[:ARG]",
                          action="append" if several_configs else "store",
                          help=CONFIG_HELP + ("; repeat --config for several rows (the overrides apply to each)"
                                              if several_configs else ""))
        self.add_argument("--debug", action="store_true",
                          help="show the traceback of an error (default: one line)")

    def error(self, message: str):
        """argparse's usage errors as one :class:`UsageError` line (with the closest flag names)."""
        hint = ""
        if message.startswith("unrecognized arguments:"):
            flags = [s for action in self._actions for s in action.option_strings]
            unknown = [a.split("=")[0] for a in message.split(":", 1)[1].split() if a.startswith("-")]
            close = [c for a in unknown for c in difflib.get_close_matches(a, flags, n=1, cutoff=0.6)]
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UsageError(f"{message}{hint} ({self.prog} -h lists the flags)")

    def parse_config_args(self, argv: Sequence[str]) -> argparse.Namespace:
        """Parses ``argv``; loads and overrides the config (errors: one line, exit status 2)."""
        rest, overrides = split_overrides(argv)
        args = self.parse_args(rest)
        args.config_spec = args.config
        args.overrides = overrides
        if args.config is None:
            if overrides:
                raise UsageError("--config.FIELD=VALUE overrides need --config FILE")
            return args
        if self.several_configs:
            args.config = [load_config_with_overrides(spec, overrides) for spec in args.config_spec]
        else:
            args.config = load_config_with_overrides(args.config, overrides)
        return args


def load_config_with_overrides(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """``load_config(spec)`` with the text overrides applied; bad specs are one-line errors."""
    config = load_config(spec)
    apply_text_overrides(config, overrides)
    return config
