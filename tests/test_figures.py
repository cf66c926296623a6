"""Legibility of the figures a run writes: ``maskjax plot``'s curves and the reconstruction grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from maskjax.eval.plots import plot_run, run_figure
from maskjax.eval.reconstruction import CAPTION_PT, save_grid


def _write_run(workdir, eval_steps, last_step=490):
    with open(workdir / "metrics.jsonl", "w") as f:
        for step in range(0, last_step + 1, 35):
            f.write(json.dumps({"step": step, "loss": 1.0 / (1 + step), "lr": 1e-3, "grad_norm": 0.5}) + "\n")
    with open(workdir / "eval_results.jsonl", "w") as f:
        for step in eval_steps:
            f.write(json.dumps({"step": step, "eval/probe/top1": 0.457, "eval/knn/top1": 0.391}) + "\n")


def _eval_axis(fig):
    return next(ax for ax in fig.axes if ax.get_title() == "evaluations")


def test_one_evaluation_is_a_point_on_the_whole_run_not_covered_by_the_legend(tmp_path):
    _write_run(tmp_path, eval_steps=[490])
    fig = run_figure(str(tmp_path))
    ax = _eval_axis(fig)
    lo, hi = ax.get_xlim()
    # The whole run (as the training panels), not a 445-490 window around the only point.
    assert lo <= 0 and hi >= 490 and hi - lo >= 490
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    for line in ax.get_lines():
        for x, y in line.get_xydata():
            px, py = ax.transData.transform((x, y))
            # The point with its marker (~6 px) is inside the axes and outside the legend's box.
            assert ax.get_window_extent(renderer).contains(px, py)
            assert not legend.expanded(1.0, 1.0).padded(6).contains(px, py), (legend, px, py)
    # Each series' latest value is written beside its point.
    texts = [t.get_text() for t in ax.texts]
    assert "0.457" in texts and "0.391" in texts


def test_several_evaluations_keep_the_run_range_and_the_png_is_written(tmp_path):
    _write_run(tmp_path, eval_steps=[140, 280, 490])
    fig = run_figure(str(tmp_path))
    lo, hi = _eval_axis(fig).get_xlim()
    assert lo <= 0 and hi >= 490
    path = plot_run(str(tmp_path))
    with Image.open(path) as img:
        assert img.size[0] > 1000


def _ink_rows(gray: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) row of each horizontal run of rows holding dark pixels."""
    dark = (gray < 128).any(axis=1)
    runs, start = [], None
    for i, d in enumerate(dark):
        if d and start is None:
            start = i
        elif not d and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


@pytest.mark.parametrize("size", [32, 224])
def test_reconstruction_caption_is_at_least_10_points(tmp_path, size):
    rng = np.random.default_rng(0)
    cols = {name: rng.uniform(0.6, 1.0, (2, size, size, 3)) for name in ("original", "masked", "reconstruction")}
    # Capitals, ascenders and descenders: the ink of a line spans nearly the whole font size.
    caption = "Mask ratio 0.75; hidden patches de-normalised with their visible patches' statistics (gjpqy)"
    path = save_grid(cols, str(tmp_path / "recon.png"), caption)
    with Image.open(path) as img:
        dpi = img.info["dpi"][0]
        gray = np.asarray(img.convert("L"))
    first = _ink_rows(gray)[0]  # the caption's first line (tiles are light, the text black)
    ink_pt = (first[1] - first[0] + 1) * 72 / dpi
    assert CAPTION_PT >= 10 and ink_pt >= 9.5, ink_pt  # ink spans ~0.95 of the font size
    # The caption fits the figure's width (wrapped, not cut).
    assert not (gray[: first[1] + 1, -3:] < 128).any()
