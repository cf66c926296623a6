"""Input-pipeline throughput of the video and audio families, and the data wait of smoke trainings.

Prints three Markdown tables with the hardware, commit and command beside them:

1. spectrograms/s of the AudioMAE pipeline on the Free Spoken Digit Dataset (WAV read from the
   tar, mean removal, roll-and-gain, Kaldi fbank, pad/crop, normalise) at several lengths, with 0
   and 2 grain worker processes;
2. clips/s of the VideoMAE pipeline (16 frames at stride 4, GroupMultiScaleCrop) on moving-CIFAR
   clips generated in memory, on MP4 files decoded with PyAV and on the same videos pre-decoded
   once into ArrayRecord JPEG frames (``maskjax predecode-video``), with CPU ms per clip
   (``maskjax.data.video.benchmark``);
3. the fraction of each training step spent waiting for the next batch, with the real pipeline,
   in the CPU recipes ``configs/audiomae/fsdd.py`` and ``configs/videomae/moving_cifar.py``
   (``maskjax bench``'s data-wait column).

Run from the repository root (``../shared/data/fsdd`` must exist):

    python benchmarks/input_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def audio_rows(lengths, workers, batches: int) -> list[dict]:
    """Spectrograms/s of the FSDD training pipeline at each (target_length, workers)."""
    from maskjax.config import load_config
    from maskjax.data.audio.benchmark import audio_pipeline_throughput

    rows = []
    for length in lengths:
        config = load_config(os.path.join(REPO_ROOT, "configs/audiomae/fsdd.py"))
        config.data.target_length = length
        for w in workers:
            r = audio_pipeline_throughput(config.data, batches=batches, global_batch=64, num_workers=w)
            rows.append(r)
            print(f"audio T={length} workers={w}: {r['spectrograms_per_s']:.0f} spectrograms/s", flush=True)
    return rows


def data_wait_rows(steps: int) -> list[dict]:
    """``maskjax bench`` rows (real pipeline) of the two CPU recipes."""
    from maskjax.perf.bench import bench_config, load

    rows = []
    for spec in ("configs/audiomae/fsdd.py", "configs/videomae/moving_cifar.py"):
        config = load(os.path.join(REPO_ROOT, spec), [])
        row = bench_config(config, label=spec, steps=steps, warmup=2, workdir=os.path.join(tempfile.gettempdir(),
                                                                                         "input_bench"))
        rows.append(row)
        print(f"{spec}: step {row['step_s_median']:.3f} s, data wait {100 * row['data_wait']:.1f}%", flush=True)
    return rows


def main(argv=None) -> int:
    """Runs the three measurements and prints the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer batches and steps (a smoke test of the script)")
    args = p.parse_args(argv)
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    from maskjax.data.video.benchmark import run_benchmarks
    from maskjax.repro.ledger import commit, hardware

    batches = 3 if args.quick else 30
    lengths = (64,) if args.quick else (64, 128, 1024)
    workers = (0,) if args.quick else (0, 2)
    audio = audio_rows(lengths, workers, batches)
    with tempfile.TemporaryDirectory() as tmp:
        video = run_benchmarks(tmp, sizes=(32,) if args.quick else (112, 224), videos=2 if args.quick else 16,
                               video_frames=40 if args.quick else 300, batches=2 if args.quick else 8,
                               global_batch=2 if args.quick else 8, workers=workers)
    waits = data_wait_rows(3 if args.quick else 20)

    print(f"\nMeasured on {hardware()}, commit {commit()}, with `python benchmarks/input_throughput.py"
          f"{' --quick' if args.quick else ''}`.\n")
    print("| audio pipeline (FSDD, 8 kHz, 128 bins, batch 64) | workers | spectrograms/s |\n|---|---|---|")
    for r in audio:
        print(f"| {r['target_length']} frames | {r['num_workers']} | {r['spectrograms_per_s']:.0f} |")
    print("\n| video pipeline (16 frames, stride 4) | workers | clips/s (wall) | pipeline CPU ms / clip "
          "| read+decode CPU ms / clip |\n|---|---|---|---|---|")
    for r in video:
        print(f"| {r['data']} | {r['num_workers']} | {r['clips_per_s']:.1f} | {r['cpu_ms_per_clip']:.0f} | "
              f"{r['read_cpu_ms_per_clip']:.0f} |")
    print("\n| smoke training (real pipeline, 0 workers) | step (s) | examples/s | data wait |\n|---|---|---|---|")
    for r in waits:
        print(f"| `{r['config']}` | {r['step_s_median']:.3f} | {r['examples_per_s']:.1f} | {100 * r['data_wait']:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO_ROOT)
    sys.exit(main())
