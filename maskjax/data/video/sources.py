"""Random-access video sources (grain ``RandomAccessDataSource`` protocol) and a uniform clip reader.

Every source has ``__len__``, ``__getitem__`` and ``class_names``. Items are one of

- ``{"frames": uint8[T, H, W, 3], "label": int}``: decoded frames (TFDS, moving CIFAR);
- ``{"path": str, "label": int}``: a video file, decoded lazily (only the frames a clip needs);
- ``{"clip": RecordClip, "label": int}``: a video pre-decoded into ArrayRecord JPEG frames
  (``maskjax.data.video.predecode``); only the records and JPEGs a clip needs are read/decoded;
- ``{"record": bytes, "label": int}``: one self-contained record holding a whole video.

`clip_reader` hides the difference: the pipeline asks it for the frame count and size, picks
frame indices, then reads exactly those frames.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable

import numpy as np

from maskjax.data.video.decode import VIDEO_EXTENSIONS

VIDEO_KINDS = ("video_folder", "array_record_video", "tfds_video", "moving_cifar")


@dataclasses.dataclass
class ClipReader:
    """Frame count and size of one item, and ``read(indices) -> uint8[T, H, W, 3]``."""

    num_frames: int
    height: int
    width: int
    read: Callable[[np.ndarray], np.ndarray]


def clip_reader(item: dict) -> ClipReader:
    """A `ClipReader` for a source item (module docstring: frames, path or record)."""
    if "frames" in item:
        frames = np.asarray(item["frames"])
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"item frames must be uint8[T, H, W, 3], got {frames.dtype} {frames.shape}")
        return ClipReader(frames.shape[0], frames.shape[1], frames.shape[2], lambda idx: frames[np.asarray(idx)])
    if "path" in item:
        from maskjax.data.video.decode import read_frames, video_info

        path = item["path"]
        info = video_info(path)
        return ClipReader(info.num_frames, info.height, info.width, lambda idx: read_frames(path, idx, info=info))
    if "clip" in item:
        clip = item["clip"]
        return ClipReader(clip.num_frames, clip.height, clip.width, clip.read)
    if "record" in item:
        from maskjax.data.video.clip_records import decode_clip_frames, parse_clip_header

        record = item["record"]
        header = parse_clip_header(record)
        if header.num_frames != header.total_frames:
            raise ValueError(f"record holds frames {header.first_frame}.. of a {header.total_frames}-frame video; "
                             "read chunked videos through ArrayRecordClipSource")
        return ClipReader(header.num_frames, header.height, header.width,
                          lambda idx: decode_clip_frames(record, idx, header))
    raise ValueError(f"a video item needs 'frames', 'path', 'clip' or 'record'; got keys {sorted(item)}")


def _is_video(rel: str) -> bool:
    return not any(p.startswith(".") for p in rel.split("/")) and rel.lower().endswith(VIDEO_EXTENSIONS)


class VideoFolderSource:
    """Video files ``root/<split>/<class>/*.{mp4,avi,webm,mkv}``; items ``{"path", "label"}``.

    Classes are the sorted folder names numbered from 0; items are sorted by (class, path). With
    ``split=None`` the layout is ``root/<class>/*``. Decoding happens in the pipeline (lazily, only
    the frames a clip needs).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = "train"):
        self.root = os.fspath(root)
        self.split = split
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"video folder not found: {self.root}")
        base = pathlib.Path(self.root)
        if split:
            base = base / split
            if not base.is_dir():
                found = sorted(p.name for p in pathlib.Path(self.root).iterdir() if p.is_dir())
                raise ValueError(f"split folder {split!r} not found in {self.root}; top-level folders: "
                                 f"{', '.join(found) or '(none)'}")
        selected = []
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
                dirnames.sort()
                for name in sorted(filenames):
                    rel = pathlib.Path(dirpath, name).relative_to(self.root).as_posix()
                    if _is_video(rel):
                        selected.append((class_dir.name, rel))
        if not selected:
            raise ValueError(f"no videos found in {base}; expected <class>/<file> with one of the extensions "
                             f"{', '.join(VIDEO_EXTENSIONS)}")
        self.class_names = sorted({c for c, _ in selected})
        label_of = {c: i for i, c in enumerate(self.class_names)}
        selected.sort(key=lambda cr: (label_of[cr[0]], cr[1]))
        self._paths = [r for _, r in selected]
        self._labels = np.asarray([label_of[c] for c, _ in selected], np.int32)

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def labels(self) -> np.ndarray:
        """All labels in item order (int32)."""
        return self._labels

    def relative_path(self, index: int) -> str:
        """Path of item ``index`` relative to the root."""
        return self._paths[index]

    def path_of(self, index: int) -> str:
        """Absolute path of item ``index``."""
        return os.path.join(self.root, self._paths[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        return {"path": self.path_of(index), "label": int(self._labels[index])}

    def __repr__(self) -> str:
        return (f"VideoFolderSource(root={self.root!r}, split={self.split!r}, num_videos={len(self)}, "
                f"num_classes={len(self.class_names)})")


class RecordClip:
    """One pre-decoded video inside an ArrayRecord source: reads only the records a clip needs.

    ``read(indices)`` fetches the records holding the requested frames (``frames_per_record``
    consecutive frames each; 0 = one record for the whole video) and decodes just those JPEGs.
    """

    def __init__(self, records, first_record: int, num_frames: int, frames_per_record: int, height: int,
                 width: int):
        self.records = records
        self.first_record, self.num_frames = int(first_record), int(num_frames)
        self.frames_per_record, self.height, self.width = int(frames_per_record), int(height), int(width)

    def read(self, indices) -> np.ndarray:
        """uint8[len(indices), H, W, 3]: the frames ``indices`` (any order, repeats allowed)."""
        from maskjax.data.video.clip_records import decode_clip_frames, parse_clip_header

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= self.num_frames:
            raise IndexError(f"frame indices {idx.tolist()} out of range for a video of {self.num_frames} frames")
        per = self.frames_per_record or self.num_frames
        chunk, position = idx // per, idx % per
        out = np.empty((idx.size, self.height, self.width, 3), np.uint8)
        for c in np.unique(chunk).tolist():
            record = self.records[self.first_record + c]
            header = parse_clip_header(record)
            if header.first_frame != c * per or header.total_frames != self.num_frames:
                raise ValueError(f"record {self.first_record + c} holds frames {header.first_frame}.. of a "
                                 f"{header.total_frames}-frame video; the index expected frame {c * per} of "
                                 f"{self.num_frames} (index.npy does not match the shards)")
            selected = chunk == c
            out[selected] = decode_clip_frames(record, position[selected], header)
        return out


class ArrayRecordClipSource:
    """Videos pre-decoded by `maskjax.data.video.predecode.predecode_videos`; items ``{"clip", "label"}``.

    Args:
      path: the output folder (holding ``metadata.json`` and ``index.npy``), or the metadata file.

    ``len()`` is the number of videos; item ``i`` is a `RecordClip` that reads its frames lazily.
    """

    def __init__(self, path: str | os.PathLike):
        from maskjax.data.video import clip_records

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"pre-decoded video dataset not found: {path}")
        meta_path = path if os.path.isfile(path) else os.path.join(path, clip_records.METADATA_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"no {clip_records.METADATA_FILE} in {path}; expected a folder written by "
                                    "`maskjax predecode-video` (its OUT/<split>)")
        with open(meta_path) as f:
            self.metadata = clip_records.check_metadata(json.load(f), meta_path)
        self.path = os.path.dirname(os.path.abspath(meta_path))
        self.class_names = list(self.metadata["class_names"])
        self.frames_per_record = int(self.metadata.get("frames_per_record", 0))
        shards = [os.path.join(self.path, s) for s in self.metadata["shards"]]
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            raise FileNotFoundError(f"missing ArrayRecord shards in {self.path}: {missing}")
        # allow_pickle=False: the index is a plain int64 array, never executable content.
        self._index = np.load(os.path.join(self.path, self.metadata["index"]), allow_pickle=False)
        if self._index.shape != (self.metadata["num_videos"], 5):
            raise ValueError(f"{self.path}: index shape {self._index.shape} does not match "
                             f"{self.metadata['num_videos']} videos")
        import grain

        self._records = grain.sources.ArrayRecordDataSource(shards)
        if len(self._records) != self.metadata["num_records"]:
            raise ValueError(f"{self.path}: metadata says {self.metadata['num_records']} records but the shards "
                             f"hold {len(self._records)}")

    def __len__(self) -> int:
        return len(self._index)

    @property
    def labels(self) -> np.ndarray:
        """All labels in item order (int32), without reading any record."""
        return self._index[:, 2].astype(np.int32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        first, frames, label, height, width = (int(v) for v in self._index[int(index)])
        return {"clip": RecordClip(self._records, first, frames, self.frames_per_record, height, width),
                "label": label}

    def __repr__(self) -> str:
        return f"ArrayRecordClipSource(path={self.path!r}, num_videos={len(self)})"


class TfdsVideoSource:
    """A prepared TFDS video dataset (e.g. ``ucf101``); items ``{"frames": uint8[T,H,W,3], "label"}``.

    Read through `maskjax.data.sources.open_prepared_tfds` (never downloads).
    """

    def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                 video_key: str = "video", label_key: str = "label"):
        from maskjax.data.sources import open_prepared_tfds

        self.name, self.split = name, split
        self.video_key, self.label_key = video_key, label_key
        self._source = open_prepared_tfds(name, split, os.fspath(data_dir) if data_dir is not None else None)
        self.class_names = None
        info = getattr(self._source, "dataset_info", None)
        if info is not None:
            if video_key not in info.features:
                raise ValueError(f"TFDS dataset {name!r} has no {video_key!r} feature; features: "
                                 f"{sorted(info.features)}")
            feature = info.features[label_key] if label_key in info.features else None
            if feature is not None and hasattr(feature, "names"):
                self.class_names = list(feature.names)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[int(index)]
        frames = np.asarray(record[self.video_key])
        if frames.ndim == 3:  # grayscale video [T, H, W]
            frames = frames[..., None]
        if frames.shape[-1] == 1:
            frames = np.repeat(frames, 3, axis=-1)
        return {"frames": np.ascontiguousarray(frames.astype(np.uint8)), "label": int(record[self.label_key])}

    def __repr__(self) -> str:
        return f"TfdsVideoSource(name={self.name!r}, split={self.split!r}, num_videos={len(self)})"


def _resolve_array_record(path: str, split: str | None) -> str:
    """``path/<split>`` when it holds a pre-decoded split (predecode's layout), else ``path``."""
    if split and os.path.isfile(os.path.join(path, split, "metadata.json")):
        return os.path.join(path, split)
    return path


def open_video_source(kind: str, path: str | os.PathLike | None = None, split: str | None = None,
                      name: str | None = None, data_dir: str | os.PathLike | None = None, **opts):
    """Opens a video source by ``data.kind``.

    - ``"video_folder"``: `VideoFolderSource(path, split)`.
    - ``"array_record_video"``: `ArrayRecordClipSource` of ``path/<split>`` if that is a
      pre-decoded folder, else of ``path``.
    - ``"tfds_video"``: `TfdsVideoSource(name, split, data_dir)`.
    - ``"moving_cifar"``: `MovingCifarSource(path, split, **opts)` (``path``: a CIFAR-10 tar, or a
      folder holding ``<split>.tar[.gz]``; None = the embedded subset).
    """
    if kind == "video_folder":
        if not path:
            raise ValueError("data.kind='video_folder' needs data.path (root of <split>/<class>/<video>)")
        return VideoFolderSource(path, split)
    if kind == "array_record_video":
        if not path:
            raise ValueError("data.kind='array_record_video' needs data.path (a `maskjax predecode-video` output)")
        return ArrayRecordClipSource(_resolve_array_record(os.fspath(path), split))
    if kind == "tfds_video":
        if not name or not split:
            raise ValueError("data.kind='tfds_video' needs data.name (a TFDS dataset) and a split")
        return TfdsVideoSource(name, split, data_dir, **opts)
    if kind == "moving_cifar":
        from maskjax.data.video.moving_cifar import MovingCifarSource

        return MovingCifarSource(path, split or "train", **opts)
    raise ValueError(f"unknown video data.kind {kind!r}; expected one of {', '.join(VIDEO_KINDS)}")
