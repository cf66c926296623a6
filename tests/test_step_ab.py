"""benchmarks/step_ab.py: variant parsing, and a micro A/B whose tile setting reaches the traced step."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO_ROOT
from tests.test_hf_throughput import _module as _hf_module


def _step_ab():
    _hf_module()  # step_ab imports hf_throughput by name
    spec = importlib.util.spec_from_file_location("step_ab", REPO_ROOT / "benchmarks" / "step_ab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_variant_splits_overrides_and_tile():
    ab = _step_ab()
    assert ab.parse_variant("a:model.attention_impl=xla,tile_bytes=4096") == ("a", ["model.attention_impl=xla"], 4096)
    assert ab.parse_variant("base:") == ("base", [], None)
    for bad in ("no-colon", "a:tile_bytes=0", "a:tile_bytes=big", "a:model.depth"):
        with pytest.raises(SystemExit):
            ab.parse_variant(bad)


@pytest.mark.slow  # compiles two train steps: the benchmark, not the library
def test_micro_ab_traces_each_variant_with_its_tile(monkeypatch, capsys):
    ab = _step_ab()
    from maskjax.models import attention

    seen = []
    real = attention.chunk_size
    # chunk_size gets the target rows per chunk, tile_bytes // (4 * block_q * block_k): record it.
    monkeypatch.setattr(attention, "chunk_size", lambda groups, target: seen.append(target) or real(groups, target))
    default = attention.DEFAULT_TILE_BYTES
    assert ab.main(["--case", "micro_mae", "--batch", "8", "--rounds", "2", "--steps", "1", "--warmup", "0",
                    "small:model.attention_impl=blockwise,tile_bytes=1156",
                    "large:model.attention_impl=blockwise,tile_bytes=115600"]) == 0
    assert attention.DEFAULT_TILE_BYTES == default
    # micro_mae: 16 px images of 4 px patches -> 17 tokens, one 17 x 17 block: 1156 bytes per row.
    assert 1 in seen and 100 in seen
    out = capsys.readouterr().out
    assert "small" in out and "large" in out and "1.000" in out


def test_needs_two_distinct_variants():
    ab = _step_ab()
    with pytest.raises(SystemExit):
        ab.main(["--case", "micro_mae", "a:"])
    with pytest.raises(SystemExit):
        ab.main(["--case", "micro_mae", "a:", "a:"])
