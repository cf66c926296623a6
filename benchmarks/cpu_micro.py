"""CPU micro-benchmarks behind the "CPU vs PyTorch" rows of docs/performance.md.

Each part times forward + backward of one piece, maskjax/JAX against PyTorch (and JAX variants
against each other), interleaved, by **process CPU time** with ``torch.set_num_threads(1)``; run it
pinned to one core (``taskset -c 1``) so both sides get the same single core:

- ``attention``: the attention core at the shapes of the benchmark cases, XLA's
  ``jax.nn.dot_product_attention``, ``bhtd`` and ``blockwise`` vs ``scaled_dot_product_attention``;
- ``matmul``: the six matmuls of an MLP's forward and backward (default [3152, 512] x [512, 2048]:
  ViT-S decoder tokens), plain XLA and the layout of ``maskjax.models.linear.matmul_cpu``, vs torch;
- ``bmm``: the attention cores' batched matmuls against one plain GEMM of the same FLOPs, JAX vs
  ``torch.bmm``, by **wall clock** on all the process's cores (run it on one core and on two: the
  batched matmuls of XLA:CPU do not use a second thread);
- ``block``: a whole pre-LN block (``layers.Block``) with and without the CPU layout tweaks
  (``matmul_cpu`` + ``gelu_erf``), vs HF's ``ViTMAELayer``;
- ``profile``: where one block's forward + backward spends its time, per XLA op (needs
  ``XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true``, which the part sets), grouped into matmuls,
  attention loops, layout copies (transposes, pads, materialised broadcasts) and the rest.

Usage: ``JAX_PLATFORMS=cpu taskset -c 1 python benchmarks/cpu_micro.py attention|matmul|bmm|block|profile [--reps 7]``
(``profile`` and ``matmul`` take ``--shape``, a key of ``SHAPES``; defaults "cifar_tiny decoder" and
"vit_s16 decoder").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# (batch, tokens, width, heads) of the attention/blocks in the hf_throughput cases.
SHAPES = {"vit_s16 decoder": (16, 197, 512, 16), "vit_s16 encoder": (16, 50, 384, 6),
          "cifar_tiny decoder": (128, 65, 96, 4), "cifar_tiny encoder": (128, 17, 96, 3)}


def _time(fns: dict, reps: int, clock=time.process_time) -> dict:
    """Median seconds (of ``clock``, default process CPU time) per call of each zero-argument
    function, calls interleaved."""
    import jax

    for f in fns.values():
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = clock()
            jax.block_until_ready(f())
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _print(label: str, res: dict) -> None:
    ref = res["torch"]
    print(f"| {label} | " + " | ".join(f"{k} {1e3 * v:.0f} ms ({v / ref:.2f}x)" for k, v in res.items()) + " |",
          flush=True)


def attention(reps: int) -> None:
    """Attention core fwd+bwd per impl vs torch SDPA."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from maskjax.models.attention import bhtd_attention, blockwise_attention

    impls = {"xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
             "bhtd": bhtd_attention, "blockwise": blockwise_attention}
    for label, (b, t, d, h) in SHAPES.items():
        rng = np.random.default_rng(0)
        q, k, v, w = (rng.standard_normal((b, t, h, d // h), dtype=np.float32) for _ in range(4))
        fns = {}
        for name, f in impls.items():
            g = jax.jit(jax.grad(lambda q, k, v, w, f=f: jnp.sum(f(q, k, v) * w), argnums=(0, 1, 2)))
            fns[name] = lambda g=g: g(q, k, v, w)
        tq, tk, tv = (torch.tensor(x.transpose(0, 2, 1, 3).copy(), requires_grad=True) for x in (q, k, v))
        tw = torch.tensor(w.transpose(0, 2, 1, 3).copy())

        def torch_step():
            (torch.nn.functional.scaled_dot_product_attention(tq, tk, tv) * tw).sum().backward()
            tq.grad = tk.grad = tv.grad = None

        fns["torch"] = torch_step
        _print(f"attention {label} {(b, t, h, d // h)}", _time(fns, reps))


def matmul(reps: int, shape: str = "vit_s16 decoder") -> None:
    """The six MLP matmuls at ``shape``'s tokens and width: plain XLA, the matmul_cpu layout for the
    two kernel gradients, torch."""
    import jax
    import numpy as np
    import torch

    barrier = jax.lax.optimization_barrier
    b, t, d, _ = SHAPES[shape]
    n, f = b * t, 4 * d
    rng = np.random.default_rng(0)
    x, g2 = (rng.standard_normal((n, d), dtype=np.float32) for _ in range(2))
    h = rng.standard_normal((n, f), dtype=np.float32)
    w1, w2 = rng.standard_normal((d, f), dtype=np.float32), rng.standard_normal((f, d), dtype=np.float32)
    cases = {
        "x @ w1": (lambda x, h, w1, w2, g2: x @ w1, None),
        "h @ w2": (lambda x, h, w1, w2, g2: h @ w2, None),
        "g2 @ w2^T (dh)": (lambda x, h, w1, w2, g2: g2 @ w2.T, None),
        "h @ w1^T (dx)": (lambda x, h, w1, w2, g2: h @ w1.T, None),
        "x^T @ h (dw1)": (lambda x, h, w1, w2, g2: x.T @ h, lambda x, h, w1, w2, g2: barrier(x.T) @ h),
        "h^T @ g2 (dw2)": (lambda x, h, w1, w2, g2: h.T @ g2,
                           lambda x, h, w1, w2, g2: barrier(barrier(g2.T) @ h).T),
    }
    args = (x, h, w1, w2, g2)
    targs = tuple(torch.tensor(a) for a in args)
    for label, (plain, layout) in cases.items():
        fns = {"xla": (lambda f=jax.jit(plain): f(*args))}
        if layout is not None:
            fns["matmul_cpu layout"] = lambda f=jax.jit(layout): f(*args)
        fns["torch"] = lambda: plain(*targs)
        _print(f"matmul {label} [{n}, {d}, {f}]", _time(fns, reps))


def bmm(reps: int) -> None:
    """The attention cores' batched matmuls (QK^T and PV, batch = batch x heads) by wall clock on
    all the cores this process may use, JAX vs ``torch.bmm``, each next to one plain GEMM of the
    same FLOPs ([G*T, D] x [D, T]): run on one core and on two to see which of them scale.
    Without torch (e.g. a Python 3.12 venv for a newer jax) the torch columns read n/a."""
    import jax
    import numpy as np

    try:
        import torch
    except ImportError:
        torch = None
    threads = len(os.sched_getaffinity(0))
    if torch is not None:
        torch.set_num_threads(threads)
    print(f"threads: {threads}; wall clock, median ms per call; jax {jax.__version__}, "
          f"torch {torch.__version__ if torch is not None else 'not installed'}")
    print("| batched matmul | jax bmm | jax gemm | jax bmm / gemm | torch bmm | torch gemm | jax / torch bmm |")
    print("|---|---|---|---|---|---|---|")
    bmm_jax = jax.jit(lambda a, b: a @ b)
    rng = np.random.default_rng(0)
    for label, (b, t, d, h) in SHAPES.items():
        g, dh = b * h, d // h
        for what, (m, k, n) in (("QK^T", (t, dh, t)), ("PV", (t, t, dh))):
            a, c = rng.standard_normal((g, m, k), dtype=np.float32), rng.standard_normal((g, k, n), dtype=np.float32)
            flat = a.reshape(g * m, k)   # one GEMM, same FLOPs: [G*M, K] x [K, N]
            ja, jc, jflat, jc0 = (jax.device_put(x) for x in (a, c, flat, c[0]))  # no transfer in the timing
            fns = {"jax bmm": lambda: bmm_jax(ja, jc), "jax gemm": lambda: bmm_jax(jflat, jc0)}
            if torch is not None:
                ta, tc, tflat, tc0 = torch.tensor(a), torch.tensor(c), torch.tensor(flat), torch.tensor(c[0])
                fns.update({"torch bmm": lambda: torch.bmm(ta, tc), "torch gemm": lambda: tflat @ tc0})
            res = _time(fns, reps, clock=time.perf_counter)
            ms = {key: f"{1e3 * res[key]:.2f}" if key in res else "n/a"
                  for key in ("jax bmm", "jax gemm", "torch bmm", "torch gemm")}
            vs_torch = f"{res['jax bmm'] / res['torch bmm']:.2f}" if torch is not None else "n/a"
            print(f"| {label} {what} [{g}, {m}, {k}] x [{g}, {k}, {n}] | {ms['jax bmm']} | {ms['jax gemm']} | "
                  f"{res['jax bmm'] / res['jax gemm']:.2f} | {ms['torch bmm']} | {ms['torch gemm']} | {vs_torch} |",
                  flush=True)


def block(reps: int) -> None:
    """A pre-LN block fwd+bwd: plain layers vs the CPU layout tweaks vs HF ViTMAELayer."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx
    from transformers import ViTMAEConfig
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAELayer

    from maskjax.models import layers

    tweaked_call, tweaked_gelu = layers.Dense.__call__, layers.gelu_erf
    for label, (b, t, d, h) in SHAPES.items():
        x = np.random.default_rng(0).standard_normal((b, t, d), dtype=np.float32)
        fns = {}
        for variant in ("plain", "tweaks", "tweaks+blockwise"):
            plain = variant == "plain"
            layers.Dense.__call__ = nnx.Linear.__call__ if plain else tweaked_call
            layers.gelu_erf = (lambda v: jax.nn.gelu(v, approximate=False)) if plain else tweaked_gelu
            impl = "blockwise" if variant.endswith("blockwise") else "xla"
            graphdef, params = nnx.split(layers.Block(d, h, rngs=nnx.Rngs(0), attention_impl=impl), nnx.Param)
            g = jax.jit(jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2), argnums=(0, 1)))
            fns[variant] = lambda g=g, p=params: g(p, x)
            jax.block_until_ready(fns[variant]())  # trace now, while this variant's layers are set
        layers.Dense.__call__, layers.gelu_erf = tweaked_call, tweaked_gelu
        cfg = ViTMAEConfig(hidden_size=d, num_attention_heads=h, intermediate_size=4 * d, layer_norm_eps=1e-6,
                           attn_implementation="sdpa")
        layer = ViTMAELayer(cfg).train()
        tx = torch.tensor(x, requires_grad=True)

        def torch_step():
            out = layer(tx)
            out = out[0] if isinstance(out, tuple) else out
            (out ** 2).sum().backward()
            tx.grad = None
            layer.zero_grad(set_to_none=True)

        fns["torch"] = torch_step
        _print(f"block {label} {(b, t, d, h)}", _time(fns, reps))


def _op_group(hlo: str, name: str) -> str:
    """The group of XLA op ``name`` in the optimised HLO text ``hlo`` (see :func:`profile`)."""
    import re

    if name.startswith("while"):
        return "attention loops (blockwise)"
    line = re.search(r"\n\s*(?:ROOT )?%" + re.escape(name) + r" = .*", hlo)
    text = line.group(0) if line else name
    if "__ynn_fusion" in text or name.startswith(("dot", "ynn_fusion")):
        return "matmuls and reductions (YNNPACK)"
    if re.search(r"transpose|copy|pad|broadcast", name):
        return "layout: transposes, copies, pads, broadcasts"
    return "elementwise fusions (LayerNorm, GELU, residual, softmax pieces)"


def profile(reps: int, shape: str) -> None:
    """Per-op times of one block's forward + backward from a JAX profiler trace, in groups."""
    import collections
    import glob
    import gzip
    import json
    import tempfile

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from maskjax.models import layers

    b, t, d, h = SHAPES[shape]
    x = np.random.default_rng(0).standard_normal((b, t, d), dtype=np.float32)
    graphdef, params = nnx.split(layers.Block(d, h, rngs=nnx.Rngs(0)), nnx.Param)
    g = jax.jit(jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2), argnums=(0, 1)))
    hlo = g.lower(params, x).compile().as_text()
    jax.block_until_ready(g(params, x))
    with tempfile.TemporaryDirectory() as out:
        with jax.profiler.trace(out, create_perfetto_trace=True):
            for _ in range(reps):
                jax.block_until_ready(g(params, x))
        events = json.load(gzip.open(glob.glob(f"{out}/**/*.trace.json.gz", recursive=True)[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op, busy_until = collections.Counter(), {}
    ops = [e for e in events if e.get("ph") == "X" and not e["name"].startswith(("$", "Thunk", "Pjit", "PjRt"))]
    for e in sorted(ops, key=lambda e: (e["tid"], e["ts"], -e.get("dur", 0))):
        if e["ts"] < busy_until.get(e["tid"], -1):
            continue  # an op inside a while loop's body: counted in the loop's own time
        busy_until[e["tid"]] = e["ts"] + e.get("dur", 0)
        per_op[e["name"]] += e.get("dur", 0) / 1e3 / reps
    groups = collections.Counter()
    for name, ms in per_op.items():
        groups[_op_group(hlo, name)] += ms
    total = sum(groups.values())
    print(f"| {shape} {(b, t, d, h)}: group | ms per call | share |\n|---|---|---|")
    for group, ms in groups.most_common():
        print(f"| {group} | {ms:.1f} | {100 * ms / total:.0f} % |")
    print(f"| total of the ops | {total:.1f} | |\n")
    for group in groups:
        top = [(n, ms) for n, ms in per_op.most_common() if _op_group(hlo, n) == group][:6]
        print(f"- {group}: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in top))


def main() -> None:
    """Runs one part (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("attention", "matmul", "bmm", "block", "profile"))
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--shape", default=None, choices=sorted(SHAPES), help="for profile and matmul")
    args = p.parse_args()
    if args.part == "profile":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
        return profile(args.reps, args.shape or "cifar_tiny decoder")
    if args.part == "bmm":
        return bmm(args.reps)
    import torch

    torch.set_num_threads(1)
    if args.part == "matmul":
        return matmul(args.reps, args.shape or "vit_s16 decoder")
    {"attention": attention, "block": block}[args.part](args.reps)


if __name__ == "__main__":
    main()
