"""The ``diffusion_chars`` ledger table and its evaluators (maskjax/repro/diffusion_chars.py,
maskjax/eval/diffusion_evals.py).

* Equal compute: every model row resolves to a config that validates, sees the same characters
  (steps x batch x block length), uses the same optimiser / EMA / evaluators, and has the same
  per-block matmul weights (hand count: depth x 12 width^2) and per-token FLOPs; GenMD4 is
  counted at two passes. The floor rows read the MD4 runs.
* Evaluators on hand cases: n-gram statistics (including the uint8 overflow of pair indices),
  total variation, unigram cross-entropy, entropy; the bits/char aggregation (mean and standard
  error over batches, partial batch dropped) against numpy; a uniform predictor scored through
  the real methods (exactly log2 27 for the AR model; within its standard error of log2 27 for
  MD4's Monte-Carlo bound); sample statistics of a stub sampler whose answers are known.
* Slow: ``maskjax repro diffusion_chars --smoke`` end to end, then ``maskjax eval --evals
  char_bits,char_samples`` on one of its runs.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from maskjax.data.text import chars
from maskjax.eval import diffusion_evals as de

V = chars.VOCAB_SIZE
COND = ("ada", "out_ada", "sigma_map", "cond_embed")   # time-conditioning layers: per sequence, not per token


def _table():
    from maskjax.repro import tables

    return tables()["diffusion_chars"]


def _model_rows(table):
    return [row for row in table.rows if not row.metric_prefix]


def _block_weights(method) -> int:
    """Matmul weights inside the transformer blocks, time conditioning left out."""
    net = nnx.eval_shape(lambda: method.network(nnx.Rngs(0)))
    total = 0
    for path, var in nnx.to_flat_state(nnx.state(net, nnx.Param)):
        names = [str(p) for p in path]
        if "blocks" in names and names[-1] == "kernel" and not set(names) & set(COND):
            total += int(np.prod(var.get_value().shape))
    return total


def test_rows_are_the_shared_setup_at_equal_compute():
    from maskjax.methods import make_method
    from maskjax.repro import diffusion_chars as dc
    from maskjax.repro.ledger import build_row_config, row_slug
    from maskjax.repro.seeded import seed_row
    from maskjax.train.validate import validate_config

    table = _table()
    rows = _model_rows(table)
    assert {row.label for row in rows} == {"MDLM", "MD4", "GenMD4", dc.AR}
    shared, per_token, methods = set(), {}, {}
    for row in rows:
        config = build_row_config(table, seed_row(row, 2))
        validate_config(config)
        assert config.seed == 2
        o, own = config.optim, config[config.method]
        shared.add((config.data.path, config.data.seq_len, config.data.train_stride, config.data.heldout_fraction,
                    config.global_batch * config.total_steps * config.data.seq_len, config.total_steps,
                    config.global_batch, o.name, o.base_lr, o.b1, o.b2, o.weight_decay, o.schedule, o.warmup_steps,
                    o.grad_clip, o.min_lr, own.ema_decay, own.ema_warmup, config.model.depth, config.model.dropout,
                    json.dumps(config.evals.to_dict(), sort_keys=True, default=str)))
        method = make_method(config)
        methods[row.label] = method
        width = config.model.width if config.method == "mdlm" else config.model.feature_dim * config.model.heads
        # Attention (q, k, v, out: 4 w^2) + MLP (8 w^2: DiT's 4x GELU, LLaMA's GLU of 8w/3) per block.
        assert width == dc.WIDTH
        assert _block_weights(method) == config.model.depth * 12 * width ** 2
        tokens = config.global_batch * config.data.seq_len
        per_token[row.label] = method.flops(config.global_batch).train / tokens
    assert len(shared) == 1, shared
    assert next(iter(shared))[4] == dc.STEPS * dc.BATCH * dc.SEQ_LEN
    single = [per_token[k] for k in ("MDLM", "MD4", dc.AR)]
    assert max(single) / min(single) < 1.02, per_token
    assert per_token["GenMD4"] / per_token["MD4"] == pytest.approx(2.0, rel=0.01)   # two masked draws per block
    # The floor rows add no run: they are the MD4 run read under a prefix.
    md4 = row_slug(build_row_config(table, next(r for r in rows if r.label == "MD4")))
    for row in table.rows:
        if row.metric_prefix:
            assert row_slug(build_row_config(table, row)) == md4
    # The claims name rows and columns of the table.
    labels = {row.label for row in table.rows}
    for claim in table.claims:
        assert {claim.better, claim.worse} <= labels and claim.metric in table.metrics
    assert set(table.lower_is_better) <= set(table.metrics)


def test_ngram_statistics_on_hand_cases():
    # "_ab_" as uint8 ids: pairs (26, 0), (0, 1), (1, 26) at 702, 1, 53 (702 overflows uint8).
    ids = chars.encode(" ab ")
    assert ids.dtype == np.uint8
    big = de.bigram_distribution(ids, V)
    assert big.shape == (V * V,)
    np.testing.assert_allclose(big[[702, 1, 53]], [1 / 3] * 3)
    assert big.sum() == pytest.approx(1.0)
    # Rows never pair across each other; out-of-vocabulary ids (a leftover mask) are skipped.
    rows = np.array([[0, 1], [2, V]])
    np.testing.assert_allclose(de.bigram_distribution(rows, V)[1], 1.0)
    np.testing.assert_allclose(de.unigram_distribution(rows, V)[:3], [1 / 3] * 3)
    assert de.total_variation([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)
    # Add-one frequencies of "aab" over 3 symbols: (3, 2, 1) / 6; "ab" costs (1 + log2 3) / 2 bits.
    assert de.unigram_cross_entropy_bits(np.array([0, 0, 1]), np.array([0, 1]), 3) == pytest.approx(
        (1 + math.log2(3)) / 2)
    # Entropy of "aabb" is 1 bit, of "aaaa" 0: mean 0.5.
    assert de.mean_entropy_bits(np.array([[0, 0, 1, 1], [0, 0, 0, 0]]), V) == pytest.approx(0.5, abs=1e-6)


class _SumMethod:
    """eval_stats stand-in: a block's "bits" are the sum of its ids, so bits/char is the mean id."""

    name = "stub"

    def eval_stats(self, model, batch, keys, options):
        ids = batch["input_ids"].astype(jnp.float32)
        return {"bits_sum": jnp.sum(ids), "count": jnp.asarray(ids.size, jnp.float32)}


def test_heldout_bits_is_the_mean_over_batches_with_its_standard_error():
    stream = np.random.default_rng(0).integers(0, V, 10 * 8).astype(np.uint8)
    source = chars.CharBlocks(stream, 8)            # 10 blocks; batches of 4: 2 full, 2 blocks dropped
    out = de.heldout_bits(_SumMethod(), None, source, batch_size=4, likelihood_samples=3)
    means = np.array([stream[:32].mean(), stream[32:64].mean()])
    assert out["bits_per_char"] == pytest.approx(means.mean(), rel=1e-6)
    assert out["bits_per_char_se"] == pytest.approx(means.std(ddof=1) / math.sqrt(2), rel=1e-5)
    assert out["characters"] == 64 and out["likelihood_samples"] == 3
    assert out["nats_per_char"] == pytest.approx(means.mean() * math.log(2), rel=1e-6)
    one = de.heldout_bits(_SumMethod(), None, source, batch_size=4, max_batches=1)
    assert one["bits_per_char"] == pytest.approx(means[0], rel=1e-6) and "bits_per_char_se" not in one


def _uniform_network(method):
    """The method's network (no EMA copy) with a zero output layer: it predicts the uniform distribution."""
    net = method.network(nnx.Rngs(0))
    head = net.net.head if hasattr(net, "net") else net.head
    head.kernel[...] = jnp.zeros_like(head.kernel[...])
    return net


@pytest.mark.parametrize("label", ["autoregressive (causal LM)", "MD4"])
def test_a_uniform_predictor_scores_log2_of_the_vocabulary(label):
    from maskjax.methods import make_method
    from maskjax.repro.ledger import build_row_config

    table = _table()
    config = build_row_config(table, next(r for r in table.rows if r.label == label), smoke=True)
    method = make_method(config)
    stream = np.random.default_rng(1).integers(0, V, 256 * 32).astype(np.uint8)
    out = de.heldout_bits(method, _uniform_network(method), chars.CharBlocks(stream, 32), batch_size=16,
                          likelihood_samples=4)
    if label == "MD4":
        # A Monte-Carlo estimate of (1 - eps) log2 27 (eps = 1e-4): within 4 of its standard errors
        # (1/t-weighted masked counts are noisy: about 0.07 bits here).
        assert 0 < out["bits_per_char_se"] < 0.15
        assert abs(out["bits_per_char"] - math.log2(V)) < 4 * out["bits_per_char_se"]
    else:
        assert out["bits_per_char"] == pytest.approx(math.log2(V), abs=1e-5)   # exact NLL


class _StubSampler:
    """A method whose sampler answers "aaaa..." at 8 steps and "abab..." otherwise."""

    name = "stub"
    vocab_size = V

    def __init__(self, config):
        self.config = config

    def sample_length(self):
        return 16

    def sample(self, model, key, num):
        abab = jnp.tile(jnp.arange(16) % 2, (num, 1)).astype(jnp.int32)
        return jnp.zeros_like(abab) if int(self.config.stub.sample_steps) == 8 else abab


def test_sample_statistics_of_known_samples(tmp_path):
    config = ml_collections.ConfigDict({"model": {"vocab_size": V}, "stub": {"sample_steps": 128}})
    method = _StubSampler(config)
    abab = chars.CharBlocks(np.tile(np.array([0, 1], np.uint8), 200), 16)   # the text is "abab..."
    out = de.sample_quality(method, None, steps=(8, 32), num=4, seed=0, train_source=abab, eval_source=abab,
                            workdir=str(tmp_path))
    assert config.stub.sample_steps == 128                     # the table's config is never mutated
    # The text's pairs: 200 "ab", 199 "ba"; a 16-character "abab..." sample has 8 "ab", 7 "ba".
    assert out["bigram_tv_8"] == pytest.approx(1.0) and out["bigram_tv_32"] == pytest.approx(8 / 15 - 200 / 399)
    assert out["unigram_tv_8"] == pytest.approx(0.5) and out["unigram_tv_32"] == pytest.approx(0.0, abs=1e-12)
    assert out["entropy_bits_8"] == pytest.approx(0.0, abs=1e-6)
    assert out["entropy_bits_32"] == pytest.approx(1.0, abs=1e-6)
    assert out["masked_8"] == 0.0
    # The floor: 16-character windows of the text itself (8 a, 8 b; pairs off by one), repeated per step count.
    assert out["data_unigram_tv_8"] == out["data_unigram_tv_32"] == pytest.approx(0.0, abs=1e-12)
    assert out["data_bigram_tv_8"] == out["data_bigram_tv_32"] <= 8 / 15 - 200 / 399 + 1e-9
    assert open(tmp_path / "samples_8steps.txt").read().splitlines() == ["a" * 16] * 4
    assert open(tmp_path / "samples_32steps.txt").read().splitlines()[0] == "ab" * 8


def test_the_evaluators_are_registered_for_maskjax_eval():
    from maskjax.eval.cli import resolve_evals
    from maskjax.eval.registry import known_evaluators

    assert {"char_bits", "char_samples"} <= set(known_evaluators())
    config = ml_collections.ConfigDict({"evals": {}})
    assert resolve_evals(config, "char_bits,char_samples") == ["char_bits", "char_samples"]
    assert config.evals.char_bits.type == "char_bits"


@pytest.mark.slow
def test_smoke_table_end_to_end_then_maskjax_eval(tmp_path):
    """Four smoke trainings (about 2 CPU-minutes cold): the page, each row's metrics, then the CLI."""
    from maskjax.cli import main as cli_main
    from maskjax.config import load_config
    from maskjax.repro import run_table
    from maskjax.repro.ledger import REPO_ROOT, build_row_config, row_slug
    from maskjax.repro.seeded import seed_row

    table = _table()
    page = open(run_table("diffusion_chars", out_dir=str(tmp_path / "out"), runs_dir=str(tmp_path / "runs"),
                          smoke=True)).read()
    for row in table.rows:
        assert f"| {row.label} |" in page
    for row in _model_rows(table):
        workdir = tmp_path / "runs" / row_slug(build_row_config(table, seed_row(row, 0), smoke=True))
        metrics = json.load(open(workdir / "row_result.json"))["metrics"]
        assert 0 < metrics["eval/bits/bits_per_char"] < 2 * math.log2(V)
        assert metrics["eval/bits/is_bound"] == (0.0 if row.label.startswith("autoregressive") else 1.0)
        assert any(k.startswith("eval/samples/bigram_tv_") for k in metrics)
        assert list(workdir.glob("samples_*steps.txt"))
    # `maskjax eval` on the AR row's run: the row's config given as the recipe plus its overrides.
    row = seed_row(next(r for r in table.rows if r.label.startswith("autoregressive")), 0)
    resolved = build_row_config(table, row, smoke=True)
    recipe = load_config(os.path.join(REPO_ROOT, row.config))
    flags = []
    for key in {**row.overrides, **table.smoke}:
        node_r, node_c = recipe, resolved
        for part in key.split("."):
            node_r, node_c = node_r[part], node_c[part]
        if node_r != node_c:
            flags.append(f"--config.{key}={node_c}")
    workdir = tmp_path / "runs" / row_slug(resolved)
    os.remove(workdir / "samples_32steps.txt")
    assert cli_main(["maskjax", "eval", "--config", os.path.join(REPO_ROOT, row.config), "--workdir", str(workdir),
                     "--evals", "char_bits,char_samples", *flags]) == 0
    records = [json.loads(line) for line in open(workdir / "eval_results.jsonl")]
    assert "eval/char_bits/bits_per_char" in records[-1] and "eval/char_samples/bigram_tv_32" in records[-1]
    # Two steps of training leave the AR model close to the uniform predictor (log2 27 bits exactly).
    assert records[-1]["eval/char_bits/bits_per_char"] == pytest.approx(math.log2(V), abs=0.1)
    assert (workdir / "samples_32steps.txt").exists()
