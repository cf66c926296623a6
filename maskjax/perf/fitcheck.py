"""``maskjax fitcheck``: compile the train step for a target mesh ahead of time and report its memory.

Nothing is run and nothing of the model is allocated: the state is ``abstract_state`` (shape,
dtype and sharding only), the batch a dict of sharded ``ShapeDtypeStruct`` s, and the step is
``jit(...).lower(state, batch).compile()``. XLA's ``memory_analysis()`` of the compiled,
SPMD-partitioned program gives the bytes each device needs (arguments = its shard of the
params, optimizer state and batch; temporaries = activations and workspace), and
``cost_analysis()`` the FLOPs (per device, multiplied by the device count here).

Targets:

- ``--platform cpu --devices N``: N simulated CPU devices (``XLA_FLAGS=
  --xla_force_host_platform_device_count=N`` is set before JAX starts). CPU memory figures are
  the CPU compiler's: fusion and buffer reuse differ from TPU/GPU, so treat them as an estimate.
- ``--topology v5e-256`` (``v4-128``, ``v5p-256``, ``v6e-64``, ...): a compile-only TPU
  topology from ``jax.experimental.topologies.get_topology_desc``, which needs libtpu
  (``pip install 'jax[tpu]'``); without it the command says so and exits 2.
- ``--platform gpu``: the GPUs attached to this machine (the first ``--devices``).

When the step does not fit, a few more ahead-of-time compiles try the usual remedies (gradient
accumulation, a remat policy, more FSDP, and combinations; :mod:`maskjax.perf.fit_remedies`)
and the report ends with the cheapest that fit as ``--config.X=V`` flags to add.

Options: ``--config FILE[:ARG]`` and ``--config.FIELD=VALUE`` overrides as every command
(:mod:`maskjax.config.commandline`); ``--batch N`` is short for ``--config.global_batch=N``.

Exit status: 0 fits (or no memory size to compare with), 1 does not fit, 2 usage/environment
(one line on stderr; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time

from maskjax.errors import ConfigError, UsageError, UserError, pop_debug_flag, run_command

# Per-chip HBM in GiB (a TPU "device" is a chip; v4/v5p run both TensorCores as one megacore).
TPU_MEMORY_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}
GPU_MEMORY_GIB = (("h200", 141.0), ("h100", 80.0), ("a100-sxm4-80gb", 80.0), ("a100 80gb", 80.0),
                  ("a100-pcie-80gb", 80.0), ("a100", 40.0))

# Cloud TPU names -> (topology, chip config, chips per host bounds). v4/v5p names count
# TensorCores (2 per chip), v5e/v6e names count chips. Host bounds follow MaxText's table.
_TORUS = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
          512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"}
_GRID = {1: ("1x1", (1, 1, 1)), 4: ("2x2", (2, 2, 1)), 8: ("2x4", (2, 4, 1)), 16: ("4x4", (2, 2, 1)),
         32: ("4x8", (2, 2, 1)), 64: ("8x8", (2, 2, 1)), 128: ("8x16", (2, 2, 1)), 256: ("16x16", (2, 2, 1))}
TPU_TOPOLOGIES: dict[str, tuple[str, str, tuple[int, int, int]]] = {}
for _chips, _shape in _TORUS.items():
    TPU_TOPOLOGIES[f"v4-{2 * _chips}"] = (f"v4:{_shape}", "megacore", (2, 2, 1))
    TPU_TOPOLOGIES[f"v5p-{2 * _chips}"] = (f"v5:{_shape}", "megacore", (2, 2, 1))
for _chips, (_shape, _host) in _GRID.items():
    TPU_TOPOLOGIES[f"v5e-{_chips}"] = (f"v5e:{_shape}", "default", _host)
    TPU_TOPOLOGIES[f"v6e-{_chips}"] = (f"v6e:{_shape}", "default", _host)


class FitcheckError(UserError, RuntimeError):
    """The target cannot be set up on this machine; the message is one line for the user."""


def known_topologies() -> list[str]:
    """TPU topology names ``--topology`` accepts, sorted by generation then size."""
    def key(name):
        gen, size = name.split("-")
        return gen, int(size)
    return sorted(TPU_TOPOLOGIES, key=key)


def tpu_devices(name: str):
    """Compile-only devices of TPU topology ``name`` (FitcheckError when unknown or no libtpu)."""
    if name not in TPU_TOPOLOGIES:
        raise FitcheckError(f"unknown TPU topology {name!r}; known: {', '.join(known_topologies())}")
    topology, chip_config, host_bounds = TPU_TOPOLOGIES[name]
    from jax.experimental.topologies import get_topology_desc

    try:
        desc = get_topology_desc(topology_name=topology, platform="tpu", chip_config_name=chip_config,
                                 chips_per_host_bounds=host_bounds, num_slices=1)
    except Exception as e:  # noqa: BLE001 - RuntimeError/ImportError/JaxRuntimeError without libtpu
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FitcheckError(f"cannot compile for TPU topology {name} here: libtpu could not be loaded "
                            f"(pip install 'jax[tpu]' on a machine that can run it); JAX said: {first}") from e
    return list(desc.devices), host_bounds


def default_memory_gib(platform: str, topology: str | None, device_kind: str) -> float | None:
    """Per-device memory of the target from the tables above (None for CPU or unknown GPUs)."""
    if topology:
        return TPU_MEMORY_GIB[topology.split("-")[0]]
    kind = device_kind.lower()
    if platform == "gpu":
        for needle, gib in GPU_MEMORY_GIB:
            if needle in kind:
                return gib
    return None


def set_cpu_device_count(n: int) -> None:
    """Asks XLA for ``n`` CPU devices if JAX has not started its backends yet (else checks the count)."""
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        return
    import jax

    have = len(jax.devices("cpu"))
    if have < n:
        raise FitcheckError(f"JAX already started with {have} CPU devices, fewer than --devices {n}; run fitcheck "
                            f"in a fresh process (or set XLA_FLAGS=--xla_force_host_platform_device_count={n})")


def target_devices(platform: str, devices: int | None, topology: str | None):
    """(devices, number of hosts, description) of the target."""
    if topology:
        devs, bounds = tpu_devices(topology)
        per_host = bounds[0] * bounds[1] * bounds[2]
        return devs, max(1, len(devs) // per_host), f"TPU {topology} ({len(devs)} chips)"
    import jax

    if platform == "cpu" and devices:
        set_cpu_device_count(devices)
    try:
        available = jax.devices(platform)
    except RuntimeError as e:
        raise FitcheckError(f"no {platform} backend on this machine ({str(e).splitlines()[0]})") from e
    n = devices or len(available)
    if n > len(available):
        raise FitcheckError(f"--devices {n} but this machine has {len(available)} {platform} devices")
    return available[:n], 1, f"{n} x {available[0].device_kind}"


def _mesh(config, devices, topology: str | None):
    from jax.sharding import AxisType, Mesh

    from maskjax.core.sharding import MESH_AXES, make_mesh, resolve_mesh_shape

    if not topology:
        return make_mesh(config.mesh, devices)
    from jax.experimental import mesh_utils

    # A topology-aware device order, as jax.make_mesh picks on real TPUs.
    sizes = resolve_mesh_shape(config.mesh, len(devices))
    grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


_DATA_PROBLEMS = ("does not exist", "is not set", "matches no file", "is not a directory")


def check_config(config, num_devices: int, hosts: int) -> list[str]:
    """Runs the trainer's config validation for the target; returns the data-path problems it skipped.

    The fit check reads no data, so missing data files are notes, not errors; anything else
    (mesh, batch divisibility, model fields) raises :class:`~maskjax.train.validate.ConfigError`.
    """
    from maskjax.train.validate import validate_config

    try:
        validate_config(config, num_devices=num_devices, process_count=hosts)
    except ConfigError as e:
        problems = e.problems
        fatal = [p for p in problems if not any(s in p for s in _DATA_PROBLEMS)]
        if fatal:
            raise ConfigError("invalid config for this target: " + "; ".join(fatal)) from None
        return problems
    return []


@dataclasses.dataclass
class StepCompile:
    """One ahead-of-time compile of a config's train step (per-device bytes, global FLOPs)."""

    mesh: dict
    params: int
    memory: dict                  # bench.memory_breakdown
    xla_flops: float | None       # every micro-batch counted (see accumulated_flops)
    analytic_flops: float | None
    carry_bytes: int              # one copy of the parameters per device
    compile_s: float


def compile_step(config, devices, topology: str | None) -> StepCompile:
    """Compiles ``config``'s train step for ``devices`` from abstract inputs; nothing is allocated or run."""
    import jax
    import numpy as np

    from maskjax.perf.bench import (accumulated_flops, analytic_flops, build_setup, memory_breakdown,
                                    micro_batch_flops, nominal_examples, xla_flops)

    mesh = _mesh(config, devices, topology)
    setup = build_setup(config, mesh, nominal_examples(config))
    batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=setup.batch_sharding)
             for k, s in setup.method.batch_spec().items()}
    count = analytic_flops(setup.method, config.global_batch)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = setup.step_fn.lower(setup.abstract_state, batch).compile()
    compile_s = time.perf_counter() - t0
    memory = memory_breakdown(compiled)
    if memory is None:
        raise FitcheckError(f"XLA gives no memory analysis for {devices[0].device_kind}")
    accum = int(config.grad_accum)
    flops = xla_flops(compiled, mesh.size)
    if accum > 1:
        flops = accumulated_flops(flops, micro_batch_flops(setup, mesh, int(config.global_batch) // accum), accum)
    carry = sum(int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
                for leaf in jax.tree.leaves(setup.abstract_state["params"]))
    return StepCompile(mesh=dict(mesh.shape), params=setup.template.num_params(), memory=memory, xla_flops=flops,
                       analytic_flops=None if count is None else count.train, carry_bytes=carry,
                       compile_s=compile_s)


@dataclasses.dataclass
class FitReport:
    """What :func:`fit_check` found; ``fits`` is None when no device memory size is known."""

    target: str
    mesh: dict
    params: int
    global_batch: int
    grad_accum: int
    memory: dict               # per device, bytes (bench.memory_breakdown)
    xla_flops: float | None    # global, per step, every micro-batch counted
    analytic_flops: float | None  # None: the method defines no analytic count
    device_memory_gib: float | None
    fits: bool | None
    compile_s: float
    notes: list
    live_device_bytes: int = 0  # device buffers alive after compiling: ~0, nothing was materialised
    remedies: dict | None = None  # the remedy search when it does not fit (fit_remedies.RemedySearch)


def fit_check(config, *, platform: str = "cpu", devices: int | None = None, topology: str | None = None,
              device_memory_gib: float | None = None, remedies: bool = True, max_compiles: int = 8,
              want: int = 3) -> FitReport:
    """Compiles ``config``'s train step for the target without running it or allocating the model.

    When it does not fit and ``remedies`` is set, up to ``max_compiles`` more compiles look for
    the ``want`` cheapest changes that fit (:mod:`maskjax.perf.fit_remedies`).
    """
    import jax

    devs, hosts, target = target_devices(platform, devices, topology)
    notes = [f"not checked (no data is read): {p}" for p in check_config(config, len(devs), hosts)]
    base = compile_step(config, devs, topology)
    if device_memory_gib is None:
        device_memory_gib = default_memory_gib(platform, topology, devs[0].device_kind)
    budget = None if device_memory_gib is None else int(device_memory_gib * 2**30)
    fits = None if budget is None else base.memory["total"] <= budget
    search = None
    if fits is False and remedies and max_compiles > 0:
        from maskjax.perf.fit_remedies import Measured, search_remedies

        def measure(candidate) -> Measured:
            check_config(candidate, len(devs), hosts)
            c = compile_step(candidate, devs, topology)
            return Measured(c.memory["total"], c.xla_flops, c.carry_bytes)

        search = search_remedies(config, Measured(base.memory["total"], base.xla_flops, base.carry_bytes),
                                 temporaries=base.memory["temporaries"], budget=budget, num_devices=len(devs),
                                 compile_fn=measure, max_compiles=max_compiles, want=want)
    return FitReport(target=target, mesh=base.mesh, params=base.params, global_batch=int(config.global_batch),
                     grad_accum=int(config.grad_accum), memory=base.memory, xla_flops=base.xla_flops,
                     analytic_flops=base.analytic_flops, device_memory_gib=device_memory_gib, fits=fits,
                     compile_s=base.compile_s, notes=notes,
                     live_device_bytes=int(sum(a.nbytes for a in jax.live_arrays())),
                     remedies=None if search is None else dataclasses.asdict(search))


def format_report(r: FitReport, label: str) -> str:
    """The human-readable report printed by ``maskjax fitcheck``."""
    from maskjax.perf.bench import fmt_bytes

    m = r.memory
    lines = [f"fitcheck {label}: {r.target}, mesh {r.mesh}, global batch {r.global_batch} "
             f"(x{r.grad_accum} accumulation), {r.params / 1e6:.2f}M params",
             f"compiled ahead of time in {r.compile_s:.1f} s (abstract inputs: nothing was allocated or run)",
             "per-device memory (XLA memory_analysis):",
             f"  arguments       {fmt_bytes(m['arguments']):>12}  (params, optimizer state, batch shard)",
             f"  outputs         {fmt_bytes(m['outputs']):>12}",
             f"  aliased         {fmt_bytes(-m['aliased']):>12}  (donated state reused for the outputs)",
             f"  temporaries     {fmt_bytes(m['temporaries']):>12}  (activations, workspace)",
             f"  generated code  {fmt_bytes(m['generated_code']):>12}",
             f"  total           {fmt_bytes(m['total']):>12}"]
    xla = "n/a" if r.xla_flops is None else f"{r.xla_flops / 1e12:.4g} TFLOP"
    analytic = "n/a (the method defines no flops())" if r.analytic_flops is None else f"{r.analytic_flops / 1e12:.4g} TFLOP"
    ratio = "" if r.xla_flops is None or r.analytic_flops is None else f" (XLA/analytic {r.xla_flops / r.analytic_flops:.3f})"
    lines.append(f"FLOPs per step: XLA {xla}, analytic {analytic}{ratio}")
    if r.grad_accum > 1 and r.xla_flops is not None:
        lines.append(f"  (all {r.grad_accum} micro-batches: XLA counts the accumulation loop's body once, the "
                     f"other {r.grad_accum - 1} are added from the lowered micro-batch gradient)")
    lines += [f"note: {n}" for n in r.notes]
    if r.fits is None:
        lines.append("fit: unknown (no memory size for this device; pass --device-memory-gib)")
    else:
        need = fmt_bytes(m["total"])
        verdict = "fits" if r.fits else "does not fit"
        lines.append(f"fit: {verdict} in {r.device_memory_gib:g} GiB per device (needs {need}, "
                     f"{100 * m['total'] / (r.device_memory_gib * 2**30):.1f}%)")
    if r.remedies is not None:
        from maskjax.perf.fit_remedies import RemedySearch, Trial, format_remedies

        fields = dict(r.remedies, trials=[Trial(**t) for t in r.remedies["trials"]])
        lines += format_remedies(RemedySearch(**fields), fmt_bytes)
    return "\n".join(lines)


def _parser():
    import argparse

    from maskjax.config.commandline import ConfigArgumentParser

    p = ConfigArgumentParser(prog="maskjax fitcheck", description=__doc__.split("\n\n")[0] + "\nWhen it does not fit, "
                             "it compiles the usual remedies and prints the cheapest that fit as flags to add."
                             "\n\nExamples:\n"
                             "  maskjax fitcheck --config configs/mae/vit_b16_in1k.py --topology v5e-256\n"
                             "  maskjax fitcheck --config configs/mae/default.py --platform cpu --devices 8 "
                             "--config.grad_accum=4")
    p.add_argument("--topology", default=None, help=f"TPU topology, e.g. v5e-256, v4-128, v5p-256 "
                   f"(known: {', '.join(known_topologies())})")
    p.add_argument("--platform", choices=("cpu", "gpu", "tpu"), default=None,
                   help="cpu (simulated devices) or gpu (attached); default tpu with --topology, else cpu")
    p.add_argument("--devices", type=int, default=None, help="number of devices (cpu: simulated)")
    p.add_argument("--device-memory-gib", type=float, default=None, help="memory per device (default: table)")
    p.add_argument("--batch", type=int, default=None,
                   help="global batch (a shortcut for --config.global_batch; default: the config's)")
    p.add_argument("--max-compiles", type=int, default=8,
                   help="most extra compiles spent looking for remedies when it does not fit (0: none)")
    p.add_argument("--remedies", type=int, default=3, help="stop after this many remedies fit")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    # The old spelling, kept only to say what replaced it.
    p.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """``maskjax fitcheck --config FILE[:arg] [--topology v5e-256 | --platform cpu --devices 8] [--config.X=V]``.

    Returns 0 when it fits (or no memory size is known), 1 when it does not; a usage or
    environment problem raises a :class:`~maskjax.errors.UserError` (one line, exit status 2).
    """
    args = _parser().parse_config_args(sys.argv[1:] if argv is None else argv)
    if args.override:
        raise UsageError(f"--override {args.override[0]} is now --config.{args.override[0]} "
                         f"(any config field, e.g. --config.grad_accum=4)")
    platform = args.platform or ("tpu" if args.topology else "cpu")
    if platform == "tpu" and not args.topology:
        raise UsageError("--platform tpu needs --topology (e.g. v5e-256)")
    if args.devices is not None and args.devices < 1:
        raise UsageError(f"--devices must be at least 1, got {args.devices}")
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    if args.max_compiles < 0 or args.remedies < 1:
        raise UsageError("--max-compiles must be 0 or more and --remedies at least 1")
    if platform == "cpu" and args.devices:
        set_cpu_device_count(args.devices)  # before anything starts JAX's backends
    config = args.config
    if args.batch is not None:
        config.global_batch = int(args.batch)
    try:
        report = fit_check(config, platform=platform, devices=args.devices, topology=args.topology,
                           device_memory_gib=args.device_memory_gib, max_compiles=args.max_compiles,
                           want=args.remedies)
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        # resolve_mesh_shape and the trainer's setup say what is wrong with the config as a ValueError.
        raise ConfigError(f"{args.config_spec}: {e}") from e
    print(format_report(report, args.config_spec), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dataclasses.asdict(report), f, indent=2)
    return 1 if report.fits is False else 0


def run(argv: list[str] | None = None) -> None:
    """``python -m maskjax.perf.fitcheck``: :func:`main` with one-line errors (``--debug``: tracebacks)."""
    argv, debug = pop_debug_flag(list(sys.argv[1:] if argv is None else argv))
    sys.exit(run_command("maskjax fitcheck", main, argv, debug=debug))


if __name__ == "__main__":
    run()
