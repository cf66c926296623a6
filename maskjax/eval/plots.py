"""Training-curve figures from a run's ``metrics.jsonl`` (and ``eval_results.jsonl``)."""

from __future__ import annotations

import json
import os


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_run(workdir: str, path: str | None = None) -> str:
    """Writes a PNG with loss, learning rate, gradient norm and every eval metric over steps."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    # metrics.jsonl is the trainer's MetricWriter output: one JSON record per line.
    train = [r for r in _read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
    evals = _read_jsonl(os.path.join(workdir, "eval_results.jsonl"))
    if not train:
        raise FileNotFoundError(f"no training metrics in {workdir}/metrics.jsonl")
    # Accuracies only: step counts and final losses of evaluators live on other scales.
    eval_keys = sorted({k for r in evals for k in r if k.endswith("top1")})
    panels = [("loss", "training loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm")]
    fig, axes = plt.subplots(1, len(panels) + (1 if eval_keys else 0), figsize=(4.2 * (len(panels) + 1), 3.4))
    steps = [r["step"] for r in train]
    for ax, (key, title) in zip(axes, panels):
        values = [r.get(key) for r in train]
        ax.plot(steps, [v if isinstance(v, (int, float)) else float("nan") for v in values])
        ax.set_title(title)
        ax.set_xlabel("step")
        if key == "loss":
            ax.set_yscale("log")
    if eval_keys:
        ax = axes[-1]
        for key in eval_keys:
            pts = [(r["step"], r[key]) for r in evals if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key.removeprefix("eval/"))
        ax.set_title("evaluations")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    path = path or os.path.join(workdir, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
