"""``maskjax bench`` and the analytic FLOP counts (maskjax/perf/flops.py).

The bench tests run the real input pipelines on the 8 simulated CPU devices of conftest.py;
the FLOP-agreement tests compile (never run) a step on one device, see test_fitcheck.py.
"""

from __future__ import annotations

import json
import math

import pytest

from maskjax.errors import ConfigError
from maskjax.perf.bench import (HEADER, format_row, load, main, peak_tflops)
from maskjax.perf.flops import matmul, model_flops, transformer_layer
from tests.conftest import REPO_ROOT, tiny_config
from tests.text_helpers import tiny_text_config, wikitext_slice

TINY_MAE = ["model.variant=mu/4", "data.image_size=16", "model.decoder_width=32", "model.decoder_depth=1",
            "model.decoder_heads=2"]
N_COLUMNS = HEADER.count(" | ") + 1


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _check_row(row: dict, batch: int) -> None:
    """Every number in a bench row is finite and positive where it must be."""
    assert row["global_batch"] == batch
    assert 0 < row["step_s_min"] <= row["step_s_median"] <= row["step_s_max"]
    for key in ("compile_s", "examples_per_s", "examples_per_s_end_to_end", "tokens_per_s", "analytic_flops",
                "xla_flops", "achieved_tflops", "peak_bytes", "params"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert math.isfinite(row["final_loss"])
    assert 0.0 <= row["data_wait"] < 1.0
    assert row["tokens_per_s"] == pytest.approx(row["examples_per_s"] * row["tokens_per_example"])
    assert row["examples_per_s"] == pytest.approx(batch / row["step_s_median"])
    # XLA adds elementwise work to the matmuls (and replicated optimizer work on each of 8 devices).
    assert 1.0 < row["xla_over_analytic"] < 3.0
    assert row["mfu"] is None  # CPU: no peak in the table


def test_bench_cli_tiny_mae(tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = ["--config", str(REPO_ROOT / "configs/mae/default.py") + ":smoke", "--steps", "3", "--warmup", "1",
            "--batch", "16", "--json", str(out)]
    for item in TINY_MAE:
        argv.append(f"--config.{item}")
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert _cells(lines[0]) == _cells(HEADER) and len(lines) == 3
    cells = _cells(lines[2])
    assert len(cells) == N_COLUMNS and "n/a" not in cells[:12]  # only MFU may be n/a on CPU
    assert cells[1] == "mae" and cells[3] == "16"
    (row,) = json.loads(out.read_text())
    _check_row(row, 16)
    assert row["tokens_per_example"] == 16  # (16 / 4)^2 patches
    assert row["devices"] == 8 and row["peak_bytes_source"] == "compiled"
    # The model count is the analytic one of the same config.
    config = tiny_config(global_batch=16)
    assert row["analytic_flops"] == pytest.approx(model_flops(config).train)


@pytest.mark.slow  # the MAE rows cover bench_config in CI; this adds the text pipeline (CI time budget)
def test_bench_tiny_text_real_pipeline(shared_data, tmp_path):
    from maskjax.perf.bench import bench_config

    train_file = wikitext_slice(shared_data, tmp_path)
    config = tiny_text_config(train_file, cache_dir=tmp_path / "cache")
    row = bench_config(config, label="tiny_text", steps=3, warmup=1, workdir=str(tmp_path), peak=1.0,
                       log=lambda _: None)
    assert row["method"] == "bert" and row["tokens_per_example"] == 32
    assert row["mfu"] == pytest.approx(row["achieved_tflops"] / 8.0)  # given peak 1 TFLOP/s x 8 devices
    row["mfu"] = None
    _check_row(row, 8)
    assert len(_cells(format_row(row))) == N_COLUMNS
    _assert_synthetic_matches_pipeline(config)  # vocab and blocks are cached by now


def _assert_synthetic_matches_pipeline(config) -> None:
    """--synthetic-data batches have the real pipeline's fields, shapes and dtypes."""
    from maskjax.perf.bench import batch_spec, synthetic_batch
    from maskjax.train.loop import data_modality

    modality = data_modality(config)
    real = next(iter(modality.make_pipeline(config, modality.open_source(config, "train"), train=True)))
    fake = synthetic_batch(config)
    spec = batch_spec(config)
    assert sorted(real) == sorted(fake) == sorted(spec)
    for key in real:
        assert real[key].shape == fake[key].shape == spec[key].shape, key
        assert real[key].dtype == fake[key].dtype == spec[key].dtype, key


def test_synthetic_image_batch_matches_pipeline():
    _assert_synthetic_matches_pipeline(tiny_config(global_batch=4))


def test_bench_bad_config_path_is_one_line(capsys):
    from maskjax.cli import main as maskjax_main

    assert maskjax_main(["maskjax", "bench", "--config", "configs/mae/no_such.py", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_overrides_are_typed():
    spec = str(REPO_ROOT / "configs/mae/default.py") + ":smoke"
    config = load(spec, ["model.variant=mu/4", "data.image_size=16", "optim.base_lr=0.5", "remat=true",
                         "total_steps=7", "optim.grad_clip=1.0"])
    assert (config.model.variant, config.data.image_size, config.optim.base_lr, config.remat, config.total_steps,
            config.optim.grad_clip) == ("mu/4", 16, 0.5, True, 7, 1.0)
    assert isinstance(config.data.image_size, int) and isinstance(config.optim.base_lr, float)
    # remat is typed `object`: a policy name stays a string.
    assert load(spec, ["remat=dots"]).remat == "dots"
    with pytest.raises(ConfigError, match="model.nope"):
        load(spec, ["model.nope=1"])
    with pytest.raises(ConfigError, match="int"):
        load(spec, ["total_steps=seven"])


def test_peak_table():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 67.0
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "bfloat16") == 312.0
    assert peak_tflops("TPU v5 lite", "bfloat16") == 197.0
    assert peak_tflops("TPU v5", "bfloat16") == 459.0
    assert peak_tflops("TPU v6 lite", "float32") == 918.0
    assert peak_tflops("cpu", "float32") is None


def test_flop_formulas_by_hand():
    # One ViT-B layer on 197 tokens: 24 N D^2 + 4 N^2 D.
    n, d = 197, 768
    assert transformer_layer(n, d, 4 * d) == 24 * n * d * d + 4 * n * n * d
    assert matmul(2, 3, 5) == 60
    # MAE ViT-B/16 at 224, ratio 0.75: the encoder sees 1 + 49 tokens, the decoder 1 + 196.
    config = load(str(REPO_ROOT / "configs/mae/vit_b16_in1k.py"), [], batch=1)
    f = model_flops(config)
    assert f.parts["encoder"] == 12 * transformer_layer(50, 768, 3072)
    assert f.parts["decoder"] == 8 * transformer_layer(197, 512, 2048)
    assert f.parts["patch_embed"] == matmul(196, 768, 768)
    assert f.train == 3 * sum(f.parts.values())
    assert model_flops(config, global_batch=4).train == pytest.approx(4 * f.train)
    # BERT-Base at 128 tokens with 20 predictions: encoder ~ 2 x 85M params x 128 tokens.
    bert = load(str(REPO_ROOT / "configs/bert/bert.py") + ":smoke", [], batch=1)
    b = model_flops(bert)
    assert b.parts["mlm_head"] == matmul(20, 768, 768) + matmul(20, 768, 30522)
    assert b.parts["encoder"] == pytest.approx(2 * 85e6 * 128, rel=0.1)
    assert "pooler_nsp" in b.parts


def test_unknown_method_has_no_count():
    config = tiny_config()
    config.method = "nope"
    with pytest.raises(ValueError, match="known"):
        model_flops(config)


@pytest.mark.slow  # a profiler trace; CI time budget
def test_bench_profile_prints_a_kernel_table(tmp_path):
    from maskjax.perf.bench import bench_config

    config = tiny_config(global_batch=16)
    row = bench_config(config, label="tiny", steps=1, warmup=0, synthetic=True, profile_dir=str(tmp_path / "trace"),
                       profile_steps=2)
    text = row["profile"]
    assert text.startswith("Device time per step on /host:CPU, over 2 traced steps")
    shares = [float(line.split("|")[3].strip(" %")) for line in text.splitlines()
              if line.startswith("| ") and line.count("|") == 4 and "category" not in line]
    assert shares and abs(sum(shares) - 100.0) < 0.5  # the categories split all of the op time
    assert "| kernel / op | category | launches/step | ms/step | share |" in text


def test_profile_busy_time_counts_overlaps_once_and_names_fall_into_categories():
    from maskjax.perf.profiling import busy_and_span, categorize

    # [0,4) and [2,6) overlap (two streams), then a gap, then [10,11): busy 7 of a span of 11.
    assert busy_and_span([(10, 11), (0, 4), (2, 6)]) == (7, 11)
    assert busy_and_span([(0, 5), (1, 2)]) == (5, 5)   # one kernel inside another
    assert busy_and_span([]) == (0.0, 0.0)
    assert categorize("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT") == "matmul"
    assert categorize("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma") == "attention"
    assert categorize("input_add_reduce_fusion_11") == "reduction"
    assert categorize("loop_slice_fusion_32") == "copy/layout"
    assert categorize("loop_multiply_fusion_8") == "elementwise"
    assert categorize("MemcpyH2D") == "copy/layout"
    assert categorize("something_else") == "other"


def test_profile_counts_a_loop_op_without_its_body():
    from maskjax.perf.profiling import exclusive_durations

    # A while op over [0, 10) whose body ops cover [1, 4) and [3, 8) on two threads: 3 units of its
    # own; a leaf before it is untouched; a nested while over [1, 6) is covered entirely: 0.
    events = [("fusion.1", -5, 4), ("while.3", 0, 10), ("dot.2", 1, 3), ("add", 3, 5),
              ("while.7", 1, 5)]
    assert exclusive_durations(events) == [4, 3, 3, 5, 0]


def test_cpu_profile_of_a_loop_adds_up_to_the_busy_time(tmp_path):
    import jax
    import jax.numpy as jnp

    from maskjax.perf.profiling import summarize_trace

    f = jax.jit(lambda x: jax.lax.fori_loop(0, 30, lambda i, y: jnp.tanh(y @ x), x).sum())
    x = jnp.full((128, 128), 0.01)
    f(x).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        f(x).block_until_ready()
    summary = summarize_trace(str(tmp_path))
    # Without the loop's own time taken out, the while op would double the total.
    assert summary.per_category.get("other", 0.0) < 0.5 * summary.total_s
    assert summary.total_s < 1.5 * summary.busy_s
