"""``maskjax repro``: runs a ledger table (single-seed or multi-seed) and writes its page."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Sequence

from maskjax.errors import UsageError
from maskjax.repro.ledger import REPO_ROOT, render, run_row, tables
from maskjax.repro.seeded import run_seeded_table


def run_table(name: str, *, out_dir: str, runs_dir: str, smoke: bool = False, max_rows: int | None = None,
              overrides: Sequence[tuple[str, str]] = ()) -> str:
    """Runs table ``name`` and writes its markdown page; returns the page's path.

    ``overrides`` (``--config.X=V`` pairs) apply to every row, after the table's own.
    """
    if name not in tables():
        raise UsageError(f"unknown table {name!r}; known: {', '.join(sorted(tables()))} (maskjax repro --list)")
    table = tables()[name]
    if max_rows:
        table = dataclasses.replace(table, rows=table.rows[:max_rows])
    if table.seeds:
        return run_seeded_table(table, out_dir=out_dir, runs_dir=runs_dir, smoke=smoke, overrides=overrides)
    results = [run_row(table, row, runs_dir, smoke, overrides) for row in table.rows]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}{'_smoke' if smoke else ''}.md")
    with open(path, "w") as f:
        f.write(render(table, results, smoke=smoke))
    print(f"wrote {path}")
    return path


def main(argv: list[str]) -> int:
    """``maskjax repro NAME [--smoke] [--out docs/results] [--runs runs/repro] [--max-rows N] [--config.X=V ...]``."""
    from maskjax.config.commandline import split_overrides

    parser = argparse.ArgumentParser(
        prog="maskjax repro", description="Runs a reproduction table (config rows) and writes its page. Each "
        "row's config comes from the table; --config.FIELD=VALUE overrides apply to every row, after the table's "
        "own (and change the rows' run directories).")
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(sorted(tables()))}, or 'all'")
    parser.add_argument("--smoke", action="store_true", help="tiny rows (proves the pipeline, seconds)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "docs", "results"))
    parser.add_argument("--runs", default=os.path.join("runs", "repro"))
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--list", action="store_true", help="list the tables")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (default: one line)")
    argv, overrides = split_overrides(argv)
    args = parser.parse_args(argv)
    if args.list or not args.name:
        for name, table in sorted(tables().items()):
            print(f"{name}: {table.title} ({len(table.rows)} rows)")
        return 0
    names = sorted(tables()) if args.name == "all" else [args.name]
    for name in names:
        run_table(name, out_dir=args.out, runs_dir=args.runs, smoke=args.smoke, max_rows=args.max_rows,
                  overrides=overrides)
    return 0
