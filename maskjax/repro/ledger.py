"""The reproduction ledger: ``maskjax repro NAME`` runs a named table of config rows and writes
the measured metrics beside the paper's reference into ``docs/results/NAME.md``.

A row is a config plus overrides. Rows with identical resolved configs share one run directory
(keyed by a hash), so the baseline shared by several ablation tables trains once, and an
interrupted table resumes: finished rows are read back from their ``row_result.json``.
Paper numbers are only ever written in the "paper" columns.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import subprocess
import time
from typing import Sequence


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: a label, config overrides, and the paper's reference per metric (or None).

    ``config``: the row's own recipe (``path[:arg]``, relative to the repository) instead of the
    table's, for tables that compare methods. ``metric_prefix``: read the metrics under this prefix
    of the run's evaluator keys (``"random_init_"``: the random-init encoder that ``quick_probe``
    evaluates beside the pre-trained one, so that baseline row costs no run of its own).
    """

    label: str
    overrides: dict
    paper: dict
    config: str | None = None
    metric_prefix: str = ""


@dataclasses.dataclass(frozen=True)
class Claim:
    """A paper's pairwise claim: row ``better`` beats row ``worse`` on ``metric`` (a column title)."""

    better: str
    worse: str
    metric: str
    source: str


@dataclasses.dataclass(frozen=True)
class Table:
    """A named table: base config, shared overrides, rows, metric columns and the paper source."""

    name: str
    title: str
    config: str
    base: dict
    rows: tuple
    metrics: dict          # column title -> key in eval results, e.g. "linear probe": "eval/probe/top1"
    paper_source: str
    claim: str             # the paper's qualitative claim the ordering check tests
    expect_best: str       # label of the row the paper says is best on `claim_metric`
    claim_metric: str
    setup: str = ""        # how the rows were run (default: the CIFAR-10 MAE setup)
    smoke: dict | None = None         # overrides that shrink a row to seconds (default: MAE's SMOKE)
    smoke_evals: dict | None = None   # evaluators of a smoke row (default: MAE's SMOKE_EVALS)
    paper_note: str = ""   # what the paper columns are, when they are not the metric itself
    noise: float = 0.0     # claim-metric spread (fraction) below which the ordering is "inconclusive"
    seeds: tuple = ()      # run every row once per seed (config.seed) and report mean +- std
    claims: tuple = ()     # Claim(...)s checked with a noise-aware verdict (multi-seed tables)


_TABLES: dict[str, Table] = {}


def register_table(table: Table) -> Table:
    """Adds ``table`` to the ledger under ``table.name`` (a table module calls this when imported)."""
    if table.name in _TABLES and _TABLES[table.name] is not table:
        raise ValueError(f"a ledger table named {table.name!r} is already registered")
    _TABLES[table.name] = table
    return table


def tables() -> dict[str, Table]:
    """Every registered table by name: the modules of ``maskjax.repro`` and the ``maskjax.tables`` entry points."""
    from maskjax import plugins

    plugins.discover("maskjax.repro", plugins.TABLES, skip=("ledger", "command", "seeded"))
    return dict(_TABLES)


SMOKE = {"model.variant": "mu/4", "data.image_size": 16, "model.decoder_width": 32, "model.decoder_heads": 2,
         "global_batch": 16, "total_steps": 2, "log_every_steps": 1, "progress": False}
SMOKE_EVALS = {
    "probe": {"type": "linear_probe", "epochs": 2, "batch_size": 32, "blr": 1.0, "warmup_epochs": 0,
              "cache_features": True, "max_eval": 64, "train_examples": 64},
    "finetune": {"type": "finetune", "epochs": 1, "batch_size": 32, "blr": 1e-3, "warmup_epochs": 0,
                 "augment": "mae", "max_eval": 64, "train_examples": 64},
}


def build_row_config(table: Table, row: Row, smoke: bool = False, overrides: Sequence[tuple[str, str]] = ()):
    """The resolved config of one row (base recipe + table overrides + row overrides + the command
    line's ``--config.X=V`` ``overrides``, applied last)."""
    import ml_collections

    from maskjax.config import apply_overrides, load_config
    from maskjax.config.commandline import apply_text_overrides

    config = load_config(os.path.join(REPO_ROOT, row.config or table.config))
    base = dict(table.base)
    # A table without "evals" in its base keeps the evaluators of its recipe.
    evals = base.pop("evals", None)
    if smoke:
        evals = SMOKE_EVALS if table.smoke_evals is None else table.smoke_evals
        base.pop("epochs", None)
        base.pop("total_steps", None)
    if evals is not None:
        config.evals = ml_collections.ConfigDict({k: dict(v) for k, v in evals.items()})
    apply_overrides(config, base)
    apply_overrides(config, dict(row.overrides))
    if smoke:
        apply_overrides(config, SMOKE if table.smoke is None else table.smoke)
    config.progress = config.progress and not smoke
    apply_text_overrides(config, overrides)
    return config


def row_slug(config) -> str:
    """A run directory name that is the same for identical pre-training configs.

    Evaluators are left out of the key: changing how a row is evaluated re-evaluates its
    finished checkpoint instead of pre-training it again.
    """
    payload = json.loads(config.to_json(sort_keys=True))
    payload.pop("evals", None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def hardware() -> str:
    """A one-line description of this machine (CPU model, cores, JAX devices)."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    devices = jax.devices()
    kind = "" if devices[0].platform == "cpu" else f" ({devices[0].device_kind})"
    return (f"{cpu}, {os.cpu_count()} cores; JAX {jax.__version__} on {len(devices)} {devices[0].platform} "
            f"device(s){kind}")


def commit() -> str:
    """The git commit of the repository (with '+dirty' for uncommitted changes), or 'unknown'.

    ``$MASKJAX_COMMIT`` names it where the code runs from a copy without git history.
    """
    if os.environ.get("MASKJAX_COMMIT"):
        return os.environ["MASKJAX_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_row(table: Table, row: Row, runs_dir: str, smoke: bool = False,
            overrides: Sequence[tuple[str, str]] = ()) -> dict:
    """Trains and evaluates one row (or reads its finished result); returns its metrics."""
    from maskjax.train.loop import train

    config = build_row_config(table, row, smoke, overrides)
    workdir = os.path.join(runs_dir, row_slug(config))
    result_path = os.path.join(workdir, "row_result.json")
    evals = json.loads(config.evals.to_json(sort_keys=True))
    if os.path.exists(result_path):
        with open(result_path) as f:
            done = json.load(f)
        if done.get("evals") == evals:
            return done
    start = time.perf_counter()
    eval_only = _finished(workdir, config)
    # A finished checkpoint is not trained again: train() restores it and only runs the evaluators.
    train(config, workdir)
    measured: dict = {}
    with open(os.path.join(workdir, "eval_results.jsonl")) as f:
        for line in f:  # later evaluations of the same checkpoint override earlier ones
            measured.update(json.loads(line))
    result = {"metrics": {k: v for k, v in measured.items() if k != "step"},
              "wall_s": time.perf_counter() - start, "workdir": workdir, "commit": commit(), "evals": evals,
              "eval_only": eval_only}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def _finished(workdir: str, config) -> bool:
    """Whether ``workdir`` already holds a checkpoint of this row (then it resumes from it)."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    return os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir))


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.1f}"


def render(table: Table, results: list[dict], *, smoke: bool, machine: str | None = None) -> str:
    """The markdown page of a table: measured columns, paper columns, provenance, ordering check.

    ``machine`` describes the hardware the rows ran on (default: this machine).
    """
    commits = ", ".join(f"`{c}`" for c in sorted({res.get("commit", "unknown") for res in results}))
    lines = [f"# {table.title}", "",
             f"Measured by `maskjax repro {table.name}{' --smoke' if smoke else ''}` on {machine or hardware()}; rows "
             f"measured at commit {commits}; page written {datetime.date.today().isoformat()}; the rows took "
             f"{sum(res['wall_s'] for res in results) / 60:.1f} min in all (see the wall column).", "",
             "Setup: " + _setup_text(table, smoke), "",
             "| row | " + " | ".join(f"{m} (maskjax)" for m in table.metrics) + " | "
             + " | ".join(f"{m} (paper)" for m in table.metrics) + " | wall (min) |",
             "|---" * (2 * len(table.metrics) + 2) + "|"]
    for row, res in zip(table.rows, results):
        ours = [_fmt(100 * res["metrics"][key]) if key in res["metrics"] else "—" for key in table.metrics.values()]
        paper = [_fmt(row.paper.get(m)) for m in table.metrics]
        mark = " †" if res.get("eval_only") else ""
        lines.append(f"| {row.label} | " + " | ".join(ours) + " | " + " | ".join(paper)
                     + f" | {res['wall_s'] / 60:.1f}{mark} |")
    key = table.metrics[table.claim_metric]
    scores = {row.label: res["metrics"].get(key) for row, res in zip(table.rows, results)}
    best = max(scores, key=lambda k: -1 if scores[k] is None else scores[k])
    verdict = "reproduced" if best == table.expect_best else "not reproduced"
    known = [v for v in scores.values() if v is not None]
    if known and max(known) - min(known) < table.noise:
        verdict = (f"inconclusive: every row is within {100 * table.noise:.1f} points (the evaluation's noise "
                   "level) of the others")
    lines += ["", "wall: the row's time in the run that produced its numbers; † marks rows that resumed from an "
              "existing checkpoint (e.g. re-evaluated after an evaluator changed), so their time excludes "
              "(some of) the pre-training.", "",
              f"Paper reference: {table.paper_source}. The paper columns are the paper's numbers for "
              "its own setting, never measurements of ours; the settings differ by orders of magnitude, "
              "so only the ordering is comparable." + (f" {table.paper_note}" if table.paper_note else ""), "",
              f"Paper's claim: {table.claim}. Best row here on {table.claim_metric}: **{best}** — the paper's "
              f"ordering is **{verdict}** at this size"
              + (" (a smoke run: meaningless numbers, it only proves the pipeline)." if smoke else ".")]
    return "\n".join(lines) + "\n"


def _setup_text(table: Table, smoke: bool) -> str:
    if smoke:
        return "smoke size (micro model, a few steps)."
    if table.setup:
        return table.setup
    return ("ViT-Pico/4 MAE (96-d, 4 blocks; decoder 96-d, 2 blocks unless the row says otherwise) "
            "pre-trained for 4 epochs on the 10,000 bundled CIFAR-10 training images (batch 128, "
            "blr 1.5e-3, norm-pix, ratio 0.75 unless the row says otherwise); MAE linear probe, "
            "small-data variant (frozen cls features computed once without augmentation, "
            "BatchNorm without affine + linear head, LARS at the paper's lr 6.4, batch 256, 50 epochs); MAE fine-tuning for 2 epochs "
            "(layer decay 0.65, drop path 0.1, mixup/cutmix, RandAugment, random erasing); both "
            "evaluated on the 2,000 bundled test images.")
