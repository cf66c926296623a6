"""Launch plans for ``maskjax train``: one machine, N local processes, TPU pods, xpk, SLURM.

The shell scripts in ``launch/`` are thin wrappers over this module, so every launcher builds
its commands in one place and ``--dry-run`` (or ``DRY_RUN=1``) prints exactly what would run,
one command per line, as a valid shell script (``&`` marks commands run together, ``wait``
joins them). Launcher options come first, then CONFIG and WORKDIR, then training flags, which
are passed through untouched:

    python -m maskjax.launch [--dry-run] local-multiprocess [--devices-per-process 4] \\
        2 configs/mae/default.py:smoke runs/x --config.total_steps=10
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TRAIN_MODULE = "maskjax.train"
SOURCE_ARCHIVE = "maskjax-src.tar.gz"
MEGASCALE_PORT = "8080"  # the port libtpu's multislice (DCN) runtime listens on by default
_TRUE = ("1", "true", "yes", "on")


@dataclasses.dataclass
class Cmd:
    """One command of a plan: argv, environment overrides, and whether it runs concurrently."""

    argv: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    background: bool = False  # runs together with the following background commands
    label: str = ""  # prefix for its output when run concurrently

    def line(self) -> str:
        """The command as one shell line (what dry-run prints)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv) + (" &" if self.background else "")


def format_plan(plan: list[Cmd]) -> str:
    """The plan as a shell script body: one command per line, ``wait`` after each concurrent group."""
    lines = []
    for i, cmd in enumerate(plan):
        lines.append(cmd.line())
        if cmd.background and (i + 1 == len(plan) or not plan[i + 1].background):
            lines.append("wait")
    return "\n".join(lines)


def repo_root() -> Path:
    """The source checkout this module lives in (what TPU setup copies and xpk builds)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() else Path.cwd()


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_argv(python: str, config: str, workdir: str, extra: list[str], *dist: str) -> list[str]:
    """``python -m maskjax.train`` (the same as ``maskjax train``) with the distributed flags
    before the user's flags, so that a flag the user repeats wins (absl keeps the last)."""
    return [python, "-m", TRAIN_MODULE, f"--config={config}", f"--workdir={workdir}", *dist, *extra]


# ----------------------------------------------------------------------------------------------
# Plans (pure: arguments in, commands out)


def plan_local(a) -> list[Cmd]:
    """One process on this machine, with every local device."""
    return [Cmd(train_argv(a.python, a.config, a.workdir, a.extra))]


def _xla_flags(devices: int) -> str:
    kept = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).split()
    return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def plan_local_multiprocess(a) -> list[Cmd]:
    """N processes on loopback, each with its own simulated CPU devices (a pod in miniature)."""
    port = a.port or free_port()
    # JAX_NUM_CPU_DEVICES is set to the same count as XLA_FLAGS so that an inherited value of
    # either cannot give the processes different device counts.
    env = {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(a.devices_per_process),
           "XLA_FLAGS": _xla_flags(a.devices_per_process)}
    return [Cmd(train_argv(a.python, a.config, a.workdir, a.extra, f"--coordinator_address=127.0.0.1:{port}",
                           f"--num_processes={a.num_processes}", f"--process_id={i}",
                           f"--init_timeout={a.init_timeout}"),
                env=dict(env), background=True, label=f"[rank {i}] ")
            for i in range(a.num_processes)]


def _gcloud(*args: str, zone: str, project: str | None) -> list[str]:
    return ["gcloud", "compute", "tpus", *args, f"--zone={zone}", *([f"--project={project}"] if project else [])]


def _nodes(a) -> list[str]:
    # A multislice queued resource created with --node-prefix=NAME names its slices NAME-0, NAME-1...
    return [a.tpu] if a.num_slices == 1 else [f"{a.tpu}-{i}" for i in range(a.num_slices)]


def _remote_setup(a) -> str:
    jax_req = f"jax[tpu]=={a.jax_version}" if a.jax_version else "jax[tpu]"
    d, py = a.remote_dir, a.python
    # Never touch the TPU here: a single worker initialising it on a multi-host slice hangs.
    # Double quotes inside: the whole script is single-quoted once more on the gcloud line.
    return (f"set -e; rm -rf {d}; mkdir -p {d}; tar -xzf {SOURCE_ARCHIVE} -C {d}; "
            f'{py} -m pip install -U "{jax_req}" -e ./{d}; '
            f'{py} -c "import jax, maskjax; print(jax.__version__, maskjax.__version__)"')


def plan_tpu(a) -> list[Cmd]:
    """Cloud TPU VMs: create the slice(s), install jax[tpu] + maskjax on every worker, or run."""
    gc = dict(zone=a.zone, project=a.project)
    if a.action == "create":
        if a.num_slices == 1:
            return [Cmd(_gcloud("tpu-vm", "create", a.tpu, **gc) + [f"--accelerator-type={a.accelerator_type}",
                                                                    f"--version={a.runtime_version}"])]
        return [Cmd(_gcloud("queued-resources", "create", a.tpu, **gc) + [
            f"--accelerator-type={a.accelerator_type}", f"--runtime-version={a.runtime_version}",
            f"--node-count={a.num_slices}", f"--node-prefix={a.tpu}"])]
    if a.action == "setup":
        archive = os.path.join(tempfile.gettempdir(), SOURCE_ARCHIVE)
        plan = [Cmd(["tar", "-czf", archive, "--exclude=./.git", "--exclude=./.venv", "--exclude=./runs",
                     "--exclude=./.pytest_cache", "--exclude=__pycache__", "-C", str(a.source), "."])]
        for node in _nodes(a):
            plan.append(Cmd(_gcloud("tpu-vm", "scp", archive, f"{node}:{SOURCE_ARCHIVE}", **gc) + ["--worker=all"]))
            plan.append(Cmd(_gcloud("tpu-vm", "ssh", node, **gc) + ["--worker=all", f"--command={_remote_setup(a)}"]))
        return plan
    # run: every worker of every slice runs the same command; jax finds its rank (and, on
    # multislice, the MEGASCALE_* settings) in the TPU metadata with --distributed_auto.
    train = shlex.join(train_argv(a.python, a.config, a.workdir, a.extra, "--distributed_auto",
                                  f"--init_timeout={a.init_timeout}"))
    if a.num_slices == 1:
        return [Cmd(_gcloud("tpu-vm", "ssh", a.tpu, **gc) + ["--worker=all", f"--command=cd {a.remote_dir} && {train}"])]
    if not a.megascale_coordinator:
        return [Cmd(_gcloud("queued-resources", "ssh", a.tpu, **gc) + [
            "--node=all", "--worker=all", f"--command=cd {a.remote_dir} && {train}"])]
    # Slices not created as one queued resource: give each its MEGASCALE_* settings (slice 0's
    # worker 0 coordinates), one ssh per slice, all at once.
    plan = []
    for i, node in enumerate(_nodes(a)):
        env = (f"MEGASCALE_COORDINATOR_ADDRESS={a.megascale_coordinator} MEGASCALE_NUM_SLICES={a.num_slices} "
               f"MEGASCALE_SLICE_ID={i} MEGASCALE_PORT={MEGASCALE_PORT}")
        plan.append(Cmd(_gcloud("tpu-vm", "ssh", node, **gc) + ["--worker=all", f"--command=cd {a.remote_dir} && {env} {train}"],
                        background=True, label=f"[slice {i}] "))
    return plan


def _workload_name(workdir: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", os.path.basename(os.path.normpath(workdir)).lower()).strip("-")
    return ("maskjax-" + name)[:40].rstrip("-")


def plan_xpk(a) -> list[Cmd]:
    """One xpk workload (a JobSet on GKE): every pod runs the same command with --distributed_auto."""
    train = shlex.join(train_argv(a.python, a.config, a.workdir, a.extra, "--distributed_auto",
                                  f"--init_timeout={a.init_timeout}"))
    if a.docker_image:  # the image already holds maskjax and jax[tpu]
        image, command = [f"--docker-image={a.docker_image}"], train
    else:  # xpk copies --script-dir into the base image; install there, then train
        jax_req = f"jax[tpu]=={a.jax_version}" if a.jax_version else "jax[tpu]"
        image = ([f"--base-docker-image={a.base_docker_image}"] if a.base_docker_image else []) + [f"--script-dir={a.source}"]
        command = f'{a.python} -m pip install -U "{jax_req}" . && {train}'
    argv = ["xpk", "workload", "create", f"--cluster={a.cluster}", f"--workload={a.workload or _workload_name(a.workdir)}",
            f"--tpu-type={a.tpu_type}", f"--num-slices={a.num_slices}",
            *([f"--project={a.project}"] if a.project else []), *([f"--zone={a.zone}"] if a.zone else []),
            *image, f"--command={command}"]
    return [Cmd(argv)]


def _slurm_env(*names: str) -> dict[str, str]:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise SystemExit(f"maskjax.launch: {', '.join(missing)} not set: run this inside a SLURM "
                         f"allocation (sbatch / salloc) or srun task")
    return {n: os.environ[n] for n in names}


def slurm_coordinator(port: int | None = None) -> str:
    """host:port of process 0: the first node of ``$SLURM_JOB_NODELIST`` (``scontrol show hostnames``),
    on a port derived from the job id (as jax does) so two jobs sharing a node do not collide."""
    env = _slurm_env("SLURM_JOB_NODELIST", "SLURM_JOB_ID")
    out = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], check=True,
                         capture_output=True, text=True).stdout.split()
    if not out:
        raise SystemExit(f"maskjax.launch: scontrol gave no host for {env['SLURM_JOB_NODELIST']!r}")
    return f"{out[0]}:{port or 61440 + int(re.sub(r'[^0-9]', '', env['SLURM_JOB_ID']) or 0) % 4096}"


def plan_slurm(a) -> list[Cmd]:
    """The job step of an sbatch script: one task per node or per GPU on every node."""
    nodes = _slurm_env("SLURM_JOB_NUM_NODES")["SLURM_JOB_NUM_NODES"]
    per_node = 1 if a.mode == "per-node" else int(a.gpus_per_node or 0)
    if per_node < 1:
        raise SystemExit("maskjax.launch: --mode per-gpu needs --gpus-per-node (or GPUS_PER_NODE / "
                         "SLURM_GPUS_ON_NODE)")
    srun = ["srun", f"--nodes={nodes}", f"--ntasks-per-node={per_node}", "--kill-on-bad-exit=1"]
    if a.auto:
        return [Cmd(srun + train_argv(a.python, a.config, a.workdir, a.extra, "--distributed_auto",
                                      f"--init_timeout={a.init_timeout}"))]
    task = [a.python, "-m", "maskjax.launch", "slurm-task", f"--coordinator={slurm_coordinator(a.port)}",
            f"--init-timeout={a.init_timeout}", *(["--per-gpu"] if a.mode == "per-gpu" else []),
            f"--python={a.python}", a.config, a.workdir, *a.extra]
    return [Cmd(srun + task)]


def plan_slurm_task(a) -> list[Cmd]:
    """Inside one srun task: this task's rank from ``$SLURM_PROCID`` of ``$SLURM_NTASKS``."""
    env = _slurm_env("SLURM_PROCID", "SLURM_NTASKS")
    overrides = {}
    if a.per_gpu:  # one GPU per task, picked by the local rank among the step's visible GPUs
        local = int(_slurm_env("SLURM_LOCALID")["SLURM_LOCALID"])
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
        overrides["CUDA_VISIBLE_DEVICES"] = visible[local] if local < len(visible) else str(local)
    return [Cmd(train_argv(a.python, a.config, a.workdir, a.extra, f"--coordinator_address={a.coordinator}",
                           f"--num_processes={env['SLURM_NTASKS']}", f"--process_id={env['SLURM_PROCID']}",
                           f"--init_timeout={a.init_timeout}"), env=overrides)]


# ----------------------------------------------------------------------------------------------
# Running a plan


def _pdeathsig():
    # Linux: the child is killed if the launcher dies, even by SIGKILL (no orphan left hanging).
    # SIGKILL, not SIGTERM: jax.distributed installs a SIGTERM handler (preemption notice) and
    # a process stuck in a collective would never act on it.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _kill_groups(procs, first: int, grace_s: float) -> None:
    """Sends ``first`` to each process group, then SIGKILL to what is left after ``grace_s``."""
    for sig, wait in ((first, grace_s), (signal.SIGKILL, 0)):
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            time.sleep(0.05)


def supervise(cmds: list[Cmd], grace_s: float = 5.0, out=None, err=None) -> int:
    """Runs ``cmds`` together with prefixed output; returns at the first failure, killing the rest.

    The exit status is the first failing command's (128+N for signal N), or 0 when all succeed.
    Each command gets its own process group, so its children (data-loader workers) go too.
    After a failure the others get SIGTERM and, ``grace_s`` later, SIGKILL: they cannot finish
    a step without the failed peer. SIGINT/SIGTERM sent to the launcher are passed on, with
    more time (the trainer saves a checkpoint on Ctrl-C).
    """
    out, err, lock = out or sys.stdout, err or sys.stderr, threading.Lock()
    procs, readers, stop, handlers = [], [], [], {}

    def on_signal(sig, frame):
        if stop:  # a second Ctrl-C: no more waiting
            _kill_groups(procs, signal.SIGKILL, 0)
        stop.append(sig)

    # Handlers first: a signal that arrives while the processes start must still be passed on.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    for cmd in cmds:
        procs.append(subprocess.Popen(cmd.argv, env={**os.environ, **cmd.env}, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1,
                                      start_new_session=True, preexec_fn=_pdeathsig))

    def pump(stream, sink, prefix):
        for line in stream:
            with lock:
                sink.write(prefix + line)
                sink.flush()

    for cmd, p in zip(cmds, procs):
        for stream, sink in ((p.stdout, out), (p.stderr, err)):
            readers.append(threading.Thread(target=pump, args=(stream, sink, cmd.label), daemon=True))
            readers[-1].start()
    status, first, wait = 0, signal.SIGTERM, grace_s
    try:
        while not stop:
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i = failed[0]
                status = _code(codes[i])
                running = sum(c is None for c in codes)
                with lock:
                    err.write(f"maskjax.launch: {cmds[i].label.strip() or 'a command'} exited with status "
                              f"{status}; stopping the {running} still running\n")
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.1)
        if stop:
            status, first, wait = 128 + stop[0], stop[0], max(grace_s, 60.0)
            err.write(f"maskjax.launch: got signal {stop[0]}; passing it on to every process\n")
    finally:
        _kill_groups(procs, first, wait)
        for r in readers:
            r.join(timeout=2)
        for sig, h in handlers.items():
            signal.signal(sig, h)
    return status


def execute(plan: list[Cmd], dry_run: bool) -> int:
    """Prints (dry run) or runs the plan in order, stopping at the first failure."""
    if dry_run:
        print(format_plan(plan), flush=True)
        return 0
    group: list[Cmd] = []
    for i, cmd in enumerate(plan):
        if cmd.background:
            group.append(cmd)
            if i + 1 < len(plan) and plan[i + 1].background:
                continue
            status, group = supervise(group), []
        elif i + 1 == len(plan):  # the last command replaces this process: signals reach it directly
            sys.stdout.flush()
            os.execvpe(cmd.argv[0], cmd.argv, {**os.environ, **cmd.env})
        else:
            status = subprocess.run(cmd.argv, env={**os.environ, **cmd.env}).returncode
        if status:
            return _code(status)
    return 0


# ----------------------------------------------------------------------------------------------
# Command line


def _env(name: str, default=None):
    return os.environ.get(name) or default


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


_ENV_OF: dict[str, str] = {}  # option dest -> the environment variable giving its default


def _opt(p, flag: str, env: str, default=None, help: str = "", **kw) -> None:
    """An option whose default comes from ``$env`` (argparse applies ``type`` to it as well)."""
    dest = flag.lstrip("-").replace("-", "_")
    _ENV_OF[dest] = env
    value = _env(env, default)
    p.add_argument(flag, default=str(value) if value is not None else None,
                   help=f"{help} (env {env})".strip(), **kw)


def _job_args(p, *, local: bool, init_timeout: int = 300) -> None:
    """CONFIG WORKDIR [training flags...] and the options every target shares."""
    _opt(p, "--python", "PYTHON" if local else "REMOTE_PYTHON", sys.executable if local else "python3",
         "interpreter that runs maskjax")
    _opt(p, "--init-timeout", "INIT_TIMEOUT", init_timeout, "seconds jax.distributed waits for all processes",
         type=_positive)
    p.add_argument("config", help="config file, e.g. configs/mae/default.py:smoke")
    p.add_argument("workdir", help="run directory (shared storage on several hosts)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="training flags, passed through")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m maskjax.launch`` argument parser (env vars give the defaults)."""
    prog = os.environ.get("MASKJAX_LAUNCH_PROG")
    p = argparse.ArgumentParser(prog="python -m maskjax.launch", allow_abbrev=False,
                                description="Launch `maskjax train` somewhere; --dry-run prints the commands.")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing (or DRY_RUN=1)")
    sub = p.add_subparsers(dest="target", required=True, metavar="TARGET")

    def add(name, help):
        return sub.add_parser(name, help=help, allow_abbrev=False, prog=prog or f"{p.prog} {name}")

    _job_args(add("local", "one process on this machine"), local=True)

    mp = add("local-multiprocess", "N processes on loopback with simulated CPU devices")
    _opt(mp, "--devices-per-process", "DEVICES_PER_PROCESS", 4, "simulated CPU devices per process", type=_positive)
    _opt(mp, "--port", "COORDINATOR_PORT", 0, "coordinator port (0: a free one)", type=int)
    mp.add_argument("num_processes", type=_positive, metavar="N")
    _job_args(mp, local=True, init_timeout=120)  # one machine: every process starts at once

    tpu = add("tpu", "Cloud TPU VM slice(s): create | setup | run")
    actions = tpu.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help in (("create", "create the slice (NUM_SLICES>1: a multislice queued resource)"),
                         ("setup", "install jax[tpu] and this checkout on every worker"),
                         ("run", "run maskjax train on every worker of every slice")):
        ap = actions.add_parser(action, help=help, allow_abbrev=False, prog=f"{prog or tpu.prog} {action}")
        _opt(ap, "--tpu", "TPU_NAME", help="TPU (or queued resource) name")
        _opt(ap, "--zone", "ZONE")
        _opt(ap, "--project", "PROJECT", help="default: gcloud's")
        _opt(ap, "--num-slices", "NUM_SLICES", 1, type=_positive)
        if action == "create":
            _opt(ap, "--accelerator-type", "ACCELERATOR_TYPE", help="e.g. v5p-32")
            _opt(ap, "--runtime-version", "RUNTIME_VERSION", help="TPU VM image")
            continue
        _opt(ap, "--remote-dir", "REMOTE_DIR", "maskjax", "checkout directory under ~ on the workers")
        if action == "setup":
            _opt(ap, "--jax-version", "JAX_VERSION", help="pin jax[tpu]==X")
            _opt(ap, "--python", "REMOTE_PYTHON", "python3")
            _opt(ap, "--source", "MASKJAX_SOURCE", repo_root(), "checkout to copy", type=Path)
            continue
        _opt(ap, "--megascale-coordinator", "MEGASCALE_COORDINATOR", help="separate slices: slice 0 worker 0's IP")
        _job_args(ap, local=False)

    xpk = add("xpk", "an xpk workload on a GKE cluster")
    _opt(xpk, "--cluster", "CLUSTER")
    _opt(xpk, "--workload", "WORKLOAD", help="default: maskjax-<workdir name>")
    _opt(xpk, "--tpu-type", "TPU_TYPE", help="e.g. v5p-256")
    _opt(xpk, "--num-slices", "NUM_SLICES", 1, type=_positive)
    _opt(xpk, "--project", "PROJECT")
    _opt(xpk, "--zone", "ZONE")
    _opt(xpk, "--docker-image", "DOCKER_IMAGE", help="an image with maskjax installed")
    _opt(xpk, "--base-docker-image", "BASE_DOCKER_IMAGE", help="else: xpk adds the checkout to this image")
    _opt(xpk, "--jax-version", "JAX_VERSION", help="pin jax[tpu]==X")
    _opt(xpk, "--source", "MASKJAX_SOURCE", repo_root(), "checkout xpk builds from", type=Path)
    _job_args(xpk, local=False)

    sl = add("slurm", "the srun step of an sbatch job (launch/slurm_gpu.sbatch)")
    _opt(sl, "--mode", "SLURM_MODE", "per-node", "one process per node (all its GPUs) or per GPU",
         choices=("per-node", "per-gpu"))
    _opt(sl, "--gpus-per-node", "GPUS_PER_NODE", _env("SLURM_GPUS_ON_NODE"), "for per-gpu", type=int)
    _opt(sl, "--port", "COORDINATOR_PORT", 0, "coordinator port (0: from the job id)", type=int)
    sl.add_argument("--auto", action="store_true", default=_env("DISTRIBUTED_AUTO", "0").lower() in _TRUE,
                    help="jax reads the SLURM environment (--distributed_auto; per-gpu only) (env DISTRIBUTED_AUTO)")
    _job_args(sl, local=True)

    task = add("slurm-task", "inside one srun task: rank from SLURM_PROCID, count from SLURM_NTASKS")
    task.add_argument("--coordinator", required=True, help="host:port of process 0")
    task.add_argument("--per-gpu", action="store_true", help="bind this task to GPU SLURM_LOCALID")
    _job_args(task, local=True)
    return p


_PLANS = {"local": plan_local, "local-multiprocess": plan_local_multiprocess, "tpu": plan_tpu,
          "xpk": plan_xpk, "slurm": plan_slurm, "slurm-task": plan_slurm_task}


def _check(p: argparse.ArgumentParser, a) -> None:
    sp = p._subparsers._group_actions[0].choices[a.target]  # the target's parser, for its usage line
    if a.target == "tpu":
        sp = sp._subparsers._group_actions[0].choices[a.action]
    need = {"tpu": ("tpu", "zone"), "xpk": ("cluster", "tpu_type")}.get(a.target, ())
    if a.target == "tpu" and a.action == "create":
        need += ("accelerator_type", "runtime_version")
    missing = [n for n in need if not getattr(a, n)]
    if missing:
        sp.error("missing " + ", ".join(f"--{n.replace('_', '-')} (or {_ENV_OF[n]})" for n in missing))
    if a.target == "slurm" and a.auto and a.mode == "per-node":  # jax's SLURM detection binds
        sp.error("--auto makes jax bind one GPU per process: use it with --mode per-gpu")  # ONE GPU
    # setup runs `rm -rf REMOTE_DIR` on every worker: accept nothing but a plain name under ~
    if a.target == "tpu" and a.action != "create" and not re.fullmatch(r"(?!\.\.?$)[\w.-]+", a.remote_dir):
        sp.error(f"--remote-dir must be a plain directory name under ~, got {a.remote_dir!r}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses, builds the plan, then prints it (dry run) or runs it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --dry-run is honoured anywhere: left among the training flags it would otherwise *run*.
    dry_run = "--dry-run" in argv or _env("DRY_RUN", "0").lower() in _TRUE
    argv = [x for x in argv if x != "--dry-run"]
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    return execute(_PLANS[args.target](args), dry_run)


if __name__ == "__main__":
    sys.exit(main())
