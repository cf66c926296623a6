"""The reproduction ledger end to end on a two-row table at smoke size."""

import os

import pytest

from maskjax.repro import run_table, tables

TABLES = tables()


@pytest.mark.slow  # 40 s; the runner's re-evaluation path is covered below at a smaller cost
def test_repro_two_row_table_at_smoke_size(tmp_path, capsys):
    table = TABLES["mae_cifar_target"]
    assert len(table.rows) == 2
    path = run_table("mae_cifar_target", out_dir=str(tmp_path / "out"), runs_dir=str(tmp_path / "runs"), smoke=True)
    page = open(path).read()
    assert "| pixel (no norm) |" in page and "| pixel (norm-pix) |" in page
    assert "linear probe top-1 (maskjax)" in page and "fine-tune top-1 (paper)" in page
    assert "commit" in page and "cores" in page and "wall (min)" in page
    assert "smoke run" in page  # says its numbers mean nothing
    # Paper numbers appear only in the paper columns: each row's measured cells are ours.
    row = next(l for l in page.splitlines() if l.startswith("| pixel (norm-pix) |")).split("|")
    assert row[4].strip() == "73.9" and row[5].strip() == "85.4"
    # A second run reuses the finished rows (resumable ledger) and rewrites the same table.
    mtimes = {d: os.path.getmtime(tmp_path / "runs" / d / "row_result.json") for d in os.listdir(tmp_path / "runs")}
    run_table("mae_cifar_target", out_dir=str(tmp_path / "out"), runs_dir=str(tmp_path / "runs"), smoke=True)
    assert {d: os.path.getmtime(tmp_path / "runs" / d / "row_result.json") for d in mtimes} == mtimes


@pytest.mark.slow  # two ledger runs (~30 s cold); CI time budget
def test_changed_evaluator_re_evaluates_without_pre_training_again(tmp_path, monkeypatch):
    import json

    import maskjax.repro.ledger as repro

    kwargs = dict(out_dir=str(tmp_path / "out"), runs_dir=str(tmp_path / "runs"), smoke=True, max_rows=1)
    run_table("mae_cifar_target", **kwargs)
    (run,) = os.listdir(tmp_path / "runs")
    first = json.load(open(tmp_path / "runs" / run / "row_result.json"))
    assert first["eval_only"] is False
    evals = {k: dict(v) for k, v in repro.SMOKE_EVALS.items()}
    evals["probe"]["epochs"] = 3
    monkeypatch.setattr(repro, "SMOKE_EVALS", evals)
    run_table("mae_cifar_target", **kwargs)
    assert os.listdir(tmp_path / "runs") == [run]          # same pre-training run directory
    second = json.load(open(tmp_path / "runs" / run / "row_result.json"))
    assert second["eval_only"] is True and second["evals"]["probe"]["epochs"] == 3
    steps = [json.loads(l)["step"] for l in open(tmp_path / "runs" / run / "metrics.jsonl") if '"loss"' in l]
    assert steps == [1, 2]                                   # no training step was run again


def test_table_without_evals_keeps_the_recipe_evaluators():
    from maskjax.repro.ledger import build_row_config

    table = TABLES["audiomae_fsdd"]
    config = build_row_config(table, table.rows[0])
    assert set(config.evals) == {"probe", "finetune"}
    assert config.evals.finetune.random_baseline is True
