"""``maskjax fitcheck``: ahead-of-time compilation for a target mesh, memory and FLOPs, never allocating.

Expected XLA/analytic FLOP ratio (one device, so no replicated work is counted 8 times): XLA
counts every multiply-add as 2 FLOPs like maskjax/perf/flops.py, and adds what the analytic count
leaves out on purpose: softmax, LayerNorm, GELU, dropout's random bits, the loss and the AdamW
update (~10-20 FLOPs per parameter), while skipping the unneeded input gradient of the patch
embedding. Measured on these models: MAE default recipe (ViT-Pico/4, 96 wide) 1.06, BERT-Tiny
(128 wide) at 128 tokens 1.08; ViT-B/16 1.01. The tests accept 0.97-1.15.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from maskjax.config import apply_overrides, text_base_config
from maskjax.config.commandline import apply_text_overrides, load_config_with_overrides
from maskjax.errors import ConfigError, UsageError, UserError, run_command
from maskjax.perf.bench import accumulated_flops, fmt_bytes
from maskjax.perf.fit_remedies import Measured, format_remedies, search_remedies
from maskjax.perf.fitcheck import FitcheckError, fit_check, format_report, main
from tests.conftest import REPO_ROOT

FLOP_RATIO = (0.97, 1.15)
GIB = 2**30


def load(spec: str, overrides: dict | None = None):
    """``spec`` (relative to the repository) with ``--config.K=V`` style overrides."""
    return load_config_with_overrides(str(REPO_ROOT / spec), [(k, str(v)) for k, v in (overrides or {}).items()])


def _child_env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # the command must ask for its 8 devices itself
    return env


def _run_measured(cmd: list[str], tmp_path, timeout_s: float = 300) -> tuple[str, str, int, int]:
    """Runs ``cmd``; returns (stdout, stderr, exit code, peak RSS in KiB of that child alone)."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_child_env(), stdout=fo, stderr=fe)
        deadline = time.monotonic() + timeout_s
        while True:  # os.wait4 reaps the child and gives its own rusage (communicate() would reap it first)
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return out.read_text(), err.read_text(), proc.returncode, rusage.ru_maxrss


@pytest.mark.slow  # 30 s of compiling; test_default_recipe_fits_and_flops_agree covers the CPU device path
def test_vit_b16_on_8_cpu_devices_without_allocating(tmp_path):
    out = tmp_path / "fit.json"
    cmd = [sys.executable, "-m", "maskjax.perf.fitcheck", "--config", "configs/mae/vit_b16_in1k.py",
           "--platform", "cpu", "--devices", "8", "--device-memory-gib", "1", "--max-compiles", "0",
           "--json", str(out)]
    stdout, stderr, code, maxrss_kib = _run_measured(cmd, tmp_path)
    assert code == 1, stderr  # 1 = does not fit
    assert "does not fit in 1 GiB" in stdout and "8 x cpu" in stdout and "'fsdp': 8" in stdout
    report = json.loads(out.read_text())
    assert report["global_batch"] == 4096 and report["params"] == 111_655_680 and report["fits"] is False
    # Per device: 1/8 of params + AdamW mu and nu (float32) and 1/8 of the image batch.
    state = report["params"] * 4 * 3
    images = 4096 * 224 * 224 * 3 * 4
    assert (state + images) / 8 <= report["memory"]["arguments"] <= 1.05 * (state + images) / 8
    assert report["memory"]["temporaries"] > 0 and report["memory"]["total"] > report["memory"]["arguments"]
    assert report["xla_flops"] / report["analytic_flops"] == pytest.approx(1.0, abs=0.05)
    # Materialising the sharded state and batch would take (state + images) = 3.8 GB of buffers;
    # none exist after the compile. (Host RSS is no proof either way: a cold XLA compile of this
    # program alone takes about 4 GB, a cached one under 1 GB.)
    assert report["live_device_bytes"] < 1 << 20, report["live_device_bytes"]
    assert maxrss_kib > 0


def test_default_recipe_fits_and_flops_agree():
    # XLA's cost analysis counts a loop body once, and the blockwise attention is a loop over batch
    # x head chunks: cross-check with XLA's unlooped attention, whatever the CPU default picks.
    config = load("configs/mae/default.py", {"model.attention_impl": "xla"})
    report = fit_check(config, platform="cpu", devices=1, device_memory_gib=64)
    assert report.fits is True and report.mesh == {"data": 1, "fsdp": 1, "tensor": 1}
    text = format_report(report, "default")
    assert "fit: fits in 64 GiB" in text and "temporaries" in text
    ratio = report.xla_flops / report.analytic_flops
    assert FLOP_RATIO[0] < ratio < FLOP_RATIO[1], ratio


def test_small_bert_flops_agree_without_vocab_or_data():
    config = text_base_config()
    apply_overrides(config, {"model.variant": "Tiny", "model.vocab_size": 8192, "data.path": "/no/such/file.txt",
                             "masking.max_predictions": 20, "global_batch": 8})
    report = fit_check(config, platform="cpu", devices=1)
    assert report.fits is None  # CPU: no memory size unless given
    assert any("data.path" in note for note in report.notes)
    ratio = report.xla_flops / report.analytic_flops
    assert FLOP_RATIO[0] < ratio < FLOP_RATIO[1], ratio


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu is installed here")
def test_tpu_topology_without_libtpu_is_one_clear_line():
    cmd = [sys.executable, "-m", "maskjax.perf.fitcheck", "--config", "configs/mae/vit_b16_in1k.py",
           "--topology", "v5e-256"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=_child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "libtpu" in lines[0] and "v5e-256" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_unknown_topology_lists_known_ones(capsys):
    argv = ["--config", "configs/mae/vit_b16_in1k.py", "--topology", "v5e-3"]
    with pytest.raises(FitcheckError, match="unknown TPU topology 'v5e-3'"):
        main(argv)
    # Through the dispatcher's wrapper: one line on stderr, exit status 2.
    assert run_command("maskjax fitcheck", main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskjax fitcheck: unknown TPU topology 'v5e-3'") and err.count("\n") == 1
    assert "v5e-256" in err and "v4-128" in err


def test_bad_config_path(capsys):
    with pytest.raises(UserError, match="not found"):  # the loader's UsageError
        main(["--config", "configs/mae/missing.py", "--platform", "cpu"])


def test_command_line_uses_config_overrides():
    """``--config.X=V`` is the override syntax (typos named); the old ``--override`` says what replaced it."""
    with pytest.raises(ConfigError, match="did you mean 'global_batch'"):
        main(["--config", "configs/mae/default.py", "--config.global_bach=8"])
    with pytest.raises(UsageError, match="--config.grad_accum=4"):
        main(["--config", "configs/mae/default.py", "--override", "grad_accum=4"])
    with pytest.raises(UsageError, match="--platform tpu needs --topology"):
        main(["--config", "configs/mae/default.py", "--platform", "tpu"])


def test_accumulated_flops_adds_the_other_micro_batches():
    # XLA counted one micro-batch (10) plus the update (1): 4 micro-batches are 41.
    assert accumulated_flops(11.0, 10.0, 4) == 41.0
    assert accumulated_flops(11.0, 10.0, 1) == 11.0
    assert accumulated_flops(41.0, 10.0, 4) == 41.0  # an XLA that already counts every trip
    assert accumulated_flops(None, 10.0, 4) is None and accumulated_flops(11.0, None, 4) == 11.0


def _fake_compile(log):
    """A stand-in for compiling: fixed + carry + activations / grad_accum, GiB per device."""
    act = {False: 100, "attention": 90, "dots": 60, True: 20}
    flops = {False: 1.0, "attention": 1.03, "dots": 1.1, True: 1.3}

    def compile_fn(config):
        log.append((config.grad_accum, config.remat, config.mesh.data, config.mesh.fsdp))
        fixed = 4 if config.mesh.data == 2 else 2  # params replicated over 2 data-parallel groups
        carry = 1 if config.grad_accum > 1 else 0
        total = (fixed + carry + act[config.remat] / config.grad_accum) * GIB
        return Measured(int(total), 1e15 * flops[config.remat], 1 * GIB)

    return compile_fn


def test_remedy_search_finds_cheap_fits_within_the_compile_budget():
    config = load("configs/mae/default.py", {"mesh.data": 2, "mesh.fsdp": -1, "global_batch": 256})
    log = []
    compile_fn = _fake_compile(log)
    base = compile_fn(config)
    log.clear()
    search = search_remedies(config, base, temporaries=101 * GIB, budget=8 * GIB, num_devices=8,
                             compile_fn=compile_fn, max_compiles=8, want=2)
    assert search.compiles == len(log) <= 8
    assert len(search.fits) == 2, [(t.flags, t.total) for t in search.trials]
    for t in search.fits:  # every reported fit was compiled with exactly its flags, under the budget
        assert t.total <= 8 * GIB and "--config.grad_accum=" in t.flags
    # Accumulation alone cannot fit (the model predicts it from the first compile): never compiled.
    assert not any(r[0] > 1 and r[1] is False and r[2] == 2 for r in log), log
    # Cheapest expected cost first among the fits; remat's cost is the FLOP increase it measured.
    costs = [t.cost_pct for t in search.fits]
    assert costs == sorted(costs)
    full = [t for t in search.trials if t.flags == "--config.remat=True"]
    assert full and full[0].cost_pct == pytest.approx(30.0)
    text = "\n".join(format_remedies(search, fmt_bytes))
    assert f"fix: add {search.fits[0].flags}" in text and "communication" in text and "compute" in text


def test_remedy_search_says_when_nothing_fits():
    config = load("configs/mae/default.py", {"global_batch": 256})
    compile_fn = _fake_compile([])
    search = search_remedies(config, compile_fn(config), temporaries=101 * GIB, budget=1 * GIB, num_devices=8,
                             compile_fn=compile_fn, max_compiles=8)
    assert not search.fits and search.compiles <= 8
    text = "\n".join(format_remedies(search, fmt_bytes))
    assert "no remedy fits" in text and "more devices" in text


# A model small enough to compile in seconds; its step needs ~36 MiB per CPU device at batch 64,
# nearly all of it activations.
TINY_MAE = ["--config.model.attention_impl=xla", "--config.model.variant=mu/4", "--config.model.decoder_width=32",
            "--config.model.decoder_depth=1", "--config.model.decoder_heads=2"]


def test_does_not_fit_prints_a_remedy_that_fits_and_counts_every_micro_batch(tmp_path):
    out = tmp_path / "fit.json"
    budget_gib = 0.013  # ~14 MiB: x2 accumulation is not enough on XLA:CPU, x4 is
    cmd = [sys.executable, "-m", "maskjax.perf.fitcheck", "--config", "configs/mae/default.py", *TINY_MAE,
           "--batch", "64", "--platform", "cpu", "--devices", "1", "--device-memory-gib", str(budget_gib),
           "--remedies", "1", "--json", str(out)]
    stdout, stderr, code, _ = _run_measured(cmd, tmp_path)
    assert code == 1, stderr  # the config as given still does not fit
    report = json.loads(out.read_text())
    assert report["fits"] is False and report["grad_accum"] == 1
    fix = [line for line in stdout.splitlines() if line.startswith("fix: add ")]
    assert len(fix) == 1, stdout
    flags = fix[0].removeprefix("fix: add ").split("   ")[0].split()
    assert any(f.startswith("--config.grad_accum=") for f in flags), stdout
    assert report["remedies"]["compiles"] <= 8
    # The printed flags really compile smaller, and within the budget.
    config = load("configs/mae/default.py", {"global_batch": 64})
    apply_text_overrides(config, [tuple(f.removeprefix("--config.").split("=", 1))
                                  for f in TINY_MAE + flags])
    fixed = fit_check(config, platform="cpu", devices=1, device_memory_gib=budget_gib, remedies=False)
    assert fixed.fits is True and fixed.memory["total"] < report["memory"]["total"], (fixed.memory, report["memory"])
    # XLA counts the accumulation loop's body once; the report counts every micro-batch, so the
    # XLA/analytic ratio is that of the unaccumulated step (it read ~1/grad_accum before).
    assert fixed.grad_accum >= 2
    before = report["xla_flops"] / report["analytic_flops"]
    after = fixed.xla_flops / fixed.analytic_flops
    assert after == pytest.approx(before, rel=0.03), (before, after)
    assert FLOP_RATIO[0] < after < FLOP_RATIO[1]


MEDIA_TINY = {
    "configs/videomae/videomae.py": {"model.variant": "mu/8", "data.num_frames": 4, "data.image_size": 32,
                                     "model.decoder_width": 32, "model.decoder_heads": 2, "model.decoder_depth": 1},
    "configs/videomae_v2/videomae_v2.py:size=B": {
        "model.variant": "mu/8", "data.num_frames": 4, "data.image_size": 32, "model.decoder_width": 32,
        "model.decoder_heads": 2, "model.decoder_depth": 1},
    "configs/mae_st/mae_st.py": {"model.variant": "mu/8", "data.num_frames": 8, "data.image_size": 32,
                                 "model.decoder_width": 32, "model.decoder_heads": 2, "model.decoder_depth": 1,
                                 "model.pred_t_dim": 4},
    "configs/audiomae/audiomae.py:decoder=global": {
        "model.variant": "mu/16", "data.target_length": 128, "data.num_mel_bins": 64,
        "model.decoder_width": 32, "model.decoder_heads": 2, "model.decoder_depth": 2},
}


@pytest.mark.parametrize("spec", sorted(MEDIA_TINY))
def test_video_and_audio_flop_counts_agree_with_xla(spec):
    """The analytic counts of the video/audio methods match XLA's on a compiled tiny step."""
    config = load(spec, {**MEDIA_TINY[spec], "global_batch": 2})
    report = fit_check(config, platform="cpu", devices=1)
    ratio = report.xla_flops / report.analytic_flops
    assert FLOP_RATIO[0] < ratio < FLOP_RATIO[1], ratio
