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

Exit status: 0 fits (or no memory size to compare with), 1 does not fit, 2 usage/environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time

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


class FitcheckError(RuntimeError):
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
    from maskjax.train.validate import ConfigError, validate_config

    try:
        validate_config(config, num_devices=num_devices, process_count=hosts)
    except ConfigError as e:
        problems = [line.strip()[2:] for line in str(e).splitlines()[1:]]
        fatal = [p for p in problems if not any(s in p for s in _DATA_PROBLEMS)]
        if fatal:
            raise ConfigError("invalid config for this target:\n  - " + "\n  - ".join(fatal)) from None
        return problems
    return []


@dataclasses.dataclass
class FitReport:
    """What :func:`fit_check` found; ``fits`` is None when no device memory size is known."""

    target: str
    mesh: dict
    params: int
    global_batch: int
    grad_accum: int
    memory: dict               # per device, bytes (bench.memory_breakdown)
    xla_flops: float | None    # global, per step
    analytic_flops: float | None  # None: the method defines no analytic count
    device_memory_gib: float | None
    fits: bool | None
    compile_s: float
    notes: list
    live_device_bytes: int = 0  # device buffers alive after compiling: ~0, nothing was materialised


def fit_check(config, *, platform: str = "cpu", devices: int | None = None, topology: str | None = None,
              device_memory_gib: float | None = None) -> FitReport:
    """Compiles ``config``'s train step for the target without running it or allocating the model."""
    import jax

    from maskjax.perf.bench import analytic_flops, build_setup, memory_breakdown, nominal_examples, xla_flops

    devs, hosts, target = target_devices(platform, devices, topology)
    notes = [f"not checked (no data is read): {p}" for p in check_config(config, len(devs), hosts)]
    mesh = _mesh(config, devs, topology)
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
        raise FitcheckError(f"XLA gives no memory analysis for {target}")
    if device_memory_gib is None:
        device_memory_gib = default_memory_gib(platform, topology, devs[0].device_kind)
    fits = None if device_memory_gib is None else memory["total"] <= device_memory_gib * 2**30
    return FitReport(target=target, mesh=dict(mesh.shape), params=setup.template.num_params(),
                     global_batch=int(config.global_batch), grad_accum=int(config.grad_accum), memory=memory,
                     xla_flops=xla_flops(compiled, mesh.size), analytic_flops=None if count is None else count.train,
                     device_memory_gib=device_memory_gib, fits=fits, compile_s=compile_s, notes=notes,
                     live_device_bytes=int(sum(a.nbytes for a in jax.live_arrays())))


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
    lines += [f"note: {n}" for n in r.notes]
    if r.fits is None:
        lines.append("fit: unknown (no memory size for this device; pass --device-memory-gib)")
    else:
        need = fmt_bytes(m["total"])
        verdict = "fits" if r.fits else "does not fit"
        lines.append(f"fit: {verdict} in {r.device_memory_gib:g} GiB per device (needs {need}, "
                     f"{100 * m['total'] / (r.device_memory_gib * 2**30):.1f}%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``maskjax fitcheck --config FILE[:arg] [--topology v5e-256 | --platform cpu --devices 8] ...``."""
    p = argparse.ArgumentParser(prog="maskjax fitcheck", description="Ahead-of-time memory check of a train step.")
    p.add_argument("--config", required=True, help="FILE[:arg]")
    p.add_argument("--topology", default=None, help=f"TPU topology, e.g. v5e-256, v4-128, v5p-256 "
                   f"(known: {', '.join(known_topologies())})")
    p.add_argument("--platform", choices=("cpu", "gpu", "tpu"), default=None,
                   help="cpu (simulated devices) or gpu (attached); default tpu with --topology, else cpu")
    p.add_argument("--devices", type=int, default=None, help="number of devices (cpu: simulated)")
    p.add_argument("--device-memory-gib", type=float, default=None, help="memory per device (default: table)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    p.add_argument("--override", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    platform = args.platform or ("tpu" if args.topology else "cpu")
    if platform == "tpu" and not args.topology:
        print("maskjax fitcheck: --platform tpu needs --topology (e.g. v5e-256)", file=sys.stderr)
        return 2
    if args.devices is not None and args.devices < 1:
        print(f"maskjax fitcheck: --devices must be at least 1, got {args.devices}", file=sys.stderr)
        return 2
    if platform == "cpu" and args.devices:
        try:  # before anything imports jax's backends
            set_cpu_device_count(args.devices)
        except FitcheckError as e:
            print(f"maskjax fitcheck: {e}", file=sys.stderr)
            return 2
    from maskjax.perf.bench import load
    from maskjax.train.validate import ConfigError

    try:
        config = load(args.config, args.override, args.batch)
        report = fit_check(config, platform=platform, devices=args.devices, topology=args.topology,
                           device_memory_gib=args.device_memory_gib)
    except FitcheckError as e:
        print(f"maskjax fitcheck: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, KeyError, ValueError, ConfigError) as e:
        print(f"maskjax fitcheck: {args.config}: {e}", file=sys.stderr)
        return 2
    print(format_report(report, args.config), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dataclasses.asdict(report), f, indent=2)
    return 1 if report.fits is False else 0


if __name__ == "__main__":
    sys.exit(main())
