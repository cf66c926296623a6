"""The one command-line convention (issue 25): ``-h`` everywhere, ``--config.X=V`` on every
config-running subcommand, user errors as one line with exit status 2, ``--debug`` for tracebacks,
and a finished run that says so instead of training or evaluating again.
"""

from __future__ import annotations

import json
import os

import ml_collections
import pytest

from maskjax.cli import _commands, main
from maskjax.config.commandline import apply_text_overrides, split_overrides
from maskjax.errors import ConfigError, UsageError
from tests.conftest import REPO_ROOT

SMOKE = str(REPO_ROOT / "configs/mae/default.py") + ":smoke"
DEFAULT = str(REPO_ROOT / "configs/mae/default.py")  # the quick start's config, with its evaluators


def _run(capsys, *argv) -> tuple[int, str, str]:
    """``maskjax ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        status = main(["maskjax", *argv])
    except SystemExit as e:  # argparse's -h and usage errors
        status = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return status, out.out, out.err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_command_has_its_own_help(capsys, command):
    status, out, err = _run(capsys, command, "-h")
    assert status == 0, err
    first = out.splitlines()[0]
    # launch keeps the `python -m maskjax.launch` name its shell scripts use
    assert first.startswith("usage:") and (f"maskjax {command}" in first or f"maskjax.{command}" in first), first
    assert "-h, --help" in out


def test_config_commands_list_the_override_syntax(capsys):
    for command in ("train", "eval", "bench", "fitcheck"):
        status, out, _ = _run(capsys, command, "-h")
        assert status == 0 and "--config.FIELD=VALUE" in out.replace("\n", " "), (command, out)


@pytest.mark.parametrize("command,extra", [("train", ["--workdir", "unused"]), ("eval", ["--workdir", "unused"]),
                                           ("bench", []), ("fitcheck", [])])
def test_config_typo_is_one_line_with_a_suggestion(capsys, command, extra):
    status, _, err = _run(capsys, command, "--config", SMOKE, "--config.optim.base_lrr=1e-3", *extra)
    assert status == 2
    line = _one_line_error(err)
    assert line.startswith(f"maskjax {command}: ") and "did you mean 'base_lr'" in line


@pytest.mark.parametrize("argv,needle", [
    (["--config", "configs/mae/no_such.py"], "not found"),
    (["--config", "configs/mae/default.py:no_such_arg"], "unknown config argument 'no_such_arg'"),
    (["--config", SMOKE, "--config.total_steps=seven"], "expected a value of type int"),
    (["--config", SMOKE, "--config.optim=1"], "is a group of fields"),
    (["--config", SMOKE, "--config.total_steps"], "has no value"),
])
def test_bad_config_arguments_are_one_line(capsys, argv, needle):
    status, _, err = _run(capsys, "train", *argv)
    assert status == 2 and needle in _one_line_error(err)


def test_debug_shows_the_traceback(capsys):
    status, _, err = _run(capsys, "train", "--debug", "--config", "configs/mae/no_such.py")
    assert status == 2 and "Traceback" in err and "not found" in err


def test_unknown_command_suggests_the_closest(capsys):
    status, _, err = _run(capsys, "trian")
    assert status == 2 and "did you mean 'train'" in err


def test_eval_on_a_missing_workdir_creates_nothing(capsys, tmp_path):
    workdir = tmp_path / "no_such_run"
    status, _, err = _run(capsys, "eval", "--config", SMOKE, "--workdir", str(workdir))
    assert status == 2 and "does not exist" in _one_line_error(err)
    assert not workdir.exists()
    (tmp_path / "empty_run").mkdir()
    status, _, err = _run(capsys, "eval", "--config", SMOKE, "--workdir", str(tmp_path / "empty_run"))
    assert status == 2 and "no checkpoints/" in _one_line_error(err)
    assert os.listdir(tmp_path / "empty_run") == []


def test_train_workdir_that_is_a_file(capsys, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("not a directory")
    status, _, err = _run(capsys, "train", "--config", SMOKE, "--workdir", str(target), "--skip_evals")
    assert status == 2 and "is a file" in _one_line_error(err)
    assert target.read_text() == "not a directory"


def test_split_overrides_takes_both_spellings():
    rest, overrides = split_overrides(["--workdir", "w", "--config.a.b=1", "--config.c", "x y", "--config", "f.py"])
    assert rest == ["--workdir", "w", "--config", "f.py"]
    assert overrides == [("a.b", "1"), ("c", "x y")]
    with pytest.raises(UsageError):
        split_overrides(["--config.=3"])


def test_overrides_are_read_as_the_field_type():
    from ml_collections import config_dict

    config = ml_collections.ConfigDict(dict(
        n=1, x=0.5, flag=False, name="a", shape=(1, 2), group=dict(inner=3),
        maybe_int=config_dict.placeholder(int), anything=config_dict.FieldReference(False, field_type=object)))
    apply_text_overrides(config, [("n", "7"), ("x", "1e-3"), ("flag", "true"), ("name", "b c"), ("shape", "(3, 4)"),
                                  ("group.inner", "9"), ("maybe_int", "5"), ("anything", "dots")])
    assert (config.n, config.x, config.flag, config.name, config.shape, config.group.inner, config.maybe_int,
            config.anything) == (7, 1e-3, True, "b c", (3, 4), 9, 5, "dots")
    assert isinstance(config.x, float) and isinstance(config.n, int)
    apply_text_overrides(config, [("maybe_int", "None"), ("anything", "True")])
    assert config.maybe_int is None and config.anything is True
    for bad in [("n", "1.5"), ("flag", "maybe"), ("maybe_int", "x"), ("group", "1"), ("nope", "1"),
                ("n.deeper", "1"), ("group.innr", "1")]:
        with pytest.raises(ConfigError):
            apply_text_overrides(config, [bad])


def test_evals_accepts_entry_names_and_evaluator_types():
    from maskjax.config import load_config
    from maskjax.eval.cli import resolve_evals

    config = load_config(DEFAULT)
    types = {name: options.type for name, options in config.evals.items()}
    probe_name = next(n for n, t in types.items() if t == "quick_probe")
    assert resolve_evals(config, None) == list(config.evals)
    assert resolve_evals(config, probe_name) == [probe_name]
    assert resolve_evals(config, "quick_probe") == [probe_name]  # a type selects its entries
    assert resolve_evals(config, "knn") == ["knn"] and config.evals.knn.type == "knn"  # added with defaults
    with pytest.raises(UsageError, match="neither an entry"):
        resolve_evals(config, "linear_prob")


TINY_RUN_CONFIG = """
from maskjax.config import load_config


def get_config(arg=None):
    config = load_config({smoke!r})
    config.model.variant, config.data.image_size, config.global_batch = "mu/4", 16, 16
    config.model.decoder_width, config.model.decoder_depth, config.model.decoder_heads = 32, 1, 2
    config.total_steps, config.progress = 2, False
    config.evals = dict(knn=dict(type="knn", train_examples=32, test_examples=16, k=5))
    return config
"""


def test_finished_run_says_complete_and_force_evals_replaces_records(tmp_path, capsys):
    """A second run of a finished workdir trains nothing, runs no evaluator and duplicates nothing;
    --force_evals re-runs the final evaluators and replaces their records."""
    workdir = tmp_path / "run"
    config_file = tmp_path / "tiny_run.py"
    config_file.write_text(TINY_RUN_CONFIG.format(smoke=SMOKE))
    argv = ["train", "--config", str(config_file), "--workdir", str(workdir)]
    status, out, err = _run(capsys, *argv)
    assert status == 0, err
    assert "done: step 2/2" in out

    def records(name):
        with open(workdir / name) as f:
            return [json.loads(line) for line in f if line.strip()]

    metrics, evals = records("metrics.jsonl"), records("eval_results.jsonl")
    assert len(evals) == 1 and "eval/knn/top1" in evals[0]

    status, out, err = _run(capsys, *argv)
    assert status == 0 and "run complete" in out and "--force_evals" in out and "kNN" not in out, out + err
    assert records("metrics.jsonl") == metrics and records("eval_results.jsonl") == evals

    status, out, err = _run(capsys, *argv, "--force_evals")
    assert status == 0 and "ran again" in out and "kNN" in out, out + err
    again_metrics, again_evals = records("metrics.jsonl"), records("eval_results.jsonl")
    assert len(again_evals) == 1 and again_evals[0].keys() == evals[0].keys()
    assert len(again_metrics) == len(metrics)
    assert [r for r in again_metrics if "loss" in r] == [r for r in metrics if "loss" in r]
