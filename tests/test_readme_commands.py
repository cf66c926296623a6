"""The README's commands stay runnable: every ``maskjax ... --config FILE[:ARG]`` line loads its
config with its ``--config.FIELD=VALUE`` overrides, and every subcommand it names exists (issue 25:
README examples that failed on the default config, or used a syntax a subcommand lacked)."""

from __future__ import annotations

import re
import shlex

import pytest

from maskjax.cli import _commands
from maskjax.config.commandline import load_config_with_overrides, split_overrides
from tests.conftest import REPO_ROOT


def _readme_commands() -> list[list[str]]:
    text = (REPO_ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()  # the comments mark the machine a line needs
            if line.startswith("maskjax "):
                lines.append(shlex.split(line))
    return lines


COMMANDS = _readme_commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 15  # a parse that silently finds nothing would pass vacuously


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a[:3]) for a in COMMANDS])
def test_readme_command_names_a_subcommand_and_its_config_loads(argv):
    assert argv[1] in _commands(), argv
    if "--config" not in argv:
        return
    rest, overrides = split_overrides(argv[2:])
    spec = rest[rest.index("--config") + 1]
    path, _, arg = spec.partition(":")
    config = load_config_with_overrides(str(REPO_ROOT / path) + (":" + arg if arg else ""), overrides)
    if "--evals" in rest:
        from maskjax.eval.cli import resolve_evals

        assert resolve_evals(config, rest[rest.index("--evals") + 1])
