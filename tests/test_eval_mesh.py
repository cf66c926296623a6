"""Evaluation runs on the mesh: evaluators get the train state's sharded arrays, never a gathered copy."""

import jax
import numpy as np
import pytest
from flax import nnx

from maskjax.eval import features as ef
from maskjax.eval.registry import EvalContext, known_evaluators, run_evaluators
from maskjax.methods import make_method
from maskjax.train import loop
from maskjax.train.optim import make_optimizer, warmup_cosine
from maskjax.core.sharding import make_mesh, normalize_rules
from maskjax.core.state import ModelTemplate, create_state


def _sharded_state(config):
    """The tiny MAE's train state sharded FSDP over the 8 simulated devices."""
    mesh = make_mesh(dict(data=1, fsdp=-1, tensor=1))
    rules = normalize_rules(config.sharding_rules)
    method = make_method(config)
    template = ModelTemplate.from_builder(method.build)
    tx = make_optimizer(config.optim, warmup_cosine(1e-3, 0, 10))
    state, _ = create_state(template, method.build, tx, mesh, rules, jax.random.key(0))
    return mesh, rules, method, template, state


def _is_split(x) -> bool:
    return len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated


def test_probe_features_on_sharded_params_match_an_unsharded_run(tiny):
    config = tiny()
    mesh, rules, method, template, state = _sharded_state(config)
    assert any(_is_split(x) for x in jax.tree.leaves(state["params"]))  # the test means something
    sharded = template.merge(state["params"], state["extra"])
    host = template.merge(*jax.device_get((state["params"], state["extra"])))
    x = np.random.default_rng(0).standard_normal((13, 16, 16, 3)).astype(np.float32)  # 13: padded batches
    ctx = EvalContext(config=config, workdir="", step=0, method=method, train_source=None, eval_source=None,
                      mesh=mesh, rules=rules)
    plain = EvalContext(config=config, workdir="", step=0, method=method, train_source=None, eval_source=None)
    for pool in (None, "cls"):
        got = ef.method_features(ctx, sharded, x, pool=pool, batch_size=5)
        want = ef.method_features(plain, host, x, pool=pool)
        assert got.shape == (13, 32)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_random_init_baseline_is_built_sharded_with_the_eager_values(tiny):
    config = tiny()
    mesh, rules, method, _, _ = _sharded_state(config)
    fresh = ef.fresh_model(method, 7, mesh, rules)
    eager = method.build(nnx.Rngs(params=jax.random.key(7)))
    got, want = nnx.state(fresh, nnx.Param), nnx.state(eager, nnx.Param)
    assert any(_is_split(x) for x in jax.tree.leaves(got))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7),
                 got, want)


def test_evaluate_passes_the_sharded_state_and_gathers_only_per_example_outputs(tiny, tmp_path, monkeypatch):
    assert not hasattr(loop, "host_model")  # the full-parameter gather is gone
    config = tiny()
    config.evals = {"probe": {"type": "quick_probe", "train_examples": 24, "test_examples": 12, "steps": 5},
                    "knn": {"type": "knn", "train_examples": 24, "test_examples": 12},
                    "seen": {"type": "_record_model"}}
    mesh, rules, method, template, state = _sharded_state(config)
    num_params = template.num_params()
    seen = {}

    def record(model, options, ctx):
        seen["params"] = jax.tree.leaves(nnx.state(model, nnx.Param))
        seen["mesh"] = ctx.mesh
        return {}

    known_evaluators()
    from maskjax.eval import registry

    monkeypatch.setitem(registry._EVALUATORS, "_record_model", record)
    # Take the multi-process path on one process: every host transfer must be a small output.
    from jax.experimental import multihost_utils

    real, gathered = multihost_utils.process_allgather, []

    def allgather(x, tiled=False):
        gathered.append(tuple(x.shape))
        assert x.ndim <= 2 and x.size < num_params / 10, f"gathered a parameter-sized array {x.shape}"
        return real(x, tiled=tiled)

    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    monkeypatch.setattr(ef, "_multiprocess", lambda: True)
    out = loop.evaluate(config, str(tmp_path), state, template, method, loop.open_train_source(config),
                        step=1, final=True)
    assert {"eval/probe/top1", "eval/probe/random_init_top1", "eval/knn/top1"} <= set(out)
    assert gathered and all(s[-1] == 32 for s in gathered)  # features [batch, width] only
    assert seen["mesh"] == mesh
    # The evaluator saw the train state's own arrays, still sharded, not copies.
    leaves = jax.tree.leaves(state["params"])
    assert any(_is_split(x) for x in seen["params"])
    assert {id(x) for x in seen["params"]} <= {id(x) for x in leaves}


def test_eval_does_not_import_train():
    import pathlib
    import re

    root = pathlib.Path(ef.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        hits = re.findall(r"^\s*(?:from|import) maskjax\.train\S*", text, flags=re.M)
        if path.name == "cli.py":  # restoring a checkpoint reads the trainer's format, lazily
            assert all(h.startswith("    ") for h in hits), hits
        else:
            assert not hits, (path.name, hits)


@pytest.mark.parametrize("name", ["quick_probe", "feature_probe", "knn", "media_finetune", "linear_probe",
                                  "finetune", "reconstruction", "mlm", "glue", "text_classify"])
def test_configured_evaluator_names_stay_registered(name):
    assert name in known_evaluators()
