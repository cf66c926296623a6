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

from maskjax.perf.bench import load
from maskjax.config import apply_overrides, text_base_config
from maskjax.perf.fitcheck import fit_check, format_report, main
from tests.conftest import REPO_ROOT

FLOP_RATIO = (0.97, 1.15)


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
           "--platform", "cpu", "--devices", "8", "--device-memory-gib", "1", "--json", str(out)]
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
    config = load(str(REPO_ROOT / "configs/mae/default.py"), ["model.attention_impl=xla"])
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
    assert main(["--config", "configs/mae/vit_b16_in1k.py", "--topology", "v5e-3"]) == 2
    err = capsys.readouterr().err
    assert "unknown TPU topology 'v5e-3'" in err and "v5e-256" in err and "v4-128" in err


def test_bad_config_path(capsys):
    assert main(["--config", "configs/mae/missing.py", "--platform", "cpu"]) == 2
    assert "not found" in capsys.readouterr().err


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
    config = load(str(REPO_ROOT / spec), [])
    apply_overrides(config, {**MEDIA_TINY[spec], "global_batch": 2})
    report = fit_check(config, platform="cpu", devices=1)
    ratio = report.xla_flops / report.analytic_flops
    assert FLOP_RATIO[0] < ratio < FLOP_RATIO[1], ratio
