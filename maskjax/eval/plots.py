"""Training-curve figures from a run's ``metrics.jsonl`` (and ``eval_results.jsonl``)."""

from __future__ import annotations

import json
import os


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _number(v) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _draw_evaluations(ax, evals: list[dict], eval_keys: list[str], last_step: int) -> None:
    """The evaluations panel: one marked line per accuracy, its latest value written beside it.

    The x axis spans the whole run (0 to the last training or eval step), as the training panels
    do, so one evaluation at the end is a point at the end of training rather than the only thing
    on an axis matplotlib stretches around it. The legend sits outside the axes, where it can
    never cover a point.
    """
    for key in eval_keys:
        pts = [(r["step"], _number(r[key])) for r in evals if key in r and "step" in r]
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        (line,) = ax.plot(xs, ys, marker="o", label=key.removeprefix("eval/"))
        # The value of the latest evaluation, left of its point (the point is at the right end).
        ax.annotate(f"{ys[-1]:.4g}", (xs[-1], ys[-1]), xytext=(-6, 6), textcoords="offset points",
                    ha="right", va="bottom", fontsize=9, color=line.get_color())
    end = max([last_step] + [r["step"] for r in evals if "step" in r])
    ax.set_xlim(0, max(end, 1) * 1.04)
    ax.margins(y=0.25)  # room above the point for its value
    ax.set_title("evaluations")
    ax.set_xlabel("step")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def run_figure(workdir: str):
    """The matplotlib figure of loss, learning rate, gradient norm and every eval accuracy over steps."""
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
        ax.plot(steps, [_number(r.get(key)) for r in train])
        ax.set_title(title)
        ax.set_xlabel("step")
        if key == "loss":
            ax.set_yscale("log")
    if eval_keys:
        _draw_evaluations(axes[-1], evals, eval_keys, max(steps))
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    return fig


def plot_run(workdir: str, path: str | None = None) -> str:
    """Writes a PNG with loss, learning rate, gradient norm and every eval metric over steps."""
    fig = run_figure(workdir)  # first: it picks the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    path = path or os.path.join(workdir, "curves.png")
    # bbox_inches="tight" keeps the legend outside the evaluations panel inside the image.
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
