"""BERT / SpanBERT / ELECTRA modules and the text objectives: sizes, init, dropout, heads, losses."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.models.bert import (TEXT_SIZES, BertEncoder, BertPretrainer, activation, as_keys, attention,
                                 parse_text_size, text_config)
from maskjax.models.electra import Electra, get_generator_config
from maskjax.objectives.text import (electra_corrupt, gumbel_sample, mlm_loss, nsp_loss, rtd_loss, sbo_loss,
                                     spanbert_mlm_loss)
from maskjax.core.state import ModelTemplate

V, L = 50, 8
IDS = jnp.array([[2, 7, 9, 11, 3, 0, 0, 0], [2, 13, 17, 19, 23, 29, 31, 3]])
SEG = jnp.array([[0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]])
MASK = (IDS > 0).astype(jnp.int32)


def small_bert(**kw) -> BertPretrainer:
    return BertPretrainer("mu", vocab_size=V, max_positions=16, rngs=nnx.Rngs(0), **kw)


@pytest.fixture(scope="module")
def bert() -> BertPretrainer:
    """One micro model with every head, shared by the tests (eager init compiles per shape)."""
    return small_bert(nsp=True, sbo=True, max_pair_targets=5)


# --- sizes, configs, init ----------------------------------------------------------------------

def test_size_table_and_errors():
    assert (TEXT_SIZES["Base"].layers, TEXT_SIZES["Base"].hidden, TEXT_SIZES["Base"].heads) == (12, 768, 12)
    assert (TEXT_SIZES["Tiny"].layers, TEXT_SIZES["Tiny"].hidden, TEXT_SIZES["Tiny"].heads) == (2, 128, 2)
    cfg = text_config("Large")
    assert (cfg.layers, cfg.hidden, cfg.heads, cfg.ffn, cfg.embedding_size) == (24, 1024, 16, 4096, 1024)
    small = text_config("electra-small")
    assert (small.hidden, small.embedding_size, small.heads, small.ffn) == (256, 128, 4, 1024)
    with pytest.raises(ValueError, match=r"unknown text model size 'Huge'; known: \['mu', 'Tiny'"):
        parse_text_size("Huge")
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        text_config("mu", hidden_act="relu")
    with pytest.raises(ValueError, match="not divisible by 5 attention heads"):
        text_config("mu", heads=5)


@pytest.mark.parametrize("size,fraction,expected", [
    ("electra-small", 0.25, (64, 1, 256, 12)), ("electra-base", 0.33333, (256, 4, 1024, 12)),
    ("electra-large", 0.25, (256, 4, 1024, 24))])
def test_generator_config_matches_electra_table(size, fraction, expected):
    gen = get_generator_config(text_config(size), fraction)
    assert (gen.hidden, gen.heads, gen.ffn, gen.layers) == expected
    assert gen.embedding_size == text_config(size).embedding_size


def test_gelu_variants():
    x = jnp.linspace(-4, 4, 101)
    exact = 0.5 * x * (1 + jax.scipy.special.erf(x / math.sqrt(2)))
    tanh = 0.5 * x * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(activation("gelu")(x), exact, atol=1e-6)
    np.testing.assert_allclose(activation("gelu_tanh")(x), tanh, atol=1e-6)
    assert float(jnp.max(jnp.abs(exact - tanh))) > 1e-4  # the two really differ


def test_logical_axes_and_init(bert):
    template = ModelTemplate.from_builder(lambda rngs: BertPretrainer("mu", vocab_size=V, max_positions=16, nsp=True,
                                                                      sbo=True, rngs=rngs))
    axes = template.logical_axes()["params"]
    emb = ("encoder", "embeddings")
    assert axes[emb + ("word_embeddings",)] == ("vocab", "embed")
    assert axes[emb + ("position_embeddings",)] == (None, "embed")
    layer = ("encoder", "transformer", "layers", "0")
    assert axes[layer + ("query", "kernel")] == ("embed", "heads")
    assert axes[layer + ("attention_out", "kernel")] == ("heads", "embed")
    assert axes[layer + ("ffn_in", "kernel")] == ("embed", "mlp")
    assert axes[layer + ("ffn_out", "kernel")] == ("mlp", "embed")
    assert axes[layer + ("output_norm", "scale")] == ("embed",)
    assert axes[("mlm_head", "bias")] == ("vocab",)
    assert all(a is not None for a in axes.values())
    word = np.asarray(bert.encoder.embeddings.word_embeddings[...])
    assert 0.016 < word.std() < 0.0192  # 0.02 * 0.88: the truncation at 2 stddev shrinks it
    _, params = nnx.split(bert, nnx.Param)
    for path, value in nnx.to_flat_state(params):
        value, name = np.asarray(value[...]), str(path[-1])
        if name in ("kernel", "word_embeddings", "position_embeddings", "token_type_embeddings"):
            assert np.max(np.abs(value)) <= 0.04 + 1e-7, path  # truncated normal(0.02) everywhere
        elif name == "scale":
            assert np.all(value == 1), path
        else:
            assert name == "bias" and np.all(value == 0), path


# --- forward behaviour ---------------------------------------------------------------------------

@nnx.jit
def run(model, ids, seg, mask, keys):
    hidden, _ = model.encode(ids, seg, mask, dropout_keys=keys)
    return hidden


def test_dropout_keys_per_example(bert):
    model = bert
    keys = jax.random.split(jax.random.key(0), 2)
    det = run(model, IDS, SEG, MASK, None)
    np.testing.assert_array_equal(det, run(model, IDS, SEG, MASK, None))  # deterministic without keys
    a = run(model, IDS, SEG, MASK, keys)
    np.testing.assert_array_equal(a, run(model, IDS, SEG, MASK, keys))  # same keys, same masks
    assert float(jnp.max(jnp.abs(a - det))) > 1e-2
    other = run(model, IDS, SEG, MASK, jax.random.split(jax.random.key(1), 2))
    assert float(jnp.max(jnp.abs(a - other))) > 1e-2
    # Example 1 alone with its key: the same output as inside the batch (no batch-composition dependence).
    alone = run(model, IDS[1:], SEG[1:], MASK[1:], keys[1:])
    np.testing.assert_allclose(alone[0], a[1], rtol=1e-5, atol=1e-5)
    assert as_keys(jax.random.key_data(keys)).dtype == keys.dtype  # raw uint32 key data is accepted too


def test_attention_dropout_path_matches_fused_kernel():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, L, 2, 4)), jnp.float32) for _ in range(3))
    fused = attention(q, k, v, MASK)
    manual = attention(q, k, v, MASK, keep=jnp.ones((2, 2, L, L), bool), rate=0.0)  # the written-out path
    np.testing.assert_allclose(manual, fused, rtol=1e-5, atol=1e-6)


def test_padding_is_masked(bert):
    model = bert
    other_pad = IDS.at[0, 5:].set(jnp.array([41, 42, 43]))
    a, b = run(model, IDS, SEG, MASK, None), run(model, other_pad, SEG, MASK, None)
    np.testing.assert_allclose(a[0, :5], b[0, :5], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a[1], b[1])


def test_bf16_and_remat():
    def build(**kw):  # same seed, so the same weights
        return BertEncoder("mu", vocab_size=V, max_positions=16, layers=1, rngs=nnx.Rngs(0), **kw)

    ref, remat, half = build(), build(remat=True), build(dtype=jnp.bfloat16)
    assert half.embeddings.word_embeddings[...].dtype == jnp.float32  # params stay float32

    # A fixed random readout: a sum of squares of LayerNorm outputs would be constant.
    readout = jax.random.normal(jax.random.key(5), (2, L, 32))

    def loss(m):
        return jnp.sum(m(IDS, SEG, MASK)[0].astype(jnp.float32) * readout)

    (v1, g1), (v2, g2) = (nnx.jit(nnx.value_and_grad(loss))(m) for m in (ref, remat))
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(x))) + 1e-7)
    h32 = nnx.jit(lambda m: m(IDS, SEG, MASK)[0])(ref)
    h16 = nnx.jit(lambda m: m(IDS, SEG, MASK)[0])(half)
    assert h16.dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(h16.astype(jnp.float32) - h32))) < 0.15  # bf16 compute, same function


def test_heads_nsp_sbo_shapes_and_sbo_formula(bert):
    model = bert
    pos = jnp.array([[1, 3], [2, 6]])
    out = nnx.jit(lambda m: m(IDS, SEG, MASK, pos, sbo_left=pos - 1, sbo_right=pos + 1,
                              sbo_offset=jnp.array([[0, 4], [1, 2]])))(model)
    assert out["mlm_logits"].shape == (2, 2, V) and out["nsp_logits"].shape == (2, 2)
    assert out["sbo_logits"].dtype == jnp.float32
    # SBO recomputed by hand from the parameters (spec 2b): concat(H[l], H[r], P[i]) -> 2 x (Dense, gelu, LN).
    head, h = model.sbo_head, out["hidden"]

    def ln(x, norm):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + 1e-12) * norm.scale[...] + norm.bias[...]

    def lin(x, d):
        return x @ d.kernel[...] + d.bias[...]

    gelu = activation("gelu")
    left, right = h[jnp.arange(2)[:, None], pos - 1], h[jnp.arange(2)[:, None], pos + 1]
    x = jnp.concatenate([left, right, head.position_embeddings[...][jnp.array([[0, 4], [1, 2]])]], -1)
    x = ln(gelu(lin(ln(gelu(lin(x, head.dense1)), head.norm1), head.dense2)), head.norm2)
    expected = x @ model.encoder.word_embeddings[...].T + head.bias[...]
    np.testing.assert_allclose(out["sbo_logits"], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="nsp=True needs pooler=True"):
        small_bert(nsp=True, pooler=False)


def test_electra_module_shares_embeddings():
    model = Electra("mu", vocab_size=V, max_positions=16, embedding_size=16, layers=1, rngs=nnx.Rngs(0))
    assert (model.generator_cfg.hidden, model.generator_cfg.heads, model.generator_cfg.layers) == (8, 1, 1)
    _, params = nnx.split(model, nnx.Param)
    tree = nnx.to_pure_dict(params)
    assert "embeddings" not in tree["generator"] and "embeddings" not in tree["discriminator"]
    assert tree["generator"]["embeddings_project"]["kernel"].shape == (16, 8)
    assert tree["discriminator"]["embeddings_project"]["kernel"].shape == (16, 32)
    pos = jnp.array([[1, 2], [3, 4]])
    keys = jax.random.split(jax.random.key(0), 2)

    @nnx.jit
    def fwd(m, keys):
        return m.generator_logits(IDS, SEG, MASK, pos, keys), m.discriminator_logits(IDS, SEG, MASK, keys)

    g, d = fwd(model, keys)  # with dropout (the deterministic path is the parity tests')
    assert g.shape == (2, 2, V) and d.shape == (2, L) and d.dtype == jnp.float32
    with pytest.raises(ValueError, match="share the embeddings"):
        Electra("mu", vocab_size=V, generator={"embedding_size": 8, "hidden": 8, "heads": 1, "ffn": 32},
                rngs=nnx.Rngs(0))


# --- objectives ----------------------------------------------------------------------------------

def test_mlm_loss_hand_computed():
    logits = jnp.log(jnp.array([[[1.0, 2.0, 1.0], [1.0, 1.0, 1.0]], [[1.0, 1.0, 2.0], [5.0, 1.0, 1.0]]]))
    labels = jnp.array([[1, 2], [0, -100]])
    weights = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    loss, m = mlm_loss(logits, labels, weights)
    nll = math.log(2) + math.log(3) + math.log(4)
    np.testing.assert_allclose(loss, nll / (3 + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(m["accuracy"], 1 / 3, rtol=1e-6)
    assert float(m["count"]) == 3
    np.testing.assert_allclose(spanbert_mlm_loss(logits, labels, weights)[0], nll / 3, rtol=1e-6)
    np.testing.assert_allclose(sbo_loss(logits, labels, weights)[0], nll / 4, rtol=1e-6)  # / (n + 1)
    np.testing.assert_allclose(mlm_loss(logits.astype(jnp.bfloat16), labels, weights)[0], nll / 3, rtol=2e-2)
    assert float(spanbert_mlm_loss(logits, labels, jnp.zeros_like(weights))[0]) == 0.0


def test_nsp_loss():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    loss, m = nsp_loss(logits, jnp.array([0, 0]))
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(m["accuracy"]) == 0.5


def test_rtd_loss_vs_numpy_and_metrics():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 10)) * 3, (rng.random((3, 10)) < 0.3).astype(np.int32)
    mask = (np.arange(10)[None] < np.array([[10], [6], [3]])).astype(np.int32)
    p = 1 / (1 + np.exp(-x))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    loss, _ = rtd_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(mask))
    np.testing.assert_allclose(loss, (bce * mask).sum() / (mask.sum() + 1e-6), rtol=1e-5)
    _, m = rtd_loss(jnp.array([[2.0, -1.0, 3.0, -2.0]]), jnp.array([[1, 1, 0, 0]]), jnp.array([[1, 1, 1, 0]]))
    np.testing.assert_allclose([m["accuracy"], m["precision"], m["recall"]], [1 / 3, 1 / 2, 1 / 2], rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gumbel_sample_frequencies_match_softmax(temperature):
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (40000, 4))
    ids = gumbel_sample(jax.random.key(0), logits, temperature)
    assert ids.dtype == jnp.int32
    target = probs ** (1 / temperature) / np.sum(probs ** (1 / temperature))
    np.testing.assert_allclose(np.bincount(np.asarray(ids), minlength=4) / 40000, target, atol=0.012)


def test_gumbel_sample_per_example_keys_and_disallow():
    logits = jax.random.normal(jax.random.key(1), (4, 6, 30))
    keys = jax.random.split(jax.random.key(2), 4)
    full = gumbel_sample(keys, logits)
    np.testing.assert_array_equal(gumbel_sample(keys[2:3], logits[2:3])[0], full[2])
    forbidden = jax.nn.one_hot(full, 30)
    assert not np.any(np.asarray(gumbel_sample(keys, logits, disallow=forbidden)) == np.asarray(full))
    grad = jax.grad(lambda z: jnp.sum(gumbel_sample(keys, z).astype(jnp.float32)))(logits)
    assert not np.any(np.asarray(grad))


def test_electra_corrupt_scatter_rules():
    ids = jnp.array([[5, 6, 7, 8, 9]])
    # position 0 is never updated; 2 samples its own token (stays "real"); 3 is drawn twice
    # (ELECTRA: floor of the mean of the samples); the 5th prediction is padding (weight 0).
    corrupt, labels = electra_corrupt(ids, jnp.array([[0, 2, 3, 3, 4]]), jnp.array([[11, 7, 20, 23, 12]]),
                                      jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0]]))
    np.testing.assert_array_equal(corrupt, [[5, 6, 7, 21, 9]])
    np.testing.assert_array_equal(labels, [[0, 0, 0, 1, 0]])
