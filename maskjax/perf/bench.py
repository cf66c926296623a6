"""``maskjax bench``: compile time, step time, throughput, FLOPs, MFU and data wait of a config.

The state and the jitted step are built with the trainer's own functions (``schedule_steps``,
``make_optimizer``, ``ModelTemplate``, ``create_state`` / ``abstract_state``,
``make_train_step``), in the same order as :func:`maskjax.train.loop.train`, so the program
timed here is the program ``maskjax train`` runs. Nothing is written but the text vocabulary
cache (``<workdir>/cache``, as the trainer does); no checkpoint, no evaluator.

Timing (async dispatch, as the trainer runs): step k is dispatched, the next host batch is read and
put on the device (``to_global_batch``) while step k runs, and only then does the host wait for
step k-1, so one step is always queued behind the running one and the batch transfer overlaps
with compute. The step time is the interval between two consecutive step completions (median over
the timed steps); the data wait is the time spent reading and transferring batches over the whole
loop time. It is an upper bound of the stall the input causes: time the host spends reading while
the device is still busy costs nothing.

FLOPs: ``maskjax.perf.flops`` (analytic, matmuls only, training = 3 x forward) and XLA's
``compiled.cost_analysis()["flops"]``. The latter describes the SPMD-partitioned per-device
program, so it is multiplied by the number of devices to compare with the global count. XLA counts
a loop body once: scanned layers (``model.scan_layers``) and the blockwise attention (the CPU default
from 128 keys, a loop over batch x head chunks) make its count lower than the analytic one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Sequence

import numpy as np

from maskjax.errors import UsageError

# Dense peak TFLOP/s per device (bf16/fp16 matmul, float32 matmul). TPUs run float32 matmuls as
# bf16 passes at default precision, so their bf16 peak is the reference for both. First match wins.
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("h200", 989.0, 67.0),
    ("h100", 989.0, 67.0),
    ("a100", 312.0, 19.5),
    ("tpu v4", 275.0, 275.0),
    ("tpu v5 lite", 197.0, 197.0),
    ("tpu v5e", 197.0, 197.0),
    ("tpu v5", 459.0, 459.0),   # v5p reports "TPU v5"
    ("tpu v6 lite", 918.0, 918.0),
    ("tpu v6e", 918.0, 918.0),
)

# Stand-in special token ids for text methods when no vocabulary exists (fit checks and synthetic
# benches): they only decide which positions may be masked, never a shape or a FLOP.


def peak_tflops(device_kind: str, compute_dtype: str = "float32") -> float | None:
    """Dense peak TFLOP/s of one device of ``device_kind`` for ``compute_dtype`` (None if unknown)."""
    kind = device_kind.lower()
    for needle, bf16, f32 in PEAK_TFLOPS:
        if needle in kind:
            return f32 if compute_dtype == "float32" else bf16
    return None


def load(spec: str, overrides: Sequence[tuple[str, str] | str] = (), batch: int | None = None):
    """Loads ``FILE[:arg]`` with overrides and an optional global batch.

    Overrides are ``(field, text)`` pairs or ``"field=text"`` strings (an optional ``--config.``
    prefix is accepted), read as the field's type exactly like ``--config.field=text``.
    """
    from maskjax.config.commandline import OVERRIDE_PREFIX, load_config_with_overrides

    pairs = []
    for item in overrides:
        if isinstance(item, str):
            field, eq, text = item.removeprefix(OVERRIDE_PREFIX).partition("=")
            if not eq:
                raise UsageError(f"override {item!r} is not FIELD=VALUE")
            item = (field, text)
        pairs.append(tuple(item))
    config = load_config_with_overrides(spec, pairs)
    if batch:
        config.global_batch = int(batch)
    return config


@dataclasses.dataclass
class StepSetup:
    """The trainer's objects for one config on one mesh (see :func:`build_setup`)."""

    config: Any
    method: Any
    template: Any
    tx: Any
    mesh: Any
    rules: Any
    init_key: Any
    abstract_state: dict       # ShapeDtypeStructs carrying the state's shardings
    state_shardings: dict
    batch_sharding: Any
    step_fn: Any               # the jitted train step (state donated)


def nominal_examples(config) -> int:
    """An example count for the lr schedule when no data is opened (the schedule shapes no memory)."""
    steps = config.total_steps or 1000
    return int(config.data.get("num_train_examples") or config.global_batch * steps)


def build_setup(config, mesh, num_examples: int) -> StepSetup:
    """Method, schedule, optimizer, abstract state and jitted step exactly as ``train()`` builds them."""
    from maskjax.methods import make_method
    from maskjax.train.loop import schedule_steps, training_parts
    from maskjax.core.sharding import batch_sharding, normalize_rules
    from maskjax.core.state import abstract_state
    from maskjax.train.step import make_train_step

    rules = normalize_rules(config.sharding_rules)
    method = make_method(config)
    method.use_synthetic_data()  # stand-ins for data-derived constants when no data files exist
    _, total_steps, warmup_steps = schedule_steps(config, num_examples)
    _, schedule, tx, template, init_key, step_key = training_parts(config, method, warmup_steps, total_steps)
    target, shardings = abstract_state(template, method.build, tx, mesh, rules, init_key)
    bsharding = batch_sharding(mesh, rules)
    step_fn = make_train_step(method, template, tx, schedule, base_key=step_key,
                              global_batch=config.global_batch, accum=config.grad_accum,
                              state_shardings=shardings, batch_sharding=bsharding)
    return StepSetup(config, method, template, tx, mesh, rules, init_key, target, shardings, bsharding, step_fn)


def batch_spec(config) -> dict:
    """Global shapes and dtypes of one training batch (the method's ``batch_spec``; no data read)."""
    from maskjax.methods import make_method

    return make_method(config).batch_spec()


def synthetic_batch(config, seed: int = 0) -> dict:
    """This process's share of a random batch with :func:`batch_spec`'s shapes (the method's ``synthetic_batch``)."""
    from maskjax.methods import make_method

    method = make_method(config)
    method.use_synthetic_data()
    return method.synthetic_batch(seed)


def analytic_flops(method, global_batch: int):
    """The method's analytic :class:`~maskjax.models.flop_count.FlopCount`, or None when it defines none."""
    from maskjax.methods import NotSupported

    try:
        return method.flops(int(global_batch))
    except NotSupported:
        return None


def xla_flops(compiled, num_devices: int) -> float | None:
    """Global FLOPs of a compiled step from XLA's cost analysis (per-device program x devices)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) * num_devices if flops and flops > 0 else None


def micro_batch_flops(setup, mesh, micro: int) -> float | None:
    """Global FLOPs of one micro-batch's loss and gradients, from the lowered (not compiled) program.

    Lowering is cheap (no XLA compile) and the lowered module is the global, unpartitioned
    program, so its cost analysis is already summed over devices.
    """
    import jax
    import jax.numpy as jnp

    from maskjax.core.keys import example_keys
    from maskjax.train.step import make_loss_and_grad

    grad_fn = make_loss_and_grad(setup.method, setup.template, 1)
    batch = {k: jax.ShapeDtypeStruct((micro,) + tuple(s.shape[1:]), s.dtype, sharding=setup.batch_sharding)
             for k, s in setup.method.batch_spec().items()}
    keys = jax.eval_shape(lambda: example_keys(jax.random.key(0), jnp.zeros((), jnp.int32), micro))
    state = setup.abstract_state
    try:
        with jax.set_mesh(mesh):
            cost = jax.jit(grad_fn).lower(state["params"], state["extra"], batch, keys, state["step"]).cost_analysis()
    except Exception:  # noqa: BLE001 - a backend without cost analysis: leave the count as XLA gave it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def accumulated_flops(compiled_flops: float | None, micro_flops: float | None, accum: int) -> float | None:
    """FLOPs of a whole accumulated step from XLA's count of the compiled one.

    The step scans over its micro-batches (maskjax/train/step.py) and XLA's cost analysis counts a
    loop body once, so the compiled count holds one micro-batch's forward and backward plus the
    optimizer update; the other ``accum - 1`` micro-batches are added. A count that already holds
    them all (an XLA that multiplies by the trip count) is left as it is.
    """
    if compiled_flops is None or micro_flops is None or accum <= 1:
        return compiled_flops
    if compiled_flops >= 0.9 * accum * micro_flops:
        return compiled_flops
    return compiled_flops + (accum - 1) * micro_flops


def memory_breakdown(compiled) -> dict[str, int] | None:
    """Per-device bytes from ``compiled.memory_analysis()``; total = args + outputs - aliased + temps + code."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
           "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
           "generated_code": int(m.generated_code_size_in_bytes)}
    # Donated state buffers are reused for the new state: count them once.
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["generated_code"]
    return out


def device_peak_bytes(devices) -> int | None:
    """Largest ``peak_bytes_in_use`` over ``devices`` (None where the backend keeps no stats, e.g. CPU)."""
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def run_pipelined(compiled, state, iterator, sharding, n: int):
    """Runs ``n`` steps as the trainer does; returns (state, metrics, completion times, data times).

    Step k is dispatched, the next batch is read and put on the device while it runs, and only
    then does the host wait for step k-1, so one step is always queued behind the running one.
    ``marks[k]`` is when step k was seen complete; ``data_s[k]`` the time spent reading and
    transferring the batch of step k + 1 while step k ran.
    """
    import jax

    from maskjax.data.pipeline import to_global_batch

    batch = to_global_batch(next(iterator), sharding)
    pending, marks, data_s, metrics = None, [], [], {}
    for k in range(n):
        state, metrics = compiled(state, batch)
        if k + 1 < n:
            t0 = time.perf_counter()
            batch = to_global_batch(next(iterator), sharding)
            data_s.append(time.perf_counter() - t0)
        if pending is not None:
            jax.block_until_ready(pending)
            marks.append(time.perf_counter())  # step k-1 done
        pending = metrics
    jax.block_until_ready((state, metrics))
    marks.append(time.perf_counter())
    return state, metrics, marks, data_s


def bench_config(config, *, label: str, steps: int = 20, warmup: int = 3, synthetic: bool = False,
                 workdir: str = "runs/bench", peak: float | None = None, log=None,
                 profile_dir: str | None = None, profile_steps: int = 3) -> dict:
    """Benchmarks the train step of ``config``; returns one row (see :func:`format_row`).

    With ``profile_dir``, ``profile_steps`` more steps run under ``jax.profiler.trace`` after the
    timed ones (so tracing never slows a timed step); the row's "profile" holds their kernel table.
    """
    import jax

    from maskjax.data.pipeline import to_global_batch
    from maskjax.train.loop import data_modality
    from maskjax.core.sharding import make_mesh
    from maskjax.core.state import create_state
    from maskjax.train.validate import validate_config

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if steps < 1 or warmup < 0:
        raise ValueError(f"need --steps >= 1 and --warmup >= 0, got {steps} and {warmup}")
    if not synthetic:
        validate_config(config)
    mesh = make_mesh(config.mesh)
    if synthetic:
        num_examples, iterator = nominal_examples(config), itertools.repeat(synthetic_batch(config, config.seed))
    else:
        modality = data_modality(config)
        modality.prepare(config, workdir)
        source = modality.open_source(config, "train")
        num_examples = config.data.num_train_examples or len(source)
        iterator = iter(modality.make_pipeline(config, source, train=True))
    setup = build_setup(config, mesh, num_examples)
    state, _ = create_state(setup.template, setup.method.build, setup.tx, mesh, setup.rules, setup.init_key)
    bsharding = setup.batch_sharding
    say(f"bench {label}: {setup.template.num_params() / 1e6:.2f}M params, mesh {dict(mesh.shape)}, compiling")
    with jax.set_mesh(mesh):
        first = to_global_batch(next(iterator), bsharding)  # pipeline start-up stays out of the timings
        t0 = time.perf_counter()
        compiled = setup.step_fn.lower(state, first).compile()
        compile_s = time.perf_counter() - t0
        del first
        state, metrics, marks, data_s = run_pipelined(compiled, state, iterator, bsharding, warmup + steps + 1)
        # marks[k] = completion of step k; the first warmup + 1 steps are untimed.
        step_s = [b - a for a, b in zip(marks[warmup:-1], marks[warmup + 1:])]
        data_s = data_s[warmup:warmup + steps]
        profile = None
        if profile_dir:
            from maskjax.perf.profiling import format_summary, summarize_trace

            with jax.profiler.trace(profile_dir):  # the same loop, so the trace shows the timed steps' gaps
                state, metrics, _, _ = run_pipelined(compiled, state, iterator, bsharding, profile_steps)
            profile = format_summary(summarize_trace(profile_dir), profile_steps, top=40)
    loss = float(jax.device_get(metrics["loss"]))
    if not math.isfinite(loss):
        say(f"bench {label}: warning: the loss is {loss} after {warmup + steps} steps")
    flops = analytic_flops(setup.method, config.global_batch)
    xla = xla_flops(compiled, mesh.size)
    if config.grad_accum > 1:  # XLA counts the accumulation loop's body once
        micro = micro_batch_flops(setup, mesh, config.global_batch // config.grad_accum)
        xla = accumulated_flops(xla, micro, config.grad_accum)
    median = statistics.median(step_s)
    examples = config.global_batch / median
    kind = mesh.devices.flat[0].device_kind
    per_device_peak = peak if peak is not None else peak_tflops(kind, config.compute_dtype)
    # Without an analytic count (a method that defines no flops()), MFU comes from XLA's count.
    train_flops = flops.train if flops is not None else xla
    achieved = train_flops / median / 1e12 if train_flops else None
    mem_device = device_peak_bytes(mesh.devices.flat)
    mem_compiled = memory_breakdown(compiled)
    return {
        "config": label, "method": config.method, "params": setup.template.num_params(),
        "global_batch": int(config.global_batch), "devices": int(mesh.size), "device_kind": kind,
        "compute_dtype": config.compute_dtype, "compile_s": compile_s,
        "step_s_median": median, "step_s_min": min(step_s), "step_s_max": max(step_s),
        "steps": steps, "warmup": warmup,
        "examples_per_s": examples, "examples_per_s_end_to_end": examples,  # the batch transfer now overlaps the step
        "token": flops.token if flops else "example", "tokens_per_example": flops.tokens_per_example if flops else 1,
        "tokens_per_s": examples * (flops.tokens_per_example if flops else 1),
        "analytic_flops": flops.train if flops else None, "xla_flops": xla,
        "xla_over_analytic": xla / flops.train if xla and flops else None,
        "achieved_tflops": achieved, "peak_tflops_per_device": per_device_peak,
        "mfu": achieved / (per_device_peak * mesh.size) if per_device_peak and achieved else None,
        "data_wait": None if synthetic else sum(data_s) / sum(step_s), "synthetic_data": synthetic,
        "peak_bytes": mem_device if mem_device is not None else (mem_compiled or {}).get("total"),
        "peak_bytes_source": "device" if mem_device is not None else "compiled",
        "compiled_memory": mem_compiled, "final_loss": loss, "profile": profile,
    }


HEADER = ("| config | method | params | global batch | compile (s) | step (s) median [min, max] | examples/s "
          "| tokens/s | model TFLOP/step (analytic) | XLA TFLOP/step | XLA/analytic | TFLOP/s | MFU | data wait "
          "| peak mem/device |")


def fmt_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB' (binary units); None -> 'n/a'."""
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def format_row(r: dict) -> str:
    """One markdown table row of a :func:`bench_config` result (columns of :data:`HEADER`)."""
    def num(x, spec):
        return "n/a" if x is None else format(x, spec)

    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    wait = "synthetic" if r["synthetic_data"] else f"{100 * r['data_wait']:.1f}%"
    mem = fmt_bytes(r["peak_bytes"]) + ("" if r["peak_bytes_source"] == "device" else " (compiled)")
    cells = [
        f"`{r['config']}`", r["method"], f"{r['params'] / 1e6:.2f}M", str(r["global_batch"]), f"{r['compile_s']:.1f}",
        f"{r['step_s_median']:.4f} [{r['step_s_min']:.4f}, {r['step_s_max']:.4f}]", f"{r['examples_per_s']:.1f}",
        f"{r['tokens_per_s']:.0f}", num(None if r["analytic_flops"] is None else r["analytic_flops"] / 1e12, ".4g"),
        num(None if r["xla_flops"] is None else r["xla_flops"] / 1e12, ".4g"), num(r["xla_over_analytic"], ".3f"),
        num(r["achieved_tflops"], ".3g"), mfu, wait, mem,
    ]
    return "| " + " | ".join(cells) + " |"


LEGEND = """\
Step time: interval between two consecutive step completions with the next batch transferred while a step
runs, as in the trainer (median of the timed steps after warm-up). Tokens: mae = image patches (all L per
image), bert/electra = text token positions (seq_len per block). FLOPs: analytic = matmuls at 2 FLOPs per
multiply-add, training = 3 x forward (maskjax/perf/flops.py); XLA = compiled.cost_analysis() x devices (adds
elementwise and optimizer work). MFU = analytic TFLOP/s over the device peak (n/a where unknown, e.g. CPU
without --peak-tflops). Data wait = time reading and transferring batches / loop time with the real input
pipeline."""


def main(argv: list[str] | None = None) -> int:
    """``maskjax bench --config FILE[:arg] [--config ...] [--config.X=V ...] [--steps 20] [--batch N] ...``."""
    from maskjax.config.commandline import ConfigArgumentParser

    p = ConfigArgumentParser(prog="maskjax bench", description="Time the training step of configs.",
                             several_configs=True)
    p.add_argument("--steps", type=int, default=20, help="timed steps after warm-up (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation (default 3)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    p.add_argument("--synthetic-data", action="store_true", help="random batches instead of the input pipeline")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s for MFU (default: table)")
    p.add_argument("--workdir", default="runs/bench", help="where a text vocabulary is cached (default runs/bench)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--compile-cache", "--compile_cache", default=None, metavar="DIR",
                   help="JAX persistent compilation cache directory (default: config.compile_cache_dir)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="trace --profile-steps more steps into DIR/<row> and print a kernel-time table per row")
    p.add_argument("--profile-steps", type=int, default=3, help="steps traced with --profile (default 3)")
    args = p.parse_config_args(sys.argv[1:] if argv is None else argv)
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain reads absl flags outside absl.app.run
    from maskjax.train.compile_cache import enable_compile_cache

    if args.profile_steps < 1:
        raise UsageError(f"--profile-steps must be >= 1, got {args.profile_steps}")
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    rows = []
    print(HEADER + "\n|" + "---|" * HEADER.count(" | ") + "---|", flush=True)
    for spec, config in zip(args.config_spec, args.config):
        if args.batch:
            config.global_batch = args.batch
        enable_compile_cache(args.compile_cache or config.get("compile_cache_dir"))
        trace_dir = os.path.join(args.profile, f"row{len(rows)}") if args.profile else None
        row = bench_config(config, label=spec, steps=args.steps, warmup=args.warmup,
                           synthetic=args.synthetic_data, workdir=args.workdir, peak=args.peak_tflops,
                           profile_dir=trace_dir, profile_steps=args.profile_steps)
        rows.append(row)
        print(format_row(row), flush=True)
    for row in rows:
        if row["profile"]:
            print(f"\n### Kernel time of `{row['config']}`\n\n{row['profile']}")
    print("\n" + LEGEND)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    from maskjax.errors import pop_debug_flag, run_command
    from maskjax.host_memory import tune_malloc

    tune_malloc()  # before JAX starts its backends, as `maskjax bench` does
    _argv, _debug = pop_debug_flag(sys.argv[1:])
    sys.exit(run_command("maskjax bench", main, _argv, debug=_debug))
