"""Layer-wise lr decay and the fine-tuning AdamW (facebookresearch/mae util/lr_decay.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maskjax.train import layer_decay as ld


def _leaf(shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _vit_tree(depth, nested):
    """A ViT-classifier-shaped tree of abstract leaves (the layouts named in the module docstring)."""
    block = {"norm1": {"scale": _leaf((8,)), "bias": _leaf((8,))},
             "attn": {"qkv": {"kernel": _leaf((8, 24)), "bias": _leaf((24,))}},
             "mlp": {"fc1": {"kernel": _leaf((8, 32)), "bias": _leaf((32,))}}}
    encoder = {"patch_embed": {"proj": {"kernel": _leaf((4, 4, 3, 8)), "bias": _leaf((8,))}},
               "cls_token": _leaf((1, 1, 8)), "pos_embed": _leaf((1, 5, 8)),
               "blocks": {str(i): block for i in range(depth)}}
    top = {"fc_norm": {"scale": _leaf((8,)), "bias": _leaf((8,))},
           "head": {"kernel": _leaf((8, 10)), "bias": _leaf((10,))}}
    return {"encoder": encoder, **top} if nested else {**encoder, **top}


def test_layer_id_map():
    assert ld.layer_id(("cls_token",), 12) == 0
    assert ld.layer_id(("encoder", "pos_embed"), 12) == 0
    assert ld.layer_id(("encoder", "patch_embed", "proj", "kernel"), 12) == 0
    assert ld.layer_id(("blocks", "0", "attn", "qkv", "kernel"), 12) == 1
    assert ld.layer_id(("encoder", "blocks", "11", "mlp", "fc1", "bias"), 12) == 12
    assert ld.layer_id(("fc_norm", "scale"), 12) == 13
    assert ld.layer_id(("head", "kernel"), 12) == 13
    assert ld.layer_id(("encoder", "norm", "scale"), 12) == 13  # the cls-pool final norm
    with pytest.raises(ValueError):
        ld.layer_id(("blocks", "12", "attn"), 12)


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("depth,decay", [(12, 0.65), (24, 0.75)])
def test_documented_multipliers(depth, decay, nested):
    params = _vit_tree(depth, nested)
    scales = ld.layer_scales(params, depth, decay)
    enc = scales["encoder"] if nested else scales
    assert enc["patch_embed"]["proj"]["kernel"] == pytest.approx(decay ** (depth + 1))
    assert enc["cls_token"] == pytest.approx(decay ** (depth + 1))
    assert enc["pos_embed"] == pytest.approx(decay ** (depth + 1))
    assert enc["blocks"]["0"]["attn"]["qkv"]["kernel"] == pytest.approx(decay ** depth)
    assert enc["blocks"]["0"]["norm1"]["bias"] == pytest.approx(decay ** depth)
    assert enc["blocks"][str(depth - 1)]["mlp"]["fc1"]["kernel"] == pytest.approx(decay)
    assert scales["head"]["kernel"] == 1.0 and scales["fc_norm"]["scale"] == 1.0
    # Scales grow monotonically with depth, one group per block.
    per_block = [enc["blocks"][str(i)]["mlp"]["fc1"]["bias"] for i in range(depth)]
    np.testing.assert_allclose(per_block, [decay ** (depth - i) for i in range(depth)])


def test_finetune_decay_mask():
    mask = ld.finetune_decay_mask(_vit_tree(2, nested=True))
    enc = mask["encoder"]
    assert enc["patch_embed"]["proj"]["kernel"] and not enc["patch_embed"]["proj"]["bias"]
    assert not enc["cls_token"] and not enc["pos_embed"]  # timm no_weight_decay, despite ndim 3
    assert enc["blocks"]["1"]["attn"]["qkv"]["kernel"] and not enc["blocks"]["1"]["attn"]["qkv"]["bias"]
    assert not enc["blocks"]["0"]["norm1"]["scale"]
    assert mask["head"]["kernel"] and not mask["head"]["bias"] and not mask["fc_norm"]["scale"]
    assert ld.finetune_decay_mask({"s": jnp.float32(1.0)}) == {"s": False}


def _torch_adamw(params, grads_seq, lrs, scales, decay_mask, wd, b1=0.9, b2=0.999, eps=1e-8):
    """PyTorch AdamW with param groups lr = lr_t * scale, written out from torch.optim.AdamW."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
        for k in p:
            group_lr = lr * scales[k]
            p[k] *= 1 - group_lr * (wd if decay_mask[k] else 0.0)  # decoupled decay, group lr
            m[k] = b1 * m[k] + (1 - b1) * grads[k]
            v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
            denom = np.sqrt(v[k]) / np.sqrt(1 - b2 ** t) + eps
            p[k] -= group_lr / (1 - b1 ** t) * m[k] / denom
    return p


def test_optimizer_matches_hand_written_adamw():
    depth, decay, wd = 1, 0.5, 0.05
    rng = np.random.default_rng(0)
    params = {"blocks": {"0": {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}},
              "head": {"kernel": rng.normal(size=(2, 4))},
              "cls_token": rng.normal(size=(1, 1, 2)), "pos_embed": rng.normal(size=(1, 3, 2))}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    schedule = lambda step: 0.1 * (step + 1.0)  # noqa: E731  (step-dependent, to check the count)
    tx = ld.layer_decay_adamw(schedule, params, depth, decay, wd)
    flat = lambda tree: {"/".join(ld.path_strings(p)): np.asarray(x, np.float64)  # noqa: E731
                         for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    grads_seq = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
                 for _ in range(3)]

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    got = params
    for grads in grads_seq:
        got, state = step(got, state, grads)
    scales = {"blocks/0/w": 0.5, "blocks/0/b": 0.5, "head/kernel": 1.0, "cls_token": 0.25, "pos_embed": 0.25}
    decayed = {"blocks/0/w": True, "blocks/0/b": False, "head/kernel": True, "cls_token": False,
               "pos_embed": False}
    assert flat(ld.layer_scales(params, depth, decay)) == scales
    assert flat(ld.finetune_decay_mask(params)) == decayed
    ref = _torch_adamw(flat(params), [flat(g) for g in grads_seq], [0.1, 0.2, 0.3], scales, decayed, wd)
    for k, v in flat(got).items():
        # optax's float32 bias correction 1 - 0.999**t loses ~1e-5 (relative) to cancellation,
        # so compare the accumulated change (a few tenths) at that precision.
        np.testing.assert_allclose(v - flat(params)[k], ref[k] - flat(params)[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # First step by hand: Adam's direction is g/(|g| + eps); decay only where the mask says so.
    first, _ = step(params, tx.init(params), grads_seq[0])
    p0, g0 = flat(params), flat(grads_seq[0])
    for k, v in flat(first).items():
        lr = 0.1 * scales[k]
        expected = p0[k] - lr * (g0[k] / (np.abs(g0[k]) + 1e-8) + (wd * p0[k] if decayed[k] else 0.0))
        np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-7, err_msg=k)


def test_no_decay_params_untouched_by_decay_with_zero_grads():
    # Zero gradients: only weight decay moves a parameter, and only the decayed ones move.
    params = {"blocks": {"0": {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}},
              "cls_token": jnp.ones((1, 1, 2)), "pos_embed": jnp.ones((1, 2, 2)), "head": {"kernel": jnp.ones((2, 2))}}
    tx = ld.layer_decay_adamw(1.0, params, depth=1, layer_decay=0.5, weight_decay=0.1)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["blocks"]["0"]["w"], -0.5 * 0.1)  # lr 1 * scale 0.5 * wd
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1)
    for leaf in (updates["blocks"]["0"]["b"], updates["cls_token"], updates["pos_embed"]):
        np.testing.assert_array_equal(leaf, 0.0)


def test_real_classifier_tree():
    classifier = pytest.importorskip("maskjax.models.classifier")
    from flax import nnx

    from maskjax.core.state import to_tree

    model = nnx.eval_shape(lambda: classifier.ViTClassifier("mu/4", image_size=8, num_classes=3,
                                                             rngs=nnx.Rngs(0)))
    params = to_tree(nnx.state(model, nnx.Param))
    depth = model.encoder.depth
    ids = {"/".join(ld.path_strings(p)): ld.layer_id(ld.path_strings(p), depth)
           for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert {i for i in ids.values()} == set(range(depth + 2))
    for name, i in ids.items():
        if "patch_embed" in name or "cls_token" in name or "pos_embed" in name:
            assert i == 0, name
        elif name.startswith("head") or name.startswith("fc_norm"):
            assert i == depth + 1, name
    mask = ld.finetune_decay_mask(params)
    assert not mask["encoder"]["cls_token"]
    if "pos_embed" in params["encoder"]:
        assert not mask["encoder"]["pos_embed"]
    assert mask["head"]["kernel"]
    tx = ld.layer_decay_adamw(optax.constant_schedule(1e-3), params, depth, 0.65, 0.05)
    state = jax.eval_shape(tx.init, params)
    assert jax.tree.structure(state[0].mu) == jax.tree.structure(params)
