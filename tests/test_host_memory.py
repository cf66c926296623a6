"""glibc malloc tuning for XLA:CPU (maskjax.host_memory): when it applies, and that it works."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import pytest

from maskjax import cli
from maskjax import host_memory

# A fresh process: a worker thread (as XLA:CPU's) mallocs, touches and frees 64 MiB five times.
# Prints the minor page faults of the last four rounds. Without the tuning glibc maps each block
# fresh (it is above the largest mmap threshold), so every round faults all its pages again.
_PROBE = textwrap.dedent("""
    import ctypes, resource, sys, threading
    from maskjax import host_memory
    print(host_memory.tune_malloc({"JAX_PLATFORMS": "cpu"}) if sys.argv[1] == "tune" else "off")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size, faults = 64 << 20, []
    def rounds():
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            p = libc.malloc(size)
            ctypes.memset(p, 1, size)
            libc.free(p)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    t = threading.Thread(target=rounds)
    t.start(); t.join()
    print(sum(faults[1:]))
""")


def _probe(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    status, faults = out.stdout.split()
    return status, int(faults)


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc only")
def test_freed_memory_is_reused_instead_of_faulted_again():
    pages = 4 * (64 << 20) // 4096
    status, faults = _probe("off")
    assert status == "off" and faults > pages // 2
    status, faults = _probe("tune")
    assert status == "applied" and faults < pages // 20


def test_cpu_backend_expected(monkeypatch):
    assert host_memory.cpu_backend_expected({"JAX_PLATFORMS": "cpu"})
    assert host_memory.cpu_backend_expected({"JAX_PLATFORMS": " CPU ,cuda"})
    assert not host_memory.cpu_backend_expected({"JAX_PLATFORMS": "cuda,cpu"})
    assert not host_memory.cpu_backend_expected({"JAX_PLATFORMS": "tpu"})
    installed = set()
    monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: object() if name in installed else None)
    assert host_memory.cpu_backend_expected({})
    installed.add("jax_cuda12_plugin")
    assert not host_memory.cpu_backend_expected({})


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(host_memory, "_glibc", lambda: libc)
    monkeypatch.setattr(host_memory, "_applied", False)
    return libc


def test_switches_and_other_backends_leave_malloc_alone(fake_libc):
    assert host_memory.tune_malloc({"MASKJAX_TUNE_MALLOC": "0", "JAX_PLATFORMS": "cpu"}).startswith("disabled")
    assert host_memory.tune_malloc({"JAX_PLATFORMS": "cuda"}) == "not the CPU backend"
    assert fake_libc.calls == []


def test_too_late_once_jax_runs(fake_libc):
    jax.devices()  # this process's backends are up: its XLA threads already have their arenas
    assert host_memory.tune_malloc({"JAX_PLATFORMS": "cpu"}) == "JAX backends already started"
    assert fake_libc.calls == []


def test_applies_the_three_settings_once(fake_libc, monkeypatch):
    monkeypatch.setattr(host_memory, "_backends_started", lambda: False)
    assert host_memory.tune_malloc({"JAX_PLATFORMS": "cpu"}) == "applied"
    assert sorted(fake_libc.calls) == sorted([(host_memory.M_ARENA_MAX, 1), (host_memory.M_MMAP_MAX, 0),
                                              (host_memory.M_TRIM_THRESHOLD, host_memory.NEVER_TRIM)])
    assert host_memory.tune_malloc({"JAX_PLATFORMS": "cpu"}) == "already applied"
    assert len(fake_libc.calls) == 3


@pytest.mark.parametrize("command,expected", [("bench", True), ("plot", False)])
def test_cli_tunes_before_running_jax_commands(monkeypatch, command, expected):
    calls = []
    monkeypatch.setattr(host_memory, "tune_malloc", lambda: calls.append(1) or "applied")
    with pytest.raises(SystemExit):
        cli.main(["maskjax", command, "--help"])
    assert bool(calls) == expected
