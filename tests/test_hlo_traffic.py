"""benchmarks/hlo_traffic.py: bytes moved by the non-library kernels of an optimized HLO dump."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import pytest

from tests.conftest import REPO_ROOT


def _module():
    spec = importlib.util.spec_from_file_location("hlo_traffic", REPO_ROOT / "benchmarks" / "hlo_traffic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The shape of an XLA:GPU dump: tuple results read as `%name#k`, a cuBLAS call, a multi-output
# reduction fusion and a loop fusion.
GPU_LIKE = """HloModule jit_step

%fused_add (p0: bf16[8,4]) -> bf16[8,4] {
  ROOT %p0 = bf16[8,4]{1,0} parameter(0)
}

ENTRY %main.1 (x: bf16[8,16], w: bf16[16,4], b: f32[4]) -> (bf16[8,4], f32[4]) {
  %x = bf16[8,16]{1,0} parameter(0)
  %w = bf16[16,4]{1,0} parameter(1)
  %b = f32[4]{0} parameter(2)
  %custom-call.1 = (bf16[8,4]{1,0}, s8[1024]{0}) custom-call(%x, %w), custom_call_target="__cublas$lt$matmul"
  %input_add_reduce_fusion.2 = (f32[4]{0}, bf16[8,4]{1,0}) fusion(%custom-call.1#0, %b), kind=kInput, calls=%fused_add
  %loop_multiply_fusion.3 = bf16[8,4]{1,0} fusion(%input_add_reduce_fusion.2#1), kind=kLoop, calls=%fused_add
  ROOT %tuple.4 = (bf16[8,4]{1,0}, f32[4]{0}) tuple(%loop_multiply_fusion.3, %input_add_reduce_fusion.2#0)
}
"""


def test_counts_operands_and_results_of_xla_kernels_only():
    m = _module()
    kernels = {k["name"]: k for k in m.traffic(GPU_LIKE)["kernels"]}
    assert set(kernels) == {"input_add_reduce_fusion.2", "loop_multiply_fusion.3"}  # the GEMM is a library call
    # reads the GEMM's first output (8*4 bf16 = 64 B) and b (16 B); writes 16 + 64 B
    assert kernels["input_add_reduce_fusion.2"] == {"name": "input_add_reduce_fusion.2", "kind": "input",
                                                    "read": 80, "written": 80}
    assert (kernels["loop_multiply_fusion.3"]["read"], kernels["loop_multiply_fusion.3"]["written"]) == (64, 64)
    table = m.report(m.traffic(GPU_LIKE), bandwidth_tbs=1.0, top=5)
    assert "| **all non-library kernels** | 2 | 0.00 |" in table


def test_reads_a_real_compiled_module():
    # An elementwise function of one f32[1000] array: XLA:CPU fuses it into kernels that read and
    # write at least 4000 bytes each.
    m = _module()
    text = jax.jit(lambda x: jnp.sin(x) * 2.0 + 1.0).lower(jnp.ones(1000)).compile().as_text()
    kernels = m.traffic(text)["kernels"]
    assert kernels and all(k["written"] >= 4000 for k in kernels)
    assert sum(k["read"] for k in kernels) >= 4000


def test_refuses_text_without_an_entry_computation():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        _module().traffic("HloModule empty\n")
