"""Multi-seed ledger tables: every row runs once per seed; the page gives mean +- std and checks the
papers' pairwise claims with a noise-aware verdict.

Used by tables with ``Table.seeds`` (e.g. the masked-image-modeling comparison, where each row is
a different method's recipe). A claim "A beats B on metric M" is

- **holds** when mean(A) - mean(B) > ``Z`` standard errors of that difference,
- **reversed** when it is below ``-Z`` standard errors,
- **inconclusive** otherwise (the seeds' spread cannot separate them at this size),

with the standard error ``sqrt(s_A^2 / n_A + s_B^2 / n_B)`` from the seeds' sample standard
deviations (Welch's). ``Z`` = 2: roughly a two-sided 95 % test for normal noise, deliberately
conservative for 3 seeds rather than a t quantile that would need more structure than we have.

Tables whose metrics are not accuracies (e.g. bits per character) may set ``scale`` (the stored
value's multiplier, default 100: percent), ``digits`` (default 1), ``unit`` (the cells' unit),
``paper_setting`` and ``lower_is_better`` (column titles where the smaller value wins: a claim
on them reads "A < B" and its verdict compares ``-A`` with ``-B``); read with defaults, so a
plain :class:`~maskjax.repro.ledger.Table` keeps its percent rendering.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from typing import Sequence

import numpy as np

from maskjax.repro.ledger import Row, Table, hardware, run_row

Z = 2.0


def metric_key(key: str, prefix: str) -> str:
    """``"eval/probe/top1"`` with prefix ``"random_init_"`` -> ``"eval/probe/random_init_top1"``."""
    if not prefix:
        return key
    head, _, tail = key.rpartition("/")
    return f"{head}/{prefix}{tail}" if head else prefix + tail


def seed_row(row: Row, seed: int) -> Row:
    """``row`` with ``config.seed`` set (the seed changes init, masks and data order)."""
    return dataclasses.replace(row, overrides={**row.overrides, "seed": seed})


def row_values(table: Table, row: Row, results: Sequence[dict]) -> dict[str, list[float]]:
    """Per column title, the row's value of each seed (x ``table.scale``: percent by default), missing seeds left out."""
    scale = getattr(table, "scale", 100.0)
    out: dict[str, list[float]] = {}
    for title, key in table.metrics.items():
        k = metric_key(key, row.metric_prefix)
        out[title] = [scale * res["metrics"][k] for res in results if k in res["metrics"]]
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def verdict(better: Sequence[float], worse: Sequence[float], z: float = Z) -> tuple[str, float, float]:
    """``("holds" | "reversed" | "inconclusive", difference of means, its standard error)``."""
    if not better or not worse:
        return "not measured", math.nan, math.nan
    (ma, sa), (mb, sb) = mean_std(better), mean_std(worse)
    diff = ma - mb
    se = math.sqrt(sa ** 2 / len(better) + sb ** 2 / len(worse))
    if len(better) < 2 or len(worse) < 2:
        return "inconclusive (one seed: no noise estimate)", diff, se
    if diff > z * se:
        return "holds", diff, se
    if diff < -z * se:
        return "reversed", diff, se
    return "inconclusive", diff, se


def _cell(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "—"
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def render_seeded(table: Table, results: dict[str, list[dict]], *, smoke: bool, machine: str | None = None) -> str:
    """The markdown page of a multi-seed table (``results``: row label -> one result per seed)."""
    flat = [res for rs in results.values() for res in rs]
    commits = ", ".join(f"`{c}`" for c in sorted({res.get("commit", "unknown") for res in flat}))
    # Rows that read another row's run (random-init) share its wall time: count each run once.
    wall = sum({res["workdir"]: res["wall_s"] for res in flat}.values())
    seeds = ", ".join(str(s) for s in table.seeds)
    digits, unit = getattr(table, "digits", 1), getattr(table, "unit", "top-1 %")
    lower = set(getattr(table, "lower_is_better", ()))
    setting = getattr(table, "paper_setting", "ImageNet-1K, ViT-B or larger, hundreds of epochs")
    lines = [f"# {table.title}", "",
             f"Measured by `maskjax repro {table.name}{' --smoke' if smoke else ''}` on {machine or hardware()}; "
             f"rows measured at commit {commits}; page written {datetime.date.today().isoformat()}; "
             f"{len(flat)} row-seeds, {wall / 60:.1f} min of runs in all.", "",
             "Setup: " + (("smoke size (micro runs, a few steps)." if smoke else table.setup) or ""), "",
             f"Each cell: mean ± sample std over seeds {seeds} ({unit}).", "",
             "| row | " + " | ".join(f"{m} (maskjax)" for m in table.metrics) + " | "
             + " | ".join(f"{m} (paper)" for m in table.metrics) + " | wall per seed (min) |",
             "|---" * (2 * len(table.metrics) + 2) + "|"]
    values = {}
    for row in table.rows:
        rs = results[row.label]
        values[row.label] = row_values(table, row, rs)
        paper = ["—" if row.paper.get(m) is None else f"{row.paper[m]:.{digits}f}" for m in table.metrics]
        own_wall = "shared" if row.metric_prefix else f"{np.mean([r['wall_s'] for r in rs]) / 60:.1f}"
        lines.append(f"| {row.label} | " + " | ".join(_cell(values[row.label][m], digits) for m in table.metrics)
                     + " | " + " | ".join(paper) + f" | {own_wall} |")
    lines += ["", f"Paper columns: {table.paper_source}. They are the papers' numbers in their own setting "
              f"({setting}), never measurements of ours; only orderings can be compared." + (f" {table.paper_note}" if table.paper_note else "")]
    if table.claims:
        lines += ["", f"Papers' claims at this scale (verdict: the difference of means against {Z:g} standard "
                  "errors of the difference, Welch, from the seeds' spread):", "",
                  f"| claim | metric | difference ({'points' if unit == 'top-1 %' else unit}) | standard error | verdict "
                  "| source |", "|---|---|---|---|---|---|"]
        for c in table.claims:
            sign = -1.0 if c.metric in lower else 1.0   # a lower-is-better claim is the verdict on -values
            v, diff, se = verdict([sign * x for x in values[c.better][c.metric]],
                                  [sign * x for x in values[c.worse][c.metric]])
            shown = ("—", "—") if math.isnan(diff) else (f"{sign * diff:+.{digits}f}", f"{se:.{digits}f}")
            lines.append(f"| {c.better} {'<' if sign < 0 else '>'} {c.worse} | {c.metric} | {shown[0]} | {shown[1]} "
                         f"| {v} | {c.source} |")
    if smoke:
        lines += ["", "A smoke run: meaningless numbers, it only proves the pipeline."]
    return "\n".join(lines) + "\n"


def run_seeded_table(table: Table, *, out_dir: str, runs_dir: str, smoke: bool = False,
                     overrides: Sequence[tuple[str, str]] = ()) -> str:
    """Runs every row of ``table`` once per seed (finished row-seeds are read back) and writes the page."""
    seeds = table.seeds[:1] if smoke else table.seeds
    results = {row.label: [run_row(table, seed_row(row, s), runs_dir, smoke, overrides) for s in seeds]
               for row in table.rows}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{table.name}{'_smoke' if smoke else ''}.md")
    with open(path, "w") as f:
        f.write(render_seeded(dataclasses.replace(table, seeds=seeds), results, smoke=smoke))
    print(f"wrote {path}")
    return path


__all__ = ["Z", "metric_key", "mean_std", "render_seeded", "row_values", "run_seeded_table", "seed_row",
           "verdict"]
