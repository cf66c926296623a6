"""Sequence-classification fine-tuning: metrics, head, the fine-tuner's learning and the evaluators."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from maskjax.eval import text_classify as tc
from maskjax.models.bert import BertEncoder


# --- metrics -----------------------------------------------------------------------------------

def test_mcc_and_f1_hand_cases():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    p = [1, 0, 1, 0, 0, 1, 0, 1]  # tp 3, fn 1, fp 1, tn 3
    assert tc.matthews_corr(y, p) == pytest.approx((3 * 3 - 1 * 1) / np.sqrt(4 * 4 * 4 * 4))
    assert tc.f1_binary(y, p) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert tc.accuracy(y, p) == pytest.approx(6 / 8)
    assert tc.matthews_corr(y, y) == 1.0 and tc.matthews_corr(y, [1 - v for v in y]) == -1.0
    assert tc.matthews_corr(y, [1] * 8) == 0.0  # undefined -> 0, as sklearn
    assert tc.f1_binary([0, 0], [0, 0]) == 0.0
    # Multi-class (sklearn's formula): C = [[2,1,0],[0,2,1],[1,0,2]] -> (6*9 - 27) / (81 - 27).
    y3, p3 = [0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 2, 2, 2, 0]
    assert tc.matthews_corr(y3, p3) == pytest.approx((6 * 9 - 27) / (81 - 27))


def test_mcc_and_f1_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")  # not installed everywhere: hand cases above
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert tc.matthews_corr(y, p) == pytest.approx(metrics.matthews_corrcoef(y, p))
    assert tc.f1_binary(y % 2, p % 2) == pytest.approx(metrics.f1_score(y % 2, p % 2))


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = x + rng.normal(size=50)
    yt = np.round(y)  # ties
    assert tc.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert tc.spearman(x, yt) == pytest.approx(stats.spearmanr(x, yt)[0], abs=1e-12)
    np.testing.assert_allclose(tc.rankdata(yt), stats.rankdata(yt))
    assert np.isnan(tc.pearson(x, np.ones(50)))
    out = tc.task_metrics("pearson_spearman", y, x)
    assert out["corr"] == pytest.approx((out["pearson"] + out["spearman"]) / 2)
    with pytest.raises(ValueError, match="known"):
        tc.task_metrics("bleu", y, x)


# --- head and layer decay ----------------------------------------------------------------------

def test_text_layer_scales():
    enc = BertEncoder("mu", rngs=nnx.Rngs(0), vocab_size=40, max_positions=16)
    clf = tc.TextClassifier(enc, 2, rngs=nnx.Rngs(1))
    from maskjax.core.state import to_tree

    scales = tc.text_layer_scales(to_tree(nnx.state(clf, nnx.Param)), 2, 0.5)
    assert scales["encoder"]["embeddings"]["word_embeddings"] == 0.125
    assert scales["encoder"]["transformer"]["layers"]["0"]["query"]["kernel"] == 0.25
    assert scales["encoder"]["transformer"]["layers"]["1"]["output_norm"]["scale"] == 0.5
    assert scales["out"]["kernel"] == 1.0 and scales["pooler"]["bias"] == 1.0


def test_heads():
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 40, (3, 8)), jnp.int32)
    keys = jax.random.split(jax.random.key(0), 3)
    forward = nnx.jit(lambda m, x, k=None: m(x, dropout_keys=k))
    # BERT head: reuses the encoder's pooler when it has one, else builds its own.
    pooled_enc = BertEncoder("mu", rngs=nnx.Rngs(0), vocab_size=40, max_positions=16, pooler=True)
    clf = tc.TextClassifier(pooled_enc, 3, rngs=nnx.Rngs(1))
    assert clf.pooler is None
    np.testing.assert_allclose(forward(clf, ids), clf.out(pooled_enc(ids)[1]["pooled"]), rtol=1e-5, atol=1e-6)
    enc = BertEncoder("mu", rngs=nnx.Rngs(0), vocab_size=40, max_positions=16)
    plain = tc.TextClassifier(enc, 3, rngs=nnx.Rngs(1))
    assert plain.pooler is not None and forward(plain, ids).shape == (3, 3)
    assert float(jnp.abs(plain.out.kernel[...]).max()) <= 0.04 + 1e-7  # trunc-normal(0.02) at 2 sigma
    assert not np.allclose(forward(plain, ids, keys), forward(plain, ids))  # dropout only with keys
    np.testing.assert_array_equal(forward(plain, ids), forward(plain, ids))
    # ELECTRA head (dropout, Dense, exact GELU, dropout, Dense) on ELECTRA's discriminator view.
    from maskjax.methods.electra import SharedEncoder

    view = SharedEncoder(enc.cfg, enc.embeddings, enc.transformer)
    eclf = tc.TextClassifier(nnx.clone(view), 3, head="electra", rngs=nnx.Rngs(1))
    x = view(ids)[0][:, 0]
    expect = eclf.out(jax.nn.gelu(eclf.dense(x), approximate=False))
    np.testing.assert_allclose(forward(eclf, ids), expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="known"):
        tc.TextClassifier(enc, 2, head="gpt", rngs=nnx.Rngs(0))


# --- the fine-tuner ----------------------------------------------------------------------------

def token_task(n: int, seed: int, random_labels: bool = False, copies: int = 3) -> dict:
    """Label 1 iff token 7 occurs (``copies`` times at random places) in 15 random tokens after [CLS]=2.

    Rows are padded with 16 [PAD]=0 positions (mask 0) to length 32, the evaluator test's length,
    so both tests run the same compiled step.
    """
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, 32), np.int32)
    ids[:, 1:16] = rng.integers(5, 64, (n, 15))
    ids[ids == 7] = 8
    ids[:, 0] = 2
    has = rng.random(n) < 0.5
    for _ in range(copies):
        ids[has, rng.integers(1, 16, n)[has]] = 7
    label = rng.integers(0, 2, n) if random_labels else has
    mask = np.broadcast_to(np.arange(32) < 16, ids.shape).astype(np.int32)
    return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": mask, "label": label.astype(np.int32)}


def test_finetune_learns_a_learnable_task_and_not_noise():
    # The shapes of the tiny_bert fixture's encoder, so the evaluator test reuses this program.
    enc = BertEncoder("mu", rngs=nnx.Rngs(0), vocab_size=512, max_positions=64)
    before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(enc, nnx.Param)))
    kw = dict(num_labels=2, epochs=12, lr=1e-3, batch_size=32, metric="f1", layer_decay=0.9)
    good = tc.finetune_classifier(enc, token_task(256, 0), token_task(256, 1), **kw)
    noise = tc.finetune_classifier(enc, token_task(256, 0, True), token_task(256, 1, True), **kw)
    assert good["accuracy"] > 0.9 and good["f1"] > 0.9, good
    assert 0.35 < noise["accuracy"] < 0.65, noise
    assert good["steps"] == 12 * (256 // 32)
    # The encoder passed in is untouched (and its buffers were not donated away).
    after = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(enc, nnx.Param)))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_finetune_input_errors():
    enc = BertEncoder("mu", rngs=nnx.Rngs(0), vocab_size=64, max_positions=32)
    data = token_task(8, 0)
    with pytest.raises(ValueError, match="lacks"):
        tc.finetune_classifier(enc, {"input_ids": data["input_ids"]}, data, num_labels=2)
    big = dict(data, input_ids=data["input_ids"] + 100)
    with pytest.raises(ValueError, match="vocabulary"):
        tc.finetune_classifier(enc, big, data, num_labels=2)
    with pytest.raises(ValueError, match="known"):
        tc.finetune_classifier(enc, data, data, num_labels=2, metric="auc")


# --- evaluators --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_bert(shared_data, tmp_path_factory):
    """A micro BERT method + model whose vocabulary is trained into a temporary folder."""
    from maskjax.config import text_base_config
    from maskjax.data.text import train_wordpiece
    from maskjax.methods import make_method

    wiki = shared_data / "wikitext2"
    if not (wiki / "test.txt").exists():
        pytest.skip("WikiText-2 is not present")
    d = tmp_path_factory.mktemp("tc_vocab")
    lines = (wiki / "valid.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:400]
    (d / "slice.txt").write_text("".join(lines), encoding="utf-8")
    config = text_base_config()
    config.model.variant = "mu"
    config.model.vocab_size = 512
    config.model.max_positions = 64
    config.data.vocab_path = train_wordpiece([d / "slice.txt"], 400, d / "vocab.txt")
    config.data.eval_path = str(wiki / "test.txt")
    method = make_method(config)
    return config, method, method.build(nnx.Rngs(0))


def test_evaluators_through_run_evaluators(tiny_bert, tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    from maskjax.eval.registry import EvalContext, known_evaluators, run_evaluators

    config, method, model = tiny_bert
    config = ml_collections.ConfigDict(config.to_dict())
    # The same shapes and steps for both evaluators, so the second reuses the compiled step.
    common = dict(seq_len=32, epochs=1, batch_size=32, lr=1e-3, layer_decay=0.9)
    config.evals = ml_collections.ConfigDict({
        "order": dict(type="text_classify", n_train=64, n_test=64, random_init=True, **common),
        "sst2": dict(type="glue", task="sst2", **common),
    })
    assert {"glue", "text_classify"} <= set(known_evaluators())
    ctx = EvalContext(config=config, workdir=str(tmp_path), step=7, method=method, train_source=None,
                      eval_source=None, final=True)
    before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    with tfds.testing.mock_data(num_examples=64):
        out = run_evaluators(model, ctx, ["order", "sst2"])
    for key in ("order/accuracy", "order/mcc", "order/random_init_accuracy", "order/random_init_mcc",
                "sst2/accuracy"):
        assert 0.0 <= out[f"eval/{key}"] <= 1.0 or key.endswith("mcc"), key
    assert out["eval/order/steps"] == 2 and out["eval/sst2/steps"] == 2
    printed = capsys.readouterr().out
    assert "word-order proxy (64 train / 64 test sentences" in printed and "vs random-init" in printed
    assert "GLUE sst2" in printed
    assert json.loads((tmp_path / "eval_results.jsonl").read_text().splitlines()[-1])["step"] == 7
    after = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    config.evals = ml_collections.ConfigDict({"bad": dict(type="glue", task="imdb")})
    with pytest.raises(ValueError, match="known.*cola"):
        run_evaluators(model, ctx, ["bad"])
