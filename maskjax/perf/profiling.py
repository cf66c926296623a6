"""Where a step's device time goes: a kernel table read from a ``jax.profiler`` trace.

``maskjax bench --profile DIR`` traces a few steps after the timed ones and prints this table, so
a slow step can be read without TensorBoard or Perfetto: device time per kernel (or per XLA op on
CPU), grouped into categories (matmuls, attention, fused elementwise, reductions, copies and
layout changes, collectives), and how busy the device was over the traced span. On CPU a loop op
(``while``) is listed with its own time only: what the ops of its body, on any thread, do not cover. A busy fraction
well under 100 % means the step is waiting for the host (kernel launches, Python dispatch).

The trace is read with ``jax.profiler.ProfileData`` (XSpace protos): GPU kernels are the events of
the ``/device:GPU:N`` planes, CPU ops those of the XLA client thread lines of ``/host:CPU``.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import glob
import os
import re

# First matching pattern wins; matched against the lower-cased kernel or op name.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("attention", r"cudnn|fmha|flash|attention|sdpa|dot_product_attention"),
    ("collective", r"nccl|all-reduce|all_reduce|all-gather|all_gather|reduce-scatter|reduce_scatter|collective"),
    ("matmul", r"gemm|cublas|nvjet|xmma|cutlass|sm\d+_|dot|matmul|triton_gemm|ampere|hopper|wgmma"),
    ("matmul (YNN fusion, CPU)", r"ynn_fusion"),
    ("copy/layout", r"memcpy|memset|copy|transpose|concatenate|pad|dynamic.update.slice|slice"),
    ("reduction", r"reduce|reduction"),
    ("elementwise", r"fusion|loop_|elementwise|convert|multiply|add|exp"),
)


def categorize(name: str) -> str:
    """The category of one kernel / op name (see :data:`CATEGORIES`); "other" when none matches."""
    low = name.lower()
    for label, pattern in CATEGORIES:
        if re.search(pattern, low):
            return label
    return "other"


@dataclasses.dataclass
class KernelSummary:
    """Device time of a traced span: per name and per category, in seconds."""

    per_name: dict[str, tuple[int, float]]     # name -> (launches, total seconds)
    per_category: dict[str, float]
    busy_s: float                              # union of the kernels' intervals
    span_s: float                              # first kernel start to last kernel end
    plane: str

    @property
    def total_s(self) -> float:
        """Sum of all kernel durations (can exceed busy_s when streams overlap)."""
        return sum(t for _, t in self.per_name.values())


def _trace_file(trace_dir: str) -> str:
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}: was a jax.profiler trace written there?")
    return files[-1]


def _device_events(profile):
    """(plane name, [(name, start_ns, duration_ns)]) of the first accelerator plane, else the CPU ops."""
    planes = list(profile.planes)
    for plane in planes:
        if plane.name.startswith("/device:") and "CPU" not in plane.name:
            lines = list(plane.lines)
            # Kernels sit on "Stream #N" lines; "XLA Modules" / "XLA Ops" / "Steps" lines derived from
            # them would count the same time twice.
            streams = [line for line in lines if "stream" in line.name.lower()] or [
                line for line in lines if not re.search(r"xla|step|framework|source", line.name.lower())]
            events = [(e.name, e.start_ns, e.duration_ns) for line in streams for e in line.events
                      if e.duration_ns > 0]
            if events:
                return plane.name, events
    for plane in planes:
        if plane.name == "/host:CPU":
            # XLA's CPU runtime records one event per executed op (thunk), carrying an hlo_op stat.
            events = []
            for line in plane.lines:
                for e in line.events:
                    stats = dict(e.stats)
                    if "hlo_op" in stats and e.duration_ns > 0:
                        events.append((str(stats["hlo_op"]), e.start_ns, e.duration_ns))
            return plane.name, events
    return "", []


def summarize_trace(trace_dir: str) -> KernelSummary:
    """Reads the newest trace under ``trace_dir`` and sums device time per kernel and per category."""
    from jax.profiler import ProfileData

    plane, events = _device_events(ProfileData.from_file(_trace_file(trace_dir)))
    if not events:
        raise ValueError(f"the trace under {trace_dir} holds no device kernels or XLA ops")
    per_name: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    per_category: dict[str, float] = collections.defaultdict(float)
    for name, dur in zip((e[0] for e in events), exclusive_durations(events)):
        per_name[name][0] += 1
        per_name[name][1] += dur * 1e-9
        per_category[categorize(name)] += dur * 1e-9
    busy, span = busy_and_span([(s, s + d) for _, s, d in events])
    return KernelSummary({k: (v[0], v[1]) for k, v in per_name.items()}, dict(per_category),
                         busy * 1e-9, span * 1e-9, plane)


# XLA ops that only run other ops: a CPU trace shows them around their bodies' ops, which may run
# on other threads. Their own time is what their bodies' ops do not cover.
CONTAINER_OP = re.compile(r"^(while|conditional|call)(\.\d+)?$")


def exclusive_durations(events: list[tuple[str, float, float]]) -> list[float]:
    """Each event's duration, less, for a container op (:data:`CONTAINER_OP`), the time that other
    ops within its interval cover (their union, over all threads), so no time is counted twice."""
    leaves = sorted((s, s + d) for name, s, d in events if not CONTAINER_OP.match(name))
    starts = [s for s, _ in leaves]
    out = []
    for name, start, dur in events:
        if not CONTAINER_OP.match(name):
            out.append(dur)
            continue
        end = start + dur
        # The body's ops start inside the container's interval (bisect keeps this linear overall).
        body = leaves[bisect.bisect_left(starts, start):bisect.bisect_left(starts, end)]
        out.append(max(0.0, dur - busy_and_span([(s, min(e, end)) for s, e in body])[0]))
    return out


def busy_and_span(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    """(length of the union of [start, end) intervals, last end - first start): overlapping kernels
    on several streams are counted once in the busy time."""
    if not intervals:
        return 0.0, 0.0
    intervals = sorted(intervals)
    busy, end = 0.0, -float("inf")
    for s, e in intervals:
        if e > end:
            busy += e - max(s, end)
            end = e
    return busy, end - intervals[0][0]


def format_summary(summary: KernelSummary, steps: int, top: int = 25) -> str:
    """Markdown tables: categories, then the ``top`` kernels by time, both per step."""
    steps = max(1, steps)
    total = summary.total_s or 1.0
    lines = [f"Device time per step on {summary.plane}, over {steps} traced steps: kernels "
             f"{1e3 * summary.total_s / steps:.2f} ms, busy {1e3 * summary.busy_s / steps:.2f} ms of a "
             f"{1e3 * summary.span_s / steps:.2f} ms span ({100 * summary.busy_s / max(summary.span_s, 1e-12):.1f} % busy)",
             "", "| category | ms/step | share |", "|---|---|---|"]
    for label, t in sorted(summary.per_category.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {label} | {1e3 * t / steps:.3f} | {100 * t / total:.1f} % |")
    lines += ["", "| kernel / op | category | launches/step | ms/step | share |", "|---|---|---|---|---|"]
    ranked = sorted(summary.per_name.items(), key=lambda kv: -kv[1][1])[:top]
    for name, (count, t) in ranked:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{short}` | {categorize(name)} | {count / steps:.1f} | {1e3 * t / steps:.3f} "
                     f"| {100 * t / total:.1f} % |")
    return "\n".join(lines)
