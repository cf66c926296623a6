"""The diffusion-LM networks (maskjax/models/dit.py: MDLM's DDiT; maskjax/models/llama.py: MD4's
LLaMA-style stack and the causal baseline) against numpy transcriptions of the references.

References, transcribed in numpy here: MD4 ``networks/transformer.py`` (RMSNorm, interleaved RoPE
from ``precompute_freqs_cis`` / ``apply_rotary_emb``, the GLU-family ``FeedForward``, the block),
MD4 ``models/backward.py::get_timestep_embedding``, MDLM ``models/dit.py`` (``Rotary`` +
flash-attn's non-interleaved ``rotate_half``, ``TimestepEmbedder.timestep_embedding``,
``DDiTBlock.forward``). Properties: adaLN-zero blocks are the identity at init, rotary scores
depend only on relative positions, causal attention never looks ahead.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.models import dit, llama

RNG = np.random.default_rng(0)


def _np(x):
    return np.asarray(x, np.float64)


# Model calls go through one jitted function: op-by-op (eager) execution compiles every primitive
# separately, which costs more CPU time than the tests themselves.
_call = nnx.jit(lambda module, *args, **kwargs: module(*args, **kwargs))


@pytest.fixture(scope="module")
def nets():
    """One network of each kind, all 16 wide with 2 heads (building compiles a random draw per new
    parameter shape, so the tests share these and work on clones)."""
    return {
        "dit": dit.DiT(28, rngs=nnx.Rngs(0), width=16, depth=1, heads=2, cond_dim=8, dropout=0.5),
        "cond": llama.LlamaTransformer(28, 27, rngs=nnx.Rngs(0), feature_dim=8, heads=2, depth=1),
        "causal": llama.LlamaTransformer(28, 27, rngs=nnx.Rngs(0), feature_dim=8, heads=2, depth=4, causal=True,
                                         time_conditioning=False, outside_embed=False, depth_scaled_init=True),
    }


def _randomize(module, scale=0.3, seed=1):
    """Every parameter of ``module`` set to N(0, scale^2) (so zero-initialised layers matter)."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(module):
        if isinstance(var, nnx.Param):
            var[...] = jnp.asarray(rng.normal(0, scale, var[...].shape), jnp.float32)


def np_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def np_attention(q, k, v, causal=False):
    """[B, L, H, D] softmax(q k^T / sqrt(D)) v, as MD4's Attention (float64)."""
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        s = s + np.triu(np.full(s.shape[-2:], -np.inf), k=1)
    return np.einsum("bhqk,bkhd->bqhd", np_softmax(s), v)


def np_md4_rope(x):
    """MD4 ``precompute_freqs_cis`` + ``apply_rotary_emb``: channel pairs (2i, 2i+1) as complex numbers."""
    b, l, h, d = x.shape
    freqs = 1.0 / (10000.0 ** (np.arange(0, d, 2)[: d // 2] / d))
    angles = np.outer(np.arange(l), freqs)
    xc = x.reshape(b, l, h, d // 2, 2)
    z = (xc[..., 0] + 1j * xc[..., 1]) * np.exp(1j * angles)[None, :, None, :]
    return np.stack([z.real, z.imag], axis=-1).reshape(x.shape)


def np_mdlm_rope(x):
    """MDLM ``Rotary`` (emb = cat(freqs, freqs)) + flash-attn non-interleaved: x cos + rotate_half(x) sin."""
    b, l, h, d = x.shape
    inv_freq = 1.0 / (10000 ** (np.arange(0, d, 2) / d))
    emb = np.concatenate([np.outer(np.arange(l), inv_freq)] * 2, axis=-1)[None, :, None, :]
    rotate_half = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * np.cos(emb) + rotate_half * np.sin(emb)


def test_rms_norm_matches_numpy():
    x = RNG.normal(size=(2, 5, 8)).astype(np.float32) * 3
    norm = llama.RMSNorm(8, eps=1e-5)
    norm.scale[...] = jnp.asarray(RNG.normal(size=8), jnp.float32)
    ref = _np(x) / np.sqrt(np.mean(_np(x) ** 2, axis=-1, keepdims=True) + 1e-5) * _np(norm.scale[...])
    np.testing.assert_allclose(_np(norm(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rotary_embeddings_match_the_references(interleaved):
    x = RNG.normal(size=(2, 7, 3, 8)).astype(np.float32)
    cos, sin = llama.rope_tables(7, 8)
    ours = _np(llama.apply_rope(jnp.asarray(x), cos, sin, interleaved=interleaved))
    ref = np_md4_rope(_np(x)) if interleaved else np_mdlm_rope(_np(x))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # A rotation: norms are kept, and position 0 is unchanged.
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), np.linalg.norm(_np(x), axis=-1), rtol=1e-5)
    np.testing.assert_allclose(ours[:, 0], _np(x)[:, 0], atol=1e-6)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rotary_scores_depend_only_on_relative_position(interleaved):
    q, k = RNG.normal(size=(2, 16)).astype(np.float32)
    cos, sin = llama.rope_tables(40, 16)
    seq = lambda v: jnp.broadcast_to(jnp.asarray(v), (1, 40, 1, 16))
    rq = _np(llama.apply_rope(seq(q), cos, sin, interleaved=interleaved))[0, :, 0]
    rk = _np(llama.apply_rope(seq(k), cos, sin, interleaved=interleaved))[0, :, 0]
    scores = rq @ rk.T                                   # [query position m, key position n]
    for offset in (-7, 0, 3, 11):
        diag = np.diagonal(scores, offset=offset)       # all pairs with n - m = offset
        np.testing.assert_allclose(diag, diag[0], rtol=1e-4, atol=1e-4)
    assert np.ptp(np.diagonal(scores, 0)) < 1e-3 and abs(scores[0, 0] - scores[0, 5]) > 1e-3


@pytest.mark.parametrize("mlp_type", ["swiglu", "geglu", "glu"])
def test_glu_feed_forward_matches_numpy(nets, mlp_type):
    block = nnx.clone(nets["causal"]).blocks[0]
    _randomize(block)
    block.mlp_type = mlp_type
    x = RNG.normal(size=(2, 3, 16)).astype(np.float32)
    w1, w2, w3 = (_np(getattr(block, n).kernel[...]) for n in ("w1", "w2", "w3"))
    a = _np(x) @ w1
    gate = {"swiglu": a / (1 + np.exp(-a)), "glu": 1 / (1 + np.exp(-a)),
            "geglu": 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))}[mlp_type]
    ours = nnx.jit(lambda b, x: b.feed_forward(x))(block, jnp.asarray(x))
    np.testing.assert_allclose(_np(ours), (gate * (_np(x) @ w3)) @ w2, rtol=1e-4, atol=1e-5)


def test_ffn_width_and_depth_scaled_init(nets):
    assert llama.mlp_hidden(768) == 2048          # MD4-S: int(2 * 3072 / 3) = 2048, a multiple of 32
    assert llama.mlp_hidden(32) == 96             # int(85.33) = 85 -> next multiple of 32
    net = nets["causal"]                          # depth 4, depth_scaled_init, width 16
    w = np.concatenate([_np(b.w1.kernel[...]).ravel() for b in net.blocks] + [_np(b.w3.kernel[...]).ravel()
                                                                               for b in net.blocks])
    # variance_scaling(2 / depth, fan_in, truncated_normal): std sqrt(2 / depth / fan_in), cut at 2 std.
    std = math.sqrt(2 / 4 / 16)
    np.testing.assert_allclose(w.std(), std, rtol=0.06)
    assert np.abs(w).max() <= 2 * std / 0.87962566 + 1e-6
    wq = np.concatenate([_np(b.wq.kernel[...]).ravel() for b in net.blocks])   # LeCun normal, not scaled
    np.testing.assert_allclose(wq.std(), math.sqrt(1 / 16), rtol=0.08)
    emb = _np(nets["dit"].vocab_embed[...])       # kaiming_uniform(a=sqrt(5)) on [V, D]: U(+-1/sqrt(D))
    assert np.abs(emb).max() <= 1 / 4 and np.abs(emb).max() > 0.9 / 4


def test_timestep_embeddings_match_the_references():
    t = np.asarray([0.0, 0.3, 250.0, 999.0])
    half = 8
    md4_freqs = np.exp(np.arange(half) * -(math.log(10_000) / (half - 1)))
    md4_ref = np.concatenate([np.sin(t[:, None] * md4_freqs), np.cos(t[:, None] * md4_freqs)], axis=1)
    np.testing.assert_allclose(_np(llama.timestep_embedding(jnp.asarray(t), 16)), md4_ref, rtol=1e-5, atol=1e-4)
    dit_freqs = np.exp(-math.log(10_000) * np.arange(half) / half)
    dit_ref = np.concatenate([np.cos(t[:, None] * dit_freqs), np.sin(t[:, None] * dit_freqs)], axis=1)
    np.testing.assert_allclose(_np(dit.dit_timestep_embedding(jnp.asarray(t), 16)), dit_ref, rtol=1e-5, atol=1e-4)


def _rope(l, d):
    return llama.rope_tables(l, d)


def test_adaln_zero_blocks_are_the_identity_at_init(nets):
    x = jnp.asarray(RNG.normal(size=(2, 5, 16)), jnp.float32)
    c = jnp.asarray(RNG.normal(size=(2, 8)), jnp.float32)
    cos, sin = _rope(5, 8)
    for name in ("dit", "cond"):
        block = nnx.clone(nets[name]).blocks[0]
        np.testing.assert_array_equal(_np(_call(block, x, cos, sin, c)), _np(x))   # gates are exactly 0
        block.ada.kernel[...] = jnp.asarray(RNG.normal(0, 0.3, block.ada.kernel[...].shape), jnp.float32)
        assert np.abs(_np(_call(block, x, cos, sin, c)) - _np(x)).max() > 1e-3   # the test can fail
    # Zero-initialised heads: both networks start from the uniform prediction.
    ids = jnp.asarray([[0, 5, 27, 26, 3]])
    np.testing.assert_array_equal(_np(_call(nets["dit"], ids, jnp.zeros(1))), 0.0)
    np.testing.assert_array_equal(_np(_call(nets["cond"], ids, jnp.full((1,), 0.5))), 0.0)


def np_layer_norm(x, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def test_ddit_block_matches_a_numpy_transcription(nets):
    d, h, cond, l = 16, 2, 8, 5
    block = nnx.clone(nets["dit"]).blocks[0]
    _randomize(block)
    x, c = RNG.normal(size=(2, l, d)), RNG.normal(size=(2, cond))
    w = lambda layer: _np(layer.kernel[...])
    bias = lambda layer: _np(layer.bias[...])
    mod = c @ w(block.ada) + bias(block.ada)
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = np.split(mod[:, None, :], 6, axis=-1)
    hx = np_layer_norm(x) * _np(block.norm1.weight[...]) * (1 + scale_a) + shift_a
    qkv = (hx @ w(block.attn_qkv)).reshape(2, l, 3, h, d // h)
    att = np_attention(np_mdlm_rope(qkv[:, :, 0]), np_mdlm_rope(qkv[:, :, 1]), qkv[:, :, 2]).reshape(2, l, d)
    x1 = x + gate_a * (att @ w(block.attn_out))
    hm = np_layer_norm(x1) * _np(block.norm2.weight[...]) * (1 + scale_m) + shift_m
    a = hm @ w(block.mlp_in) + bias(block.mlp_in)
    gelu = 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))
    ref = x1 + gate_m * (gelu @ w(block.mlp_out) + bias(block.mlp_out))
    cos, sin = _rope(l, d // h)
    ours = _call(block, jnp.asarray(x, jnp.float32), cos, sin, jnp.asarray(c, jnp.float32))   # no key: no dropout
    np.testing.assert_allclose(_np(ours), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_llama_block_matches_a_numpy_transcription(nets, causal):
    d, h, l = 16, 2, 6
    block = nnx.clone(nets["causal"]).blocks[0]   # RMSNorm block, SwiGLU
    _randomize(block)
    block.causal = causal
    x = RNG.normal(size=(2, l, d))
    w = lambda name: _np(getattr(block, name).kernel[...])
    rms = lambda v, s: v / np.sqrt(np.mean(v ** 2, -1, keepdims=True) + 1e-5) * s
    hx = rms(x, _np(block.attention_norm.scale[...]))
    split = lambda v: v.reshape(2, l, h, d // h)
    att = np_attention(np_md4_rope(split(hx @ w("wq"))), np_md4_rope(split(hx @ w("wk"))), split(hx @ w("wv")),
                       causal=causal)
    x1 = x + att.reshape(2, l, d) @ w("wo")
    hf = rms(x1, _np(block.ffn_norm.scale[...]))
    a = hf @ w("w1")
    ref = x1 + ((a / (1 + np.exp(-a))) * (hf @ w("w3"))) @ w("w2")
    cos, sin = _rope(l, d // h)
    ours = _call(block, jnp.asarray(x, jnp.float32), cos, sin, None)
    np.testing.assert_allclose(_np(ours), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_causal_attention_never_looks_ahead(nets, causal):
    net = nnx.clone(nets["causal"])
    _randomize(net)
    for block in net.blocks:
        block.causal = causal
    ids = jnp.asarray(RNG.integers(0, 27, (1, 10)))
    j = 6
    both = _call(net, jnp.concatenate([ids, ids.at[0, j].set((ids[0, j] + 1) % 27)]))
    diff = np.abs(_np(both[1]) - _np(both[0])).max(axis=-1)   # per position
    assert np.all(diff[j:] > 1e-4)                       # position j and later see the change
    if causal:
        np.testing.assert_array_equal(diff[:j], 0.0)     # earlier positions do not
    else:
        assert np.all(diff[:j] > 1e-4)                   # bidirectional: they do


def _str_keys(tree):
    return {str(k): _str_keys(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def test_scanned_stack_equals_the_unrolled_one(nets):
    from maskjax.models.scan import stack_layers

    flat = nnx.clone(nets["causal"])
    _randomize(flat)
    # Built abstractly (no random draws to compile), then filled with the unrolled model's stacked weights.
    scanned = nnx.eval_shape(lambda: llama.LlamaTransformer(
        28, 27, rngs=nnx.Rngs(1), feature_dim=8, heads=2, depth=4, causal=True, time_conditioning=False,
        outside_embed=False, scan_layers=True, remat="full"))
    nnx.update(scanned, stack_layers(_str_keys(nnx.to_pure_dict(nnx.state(flat, nnx.Param)))))
    ids = jnp.asarray(RNG.integers(0, 28, (2, 7)))
    np.testing.assert_allclose(_np(_call(scanned, ids)), _np(_call(flat, ids)), rtol=1e-5, atol=1e-5)


def test_dropout_is_per_example_and_off_without_keys(nets):
    net = nnx.clone(nets["dit"])                  # dropout 0.5
    _randomize(net)
    ids = jnp.asarray(RNG.integers(0, 28, (2, 6)))
    sigma = jnp.zeros(2)
    plain = _np(_call(net, ids, sigma))
    np.testing.assert_array_equal(_np(_call(net, ids, sigma)), plain)
    keys = jax.random.split(jax.random.key(0), 2)
    a = _np(_call(net, ids, sigma, dropout_keys=keys))
    assert np.abs(a - plain).max() > 1e-3
    # An example's dropout depends only on its own key: the same key gives the same output in another batch.
    b = _np(_call(net, ids[::-1], sigma, dropout_keys=keys[::-1]))
    np.testing.assert_allclose(a, b[::-1], rtol=1e-5, atol=1e-6)
