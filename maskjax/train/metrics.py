"""Metric writers (JSON lines, TensorBoard when installed) and the console progress line."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax


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
    checkpoint would otherwise appear twice. The file is rewritten beside and renamed over the
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
            if isinstance(record, dict) and int(record.get("step", 0)) > step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = path + ".rewind"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


def rewind_metrics(workdir: str, step: int) -> int:
    """Rewinds ``metrics.jsonl`` and ``eval_results.jsonl`` to ``step`` (process 0 only; else 0).

    Called when a run starts at ``step`` (0 for a fresh start), so each step is recorded once.
    TensorBoard event files are left as they are (TensorBoard shows the newest value of a step).
    """
    if jax.process_index() != 0:
        return 0
    return sum(rewind_jsonl(os.path.join(workdir, name), step)
               for name in ("metrics.jsonl", "eval_results.jsonl"))


def format_duration(seconds: float) -> str:
    """1h02m, 3m05s or 12s."""
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class Progress:
    """One console line per log interval: step, loss, lr, steps/s and ETA (process 0 only)."""

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True, stream=None):
        self.total = total_steps
        self.enabled = enabled and jax.process_index() == 0
        self.stream = stream or sys.stdout
        self._t0 = time.perf_counter()
        self._s0 = start_step

    def rate(self, step: int) -> float:
        """Steps per second since the start of this run (compilation included in the first)."""
        elapsed = time.perf_counter() - self._t0
        return (step - self._s0) / elapsed if elapsed > 0 else 0.0

    def update(self, step: int, metrics: dict[str, float], rate: float) -> None:
        """Prints the progress line for ``step`` given the recent steps/s ``rate``."""
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
        parts.append(f"ETA {format_duration(eta) if math.isfinite(eta) else '?'}")
        print(" | ".join(parts), file=self.stream, flush=True)
