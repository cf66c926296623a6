"""Preflight: every process checks versions, config hash and device counts before training."""

import os
import socket
import subprocess
import sys
import time

import jax
import pytest

from maskjax.train.preflight import PreflightError, compare_facts, preflight
from tests.conftest import REPO_ROOT


def _facts(pid, **changes):
    base = {"process_index": pid, "host": f"h{pid}", "maskjax": "0.1.0", "jax": "0.10.2", "jaxlib": "0.10.2",
            "config_hash": "abc", "platform": "cpu", "local_device_count": 4, "device_count": 16}
    return {**base, **changes}


def test_single_process_passes_cheaply():
    jax.devices()  # backend start-up is not preflight's cost
    t0 = time.perf_counter()
    facts = preflight("abc123", expected_devices=jax.device_count())
    assert time.perf_counter() - t0 < 10  # no exchange, no waiting (generous: a busy 2-core box)
    assert len(facts) == 1 and facts[0]["config_hash"] == "abc123"
    assert facts[0]["device_count"] == jax.device_count() == facts[0]["local_device_count"]


def test_device_count_mismatch_names_expectation():
    with pytest.raises(PreflightError) as e:
        preflight("abc", expected_devices=jax.device_count() * 2)
    msg = str(e.value)
    assert f"expects {jax.device_count() * 2} devices but jax sees {jax.device_count()}" in msg
    assert "1 process(es)" in msg


def test_compare_facts_agreeing_processes():
    assert compare_facts([_facts(i) for i in range(4)], expected_devices=16) == []


def test_compare_facts_names_the_odd_process_and_field():
    facts = [_facts(i) for i in range(4)]
    facts[2]["jax"] = "0.9.0"
    facts[3]["config_hash"] = "zzz"
    problems = compare_facts(facts)
    assert len(problems) == 2
    assert problems[0] == 'jax differs: process 2 (h2): "0.9.0"; processes 0-1,3: "0.10.2"'
    assert problems[1] == 'config_hash differs: process 3 (h3): "zzz"; processes 0-2: "abc"'


def test_compare_facts_device_counts():
    facts = [_facts(0), _facts(1, local_device_count=2)]
    problems = compare_facts(facts, expected_devices=16)
    assert any(p.startswith("local_device_count differs: process 1 (h1): 2") for p in problems)
    # 16 global devices while the processes hold 4 + 2: the global view is inconsistent too.
    assert any("jax sees 16 devices in all but the processes hold 6" in p for p in problems)
    # Uniform counts that miss the configured size: one message with the arithmetic.
    problems = compare_facts([_facts(i, device_count=8) for i in range(2)], expected_devices=16)
    assert problems == [p for p in problems if p.startswith("device_count")]
    assert any("expects 16 devices but jax sees 8 (2 process(es) x 4 local cpu devices)" in p for p in problems)


# ---------------------------------------------------------------------------------------------
# Two real processes on loopback.

_WORKER = """
import os, sys, time
pid, port, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
from maskjax.train import distributed
distributed.initialize(f"127.0.0.1:{port}", 2, pid, timeout_s=60)
import jax
from maskjax.train.preflight import PreflightError, preflight
if mode == "missing" and pid == 1:
    jax.devices()          # join the backend (the peer's start-up needs it), then never preflight
    time.sleep(6)
    sys.exit(0)
try:
    preflight("hash-%d" % pid if mode == "hash" else "same", timeout_s=2 if mode == "missing" else 30)
except PreflightError as e:
    print(e, flush=True)
    sys.exit(3)
print("preflight ok", flush=True)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(mode, devices=(2, 2)):
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices[pid]))
        env.pop("XLA_FLAGS", None)
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, str(pid), str(port), mode], env=env,
                                      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        return [(p.wait(timeout=90), p.stdout.read(), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            p.kill()


@pytest.mark.multiprocess
def test_config_hash_mismatch_fails_on_every_process():
    results = _two_processes("hash")
    for pid, (code, out, err) in enumerate(results):
        assert code == 3, err[-2000:]
        assert f"seen from process {pid}" in out
        assert 'config_hash differs: process 1 (' in out and '"hash-1"' in out and '"hash-0"' in out


@pytest.mark.multiprocess
def test_local_device_count_mismatch_fails_on_every_process():
    for code, out, err in _two_processes("devices", devices=(2, 1)):
        assert code == 3, err[-2000:]
        assert "local_device_count differs: process 1 (" in out


@pytest.mark.multiprocess
def test_missing_process_times_out_instead_of_hanging():
    t0 = time.perf_counter()
    (code0, out0, err0), (code1, _, _) = _two_processes("missing")
    assert code0 == 3, err0[-2000:]
    assert "process 1 did not report within 2 s" in out0
    assert code1 == 0
    assert time.perf_counter() - t0 < 60
