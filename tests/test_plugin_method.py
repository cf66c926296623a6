"""A new method is one file: a toy method outside the maskjax package, registered through the
``maskjax.methods`` entry-point group, trains, resumes exactly (EMA teacher included), runs the
probe and kNN evaluators, ``bench`` and ``fitcheck``, with no edit to maskjax.

The entry point is real: the test writes a ``*.dist-info`` folder with ``entry_points.txt`` on
``sys.path`` (what ``pip install`` of a plugin package leaves in site-packages), and maskjax finds
it through ``importlib.metadata``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from maskjax import plugins

PLUGIN_DIR = pathlib.Path(__file__).parent / "plugins"
TOY_FILE = PLUGIN_DIR / "toy_masked_regression.py"
NAME = "toy_masked_regression"


def _write_distribution(root: pathlib.Path) -> None:
    dist = root / "toy_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[maskjax.methods]\n{NAME} = toy_masked_regression\n")


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """Installs the toy plugin's metadata and module on sys.path (and PYTHONPATH for subprocesses)."""
    root = tmp_path_factory.mktemp("site")
    _write_distribution(root)
    paths = [str(root), str(PLUGIN_DIR)]
    sys.path[:0] = paths
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    plugins.forget(plugins.METHODS)  # maskjax may have scanned the entry points before this fixture
    yield root
    for p in paths:
        sys.path.remove(p)
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old
    plugins.forget(plugins.METHODS)


def _config(**overrides):
    from maskjax.config import apply_overrides, load_config

    config = load_config(str(TOY_FILE))
    apply_overrides(config, overrides)
    return config


def test_entry_point_registers_the_method(plugin_path):
    from maskjax.methods import known_methods, method_class

    assert NAME in known_methods()
    cls = method_class(NAME)
    assert cls.modality == "image" and cls.name == NAME
    assert any(e.name == NAME for e in plugins.entry_points(plugins.METHODS))


def test_a_broken_plugin_names_itself(tmp_path):
    dist = tmp_path / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[maskjax.methods]\nbroken = no_such_module_anywhere\n")
    sys.path.insert(0, str(tmp_path))
    try:
        (entry,) = [e for e in plugins.entry_points(plugins.METHODS) if e.name == "broken"]
        with pytest.raises(plugins.PluginError, match="'broken'.*no_such_module_anywhere"):
            plugins.load_entry_point(entry)
    finally:
        sys.path.remove(str(tmp_path))


def test_config_checks_use_the_method_section(plugin_path):
    from maskjax.errors import ConfigError
    from maskjax.train.validate import validate_config

    validate_config(_config())
    with pytest.raises(ConfigError, match="patch 5 does not divide"):
        validate_config(_config(**{f"{NAME}.patch": 5}))


def test_trains_resumes_exactly_and_evaluates(plugin_path, tmp_path):
    from maskjax.train.loop import train

    straight = train(_config(), str(tmp_path / "straight"))
    first = train(_config(), str(tmp_path / "split"), stop_at_step=3, run_evals=False)
    assert first.step == 3
    resumed = train(_config(), str(tmp_path / "split"))
    assert resumed.step == straight.step == 6

    losses = lambda r: {h["step"]: h["loss"] for h in r.history}
    split = {**losses(first), **losses(resumed)}
    np.testing.assert_allclose([split[s] for s in range(1, 7)], [losses(straight)[s] for s in range(1, 7)],
                               rtol=1e-6)
    # The EMA teacher (non-gradient state of after_step) is checkpointed and resumed exactly,
    # and it really moved away from its initial value towards the trained embedding.
    t_straight = np.asarray(jax.device_get(straight.state["extra"]["teacher"]))
    t_resumed = np.asarray(jax.device_get(resumed.state["extra"]["teacher"]))
    np.testing.assert_allclose(t_resumed, t_straight, rtol=1e-6, atol=1e-7)
    kernel = np.asarray(jax.device_get(straight.state["params"]["embed"]["kernel"]))
    assert np.isfinite(t_straight).all() and not np.allclose(t_straight, kernel)

    # Masks hide a per-example fraction within the configured rates.
    fractions = [h["hidden_fraction"] for h in straight.history]
    assert all(0.2 <= f <= 0.8 for f in fractions)

    # The probe and kNN evaluators ran after training on the method's features.
    results = [line for line in (tmp_path / "straight" / "eval_results.jsonl").read_text().splitlines()]
    assert results and '"eval/probe/top1"' in results[-1] and '"eval/knn/top1"' in results[-1]
    assert '"eval/probe/random_init_top1"' in results[-1]


def test_after_step_updates_ema_by_the_formula(plugin_path):
    from flax import nnx

    from maskjax.methods import make_method
    from maskjax.core.state import to_tree

    config = _config()
    method = make_method(config)
    model = method.build(nnx.Rngs(0))
    _, params, extra = nnx.split(model, nnx.Param, ...)
    params, extra = to_tree(params), to_tree(extra)
    params["embed"]["kernel"] = params["embed"]["kernel"] + 1.0
    new = method.after_step(params, extra, jax.numpy.int32(1))
    np.testing.assert_allclose(new["teacher"], 0.9 * extra["teacher"] + 0.1 * params["embed"]["kernel"], rtol=1e-6)


def test_bench_and_fitcheck_run_the_plugin(plugin_path, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    from maskjax.perf.flops import model_flops

    bench = subprocess.run([sys.executable, "-m", "maskjax.cli", "bench", "--config", f"{TOY_FILE}:smoke",
                            "--steps", "2", "--warmup", "1", "--synthetic-data", "--workdir", str(tmp_path)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert bench.returncode == 0, bench.stderr[-3000:]
    (row,) = [line for line in bench.stdout.splitlines() if line.startswith("|") and f"| {NAME} |" in line]
    cells = [c.strip() for c in row.split("|")]
    # The analytic column comes from the plugin's own flops().
    assert float(cells[9]) == pytest.approx(model_flops(_config(**{"global_batch": 16})).train / 1e12, rel=1e-3)
    fit = subprocess.run([sys.executable, "-m", "maskjax.cli", "fitcheck", "--config", f"{TOY_FILE}:smoke",
                          "--platform", "cpu", "--devices", "1", "--device-memory-gib", "4"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "fit: fits" in fit.stdout and "analytic" in fit.stdout
