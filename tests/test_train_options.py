"""Training options and data sources end to end: bf16, remat, ArrayRecord, TFDS."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from maskjax.cli import main as cli_main
from maskjax.data import embedded_cifar10_path
from maskjax.methods import make_method
from maskjax.train.loop import train
from maskjax.core.state import ModelTemplate, create_state
from maskjax.train.optim import make_optimizer, warmup_cosine
from maskjax.core.sharding import make_mesh, normalize_rules
from maskjax.train.step import make_loss_and_grad


def _loss_and_grads(config):
    mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    method = make_method(config)
    template = ModelTemplate.from_builder(method.build)
    tx = make_optimizer(config.optim, warmup_cosine(1e-3, 0, 10))
    state, _ = create_state(template, method.build, tx, mesh, normalize_rules(None), jax.random.key(0))
    images = jnp.asarray(np.random.RandomState(0).randn(4, 16, 16, 3), jnp.float32)
    keys = jax.random.split(jax.random.key(1), 4)
    (loss, _), grads = jax.jit(make_loss_and_grad(method, template, 1))(
        state["params"], state["extra"], {"image": images}, keys)
    return state, loss, grads


def test_remat_changes_memory_not_numbers(tiny):
    _, loss, grads = _loss_and_grads(tiny())
    _, loss_r, grads_r = _loss_and_grads(tiny(remat=True))
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_bf16_compute_keeps_float32_parameters(tiny):
    state, loss32, _ = _loss_and_grads(tiny())
    state16, loss16, grads16 = _loss_and_grads(tiny(compute_dtype="bfloat16"))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state16["params"]))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    assert float(loss16) == pytest.approx(float(loss32), rel=0.05)  # same function, bf16 rounding
    assert float(loss16) != float(loss32)  # ... but really computed in bf16


def test_train_from_converted_array_record(tiny, tmp_path):
    out = tmp_path / "ar"
    assert cli_main(["maskjax", "convert-images", f"{embedded_cifar10_path()}/test.tar.gz", str(out),
                     "--split", "test", "--shards", "2"]) == 0
    config = tiny(**{"data.kind": "array_record", "data.path": str(out), "data.eval_path": str(out),
                     "total_steps": 2})
    result = train(config, str(tmp_path / "run"))
    assert result.step == 2 and np.isfinite(result.history[-1]["loss"])


def test_train_from_tfds_data_source(tiny, tmp_path):
    config = tiny(**{"data.kind": "tfds", "data.name": "cifar10", "data.path": None,
                     "data.eval_path": None, "data.split": "train", "total_steps": 2})
    with tfds.testing.mock_data(num_examples=64):
        result = train(config, str(tmp_path / "run"))
    assert result.step == 2 and np.isfinite(result.history[-1]["loss"])
