"""Evaluation protocols on tiny data: kNN, the MAE probe head and LARS, evaluators in the loop."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maskjax.data.transforms import tf_random_resized_crop_params
from maskjax.eval.knn import knn_accuracy, knn_classify
from maskjax.eval.mae_probe import BN_EPS, head_logits, init_head, lars, mae_linear_probe
from maskjax.train.loop import train


def test_knn_on_separable_features_is_exact():
    rng = np.random.default_rng(0)
    centers = np.eye(4, 16) * 10
    ytr, yte = rng.integers(0, 4, 200), rng.integers(0, 4, 50)
    xtr = centers[ytr] + rng.normal(0, 0.5, (200, 16))
    xte = centers[yte] + rng.normal(0, 0.5, (50, 16))
    assert knn_accuracy(xtr, ytr, xte, yte, 4) == 1.0


def test_knn_weighted_vote_hand_case():
    # Two neighbours of class 0 at similarity ~0.6 outvote one of class 1 at ~0.99 only when
    # the temperature is high; at T = 0.07 the single close neighbour wins.
    train = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = np.array([1, 0, 0])
    query = np.array([[0.99, 0.141]])
    assert knn_classify(train, labels, query, 2, k=3, temperature=0.07)[0] == 1
    assert knn_classify(train, labels, query, 2, k=3, temperature=100.0)[0] == 0


def test_probe_head_has_no_affine_batchnorm_parameters():
    head = init_head(jax.random.key(0), 8, 3)
    assert sorted(head["params"]) == ["b", "w"]  # only the Linear is trained
    assert head["params"]["w"].shape == (8, 3)
    assert float(jnp.abs(head["params"]["w"]).max()) <= 0.02 + 1e-7  # trunc-normal(0.01) at 2 sigma
    feats = jax.random.normal(jax.random.key(1), (6, 8)) * 3 + 1
    logits, bn = head_logits(head["params"], head["bn"], feats, train=True)
    normed = (feats - feats.mean(0)) / jnp.sqrt(feats.var(0) + BN_EPS)
    np.testing.assert_allclose(logits, normed @ head["params"]["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn["mean"], 0.1 * feats.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn["var"], 0.9 + 0.1 * feats.var(0, ddof=1), rtol=1e-5)


def test_lars_matches_the_official_update_order():
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.1])}
    grads = [{"w": jnp.array([[0.3, 0.1], [-0.2, 0.4]]), "b": jnp.array([0.5, 0.2])},
             {"w": jnp.array([[0.1, -0.3], [0.2, 0.1]]), "b": jnp.array([-0.1, 0.3])}]
    lrs = [0.5, 0.25]
    tx = lars(lambda step: jnp.asarray(lrs)[step])
    state, p = tx.init(params), params
    for g in grads:
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
    # Hand-written util/lars.py: trust ratio on ndim > 1 only, momentum on the scaled grad, then lr.
    ref, mu = {k: np.asarray(v) for k, v in params.items()}, {k: 0.0 for k in params}
    for g, lr in zip(grads, lrs):
        for k in ref:
            dp = np.asarray(g[k])
            if ref[k].ndim > 1:
                dp = dp * (0.001 * np.linalg.norm(ref[k]) / np.linalg.norm(dp))
            mu[k] = 0.9 * mu[k] + dp
            ref[k] = ref[k] - lr * mu[k]
    for k in ref:
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-6)


def test_tf_style_crop_is_one_clamped_draw():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = tf_random_resized_crop_params(rng, 20, 30, (0.08, 1.0))
        assert 1 <= h <= 20 and 1 <= w <= 30 and 0 <= top <= 20 - h and 0 <= left <= 30 - w
    # Never rejects: a huge area is clamped to the full image, not re-drawn.
    top, left, h, w = tf_random_resized_crop_params(np.random.default_rng(1), 10, 10, (4.0, 4.0))
    assert (h, w) == (10, 10)


class _ColourSource:
    """Tiny images whose class is the brightest channel: linearly separable for a colour encoder."""

    class_names = ["r", "g", "b"]

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 3, n)
        base = rng.integers(40, 90, (n, 1, 1, 3))
        self.images = np.repeat(np.repeat(base, 8, 1), 8, 2).astype(np.uint8)
        self.images[np.arange(n), :, :, self.labels] = 200

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i])}


def _mean_colour_features(x):
    """Stands in for a ViT's cls feature: the mean colour (linearly separable for these images)."""
    return np.asarray(x).mean(axis=(1, 2))


def _random_features(x):
    return np.asarray(jax.random.normal(jax.random.key(0), (len(x), 3)))


@pytest.mark.parametrize("cache", [True, False])
def test_mae_probe_learns_informative_features_and_not_noise(cache):
    train_src, test_src = _ColourSource(96, 0), _ColourSource(60, 1)
    # LARS moves weights by ~lr * 0.001 of their norm per step: it needs the paper-scale lr (6.4
    # and above) and a few hundred steps, as in the real protocol.
    kw = dict(image_size=8, num_classes=3, epochs=40, batch_size=32, blr=400.0, warmup_epochs=1,
              crop_pct=1.0, cache_features=cache)
    good = mae_linear_probe(_mean_colour_features, train_src, test_src, **kw)
    noise = mae_linear_probe(_random_features, train_src, test_src, **kw)
    assert good["top1"] >= 0.95
    assert noise["top1"] < 0.6


def test_evaluators_run_periodically_and_after_training(tiny, tmp_path):
    config = tiny(**{"total_steps": 4, "log_every_steps": 2})
    config.evals.knn = dict(type="knn", every_steps=2, train_examples=64, test_examples=32)
    config.evals.recon = dict(type="reconstruction", num_images=2)
    config.evals.probe = dict(type="quick_probe", train_examples=64, test_examples=32, steps=20,
                              random_baseline=False)
    train(config, str(tmp_path))
    lines = [json.loads(l) for l in open(tmp_path / "eval_results.jsonl")]
    assert [l["step"] for l in lines] == [2, 4]
    assert set(lines[0]) == {"step", "eval/knn/top1"}                      # periodic: kNN only
    assert {"eval/knn/top1", "eval/probe/top1"} <= set(lines[1])             # after training: all
    assert os.path.exists(tmp_path / "reconstruction.png")
    assert 0.0 <= lines[1]["eval/probe/top1"] <= 1.0


def test_eval_command_on_a_checkpoint_and_curves(tiny, tmp_path):
    from maskjax.cli import main as cli_main

    config = tiny(**{"total_steps": 2, "log_every_steps": 1})
    train(config, str(tmp_path))
    cfg = "configs/mae/default.py"
    base = ["--config.model.variant=mu/4", "--config.data.image_size=16", "--config.model.decoder_width=32",
            "--config.model.decoder_depth=1", "--config.model.decoder_heads=2"]
    # an evaluator the config does not define is a clear error, not a crash
    assert cli_main(["maskjax", "eval", "--config", cfg, "--workdir", str(tmp_path), "--evals", "nope", *base]) == 2
    assert not os.path.exists(tmp_path / "reconstruction.png")
    assert cli_main(["maskjax", "eval", "--config", cfg, "--workdir", str(tmp_path), "--evals", "reconstruction",
                     *base]) == 0
    assert os.path.exists(tmp_path / "reconstruction.png")
    assert cli_main(["maskjax", "plot", str(tmp_path)]) == 0
    assert os.path.getsize(tmp_path / "curves.png") > 1000
