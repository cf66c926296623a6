"""The training loop: config -> mesh, data, sharded state, jitted step, checkpoints, metrics."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from maskjax.data.modalities import get_modality
from maskjax.data import bad_record_count
from maskjax.data.pipeline import to_global_batch
from maskjax.errors import DataError, NonFiniteLoss, UsageError
from maskjax.methods import make_method, method_modality
from maskjax.progress import phase
from maskjax.core.checkpoint import Checkpointer, process_layout
from maskjax.train.metrics import MetricWriter, Progress, drop_eval_records, rewind_metrics
from maskjax.train.optim import make_optimizer, make_schedule, peak_lr
from maskjax.core.sharding import batch_sharding, make_mesh, normalize_rules
from maskjax.core.state import ModelTemplate, abstract_state, create_state
from maskjax.train.step import make_train_step
from maskjax.train.validate import validate_config

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: the final state and what is needed to use it."""

    state: dict
    template: ModelTemplate
    method: Any
    mesh: Any
    config: Any
    step: int
    total_steps: int
    history: list[dict]  # the most recent per-step metrics (up to 10,000 steps)
    steps_per_sec: float
    # True when the workdir already held the final checkpoint (restored intact): nothing was trained.
    already_complete: bool = False
    evals_rerun: bool = False  # a finished run's final evaluators ran again (force_evals)

    def summary(self, workdir: str) -> str:
        """The line ``maskjax train`` ends with: done, complete, or stopped early."""
        if self.already_complete and self.evals_rerun:
            return (f"run complete (step {self.step}/{self.total_steps}); its final evaluators ran again "
                    f"(--force_evals) and replaced their records in {workdir}")
        if self.already_complete:
            return (f"run complete: {workdir} already holds the final checkpoint (step {self.step}/"
                    f"{self.total_steps}); nothing to train. --force_evals re-runs the final evaluators; "
                    f"a new --workdir starts a new run")
        if self.step >= self.total_steps:
            return f"done: step {self.step}/{self.total_steps}, run complete, workdir {workdir}"
        return (f"stopped at step {self.step}/{self.total_steps} (--stop_at_step), checkpoint saved; "
                f"run the same command without --stop_at_step to continue, workdir {workdir}")


def config_hash(config) -> str:
    """A short stable hash of the config (recorded in checkpoints and checked across processes)."""
    return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:16]


def data_modality(config):
    """The :class:`~maskjax.data.modalities.Modality` that feeds ``config.method``."""
    return get_modality(method_modality(config.method))


def open_train_source(config):
    """The training source the config describes (images, text, ... by the method's modality)."""
    return data_modality(config).open_source(config, "train")


def open_eval_source(config):
    """The held-out source (for images ``data.eval_path`` or ``data.path`` at ``data.eval_split``)."""
    return data_modality(config).open_source(config, "eval")


def schedule_steps(config, num_examples: int) -> tuple[int, int, int]:
    """(steps_per_epoch, total_steps, warmup_steps) from epochs or an explicit total_steps.

    Warm-up follows the run's length: ``optim.warmup_steps`` is a number of steps; otherwise the
    warm-up is the recipe's fraction ``warmup_epochs / epochs`` of ``total_steps``, so a
    ``--config.total_steps`` override shortens the warm-up with the run (without one,
    ``warmup_epochs`` epochs of steps).
    """
    steps_per_epoch = num_examples // config.global_batch
    if steps_per_epoch < 1:
        raise DataError(f"the dataset has {num_examples} examples, fewer than one global batch of "
                        f"{config.global_batch}; lower global_batch")
    # "is None", not "or": validation refuses total_steps <= 0, and 0 must never mean "use epochs".
    total = config.total_steps if config.total_steps is not None else int(round(config.epochs * steps_per_epoch))
    if config.optim.get("warmup_steps") is not None:
        warmup = min(int(config.optim.warmup_steps), total)
    elif config.total_steps is not None and config.epochs:
        warmup = min(int(round(config.optim.warmup_epochs / config.epochs * total)), total)
    else:
        warmup = min(int(round(config.optim.warmup_epochs * steps_per_epoch)), total)
    return steps_per_epoch, total, warmup


def training_parts(config, method, warmup_steps: int, total_steps: int):
    """``(peak_lr, schedule, optimizer, model template, init_key, step_key)`` of a run.

    Shared by the trainer and ``maskjax bench`` so a benchmark times exactly the trained step.
    """
    lr = peak_lr(config.optim.base_lr, config.global_batch, config.optim.lr_batch_denominator)
    schedule = make_schedule(config.optim, lr, warmup_steps, total_steps)
    tx = make_optimizer(config.optim, schedule)
    template = ModelTemplate.from_builder(method.build)
    base_key = jax.random.key(config.seed)
    return lr, schedule, tx, template, jax.random.fold_in(base_key, 0), jax.random.fold_in(base_key, 1)


class _PendingMetrics:
    """Per-step metrics kept on device until a log interval, so the loop never syncs per step."""

    def __init__(self):
        self.items: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict) -> None:
        self.items.append((step, metrics))

    def fetch(self) -> list[tuple[int, dict]]:
        host = jax.device_get(self.items)
        self.items = []
        return [(s, {k: float(v) for k, v in m.items()}) for s, m in host]


# The step's finiteness checks: the loss and gradients of the step's input state and the
# global norm of the parameters it produced (maskjax.train.step), so the state a save would
# write is covered by the metrics of its own step.
_FINITE_METRICS = ("loss", "grad_norm", "param_norm")


def _check_finite(records: list[tuple[int, dict]], last_ckpt: int | None, ckpt: Checkpointer | None = None) -> None:
    """Raises :class:`NonFiniteLoss` at the first record whose loss, gradient or parameter norm is
    NaN or inf, naming the step and the newest checkpoint on disk (``ckpt``; else ``last_ckpt``).

    Called before every save, so a non-finite state is never checkpointed.
    """
    for step, metrics in records:
        for name in _FINITE_METRICS:
            value = metrics.get(name, 0.0)
            if np.isfinite(value):
                continue
            if ckpt is not None:  # waits for a save in flight: name only a finished checkpoint
                where = ckpt.describe_newest()
            else:
                where = (f"The last checkpoint is step {last_ckpt}." if last_ckpt else "No checkpoint was saved.")
            raise NonFiniteLoss(
                f"{name} is {value} at step {step}; training stopped before saving that state. {where} "
                f"Lower the learning rate, use compute_dtype=float32 or enable optim.grad_clip, then "
                f"restart in the same workdir to resume.")


def evaluate(config, workdir: str, state: dict, template: ModelTemplate, method, train_source,
             step: int, final: bool) -> dict:
    """Runs the evaluators due at ``step`` (or the after-training ones) on ``state``, on its mesh.

    The evaluators get the model rebuilt from the state's own sharded arrays (no gather to a
    host: a pod-size model does not fit one) plus the mesh and rules, with which they shard
    their input batches (:mod:`maskjax.eval.features`).
    """
    from maskjax.eval.registry import EvalContext, due, run_evaluators

    names = due(config, step, final)
    if not names:
        return {}
    # Every state array lives on the run's mesh; the step counter's sharding names it.
    mesh = state["step"].sharding.mesh
    context = EvalContext(config=config, workdir=workdir, step=step, method=method, train_source=train_source,
                          eval_source=open_eval_source(config), final=final, mesh=mesh,
                          rules=normalize_rules(config.sharding_rules))
    return run_evaluators(template.merge(state["params"], state["extra"]), context, names)


def train(config, workdir: str, *, stop_at_step: int | None = None, run_evals: bool = True,
          watchdog=None, allow_config_change: bool = False, force_evals: bool = False) -> TrainResult:
    """Trains ``config`` in ``workdir``, resuming from the newest checkpoint there if any.

    Holds ``WORKDIR/.maskjax.lock`` while it runs (process 0; :mod:`maskjax.train.workdir_lock`)
    and turns SIGINT/SIGTERM into a stop at the next step boundary with a checkpoint, raising
    :class:`~maskjax.train.interrupt.Interrupted` (:mod:`maskjax.train.interrupt`). Resuming with
    a config whose result-changing fields differ from the checkpointed run's raises
    :class:`~maskjax.train.resume_config.ConfigChanged` unless ``allow_config_change``.
    See :func:`_train` for the other arguments.
    """
    from maskjax.train.interrupt import StopSignals, remove_partial_checkpoints, saved_steps
    from maskjax.train.resume_config import check_resume_config
    from maskjax.train.workdir_lock import WorkdirLock

    make_workdir(workdir)
    # One lock per job: the processes of a multi-process run share the workdir.
    with WorkdirLock(workdir, enabled=jax.process_index() == 0) as lock, StopSignals() as signals:
        if lock.describe_takeover():
            _say(lock.describe_takeover())
        ckpt_dir = os.path.join(workdir, "checkpoints")
        if jax.process_index() == 0:
            # Folders of saves cut short (kill -9, a second Ctrl-C); safe: the lock excludes writers.
            removed = remove_partial_checkpoints(ckpt_dir)
            if removed:
                _say(f"removed unfinished checkpoint folders in {ckpt_dir}: {', '.join(removed)}")
        if saved_steps(ckpt_dir):  # a resume: compare with the config.json of the checkpointed run
            check_resume_config(config, workdir, allow=allow_config_change, say=_say)
        return _train(config, workdir, stop_at_step=stop_at_step, run_evals=run_evals, watchdog=watchdog,
                      stop_signals=signals, force_evals=force_evals)


def make_workdir(workdir: str) -> None:
    """Creates ``workdir`` (and parents); a path that is a file, or cannot be made, is a UsageError."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UsageError(f"workdir {workdir!r} is a file, not a directory; choose another --workdir")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create workdir {workdir!r}: {e.strerror or e}") from None


def _train(config, workdir: str, *, stop_at_step: int | None = None, run_evals: bool = True,
           watchdog=None, stop_signals=None, force_evals: bool = False) -> TrainResult:
    """The training run behind :func:`train` (which holds the workdir lock and signal handlers).

    ``stop_at_step`` ends the run early (with a checkpoint) as a preemption would; the schedule
    still follows the full run, so a later call continues exactly where this one stopped.
    Evaluators in ``config.evals`` run at their interval and after the last step
    (``run_evals=False`` skips them). ``watchdog`` (a :class:`~maskjax.train.watchdog.StepWatchdog`)
    reports a step that does not finish in time; by default one of ``config.watchdog_seconds``.
    A workdir that already holds the final checkpoint trains nothing: it restores it (a damaged one falls back as usual) and returns
    (``already_complete``), or, with ``force_evals``, re-runs the final evaluators and replaces
    their records.
    """
    from maskjax.train.watchdog import StepWatchdog

    watchdog = watchdog or StepWatchdog(config.get("watchdog_seconds", 0) or 0)
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    rules = normalize_rules(config.sharding_rules)
    mesh = make_mesh(config.mesh)
    modality = data_modality(config)
    modality.prepare(config, workdir)
    method = make_method(config)
    source = modality.open_source(config, "train")
    num_examples = config.data.num_train_examples or len(source)
    steps_per_epoch, total_steps, warmup_steps = schedule_steps(config, num_examples)
    stop = min(stop_at_step or total_steps, total_steps)

    lr, schedule, tx, template, init_key, step_key = training_parts(config, method, warmup_steps, total_steps)

    data_iter = iter(modality.make_pipeline(config, source, train=True))

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.checkpoint.max_to_keep,
                        every_steps=config.checkpoint.every_steps)
    layout = process_layout(config.data.num_workers)
    meta = dict(layout, config_hash=config_hash(config), maskjax_version=_version())
    latest = ckpt.latest_step()
    if latest is not None:
        target, shardings = abstract_state(template, method.build, tx, mesh, rules, init_key)
        # The newest intact step: damaged newer ones are set aside with one warning each, and
        # NoUsableCheckpoint (nothing renamed) when none restores.
        latest, state, data_restored = ckpt.restore_latest(target, data_iter, layout,
                                                           config.checkpoint.data_state_mismatch)
        _say(f"resumed from step {latest} in {ckpt.directory}"
             + ("" if data_restored else " (model and optimizer only; the data order restarted)"))
    else:
        state, shardings = create_state(template, method.build, tx, mesh, rules, init_key)
    start = int(jax.device_get(state["step"]))
    if start >= total_steps and not (force_evals and run_evals):
        # Restored (so a damaged final checkpoint falls back and trains again), nothing to do.
        ckpt.close()
        return TrainResult(state=state, template=template, method=method, mesh=mesh, config=config, step=start,
                           total_steps=total_steps, history=[], steps_per_sec=0.0, already_complete=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    variant = config.get("model", {}).get("variant")
    _say(f"{method.name}: {variant + ', ' if variant else ''}{template.num_params() / 1e6:.2f}M params, "
         f"mesh {dict(mesh.shape)}, global batch {config.global_batch} (x{config.grad_accum} accumulation), "
         f"{steps_per_epoch} steps/epoch, steps {start}->{stop} of {total_steps}, peak lr {lr:.3g}")

    bsharding = batch_sharding(mesh, rules)
    step_fn = make_train_step(method, template, tx, schedule, base_key=step_key,
                              global_batch=config.global_batch, accum=config.grad_accum,
                              state_shardings=shardings, batch_sharding=bsharding)
    rewind_metrics(workdir, start)  # records a dead run wrote after its last checkpoint
    writer = MetricWriter(workdir)
    progress = Progress(total_steps, start, enabled=config.progress)
    pending = _PendingMetrics()
    # Recent per-step metrics for callers and tests; bounded so a long run does not grow memory.
    history: collections.deque = collections.deque(maxlen=10_000)
    last_ckpt = latest
    step = start

    from maskjax.train.interrupt import StopAgreement

    # Multi-process jobs agree on the stop step at log boundaries (maskjax.train.interrupt).
    agreement = StopAgreement(stop_signals, config.log_every_steps, jax.process_count())

    def stopping() -> bool:
        return agreement.should_stop(step)

    leaving_now = False
    window_t0, window_s0, wait = time.perf_counter(), step, 0.0
    run_t0 = time.perf_counter()

    def flush():
        nonlocal window_t0, window_s0, wait
        records = pending.fetch()
        if not records:
            return
        _check_finite(records, last_ckpt, ckpt)
        now = time.perf_counter()
        rate = (step - window_s0) / max(now - window_t0, 1e-9)
        mean = {k: float(np.mean([m[k] for _, m in records])) for k in records[-1][1]}
        # The lr is the schedule's value at the logged step (that step's update), not the
        # window's mean, which lags the schedule (a warm-up seemed to peak a window late).
        mean["lr"] = records[-1][1].get("lr", mean.get("lr", 0.0))
        mean.update(steps_per_sec=rate, data_wait=wait / max(now - window_t0, 1e-9))
        if bad_record_count():  # unreadable records skipped so far (this process's readers)
            mean["data/bad_records"] = float(bad_record_count())
        for s, m in records:
            history.append({"step": s, **m})
        writer.write(step, mean)
        progress.update(step, mean, rate)
        window_t0, window_s0, wait = now, step, 0.0

    def save(force: bool = False):
        nonlocal last_ckpt
        if last_ckpt == step:
            return
        flush()  # never checkpoint a state whose loss went non-finite
        ckpt.save(step, state, data_iter, meta, force=force)
        last_ckpt = step

    try:
        with jax.set_mesh(mesh), watchdog:
            # A stop signal is checked before each step: the step in flight finishes, none starts.
            while step < stop and not stopping():
                t0 = time.perf_counter()
                host_batch = next(data_iter)
                wait += time.perf_counter() - t0
                if step == start and config.progress:
                    # Compilation happens in the first call: block on it once, so the line gives
                    # the real time (later steps stay asynchronous).
                    with phase("compiling the train step (and running its first step)", quiet_below=0):
                        state, metrics = step_fn(state, to_global_batch(host_batch, bsharding))
                        jax.block_until_ready(metrics)
                else:
                    state, metrics = step_fn(state, to_global_batch(host_batch, bsharding))
                step += 1
                pending.add(step, metrics)
                if step % config.log_every_steps == 0:
                    flush()
                if step % ckpt.every_steps == 0:
                    save()
                watchdog.beat(step)
                if run_evals and step < total_steps and not stopping():
                    with watchdog.paused():  # evaluations are not stalled steps
                        results = evaluate(config, workdir, state, template, method, source, step, final=False)
                    if results:
                        writer.write(step, results)
            if step > start or not stopping():
                save(force=True)  # flushes this step's metrics first; waits for a save in flight
            else:
                flush()
    except KeyboardInterrupt:
        # Only a second Ctrl-C gets here (the first one is a stop request): leave at once. An
        # unfinished save stays a *.orbax-checkpoint-tmp folder, removed at the next start.
        leaving_now = True
        raise
    except BaseException:
        # In a multi-process job the peers may be stuck in a collective: waiting for the save
        # (Orbax finalizes it with a barrier) could hang; exit_fast_on_error ends the process.
        leaving_now = jax.process_count() > 1
        raise
    finally:
        writer.close()
        progress.close()  # a bar left open by an early stop or an error
        if not leaving_now:
            # Also on an error (bad data, NaN): a save in flight finishes intact instead of
            # breaking at interpreter exit with Orbax tracebacks after the one-line message.
            ckpt.close()
    if stopping():
        from maskjax.train.interrupt import Interrupted

        raise Interrupted(step, agreement.signum, ckpt.directory, saved=step > start)
    elapsed = time.perf_counter() - run_t0
    if run_evals and step >= total_steps and (step > start or force_evals):
        if step == start:  # a finished run's evaluators again: their new records replace the old
            drop_eval_records(workdir, step)
        results = evaluate(config, workdir, state, template, method, source, step, final=True)
        if results:
            writer = MetricWriter(workdir)
            writer.write(step, results)
            writer.close()
    return TrainResult(state=state, template=template, method=method, mesh=mesh, config=config, step=step,
                       total_steps=total_steps, history=list(history),
                       steps_per_sec=(step - start) / elapsed if elapsed > 0 else 0.0,
                       already_complete=step == start >= total_steps, evals_rerun=step == start >= total_steps)


def _version() -> str:
    from maskjax import __version__

    return __version__


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)
