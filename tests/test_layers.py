"""The package's layering holds: import-linter's contracts (pyproject.toml, ``[tool.importlinter]``)
are kept, and every maskjax module imports on its own.

The second test catches what a static import graph cannot: a module that imports only when some
other maskjax module happens to be loaded first (an import cycle resolved by import order, a
registry that a plugin module expects to be filled, ...).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Run in a child process: grimp parses the sources (it imports nothing of maskjax), so this is
# fast, and the report that lint-imports prints is what a failing test should show.
_LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")  # importing needs no accelerator; never start one here
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_import_contracts_hold():
    """Every contract in pyproject.toml is kept (layers, forbidden imports, no cycles)."""
    result = subprocess.run([sys.executable, "-c", _LINT, "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
                            cwd=ROOT, env=_child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"import contracts broken:\n{result.stdout}\n{result.stderr}"
    assert "BROKEN" not in result.stdout


# Imports each module with no maskjax module loaded (they are dropped from sys.modules before
# each import), in one process: a fresh interpreter per module would spend minutes importing
# jax/flax again and again, and third-party modules are not what this test is about.
_IMPORT_EACH = textwrap.dedent("""
    import importlib, json, pkgutil, sys, traceback

    import maskjax

    # Extras that the core library never needs at import time (pyproject.toml: the "convert" extra).
    OPTIONAL = {"torch", "transformers", "safetensors"}
    failures, skipped = {}, {}
    names = sorted(m.name for m in pkgutil.walk_packages(
        maskjax.__path__, "maskjax.", onerror=lambda name: failures.setdefault(name, "walk failed")))
    from absl import flags

    def forget_maskjax_flags():
        # absl's FLAGS is process-global: a command-line module (maskjax.train.cli) defines its
        # flags at import, so a second import in this loop would be refused as a duplicate.
        for flag_name in list(flags.FLAGS):
            if flags.FLAGS.find_module_defining_flag(flag_name, "").startswith("maskjax"):
                delattr(flags.FLAGS, flag_name)

    for name in ["maskjax"] + names:
        for key in [k for k in sys.modules if k == "maskjax" or k.startswith("maskjax.")]:
            del sys.modules[key]
        forget_maskjax_flags()
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] in OPTIONAL:
                skipped[name] = str(e)
            else:
                failures[name] = traceback.format_exc()
        except BaseException:  # SystemExit, a failing registration, ...: all count
            failures[name] = traceback.format_exc()
    print(json.dumps({"modules": len(names) + 1, "failures": failures, "skipped": skipped}))
""")


def test_every_module_imports_on_its_own():
    """``import maskjax.X`` works for every module X with nothing else of maskjax loaded."""
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH], cwd=ROOT, env=_child_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # A walk that silently finds nothing would pass vacuously.
    assert report["modules"] > 100, report
    failures = report["failures"]
    assert not failures, "modules that do not import on their own:\n" + "\n".join(
        f"--- {name}\n{tb}" for name, tb in sorted(failures.items()))
