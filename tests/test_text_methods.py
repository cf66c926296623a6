"""BERT-family and ELECTRA methods through the trainer's interfaces (losses, checks, training)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskjax.data.modalities import get_modality
from maskjax.methods import make_method
from maskjax.train.step import example_keys
from maskjax.train.validate import ConfigError, validate_config
from tests.text_helpers import tiny_text_config, wikitext_slice


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    return wikitext_slice(shared_data, root), root / "cache"


def _prepared(corpus, **overrides):
    train_file, cache = corpus
    config = tiny_text_config(train_file, cache_dir=cache, **overrides)
    modality = get_modality("text")
    modality.prepare(config, str(cache))
    return config, modality


def _batch(config, modality, n=8):
    source = modality.open_source(config, "train")
    from maskjax.data.text import make_text_pipeline

    return next(iter(make_text_pipeline(source, global_batch=n, train=True, seed=0)))


@pytest.mark.parametrize("overrides", [
    {},
    {"masking.kind": "whole_word"},
    {"masking.kind": "uniform", "masking.ratio": 0.4, "masking.mix": (1.0, 0.0, 0.0), "masking.max_predictions": 16},
    {"masking.kind": "span", "model.sbo": True, "masking.max_predictions": 8},
    {"masking.kind": "ngram"},
])
def test_bert_losses_and_gradients(corpus, overrides):
    config, modality = _prepared(corpus, **overrides)
    method = make_method(config)
    model = method.build(nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in _batch(config, modality).items()}
    keys = example_keys(jax.random.key(0), 0, 8)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p):
        return method.loss(nnx.merge(graphdef, p, rest), batch, keys, True)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    # at init the MLM loss is about log(V): predictions are nearly uniform over the vocabulary
    assert abs(float(metrics["mlm_loss"]) - np.log(config.model.vocab_size)) < 1.0
    assert float(metrics["predictions"]) >= 1
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and max(norms) > 0
    if overrides.get("model.sbo"):
        assert "sbo_loss" in metrics and float(loss) > float(metrics["mlm_loss"])
    # deterministic: the same keys give the same loss; other keys give other masks
    again = jax.jit(loss_fn)(params)[0]
    other = jax.jit(lambda p: method.loss(nnx.merge(graphdef, p, rest), batch, example_keys(jax.random.key(1), 0, 8),
                                          True))(params)[0]
    assert float(again) == float(loss) and float(other) != float(loss)


def test_bert_nsp_loss_uses_pair_labels(corpus):
    config, modality = _prepared(corpus, **{"model.nsp": True, "data.nsp": True})
    method = make_method(config)
    model = method.build(nnx.Rngs(0))
    batch = _batch(config, modality)
    assert set(np.unique(batch["nsp_label"])) <= {0, 1} and batch["segment_ids"].max() == 1
    loss, metrics = method.loss(model, {k: jnp.asarray(v) for k, v in batch.items()},
                                example_keys(jax.random.key(0), 0, 8), False)
    assert abs(float(metrics["nsp_loss"]) - np.log(2)) < 0.3
    assert float(loss) == pytest.approx(float(metrics["mlm_loss"] + metrics["nsp_loss"]), rel=1e-6)


def test_electra_loss_combines_generator_and_discriminator(corpus):
    config, modality = _prepared(corpus, **{"method": "electra", "masking.kind": "electra",
                                            "optim.schedule": "linear_electra"})
    method = make_method(config)
    model = method.build(nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in _batch(config, modality).items()}
    loss, m = method.loss(model, batch, example_keys(jax.random.key(0), 0, 8), False)
    assert float(loss) == pytest.approx(float(m["mlm_loss"] + 50.0 * m["rtd_loss"]), rel=1e-5)
    # at init the discriminator is near chance on each token: BCE about log 2
    assert abs(float(m["rtd_loss"]) - np.log(2)) < 0.2
    # some tokens were replaced (the untrained generator rarely reproduces the original)
    assert 0.0 < float(m["replaced_fraction"]) < 0.3
    # the fine-tuning view is the discriminator encoder, sharing its parameters
    enc = method.encoder(model)
    hidden, _ = enc(batch["input_ids"], batch["segment_ids"], batch["input_mask"])
    want, _ = model.discriminator_hidden(batch["input_ids"], batch["segment_ids"], batch["input_mask"])
    np.testing.assert_array_equal(np.asarray(hidden), np.asarray(want))


@pytest.mark.parametrize("overrides, message", [
    ({"model.sbo": True}, "needs masking.kind='span'"),
    ({"masking.kind": "gaussian"}, "unknown masking.kind"),
    ({"masking.mix": (0.5, 0.1, 0.1)}, "summing to 1"),
    ({"masking.schedule": "linear", "total_steps": None, "epochs": 1}, "needs total_steps"),
    ({"masking.ratio": 0.5}, "max_predictions"),
    ({"model.variant": "Gigantic"}, "unknown text model.variant"),
    ({"data.seq_len": 64}, "exceeds model.max_positions"),
    ({"data.nsp": True}, "next-sentence prediction needs both"),
    ({"method": "electra"}, "masking.kind='electra'"),
])
def test_text_config_errors(corpus, overrides, message):
    train_file, cache = corpus
    config = tiny_text_config(train_file, cache_dir=cache, **overrides)
    with pytest.raises(ConfigError, match=message):
        validate_config(config, num_devices=1, process_count=1)


def test_missing_text_file_is_reported(tmp_path):
    config = tiny_text_config(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match="matches no file"):
        validate_config(config, num_devices=1, process_count=1)
