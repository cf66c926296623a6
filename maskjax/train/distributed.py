"""Multi-process start-up: the one place that calls ``jax.distributed.initialize``."""

from __future__ import annotations

import os

import jax

_initialized = False


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False, timeout_s: int = 300) -> bool:
    """Joins a multi-process JAX job; returns True if this process is part of one.

    Explicit arguments win; otherwise ``MASKJAX_COORDINATOR_ADDRESS``, ``MASKJAX_NUM_PROCESSES``
    and ``MASKJAX_PROCESS_ID`` are read. ``auto=True`` lets JAX detect the cluster (TPU pods,
    SLURM, Kubernetes). With none of these, this is a single-process run and nothing happens.
    Must run before anything touches a device.
    """
    global _initialized
    if _initialized:
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("MASKJAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("MASKJAX_NUM_PROCESSES"):
        num_processes = int(env["MASKJAX_NUM_PROCESSES"])
    if process_id is None and env.get("MASKJAX_PROCESS_ID"):
        process_id = int(env["MASKJAX_PROCESS_ID"])
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError("a coordinator address needs num_processes and process_id too "
                             "(flags or MASKJAX_NUM_PROCESSES / MASKJAX_PROCESS_ID)")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    elif auto:
        jax.distributed.initialize(initialization_timeout=timeout_s)
    else:
        return False
    _initialized = True
    return True
