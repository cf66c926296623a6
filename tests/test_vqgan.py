"""The VQGAN tokenizer: quantizers against numpy references and exact properties, the GAN's gradient
separation and R1, the networks' shapes, training through the trainer, and ``tokenize-images``."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.config import apply_overrides, load_config
from maskjax.methods import make_method, method_class
from maskjax.models.vqgan import Decoder, Discriminator, Encoder
from maskjax.objectives import quantizers as qz

CIFAR = "configs/vqgan/cifar10.py"


def tiny_config(quantizer="vq", gan=False, image_size=16, **overrides):
    """The CIFAR recipe's smoke run with a micro model (seconds to compile)."""
    config = load_config(f"{CIFAR}:smoke,quantizer={quantizer}" + (",gan" if gan else ""))
    base = {"data.image_size": image_size, "vqgan.filters": 4, "vqgan.channel_multipliers": (1, 2),
            "vqgan.embedding_dim": 4, "vqgan.codebook_size": 16, "vqgan.norm_groups": 2,
            "vqgan.disc_max_channels": 4, "vqgan.gan_start_step": 0, "vqgan.fsq_levels": (3, 4, 2)}
    base.update(overrides)
    apply_overrides(config, base)
    return config


def numpy_built(make, seed=0):
    """``make()``'s module with every float variable drawn by numpy (scaled by 1/sqrt(fan-in)).

    Eager NNX initialisation compiles each initializer's primitives for each parameter shape, a
    minute of CPU on a cold cache; these tests need plausible weights, not the recipe's init (the
    trainer's jitted init is exercised by the slow training test).
    """
    graphdef, state = nnx.split(nnx.eval_shape(make))
    rng = np.random.RandomState(seed)

    def fill(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.zeros(x.shape, x.dtype)
        fan_in = max(1, int(np.prod(x.shape[:-1])))
        return jnp.asarray(rng.randn(*x.shape) / math.sqrt(fan_in), x.dtype)

    return nnx.merge(graphdef, jax.tree.map(fill, state))


def images(n=4, size=16, seed=0):
    """Pipeline-normalised random images."""
    return jnp.asarray(np.random.RandomState(seed).randn(n, size, size, 3), jnp.float32)


# --- VQ --------------------------------------------------------------------------------------------

def test_vq_picks_the_nearest_code_and_returns_it():
    rng = np.random.RandomState(0)
    z, book = rng.randn(3, 5, 6).astype(np.float32), rng.randn(11, 6).astype(np.float32)
    out = qz.vq_quantize(jnp.asarray(z), jnp.asarray(book))
    brute = ((z[..., None, :] - book) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(np.asarray(out.ids), brute)
    np.testing.assert_allclose(np.asarray(out.quantized), book[brute], rtol=1e-5, atol=1e-5)


def test_straight_through_gradient_is_the_identity():
    rng = np.random.RandomState(1)
    z, book, w = rng.randn(4, 3), rng.randn(7, 3), rng.randn(4, 3)
    grad = jax.grad(lambda z: jnp.sum(qz.vq_quantize(z, jnp.asarray(book, jnp.float32)).quantized * w))(
        jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), w, rtol=1e-6)


def test_commitment_and_codebook_losses_by_hand():
    z = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
    book = jnp.asarray([[0.0, 0.0], [1.0, 1.0]])
    # Nearest: z0=(1,0) -> e0 (d 1) or e1 (d 1): a tie, argmin takes e0; z1=(0,2) -> e1 (d 2) vs e0 (d 4).
    out = qz.vq_quantize(z, book, commitment_cost=0.25)
    np.testing.assert_array_equal(np.asarray(out.ids), [0, 1])
    sq = (1.0 + 0.0 + 1.0 + 1.0) / 4          # mean over 2 x 2 entries of (q - z)^2
    assert float(out.losses["q_latent_loss"]) == pytest.approx(sq)
    assert float(out.losses["e_latent_loss"]) == pytest.approx(0.25 * sq)
    assert float(out.losses["quantizer_loss"]) == pytest.approx(1.25 * sq)
    # The codebook term moves the codes towards their latents; the commitment term moves the latents.
    g_book = jax.grad(lambda b: qz.vq_quantize(z, b).losses["quantizer_loss"])(book)
    np.testing.assert_allclose(np.asarray(g_book), 2 * np.asarray([[-1.0, 0.0], [1.0, -1.0]]) / 4, rtol=1e-6)
    g_z = jax.grad(lambda z: qz.vq_quantize(z, book).losses["quantizer_loss"])(z)
    np.testing.assert_allclose(np.asarray(g_z), 0.25 * 2 * np.asarray([[1.0, 0.0], [-1.0, 1.0]]) / 4, rtol=1e-6)


def np_entropy_loss(affinity, temperature):
    """A numpy transcription of maskgit ``losses.entropy_loss(loss_type="softmax")``."""
    a = affinity.reshape(-1, affinity.shape[-1]).astype(np.float64) / temperature
    def log_softmax(v):
        v = v - v.max(-1, keepdims=True)
        return v - np.log(np.exp(v).sum(-1, keepdims=True))
    probs = np.exp(log_softmax(a))
    log_probs = log_softmax(a + 1e-5)
    avg = probs.mean(0)
    return -np.mean(np.sum(probs * log_probs, -1)) + np.sum(avg * np.log(avg + 1e-5))


def test_entropy_loss_matches_a_numpy_transcription():
    rng = np.random.RandomState(2)
    affinity = rng.randn(2, 9, 13).astype(np.float32)
    got = qz.entropy_loss(jnp.asarray(affinity), "softmax", temperature=0.5)
    assert float(got) == pytest.approx(np_entropy_loss(affinity, 0.5), rel=1e-4, abs=1e-5)
    out = qz.vq_quantize(jnp.asarray(rng.randn(4, 3), jnp.float32), jnp.asarray(rng.randn(5, 3), jnp.float32),
                         entropy_loss_ratio=0.1, entropy_temperature=0.01)
    assert float(out.losses["quantizer_loss"]) == pytest.approx(
        float(out.losses["e_latent_loss"] + out.losses["q_latent_loss"] + out.losses["entropy_loss"]), rel=1e-6)


# --- EMA VQ ----------------------------------------------------------------------------------------

def np_ema_update(state, z, ids, decay, eps):
    """Sonnet ``VectorQuantizerEMA`` (zero-debiased ``assign_moving_average``, Laplace smoothing) in numpy,
    with maskjax's one change: a code never assigned keeps its vector."""
    k = state["codebook"].shape[0]
    onehot = np.eye(k)[ids]
    hidden_n = decay * state["n"] + (1 - decay) * onehot.sum(0)
    hidden_m = decay * state["m"] + (1 - decay) * onehot.T @ z
    t = state["t"] + 1
    n_avg, m_avg = hidden_n / (1 - decay ** t), hidden_m / (1 - decay ** t)
    total = n_avg.sum()
    smoothed = (n_avg + eps) / (total + k * eps) * total
    book = np.where((hidden_n > 0)[:, None], m_avg / smoothed[:, None], state["codebook"])
    return {"codebook": book, "n": hidden_n, "m": hidden_m, "t": t}


def test_ema_update_matches_sonnet_transcription_over_several_steps():
    rng = np.random.RandomState(3)
    k, d, decay, eps = 6, 3, 0.9, 1e-5
    ref = {"codebook": rng.randn(k, d), "n": np.zeros(k), "m": np.zeros((k, d)), "t": 0}
    state = {"ema_codebook": jnp.asarray(ref["codebook"], jnp.float32), "ema_count": jnp.zeros(k),
             "ema_sum": jnp.zeros((k, d)), "ema_updates": jnp.zeros((), jnp.int32)}

    @jax.jit
    def step(state, z):
        out = qz.ema_vq_quantize(z, state["ema_codebook"], commitment_cost=0.25)
        return out, qz.ema_codebook_update(state, out.stats["frequency"], out.stats["mean_sum"], 10, decay, eps)

    for _ in range(3):
        z = rng.randn(10, d).astype(np.float32) + 0.5
        out, new_state = step(state, jnp.asarray(z))
        ids = np.asarray(out.ids)
        np.testing.assert_array_equal(ids, ((z[:, None] - np.asarray(state["ema_codebook"])) ** 2).sum(-1).argmin(-1))
        np.testing.assert_allclose(np.asarray(out.stats["frequency"]), np.bincount(ids, minlength=k) / 10, rtol=1e-6)
        state = new_state
        ref = np_ema_update(ref, z.astype(np.float64), ids, decay, eps)
        np.testing.assert_allclose(np.asarray(state["ema_codebook"]), ref["codebook"], rtol=1e-4, atol=1e-5)
    assert int(state["ema_updates"]) == 3
    # The codebook gets no gradient; only the commitment term trains the encoder.
    loss = lambda z, b: qz.ema_vq_quantize(z, b).losses["quantizer_loss"]  # noqa: E731
    assert float(jnp.abs(jax.grad(loss, argnums=1)(jnp.asarray(z), state["ema_codebook"])).sum()) == 0.0


# --- FSQ -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (3, 4, 2), (2,), (7, 6)])
def test_fsq_index_round_trip_over_every_code(levels):
    size = qz.fsq_codebook_size(levels)
    ids = jnp.arange(size)
    codes = qz.fsq_indices_to_codes(ids, levels)
    np.testing.assert_array_equal(np.asarray(qz.fsq_codes_to_indices(codes, levels)), np.arange(size))
    # Every level combination is one code: the grid products enumerate the ids exactly once.
    half = np.asarray(levels) // 2
    grid = np.asarray(list(itertools.product(*[range(n) for n in levels])), np.float32)
    grid_codes = (grid - half) / half
    found = np.asarray(qz.fsq_codes_to_indices(jnp.asarray(grid_codes), levels))
    assert sorted(found.tolist()) == list(range(size))
    assert len({tuple(c) for c in np.asarray(codes).round(6).tolist()}) == size


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (3, 4, 2)])
def test_fsq_values_lie_on_the_grid_inside_the_bound(levels):
    z = jnp.asarray(np.random.RandomState(4).randn(2000, len(levels)) * 4, jnp.float32)
    out = qz.fsq_quantize(z, levels)
    half = np.asarray(levels) // 2
    scaled = np.asarray(out.quantized) * half
    np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-5)
    assert np.all(np.asarray(out.quantized) >= -1.0) and np.all(np.asarray(out.quantized) <= 1.0)
    for j, n in enumerate(levels):   # all L values of each channel are reached, and no more
        assert len(np.unique(np.round(scaled[:, j]))) == n
    np.testing.assert_array_equal(np.asarray(out.ids), np.asarray(qz.fsq_codes_to_indices(out.quantized, levels)))
    np.testing.assert_allclose(np.asarray(qz.fsq_indices_to_codes(out.ids, levels)), np.asarray(out.quantized),
                               atol=1e-6)
    # Straight-through rounding: the gradient is the bound's, d/dz tanh(z + shift) * half_l / (L // 2).
    lv = np.asarray(levels, np.float64)
    half_l, offset = (lv - 1) * (1 - 1e-3) / 2, np.where(lv % 2 == 1, 0.0, 0.5)
    zz = np.asarray(z[:5], np.float64)
    expected = (1 - np.tanh(zz + np.tan(offset / half_l)) ** 2) * half_l / half
    grad = jax.grad(lambda v: jnp.sum(qz.fsq_quantize(v, levels).quantized))(z[:5])
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-6)


# --- metrics ---------------------------------------------------------------------------------------

def test_usage_and_perplexity_by_hand():
    assert float(qz.codebook_usage(jnp.asarray([0, 0, 1, 1]), 4)) == 0.5
    assert float(qz.perplexity(jnp.asarray([0, 0, 1, 1]), 4)) == pytest.approx(2.0)
    assert float(qz.perplexity(jnp.asarray([3, 3, 3]), 8)) == pytest.approx(1.0)
    assert float(qz.codebook_usage(jnp.asarray([3, 3, 3]), 8)) == 1 / 8
    assert float(qz.perplexity(jnp.arange(16) % 8, 8)) == pytest.approx(8.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2
    assert float(qz.perplexity(jnp.asarray([[0, 0], [1, 2]]), 5)) == pytest.approx(2 ** 1.5, rel=1e-6)


# --- GAN -------------------------------------------------------------------------------------------

def test_r1_penalty_by_hand():
    from maskjax.methods.vqgan import r1_penalty

    a = jnp.asarray([1.0, -2.0, 0.5])
    x = jnp.asarray(np.random.RandomState(5).randn(4, 3), jnp.float32)
    logits, pen = r1_penalty(lambda v: (v * a).sum(-1, keepdims=True), x, 10.0)
    assert float(pen) == pytest.approx(10.0 * (1 + 4 + 0.25))           # the gradient is a for every example
    np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(x @ a), rtol=1e-6)
    _, pen = r1_penalty(lambda v: (v ** 2).sum(-1, keepdims=True), x, 2.0)
    assert float(pen) == pytest.approx(2.0 * float(jnp.mean(jnp.sum(4 * x ** 2, -1))), rel=1e-5)


def test_each_gan_player_moves_only_its_own_parameters():
    config = tiny_config("vq", gan=True, image_size=8)
    method = make_method(config)
    disc = numpy_built(lambda: Discriminator(8, max_channels=4, rngs=nnx.Rngs(0)))
    graphdef, dparams = nnx.split(disc, nnx.Param)
    real, fake = images(2, 8, seed=1), images(2, 8, seed=2)   # fake: what the generator's parameters produce
    w = config.vqgan.gan_weight

    def terms(dparams, fake):
        total, m = method.gan_terms(nnx.merge(graphdef, dparams), real, fake, jnp.int32(1))
        assert_close = w * m["g_loss"] + m["d_loss"] + m["r1_penalty"]   # step 1 >= gan_start_step 0: all on
        return jnp.stack([w * m["g_loss"], m["d_loss"] + m["r1_penalty"], total, total - assert_close])

    jac_d, jac_fake = jax.jit(jax.jacrev(terms, argnums=(0, 1)))(dparams, fake)
    jac_d = [np.asarray(v) for v in jax.tree.leaves(jac_d)]
    jac_fake = np.asarray(jac_fake)
    assert float(jnp.abs(jax.jit(terms)(dparams, fake)[3])) < 1e-6   # total = w * g + d + r1
    norm = lambda arrays, row: math.sqrt(sum(float((a[row] ** 2).sum()) for a in arrays))  # noqa: E731
    assert norm(jac_d, 0) == 0.0 and norm([jac_fake], 0) > 0   # the generator's term reaches only the generator
    assert norm([jac_fake], 1) == 0.0 and norm(jac_d, 1) > 0   # D's loss and R1 reach only D
    # The total moves each player exactly by its own loss.
    np.testing.assert_allclose(jac_fake[2], jac_fake[0], rtol=1e-5, atol=1e-8)
    for a in jac_d:
        np.testing.assert_allclose(a[2], a[1], rtol=1e-5, atol=1e-8)


# --- networks and method ---------------------------------------------------------------------------

@pytest.mark.parametrize("mults,factor", [((1, 2), 2), ((1, 1, 2, 2, 4), 16)])
def test_encoder_decoder_shapes_for_two_downsampling_factors(mults, factor):
    kw = dict(filters=4, multipliers=mults, num_res_blocks=1, embedding_dim=5, norm_groups=2)
    enc = nnx.eval_shape(lambda: Encoder(in_ch=3, rngs=nnx.Rngs(0), **kw))
    dec = nnx.eval_shape(lambda: Decoder(out_ch=3, rngs=nnx.Rngs(0), **kw))
    disc = nnx.eval_shape(lambda: Discriminator(32, max_channels=8, rngs=nnx.Rngs(0)))
    x = jnp.zeros((2, 32, 32, 3))
    apply = lambda m, v: m(v)  # noqa: E731
    z = nnx.eval_shape(apply, enc, x)
    assert z.shape == (2, 32 // factor, 32 // factor, 5)
    assert nnx.eval_shape(apply, dec, jnp.zeros(z.shape)).shape == (2, 32, 32, 3)
    assert nnx.eval_shape(apply, disc, x).shape == (2, 1)
    assert len(enc.levels) == len(mults) and sum(d is None for d in enc.downsamples) == len(mults) - 1


@pytest.mark.parametrize("quantizer", ["vq", "ema", "fsq"])
def test_ids_round_trip_through_the_method(quantizer):
    config = tiny_config(quantizer)
    method = make_method(config)
    model = numpy_built(lambda: method.build(nnx.Rngs(1)), seed=1)
    x = images(3)

    @nnx.jit
    def run(model, x):
        ids = method.encode_to_ids(model, x)
        z = model.encoder(x * jnp.asarray([0.229, 0.224, 0.225]) + jnp.asarray([0.485, 0.456, 0.406]))
        direct = jnp.clip(model.decoder(method.quantize(model, z).quantized), 0, 1)
        rec = method.reconstruct(model, x, jax.random.key(0))
        _, metrics = method.loss(model, {"image": x}, None, True, step=jnp.int32(0))
        return ids, method.decode_ids(model, ids), direct, rec["reconstruction"], method.features(model, x), metrics

    ids, decoded, direct, recon, feats, m = run(model, x)
    assert ids.shape == (3, 8 * 8) and ids.dtype == jnp.int32
    assert int(ids.min()) >= 0 and int(ids.max()) < method.codebook_size
    # decode_ids(encode_to_ids(x)) is the decoder's output on the quantized latents of x.
    np.testing.assert_allclose(np.asarray(decoded), np.asarray(direct), atol=1e-4)
    assert recon.shape == x.shape and feats.shape == (3, method.latent_dim)
    assert float(m["loss"]) == pytest.approx(float(m["l2"] + m["quantizer_loss"]), rel=1e-5)
    assert ("batch_stats" in m) == (quantizer == "ema")
    assert method.flops(8).train > 0


def test_check_config_reports_bad_settings():
    cls = method_class("vqgan")
    errors = []
    cls.check_config(tiny_config(**{"vqgan.quantizer": "kmeans", "data.image_size": 15}), errors)
    text = " ".join(errors)
    assert "kmeans" in text and "not divisible by the down-sampling factor 2" in text
    errors = []
    cls.check_config(tiny_config(gan=True, image_size=24), errors)
    assert any("power-of-two" in e for e in errors)


# --- training and tokenize-images ------------------------------------------------------------------

def _trainer_has_batch_stats() -> bool:
    import maskjax.train.step as step

    return hasattr(step, "BATCH_STATS")


def _smoke(quantizer):
    config = load_config(f"{CIFAR}:smoke,quantizer={quantizer}")
    config.progress = False
    config.total_steps = 4
    return config


@pytest.mark.slow
@pytest.mark.parametrize("quantizer", ["vq", "ema", "fsq"])
def test_resume_equals_a_straight_run_and_tokenize_images(quantizer, tmp_path):
    from maskjax.data.image_tokens import ArrayRecordTokenSource
    from maskjax.data.pipeline import take_arrays
    from maskjax.methods.vqgan import load_tokenizer, tokenize_images_main
    from maskjax.train.loop import train

    if quantizer == "ema" and not _trainer_has_batch_stats():
        pytest.skip("the EMA codebook needs the trainer's batch_stats hook (maskjax.train.step.BATCH_STATS)")
    straight = train(_smoke(quantizer), str(tmp_path / "straight"))
    first = train(_smoke(quantizer), str(tmp_path / "split"), stop_at_step=2, run_evals=False)
    resumed = train(_smoke(quantizer), str(tmp_path / "split"))
    assert first.step == 2 and resumed.step == straight.step == 4
    losses = lambda r: {h["step"]: h["loss"] for h in r.history}  # noqa: E731
    split = {**losses(first), **losses(resumed)}
    np.testing.assert_allclose([split[s] for s in range(1, 5)], [losses(straight)[s] for s in range(1, 5)], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(straight.state["extra"]), jax.tree.leaves(resumed.state["extra"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    if quantizer == "ema":
        assert int(resumed.state["extra"]["ema_updates"]) == 4
    # tokenize-images: the records hold exactly the ids encode_to_ids gives.
    out = tmp_path / "tokens"
    assert tokenize_images_main(["--workdir", str(tmp_path / "split"), "--out", str(out), "--split", "test",
                                 "--batch", "500"]) == 0
    tokens = ArrayRecordTokenSource(str(out / "test"))
    method, model, step = load_tokenizer(str(tmp_path / "split"))
    assert step == 4 and tokens.grid == (8, 8) and tokens.metadata["codebook_size"] == method.codebook_size
    from maskjax.data.modalities import get_modality

    source = get_modality("image").open_source(method.config, "eval")
    assert len(tokens) == len(source)
    picks = [0, 1, len(source) // 2, len(source) - 1]
    x, labels = take_arrays(source, picks, 32, crop_pct=1.0)
    want = np.asarray(nnx.jit(method.encode_to_ids)(model, jnp.asarray(x)))
    for row, i in enumerate(picks):
        np.testing.assert_array_equal(tokens[i]["tokens"], want[row])
        assert int(tokens[i]["label"]) == int(labels[row])
