"""The attention cores of maskjax/models/attention.py against jax.nn.dot_product_attention and a
hand-written float64 NumPy softmax attention (values and gradients, odd lengths)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskjax.models.attention import balanced_block, bhtd_attention, blockwise_attention, prescaled_attention
from maskjax.models.layers import ATTENTION_IMPLS, attend


def _qkv(b, t, h, d, seed=0, tk=None):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, h, d), dtype=np.float32)
    k = rng.standard_normal((b, tk or t, h, d), dtype=np.float32)
    v = rng.standard_normal((b, tk or t, h, d), dtype=np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def _numpy_attention(q, k, v):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _xla_reference(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def _grads(fn, q, k, v, w):
    # A random cotangent: sum(out * w) makes every output element matter.
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2))(q, k, v)


# Lengths not divisible by the block (197 = ViT-B/16 tokens, 50 = its MAE encoder, 1568 = VideoMAE);
# small blocks make several query and key blocks, so the online softmax and the padding are exercised.
# tile_bytes small enough to split batch x heads into several (padded) chunks in some cases.
@pytest.mark.parametrize("b,t,h,d,block,tile", [(2, 197, 3, 16, 64, 40_000), (3, 50, 2, 8, 16, 2048),
                                                (1, 1568, 1, 8, 512, 2**20), (2, 7, 2, 4, 128, 2**20)])
def test_blockwise_matches_reference(b, t, h, d, block, tile):
    q, k, v = _qkv(b, t, h, d)
    fn = lambda q, k, v: blockwise_attention(q, k, v, block_q=block, block_k=block, tile_bytes=tile)
    out = jax.jit(fn)(q, k, v)
    np.testing.assert_allclose(out, _xla_reference(q, k, v), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out, _numpy_attention(q, k, v), atol=2e-5, rtol=1e-5)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape, dtype=np.float32))
    for got, want in zip(jax.jit(lambda *a: _grads(fn, *a, w))(q, k, v), _grads(_xla_reference, q, k, v, w)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_balanced_blocks():
    assert [balanced_block(t, 128) for t in (197, 50, 1568, 128, 129)] == [99, 50, 121, 128, 65]


def test_blockwise_cross_attention_lengths_and_rectangular_blocks():
    q, k, v = _qkv(2, 33, 2, 8, tk=21)
    out = blockwise_attention(q, k, v, block_q=8, block_k=5)
    np.testing.assert_allclose(out, _numpy_attention(q, k, v), atol=2e-5, rtol=1e-5)


def test_blockwise_never_materialises_full_scores():
    # With 64-wide blocks the largest float32 intermediate of the jitted forward+backward must be far
    # below one [B, H, T, T] score tensor (the point of the method).
    b, t, h, d = 1, 1024, 1, 8
    q, k, v = _qkv(b, t, h, d)
    w = jnp.ones((b, t, h, d))
    fn = lambda q, k, v: blockwise_attention(q, k, v, block_q=64, block_k=64)
    mem = lambda f: jax.jit(lambda *a: _grads(f, *a, w)).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
    assert mem(fn) < b * h * t * t * 4 / 4 < mem(_xla_reference)


def test_default_chunks_bound_memory_for_many_batch_heads():
    # 128 batch-heads of 512 tokens: the full float32 scores take 128 MiB; the default chunking
    # (DEFAULT_TILE_BYTES of scores per chunk) must keep the step's temporaries well below that
    # (about 19 MiB with jax 0.10.2 and 21 MiB with 0.12.1: a few score tiles, plus q/k/v-sized buffers).
    b, t, h, d = 32, 512, 4, 8
    q, k, v = _qkv(b, t, h, d)
    w = jnp.ones((b, t, h, d))
    temp = jax.jit(lambda *a: _grads(blockwise_attention, *a, w)).lower(q, k, v).compile().memory_analysis()
    full_scores = b * h * t * t * 4
    assert temp.temp_size_in_bytes < full_scores / 4


@pytest.mark.parametrize("core", [bhtd_attention, prescaled_attention], ids=["bhtd", "prescaled"])
def test_scale_folding_cores_match_reference(core):
    q, k, v = _qkv(2, 65, 4, 24)
    np.testing.assert_allclose(core(q, k, v), _numpy_attention(q, k, v), atol=2e-5, rtol=1e-5)
    w = jnp.ones(q.shape)
    for got, want in zip(_grads(core, q, k, v, w), _grads(_xla_reference, q, k, v, w)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_prescaled_attention_scales_no_score_tensor():
    # No multiply by the 1/sqrt(D) scale is left on a [B, H, T, T] tensor (forward or backward)
    # once XLA has optimised the step; JAX's own lowering has one in each direction.
    q, k, v = _qkv(2, 65, 4, 24)
    w = jnp.ones(q.shape)

    def score_scalings(fn):
        opt = jax.jit(lambda *a: _grads(fn, *a, w)).lower(q, k, v).compile().as_text()
        scale = f"{1 / np.sqrt(24):.6f}"[:7]   # 0.20412
        consts = {line.split(" = ")[0].strip() for line in opt.splitlines() if f"constant({scale}" in line}
        return [line for line in opt.splitlines() if "65,65]" in line and any(c + ")" in line or c + "," in line
                                                                                 for c in consts)]
    assert score_scalings(prescaled_attention) == []
    assert score_scalings(_xla_reference)


def test_blockwise_bfloat16_close_to_float32():
    q, k, v = _qkv(2, 50, 2, 16)
    out = blockwise_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), block_q=16, block_k=16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), _numpy_attention(q, k, v), atol=3e-2)


@pytest.mark.parametrize("impl", ["blockwise", "bhtd", "xla", None])
def test_attend_dispatch(impl):
    q, k, v = _qkv(1, 19, 2, 8)
    np.testing.assert_allclose(attend(q, k, v, impl), _numpy_attention(q, k, v), atol=2e-5, rtol=1e-5)


def test_attend_unknown_impl():
    q, k, v = _qkv(1, 4, 1, 4)
    with pytest.raises(ValueError, match="attention_impl"):
        attend(q, k, v, "flashy")
    assert {"blockwise", "bhtd", "xla", "cudnn"} <= set(ATTENTION_IMPLS)


def test_blockwise_bad_inputs():
    q, k, v = _qkv(1, 4, 1, 4)
    with pytest.raises(ValueError, match="must be positive"):
        blockwise_attention(q, k, v, block_q=0)
    with pytest.raises(ValueError, match="expects q"):
        blockwise_attention(q[0], k[0], v[0])


def test_cpu_default_is_blockwise_for_long_sequences():
    from maskjax.models.layers import CPU_BLOCKWISE_MIN_KEYS, default_attention_impl

    assert jax.default_backend() == "cpu"
    assert default_attention_impl(CPU_BLOCKWISE_MIN_KEYS) == "blockwise" and default_attention_impl(50) is None
    # The measured cases: the 197-token ViT-S/16 MAE decoder blockwise, the 65-token CIFAR one XLA.
    assert default_attention_impl(197) == "blockwise" and default_attention_impl(65) is None
    q, k, v = _qkv(1, CPU_BLOCKWISE_MIN_KEYS + 3, 1, 4)
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: attend(q, k, v))(q, k, v))
    assert "custom_vjp" in jaxpr  # the blockwise core
    np.testing.assert_allclose(attend(q, k, v), _numpy_attention(q, k, v), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("tq, tk", [(197, 197), (7, 7), (6, 9), (50, 50)])
def test_cudnn_wrapper_pads_odd_lengths_exactly(tq, tk):
    """The odd-length padding (one masked key, one dropped query) changes neither values nor
    gradients: checked through the same code path with XLA's kernel, since CI has no GPU."""
    from maskjax.models.attention import cudnn_attention

    keys = jax.random.split(jax.random.key(3), 4)
    q = jax.random.normal(keys[0], (2, tq, 3, 8))
    k, v = (jax.random.normal(kk, (2, tk, 3, 8)) for kk in keys[1:3])
    w = jax.random.normal(keys[3], (2, tq, 3, 8))
    ours = lambda q, k, v: cudnn_attention(q, k, v, implementation="xla")
    np.testing.assert_allclose(jax.jit(ours)(q, k, v), _numpy_attention(q, k, v), atol=2e-5, rtol=1e-5)
    # jitted: one compile per function instead of op-by-op dispatch (seconds of CI per case)
    g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(_xla_reference(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    g_ours = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_ours, g_ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_cudnn_refuses_what_it_cannot_run_with_a_clear_message():
    from maskjax.models.attention import cudnn_attention, cudnn_supports

    q, k, v = _qkv(1, 4, 1, 8)
    with pytest.raises(ValueError, match="compute_dtype=bfloat16"):
        cudnn_attention(q, k, v)  # float32
    assert cudnn_supports(jnp.bfloat16, 64) and cudnn_supports(jnp.float16, 256)
    assert not cudnn_supports(jnp.float32, 64) and not cudnn_supports(jnp.bfloat16, 12)
    assert not cudnn_supports(jnp.bfloat16, 264)


def test_gpu_default_is_cudnn_only_where_it_applies(monkeypatch):
    from maskjax.models import layers

    monkeypatch.setattr(layers, "on_cuda", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert layers.default_attention_impl(197, 32, jnp.bfloat16) == "cudnn"
    assert layers.default_attention_impl(197, 32, jnp.float32) is None      # cuDNN flash needs bf16/fp16
    assert layers.default_attention_impl(197, 12, jnp.bfloat16) is None     # head dim not a multiple of 8
    monkeypatch.setattr(layers, "on_cuda", lambda: False)                   # e.g. ROCm
    assert layers.default_attention_impl(197, 32, jnp.bfloat16) is None
