"""The reproduction ledger: ``maskjax repro NAME`` runs a named table of config rows and writes
the measured metrics beside the paper's reference into ``docs/results/NAME.md``.

A row is a config plus overrides. Rows with identical resolved configs share one run directory
(keyed by a hash), so the baseline shared by several ablation tables trains once, and an
interrupted table resumes: finished rows are read back from their ``row_result.json``.
Paper numbers are only ever written in the "paper" columns.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import subprocess
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: a label, config overrides, and the paper's reference per metric (or None)."""

    label: str
    overrides: dict
    paper: dict


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


# The CIFAR-10 mini ablations: a ViT-Pico/4 MAE on the 10,000 bundled CIFAR-10 training images,
# 4 epochs, then MAE's linear probe (small-data variant: cached features, no augmentation) and
# MAE fine-tuning (2 epochs) evaluated on the 2,000 bundled test images.
_CIFAR_BASE = {
    "epochs": 4,
    "evals": {
        # lr 6.4 = the paper's blr 0.1 x 16384 / 256: LARS scales >1-D updates by 0.001 x |w|, so
        # the probe needs the paper's absolute lr, not its blr at a small batch (measured: blr 1.0
        # probes 37.5%, 6.4 probes 40.9% on the same checkpoint; 200 made the bias diverge).
        "probe": {"type": "linear_probe", "epochs": 50, "batch_size": 256, "blr": 6.4, "warmup_epochs": 5,
                  "cache_features": True},
        "finetune": {"type": "finetune", "epochs": 2, "batch_size": 128, "blr": 1e-3, "layer_decay": 0.65,
                     "drop_path": 0.1, "warmup_epochs": 0.5},
    },
}
_PAPER_T1 = ("MAE paper Table 1 (ViT-L/16, 800 epochs, ImageNet-1K; values recalled in "
             "specs/methods_vision.md §1(e), marked there as unverified)")
_METRICS = {"linear probe top-1": "eval/probe/top1", "fine-tune top-1": "eval/finetune/top1"}

TABLES = {
    "mae_cifar_mask_ratio": Table(
        "mae_cifar_mask_ratio", "MAE mini ablation (a): masking ratio", "configs/mae/default.py", _CIFAR_BASE,
        (Row("ratio 0.50", {"masking.ratio": 0.5}, {}),
         Row("ratio 0.75", {"masking.ratio": 0.75}, {"linear probe top-1": 73.5, "fine-tune top-1": 84.9}),
         Row("ratio 0.90", {"masking.ratio": 0.9}, {})),
        _METRICS, "MAE paper Fig. 5 (ViT-L/16); only the 75% point is recorded in the spec",
        "linear probing rises up to a 75% ratio and drops after it", "ratio 0.75", "linear probe top-1"),
    "mae_cifar_decoder_depth": Table(
        "mae_cifar_decoder_depth", "MAE mini ablation (b): decoder depth", "configs/mae/default.py", _CIFAR_BASE,
        (Row("depth 1", {"model.decoder_depth": 1}, {"linear probe top-1": 65.5, "fine-tune top-1": 84.8}),
         Row("depth 2", {"model.decoder_depth": 2}, {"linear probe top-1": 70.0, "fine-tune top-1": 84.9}),
         Row("depth 4", {"model.decoder_depth": 4}, {"linear probe top-1": 71.9, "fine-tune top-1": 84.9})),
        _METRICS, _PAPER_T1, "a deeper decoder improves linear probing (fine-tuning is flat)", "depth 4",
        "linear probe top-1"),
    "mae_cifar_target": Table(
        "mae_cifar_target", "MAE mini ablation (c): reconstruction target", "configs/mae/default.py", _CIFAR_BASE,
        (Row("pixel (no norm)", {"loss.norm_pix": False}, {"linear probe top-1": 73.5, "fine-tune top-1": 84.9}),
         Row("pixel (norm-pix)", {"loss.norm_pix": True}, {"linear probe top-1": 73.9, "fine-tune top-1": 85.4})),
        _METRICS, _PAPER_T1, "normalised pixels are a better target than raw pixels", "pixel (norm-pix)",
        "fine-tune top-1"),
}

# The WikiText-2 masked-LM mini reproductions: BERT-Tiny (2 x 128) on `valid.txt`, evaluated on
# `test.txt` by held-out masked-token accuracy at a fixed 15 % [MASK]-only masking and by
# fine-tuning on the word-order proxy task (`maskjax.data.text.glue.wikitext_order_task`).
_MLM_CONFIG = "configs/bert/wikitext_tiny.py"
_MLM_STEPS = 6000
_MLM_BASE = {
    "total_steps": _MLM_STEPS, "global_batch": 64, "optim.warmup_steps": _MLM_STEPS // 20,
    "evals": {
        "mlm": {"type": "mlm", "every_steps": 0, "batch_size": 64},
        "order": {"type": "text_classify", "every_steps": 0, "n_train": 4000, "n_test": 1000, "seq_len": 64,
                  "epochs": 4, "batch_size": 32, "lr": 3e-4, "random_init": True},
    },
}
_MLM_METRICS = {"held-out MLM accuracy @15%": "eval/mlm/accuracy", "order-task accuracy": "eval/order/accuracy",
                "order-task, random-init encoder": "eval/order/random_init_accuracy"}
_MLM_SETUP = (f"BERT-Tiny (2 layers, 128 wide, post-LN, dropout 0.1) with an 8,192-token WordPiece vocabulary "
              f"trained on WikiText-2 `valid.txt`; 128-token blocks; {_MLM_STEPS} steps of 64 blocks (about 190 "
              "epochs of `valid.txt`'s 2,024 blocks, with new masks every time), BERT's AdamW without bias correction, peak lr 1e-3, 5 % warmup then linear "
              "decay. Evaluation on WikiText-2 `test.txt`: masked-token accuracy at a fixed 15 % [MASK]-only "
              "masking, and fine-tuning (4 epochs, 4,000 examples, lr 3e-4) on the word-order proxy task "
              "(original sentence vs. one with adjacent words swapped; 1,000 test sentences).")
_MLM_SMOKE = {"model.variant": "mu", "global_batch": 8, "total_steps": 2, "log_every_steps": 1, "progress": False,
              "optim.warmup_steps": 1}
_MLM_SMOKE_EVALS = {
    "mlm": {"type": "mlm", "batch_size": 8, "batches": 2},
    "order": {"type": "text_classify", "n_train": 64, "n_test": 32, "seq_len": 32, "epochs": 1, "batch_size": 16},
}
# Two binomial standard errors of an accuracy near 50 % on the 1,000 test sentences.
_ORDER_NOISE = 2 * (0.25 / 1000) ** 0.5
_BERT_15 = {"masking.ratio": 0.15, "masking.mix": (0.8, 0.1, 0.1), "masking.max_predictions": 21}
_WETTIG = ("Wettig et al. 2023 README 'Model List' (RoBERTa-large size, efficient recipe, GLUE dev MNLI); "
           "specs/methods_text_gen.md 4c")

TABLES.update({
    "mlm_wikitext_masking": Table(
        "mlm_wikitext_masking", "Masked-LM mini ablation: masking rate and replacement", _MLM_CONFIG, _MLM_BASE,
        (Row("15%, 80-10-10", _BERT_15, {"order-task accuracy": 83.7}),
         Row("15%, all [MASK]", {**_BERT_15, "masking.mix": (1.0, 0.0, 0.0)}, {"order-task accuracy": 84.2}),
         Row("40%, 80-10-10", {"masking.ratio": 0.4, "masking.mix": (0.8, 0.1, 0.1), "masking.max_predictions": 53},
             {"order-task accuracy": 84.3}),
         Row("40%, all [MASK]", {"masking.ratio": 0.4, "masking.mix": (1.0, 0.0, 0.0), "masking.max_predictions": 53},
             {"order-task accuracy": 84.5})),
        _MLM_METRICS, _WETTIG, "40 % masking with all-[MASK] replacement fine-tunes best (MNLI 84.5)",
        "40%, all [MASK]", "order-task accuracy", setup=_MLM_SETUP, smoke=_MLM_SMOKE, smoke_evals=_MLM_SMOKE_EVALS,
        paper_note="The paper column under 'order-task accuracy' is the paper's MNLI dev accuracy.",
        noise=_ORDER_NOISE),
    "mlm_wikitext_electra": Table(
        "mlm_wikitext_electra", "ELECTRA vs BERT at the same size and steps", _MLM_CONFIG, _MLM_BASE,
        (Row("BERT-Tiny (MLM 15%)", _BERT_15, {"order-task accuracy": 75.1}),
         Row("ELECTRA-Tiny (RTD, generator 1/4)",
             {"method": "electra", "masking.kind": "electra", "optim.schedule": "linear_electra",
              "masking.max_predictions": 19}, {"order-task accuracy": 79.9})),
        _MLM_METRICS, "ELECTRA paper Table 1, GLUE dev: ELECTRA-Small 79.9 vs BERT-Small 75.1 "
        "(specs/methods_text_gen.md 6d, recalled there and marked UNVERIFIED)",
        "replaced-token detection fine-tunes better than MLM at the same model size and compute",
        "ELECTRA-Tiny (RTD, generator 1/4)", "order-task accuracy", setup=_MLM_SETUP, smoke=_MLM_SMOKE,
        smoke_evals=_MLM_SMOKE_EVALS,
        paper_note="The paper column under 'order-task accuracy' is the paper's GLUE dev average; ELECTRA's "
                   "held-out MLM accuracy is its small generator's.",
        noise=_ORDER_NOISE),
})

# The video and audio tables live in their own module (it imports Row and Table from here).
from maskjax.repro_media import MEDIA_TABLES  # noqa: E402

TABLES.update(MEDIA_TABLES)

SMOKE = {"model.variant": "mu/4", "data.image_size": 16, "model.decoder_width": 32, "model.decoder_heads": 2,
         "global_batch": 16, "total_steps": 2, "log_every_steps": 1, "progress": False}
SMOKE_EVALS = {
    "probe": {"type": "linear_probe", "epochs": 2, "batch_size": 32, "blr": 1.0, "warmup_epochs": 0,
              "cache_features": True, "max_eval": 64, "train_examples": 64},
    "finetune": {"type": "finetune", "epochs": 1, "batch_size": 32, "blr": 1e-3, "warmup_epochs": 0,
                 "augment": "mae", "max_eval": 64, "train_examples": 64},
}


def build_row_config(table: Table, row: Row, smoke: bool = False):
    """The resolved config of one row (base recipe + table overrides + row overrides)."""
    import ml_collections

    from maskjax.config import apply_overrides, load_config

    config = load_config(os.path.join(REPO_ROOT, table.config))
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


def run_row(table: Table, row: Row, runs_dir: str, smoke: bool = False) -> dict:
    """Trains and evaluates one row (or reads its finished result); returns its metrics."""
    from maskjax.train.loop import train

    config = build_row_config(table, row, smoke)
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


def run_table(name: str, *, out_dir: str, runs_dir: str, smoke: bool = False, max_rows: int | None = None) -> str:
    """Runs table ``name`` and writes its markdown page; returns the page's path."""
    if name not in TABLES:
        raise SystemExit(f"maskjax repro: unknown table {name!r}; known: {', '.join(sorted(TABLES))}")
    table = TABLES[name]
    if max_rows:
        table = dataclasses.replace(table, rows=table.rows[:max_rows])
    results = [run_row(table, row, runs_dir, smoke) for row in table.rows]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}{'_smoke' if smoke else ''}.md")
    with open(path, "w") as f:
        f.write(render(table, results, smoke=smoke))
    print(f"wrote {path}")
    return path


def main(argv: list[str]) -> int:
    """``maskjax repro NAME [--smoke] [--out docs/results] [--runs runs/repro] [--max-rows N]``."""
    parser = argparse.ArgumentParser(prog="maskjax repro", description=main.__doc__)
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(sorted(TABLES))}, or 'all'")
    parser.add_argument("--smoke", action="store_true", help="tiny rows (proves the pipeline, seconds)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "docs", "results"))
    parser.add_argument("--runs", default=os.path.join("runs", "repro"))
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--list", action="store_true", help="list the tables")
    args = parser.parse_args(argv)
    if args.list or not args.name:
        for name, table in sorted(TABLES.items()):
            print(f"{name}: {table.title} ({len(table.rows)} rows)")
        return 0
    names = sorted(TABLES) if args.name == "all" else [args.name]
    for name in names:
        run_table(name, out_dir=args.out, runs_dir=args.runs, smoke=args.smoke, max_rows=args.max_rows)
    return 0
