"""benchmarks/hf_throughput.py: the HF models get our dimensions, and one micro round prints the table."""

from __future__ import annotations

import importlib.util
import platform
import re
import sys

import jax
import pytest

from tests.conftest import REPO_ROOT


def _module():
    if "hf_throughput" in sys.modules:
        return sys.modules["hf_throughput"]
    spec = importlib.util.spec_from_file_location("hf_throughput", REPO_ROOT / "benchmarks" / "hf_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hf_throughput"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", ["micro_mae", "micro_bert"])
def test_hf_model_has_our_trainable_parameter_count(case):
    pytest.importorskip("transformers")
    # Same widths, depths, heads, MLP, decoder and heads => exactly the same number of trainable
    # parameters (HF keeps the sin-cos position embeddings frozen, as our buffers).
    from maskjax.methods import make_method
    from maskjax.core.state import ModelTemplate

    hf = _module()
    config = hf.load_case(case, None, None, [])
    ours = ModelTemplate.from_builder(make_method(config).build).num_params()
    model = hf.hf_model(config, "sdpa")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ours


def test_hf_inputs_follow_the_masking_ratio():
    pytest.importorskip("transformers")
    hf = _module()
    config = hf.load_case("micro_bert", 3, None, [])
    inputs = hf.hf_inputs(config)
    labelled = (inputs["labels"] != -100).sum(dim=1)
    # round(0.15 * 32) = 5 positions per sequence (at most max_predictions = 5), never [CLS]/[SEP].
    assert labelled.tolist() == [5, 5, 5]
    assert (inputs["labels"][:, [0, -1]] == -100).all() and (inputs["input_ids"] == 4).sum() == 15


def test_table_format():
    hf = _module()
    result = {"case": "micro_mae", "what": "x", "batch": 4, "rates": {"ours": [2.0, 4.0, 3.0], "hf": [1.0, 2.0, 4.0]},
              "ratios": [2.0, 2.0, 0.75], "ours": {"compile_s": 1.5}}
    lines = hf.format_table([result], 3, 2).splitlines()
    assert lines[0] == hf.TABLE_HEADER
    assert "| 3.00 | 2.00 | **2.000** [0.750, 2.000] | 3 x 2 | 1.5 |" in lines[2]


@pytest.mark.parametrize("option", ["--rounds=0", "--steps=0", "--warmup=-1", "--prime=-1"])
def test_bad_counts_are_refused(option):
    with pytest.raises(SystemExit):
        _module().parse_args([option])


@pytest.mark.slow  # builds both workers (torch and JAX): the benchmark, not the library
def test_one_micro_round_prints_the_table(capsys):
    hf = _module()
    # --ours-python names the interpreter of our worker (here this one); each worker reports its own.
    assert hf.main(["--cases", "micro_mae", "--rounds", "1", "--steps", "1", "--warmup", "0", "--prime", "1",
                    "--ours-python", sys.executable]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| `micro_mae`")]
    assert out.splitlines()[0] == hf.TABLE_HEADER and len(rows) == 1
    ours, theirs, ratio = re.search(r"\| 4 \| ([\d.]+) \| ([\d.]+) \| \*\*([\d.]+)\*\*", rows[0]).groups()
    assert float(ours) > 0 and float(theirs) > 0
    assert float(ratio) == pytest.approx(float(ours) / float(theirs), rel=0.02)
    for key in ("- hardware:", "- commit:", "- load average", "- command: `python benchmarks/hf_throughput.py"):
        assert key in out
    python = platform.python_version()
    assert f"- ours worker: Python {python}, jax {jax.__version__}" in out
    assert re.search(rf"- HF worker: Python {re.escape(python)}, torch [^,]+, transformers ", out)
    assert re.search(r"trainable params ours ([\d,]+), HF \1;", out)  # same dimensions on both sides
    busy = re.search(r"CPU cores busy during timed steps .* ours ([\d.]+), HF ([\d.]+)", out)
    assert busy and all(0 < float(x) <= 1.2 * hf.usable_cores() for x in busy.groups())
