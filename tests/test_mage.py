"""MAGE: the mask-ratio sampler, the drop/mask split, the model against a numpy transcription of the
official forward pass, the masked-only loss, the detached tied MLM layer, features, sampling and a
resumed training run.

The references are independent transcriptions of LTH14/mage ``models_mage.py``
(``forward_encoder``, ``forward_decoder``, ``forward_loss``, timm's ``Block``) in float64 numpy and
``scipy.stats.truncnorm`` (the official ``mask_ratio_generator``).
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from flax import nnx

from maskjax.methods.mage import MAGE, drop_and_mask, masked_counts, num_dropped, truncnorm_rates
from maskjax.models.mage import fill_from_kept, mage_vocab

CONFIG = "configs/mage/cifar10.py"
K = 16   # codebook of the tiny configs


def _config(smoke=True, **overrides):
    from maskjax.config import apply_overrides, load_config

    c = load_config(f"{CONFIG}:smoke" if smoke else CONFIG)
    base = {"data.grid_size": 4, "data.codebook_size": K, "progress": False}
    base.update(overrides)
    apply_overrides(c, base)
    return c


# --- the mask ratio --------------------------------------------------------------------------------

def test_ratio_sampler_is_the_official_truncated_normal():
    official = scipy.stats.truncnorm((0.5 - 0.55) / 0.25, (1.0 - 0.55) / 0.25, loc=0.55, scale=0.25)
    rates = np.asarray(truncnorm_rates(jax.random.key(0), (200_000,)), np.float64)
    assert rates.min() >= 0.5 and rates.max() <= 1.0
    # The minimum 0.5 is reached: the density is highest there (mu = 0.55 sits near the lower bound).
    assert rates.min() < 0.5 + 1e-3
    mean, var = official.stats("mv")
    assert abs(float(mean) - 0.694) < 5e-4   # spec 10: "its mean is 0.694 (computed)"
    se = math.sqrt(float(var) / rates.size)
    assert abs(rates.mean() - float(mean)) < 4 * se
    assert abs(rates.var() - float(var)) < 0.02 * float(var)
    assert scipy.stats.kstest(rates, official.cdf).pvalue > 1e-3


def test_one_ratio_per_step_shared_by_every_split_of_the_batch():
    method = MAGE(_config())
    keys = jax.random.split(jax.random.key(1), 16)
    step = jnp.int32(7)
    rates_of = jax.jit(method.mask_rates)
    rates = np.asarray(rates_of(keys, step))
    assert np.all(rates == rates[0]) and 0.5 <= rates[0] <= 1.0
    # A micro-batch (gradient accumulation takes rows i, i + accum, ...) draws the same ratio.
    split = np.asarray(rates_of(jnp.concatenate([keys[1::4], keys[0::4], keys[2::4], keys[3::4]]), step))
    np.testing.assert_array_equal(split, rates)
    # Another step, another ratio; outside training the first example's key decides.
    assert float(rates_of(keys, jnp.int32(8))[0]) != float(rates[0])
    assert np.unique(np.asarray(jax.jit(lambda k: method.mask_rates(k, None))(keys))).size == 1
    # ratio_groups: that many independent ratios per step, each example taking one by its own key.
    grouped = MAGE(_config(**{"mage.ratio_groups": 4}))
    many = np.asarray(jax.jit(grouped.mask_rates)(jax.random.split(jax.random.key(2), 256), step))
    assert np.unique(many).size == 4 and many.min() >= 0.5


def _np_official_masks(noise, dropped, masked):
    """forward_encoder: ``noise <= sorted_noise[:, count - 1]`` for the drop and the mask counts."""
    sorted_noise = np.sort(noise, axis=1)
    return noise <= sorted_noise[:, dropped - 1:dropped], noise <= sorted_noise[:, masked - 1:masked]


def test_drop_and_mask_split_equals_the_official_and_counts():
    n = 256
    assert num_dropped(n, 0.5) == 128
    noise = np.random.default_rng(0).random((32, n)).astype(np.float32)
    for rate in (0.5, 0.5001, 0.694, 0.9, 1.0):
        count = int(np.ceil(n * rate))
        assert int(masked_counts(jnp.full((1,), rate), n, 0.5)[0]) == count
        drop, mask = drop_and_mask(jnp.asarray(noise), 128, jnp.full((32,), count))
        want_drop, want_mask = _np_official_masks(noise, 128, count)
        np.testing.assert_array_equal(np.asarray(drop), want_drop)
        np.testing.assert_array_equal(np.asarray(mask), want_mask)


def test_training_masks_and_encoder_inputs():
    method = MAGE(_config(**{"data.grid_size": 8}))
    n, b = 64, 2048
    assert (method.num_dropped, method.num_kept) == (32, 33)
    keys = jax.random.split(jax.random.key(3), b)
    dropped, masked, rates = map(np.asarray, jax.jit(method.training_masks)(keys, jnp.int32(5)))
    np.testing.assert_array_equal(dropped.sum(1), 32)
    np.testing.assert_array_equal(masked.sum(1), np.ceil(n * rates.astype(np.float64)).astype(int))
    assert not np.any(dropped & ~masked)                      # the dropped tokens are masked ones
    freq = dropped.mean(0)                                     # every position equally likely dropped
    assert np.all(np.abs(freq - 0.5) < 5 * math.sqrt(0.25 / b))
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, K, (b, n)), jnp.int32)
    ids, ids_keep, fill = map(np.asarray, jax.jit(method.encoder_inputs)(tokens, dropped, masked))
    fake, mask_id = method.fake_class_id, method.mask_id
    assert (method.vocab_size, fake, mask_id) == mage_vocab(K) == (K + 1001, K + 76, K + 1000)
    assert np.all(ids[:, 0] == fake) and np.all(ids[:, 1:][masked] == mask_id)
    np.testing.assert_array_equal(ids[:, 1:][~masked], np.asarray(tokens)[~masked])
    assert ids_keep.shape == (b, 33) and np.all(np.diff(ids_keep, axis=1) > 0) and np.all(ids_keep[:, 0] == 0)
    kept = np.concatenate([np.ones((b, 1), bool), ~dropped], 1)
    np.testing.assert_array_equal(np.take_along_axis(kept, ids_keep, 1), True)
    np.testing.assert_array_equal(fill, np.concatenate([np.zeros((b, 1), bool), masked], 1))


# --- the model against the official forward pass -------------------------------------------------------

def _np_ln(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def _np_gelu(x):   # torch.nn.GELU(): the exact erf form
    return 0.5 * x * (1.0 + scipy.special.erf(x / math.sqrt(2.0)))


def _np(v):
    return np.asarray(v[...], np.float64)


def _np_block(x, blk, heads):
    """timm Block (eval): x + proj(softmax(q k^T scale) v) then x + fc2(gelu(fc1(ln(x))))."""
    b, n, c = x.shape
    h = _np_ln(x, _np(blk.norm1.scale), _np(blk.norm1.bias), 1e-6)
    qkv = (h @ _np(blk.attn.qkv.kernel) + _np(blk.attn.qkv.bias)).reshape(b, n, 3, heads, c // heads)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    attn = q @ k.swapaxes(-2, -1) * (c // heads) ** -0.5
    attn = np.exp(attn - attn.max(-1, keepdims=True))
    attn = attn / attn.sum(-1, keepdims=True)
    y = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
    x = x + y @ _np(blk.attn.proj.kernel) + _np(blk.attn.proj.bias)
    h = _np_ln(x, _np(blk.norm2.scale), _np(blk.norm2.bias), 1e-6)
    h = _np_gelu(h @ _np(blk.mlp.fc1.kernel) + _np(blk.mlp.fc1.bias))
    return x + h @ _np(blk.mlp.fc2.kernel) + _np(blk.mlp.fc2.bias)


def np_official_forward(model, token_indices, token_drop_mask, token_all_mask, heads, decoder_heads):
    """models_mage.py forward_encoder (from the masked ids on) and forward_decoder, eval mode.

    ``token_indices`` [B, 1+N] (fake class first, [MASK] ids in place); the masks [B, 1+N] with the
    class column 0, as the official after its torch.cat.
    """
    emb = model.encoder.token_emb
    x = _np(emb.word_embeddings)[token_indices] + _np(emb.position_embeddings)[None, :token_indices.shape[1]]
    x = _np_ln(x, _np(emb.norm.scale), _np(emb.norm.bias), 1e-6)
    bsz, _, dim = x.shape
    x = x[np.nonzero(1 - token_drop_mask)].reshape(bsz, -1, dim)        # input_embeddings_after_drop
    for blk in model.encoder.blocks:
        x = _np_block(x, blk, heads)
    x = _np_ln(x, _np(model.encoder.norm.scale), _np(model.encoder.norm.bias), 1e-6)
    # forward_decoder
    x = x @ _np(model.decoder_embed.kernel) + _np(model.decoder_embed.bias)
    mask_tokens = np.repeat(x[:, 0:1], token_all_mask.shape[1], axis=1)
    x_after_pad = mask_tokens.copy()
    x_after_pad[np.nonzero(1 - token_drop_mask)] = x.reshape(x.shape[0] * x.shape[1], x.shape[2])
    x_after_pad = np.where(token_all_mask[..., None].astype(bool), mask_tokens, x_after_pad)
    x = x_after_pad + _np(model.decoder_pos_embed_learned)
    for blk in model.decoder_blocks:
        x = _np_block(x, blk, decoder_heads)
    x = _np_ln(x, _np(model.decoder_norm.scale), _np(model.decoder_norm.bias), 1e-6)
    mlm = model.mlm_layer
    h = _np_gelu(x @ _np(mlm.fc.kernel) + _np(mlm.fc.bias))
    h = _np_ln(h, _np(mlm.ln.scale), _np(mlm.ln.bias), 1e-5)            # nn.LayerNorm default eps
    return h @ _np(emb.word_embeddings).T + _np(mlm.bias)


def np_official_loss(gt_indices, logits, mask, codebook, smoothing=0.1):
    """forward_loss with LabelSmoothingCrossEntropy(0.1)."""
    z = logits[:, 1:, :codebook]
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, gt_indices[..., None], -1)[..., 0]
    loss = (1 - smoothing) * nll + smoothing * (-logp.mean(-1))
    return (loss * mask[:, 1:]).sum() / mask[:, 1:].sum()


def _tiny_model(method, seed=0):
    """The method's model with random weights around the official init's scale (LayerNorm scales
    around 1), written from numpy into an abstract build: no init program to compile."""
    model = nnx.eval_shape(lambda: method.build(nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            value = 0.2 * rng.standard_normal(var.shape)
            var.set_value(jnp.asarray(value + (path[-1] == "scale"), jnp.float32))
    return model


# Encoder width 32 (2 heads, 2 blocks), decoder width 48 (4 heads, 1 block): the MLM layer maps 48 -> 32.
MODEL_OVERRIDES = {"model.width": 32, "model.heads": 2, "model.depth": 2, "model.decoder_width": 48,
                   "model.decoder_heads": 4, "model.decoder_depth": 1}


def test_model_equals_a_transcription_of_the_official_forward_and_loss():
    method = MAGE(_config(**MODEL_OVERRIDES))
    model = _tiny_model(method)
    b, n = 5, method.num_tokens
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, K, (b, n)), jnp.int32)
    keys = jax.random.split(jax.random.key(6), b)
    batch = {"tokens": tokens, "label": jnp.zeros(b, jnp.int32)}
    seen = {}

    def recording_model(ids, ids_keep, fill, dropout_keys=None):
        seen.update(ids=ids, ids_keep=ids_keep, fill=fill, logits=model(ids, ids_keep, fill, dropout_keys=dropout_keys))
        return seen["logits"]

    @jax.jit
    def run(keys):
        loss, _ = method.loss(recording_model, batch, keys, train=False, step=jnp.int32(0))
        # The same masked sequence through gen_img_uncond.py's forward (nothing dropped).
        gen_logits = model.generation_logits(seen["ids"], method.mask_id)
        return loss, seen["ids"], seen["ids_keep"], seen["fill"], seen["logits"], gen_logits

    loss, ids, ids_keep, fill, logits, gen_logits = map(np.asarray, run(keys))
    assert ids_keep.shape == (b, method.num_kept) and logits.shape == (b, n + 1, method.vocab_size)
    # The official masks: token_drop_mask (not among the encoder's positions) and token_all_mask.
    drop = np.ones((b, n + 1))
    np.put_along_axis(drop, ids_keep, 0.0, axis=1)
    all_mask = fill.astype(np.float64)
    assert np.all(all_mask[:, 1:].sum(1) >= method.num_dropped) and not np.any(drop * (1 - all_mask))
    want = np_official_forward(model, ids, drop, all_mask, 2, 4)
    np.testing.assert_allclose(logits, want, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(float(loss), np_official_loss(np.asarray(tokens), want, all_mask, K), rtol=1e-4)
    # The generation forward (gen_img_uncond.py): nothing dropped, the [MASK] positions padded.
    gen_mask = (ids == method.mask_id).astype(np.float64)
    np.testing.assert_allclose(gen_logits, np_official_forward(model, ids, np.zeros_like(gen_mask), gen_mask, 2, 4),
                               rtol=2e-4, atol=2e-4)


def test_decoder_input_is_the_class_output_at_masked_positions():
    rng = np.random.default_rng(7)
    b, length, k = 3, 9, 5
    drop = np.zeros((b, length)); masked = np.zeros((b, length))
    for i in range(b):
        order = rng.permutation(np.arange(1, length))
        drop[i, order[:length - k]] = 1
        masked[i, order[:length - k + i]] = 1                  # i masked-but-kept tokens in row i
    x = rng.standard_normal((b, k, 4))
    ids_keep = np.stack([np.nonzero(1 - d)[0] for d in drop])
    got = np.asarray(fill_from_kept(jnp.asarray(x), jnp.asarray(ids_keep), jnp.asarray(masked.astype(bool)),
                                    jnp.asarray(x[:, :1])))
    want = np.repeat(x[:, :1], length, 1)
    want[np.nonzero(1 - drop)] = x.reshape(-1, 4)
    want = np.where(masked[..., None].astype(bool), np.repeat(x[:, :1], length, 1), want)
    np.testing.assert_allclose(got, want)


# --- loss, tied head, features ---------------------------------------------------------------------

def test_loss_counts_only_masked_tokens():
    method = MAGE(_config())
    b, n, v = 6, method.num_tokens, method.vocab_size
    rng = np.random.default_rng(8)
    tokens = jnp.asarray(rng.integers(0, K, (b, n)), jnp.int32)
    keys = jax.random.split(jax.random.key(9), b)
    base = rng.standard_normal((b, n + 1, v)).astype(np.float32)
    seen = []

    def fake_model(logits):
        def model(ids, ids_keep, fill, dropout_keys=None):
            seen.append(fill)
            return logits
        return model

    @jax.jit
    def loss_of(logits):
        seen.clear()
        loss, _ = method.loss(fake_model(logits), {"tokens": tokens, "label": jnp.zeros(b, jnp.int32)}, keys,
                              train=False, step=jnp.int32(1))
        return loss, seen[0]

    loss, fill = loss_of(base)
    hidden = np.asarray(fill)[:, 1:]
    other = base.copy()
    visible = np.concatenate([np.ones((b, 1), bool), ~hidden], 1)
    other[visible] = 100.0 * rng.standard_normal((visible.sum(), v))
    other[:, :, K:] = 50.0                                    # non-codebook columns never count
    np.testing.assert_allclose(float(loss_of(other)[0]), float(loss), rtol=1e-6)
    i, j = np.argwhere(hidden)[0]
    moved = base.copy()
    moved[i, 1 + j, :K] += 5.0 * rng.standard_normal(K)
    assert abs(float(loss_of(moved)[0]) - float(loss)) > 1e-4
    all_mask = np.concatenate([np.zeros((b, 1)), hidden], 1)
    ref = np_official_loss(np.asarray(tokens), base.astype(np.float64), all_mask, K)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_mlm_layer_is_tied_to_the_embedding_and_detached():
    method = MAGE(_config(**MODEL_OVERRIDES))
    model = _tiny_model(method, seed=1)
    b, length = 3, method.num_tokens + 1
    latent = jax.random.normal(jax.random.key(12), (b, method.num_kept, 32))
    ids_keep = jnp.broadcast_to(jnp.arange(method.num_kept), (b, method.num_kept))
    fill = jnp.zeros((b, length), bool).at[:, method.num_kept:].set(True)
    weights = jax.random.normal(jax.random.key(13), (b, length, method.vocab_size))
    graphdef, params = nnx.split(model, nnx.Param)

    drop_keys = jax.random.split(jax.random.key(14), b)

    def decoded(p):   # the decoder in training mode (dropout on): everything after the encoder
        out = nnx.merge(graphdef, p).decode(latent, ids_keep, fill, dropout_keys=drop_keys)
        return jnp.sum(out * weights), out

    value_and_grad = jax.jit(jax.value_and_grad(decoded, has_aux=True))
    (_, logits), grads = value_and_grad(params)
    grads = nnx.to_pure_dict(grads)
    # Detached: nothing flows back into the embedding table through the head...
    assert np.all(np.asarray(grads["encoder"]["token_emb"]["word_embeddings"]) == 0.0)
    assert np.abs(np.asarray(grads["mlm_layer"]["fc"]["kernel"])).sum() > 0
    assert np.abs(np.asarray(grads["decoder_embed"]["kernel"])).sum() > 0
    # ...while the head reads it (tied): a changed row changes exactly that logit column.
    table = nnx.to_pure_dict(params)["encoder"]["token_emb"]["word_embeddings"]
    params["encoder"]["token_emb"]["word_embeddings"].set_value(table.at[9].multiply(2.0))
    after = np.asarray(value_and_grad(params)[0][1])   # same program: no second compile
    assert np.abs(after[..., 9] - np.asarray(logits)[..., 9]).max() > 1e-3
    np.testing.assert_allclose(after[..., 10], np.asarray(logits)[..., 10], atol=1e-5)


def test_features_are_the_official_probe_inputs():
    method = MAGE(_config(**MODEL_OVERRIDES))
    model = _tiny_model(method, seed=2)
    tokens = jnp.asarray(np.random.default_rng(12).integers(0, K, (6, method.num_tokens)), jnp.int32)
    feats, cls = map(np.asarray, jax.jit(lambda t: (method.features(model, {"tokens": t}),
                                                    method.features(model, t, pool="cls")))(tokens))
    assert feats.shape == (6, 32) and method.feature_name().startswith("global-pool")
    # Global pool + a LayerNorm frozen at (1, 0): zero mean, unit variance per example.
    np.testing.assert_allclose(feats.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(feats.var(1), 1.0, rtol=1e-3)
    ids = np.concatenate([np.full((6, 1), method.fake_class_id), np.asarray(tokens)], 1)
    pooled = np_official_forward_encoder_blocks(model, ids, 2)[:, 1:].mean(1)
    np.testing.assert_allclose(feats, _np_ln(pooled, 1.0, 0.0, 1e-6), rtol=1e-3, atol=1e-3)
    assert cls.shape == (6, 32) and not np.allclose(cls, feats)
    with pytest.raises(ValueError, match="pool"):
        method.features(model, tokens, pool="max")


def np_official_forward_encoder_blocks(model, ids, heads):
    """models_vit_mage.py forward_features up to the blocks (no masking, no final norm)."""
    emb = model.encoder.token_emb
    x = _np(emb.word_embeddings)[ids] + _np(emb.position_embeddings)[None, :ids.shape[1]]
    x = _np_ln(x, _np(emb.norm.scale), _np(emb.norm.bias), 1e-6)
    for blk in model.encoder.blocks:
        x = _np_block(x, blk, heads)
    return x


# --- sampling, registry, training ----------------------------------------------------------------------

def test_sample_tokens_generates_grids_and_keeps_given_tokens():
    method = MAGE(_config(**{"model.depth": 1}))
    model = _tiny_model(method)
    grids = np.asarray(method.sample(model, jax.random.key(0), 3))
    assert grids.shape == (3, 4, 4) and grids.min() >= 0 and grids.max() < K
    start = np.asarray(np.random.default_rng(13).integers(0, K, (3, 4, 4)), np.int32)   # same shape: one compile
    start[:, :2] = method.mask_id
    edited = np.asarray(method.sample_tokens(model, jax.random.key(1), start_tokens=jnp.asarray(start), num_steps=4))
    np.testing.assert_array_equal(edited[:, 2:], start[:, 2:])
    assert edited.max() < K


def test_registry_flops_and_config_checks():
    from maskjax.methods import known_methods
    from maskjax.train.validate import validate_config

    assert "mage" in known_methods()
    method = MAGE(_config())
    # Smoke model: encoder 2 blocks of 32 on 1 + 16 - 8 = 9 tokens, decoder 1 block of 32 on 17.
    layer = lambda t, w: 2 * t * w * 4 * w + 2 * (2 * t * t * w) + 2 * (2 * t * w * 4 * w)
    parts = method.flops(4).parts
    assert parts["encoder"] == 4 * 2 * layer(9, 32) and parts["decoder"] == 4 * layer(17, 32)
    assert parts["mlm_head"] == 4 * (2 * 17 * 32 * 32 + 2 * 17 * 32 * (K + 1001))
    bad = _config(**{"mage.mask_ratio_min": 0.8, "mage.mask_ratio_max": 0.6, "mage.feature_pool": "max"})
    with pytest.raises(ValueError, match="mask_ratio_min") as err:
        validate_config(bad)
    assert "feature_pool" in str(err.value)


def _losses(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


# Three runs through the trainer (compiling the step cold dominates): -m slow keeps the default
# run of this file short.
@pytest.mark.slow
def test_training_through_the_trainer_resumes_exactly(tmp_path):
    from maskjax.train.loop import train

    def config():
        return _config(**{"total_steps": 4, "checkpoint.every_steps": 2, "mesh.data": 8, "mesh.fsdp": 1,
                          "model.depth": 1})

    straight = train(config(), str(tmp_path / "straight"), run_evals=False)
    assert straight.step == 4
    train(config(), str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    train(config(), str(tmp_path / "split"), run_evals=False)
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert all(np.isfinite(list(a.values())))
    np.testing.assert_allclose([b[s] for s in range(1, 5)], [a[s] for s in range(1, 5)], rtol=1e-6)
