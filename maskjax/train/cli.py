"""Command-line front end of the trainer (absl flags + ml-collections config overrides)."""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mae/default.py[:smoke].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, figures). "
                               "Default: runs/<config name>.")
_STOP_AT = flags.DEFINE_integer("stop_at_step", None, "Stop (with a checkpoint) at this step, as a preemption would.")
_NO_EVALS = flags.DEFINE_bool("skip_evals", False, "Run no evaluator (config.evals), periodic or final.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_AUTO = flags.DEFINE_bool("distributed_auto", False, "Let JAX detect the cluster (TPU pod, SLURM, k8s).")
_TIMEOUT = flags.DEFINE_integer("init_timeout", 300, "Seconds to wait for all processes to join.")
_STEP_TIMEOUT = flags.DEFINE_float("step_timeout", None, "Seconds without a finished step before the watchdog "
                                   "dumps all thread stacks (0: off; default: config.watchdog_seconds).")
_FIRST_STEP_TIMEOUT = flags.DEFINE_float("first_step_timeout", None, "Allowance for the first step "
                                         "(compilation); default: step_timeout.")
_STEP_TIMEOUT_ABORT = flags.DEFINE_bool("step_timeout_abort", False, "Exit with status 75 after a watchdog "
                                        "report, so a launcher stops the other processes.")
_EXPECTED_DEVICES = flags.DEFINE_integer("expected_devices", None, "Fail before training unless JAX sees this "
                                         "many devices in all.")
_COMPILE_CACHE = flags.DEFINE_string("compile_cache", None, "JAX persistent compilation cache directory: a "
                                     "second start of the same run skips compilation (default: "
                                     "config.compile_cache_dir; unset = no cache).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool("allow_config_change", False, "Resume even when fields that change "
                                          "the results (batch, model, data, optim, schedule, seed, ...) "
                                          "differ from the checkpointed run's config.json.")
_PREFLIGHT_TIMEOUT = flags.DEFINE_float("preflight_timeout", 120, "Seconds to wait for every process's "
                                        "preflight report.")


def _default_workdir(config_arg: str) -> str:
    name = os.path.splitext(os.path.basename(config_arg.split(":")[0]))[0]
    suffix = config_arg.split(":")[1].replace(",", "_").replace("=", "") if ":" in config_arg else ""
    return os.path.join("runs", name + (f"_{suffix}" if suffix else ""))


def main(argv) -> None:
    """Initialises (multi-process) JAX, then trains (evaluators run inside the loop)."""
    del argv
    from absl import logging as absl_logging

    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    from maskjax.train import distributed

    distributed.initialize(_COORD.value, _NPROC.value, _PID.value, auto=_AUTO.value, timeout_s=_TIMEOUT.value)
    from maskjax.train.watchdog import StepWatchdog, exit_fast_on_error

    # In a multi-process job an exception on one process must end it at once: otherwise it
    # waits in the shutdown barrier while the others wait in a collective, and nobody exits.
    with exit_fast_on_error():
        from maskjax.core.checkpoint import DataStateMismatch
        from maskjax.errors import NoUsableCheckpoint
        from maskjax.train.interrupt import Interrupted
        from maskjax.train.loop import NonFiniteLoss, config_hash, train
        from maskjax.train.workdir_lock import WorkdirLocked
        from maskjax.train.preflight import PreflightError, preflight
        from maskjax.train.validate import ConfigError

        config = _CONFIG.value
        from maskjax.train.compile_cache import enable_compile_cache

        enable_compile_cache(_COMPILE_CACHE.value or config.get("compile_cache_dir"))
        workdir = _WORKDIR.value or _default_workdir(flags.FLAGS["config"].config_filename)
        timeout = _STEP_TIMEOUT.value if _STEP_TIMEOUT.value is not None else config.get("watchdog_seconds", 0)
        watchdog = StepWatchdog(timeout or 0, abort=_STEP_TIMEOUT_ABORT.value,
                                first_timeout_s=_FIRST_STEP_TIMEOUT.value)
        try:
            preflight(config_hash(config), expected_devices=_EXPECTED_DEVICES.value,
                      timeout_s=_PREFLIGHT_TIMEOUT.value)
            result = train(config, workdir, stop_at_step=_STOP_AT.value, run_evals=not _NO_EVALS.value,
                           watchdog=watchdog, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
        except (ConfigError, DataStateMismatch, NonFiniteLoss, PreflightError, FileNotFoundError,
                WorkdirLocked, NoUsableCheckpoint) as e:
            # Problems the user can act on get their message, not a stack trace.
            sys.exit(f"maskjax: {e}")
        except Interrupted as e:
            # A clean stop on SIGINT/SIGTERM: one line, and the shell's status for that signal
            # (130/143) so schedulers and scripts see an interruption, not a failure.
            print(f"maskjax: {e.message}", file=sys.stderr, flush=True)
            sys.exit(e.exit_status)
        except KeyboardInterrupt:
            # A second Ctrl-C: out now. os._exit, because a normal exit would wait for the
            # checkpointer's background threads that the user just asked not to wait for.
            print("maskjax: interrupted (a second Ctrl-C, or one before training started); exited at "
                  "once; the next run resumes from the last complete checkpoint", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)
        print(f"done: step {result.step}/{result.total_steps}, workdir {workdir}", flush=True)


def run(argv: list[str] | None = None) -> None:
    """Parses flags and runs :func:`main` under ``absl.app`` (which grain's workers need)."""
    flags.mark_flag_as_required("config")
    app.run(main, argv=argv)
