"""Random-access audio sources: WAV files from folders / tars, the FSDD archive, prepared TFDS.

Every source has ``__len__``, ``__getitem__``, ``class_names`` and ``labels`` and yields
``{"waveform": f32[n] mono in [-1, 1), "sample_rate": int, "label": int}``. Sources are
picklable for grain's worker processes: open file descriptors are dropped on pickling and
re-opened lazily in each process; tar archives are indexed once (member data offsets) and read
with ``os.pread``, never extracted.
"""

from __future__ import annotations

import io
import os
import re
import struct
import tarfile
import threading
import wave
from typing import Any

import numpy as np

AUDIO_KINDS = ("fsdd", "wav_folder", "tfds_audio")
FSDD_SPLITS = ("train", "test", "all")
# FSDD's official split: recordings with index 0-4 are the test set, 5-49 the training set.
FSDD_TEST_MAX_INDEX = 4
_FSDD_NAME = re.compile(r"(?:^|/)(\d)_([A-Za-z]+)_(\d+)\.wav$")

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def _pcm_to_float(raw: bytes, sampwidth: int, channels: int, where: str) -> np.ndarray:
    """Interleaved little-endian PCM -> float32 ``[frames, channels]`` scaled like torchaudio.load.

    Signed n-bit integers are divided by 2**(n-1) (so the range is [-1, 1)); 8-bit WAV is
    unsigned with its zero at 128.
    """
    if sampwidth == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif sampwidth == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif sampwidth == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)  # sign-extend 24 -> 32 bits
        x = v.astype(np.float32) / float(1 << 23)
    elif sampwidth == 4:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    else:
        raise ValueError(f"{where}: unsupported PCM sample width {sampwidth * 8} bits (8/16/24/32 are read)")
    usable = x.size - x.size % channels  # a truncated last frame is dropped, as `wave` does
    return x[:usable].reshape(-1, channels)


def _riff_chunks(data: bytes, where: str):
    """Yields ``(chunk_id, payload)`` of a RIFF/WAVE file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{where}: not a RIFF/WAVE file")
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        yield cid, data[pos + 8:pos + 8 + size]
        pos += 8 + size + (size & 1)  # chunks are word-aligned


def _read_wav_riff(data: bytes, where: str) -> tuple[np.ndarray, int]:
    """Fallback for what Python 3.11's ``wave`` rejects: WAVE_FORMAT_EXTENSIBLE and IEEE float."""
    fmt = samples = None
    for cid, payload in _riff_chunks(data, where):
        if cid == b"fmt ":
            fmt = payload
        elif cid == b"data":
            samples = payload
    if fmt is None or samples is None:
        raise ValueError(f"{where}: WAV file without a fmt or data chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the first two bytes of the SubFormat GUID
    if tag == _PCM and bits % 8 == 0:
        return _pcm_to_float(samples, bits // 8, channels, where), rate
    if tag == _FLOAT and bits in (32, 64):
        x = np.frombuffer(samples[: len(samples) - len(samples) % (bits // 8)], f"<f{bits // 8}")
        x = x[: x.size - x.size % channels].astype(np.float32)
        return x.reshape(-1, channels), rate
    raise ValueError(f"{where}: unsupported WAV encoding (format tag {tag}, {bits} bits); "
                     "convert it to PCM or float WAV first")


def read_wav(data: bytes | str | os.PathLike, where: str | None = None) -> tuple[np.ndarray, int]:
    """Decodes a WAV file (path or bytes) to ``(f32[n] mono in [-1, 1), sample_rate)``.

    PCM 8/16/24/32-bit through the stdlib ``wave`` module (IEEE float and extensible headers by
    a small RIFF fallback); several channels are averaged to mono.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        where = where or os.fspath(data)
        with open(data, "rb") as f:
            data = f.read()
    where = where or "<wav bytes>"
    data = bytes(data)
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, sampwidth, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
        x = _pcm_to_float(raw, sampwidth, channels, where)
    except (wave.Error, EOFError) as e:
        if "unknown format" not in str(e):
            raise ValueError(f"{where}: cannot read WAV ({e})") from e
        x, rate = _read_wav_riff(data, where)
    mono = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float64).astype(np.float32)
    return np.ascontiguousarray(mono, np.float32), int(rate)


class _FileStore:
    """Reads files by relative path from a directory or a plain (uncompressed) tar archive.

    A tar is indexed once (member data offset and size) and read with ``os.pread`` on one
    descriptor per process: thread-safe, no extraction, and the index pickles compactly.
    """

    def __init__(self, path: str):
        self.path = path
        self.is_dir = os.path.isdir(path)
        self._offsets: dict[str, tuple[int, int]] = {}
        if not self.is_dir:
            if not tarfile.is_tarfile(path):
                raise ValueError(f"{path} is neither a directory nor a tar archive")
            try:
                # "r:" refuses compressed archives: their members cannot be read at an offset.
                with tarfile.open(path, mode="r:") as tar:
                    for member in tar:
                        if member.isfile():
                            self._offsets[member.name.removeprefix("./")] = (member.offset_data, member.size)
            except tarfile.ReadError as e:
                raise ValueError(f"{path}: only uncompressed tar archives are read in place ({e}); "
                                 "decompress it or extract it to a directory") from e
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._lock = threading.Lock()

    def list(self, start: str = "") -> list[str]:
        """Sorted relative posix paths of the files under ``start`` (a relative folder)."""
        if not self.is_dir:
            prefix = start.strip("/") + "/" if start.strip("/") else ""
            return sorted(p for p in self._offsets if p.startswith(prefix))
        out = []
        top = os.path.join(self.path, start)
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.path).replace(os.sep, "/")
            out += [name if rel == "." else f"{rel}/{name}" for name in filenames]
        return sorted(out)

    def read(self, rel: str) -> bytes:
        """The bytes of file ``rel``."""
        if self.is_dir:
            with open(os.path.join(self.path, rel), "rb") as f:
                return f.read()
        offset, size = self._offsets[rel]
        pid = os.getpid()
        if self._fd is None or self._fd_pid != pid:  # reopen after fork / unpickling
            with self._lock:
                if self._fd is None or self._fd_pid != pid:
                    self._fd, self._fd_pid = os.open(self.path, os.O_RDONLY), pid
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise IOError(f"short read of {rel} from {self.path}")
        return data

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_fd_pid": None, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self):
        try:
            if self._fd is not None and self._fd_pid == os.getpid():
                os.close(self._fd)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class _WavListSource:
    """Shared item access of the file-based sources (``_store``, ``_paths``, ``_labels``)."""

    _store: _FileStore
    _paths: list[str]
    _labels: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def labels(self) -> np.ndarray:
        """All labels in item order (int32), without reading audio."""
        return np.asarray(self._labels, np.int32)

    def relative_path(self, index: int) -> str:
        """Path of item ``index`` inside the folder or archive."""
        return self._paths[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} recordings")
        rel = self._paths[index]
        waveform, rate = read_wav(self._store.read(rel), where=f"{self._store.path}:{rel}")
        return {"waveform": waveform, "sample_rate": rate, "label": self._labels[index]}


class FsddSource(_WavListSource):
    """The Free Spoken Digit Dataset: ``recordings/{digit}_{speaker}_{index}.wav`` at 8 kHz.

    Args:
      path: ``recordings.tar`` (read in place), or a directory holding the WAVs (directly or
        under ``recordings/``).
      split: ``"train"`` (index 5-49, 2,700 clips), ``"test"`` (index 0-4, 300 clips; the
        official split) or ``"all"``.

    Labels are the digits 0-9; items are ordered by (digit, speaker, index).
    """

    def __init__(self, path: str | os.PathLike, split: str = "train"):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"FSDD not found at {path!r}; expected recordings.tar or its directory")
        if split not in FSDD_SPLITS:
            raise ValueError(f"unknown FSDD split {split!r}; expected one of {FSDD_SPLITS}")
        self.path, self.split = path, split
        self._store = _FileStore(path)
        items = []
        for rel in self._store.list():
            m = _FSDD_NAME.search(rel)
            if m is None or any(p.startswith(".") for p in rel.split("/")):
                continue
            digit, speaker, index = int(m.group(1)), m.group(2), int(m.group(3))
            is_test = index <= FSDD_TEST_MAX_INDEX
            if split == "all" or (split == "test") == is_test:
                items.append((digit, speaker, index, rel))
        if not items:
            raise ValueError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) for split {split!r} in {path}")
        items.sort()
        self._paths = [rel for *_, rel in items]
        self._labels = [digit for digit, *_ in items]
        self.speakers = [speaker for _, speaker, _, _ in items]
        self.class_names = [str(d) for d in range(10)]

    def __repr__(self) -> str:
        return f"FsddSource(path={self.path!r}, split={self.split!r}, num_recordings={len(self)})"


class WavFolderSource(_WavListSource):
    """WAV files in an ImageFolder-like layout: ``root/<split>/<class>/*.wav``.

    Args:
      root: a directory or a plain ``.tar`` with that layout.
      split: the top-level folder to read (None: ``root/<class>/*.wav``).

    Classes are the sub-folder names, sorted and numbered from 0. WAVs lying directly in the
    split folder take their class from the file-name prefix before the first ``_`` (the FSDD
    naming, ``<class>_<rest>.wav``).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        root = os.fspath(root)
        if not os.path.exists(root):
            raise FileNotFoundError(f"WAV folder not found: {root!r}")
        self.path, self.split = root, split
        self._store = _FileStore(root)
        start = (split or "").strip("/")
        if start and self._store.is_dir and not os.path.isdir(os.path.join(root, start)):
            raise ValueError(f"split folder {split!r} not found in {root}; top-level folders: "
                             f"{sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))}")
        pairs = []
        for rel in self._store.list(start):
            inner = rel[len(start) + 1:] if start else rel
            parts = inner.split("/")
            if not rel.lower().endswith(".wav") or any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            if len(parts) >= 2:
                pairs.append((parts[-2], rel))
            elif "_" in parts[0]:
                pairs.append((parts[0].split("_", 1)[0], rel))
        if not pairs:
            raise ValueError(f"no WAV files found in {root} (split {split!r}); expected "
                             "<split>/<class>/<file>.wav or <split>/<class>_<rest>.wav")
        self.class_names = sorted({c for c, _ in pairs})
        label_of = {c: i for i, c in enumerate(self.class_names)}
        pairs.sort(key=lambda cr: (label_of[cr[0]], cr[1]))
        self._paths = [rel for _, rel in pairs]
        self._labels = [label_of[c] for c, _ in pairs]

    def __repr__(self) -> str:
        return (f"WavFolderSource(path={self.path!r}, split={self.split!r}, num_files={len(self)}, "
                f"num_classes={len(self.class_names)})")


class TfdsAudioSource:
    """A TFDS audio dataset prepared as ArrayRecord (e.g. ``spoken_digit``); never downloads.

    Args:
      name: TFDS name (optionally ``name:version``).
      split: TFDS split string.
      data_dir: TFDS data directory.
      audio_key, label_key: the feature names (``spoken_digit``: ``audio``, ``label``).

    TFDS's ``Audio`` feature stores integer PCM (int16 values, usually in an int64 array) or
    floats; integers are divided by 32768 like 16-bit WAV, floats pass through. The sample
    rate comes from the feature's ``sample_rate``. TFDS 4.9 builds its ``Audio`` feature with
    TensorFlow, so reading such a dataset needs ``tensorflow`` (CPU build) installed.
    """

    def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                 audio_key: str = "audio", label_key: str = "label"):
        from maskjax.data.sources import open_prepared_tfds

        self.name, self.split, self.audio_key, self.label_key = name, split, audio_key, label_key
        self._source = open_prepared_tfds(name, split, os.fspath(data_dir) if data_dir is not None else None)
        info = getattr(self._source, "dataset_info", None)
        features = info.features if info is not None else {}
        if audio_key not in features or label_key not in features:
            raise ValueError(f"TFDS dataset {name!r} has features {sorted(features)}; expected an audio "
                             f"feature {audio_key!r} and a label {label_key!r}")
        self.sample_rate = getattr(features[audio_key], "sample_rate", None)
        if not self.sample_rate:
            raise ValueError(f"TFDS feature {name}/{audio_key} has no sample_rate")
        label = features[label_key]
        self.class_names = list(label.names) if hasattr(label, "names") else None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[int(index)]
        audio = np.asarray(record[self.audio_key])
        if np.issubdtype(audio.dtype, np.integer):
            audio = audio.astype(np.float32) / 32768.0
        audio = audio.astype(np.float32)
        if audio.ndim == 2:  # [n, channels]
            audio = audio.mean(axis=1)
        return {"waveform": audio, "sample_rate": int(self.sample_rate), "label": int(record[self.label_key])}

    def __repr__(self) -> str:
        return f"TfdsAudioSource(name={self.name!r}, split={self.split!r}, num_examples={len(self)})"


def open_audio_source(kind: str, path: str | os.PathLike | None = None, split: str | None = None,
                      name: str | None = None, data_dir: str | os.PathLike | None = None):
    """Opens an audio source by ``data.kind``: ``fsdd``, ``wav_folder`` or ``tfds_audio``."""
    if kind in ("fsdd", "wav_folder"):
        if not path:
            raise ValueError(f"data.kind={kind!r} needs data.path")
        if not os.path.exists(path):
            raise FileNotFoundError(f"data.path {os.fspath(path)!r} does not exist (data.kind={kind!r})")
        if kind == "fsdd":
            return FsddSource(path, split or "train")
        return WavFolderSource(path, split)
    if kind == "tfds_audio":
        if not name or not split:
            raise ValueError("data.kind='tfds_audio' needs data.name (a TFDS dataset) and a split")
        return TfdsAudioSource(name, split, data_dir)
    raise ValueError(f"unknown audio data.kind {kind!r}; expected one of {AUDIO_KINDS}")

