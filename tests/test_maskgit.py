"""MaskGIT: schedules, training mask, decoding, loss, model, token data and training.

References are independent transcriptions of the official JAX code (google-research/maskgit):
``mask_schedule.schedule`` and ``parallel_decode.decode`` are re-written here in numpy (float32 where
the official code computes in float32), calling the same ``jax.random`` functions with the same keys
in the same order, so one full decode must agree token for token. The transformer is checked against
a numpy transcription of ``maskgit_transformer.Transformer``'s forward pass with the same weights.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.masking import maskgit_decode, maskgit_schedules
from maskjax.methods.maskgit import MaskGIT, masked_token_loss

CONFIGS = "configs/maskgit"


# --- numpy transcriptions of the official code ------------------------------------------------------

def np_schedule(ratio, total_unknown, method, dtype=np.float64):
    """``mask_schedule.schedule`` in numpy (``dtype``: float32 to follow the traced JAX arithmetic)."""
    ratio = np.asarray(ratio, dtype)
    total = np.asarray(total_unknown, dtype)
    with np.errstate(divide="ignore"):
        if method == "uniform":
            mask_ratio = dtype(1.0) - ratio
        elif "pow" in method:
            mask_ratio = dtype(1.0) - ratio ** dtype(float(method.replace("pow", "")))
        elif method == "cosine":
            mask_ratio = np.cos(dtype(math.pi / 2.0) * ratio)
        elif method == "log":
            mask_ratio = -np.log2(ratio) / np.log2(total)
        elif method == "exp":
            mask_ratio = dtype(1.0) - np.exp2(-np.log2(total) * (dtype(1.0) - ratio))
    return np.clip(mask_ratio, dtype(1e-6), dtype(1.0)).astype(dtype)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_decode(inputs, rng, tokens_to_logits, mask_token_id, num_iter, start_iter, choice_temperature, method):
    """``parallel_decode.decode`` step by step in numpy; the draws are the official jax.random calls."""
    f32 = np.float32
    inputs = np.asarray(inputs, np.int32)
    unknown_at_start = np.sum(inputs == mask_token_id, axis=-1).astype(f32)
    final_seqs = np.tile(inputs[:, None], (1, num_iter, 1))
    cur = inputs.copy()
    for step in range(start_iter, num_iter):
        logits = tokens_to_logits(cur)
        rng, sample_rng = jax.random.split(rng, 2)
        sampled = np.asarray(jax.random.categorical(sample_rng, logits))
        unknown = cur == mask_token_id
        sampled = np.where(unknown, sampled, cur)
        ratio = f32(step + 1) / f32(num_iter)
        mask_ratio = np_schedule(ratio, unknown_at_start, method, f32)
        final_seqs[:, step] = sampled
        probs = np_softmax(logits)
        # Known tokens (the class token: id >= K) gather out of range; JAX's gather does not fail there and
        # the value is replaced by +inf on the next line, so numpy clips the index.
        index = np.minimum(sampled, probs.shape[-1] - 1)
        selected = np.take_along_axis(probs, index[..., None], -1)[..., 0]
        selected = np.where(unknown, selected, np.inf).astype(f32)
        mask_len = np.floor(unknown_at_start * mask_ratio)[:, None]
        mask_len = np.maximum(1, np.minimum(unknown.sum(-1, keepdims=True) - 1, mask_len)).astype(np.int32)
        rng, choice_rng = jax.random.split(rng)
        gumbel = np.asarray(jax.random.gumbel(choice_rng, selected.shape))
        with np.errstate(divide="ignore"):
            confidence = np.log(selected) + f32(choice_temperature) * (f32(1.0) - ratio) * gumbel
        cut_off = np.take_along_axis(np.sort(confidence, -1), mask_len, -1)
        cur = np.where(confidence < cut_off, mask_token_id, sampled)
    return final_seqs


class TableLogits:
    """A deterministic stand-in for the transformer: ``logits[b, l] = P[l] + T[ids[b, l - 1]]``.

    One float32 add per entry, so numpy and XLA give the same bits; the logits depend on the
    decoding state through the left neighbour's current id (mask and class tokens included).
    """

    def __init__(self, length, vocab_in, vocab_out, seed=0):
        rng = np.random.default_rng(seed)
        self.pos = (2.0 * rng.standard_normal((length, vocab_out))).astype(np.float32)
        self.tok = rng.standard_normal((vocab_in, vocab_out)).astype(np.float32)

    def numpy(self, ids):
        return self.pos[None] + self.tok[np.roll(ids, 1, axis=1)]

    def jax(self, ids):
        return jnp.asarray(self.pos)[None] + jnp.asarray(self.tok)[jnp.roll(ids, 1, axis=1)]


# --- schedules and the training mask ----------------------------------------------------------------

METHODS = ["uniform", "cosine", "log", "exp", "pow2", "pow3", "pow0.5", "pow2.5"]


@pytest.mark.parametrize("method", METHODS)
def test_schedules_equal_the_official_formulas(method):
    ratios = np.concatenate([[0.0, 1e-7, 0.5, 1.0 - 1e-7, 1.0], np.random.default_rng(0).random(200)])
    for total in (16, 256, 1024):
        got = np.asarray(maskgit_schedules.schedule(jnp.asarray(ratios, jnp.float32), total, method))
        want = np_schedule(ratios.astype(np.float32), total, method)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
        assert got.min() >= 1e-6 and got.max() <= 1.0


def test_schedule_aliases_and_unknown_names():
    r = jnp.linspace(0.0, 1.0, 11)
    for alias, official in maskgit_schedules.ALIASES.items():
        np.testing.assert_array_equal(maskgit_schedules.schedule(r, 256, alias), maskgit_schedules.schedule(r, 256, official))
    with pytest.raises(ValueError, match="unknown MaskGIT mask schedule"):
        maskgit_schedules.schedule(r, 256, "cosin")
    with pytest.raises(ValueError):
        maskgit_schedules.canonical_method("powx")


@pytest.mark.parametrize("method", ["cosine", "exp"])
def test_training_mask_hides_ceil_gamma_n_uniformly(method):
    n, batch = 64, 512
    keys = jax.random.split(jax.random.key(3), batch)
    hidden, ratios = maskgit_schedules.training_mask(keys, n, method)
    hidden, ratios = np.asarray(hidden), np.asarray(ratios)
    assert ratios.min() >= 0.0 and ratios.max() < 1.0 and abs(ratios.mean() - 0.5) < 0.05   # r ~ U[0, 1)
    want = np.clip(np.ceil(np_schedule(ratios, n, method, np.float32) * np.float32(n)), 1, n)
    np.testing.assert_array_equal(hidden.sum(axis=1), want)
    # Which positions: uniform (each position hidden about as often as the mean count says).
    freq = hidden.mean(axis=0)
    assert np.abs(freq - freq.mean()).max() < 0.12
    # A sample's mask depends only on its own key, not on its batch.
    sub, _ = maskgit_schedules.training_mask(keys[5:9], n, method)
    np.testing.assert_array_equal(np.asarray(sub), hidden[5:9])


def test_training_counts_at_the_ends_of_the_ratio():
    # r = 0: everything masked; r -> 1: gamma is clipped at 1e-6, so still one token (never an empty loss).
    counts = maskgit_schedules.training_counts(jnp.asarray([0.0, 0.999999, 0.5]), 256, "cosine")
    assert counts.tolist() == [256, 1, math.ceil(math.cos(math.pi / 4) * 256)]


# --- decoding ----------------------------------------------------------------------------------------

K, CLASSES = 8, 3
MASK_ID = K + CLASSES


def _class_inputs(labels, n):
    return np.concatenate([np.asarray(labels)[:, None] + K, np.full((len(labels), n), MASK_ID)], 1).astype(np.int32)


STEPS = 6


@pytest.fixture(scope="module")
def full_decode():
    """One class-conditional decode by the numpy transcription: a batch of 8 (one row per simulated device)."""
    n = 16
    net = TableLogits(n + 1, MASK_ID + 1, K, seed=1)
    inputs = _class_inputs(np.arange(8) % CLASSES, n)
    key = jax.random.key(42)
    return net, inputs, key, np_decode(inputs, key, net.numpy, MASK_ID, STEPS, 0, 4.5, "cosine")


def test_one_full_decode_equals_the_official_token_for_token(full_decode):
    net, inputs, key, want = full_decode
    run = jax.jit(lambda x, k: maskgit_decode.decode(x, k, net.jax, mask_token_id=MASK_ID, num_iter=STEPS,
                                                     choice_temperature=4.5, return_all_steps=True))
    np.testing.assert_array_equal(np.asarray(run(jnp.asarray(inputs), key)), want)
    assert (want[:, -1, 1:] < K).all() and (want[:, -1, 0] == inputs[:, 0]).all()
    # Each step's output is complete; tokens re-masked after step 0 were sampled again later.
    assert not (want[:, :, 1:] == MASK_ID).any() and (want[:, 0] != want[:, -1]).any()


def test_editing_decode_with_start_iter_equals_the_official_and_keeps_given_tokens(full_decode):
    net, inputs, key, _ = full_decode
    start = 2
    rng = np.random.default_rng(0)
    inputs = inputs.copy()
    given = rng.random((8, 16)) < np.linspace(0.1, 0.9, 8)[:, None]   # a different number known per row
    inputs[:, 1:] = np.where(given, rng.integers(0, K, (8, 16)), MASK_ID)
    method = "log"   # per-example N0 matters for log (cosine: the test above; all formulas: the schedule tests)
    want = np_decode(inputs, key, net.numpy, MASK_ID, STEPS, start, 2.0, method)
    run = jax.jit(lambda x, k: maskgit_decode.decode(x, k, net.jax, mask_token_id=MASK_ID, num_iter=STEPS,
                                                     start_iter=start, choice_temperature=2.0,
                                                     mask_scheduling_method=method, return_all_steps=True))
    np.testing.assert_array_equal(np.asarray(run(jnp.asarray(inputs), key)), want)
    out = want[:, -1, 1:]
    np.testing.assert_array_equal(out[given], inputs[:, 1:][given])   # given tokens kept
    assert (out < K).all()
    np.testing.assert_array_equal(want[:, :start], np.repeat(inputs[:, None], start, 1))   # steps before start


def test_decode_sharded_over_the_batch_returns_the_official_last_step(full_decode):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    net, inputs, key, want = full_decode
    sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("batch",)), P("batch"))
    # The step count and temperature traced (as the method's sampler passes them).
    run = jax.jit(lambda x, k, steps, temp: maskgit_decode.decode(x, k, net.jax, mask_token_id=MASK_ID,
                                                                  num_iter=steps, choice_temperature=temp))
    got = run(jax.device_put(jnp.asarray(inputs), sharding), key, jnp.int32(STEPS), jnp.float32(4.5))
    assert got.sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_array_equal(np.asarray(got), want[:, -1])   # final_seqs[:, -1]


# --- loss ------------------------------------------------------------------------------------------

def test_label_smoothing_against_a_hand_computed_case():
    # Codebook of 3; token 0 masked (p = 1/8, 2/8, 5/8, target 1), token 1 masked (uniform, target 2),
    # token 2 not masked (target 0, extreme logits that must not count).
    logits = jnp.asarray([[[0.0, math.log(2), math.log(5)], [1.0, 1.0, 1.0], [-50.0, 40.0, 3.0]]])
    targets = jnp.asarray([[1, 2, 0]])
    hidden = jnp.asarray([[True, True, False]])
    eps = 0.1
    first = (1 - eps) * math.log(4) + eps * (math.log(8) + math.log(4) + math.log(8 / 5)) / 3
    second = math.log(3)   # uniform: NLL and the smoothing term are both log 3
    loss, metrics = masked_token_loss(logits, targets, hidden, eps)
    np.testing.assert_allclose(float(loss), (first + second) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["nll"]), (math.log(4) + math.log(3)) / 2, rtol=1e-6)
    # argmax: token 0 -> 2 (wrong), token 1 -> 0 (ties pick the first: wrong); the unmasked one is not counted.
    assert float(metrics["accuracy"]) == 0.0 and float(metrics["masked_tokens"]) == 2.0


def _tiny_config(smoke=True, **overrides):
    from maskjax.config import apply_overrides, load_config

    c = load_config(f"{CONFIGS}/cifar10.py:smoke" if smoke else f"{CONFIGS}/cifar10.py")
    base = {"data.grid_size": 4, "data.codebook_size": 16, "data.num_classes": 4, "model.depth": 1,
            "progress": False}
    base.update(overrides)
    apply_overrides(c, base)
    return c


def test_method_loss_counts_only_masked_tokens():
    method = MaskGIT(_tiny_config())
    b, n, v = 6, 16, method.vocab_size
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 16, (b, n)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 4, b), jnp.int32)
    keys = jax.random.split(jax.random.key(0), b)
    base = rng.standard_normal((b, n + 1, v)).astype(np.float32)
    seen = []

    def fake_model(logits):
        def model(ids, dropout_keys=None):
            seen.append(ids)
            return logits
        return model

    batch = {"tokens": tokens, "label": labels}

    @jax.jit
    def loss_of(logits):
        seen.clear()
        loss, metrics = method.loss(fake_model(logits), batch, keys, train=False)
        return loss, metrics, seen[0]   # also the ids the model was given

    loss, metrics, ids = loss_of(base)
    # The model saw [class] + tokens, some of them (at least one per example) replaced by the mask id.
    ids = np.asarray(ids)
    hidden = ids[:, 1:] == method.mask_id
    np.testing.assert_array_equal(ids[:, 0], np.asarray(labels) + 16)
    np.testing.assert_array_equal(ids[:, 1:][~hidden], np.asarray(tokens)[~hidden])
    assert hidden.any(axis=1).all() and not hidden.all()
    # Changing the logits of visible positions (and of the class position) leaves the loss unchanged...
    other = base.copy()
    visible = np.concatenate([np.ones((b, 1), bool), ~hidden], axis=1)
    other[visible] = 100.0 * rng.standard_normal((visible.sum(), v))
    same = loss_of(other)[0]
    np.testing.assert_allclose(float(same), float(loss), rtol=1e-6)
    # ...changing one hidden position's logits changes it; the mean is over the batch's hidden tokens.
    i, j = np.argwhere(hidden)[0]
    moved = base.copy()
    moved[i, 1 + j, :16] += 5.0 * rng.standard_normal(16)
    assert abs(float(loss_of(moved)[0]) - float(loss)) > 1e-4
    np.testing.assert_allclose(float(metrics["masked_tokens"]), hidden.sum() / b)
    want, _ = masked_token_loss(jnp.asarray(base[:, 1:, :16]), tokens, jnp.asarray(hidden), 0.1)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)


# --- the transformer against a transcription of the official forward pass -----------------------------

def _np_layer_norm(x, scale, bias, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _np_gelu(x):   # jax.nn.gelu's default (approximate=True), as flax and the official code use it
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_official_forward(model, ids, heads):
    """``maskgit_transformer.Transformer.__call__(deterministic=True)`` in float64 numpy."""
    p = lambda v: np.asarray(v[...], np.float64)
    x = p(model.word_embeddings)[ids] + p(model.position_embeddings)[: ids.shape[1]][None]
    x = _np_layer_norm(x, p(model.embeddings_norm.scale), p(model.embeddings_norm.bias))
    for layer in model.transformer.layers:
        b, l, d = x.shape
        proj = lambda dense, h: h @ p(dense.kernel) + p(dense.bias)
        split = lambda t: t.reshape(b, l, heads, d // heads)
        q, k, v = (split(proj(layer.query, x)), split(proj(layer.key, x)), split(proj(layer.value, x)))
        scores = np.einsum("bqhd,bkhd->bhqk", q / np.sqrt(d // heads), k)
        attn = np.einsum("bhqk,bkhd->bqhd", np_softmax(scores), v).reshape(b, l, d)
        x = _np_layer_norm(proj(layer.attention_out, attn) + x, p(layer.attention_norm.scale), p(layer.attention_norm.bias))
        y = proj(layer.ffn_out, _np_gelu(proj(layer.ffn_in, x)))
        x = _np_layer_norm(y + x, p(layer.output_norm.scale), p(layer.output_norm.bias))
    head = model.mlm_head
    h = _np_gelu(x @ p(head.dense.kernel) + p(head.dense.bias))
    h = _np_layer_norm(h, p(head.norm.scale), p(head.norm.bias))
    return h @ p(model.word_embeddings).T + p(head.bias)


def random_model(build, seed=0):
    """The module ``build`` makes, every parameter drawn from N(0, 0.1^2) in numpy (no compiled
    initialisers: CPU compile time); zero biases and unit norms would hide parameters from a check."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)
    return nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype), state))


def test_transformer_equals_the_official_forward_pass():
    from maskjax.models.maskgit import MaskGITTransformer, maskgit_vocab

    vocab, mask_id = maskgit_vocab(16, 4)
    assert (vocab, mask_id) == (21, 20)
    model = random_model(lambda: MaskGITTransformer(vocab, hidden=32, depth=2, heads=4, intermediate=64,
                                                    max_positions=17, rngs=nnx.Rngs(0)))
    ids = np.concatenate([[[16], [19]], np.random.default_rng(1).integers(0, 21, (2, 16))], axis=1).astype(np.int32)
    got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))
    np.testing.assert_allclose(got, np_official_forward(model, ids, heads=4), rtol=1e-4, atol=1e-4)


# --- sampling, data and training ------------------------------------------------------------------------

def test_sample_tokens_generates_grids_and_edits_keep_given_tokens():
    method = MaskGIT(_tiny_config())
    model = random_model(lambda: method.build(nnx.Rngs(0)))
    grids = method.sample(model, jax.random.key(0), 2)   # config defaults: 8 cosine steps, temperature 4.5
    assert grids.shape == (2, 4, 4) and grids.dtype == jnp.int32
    assert int(grids.min()) >= 0 and int(grids.max()) < 16
    start = np.full((2, 4, 4), method.mask_id, np.int32)
    start[:, :2] = np.arange(8).reshape(2, 4)   # the top half given
    # The same compiled program (steps, start and temperature are traced; the schedule is the config's).
    edited = np.asarray(method.sample_tokens(model, jax.random.key(1), [1, 3], start_tokens=start, start_iter=2,
                                             num_steps=6, choice_temperature=1.0))
    np.testing.assert_array_equal(edited[:, :2], start[:, :2])
    assert (edited < 16).all()


def test_token_records_round_trip_and_feed_the_pipeline(tmp_path):
    from maskjax.data.image_tokens import (ArrayRecordTokenSource, ImageTokenModality, make_token_pipeline,
                                           write_token_records)

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 65536, (37, 4, 4))
    tokens[0, 0, 0] = 65535
    labels = rng.integers(0, 7, 37)
    meta = write_token_records(tmp_path / "tok", tokens, labels, shard_size=10)
    assert meta["num_records"] == 37 and len(meta["shards"]) == 4 and meta["grid"] == [4, 4]
    assert meta["max_token_id"] == 65535 and meta["max_label"] == labels.max()
    source = ArrayRecordTokenSource(tmp_path / "tok")
    assert len(source) == 37
    for i in (0, 17, 36):
        np.testing.assert_array_equal(source[i]["tokens"], tokens[i].reshape(-1))
        assert source[i]["label"] == labels[i]
    batches = iter(make_token_pipeline(source, global_batch=8, train=True, seed=0, process_index=0, process_count=1))
    batch = next(batches)
    assert batch["tokens"].shape == (8, 16) and batch["tokens"].dtype == np.int32 and batch["label"].shape == (8,)
    # The modality checks the records against the config before anything compiles.
    c = _tiny_config(**{"data.kind": "array_record_tokens", "data.path": str(tmp_path / "tok")})
    errors = []
    ImageTokenModality().check(c, errors)
    assert any("codebook" in e for e in errors) and any("num_classes" in e for e in errors)
    with pytest.raises(ValueError, match="outside the codebook"):
        write_token_records(tmp_path / "bad", tokens, labels, codebook_size=1024)
    with pytest.raises(ValueError, match="not a square grid"):
        write_token_records(tmp_path / "bad", tokens.reshape(37, 16)[:, :15], labels)


def test_registry_flops_and_config_checks():
    from maskjax.data.modalities import get_modality
    from maskjax.methods import known_methods
    from maskjax.train.validate import validate_config

    assert "maskgit" in known_methods() and get_modality("image_tokens").name == "image_tokens"
    method = MaskGIT(_tiny_config())
    flops = method.flops(8)
    # Smoke model, depth 1: 17 positions, width 32, FFN 64; head dense 32x32 + tied decoder over 21 ids.
    layer = 2 * 17 * 32 * 128 + 2 * (2 * 17 * 17 * 32) + 2 * (2 * 17 * 32 * 64)
    assert flops.parts["blocks"] == 8 * layer
    assert flops.parts["mlm_head"] == 8 * (2 * 17 * 32 * 32 + 2 * 17 * 32 * 21)
    bad = _tiny_config(**{"maskgit.mask_schedule": "cosin", "maskgit.label_smoothing": 1.0})
    with pytest.raises(ValueError, match="mask_schedule") as err:
        validate_config(bad)
    assert "label_smoothing" in str(err.value)


def _losses(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


# Three runs through the trainer: about 21 s of CPU to compile the step cold plus 6 s per run from
# the compilation cache, so it runs with -m slow to keep this file's default run near 35 s of CPU.
@pytest.mark.slow
def test_training_on_synthetic_tokens_resumes_exactly(tmp_path):
    from maskjax.train.loop import train

    def config():
        return _tiny_config(**{"total_steps": 4, "checkpoint.every_steps": 2, "mesh.data": 8, "mesh.fsdp": 1})

    straight = train(config(), str(tmp_path / "straight"), run_evals=False)
    assert straight.step == 4
    train(config(), str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    split = train(config(), str(tmp_path / "split"), run_evals=False)
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert all(np.isfinite(list(a.values())))
    np.testing.assert_allclose([b[s] for s in range(1, 5)], [a[s] for s in range(1, 5)], rtol=1e-6)
    # The EMA weights (ema_decay 0.999) resume exactly too.
    for x, y in zip(jax.tree.leaves(straight.state["extra"]["ema"]), jax.tree.leaves(split.state["extra"]["ema"])):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-9)
