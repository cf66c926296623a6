"""Decode a video folder ONCE into ArrayRecord shards of JPEG frames, so training is not decode-bound.

Decoding H.264 for every clip of every epoch keeps a GPU waiting; JPEG frames decode several
times faster, and only the 16 frames a clip needs are decoded. A video is stored as consecutive
records of up to ``frames_per_record`` frames (default 16; 0 = the whole video in one record).
Chunks, because ArrayRecord reads a large record slowly: on the development machine one 13 MB
record (a 10 s, 320p video) cost ~45 ms of CPU to read, more than decoding the 16 JPEGs, while
16-frame records bring the bytes a clip needs in ~1-2 ms. Each record is a small self-describing
binary layout (little-endian; no pickle, so reading untrusted shards cannot execute code)::

    offset  size   field
    0       4      magic b"MJVC"
    4       2      uint16 format version (1)
    6       2      uint16 flags (0)
    8       4      int32 label
    12      8      float64 frames per second (0 when unknown)
    20      4      uint32 video index (position of the video in the dataset)
    24      4      uint32 first frame: the video frame number of this record's first frame
    28      4      uint32 total frames of the video
    32      4      uint32 T, the number of frames in this record
    36      4      uint32 frame height
    40      4      uint32 frame width
    44      4      uint32 N, the byte length of the name
    48      4*T    uint32 byte length of each JPEG frame
    48+4T   N      the video's path relative to the source root, UTF-8
    ...            the T JPEG frames, concatenated in frame order

Beside the shards, ``metadata.json`` records the format, class names, counts, shard names, frame
size, JPEG quality and ``frames_per_record``; ``index.npy`` (int64 [videos, 5]: first record,
frames, label, height, width; read with ``allow_pickle=False``) maps a video to its records.
Records keep the source order (sorted by class, then path), a video's records are contiguous
and in one shard, written with ``group_size:1`` so a random read touches one record. With
``split`` the output goes to ``<out>/<split>/``; point ``data.path`` at that folder
(``data.kind = "array_record_video"``).

CLI: ``maskjax predecode-video --src DIR --out DIR [--split train] [--frame_size 320]``.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from typing import Any, Sequence

import numpy as np

# The record format is shared with the readers in sources; re-exported here, where it was first defined.
from maskjax.data.video.clip_records import (  # noqa: F401
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    MAGIC,
    METADATA_FILE,
    ClipHeader,
    check_metadata,
    decode_clip_frames,
    decode_jpeg,
    encode_clip_record,
    encode_jpeg,
    parse_clip_header,
)
from maskjax.progress import progress


def _resize_short_side(frames: np.ndarray, frame_size: int) -> np.ndarray:
    from maskjax.data.video.sampling import resized_size
    from maskjax.data.video.transforms import resize_frames

    if frame_size <= 0 or min(frames.shape[1:3]) == frame_size:
        return frames
    new_h, new_w = resized_size(frames.shape[1], frames.shape[2], frame_size)
    return resize_frames(frames, new_h, new_w)


def video_to_records(path: str, label: int, name: str, video_index: int, frame_size: int = 0, quality: int = 90,
                     frames_per_record: int = 16) -> list[bytes]:
    """Decodes the whole video once and returns its records (shorter side -> ``frame_size``)."""
    from maskjax.data.video.decode import read_all_frames

    frames, fps = read_all_frames(path)
    frames = _resize_short_side(frames, frame_size)
    jpegs = [encode_jpeg(f, quality) for f in frames]
    step = frames_per_record if frames_per_record > 0 else len(jpegs)
    return [encode_clip_record(label, fps, jpegs[s:s + step], frames.shape[1], frames.shape[2],
                               video_index=video_index, first_frame=s, total_frames=len(jpegs), name=name)
            for s in range(0, len(jpegs), step)]


def _encode_task(task: tuple) -> tuple[list[bytes] | None, str | None]:
    """Worker entry (top level for multiprocessing): ``(records, None)`` or ``(None, error)``."""
    path, label, name, frame_size, quality, frames_per_record, skip_errors = task
    from maskjax.data.video.decode import VideoDecodeError

    try:
        return video_to_records(path, label, name, 0, frame_size, quality, frames_per_record), None
    except VideoDecodeError as e:
        if not skip_errors:
            raise
        return None, str(e)


def _shard_name(i: int, n: int) -> str:
    return f"clips-{i:05d}-of-{n:05d}.array_record"


def _with_video_index(record: bytes, video_index: int) -> bytes:
    """The record with its header's video index set (known only once earlier videos are written)."""
    return record[:20] + struct.pack("<I", video_index) + record[24:]


def predecode_videos(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, split: str | None = "train",
                     frame_size: int = 0, num_shards: int = 8, quality: int = 90, frames_per_record: int = 16,
                     num_workers: int = 0, skip_errors: bool = False) -> dict[str, Any]:
    """Decodes every video of ``src_root[/split]/<class>/*`` once into ArrayRecord shards.

    Args:
      src_root: a `VideoFolderSource` root (``<split>/<class>/<video>``).
      out_dir: output root; the shards, ``index.npy`` and ``metadata.json`` go to
        ``out_dir/<split>`` (or ``out_dir`` itself when ``split`` is None).
      split: the top-level folder of ``src_root`` to convert (None: ``src_root/<class>/*``).
      frame_size: resize the shorter side to this many pixels (0 = keep the decoded size);
        VideoMAE's Kinetics copy has shorter side 320.
      num_shards: shard files (capped at the number of videos).
      quality: JPEG quality of the stored frames.
      frames_per_record: frames per record (0 = a whole video per record; slow to read for
        long videos, see the module docstring).
      num_workers: decoding processes (0 = in this process).
      skip_errors: skip unreadable videos (listed in the metadata) instead of failing.

    Returns:
      The metadata written to ``metadata.json`` (written last, so a crash leaves none).
    """
    from array_record.python import array_record_module

    from maskjax.data.video.sources import VideoFolderSource

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    if frame_size < 0:
        raise ValueError(f"frame_size must be >= 0 (0 keeps the size), got {frame_size}")
    if frames_per_record < 0:
        raise ValueError(f"frames_per_record must be >= 0 (0 = whole videos), got {frames_per_record}")
    source = VideoFolderSource(src_root, split)
    n = len(source)
    num_shards = min(num_shards, n)
    out = os.path.join(os.fspath(out_dir), split) if split else os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    meta_path = os.path.join(out, METADATA_FILE)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # a failed run must not leave old metadata describing new shards
    tasks = [(source.path_of(i), int(source.labels[i]), source.relative_path(i), frame_size, quality,
              frames_per_record, skip_errors) for i in range(n)]
    pool = None
    if num_workers > 0:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(num_workers)
        results = pool.imap(_encode_task, tasks, chunksize=1)  # ordered: shards keep the source order
    else:
        results = map(_encode_task, tasks)
    shards = [_shard_name(i, num_shards) for i in range(num_shards)]
    counts, index, skipped = [], [], []
    num_records = 0
    bar = progress(total=n, desc="predecode", unit="video")
    try:
        for s, shard in enumerate(shards):
            start, stop = s * n // num_shards, (s + 1) * n // num_shards
            bar.set_postfix_str(f"shard {s + 1}/{num_shards}" + (f", {len(skipped)} skipped" if skipped else ""))
            writer = array_record_module.ArrayRecordWriter(os.path.join(out, shard), "group_size:1")
            written = 0
            try:
                for i in range(start, stop):
                    records, error = next(results)
                    bar.update(1)  # a video is seconds of decoding: a bar update per video costs nothing
                    if records is None:
                        skipped.append({"path": tasks[i][2], "error": error})
                        continue
                    header = parse_clip_header(records[0])
                    index.append((num_records + written, header.total_frames, header.label, header.height,
                                  header.width))
                    for record in records:
                        writer.write(_with_video_index(record, len(index) - 1))
                    written += len(records)
            finally:
                writer.close()
            counts.append(written)
            num_records += written
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    if not index:
        raise ValueError(f"no video of {src_root} (split {split!r}) could be decoded")
    np.save(os.path.join(out, INDEX_FILE), np.asarray(index, np.int64), allow_pickle=False)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "record_layout": "see maskjax/data/video/predecode.py (MJVC header, frame table, name, JPEG frames)",
        "class_names": list(source.class_names),
        "num_videos": len(index),
        "num_records": num_records,
        "frames_per_record": frames_per_record,
        "shards": shards,
        "shard_num_records": counts,
        "index": INDEX_FILE,
        "index_columns": ["first_record", "num_frames", "label", "height", "width"],
        "frame_size": frame_size,
        "jpeg_quality": quality,
        "source": os.path.abspath(os.fspath(src_root)),
        "split": split,
        "skipped": skipped,
    }
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    os.replace(tmp, meta_path)
    return meta


def build_parser(prog: str = "maskjax predecode-video") -> argparse.ArgumentParser:
    """The argument parser of ``predecode-video``."""
    p = argparse.ArgumentParser(prog=prog, description="Decode the videos of SRC/<split>/<class>/* once into "
                                "ArrayRecord shards of JPEG frames (data.kind='array_record_video').")
    p.add_argument("--src", required=True, help="video folder root: <split>/<class>/<video>.{mp4,avi,webm,mkv}")
    p.add_argument("--out", required=True, help="output root; shards go to OUT/<split>/")
    p.add_argument("--split", default="train", help="top-level folder to convert (default train); '' for none")
    p.add_argument("--frame_size", type=int, default=0,
                   help="resize the shorter side to this many pixels (0 = keep; VideoMAE's K400 uses 320)")
    p.add_argument("--shards", type=int, default=8, help="number of shard files (default 8)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--frames_per_record", type=int, default=16,
                   help="frames per ArrayRecord record (default 16; 0 = one record per video)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default 0 = this process)")
    p.add_argument("--skip_errors", action="store_true", help="skip unreadable videos instead of failing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    from maskjax.data.video.decode import VideoDecodeError

    try:
        meta = predecode_videos(args.src, args.out, split=args.split or None, frame_size=args.frame_size,
                                num_shards=args.shards, quality=args.quality,
                                frames_per_record=args.frames_per_record, num_workers=args.workers,
                                skip_errors=args.skip_errors)
    except (FileNotFoundError, ValueError, VideoDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = os.path.join(args.out, args.split) if args.split else args.out
    skipped = f" ({len(meta['skipped'])} skipped)" if meta["skipped"] else ""
    print(f"wrote {meta['num_videos']} videos of {len(meta['class_names'])} classes into "
          f"{len(meta['shards'])} shards in {where}{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
