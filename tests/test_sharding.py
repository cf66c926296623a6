"""Sharded runs on 8 simulated devices compute what one device computes."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from maskjax.methods import make_method
from maskjax.train.optim import make_optimizer, warmup_cosine
from maskjax.core.sharding import batch_sharding, make_mesh, normalize_rules
from maskjax.core.state import ModelTemplate, create_state
from maskjax.train.step import make_loss_and_grad, make_train_step


def _setup(config, mesh_shape, devices=None, accum=1):
    mesh = make_mesh(mesh_shape, devices)
    rules = normalize_rules(config.sharding_rules)
    method = make_method(config)
    template = ModelTemplate.from_builder(method.build)
    schedule = warmup_cosine(1e-3, 0, 10)
    tx = make_optimizer(config.optim, schedule)
    state, shardings = create_state(template, method.build, tx, mesh, rules, jax.random.key(0))
    bs = batch_sharding(mesh, rules)
    step = make_train_step(method, template, tx, schedule, base_key=jax.random.key(1),
                           global_batch=config.global_batch, accum=accum,
                           state_shardings=shardings, batch_sharding=bs)
    return mesh, method, template, state, shardings, bs, step


def _batch(config, seed=0):
    rng = np.random.RandomState(seed)
    s = config.data.image_size
    return {"image": rng.randn(config.global_batch, s, s, 3).astype(np.float32),
            "label": rng.randint(0, 10, config.global_batch).astype(np.int32)}


def _grads(config, mesh_shape, devices=None, accum=1):
    mesh, method, template, state, _, bs, _ = _setup(config, mesh_shape, devices)
    batch = jax.device_put(_batch(config), bs)
    keys = jax.random.split(jax.random.key(3), config.global_batch)
    fn = jax.jit(make_loss_and_grad(method, template, accum,
                                    NamedSharding(mesh, P(None, *bs.spec))))
    with jax.set_mesh(mesh):
        (loss, _), grads = fn(state["params"], state["extra"], batch, jax.device_put(keys, bs))
    return float(loss), jax.device_get(grads)


@pytest.fixture(scope="module")
def reference(request):
    from tests.conftest import tiny_config

    config = tiny_config()
    return config, _grads(config, dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_loss_and_grads_match_one_device(reference, shape):
    config, (loss1, grads1) = reference
    loss, grads = _grads(config, dict(zip(("data", "fsdp", "tensor"), shape)))
    assert loss == pytest.approx(loss1, rel=1e-5)
    flat1, flat = jax.tree.leaves(grads1), jax.tree.leaves(grads)
    assert len(flat1) == len(flat)
    for a, b in zip(flat1, flat):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-6)


def test_gpu_gelu_backward_shards_like_autodiff(reference, monkeypatch):
    # The GPU default (linear.bias_gelu_erf's hand-written backward) on a data x fsdp x tensor mesh
    # gives the one-device autodiff loss and gradients: its bias-gradient sum runs over sharded tokens.
    from maskjax.models import linear

    monkeypatch.setattr(linear, "use_split_gelu_backward", lambda: True)
    config, (loss1, grads1) = reference
    loss, grads = _grads(config, dict(data=2, fsdp=2, tensor=2))
    assert loss == pytest.approx(loss1, rel=1e-5)
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads)):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("accum", [2, 4])
def test_grad_accumulation_matches_one_big_batch(reference, accum):
    config, (loss1, grads1) = reference
    loss, grads = _grads(config, dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], accum=accum)
    assert loss == pytest.approx(loss1, rel=1e-5)
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads)):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-6)


def test_fsdp_actually_shards_parameters_and_optimizer_state(tiny):
    config = tiny()
    _, _, _, state, _, _, _ = _setup(config, dict(data=2, fsdp=4, tensor=1))
    kernel = state["params"]["encoder"]["blocks"]["0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.spec == P("fsdp")
    assert len({str(s.index) for s in kernel.addressable_shards}) == 4
    mu = state["opt_state"][0].mu["encoder"]["blocks"]["0"]["mlp"]["fc1"]["kernel"]
    assert mu.sharding.spec == P("fsdp")
    _, _, _, state, _, _, _ = _setup(config, dict(data=2, fsdp=2, tensor=2))
    kernel = state["params"]["encoder"]["blocks"]["0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")


def test_train_steps_match_across_meshes(tiny):
    config = tiny()
    losses = {}
    for name, shape, devices in [("one", dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
                                 ("2x2x2", dict(data=2, fsdp=2, tensor=2), None)]:
        _, _, _, state, _, bs, step = _setup(config, shape, devices)
        out = []
        for i in range(3):
            state, metrics = step(state, jax.device_put(_batch(config, seed=i), bs))
            out.append(float(metrics["loss"]))
        losses[name] = out
    np.testing.assert_allclose(losses["2x2x2"], losses["one"], rtol=1e-4)
    assert losses["one"][2] != losses["one"][0]  # the optimiser moved the parameters
