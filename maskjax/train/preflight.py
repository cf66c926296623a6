"""Preflight: every process checks that it runs the same job as every other before training.

A multi-host run in which one host has another jax, another maskjax, another config or fewer
devices does not fail cleanly: it hangs in the first collective, or trains something else on
one host. :func:`preflight` exchanges a few facts per process through the coordination
service's key-value store (``jax.distributed``), with a timeout, and raises the same
:class:`PreflightError` on every process, naming the processes and fields that differ.

The key-value store was chosen over ``multihost_utils.process_allgather`` because it needs no
compiled program and no agreement on device counts (the very thing being checked) and because
its reads take a timeout, so a missing peer gives an error instead of a hang.
"""

from __future__ import annotations

import json
import platform
import socket
import time
from typing import Any, Sequence

import jax

from maskjax.errors import UserError

#: Facts that must be identical on every process (in the order they are reported).
MUST_MATCH = ("maskjax", "jax", "jaxlib", "config_hash", "platform", "local_device_count", "device_count")

_round = 0  # bumped per call so that repeated preflights in one job use fresh keys


class PreflightError(UserError, RuntimeError):
    """The processes of a multi-process run disagree (or one did not report in time)."""


def local_facts(config_hash: str) -> dict[str, Any]:
    """This process's facts: versions, config hash, platform and device counts."""
    import jaxlib

    from maskjax import __version__

    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "maskjax": __version__,
        "jax": jax.__version__,
        "jaxlib": getattr(jaxlib, "__version__", "?"),
        "config_hash": str(config_hash),
        "platform": jax.default_backend(),
        "local_device_count": jax.local_device_count(),
        "device_count": jax.device_count(),
    }


def _ranges(ids: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (a pod has hundreds of processes; keep messages short)."""
    ids = sorted(ids)
    out, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(out)


def _who(ids: Sequence[int], facts_by_id: dict[int, dict] | None = None) -> str:
    if len(ids) == 1:
        host = (facts_by_id or {}).get(ids[0], {}).get("host")
        return f"process {ids[0]}" + (f" ({host})" if host else "")
    return f"processes {_ranges(ids)}"


def compare_facts(facts: Sequence[dict[str, Any]], expected_devices: int | None = None) -> list[str]:
    """Problems found in the per-process facts (empty: all agree). Pure, so testable alone."""
    by_id = {int(f["process_index"]): f for f in facts}
    problems = []
    for field in MUST_MATCH:
        groups: dict[str, list[int]] = {}
        for pid, f in sorted(by_id.items()):
            groups.setdefault(json.dumps(f.get(field)), []).append(pid)
        if len(groups) > 1:
            # The biggest group is most likely right: name it last, the odd ones out first.
            ordered = sorted(groups.items(), key=lambda kv: (len(kv[1]), -kv[1][0]))
            parts = [f"{_who(ids, by_id)}: {value}" for value, ids in ordered]
            problems.append(f"{field} differs: " + "; ".join(parts))
    first = by_id[min(by_id)]
    total_local = sum(int(f["local_device_count"]) for f in by_id.values())
    count = int(first["device_count"])
    if count != total_local:
        problems.append(f"device_count: jax sees {count} devices in all but the processes hold "
                        f"{total_local} together ({len(by_id)} processes)")
    uniform = len({int(f["local_device_count"]) for f in by_id.values()}) == 1
    if uniform and count != len(by_id) * int(first["local_device_count"]):
        problems.append(f"device_count: {count} devices is not {len(by_id)} processes x "
                        f"{first['local_device_count']} local devices")
    if expected_devices is not None and count != int(expected_devices):
        problems.append(f"device_count: the run expects {expected_devices} devices but jax sees {count} "
                        f"({len(by_id)} process(es) x {first['local_device_count']} local "
                        f"{first['platform']} devices); check the slice size, num_processes and "
                        f"the per-process device settings (XLA_FLAGS / CUDA_VISIBLE_DEVICES)")
    return problems


def _exchange(facts: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
    """Every process's facts, through the coordination service's key-value store."""
    global _round
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise PreflightError("preflight: jax reports several processes but jax.distributed is not "
                             "initialised here; start the run through maskjax.train.distributed")
    _round += 1
    prefix = f"maskjax/preflight/{_round}"
    me, count = facts["process_index"], facts["process_count"]
    client.key_value_set(f"{prefix}/{me}", json.dumps(facts))
    deadline = time.monotonic() + timeout_s
    gathered, missing = [], []
    for pid in range(count):
        if pid == me:
            gathered.append(facts)
            continue
        left_ms = max(int((deadline - time.monotonic()) * 1000), 1)
        try:
            gathered.append(json.loads(client.blocking_key_value_get(f"{prefix}/{pid}", left_ms)))
        except Exception as e:  # noqa: BLE001 - jaxlib raises its own error type on a timeout
            if "DEADLINE" not in str(e).upper() and "TIMEOUT" not in str(e).upper():
                raise PreflightError(f"preflight: reading process {pid}'s facts failed: {e}") from e
            missing.append(pid)
    if missing:
        raise PreflightError(
            f"preflight: {_who(missing)} did not report within {timeout_s:g} s "
            f"(process {me} waited). It is not running, crashed, is stuck before the preflight, or "
            f"runs another maskjax version; check its log.")
    return gathered


def preflight(config_hash: str, expected_devices: int | None = None, timeout_s: float = 120.0) -> list[dict]:
    """Checks that all processes run the same job; returns every process's facts.

    All processes must agree on the maskjax, jax and jaxlib versions, the config hash, the
    platform and the device counts, and ``jax.device_count()`` must equal the number of
    processes times the local count (and ``expected_devices`` when given). Otherwise every
    process raises :class:`PreflightError` with the same message. A single process only runs
    the cheap local checks. Call it on every process after ``jax.distributed`` is initialised
    and before the first collective.
    """
    facts = local_facts(config_hash)
    gathered = [facts] if facts["process_count"] == 1 else _exchange(facts, timeout_s)
    problems = compare_facts(gathered, expected_devices)
    if problems:
        raise PreflightError(f"preflight failed ({len(gathered)} processes; seen from process "
                             f"{facts['process_index']}):\n  " + "\n  ".join(problems))
    return gathered
