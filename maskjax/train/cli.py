"""``maskjax train``: the trainer's command line (``--config FILE[:arg]`` + ``--config.X=V`` overrides).

It parses with :class:`maskjax.config.commandline.ConfigArgumentParser`, the parser of every
config-running subcommand, so ``-h`` lists these flags and a bad argument is one line, exit 2.
"""

from __future__ import annotations

import os
import sys

from maskjax.config.commandline import ConfigArgumentParser
from maskjax.errors import UsageError, pop_debug_flag, run_command

DESCRIPTION = """Pre-trains from a config. A workdir that holds checkpoints resumes by itself; a finished
run says so and exits (--force_evals re-runs its final evaluators). Ctrl-C or SIGTERM stops at
the next step boundary with a checkpoint: run the same command to resume.

examples:
  maskjax train --config configs/mae/default.py
  maskjax train --config configs/mae/default.py:smoke --workdir runs/try --config.total_steps=200
"""


def build_parser(prog: str = "maskjax train") -> ConfigArgumentParser:
    """The ``maskjax train`` argument parser (also used by ``maskjax launch`` to check flags)."""
    p = ConfigArgumentParser(prog=prog, description=DESCRIPTION)
    p.add_argument("--workdir", default=None, help="run directory (checkpoints, metrics, figures); "
                   "default: runs/<config name>[_<arg>]")
    p.add_argument("--stop_at_step", type=int, default=None,
                   help="stop (with a checkpoint) at this step, as a preemption would")
    p.add_argument("--skip_evals", action="store_true", help="run no evaluator (config.evals), periodic or final")
    p.add_argument("--force_evals", action="store_true",
                   help="on a finished run: run the final evaluators again (their records are replaced)")
    p.add_argument("--allow_config_change", action="store_true",
                   help="resume even when fields that change the results (batch, model, data, optim, schedule, "
                        "seed, ...) differ from the checkpointed run's config.json")
    p.add_argument("--verbose", action="store_true", help="log at INFO (Orbax saves, data sources, ...)")
    dist = p.add_argument_group("multi-process runs (maskjax launch writes these)")
    dist.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    dist.add_argument("--num_processes", type=int, default=None, help="number of processes in the job")
    dist.add_argument("--process_id", type=int, default=None, help="this process's index in the job")
    dist.add_argument("--distributed_auto", action="store_true",
                      help="let JAX detect the cluster (TPU pod, SLURM, Kubernetes)")
    dist.add_argument("--init_timeout", type=int, default=300, help="seconds to wait for all processes to join")
    dist.add_argument("--preflight_timeout", type=float, default=120,
                      help="seconds to wait for every process's preflight report")
    dist.add_argument("--expected_devices", type=int, default=None,
                      help="fail before training unless JAX sees this many devices in all")
    watch = p.add_argument_group("watchdog and compilation cache")
    watch.add_argument("--step_timeout", type=float, default=None, help="seconds without a finished step before "
                       "the watchdog dumps all thread stacks (0: off; default: config.watchdog_seconds)")
    watch.add_argument("--first_step_timeout", type=float, default=None,
                       help="allowance for the first step (compilation); default: step_timeout")
    watch.add_argument("--step_timeout_abort", action="store_true",
                       help="exit with status 75 after a watchdog report, so a launcher stops the other processes")
    watch.add_argument("--compile_cache", default=None, help="JAX persistent compilation cache directory: a second "
                       "start of the same run skips compilation (default: config.compile_cache_dir)")
    return p


def default_workdir(config_spec: str) -> str:
    """``runs/<config file stem>[_<arg>]``, e.g. ``runs/default_smoke`` for ``default.py:smoke``."""
    name = os.path.splitext(os.path.basename(config_spec.split(":")[0]))[0]
    suffix = config_spec.split(":")[1].replace(",", "_").replace("=", "") if ":" in config_spec else ""
    return os.path.join("runs", name + (f"_{suffix}" if suffix else ""))


def _quiet_logs(verbose: bool) -> None:
    from absl import flags
    from absl import logging as absl_logging

    # grain's worker processes read absl flags, which this parser does not define.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)  # Orbax logs every save


def train_main(argv: list[str]) -> int:
    """Parses ``argv``, initialises (multi-process) JAX and trains; evaluators run inside the loop."""
    args = build_parser().parse_config_args(argv)
    config = args.config
    if args.stop_at_step is not None and args.stop_at_step < 1:
        raise UsageError(f"--stop_at_step must be a step >= 1, got {args.stop_at_step}")
    _quiet_logs(args.verbose)
    from maskjax.train import distributed

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                           auto=args.distributed_auto, timeout_s=args.init_timeout)
    from maskjax.train.watchdog import StepWatchdog, exit_fast_on_error

    # In a multi-process job an exception on one process must end it at once: otherwise it
    # waits in the shutdown barrier while the others wait in a collective, and nobody exits.
    with exit_fast_on_error():
        from maskjax.train.compile_cache import enable_compile_cache
        from maskjax.train.loop import config_hash, train
        from maskjax.train.preflight import preflight

        enable_compile_cache(args.compile_cache or config.get("compile_cache_dir"))
        workdir = args.workdir or default_workdir(args.config_spec)
        timeout = args.step_timeout if args.step_timeout is not None else config.get("watchdog_seconds", 0)
        watchdog = StepWatchdog(timeout or 0, abort=args.step_timeout_abort,
                                first_timeout_s=args.first_step_timeout)
        preflight(config_hash(config), expected_devices=args.expected_devices, timeout_s=args.preflight_timeout)
        try:
            result = train(config, workdir, stop_at_step=args.stop_at_step, run_evals=not args.skip_evals,
                           watchdog=watchdog, allow_config_change=args.allow_config_change,
                           force_evals=args.force_evals)
        except KeyboardInterrupt:
            # A second Ctrl-C: out now. os._exit, because a normal exit would wait for the
            # checkpointer's background threads that the user just asked not to wait for.
            print("maskjax train: interrupted (a second Ctrl-C, or one before training started); exited at "
                  "once; run the same command to resume from the last complete checkpoint",
                  file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)
        print(result.summary(workdir), flush=True)
    return 0


def run(argv: list[str] | None = None) -> None:
    """``python -m maskjax.train``: :func:`train_main` with one-line errors (``--debug``: tracebacks)."""
    argv, debug = pop_debug_flag(list(sys.argv[1:] if argv is None else argv))
    sys.exit(run_command("maskjax train", train_main, argv, debug=debug))
