"""Multi-seed ledger tables: seed rows, metric prefixes, mean +- std and the noise-aware verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maskjax.repro.ledger import Claim, Row, Table
from maskjax.repro.seeded import mean_std, metric_key, render_seeded, row_values, seed_row, verdict


def test_metric_key_inserts_the_prefix_before_the_last_component():
    assert metric_key("eval/probe/top1", "random_init_") == "eval/probe/random_init_top1"
    assert metric_key("eval/probe/knn_top1", "") == "eval/probe/knn_top1"
    assert metric_key("top1", "random_init_") == "random_init_top1"


def test_seed_row_sets_the_seed_and_keeps_the_rest():
    row = Row("a", {"masking.ratio": 0.5}, {"x": 1.0}, config="configs/mae/default.py")
    seeded = seed_row(row, 3)
    assert seeded.overrides == {"masking.ratio": 0.5, "seed": 3}
    assert row.overrides == {"masking.ratio": 0.5}  # the table's row is not mutated
    assert seeded.config == row.config and seeded.label == row.label


def test_mean_std_is_the_sample_std():
    m, s = mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3)
    assert s == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert mean_std([5.0]) == (5.0, 0.0)


@pytest.mark.parametrize("better, worse, expected", [
    ([50.0, 51.0, 52.0], [40.0, 41.0, 42.0], "holds"),
    ([40.0, 41.0, 42.0], [50.0, 51.0, 52.0], "reversed"),
    ([50.0, 45.0, 55.0], [49.0, 44.0, 54.0], "inconclusive"),
])
def test_verdict_compares_the_difference_with_two_standard_errors(better, worse, expected):
    v, diff, se = verdict(better, worse)
    assert v == expected
    assert diff == pytest.approx(np.mean(better) - np.mean(worse))
    want_se = math.sqrt(np.var(better, ddof=1) / 3 + np.var(worse, ddof=1) / 3)
    assert se == pytest.approx(want_se)


def test_verdict_just_inside_and_outside_the_threshold():
    # Differences of 1.9 and 2.1 standard errors (se = 1 by construction: std 1.2247 over 3 seeds each).
    spread = np.array([-1.0, 0.0, 1.0]) * math.sqrt(1.5)
    base = 50.0 + spread
    assert verdict(list(base + 1.9), list(base))[0] == "inconclusive"
    assert verdict(list(base + 2.1), list(base))[0] == "holds"
    assert verdict([51.0], [50.0])[0].startswith("inconclusive")
    assert verdict([], [50.0])[0] == "not measured"


def _result(top1, workdir, wall=60.0, random=None):
    metrics = {"eval/probe/top1": top1}
    if random is not None:
        metrics["eval/probe/random_init_top1"] = random
    return {"metrics": metrics, "wall_s": wall, "workdir": workdir, "commit": "abc1234"}


def test_render_gives_mean_std_paper_columns_and_claims():
    rows = (Row("A", {}, {"probe": 80.0}, config="a.py"), Row("B", {}, {}, config="b.py"),
            Row("random", {}, {}, config="a.py", metric_prefix="random_init_"))
    table = Table("t", "T", "a.py", {}, rows, {"probe": "eval/probe/top1", "knn": "eval/probe/knn_top1"}, "paper X", "A > B", "A", "probe",
                  setup="tiny", seeds=(0, 1, 2),
                  claims=(Claim("A", "B", "probe", "paper X"), Claim("A", "random", "probe", "sanity"),
                          Claim("B", "A", "knn", "not a column of these results")))
    a = [_result(v, f"runs/a{i}", random=r) for i, (v, r) in enumerate([(0.50, 0.30), (0.52, 0.31), (0.54, 0.29)])]
    b = [_result(v, f"runs/b{i}") for i, v in enumerate([0.51, 0.50, 0.55])]
    results = {"A": a, "B": b, "random": a}
    assert row_values(table, rows[2], a)["probe"] == pytest.approx([30.0, 31.0, 29.0])
    page = render_seeded(table, results, smoke=False, machine="test machine")
    assert "| A | 52.0 ± 2.0 | — | 80.0 | — |" in page
    assert "| random | 30.0 ± 1.0 | — | — | — | shared |" in page
    assert "| A > B | probe | +0.0 |" in page and "inconclusive" in page
    assert "| A > random | probe | +22.0 |" in page and "| holds |" in page
    assert "| B > A | knn | — | — | not measured |" in page
    # The random-init row reads the A runs: their wall time counts once (6 runs of 1 min, not 9).
    assert "6.0 min of runs in all" in page


def test_every_mim_cifar_row_is_the_shared_setup_and_validates():
    """The comparison's rows differ only in method options: same backbone, data, batch, budget, optimiser."""
    from maskjax.repro import tables
    from maskjax.repro.ledger import build_row_config
    from maskjax.train.validate import validate_config

    table = tables()["mim_cifar"]
    assert len({row.label for row in table.rows}) == len(table.rows) >= 11
    shared = set()
    for row in table.rows:
        config = build_row_config(table, seed_row(row, 1))
        validate_config(config)
        assert config.seed == 1
        o = config.optim
        shared.add((config.model.variant, config.data.image_size, config.data.path, config.data.augment,
                    config.global_batch, config.epochs, o.base_lr, o.lr_batch_denominator, o.b1, o.b2,
                    o.weight_decay, o.warmup_epochs, o.grad_clip, o.min_lr, o.schedule, tuple(o.no_weight_decay_names),
                    tuple(sorted(config.evals))))
    assert len(shared) == 1, shared
