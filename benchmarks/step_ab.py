"""In-process A/B of train-step variants of one ``hf_throughput`` case: rounds alternate between them.

Each variant is ``LABEL:SETTING,SETTING,...``. A setting is a config override
(``model.attention_impl=xla``) or ``tile_bytes=N``, the blockwise attention's float32 score bytes
per batch x heads chunk (``maskjax.models.attention.DEFAULT_TILE_BYTES``, read at trace time).
Every variant's step is compiled in this one process, then the rounds alternate (the order
reversed on odd rounds) so that drift of a shared machine's speed hits all variants alike; each
round runs ``--steps`` timed steps per variant. Prints each variant's median step time and its
ratio to the first variant's median.

Usage (two threads, wall clock; the ``tile_bytes`` rows of docs/performance.md)::

    JAX_PLATFORMS=cpu taskset -c 0,1 python benchmarks/step_ab.py --case vit_s16_224 --rounds 3 \\
        "256k:tile_bytes=262144" "4M:tile_bytes=4194304"

One core, process time: add ``--clock process`` and run under ``taskset -c 1`` with
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time


def parse_variant(spec: str) -> tuple[str, list[str], int | None]:
    """``LABEL:SETTING,...`` -> (label, config overrides, tile bytes or None)."""
    label, colon, rest = spec.partition(":")
    if not label or not colon:
        raise SystemExit(f"variant {spec!r}: expected LABEL:SETTING,SETTING,... (settings may be empty)")
    overrides, tile = [], None
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"variant {spec!r}: setting {item!r} is not KEY=VALUE")
        if key == "tile_bytes":
            if not value.isdigit() or int(value) < 1:
                raise SystemExit(f"variant {spec!r}: tile_bytes must be a positive integer, got {value!r}")
            tile = int(value)
        else:
            overrides.append(item)
    return label, overrides, tile


def main(argv: list[str] | None = None) -> int:
    """Compiles every variant, alternates timed rounds between them and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="LABEL:SETTING,... (at least two)")
    parser.add_argument("--case", default="cifar_tiny", help="a case of benchmarks/hf_throughput.py")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the case's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant after compiling")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants]
    if len(variants) < 2 or len({v[0] for v in variants}) != len(variants):
        raise SystemExit("give at least two variants with distinct labels")

    from maskjax.host_memory import tune_malloc
    tune_malloc()   # before JAX starts, as in `maskjax train`

    import hf_throughput
    from maskjax.models import attention

    if args.case not in hf_throughput.CASES:
        raise SystemExit(f"unknown case {args.case!r}; cases: {', '.join(hf_throughput.CASES)}")
    clock = time.process_time if args.clock == "process" else time.perf_counter
    default_tile = attention.DEFAULT_TILE_BYTES
    runners = {}
    for label, overrides, tile in variants:
        attention.DEFAULT_TILE_BYTES = default_tile if tile is None else tile
        try:   # the step is traced (and the tile size read) here
            runners[label] = hf_throughput.OursRunner(
                hf_throughput.load_case(args.case, args.batch, None, overrides), clock=clock)
        finally:
            attention.DEFAULT_TILE_BYTES = default_tile
        runners[label].run(args.warmup)
    times: dict[str, list[float]] = {label: [] for label in runners}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        for label in order:
            times[label] += runners[label].run(args.steps)
    first = statistics.median(times[variants[0][0]])
    print(f"case {args.case}, {args.clock} clock, {args.rounds} rounds x {args.steps} steps per variant")
    print(f"{'variant':<16} {'median s':>9} {'min s':>8} {'max s':>8} {'/ first':>8}")
    for label, ts in times.items():
        med = statistics.median(ts)
        print(f"{label:<16} {med:9.4f} {min(ts):8.4f} {max(ts):8.4f} {med / first:8.3f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # for `import hf_throughput`
    sys.exit(main())
