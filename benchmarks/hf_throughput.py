"""Training throughput of maskjax vs Hugging Face PyTorch on the same machine, interleaved.

For each case it measures one **training** step (forward + backward + AdamW update, float32, the
same batch every step, the same masking ratio) of

- ours: the jitted train step that ``maskjax train`` runs, built by ``maskjax.perf.bench.build_setup``
  (``training_parts`` -> ``make_train_step``, state donated) on a synthetic batch;
- Hugging Face: ``ViTMAEForPreTraining`` / ``BertForMaskedLM`` with the same widths, depths,
  heads, decoder, image size, masking ratio and optimizer hyper-parameters
  (``torch.optim.AdamW``, gradient clipping where the config clips), ``torch.set_num_threads``
  = the cores this process may use.

Each side lives in its own long-lived worker subprocess (own thread pool, compiled once, then
``--prime`` untimed steps: a process's first steps are slower than the rest). The parent
alternates rounds between them (ours first on even rounds, HF first on odd ones, so slow drift
of a shared machine's load hits both sides alike): a round is ``--warmup`` untimed steps then
``--steps`` timed steps, each blocked until done. The table gives each side's median
examples/s over rounds and the per-round ratio ours/HF (median and [min, max]).

Usage::

    JAX_PLATFORMS=cpu python benchmarks/hf_throughput.py --cases vit_s16_224,cifar_tiny,bert_base_mlm \\
        --rounds 5 --steps 3

Not part of pytest (minutes per case); ``tests/test_hf_throughput.py`` runs a micro case once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
PROTOCOL = "@@"  # worker lines carrying JSON start with this; anything else on stdout is ignored


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case: a maskjax config (file + overrides) and the default global batch."""

    config: str
    overrides: tuple[str, ...]
    batch: int
    what: str


_MAE_S16 = ("model.variant=S/16", "data.image_size=224", "model.decoder_width=512", "model.decoder_depth=8",
            "model.decoder_heads=16", "masking.ratio=0.75", "loss.norm_pix=True", "compute_dtype=float32")
_BERT = ("model.nsp=False", "data.nsp=False", "model.hidden_act=gelu", "data.seq_len=128",
         "masking.kind=bert", "masking.ratio=0.15", "masking.max_predictions=20", "compute_dtype=float32")

CASES: dict[str, Case] = {
    # MAE ViT-S/16 at 224 with Hugging Face's default ViTMAEConfig decoder (512 wide, 8 deep, 16 heads).
    "vit_s16_224": Case("configs/mae/vit_b16_in1k.py:smoke", _MAE_S16, 16, "MAE ViT-S/16, 224 px, decoder 512x8"),
    # The quick-start CPU recipe (configs/mae/default.py): ViT-Pico/4 on 32x32, decoder 96x2, batch 128.
    "cifar_tiny": Case("configs/mae/default.py", ("compute_dtype=float32",), 128,
                       "MAE ViT-Pico/4, 32 px, decoder 96x2 (configs/mae/default.py)"),
    # BERT-Base masked-LM only (no NSP), 128 tokens, 15 % masking, exact GELU as HF's BertConfig.
    "bert_base_mlm": Case("configs/bert/bert.py", ("model.variant=Base",) + _BERT, 8,
                          "BERT-Base MLM, 128 tokens, 15 % masked"),
    # Micro cases for the smoke test (seconds).
    "micro_mae": Case("configs/mae/default.py", ("model.variant=mu/4", "data.image_size=16",
                                                 "model.decoder_width=32", "model.decoder_depth=1",
                                                 "model.decoder_heads=2", "compute_dtype=float32"), 4,
                      "MAE micro (tests)"),
    "micro_bert": Case("configs/bert/bert.py", ("model.variant=mu", "model.vocab_size=512",
                                                "model.max_positions=64") + _BERT[:3]
                       + ("data.seq_len=32", "masking.kind=bert", "masking.ratio=0.15",
                          "masking.max_predictions=5", "compute_dtype=float32"), 4, "BERT micro (tests)"),
}


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_case(name: str, batch: int | None, attention_impl: str | None, extra: list[str]):
    """The maskjax config of case ``name`` with its overrides, the batch and the attention impl."""
    from maskjax.perf.bench import load

    case = CASES[name]
    path, colon, arg = case.config.partition(":")
    config = load(str(REPO / path) + colon + arg, list(case.overrides) + list(extra), batch or case.batch)
    if attention_impl is not None:
        config.model.attention_impl = None if attention_impl == "default" else attention_impl
    return config


# --- the two workers ------------------------------------------------------------------------------

class OursRunner:
    """maskjax's jitted train step on a fixed synthetic batch (exactly what ``maskjax train`` runs)."""

    def __init__(self, config, clock=time.perf_counter):
        import jax

        from maskjax.perf.bench import build_setup, nominal_examples, synthetic_batch
        from maskjax.data.pipeline import to_global_batch
        from maskjax.core.sharding import make_mesh
        from maskjax.core.state import create_state

        self.jax = jax
        self.mesh = make_mesh(config.mesh)
        setup = build_setup(config, self.mesh, nominal_examples(config))
        self.state, _ = create_state(setup.template, setup.method.build, setup.tx, self.mesh, setup.rules,
                                     setup.init_key)
        with jax.set_mesh(self.mesh):
            self.batch = to_global_batch(synthetic_batch(config, config.seed), setup.batch_sharding)
            t0 = time.perf_counter()
            self.step = setup.step_fn.lower(self.state, self.batch).compile()
            self.compile_s = time.perf_counter() - t0
        self.params = setup.template.num_params()
        self.loss = float("nan")
        self.clock = clock

    def run(self, n: int) -> list[float]:
        """Runs ``n`` steps, each blocked until done; returns their seconds (of ``clock``)."""
        times = []
        with self.jax.set_mesh(self.mesh):
            for _ in range(n):
                t0 = self.clock()
                self.state, metrics = self.step(self.state, self.batch)
                self.jax.block_until_ready((self.state, metrics))
                times.append(self.clock() - t0)
                self.loss = metrics["loss"]
        self.loss = float(self.loss)
        return times


def hf_model(config, attn: str):
    """The Hugging Face model with the dims of ``config`` and ``attn`` attention implementation."""
    from maskjax.methods import method_modality

    if method_modality(config.method) == "image":
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        from maskjax.models.vit import parse_variant

        size, patch = parse_variant(config.model.variant)
        m = config.model
        hf = ViTMAEConfig(
            hidden_size=size.width, num_hidden_layers=size.depth, num_attention_heads=size.heads,
            intermediate_size=int(size.width * size.mlp_ratio), image_size=config.data.image_size,
            patch_size=patch, num_channels=m.get("in_chans", 3), qkv_bias=True, layer_norm_eps=1e-6,
            decoder_hidden_size=m.decoder_width, decoder_num_hidden_layers=m.decoder_depth,
            decoder_num_attention_heads=m.decoder_heads, decoder_intermediate_size=int(m.decoder_width * 4),
            mask_ratio=float(config.masking.ratio), norm_pix_loss=bool(config.loss.norm_pix),
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return ViTMAEForPreTraining._from_config(hf, attn_implementation=attn)
    from transformers import BertConfig, BertForMaskedLM

    from maskjax.models.bert import text_config

    m = config.model
    t = text_config(m.variant)
    hf = BertConfig(vocab_size=m.vocab_size, hidden_size=t.hidden, num_hidden_layers=t.layers,
                    num_attention_heads=t.heads, intermediate_size=t.ffn, max_position_embeddings=m.max_positions,
                    type_vocab_size=m.type_vocab_size, hidden_dropout_prob=m.dropout,
                    attention_probs_dropout_prob=m.attention_dropout, layer_norm_eps=1e-12,
                    hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_new"}[m.hidden_act])
    return BertForMaskedLM._from_config(hf, attn_implementation=attn)


def hf_inputs(config, seed: int = 0) -> dict:
    """A fixed batch: images [B, C, H, W], or BERT ids with ~15 % positions masked and labelled."""
    import numpy as np
    import torch

    from maskjax.methods import method_modality

    rng = np.random.default_rng(seed)
    b = int(config.global_batch)
    if method_modality(config.method) == "image":
        s, c = int(config.data.image_size), int(config.model.get("in_chans", 3))
        return {"pixel_values": torch.from_numpy(rng.standard_normal((b, c, s, s), dtype=np.float32))}
    length = int(config.data.seq_len)
    ids = rng.integers(5, int(config.model.vocab_size), (b, length))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    labels = np.full((b, length), -100)
    # BERT's count rule: round(rate * length), at most max_predictions, never [CLS]/[SEP].
    count = min(max(1, round(float(config.masking.ratio) * length)), int(config.masking.max_predictions))
    for row in range(b):
        pos = rng.choice(np.arange(1, length - 1), count, replace=False)
        labels[row, pos] = ids[row, pos]
        ids[row, pos] = 4  # [MASK]
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "attention_mask": torch.ones(b, length, dtype=torch.long),
            "token_type_ids": torch.zeros(b, length, dtype=torch.long)}


class HFRunner:
    """Hugging Face model + ``torch.optim.AdamW`` training step on a fixed batch."""

    def __init__(self, config, attn: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(config.seed)
        self.torch = torch
        self.model = hf_model(config, attn).train()
        o = config.optim
        lr = float(o.base_lr)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(float(o.b1), float(o.b2)),
                                     eps=float(o.eps), weight_decay=float(o.weight_decay))
        self.clip = o.get("grad_clip")
        self.inputs = hf_inputs(config, config.seed)
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.compile_s = 0.0
        self.loss = float("nan")
        self.attn = self.model.config._attn_implementation
        self.clock = time.perf_counter

    def run(self, n: int) -> list[float]:
        """Runs ``n`` steps (forward, backward, optional clipping, AdamW); returns their seconds."""
        times = []
        for _ in range(n):
            t0 = self.clock()
            loss = self.model(**self.inputs).loss
            loss.backward()
            if self.clip:
                self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.clip))
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            times.append(self.clock() - t0)
            self.loss = float(loss.detach())
        return times


def _send(obj: dict) -> None:
    print(PROTOCOL + json.dumps(obj), flush=True)


def pin_threads(threads: int) -> None:
    """Restricts this process to its first ``threads`` usable cores (both sides get the same ones)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores and threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])


def disable_cpu_layout_tweaks() -> None:
    """Restores the plain layers for a "before" measurement: ``nnx.Linear`` on [B, T, D] inputs with
    XLA's own matmul backward, and ``jax.nn.gelu`` (erfc form) instead of ``layers.gelu_erf``."""
    import jax
    from flax import nnx

    from maskjax.models import bert, layers

    layers.Dense.__call__ = nnx.Linear.__call__
    layers.gelu_erf = bert.gelu_erf = lambda x: jax.nn.gelu(x, approximate=False)


def worker_versions(side: str) -> str:
    """This worker's interpreter and the libraries its side runs on, for the table's notes."""
    import jax

    libs = f"jax {jax.__version__}"
    if side == "hf":
        import torch
        import transformers

        libs = f"torch {torch.__version__}, transformers {transformers.__version__}"
    return f"Python {platform.python_version()}, {libs}"


def worker_main(args) -> int:
    """A worker: build, compile, report ready, then run rounds on request until ``quit``."""
    pin_threads(args.threads)
    malloc = "default"
    if args.worker == "ours" and args.no_cpu_tweaks:
        disable_cpu_layout_tweaks()
    elif args.worker == "ours":
        from maskjax.host_memory import tune_malloc

        # What `maskjax train` does first (docs/performance.md, "Page faults"); MASKJAX_TUNE_MALLOC=0: off.
        malloc = tune_malloc()
    config = load_case(args.case, args.batch, args.attention_impl, args.override)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    runner = OursRunner(config) if args.worker == "ours" else HFRunner(config, args.hf_attention, args.threads)
    runner.clock = clock
    # A process's first steps are slower than its later ones (the heap grows to the step's peak,
    # caches and thread pools warm up): without this our first round ran ~40 % below the others.
    runner.run(args.prime)
    _send({"ready": True, "compile_s": runner.compile_s, "params": runner.params,
           "attention": getattr(runner, "attn", config.model.get("attention_impl")), "malloc": malloc,
           "versions": worker_versions(args.worker)})
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        warmup, steps = (int(x) for x in command.split())
        runner.run(warmup)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu0, wall0 = time.process_time(), time.perf_counter()
        times = runner.run(steps)
        # CPU seconds of all this process's threads per wall second: how many cores the step kept
        # busy (spin-waiting threads count as busy; sleeping ones do not).
        busy = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / max(steps, 1)
        _send({"step_s": times, "loss": runner.loss, "faults": faults, "cores_busy": busy})
    return 0


# --- the parent -----------------------------------------------------------------------------------

class Worker:
    """A worker subprocess speaking the ``@@{json}`` line protocol."""

    def __init__(self, side: str, case: str, args):
        python = (args.ours_python if side == "ours" else args.hf_python) or sys.executable
        cmd = [python, str(pathlib.Path(__file__).resolve()), "--worker", side, "--case", case,
               "--hf-attention", args.hf_attention, "--threads", str(args.threads), "--clock", args.clock,
               "--prime", str(args.prime)]
        if args.batch:
            cmd += ["--batch", str(args.batch)]
        if args.attention_impl:
            cmd += ["--attention-impl", args.attention_impl]
        for item in args.override:
            cmd.append(f"--config.{item}")
        if args.no_cpu_tweaks:
            cmd.append("--no-cpu-tweaks")
        env = dict(os.environ)
        env.setdefault("JAX_PLATFORMS", "cpu")
        # The benchmark is about this machine as it is: drop the test suite's simulated devices.
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        if side == "ours" and args.threads == 1:
            # XLA:CPU on one thread: no Eigen pool for matmuls, one intra-op thread.
            flags += ["--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
        if side == "ours" and args.xla_flags:
            flags.append(args.xla_flags)
        env["XLA_FLAGS"] = " ".join(flags)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.side = side
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=str(REPO))
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        raise RuntimeError(f"the {self.side} worker exited with status {self.proc.wait()} (see its stderr above)")

    def round(self, warmup: int, steps: int) -> dict:
        """One round: ``warmup`` untimed steps, then ``steps`` timed ones."""
        self.proc.stdin.write(f"{warmup} {steps}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Asks the worker to exit and waits for it."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=60)


def measure_case(case: str, args, say) -> dict:
    """Interleaved rounds of one case; returns per-round examples/s of both sides and the ratios."""
    batch = args.batch or CASES[case].batch
    workers = {}
    try:
        for side in ("ours", "hf"):
            say(f"{case}: starting the {side} worker (build + compile)")
            workers[side] = Worker(side, case, args)
        rates: dict[str, list[float]] = {"ours": [], "hf": []}
        losses = {}
        faults: dict[str, list[float]] = {"ours": [], "hf": []}
        busy: dict[str, list[float]] = {"ours": [], "hf": []}
        for r in range(args.rounds):
            order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")
            for side in order:
                out = workers[side].round(args.warmup, args.steps)
                rates[side].append(batch / statistics.median(out["step_s"]))
                losses[side] = out["loss"]
                faults[side].append(out["faults"])
                busy[side].append(out["cores_busy"])
            say(f"{case}: round {r + 1}/{args.rounds}: ours {rates['ours'][-1]:.2f}/s, "
                f"HF {rates['hf'][-1]:.2f}/s")
    finally:
        for w in workers.values():
            w.close()
    ratios = [o / h for o, h in zip(rates["ours"], rates["hf"])]
    return {"case": case, "what": CASES[case].what, "batch": batch, "rates": rates, "ratios": ratios,
            "losses": losses, "faults": {k: statistics.median(v) for k, v in faults.items()},
            "cores_busy": {k: statistics.median(v) for k, v in busy.items()},
            "ours": workers["ours"].info, "hf": workers["hf"].info}


def commit_id() -> str:
    """The checked-out commit (what ``git rev-parse HEAD`` prints), read from ``.git`` without git."""
    git = REPO / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = pathlib.Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        common = git / "commondir"
        root = (git / common.read_text().strip()).resolve() if common.is_file() else git
        for candidate in (root / ref, root / "packed-refs"):
            if candidate.is_file() and candidate.name != "packed-refs":
                return candidate.read_text().strip()
            if candidate.is_file():
                for line in candidate.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except (OSError, IndexError):
        pass
    return "unknown"


def hardware() -> str:
    """CPU model, usable cores and memory, in one line (each worker reports its own versions)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        mem_s = f", {mem / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        mem_s = ""
    return f"{cpu}, {usable_cores()} usable cores{mem_s}"


TABLE_HEADER = ("| case | global batch | ours examples/s (median) | HF examples/s (median) "
                "| ratio ours/HF median [min, max] | rounds x steps | compile ours (s) |")


def format_table(results: list[dict], rounds: int, steps: int) -> str:
    """The markdown table: one row per case."""
    lines = [TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count(" | ") + 1)]
    for r in results:
        ours, hf = statistics.median(r["rates"]["ours"]), statistics.median(r["rates"]["hf"])
        ratio = statistics.median(r["ratios"])
        lines.append(f"| `{r['case']}` ({r['what']}) | {r['batch']} | {ours:.2f} | {hf:.2f} | "
                     f"**{ratio:.3f}** [{min(r['ratios']):.3f}, {max(r['ratios']):.3f}] | {rounds} x {steps} | "
                     f"{r['ours']['compile_s']:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description="maskjax vs Hugging Face PyTorch training throughput, interleaved.")
    p.add_argument("--cases", default="vit_s16_224,cifar_tiny,bert_base_mlm",
                   help=f"comma-separated, from {sorted(CASES)}")
    p.add_argument("--rounds", type=int, default=5, help="A/B rounds per case (default 5)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and side (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every round (default 1)")
    p.add_argument("--prime", type=int, default=3,
                   help="untimed steps each worker runs once after compiling, before the rounds (default 3)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the case's)")
    p.add_argument("--attention-impl", default=None,
                   help="our model.attention_impl (e.g. xla, blockwise, cudnn; 'default' = the config's None)")
    p.add_argument("--hf-attention", default="sdpa", help="Hugging Face attn_implementation (sdpa | eager)")
    # --config.FIELD=VALUE (maskjax's one override syntax) is split off before parsing; see main().
    p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for our worker (experiments)")
    p.add_argument("--threads", type=int, default=usable_cores(),
                   help="threads per side: torch.set_num_threads, and for 1 single-threaded XLA (default: cores)")
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="step time from the wall clock (default) or the process CPU time (with --threads 1 "
                        "this measures work and is robust to other jobs sharing the cores)")
    p.add_argument("--no-cpu-tweaks", action="store_true",
                   help="'before' rows: plain nnx.Linear matmuls and jax.nn.gelu in our model (see "
                        "disable_cpu_layout_tweaks)")
    p.add_argument("--json", default=None, help="also write the per-round results here")
    p.add_argument("--ours-python", default=None,
                   help="interpreter for our worker (default: this one), e.g. a Python 3.12 venv with a newer "
                        "jax; it needs maskjax importable")
    p.add_argument("--hf-python", default=None,
                   help="interpreter for the HF worker (default: this one); it needs torch, transformers and maskjax")
    p.add_argument("--worker", choices=("ours", "hf"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    from maskjax.config.commandline import split_overrides

    rest, pairs = split_overrides(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(rest)
    args.override = [f"{field}={text}" for field, text in pairs]  # "FIELD=VALUE", as bench.load takes
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0 or args.prime < 0:
        p.error(f"need --rounds >= 1, --steps >= 1, --warmup >= 0, --prime >= 0; got {args.rounds}, {args.steps}, "
                f"{args.warmup}, {args.prime}")
    return p, args


def main(argv: list[str] | None = None) -> int:
    """Runs the cases and prints the markdown table with hardware, commit, load and command."""
    p, args = parse_args(argv)
    if args.worker:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        return worker_main(args)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {sorted(CASES)}")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    results = [measure_case(c, args, say) for c in cases]
    load_after = os.getloadavg()
    command = "python benchmarks/hf_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(format_table(results, args.rounds, args.steps))
    print()
    print(f"- hardware: {hardware()}")
    for side, label in (("ours", "ours"), ("hf", "HF")):
        print(f"- {label} worker: " + "; ".join(sorted({r[side]["versions"] for r in results})))
    print(f"- commit: {commit_id()}")
    print(f"- threads per side: {args.threads}{' (both pinned to the same cores)' if args.threads < usable_cores() else ''}; "
          f"step time: {args.clock} clock; float32; same batch every step"
          + ("; ours WITHOUT the CPU layout tweaks (--no-cpu-tweaks)" if args.no_cpu_tweaks else ""))
    print(f"- load average (1/5/15 min) before {', '.join(f'{x:.2f}' for x in load_before)}; "
          f"after {', '.join(f'{x:.2f}' for x in load_after)}")
    for r in results:
        print(f"- {r['case']}: ours attention {r['ours']['attention']!r}, HF attention {r['hf']['attention']!r}; "
              f"ours glibc malloc tuning: {r['ours']['malloc']}; "
              f"trainable params ours {r['ours']['params']:,}, HF {r['hf']['params']:,}; "
              f"last loss ours {r['losses']['ours']:.4f}, HF {r['losses']['hf']:.4f}; "
              f"minor page faults per timed step (median of rounds) ours {r['faults']['ours']:,.0f}, "
              f"HF {r['faults']['hf']:,.0f}; CPU cores busy during timed steps (process CPU time / wall "
              f"time, median of rounds) ours {r['cores_busy']['ours']:.2f}, HF {r['cores_busy']['hf']:.2f}")
    print(f"- command: `{command}`")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "command": command, "commit": commit_id(), "hardware": hardware(),
                       "load_before": load_before, "load_after": load_after}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
