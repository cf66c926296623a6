"""Video decoding with PyAV (FFmpeg): frame counts, random frame reads, and a small MP4 writer.

Frames are numbered 0..n-1 in presentation order, as decord (used by the official VideoMAE
loaders) numbers them. `read_frames` decodes only up to the last requested frame and, when the
first requested frame is far into the video, seeks to the keyframe before it instead of decoding
from the start; the frame number of a decoded frame after a seek is derived from its timestamp
(exact for constant-frame-rate video, the common case; the reader falls back to a sequential
decode when timestamps are missing or the seek overshoots).
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv")
# Seek only when the first wanted frame is at least this far in: closer than a typical GOP the
# decode from the start costs about as much as the seek would save.
SEEK_MIN_FRAMES = 48


class VideoDecodeError(ValueError):
    """A video file that cannot be opened or decoded (names the file and the reason)."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """Facts about a video's first video stream."""

    num_frames: int
    fps: float
    width: int
    height: int


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a dependency of the video extras
        raise ImportError("video decoding needs PyAV: pip install av") from e
    return av


# Process-local cache of frame counts: counting by decoding (containers that do not store the
# count) is as slow as decoding the video, and a training run asks for every video many times.
_INFO_CACHE: "OrderedDict[tuple, VideoInfo]" = OrderedDict()
_INFO_CACHE_SIZE = 100_000
_INFO_LOCK = threading.Lock()


def _cache_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def _open(path: str):
    av = _av()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file not found: {path}")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoDecodeError(f"cannot open video {path}: {type(e).__name__}: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path} has no video stream")
    return container, container.streams.video[0]


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _to_rgb(frame) -> np.ndarray:
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))


def _decode_all(container, stream, path: str):
    """Yields every decoded frame of ``stream`` (clear error on a corrupt file)."""
    av = _av()
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as e:
        raise VideoDecodeError(f"cannot decode video {path}: {type(e).__name__}: {e}") from e


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame count, frame rate and size of the first video stream of ``path``.

    The count comes from the container when it stores one (MP4 does) and otherwise by decoding
    the whole stream (WebM/MKV); results are cached per process (keyed on path, size and mtime).
    Raises `VideoDecodeError` for a missing or unreadable file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file not found: {path}")
    key = _cache_key(path)
    with _INFO_LOCK:
        if key in _INFO_CACHE:
            _INFO_CACHE.move_to_end(key)
            return _INFO_CACHE[key]
    container, stream = _open(path)
    try:
        n = int(stream.frames or 0)
        width, height = stream.codec_context.width, stream.codec_context.height
        if n <= 0:
            n = sum(1 for _ in _decode_all(container, stream, path))
        if n <= 0:
            raise VideoDecodeError(f"{path} has no decodable video frames")
        info = VideoInfo(num_frames=n, fps=_fps(stream), width=int(width), height=int(height))
    finally:
        container.close()
    with _INFO_LOCK:
        _INFO_CACHE[key] = info
        if len(_INFO_CACHE) > _INFO_CACHE_SIZE:
            _INFO_CACHE.popitem(last=False)
    return info


def _frame_index(frame, stream, fps: float) -> int | None:
    """Frame number of a decoded frame from its timestamp (None when it has none)."""
    if frame.pts is None or not fps or stream.time_base is None:
        return None
    start = stream.start_time or 0
    return int(round(float((frame.pts - start) * stream.time_base) * fps))


def read_frames(path: str | os.PathLike, indices: Sequence[int], *, info: VideoInfo | None = None,
                seek_min_frames: int = SEEK_MIN_FRAMES) -> np.ndarray:
    """Decodes the frames ``indices`` (any order, repeats allowed) of ``path`` as uint8[T, H, W, 3].

    Decoding stops at the last requested frame. If the first requested frame is at least
    ``seek_min_frames`` in, the reader seeks to the keyframe before it. Indices must be in
    ``[0, num_frames)``; when the container's frame count overstates the decodable frames, the
    missing tail frames repeat the last decoded one (decord would fail on such files).
    """
    path = os.fspath(path)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("read_frames needs at least one frame index")
    info = info or video_info(path)
    if idx.min() < 0 or idx.max() >= info.num_frames:
        raise IndexError(f"frame indices {idx.min()}..{idx.max()} out of range for {path} "
                         f"({info.num_frames} frames)")
    wanted = np.unique(idx)
    frames = _read_sorted(path, wanted, info, seek_min_frames)
    position = {int(w): k for k, w in enumerate(wanted)}
    return np.stack([frames[position[int(i)]] for i in idx])


def _read_sorted(path: str, wanted: np.ndarray, info: VideoInfo, seek_min_frames: int) -> list[np.ndarray]:
    first, last = int(wanted[0]), int(wanted[-1])
    container, stream = _open(path)
    try:
        if first >= seek_min_frames and info.fps > 0:
            out = _read_after_seek(container, stream, wanted, info.fps, path)
            if out is not None:
                return out
            container.seek(0)  # the seek was unusable: decode from the start instead
        out: list[np.ndarray] = []
        want = iter(wanted.tolist())
        target = next(want)
        last_frame = None
        for n, frame in enumerate(_decode_all(container, stream, path)):
            last_frame = frame
            while target == n:
                out.append(_to_rgb(frame))
                target = next(want, None)
            if target is None or n >= last:
                break
        if last_frame is None:
            raise VideoDecodeError(f"{path} has no decodable video frames")
        while len(out) < len(wanted):  # container count > decodable frames: repeat the last one
            out.append(_to_rgb(last_frame))
        return out
    finally:
        container.close()


def _read_after_seek(container, stream, wanted: np.ndarray, fps: float, path: str) -> list[np.ndarray] | None:
    """Frames ``wanted`` read after seeking near the first one; None if the seek cannot be trusted."""
    first = int(wanted[0])
    start = stream.start_time or 0
    target_pts = start + int(first / fps / stream.time_base)
    try:
        container.seek(target_pts, stream=stream, backward=True, any_frame=False)
    except _av().error.FFmpegError:
        return None
    out: list[np.ndarray] = []
    k = 0
    last_frame = None
    for frame in _decode_all(container, stream, path):
        n = _frame_index(frame, stream, fps)
        if n is None or (last_frame is None and n > first):
            return None  # no timestamps, or landed past the first wanted frame
        last_frame = frame
        while k < len(wanted) and wanted[k] <= n:
            if wanted[k] < n:
                return None  # a gap in the timestamps: the mapping is not trustworthy
            out.append(_to_rgb(frame))
            k += 1
        if k == len(wanted):
            return out
    if last_frame is None:
        return None
    while len(out) < len(wanted):
        out.append(_to_rgb(last_frame))
    return out


def read_all_frames(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Every frame of ``path`` as uint8[T, H, W, 3], and the frame rate (one sequential decode)."""
    path = os.fspath(path)
    container, stream = _open(path)
    try:
        fps = _fps(stream)
        frames = [_to_rgb(f) for f in _decode_all(container, stream, path)]
    finally:
        container.close()
    if not frames:
        raise VideoDecodeError(f"{path} has no decodable video frames")
    return np.stack(frames), fps


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0, *, codec: str = "libx264",
                crf: int = 12, gop: int = 12) -> None:
    """Encodes uint8[T, H, W, 3] frames into a video file (H.264 in MP4 by default).

    ``crf`` sets the quality (lower is better; 12 is close to visually lossless), ``gop`` the
    keyframe interval. H.264 with yuv420p needs even frame sizes.
    """
    av = _av()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video expects uint8[T, H, W, 3] frames, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if codec in ("libx264", "h264") and (height % 2 or width % 2):
        raise ValueError(f"H.264 needs even frame sizes, got {height}x{width}")
    from fractions import Fraction

    container = av.open(os.fspath(path), mode="w")
    try:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "g": str(gop)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
