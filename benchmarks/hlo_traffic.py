"""Bytes moved per step by the non-GEMM kernels of a compiled XLA program (a memory-traffic floor).

Reads an XLA HLO text dump *after optimizations* (``XLA_FLAGS=--xla_dump_to=DIR``; the file
``DIR/module_*.jit_step.*after_optimizations.txt``) and, for every kernel of the entry computation
that is not a library call (GEMMs, cuDNN attention: ``custom-call`` and ``kCustom`` fusions),
adds the bytes of its operands and of its result. Each such kernel must at least read its inputs
and write its outputs once, so total bytes / memory bandwidth is a lower bound on the time of
the elementwise, reduction and copy kernels *as XLA has fused them*: fewer passes over memory,
not faster kernels, are what can go below it.

Usage:
  python benchmarks/hlo_traffic.py DUMP.txt [--bandwidth-tbs 3.35] [--top 15]

Operands read only in part (a slice) are counted whole, so the floor errs high for slicing
kernels; broadcast scalars and parameters count at their stored size.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1, "c64": 8, "c128": 16}
ARRAY = re.compile(r"\b([a-z0-9]+)\[([0-9,]*)\]")
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (.*?) ([a-z\-]+)\((.*)$")
OPERAND = re.compile(r"%([\w.\-]+)(?:#(\d+))?")
# Ops that launch no kernel or move no data of their own.
FREE_OPS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id",
            "replica-id", "opt-barrier"}


def array_bytes(type_text: str) -> list[int]:
    """Bytes of each array in an HLO type (one entry per tuple element)."""
    out = []
    for dtype, dims in ARRAY.findall(type_text):
        if dtype not in DTYPE_BYTES:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append(n * DTYPE_BYTES[dtype])
    return out


def entry_lines(text: str) -> list[str]:
    """The instruction lines of the ENTRY computation."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("ENTRY "):
            inside = True
            continue
        if inside:
            if line.startswith("}"):
                break
            lines.append(line)
    if not lines:
        raise ValueError("no ENTRY computation found: pass an HLO text dump (after optimizations)")
    return lines


def kernel_kind(op: str, rest: str) -> str | None:
    """'library' for GEMM/cuDNN calls, the fusion kind (loop/input/...) for XLA kernels, else the op."""
    if op == "custom-call":
        return "library"
    if op == "fusion":
        kind = re.search(r"kind=k(\w+)", rest)
        kind = kind.group(1).lower() if kind else "fusion"
        return "library" if kind == "custom" else kind
    return None if op in FREE_OPS else op


def traffic(text: str) -> dict:
    """Per-kernel bytes (operands + result) of the entry computation's non-library kernels."""
    sizes: dict[str, list[int]] = {}
    kernels = []
    for line in entry_lines(text):
        m = INSTRUCTION.match(line)
        if not m:
            continue
        name, type_text, op, rest = m.groups()
        sizes[name] = array_bytes(type_text)
        kind = kernel_kind(op, rest)
        if kind is None or kind == "library":
            continue
        args = rest.split("), ")[0]  # the operand list ends at the first ")," before the attributes
        read = 0
        for ref, index in OPERAND.findall(args):
            parts = sizes.get(ref, [])
            # `%name#k` reads element k of a tuple result; a plain `%name` reads all of it.
            read += parts[int(index)] if index and int(index) < len(parts) else sum(parts)
        kernels.append({"name": name, "kind": kind, "read": read, "written": sum(sizes[name])})
    return {"kernels": kernels}


def report(result: dict, bandwidth_tbs: float, top: int) -> str:
    """A text table: bytes by kernel kind, the floor time at ``bandwidth_tbs``, the largest kernels."""
    kernels = result["kernels"]
    by_kind = collections.defaultdict(lambda: [0, 0])
    for k in kernels:
        by_kind[k["kind"]][0] += 1
        by_kind[k["kind"]][1] += k["read"] + k["written"]
    total = sum(v[1] for v in by_kind.values())
    out = [f"| kernel kind | kernels | GB moved | floor at {bandwidth_tbs} TB/s (ms) |", "|---|---|---|---|"]
    for kind, (n, b) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        out.append(f"| {kind} | {n} | {b / 1e9:.2f} | {b / bandwidth_tbs / 1e9:.2f} |")
    out.append(f"| **all non-library kernels** | {len(kernels)} | {total / 1e9:.2f} | "
               f"{total / bandwidth_tbs / 1e9:.2f} |")
    out += ["", "| kernel | kind | MB read | MB written |", "|---|---|---|---|"]
    for k in sorted(kernels, key=lambda k: -(k["read"] + k["written"]))[:top]:
        out.append(f"| `{k['name']}` | {k['kind']} | {k['read'] / 1e6:.1f} | {k['written'] / 1e6:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dump", help="HLO text dump after optimizations")
    p.add_argument("--bandwidth-tbs", type=float, default=3.35, help="memory bandwidth (H100 SXM: 3.35)")
    p.add_argument("--top", type=int, default=15, help="how many of the largest kernels to list")
    args = p.parse_args(argv)
    with open(args.dump) as f:
        print(report(traffic(f.read()), args.bandwidth_tbs, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
