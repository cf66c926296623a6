"""Launch scripts: exact dry-run commands, usage errors, SLURM rank derivation, and real runs."""

import os
import subprocess
import sys
import time

import pytest

from maskjax.train.metrics import read_metrics
from tests.conftest import REPO_ROOT, TINY_FLAGS

LAUNCH = REPO_ROOT / "launch"
PY = sys.executable


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH dir whose gcloud/xpk/srun/sbatch fail loudly (and leave a mark) if anything calls
    them, plus a fake scontrol that expands any node list to two hosts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "CALLED"
    for tool in ("gcloud", "xpk", "srun", "sbatch", "tar"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "FAKE {tool} CALLED: $*" >&2\necho {tool} >> "{marker}"\nexit 99\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 9\n'
                                      'echo gpu-a01\necho gpu-a02\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, marker


def run(script, *args, fake_bin=None, env=None, timeout=60):
    """Runs a launch script with bash; no DRY_RUN or SLURM settings leak in from outside."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DRY_RUN", "MASKJAX_"))}
    full["PYTHON"] = PY
    if fake_bin is not None:
        full["PATH"] = f"{fake_bin[0]}{os.pathsep}{full['PATH']}"
    for key, value in (env or {}).items():  # None removes the variable
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    try:
        return subprocess.run(["bash", str(LAUNCH / script), *args], env=full, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # show what the processes said before they hung
        tail = lambda b: (b or b"").decode(errors="replace")[-4000:]  # noqa: E731
        pytest.fail(f"{script} ran past {timeout} s\nstdout:\n{tail(e.stdout)}\nstderr:\n{tail(e.stderr)}")


def dry(script, *args, fake_bin, env=None):
    proc = run(script, "--dry-run", *args, fake_bin=fake_bin, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not fake_bin[1].exists(), "a dry run executed " + fake_bin[1].read_text()
    return proc.stdout.splitlines()


def test_local_dry_run(fake_bin):
    lines = dry("local.sh", "configs/mae/default.py:smoke", "runs/x", "--config.total_steps=3", fake_bin=fake_bin)
    assert lines == [f"{PY} -m maskjax.train --config=configs/mae/default.py:smoke --workdir=runs/x "
                     "--config.total_steps=3"]
    # DRY_RUN=1 is the same as --dry-run, and --dry-run after the training flags is not passed on.
    assert run("local.sh", "cfg", "wd", env={"DRY_RUN": "1"}).stdout.splitlines() == \
        run("local.sh", "cfg", "wd", "--dry-run").stdout.splitlines() == \
        [f"{PY} -m maskjax.train --config=cfg --workdir=wd"]


def test_local_multiprocess_dry_run(fake_bin):
    lines = dry("local_multiprocess.sh", "--port", "23456", "--devices-per-process", "2", "2", "cfg", "wd",
                "--skip_evals", fake_bin=fake_bin)
    env = ("JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=2 XLA_FLAGS=--xla_force_host_platform_device_count=2")
    assert lines == [
        f"{env} {PY} -m maskjax.train --config=cfg --workdir=wd --coordinator_address=127.0.0.1:23456 "
        f"--num_processes=2 --process_id={i} --init_timeout=120 --skip_evals &" for i in range(2)] + ["wait"]


def test_tpu_pod_dry_runs(fake_bin):
    opts = ["--tpu", "pod1", "--zone", "us-central2-b", "--project", "proj"]
    where = "--zone=us-central2-b --project=proj"
    assert dry("tpu_pod.sh", "create", *opts, "--accelerator-type", "v4-32", "--runtime-version", "tpu-ubuntu2204-base",
               fake_bin=fake_bin) == [
        f"gcloud compute tpus tpu-vm create pod1 {where} --accelerator-type=v4-32 --version=tpu-ubuntu2204-base"]
    setup = dry("tpu_pod.sh", "setup", *opts, "--jax-version", "0.10.2", fake_bin=fake_bin)
    assert setup[0].startswith("tar -czf ") and setup[0].endswith(f"-C {REPO_ROOT} .")
    assert setup[1].startswith("gcloud compute tpus tpu-vm scp ") and "pod1:maskjax-src.tar.gz" in setup[1]
    assert setup[1].endswith(f"{where} --worker=all")
    assert setup[2].startswith(f"gcloud compute tpus tpu-vm ssh pod1 {where} --worker=all '--command=set -e; ")
    assert 'pip install -U "jax[tpu]==0.10.2" -e ./maskjax' in setup[2]
    assert dry("tpu_pod.sh", "run", *opts, "configs/mae/default.py", "gs://b/run", "--config.global_batch=4096",
               fake_bin=fake_bin) == [
        f"gcloud compute tpus tpu-vm ssh pod1 {where} --worker=all '--command=cd maskjax && python3 -m maskjax.train "
        "--config=configs/mae/default.py --workdir=gs://b/run --distributed_auto --init_timeout=300 "
        "--config.global_batch=4096'"]


def test_tpu_multislice_dry_runs(fake_bin):
    env = {"TPU_NAME": "ms", "ZONE": "z", "NUM_SLICES": "2", "ACCELERATOR_TYPE": "v5p-64",
           "RUNTIME_VERSION": "v2-alpha-tpuv5", "INIT_TIMEOUT": "900"}
    assert dry("tpu_pod.sh", "create", fake_bin=fake_bin, env=env) == [
        "gcloud compute tpus queued-resources create ms --zone=z --accelerator-type=v5p-64 "
        "--runtime-version=v2-alpha-tpuv5 --node-count=2 --node-prefix=ms"]
    setup = dry("tpu_pod.sh", "setup", fake_bin=fake_bin, env=env)
    assert [line.split()[4] for line in setup[1:]] == ["scp", "ssh", "scp", "ssh"]
    assert "ms-0:maskjax-src.tar.gz" in setup[1] and " ms-1 " in setup[4]
    train = "python3 -m maskjax.train --config=cfg --workdir=wd --distributed_auto --init_timeout=900"
    # One queued resource: the TPU runtime provides the MEGASCALE_* settings.
    assert dry("tpu_pod.sh", "run", "cfg", "wd", fake_bin=fake_bin, env=env) == [
        f"gcloud compute tpus queued-resources ssh ms --zone=z --node=all --worker=all '--command=cd maskjax && {train}'"]
    # Separately created slices: each gets them explicitly, all started together.
    lines = dry("tpu_pod.sh", "run", "--megascale-coordinator", "10.1.2.3", "cfg", "wd", fake_bin=fake_bin, env=env)
    assert lines == [
        f"gcloud compute tpus tpu-vm ssh ms-{i} --zone=z --worker=all '--command=cd maskjax && "
        f"MEGASCALE_COORDINATOR_ADDRESS=10.1.2.3 MEGASCALE_NUM_SLICES=2 MEGASCALE_SLICE_ID={i} MEGASCALE_PORT=8080 "
        f"{train}' &" for i in range(2)] + ["wait"]


def test_xpk_dry_run(fake_bin):
    lines = dry("xpk.sh", "--cluster", "c1", "--tpu-type", "v5p-256", "--num-slices", "4", "--zone", "us-east5-a",
                "--docker-image", "gcr.io/p/maskjax:1", "cfg", "gs://b/My_Run", "--skip_evals", fake_bin=fake_bin)
    assert lines == [
        "xpk workload create --cluster=c1 --workload=maskjax-my-run --tpu-type=v5p-256 --num-slices=4 "
        "--zone=us-east5-a --docker-image=gcr.io/p/maskjax:1 '--command=python3 -m maskjax.train --config=cfg "
        "--workdir=gs://b/My_Run --distributed_auto --init_timeout=300 --skip_evals'"]
    lines = dry("xpk.sh", "cfg", "wd", fake_bin=fake_bin, env={"CLUSTER": "c", "TPU_TYPE": "v5e-16"})
    assert f"--script-dir={REPO_ROOT} " in lines[0]
    assert "'--command=python3 -m pip install -U \"jax[tpu]\" . && python3 -m maskjax.train" in lines[0]


SLURM = {"SLURM_JOB_NODELIST": "gpu-a[01-02]", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2",
         "SLURM_SUBMIT_DIR": str(REPO_ROOT)}


def test_slurm_dry_runs(fake_bin):
    coordinator = f"gpu-a01:{61440 + 4242 % 4096}"  # first node, port from the job id
    task = f"{PY} -m maskjax.launch slurm-task --coordinator={coordinator} --init-timeout=300"
    assert dry("slurm_gpu.sbatch", "cfg", "wd", "--x=1", fake_bin=fake_bin, env=SLURM) == [
        f"srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 {task} --python={PY} cfg wd --x=1"]
    env = {**SLURM, "SLURM_GPUS_ON_NODE": "8", "SLURM_MODE": "per-gpu"}
    assert dry("slurm_gpu.sbatch", "cfg", "wd", fake_bin=fake_bin, env=env) == [
        f"srun --nodes=2 --ntasks-per-node=8 --kill-on-bad-exit=1 {task} --per-gpu --python={PY} cfg wd"]
    assert dry("slurm_gpu.sbatch", "--auto", "--port", "1234", "cfg", "wd", fake_bin=fake_bin, env=env) == [
        f"srun --nodes=2 --ntasks-per-node=8 --kill-on-bad-exit=1 {PY} -m maskjax.train --config=cfg --workdir=wd "
        "--distributed_auto --init_timeout=300"]


def test_slurm_task_derives_rank_and_gpu(fake_bin):
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    proc = subprocess.run([PY, "-m", "maskjax.launch", "--dry-run", "slurm-task", "--coordinator=gpu-a01:61586",
                           "--per-gpu", "cfg", "wd", "--x=1"], env={**os.environ, **env}, cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"CUDA_VISIBLE_DEVICES=5 {PY} -m maskjax.train --config=cfg --workdir=wd --coordinator_address=gpu-a01:61586 "
        "--num_processes=16 --process_id=5 --init_timeout=300 --x=1"]


@pytest.mark.parametrize("script,args,message", [
    ("local.sh", [], "the following arguments are required"),
    ("local_multiprocess.sh", ["two", "cfg", "wd"], "invalid _positive value: 'two'"),
    ("local_multiprocess.sh", ["0", "cfg", "wd"], "must be at least 1"),
    ("tpu_pod.sh", [], "required: ACTION"),
    ("tpu_pod.sh", ["launch", "--tpu", "t", "--zone", "z"], "invalid choice: 'launch'"),
    ("tpu_pod.sh", ["run", "--zone", "z", "cfg", "wd"], "missing --tpu (or TPU_NAME)"),
    ("tpu_pod.sh", ["create", "--tpu", "t", "--zone", "z"], "missing --accelerator-type (or ACCELERATOR_TYPE), --runtime-version (or RUNTIME_VERSION)"),
    ("tpu_pod.sh", ["setup", "--tpu", "t", "--zone", "z", "--remote-dir", ".."], "plain directory name"),
    ("xpk.sh", ["cfg", "wd"], "missing --cluster (or CLUSTER), --tpu-type (or TPU_TYPE)"),
    ("slurm_gpu.sbatch", ["--auto", "cfg", "wd"], "use it with --mode per-gpu"),
])
def test_bad_arguments_give_usage(fake_bin, script, args, message):
    proc = run(script, "--dry-run", *args, fake_bin=fake_bin, env=SLURM if "slurm" in script else None)
    assert proc.returncode == 2
    assert "usage: " in proc.stderr and message in proc.stderr
    assert f"launch/{script}" in proc.stderr or str(LAUNCH / script) in proc.stderr  # names the script
    assert not fake_bin[1].exists()


def test_slurm_outside_an_allocation(fake_bin):
    proc = run("slurm_gpu.sbatch", "--dry-run", "cfg", "wd", fake_bin=fake_bin)
    assert proc.returncode != 0 and "SLURM_JOB_NUM_NODES not set" in proc.stderr


def test_failing_rank_stops_the_others_promptly(tmp_path):
    # A stand-in interpreter: rank 1 fails after a moment, the others would sleep for a minute.
    fake = tmp_path / "fakepy"
    fake.write_text('#!/bin/sh\ncase " $* " in *" --process_id=1 "*) sleep 1; echo boom >&2; exit 7;; esac\n'
                    f'echo $$ > "{tmp_path}/pid_$$"\necho started\nexec sleep 60\n')
    fake.chmod(0o755)
    t0 = time.perf_counter()
    proc = run("local_multiprocess.sh", "--python", str(fake), "3", "cfg", "wd", timeout=30)
    assert proc.returncode == 7
    assert time.perf_counter() - t0 < 15
    assert "[rank 1] boom" in proc.stderr and "[rank 1] exited with status 7" in proc.stderr
    assert proc.stdout.count("started") == 2 and "[rank 0] started" in proc.stdout
    pids = [int(p.read_text()) for p in tmp_path.glob("pid_*")]
    assert len(pids) == 2
    for pid in pids:  # no orphan left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.multiprocess
@pytest.mark.slow  # the 2-process training path itself is tests/test_multiprocess.py (CI time budget)
def test_local_multiprocess_trains_for_real(tmp_path):
    workdir = tmp_path / "run"
    # No persistent compilation cache here: jax writes it from process 0 only, so process 0
    # loads while process 1 compiles, and on a busy CPU the gap can exceed gloo's 30 s
    # rendezvous timeout (seen: "GetKeyValue() timed out with key: cpu:gloo/...").
    proc = run("local_multiprocess.sh", "--devices-per-process", "1", "2", "configs/mae/default.py:smoke",
               str(workdir), *TINY_FLAGS, "--config.total_steps=2", "--config.log_every_steps=1",
               "--config.checkpoint.every_steps=2", "--config.progress=false", "--skip_evals", timeout=150,
               env={"JAX_COMPILATION_CACHE_DIR": None})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[rank 0] mae: mu/4" in proc.stdout and "mesh {'data': 1, 'fsdp': 2, 'tensor': 1}" in proc.stdout
    assert "[rank 0] done: step 2/2" in proc.stdout and "[rank 1] done: step 2/2" in proc.stdout
    assert [r["step"] for r in read_metrics(str(workdir))] == [1, 2]


def test_ctrl_c_is_passed_on_to_every_process(tmp_path):
    fake = tmp_path / "fakepy"
    fake.write_text("#!/usr/bin/env bash\ntrap 'echo saved on INT; exit 0' INT\necho up\n"
                    "for i in $(seq 300); do sleep 0.1; done\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRY_RUN", "MASKJAX_"))}
    proc = subprocess.Popen(["bash", str(LAUNCH / "local_multiprocess.sh"), "--python", str(fake), "2", "cfg", "wd"],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    lines = []
    while len(lines) < 2 and time.monotonic() < deadline:  # both processes are up
        lines.append(proc.stdout.readline())
    proc.send_signal(2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "passing it on to every process" in err
    assert "[rank 0] saved on INT" in out and "[rank 1] saved on INT" in out
