"""The pre-decoded clip format that ``maskjax predecode-video`` writes and
``sources.ArrayRecordClipSource`` reads: record layout, JPEG frames and ``metadata.json`` checks.

The layout is documented in :mod:`maskjax.data.video.predecode`. Its own module so that the
writer (predecode, which reads its input through :mod:`maskjax.data.video.sources`) and the
readers in ``sources`` share it without importing each other (no import cycles in maskjax:
pyproject.toml, ``[tool.importlinter]``).
"""
from __future__ import annotations

import dataclasses
import io
import struct
from typing import Any, Sequence

import numpy as np

FORMAT_NAME = "maskjax.video_clips"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
INDEX_FILE = "index.npy"
MAGIC = b"MJVC"
_HEADER = struct.Struct("<4sHHidIIIIIII")


@dataclasses.dataclass(frozen=True)
class ClipHeader:
    """The parsed fixed part of a record; ``offsets[i]:offsets[i+1]`` is its i-th JPEG frame."""

    label: int
    fps: float
    video_index: int
    first_frame: int
    total_frames: int
    num_frames: int
    height: int
    width: int
    name: str
    offsets: np.ndarray  # int64[T + 1], absolute byte offsets into the record


def encode_clip_record(label: int, fps: float, jpegs: Sequence[bytes], height: int, width: int, *,
                       video_index: int = 0, first_frame: int = 0, total_frames: int | None = None,
                       name: str = "") -> bytes:
    """Packs frames ``first_frame ..`` of one video (JPEG bytes and facts) into a record."""
    if not jpegs:
        raise ValueError("a clip record needs at least one frame")
    total = len(jpegs) if total_frames is None else int(total_frames)
    if first_frame < 0 or first_frame + len(jpegs) > total:
        raise ValueError(f"frames {first_frame}..{first_frame + len(jpegs) - 1} exceed the video's {total} frames")
    name_bytes = name.encode("utf-8")
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, int(label), float(fps), int(video_index), int(first_frame),
                          total, len(jpegs), int(height), int(width), len(name_bytes))
    lengths = np.asarray([len(j) for j in jpegs], dtype="<u4").tobytes()
    return b"".join([header, lengths, name_bytes, *jpegs])


def parse_clip_header(record: bytes) -> ClipHeader:
    """Reads the header and frame table of a record (no JPEG is decoded)."""
    if len(record) < _HEADER.size:
        raise ValueError(f"corrupt clip record: {len(record)} bytes is shorter than the header")
    magic, version, _, label, fps, video, first, total, t, height, width, name_len = _HEADER.unpack_from(record, 0)
    if magic != MAGIC:
        raise ValueError(f"not a maskjax clip record (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise ValueError(f"clip record version {version} is not supported (this maskjax reads {FORMAT_VERSION})")
    table_end = _HEADER.size + 4 * t
    if table_end > len(record):
        raise ValueError(f"corrupt clip record: the frame table of {t} frames exceeds its {len(record)} bytes")
    lengths = np.frombuffer(record, dtype="<u4", count=t, offset=_HEADER.size).astype(np.int64)
    data_start = table_end + name_len
    offsets = data_start + np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] != len(record):
        raise ValueError(f"corrupt clip record: the frame table covers {offsets[-1]} bytes, the record has "
                         f"{len(record)}")
    name = bytes(record[table_end:data_start]).decode("utf-8")
    return ClipHeader(label=label, fps=fps, video_index=video, first_frame=first, total_frames=total, num_frames=t,
                      height=height, width=width, name=name, offsets=offsets)


def decode_jpeg(data: bytes) -> np.ndarray:
    """One JPEG frame -> uint8[H, W, 3] RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_clip_frames(record: bytes, indices: Sequence[int], header: ClipHeader | None = None) -> np.ndarray:
    """Frames ``indices`` (positions within this record) as uint8[T, H, W, 3]; each decoded once."""
    header = header or parse_clip_header(record)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= header.num_frames:
        raise IndexError(f"frame indices {idx.tolist()} out of range for a clip of {header.num_frames} frames")
    view = memoryview(record)
    decoded = {}
    for i in np.unique(idx).tolist():
        decoded[i] = decode_jpeg(view[header.offsets[i]:header.offsets[i + 1]])
    return np.stack([decoded[i] for i in idx.tolist()])


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """uint8[H, W, 3] -> JPEG bytes at ``quality``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def check_metadata(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """Validates a pre-decoded ``metadata.json`` dict (format name and version, required keys)."""
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{where}: not a maskjax pre-decoded video dataset (format={meta.get('format')!r}); "
                         "write one with `maskjax predecode-video`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {meta.get('format_version')!r} is not supported "
                         f"(this maskjax reads version {FORMAT_VERSION})")
    for key in ("class_names", "num_videos", "num_records", "shards", "index"):
        if key not in meta:
            raise ValueError(f"{where}: metadata lacks {key!r}")
    return meta
