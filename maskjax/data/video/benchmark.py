"""Throughput of the video input pipeline (clips/s): is training decode-bound?

`video_pipeline_throughput` times the training pipeline of one ``config.data`` section.
``python -m maskjax.data.video.benchmark [--out DIR]`` compares, on this machine, moving-CIFAR
clips generated in memory, MP4 files decoded with PyAV and the same videos pre-decoded into
ArrayRecord JPEG frames (``maskjax predecode-video``), with 0 and 2 grain worker processes, and
prints a Markdown table. The MP4s imitate Kinetics as VideoMAE stores it
(`make_benchmark_videos`). Besides wall-clock clips/s (which depends on whatever else the
machine runs) it reports CPU milliseconds per clip, summed over the worker processes.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np


def _get(config_data, name: str, default=None):
    value = config_data.get(name, default) if hasattr(config_data, "get") else getattr(config_data, name, default)
    return default if value is None else value


def video_pipeline_throughput(config_data, *, batches: int = 10, global_batch: int = 8,
                              num_workers: int = 0, warmup_batches: int | None = None,
                              prefetch: int = 16) -> dict[str, Any]:
    """Steady-state clips per second of the training pipeline of ``config_data`` (``config.data``).

    Opens the train source (``kind``, ``path``, ``split``, ``name``, ``data_dir``), builds
    `make_video_pipeline` with ``num_frames``, ``sampling_rate``, ``image_size`` and ``augment``
    (4 read threads, ``prefetch`` elements buffered per process), discards ``warmup_batches``
    and times the next ``batches``. The default warm-up drains every prefetch buffer first
    (``prefetch x max(1, num_workers)`` clips): timing batches that were prefetched during
    start-up would overstate the rate.

    Returns ``dict(clips_per_s, seconds, clips, batches, global_batch, num_workers)``.
    """
    import grain

    from maskjax.data.video.pipeline import make_video_pipeline
    from maskjax.data.video.sources import open_video_source

    kind = _get(config_data, "kind")
    num_frames, rate = int(_get(config_data, "num_frames", 16)), int(_get(config_data, "sampling_rate", 4))
    opts = {"num_frames": num_frames * rate} if kind == "moving_cifar" else {}
    source = open_video_source(kind, path=_get(config_data, "path"), split=_get(config_data, "split"),
                               name=_get(config_data, "name"), data_dir=_get(config_data, "data_dir"), **opts)
    ds = make_video_pipeline(source, global_batch=global_batch, train=True, seed=0, num_frames=num_frames,
                             sampling_rate=rate, image_size=int(_get(config_data, "image_size", 224)),
                             augment=_get(config_data, "augment", "multiscale_crop"), process_index=0,
                             process_count=1, num_workers=num_workers,
                             read_options=grain.ReadOptions(num_threads=4, prefetch_buffer_size=prefetch))
    if warmup_batches is None:
        warmup_batches = -(-prefetch * max(1, num_workers) // global_batch) + 2
    it = iter(ds)
    try:
        for _ in range(warmup_batches):
            next(it)
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        for _ in range(batches):
            batch = next(it)
            assert batch["video"].shape[0] == global_batch
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    finally:
        if hasattr(it, "close"):
            it.close()
    clips = batches * global_batch
    return dict(clips_per_s=clips / seconds, cpu_ms_per_clip=1e3 * cpu / clips, seconds=seconds, clips=clips,
                batches=batches, global_batch=global_batch, num_workers=num_workers)


def clip_read_cost(config_data, *, clips: int = 16, seed: int = 0) -> float:
    """CPU milliseconds to read and decode one training clip's frames (no crop, no normalise).

    Samples ``clips`` clips (VideoMAE's ``_sample_train_indices``) from the first items of the
    train source of ``config_data`` in this thread, after one untimed clip (file opening).
    """
    from maskjax.data.video.sampling import train_clip_indices
    from maskjax.data.video.sources import clip_reader, open_video_source

    kind = _get(config_data, "kind")
    num_frames, rate = int(_get(config_data, "num_frames", 16)), int(_get(config_data, "sampling_rate", 4))
    opts = {"num_frames": num_frames * rate} if kind == "moving_cifar" else {}
    source = open_video_source(kind, path=_get(config_data, "path"), split=_get(config_data, "split"),
                               name=_get(config_data, "name"), data_dir=_get(config_data, "data_dir"), **opts)
    rng = np.random.default_rng(seed)
    total = 0.0
    for k in range(clips + 1):
        start = time.process_time()
        reader = clip_reader(source[k % len(source)])
        reader.read(train_clip_indices(rng, reader.num_frames, num_frames, rate))
        if k:  # the first clip opens files and fills caches
            total += time.process_time() - start
    return 1e3 * total / clips


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children (grain workers).

    On a shared machine wall-clock rates depend on the other load; CPU time per clip does not.
    """
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is optional: this process only
        return time.process_time()
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def make_benchmark_videos(root: str, *, n: int, image_size: int, video_frames: int, fps: float = 30.0) -> str:
    """Writes ``n`` Kinetics-like MP4s under ``root/train/<class>/`` for a benchmark at ``image_size``.

    VideoMAE trains 224-px crops from Kinetics stored with shorter side 320; the videos here have
    side ``320 / 224 x image_size``, ``video_frames`` frames at ``fps`` with a keyframe every 2 s
    (typical of web video), and motion everywhere: two moving CIFAR images over a panning noise
    texture (a camera pan), so neither H.264 nor JPEG gets an unrealistically static frame.
    """
    from maskjax.data.video.decode import write_video
    from maskjax.data.video.moving_cifar import MovingCifarSource
    from maskjax.data.video.transforms import resize_frames

    side = int(round(image_size * 320 / 224 / 2)) * 2  # H.264 needs even sizes
    source = MovingCifarSource(None, "test", video_frames, canvas_size=64, distractor=True)
    texture = np.random.default_rng(0).integers(0, 256, (side // 2, side + video_frames, 3), dtype=np.uint8)
    texture = resize_frames(texture[None], side, 2 * side + 2 * video_frames)[0]
    for i in range(n):
        item = source[i * 37 % len(source)]
        frames = resize_frames(item["frames"], side, side)
        for t in range(video_frames):
            background = frames[t].sum(axis=-1) == 0
            frames[t][background] = texture[:, 2 * t:2 * t + side][background]
        folder = os.path.join(root, "train", source.class_names[item["label"]])
        os.makedirs(folder, exist_ok=True)
        write_video(os.path.join(folder, f"{i:04d}.mp4"), frames, fps=fps, crf=23, gop=int(fps * 2))
    return root


def run_benchmarks(out_dir: str, *, sizes: Sequence[int] = (112, 224), videos: int = 16, video_frames: int = 300,
                   batches: int = 8, global_batch: int = 8, workers: Sequence[int] = (0, 2),
                   reuse: bool = False) -> list[dict]:
    """The comparison of the module docstring; returns one row per (data, size, workers)."""
    from maskjax.data.video.predecode import predecode_videos

    rows = []
    base = dict(num_frames=16, sampling_rate=4, augment="multiscale_crop", split="train")
    cases = [("moving-CIFAR in memory (32 px canvas)", dict(base, kind="moving_cifar", path=None, image_size=32))]
    for size in sizes:
        mp4_root = os.path.join(out_dir, f"mp4_{size}")
        if not (reuse and os.path.isdir(mp4_root)):
            make_benchmark_videos(mp4_root, n=videos, image_size=size, video_frames=video_frames)
        if not (reuse and os.path.isfile(os.path.join(out_dir, f"ar_{size}", "train", "metadata.json"))):
            predecode_videos(mp4_root, os.path.join(out_dir, f"ar_{size}"), split="train", num_shards=2)
        cases.append((f"MP4 decoded by PyAV, {size} px", dict(base, kind="video_folder", path=mp4_root,
                                                              image_size=size)))
        cases.append((f"pre-decoded ArrayRecord (JPEG), {size} px",
                      dict(base, kind="array_record_video", path=os.path.join(out_dir, f"ar_{size}"),
                           image_size=size)))
    for name, data in cases:
        read_ms = clip_read_cost(data)
        for w in workers:
            result = video_pipeline_throughput(data, batches=batches, global_batch=global_batch, num_workers=w)
            rows.append(dict(result, data=name, read_cpu_ms_per_clip=read_ms))
            print(f"{name:45s} workers={w}: {result['clips_per_s']:8.1f} clips/s, "
                  f"{result['cpu_ms_per_clip']:6.1f} CPU ms/clip (read+decode {read_ms:.1f})", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m maskjax.data.video.benchmark [--out DIR] [--videos N] [--batches N]``."""
    p = argparse.ArgumentParser(prog="python -m maskjax.data.video.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="scratch folder for the videos (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="reuse the videos and shards already in --out")
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--video_frames", type=int, default=300, help="frames per MP4 (Kinetics: 10 s at 30 fps)")
    p.add_argument("--batches", type=int, default=8, help="timed batches per case, after the warm-up")
    p.add_argument("--global_batch", type=int, default=8)
    args = p.parse_args(argv)
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        rows = run_benchmarks(out, videos=args.videos, video_frames=args.video_frames, batches=args.batches,
                              global_batch=args.global_batch, reuse=args.reuse)
    print(f"\n{os.cpu_count()} CPUs; 16 frames at stride 4, GroupMultiScaleCrop, batch {args.global_batch}\n")
    print("| data | workers | clips/s (wall) | pipeline CPU ms / clip | read+decode CPU ms / clip |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['num_workers']} | {r['clips_per_s']:.1f} | {r['cpu_ms_per_clip']:.0f} | "
              f"{r['read_cpu_ms_per_clip']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
