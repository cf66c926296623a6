"""Attention cores that ``maskjax.models.layers.attend`` can select besides ``jax.nn.dot_product_attention``.

``blockwise_attention`` is a memory-efficient (flash-attention style) softmax attention:

- the keys are visited in blocks with an online softmax (running max ``m`` and sum ``l``), so the
  full [B, H, T, T] score tensor is never materialised;
- a ``jax.custom_vjp`` backward recomputes each block's probabilities from the saved
  log-sum-exp instead of storing them, and uses ``delta = rowsum(dO * O)`` rather than a pass
  over the [T, T] probabilities (Dao, FlashAttention-2, Algorithms 1 and 2);
- the batch x heads axis is processed in chunks (``lax.map``) of about ``tile_bytes`` of float32
  scores, so peak memory stays bounded whatever B x H. The default (4 MiB) keeps the loop short
  (8 chunks for the ViT-S/16 MAE decoder's 256 batch-heads, 2 for the CIFAR recipe's 512): each
  op in the loop body is then large enough for XLA:CPU to spread over the cores, and the loop's
  per-iteration overhead is small (docs/performance.md, "Attention chunk size").

Sequences of any length work: blocks are balanced (197 tokens with 128-wide blocks become two
blocks of 99) and the padding of the last block gets zero probability.

``bhtd_attention`` is plain softmax attention computed in the [B, H, T, D] layout with the
1/sqrt(D) scale folded into q (one multiply of [T, D] instead of [T, T]).

``prescaled_attention`` is ``jax.nn.dot_product_attention`` with the same folding: JAX's XLA
lowering multiplies the [B, H, T, T] scores by the scale, which XLA:CPU materialises as a
broadcast constant of the scores' size in the forward and again in the backward pass.

All take [B, T, H, D] inputs like ``jax.nn.dot_product_attention`` (no mask, no dropout) and
return [B, T, H, D] in the inputs' dtype; scores, softmax and accumulators are float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 256
# Bytes of float32 scores per batch x heads chunk. 4 MiB, not a core's L2 (256 KiB, the earlier
# default): on the 2-core CPU of docs/performance.md the whole ViT-S/16 MAE train step ran about
# 9 % faster on two threads (benchmarks/step_ab.py), and within a few % on one core.
DEFAULT_TILE_BYTES = 4 * 1024 * 1024


def _f32_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def scale_queries(q: jax.Array) -> jax.Array:
    """q times the softmax scale 1/sqrt(D) (D = the last axis), in q's dtype: the scale applied to
    the queries rather than to the [T, T] scores, as every core of this module does."""
    return q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)


def bhtd_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Softmax attention in the [B, H, T, D] layout with the scale folded into q ([B, T, H, D] in and out)."""
    qh = scale_queries(q).transpose(0, 2, 1, 3)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    s = _f32_einsum("bhqd,bhkd->bhqk", qh, kh)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bqhd", p, vh)


def prescaled_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None,
                        implementation: str | None = None) -> jax.Array:
    """``jax.nn.dot_product_attention`` (optional boolean ``mask``) with the 1/sqrt(D) scale applied
    to q ([B, T, H, D]) instead of the [B, H, T, T] scores (XLA drops the remaining multiply by 1)."""
    return jax.nn.dot_product_attention(scale_queries(q), k, v, mask=mask, scale=1.0, implementation=implementation)


def balanced_block(length: int, max_block: int) -> int:
    """The smallest block size that covers ``length`` in as few blocks of at most ``max_block`` as possible."""
    n = -(-length // max_block)
    return -(-length // n)


def chunk_size(groups: int, target: int) -> int:
    """Rows of the batch x heads axis per chunk: a divisor of ``groups`` within a factor 2 of ``target``
    when there is one (no padding: padding costs a copy of q, k, v and of the results), else
    :func:`balanced_block`."""
    divisors = [c for c in range(max(1, target // 2), min(groups, 2 * target) + 1) if groups % c == 0]
    if divisors:
        return min(divisors, key=lambda c: max(c / target, target / c))
    return balanced_block(groups, target)


def _blocks(x: jax.Array, block: int) -> jax.Array:
    """[G, T, ...] -> [n, G, block, ...], zero-padding T up to a multiple of ``block``."""
    g, t = x.shape[:2]
    n = -(-t // block)
    if n * block != t:
        x = jnp.pad(x, ((0, 0), (0, n * block - t)) + ((0, 0),) * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((g, n, block) + x.shape[2:]), 1, 0)


def _unblocks(x: jax.Array, t: int) -> jax.Array:
    """Inverse of :func:`_blocks`: [n, G, block, ...] -> [G, T, ...]."""
    n, g, block = x.shape[:3]
    return jnp.moveaxis(x, 0, 1).reshape((g, n * block) + x.shape[3:])[:, :t]


def _key_bias(t: int, n: int, block: int) -> jax.Array:
    """[n, block] additive bias: 0 for real keys, a huge negative number for the last block's padding."""
    pos = jnp.arange(n * block).reshape(n, block)
    return jnp.where(pos < t, 0.0, -1e30).astype(jnp.float32)


def _forward(q, k, v, bq: int, bk: int):
    """Online-softmax forward on [G, T, D] with q pre-scaled: (out [G, Tq, D] f32, lse [G, Tq] f32)."""
    tq, tk = q.shape[1], k.shape[1]
    qb, kb, vb = _blocks(q, bq), _blocks(k, bk), _blocks(v, bk)
    bias = _key_bias(tk, kb.shape[0], bk)

    def one_query_block(qi):
        def step(carry, kvb):
            m, l, acc = carry
            kj, vj, bj = kvb
            s = _f32_einsum("gqd,gkd->gqk", qi, kj) + bj
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            corr = jnp.exp(m - m_new)
            l = l * corr + p.sum(-1)
            acc = acc * corr[..., None] + _f32_einsum("gqk,gkd->gqd", p.astype(vj.dtype), vj)
            return (m_new, l, acc), None

        shape = qi.shape[:-1]
        init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32),
                jnp.zeros(shape + (vb.shape[-1],), jnp.float32))
        if kb.shape[0] == 1:  # one key block: straight-line code, no loop
            (m, l, acc), _ = step(init, (kb[0], vb[0], bias[0]))
        else:
            (m, l, acc), _ = jax.lax.scan(step, init, (kb, vb, bias))
        return acc / l[..., None], m + jnp.log(l)

    if qb.shape[0] == 1:
        out, lse = one_query_block(qb[0])
        return out[:, :tq], lse[:, :tq]
    out, lse = jax.lax.map(one_query_block, qb)
    return _unblocks(out, tq), _unblocks(lse, tq)


def _backward(q, k, v, out, lse, dout, bq: int, bk: int):
    """Recomputing backward on [G, T, D] (q pre-scaled): (dq_scaled, dk, dv) in float32."""
    tq, tk = q.shape[1], k.shape[1]
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [G, Tq]
    qb, dob, lseb, deltab = _blocks(q, bq), _blocks(dout, bq), _blocks(lse, bq), _blocks(delta, bq)
    kb, vb = _blocks(k, bk), _blocks(v, bk)
    bias = _key_bias(tk, kb.shape[0], bk)

    def one_key_block(dq_acc, kvb):
        kj, vj, bj = kvb

        def step(carry, qblock):
            dk, dv = carry
            qi, doi, lsei, deltai = qblock
            p = jnp.exp(_f32_einsum("gqd,gkd->gqk", qi, kj) + bj - lsei[..., None])
            dv = dv + _f32_einsum("gqk,gqd->gkd", p.astype(doi.dtype), doi)
            ds = (p * (_f32_einsum("gqd,gkd->gqk", doi, vj) - deltai[..., None])).astype(qi.dtype)
            dk = dk + _f32_einsum("gqk,gqd->gkd", ds, qi)   # qi carries the scale already
            return (dk, dv), _f32_einsum("gqk,gkd->gqd", ds, kj)

        init = (jnp.zeros(kj.shape, jnp.float32), jnp.zeros(vj.shape, jnp.float32))
        if qb.shape[0] == 1:
            (dk, dv), dq_part = step(init, (qb[0], dob[0], lseb[0], deltab[0]))
            return dq_acc + dq_part[None], (dk, dv)
        (dk, dv), dq_parts = jax.lax.scan(step, init, (qb, dob, lseb, deltab))
        return dq_acc + dq_parts, (dk, dv)

    dq0 = jnp.zeros(qb.shape[:-1] + (q.shape[-1],), jnp.float32)
    if kb.shape[0] == 1:
        dqb, (dk, dv) = one_key_block(dq0, (kb[0], vb[0], bias[0]))
        dkb, dvb = dk[None], dv[None]
    else:
        dqb, (dkb, dvb) = jax.lax.scan(one_key_block, dq0, (kb, vb, bias))
    return _unblocks(dqb, tq), _unblocks(dkb, tk), _unblocks(dvb, tk)


def _map_chunks(fn, chunk: int, *arrays):
    """``fn`` over chunks of ``chunk`` rows of the leading (batch x heads) axis, padded; results concatenated."""
    g = arrays[0].shape[0]
    if chunk >= g:
        return fn(*arrays)
    n = -(-g // chunk)
    pad = lambda x: x if n * chunk == g else jnp.pad(x, ((0, n * chunk - g),) + ((0, 0),) * (x.ndim - 1))
    split = lambda x: pad(x).reshape((n, chunk) + x.shape[1:])
    out = jax.lax.map(lambda xs: fn(*xs), tuple(split(x) for x in arrays))
    return jax.tree.map(lambda y: y.reshape((n * chunk,) + y.shape[2:])[:g], out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _flash(q, k, v, bq, bk, chunk):
    return _flash_fwd(q, k, v, bq, bk, chunk)[0]


def _flash_fwd(q, k, v, bq, bk, chunk):
    out, lse = _map_chunks(lambda q, k, v: _forward(q, k, v, bq, bk), chunk, q, k, v)
    out = out.astype(q.dtype)
    return out, (q, k, v, out, lse)


def _flash_bwd(bq, bk, chunk, residuals, dout):
    q, k, v, out, lse = residuals
    dq, dk, dv = _map_chunks(lambda *a: _backward(*a, bq, bk), chunk, q, k, v, out, lse, dout)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_flash.defvjp(_flash_fwd, _flash_bwd)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, block_q: int = DEFAULT_BLOCK_Q,
                        block_k: int = DEFAULT_BLOCK_K, tile_bytes: int | None = None) -> jax.Array:
    """Memory-efficient softmax attention on [B, T, H, D] inputs (any T; no mask, no dropout).

    Equals ``jax.nn.dot_product_attention(q, k, v)`` in value and gradient. Scores live in tiles
    of at most ``block_q`` x ``block_k`` per batch-head; batch-heads are processed in chunks
    whose float32 tiles take about ``tile_bytes``, so peak memory is O(tile_bytes), not O(T^2).
    ``tile_bytes`` None reads the module's ``DEFAULT_TILE_BYTES`` when traced (which
    ``benchmarks/step_ab.py`` varies).
    """
    if tile_bytes is None:
        tile_bytes = DEFAULT_TILE_BYTES
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"blockwise_attention expects q [B, Tq, H, D] and k, v [B, Tk, H, D]; got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    if block_q < 1 or block_k < 1 or tile_bytes < 1:
        raise ValueError(f"block sizes and tile_bytes must be positive, got block_q={block_q}, "
                         f"block_k={block_k}, tile_bytes={tile_bytes}")
    b, tq, h, d = q.shape
    tk = k.shape[1]
    bq, bk = balanced_block(tq, block_q), balanced_block(tk, block_k)
    # Chunks of batch x heads whose score tiles take about tile_bytes (no chunk mostly padding).
    chunk = chunk_size(b * h, max(1, tile_bytes // (4 * bq * bk)))
    # [B, T, H, D] -> [B*H, T, D]: one leading "group" axis that the chunks split.
    to_g = lambda x: x.transpose(0, 2, 1, 3).reshape(b * h, x.shape[1], d)
    out = _flash(to_g(scale_queries(q)), to_g(k), to_g(v), bq, bk, chunk)
    return out.reshape(b, h, tq, d).transpose(0, 2, 1, 3)


# cuDNN's fused (flash) attention on bf16/fp16 inputs; head dims up to 256 on Hopper (128 before).
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 256


def cudnn_supports(dtype, head_dim: int) -> bool:
    """Whether ``jax.nn.dot_product_attention(implementation="cudnn")`` takes these inputs."""
    return jnp.dtype(dtype).name in CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                    implementation: str | None = "cudnn") -> jax.Array:
    """cuDNN fused attention on [B, T, H, D] inputs, for any sequence length.

    JAX's cuDNN path refuses odd lengths in training (it always passes a bias operand, and a
    biased backward needs even lengths), and the MAE decoder has 197 tokens. Odd lengths are
    padded by one position and the padded key is masked through ``key_value_seq_lengths``
    (cuDNN's padding mask); the padded query row is dropped. ``implementation`` is there so the
    padding can be checked against ``"xla"`` on machines without a GPU.
    """
    if implementation == "cudnn" and not cudnn_supports(q.dtype, q.shape[-1]):
        raise ValueError(
            f"attention_impl='cudnn' needs bfloat16 or float16 inputs with a head dim that is a multiple of 8 "
            f"and at most {CUDNN_MAX_HEAD_DIM}; got {jnp.dtype(q.dtype).name} with head dim {q.shape[-1]}. Set "
            f"compute_dtype=bfloat16, or model.attention_impl=xla")
    tq, tk = q.shape[1], k.shape[1]
    if tq % 2 == 0 and tk % 2 == 0:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    pad = lambda x: x if x.shape[1] % 2 == 0 else jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))
    lengths = lambda t: jnp.full((q.shape[0],), t, jnp.int32)
    out = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), query_seq_lengths=lengths(tq),
                                       key_value_seq_lengths=lengths(tk), implementation=implementation)
    return out[:, :tq]
