"""The video/audio evaluators: mAP, fine-tuning on arrays, multi-view averaging."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.eval.features import batched_apply
from maskjax.eval.media_evals import encoder_blocks, finetune_arrays, mean_average_precision
from maskjax.core.mesh import make_mesh, normalize_rules
from maskjax.models.layers import Block, dense


class StubEncoder(nnx.Module):
    """Tokens = a linear map of the input's [n, 4] features; pooled = their mean (one block)."""

    def __init__(self, rngs):
        self.width = 8
        self.embed = dense(4, 8, ("embed", "embed"), rngs=rngs)
        self.blocks = nnx.List([Block(8, 2, rngs=rngs)])

    def __call__(self, x, mask=None):
        tokens = self.blocks[0](self.embed(x))
        return tokens, {"pooled": tokens.mean(1), "tokens": tokens}


def _data(n, seed, views=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.eye(4, dtype=np.float32)[:3] * 3
    x = centers[y][:, None, :] + 0.3 * rng.standard_normal((n, 5, 4)).astype(np.float32)
    if views:
        x = np.stack([x, x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)], axis=1)
    return x, y.astype(np.int32)


def test_mean_average_precision_hand_computed():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6], [0.1, 0.2]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    # class 0: ranking 0(+),1(-),2(+),3 -> AP = (1/1 + 2/3) / 2; class 1: ranking 1(+) first -> 1.
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    with pytest.raises(ValueError, match="positive"):
        mean_average_precision(scores, np.zeros_like(targets))


def test_finetune_learns_separable_classes_and_averages_views():
    xtr, ytr = _data(96, 0)
    xte, yte = _data(48, 1, views=True)
    enc = StubEncoder(nnx.Rngs(0))
    before = jax.tree.map(np.array, nnx.state(enc, nnx.Param))
    out = finetune_arrays(enc, xtr, ytr, xte, yte, num_classes=3, epochs=15, batch_size=16, lr=3e-3,
                          head_init_scale=1.0)
    assert out["top1"] > 0.9, out
    # The caller's encoder is left untouched (the evaluator fine-tunes a copy).
    after = jax.tree.map(np.array, nnx.state(enc, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_finetune_multilabel_reports_map():
    xtr, ytr = _data(64, 2)
    xte, yte = _data(32, 3)
    multi = lambda y: np.eye(3, dtype=np.float32)[y]
    out = finetune_arrays(StubEncoder(nnx.Rngs(1)), xtr, multi(ytr), xte, multi(yte), num_classes=3,
                          epochs=15, batch_size=16, lr=3e-3, head_init_scale=1.0)
    assert "top1" not in out and out["mAP"] > 0.9


def test_sharded_batches_with_padding_match_one_pass():
    # 10 examples in batches of 3 on an 8-way data-parallel mesh: every batch is padded to 8 rows.
    x, _ = _data(10, 4)
    enc = StubEncoder(nnx.Rngs(2))
    full = np.asarray(enc(jnp.asarray(x))[1]["pooled"])
    fn = jax.jit(lambda e, b: e(b)[1]["pooled"])
    mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1))
    sharded = batched_apply(fn, enc, x, mesh=mesh, rules=normalize_rules(None), batch_size=3)
    np.testing.assert_allclose(sharded, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched_apply(fn, enc, x, batch_size=3), full, rtol=1e-5, atol=1e-6)


def test_finetune_on_a_mesh_matches_one_device():
    xtr, ytr = _data(32, 5)
    xte, yte = _data(16, 6)
    kw = dict(num_classes=3, epochs=2, batch_size=8, lr=3e-3, head_init_scale=1.0)
    one = finetune_arrays(StubEncoder(nnx.Rngs(3)), xtr, ytr, xte, yte, **kw)
    mesh = make_mesh(dict(data=2, fsdp=4, tensor=1))
    sharded = finetune_arrays(StubEncoder(nnx.Rngs(3)), xtr, ytr, xte, yte, mesh=mesh, rules=normalize_rules(None),
                              **kw)
    assert sharded["top1"] == one["top1"]
    assert sharded["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-4)


def test_layer_decay_depth_is_read_from_the_block_paths():
    enc = StubEncoder(nnx.Rngs(4))
    assert encoder_blocks(nnx.state(enc, nnx.Param)) == 1
    assert encoder_blocks({"encoder": {"blocks": {"0": 1, "11": 2}, "norm": 3}}) == 12
