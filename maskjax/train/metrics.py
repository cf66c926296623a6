"""Metric writers (JSON lines, TensorBoard when installed) and the console progress line."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax

from maskjax.progress import format_duration


class MetricWriter:
    """Writes ``{"step": s, **metrics}`` lines to ``workdir/metrics.jsonl`` on process 0.

    Also writes TensorBoard scalars when ``tensorboardX`` is importable (optional dependency).
    """

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            try:  # optional: TensorBoard event files
                from tensorboardX import SummaryWriter  # type: ignore

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                self._tb = None

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends one record; non-finite floats are written as strings so the file stays JSON."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        for key, value in metrics.items():
            value = float(value) if hasattr(value, "__float__") else value
            record[key] = value if not isinstance(value, float) or math.isfinite(value) else str(value)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, float):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flushes TensorBoard."""
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """Reads back ``metrics.jsonl`` (for plots, tests and the reproduction ledger)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def rewind_jsonl(path: str, step: int) -> int:
    """Drops the records of ``path`` with ``"step" > step`` (and a torn last line); returns how many.

    A resumed run restarts at its checkpoint's step, so records a dead run wrote after that
    checkpoint would otherwise appear twice.
    """
    return filter_jsonl(path, lambda record: int(record.get("step", 0)) <= step)


def filter_jsonl(path: str, keep) -> int:
    """Keeps the records of ``path`` (dicts) for which ``keep(record)``; drops the rest and torn
    lines; returns how many were dropped. The file is rewritten beside and renamed over the
    original, so a crash here leaves the old or the new file, never a mix.
    """
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill in the middle of a write
                dropped += 1
                continue
            if isinstance(record, dict) and not keep(record):
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = path + ".rewind"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


def drop_eval_records(workdir: str, step: int) -> int:
    """Drops the evaluator records of ``step`` (``eval/...`` keys) from ``metrics.jsonl`` and
    ``eval_results.jsonl`` (process 0 only); returns how many.

    Called before a finished run's final evaluators run again (``--force_evals``), so each
    evaluation of a checkpoint is recorded once.
    """
    if jax.process_index() != 0:
        return 0

    def is_eval_of_step(record: dict) -> bool:
        keys = [k for k in record if k != "step"]
        return int(record.get("step", -1)) == step and bool(keys) and all(k.startswith("eval/") for k in keys)

    return sum(filter_jsonl(os.path.join(workdir, name), lambda r: not is_eval_of_step(r))
               for name in ("metrics.jsonl", "eval_results.jsonl"))


def rewind_metrics(workdir: str, step: int) -> int:
    """Rewinds ``metrics.jsonl`` and ``eval_results.jsonl`` to ``step`` (process 0 only; else 0).

    Called when a run starts at ``step`` (0 for a fresh start), so each step is recorded once.
    TensorBoard event files are left as they are (TensorBoard shows the newest value of a step).
    """
    if jax.process_index() != 0:
        return 0
    return sum(rewind_jsonl(os.path.join(workdir, name), step)
               for name in ("metrics.jsonl", "eval_results.jsonl"))


class Progress:
    """The training progress of process 0: a bar on a terminal, one plain line per log interval elsewhere.

    Each update shows step, loss, lr, gradient norm, steps/s, data wait and ETA. On a terminal
    (``stream.isatty()``, ``MASKJAX_PROGRESS`` not ``plain``/``0``) that is a tqdm bar whose
    text is the same fields; otherwise (logs, CI) it is the line ``step 50/1000 | loss ... |
    ETA 3m05s``. ``MASKJAX_PROGRESS=0`` silences bars and evaluator progress, but the trainer
    keeps its plain lines (they are the training log; ``config.progress`` turns them off).
    """

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True, stream=None):
        self.total = total_steps
        self.enabled = enabled and jax.process_index() == 0
        self.stream = stream or sys.stdout
        self._t0 = time.perf_counter()
        self._s0 = start_step
        self._bar = None
        from maskjax.progress import use_bar

        if self.enabled and use_bar(self.stream):
            from tqdm import tqdm

            # The rate and ETA shown are the loop's (recent steps/s), in the postfix: tqdm's own
            # would count the first step's compilation, and a bar updated once per log interval
            # gives its smoothing little to work with. miniters/mininterval: draw at every update.
            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", file=self.stream,
                             dynamic_ncols=True, miniters=1, mininterval=0,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def rate(self, step: int) -> float:
        """Steps per second since the start of this run (compilation included in the first)."""
        elapsed = time.perf_counter() - self._t0
        return (step - self._s0) / elapsed if elapsed > 0 else 0.0

    def update(self, step: int, metrics: dict[str, float], rate: float) -> None:
        """Shows the progress at ``step`` given the recent steps/s ``rate`` (the bar closes at the last step)."""
        if not self.enabled:
            return
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        parts = [f"step {step}/{self.total}"]
        for key in ("loss", "lr", "grad_norm"):
            if key in metrics:
                parts.append(f"{key} {metrics[key]:.4g}")
        parts.append(f"{rate:.2f} steps/s")
        if "data_wait" in metrics:
            parts.append(f"data wait {100 * metrics['data_wait']:.0f}%")
        parts.append(f"ETA {format_duration(eta)}")
        if self._bar is None:
            print(" | ".join(parts), file=self.stream, flush=True)
            return
        self._bar.set_postfix_str(" | ".join(parts[1:]), refresh=False)
        self._bar.update(step - self._bar.n)
        if step >= self.total:
            self.close()

    def close(self) -> None:
        """Finishes the bar (idempotent; nothing to do for plain lines). Call it when training stops early."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
