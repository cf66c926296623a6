"""Random-access image sources (grain ``RandomAccessDataSource`` protocol).

Every source has ``__len__``, ``__getitem__`` and ``class_names`` and yields
``{"image": ..., "label": int}``. Sources are picklable: grain ships them to worker processes,
so open file handles and decoded caches are dropped on pickling and re-created lazily in each
process.

Layout rule shared by directories and tar archives: an image's class is the name of the folder
that directly contains it, i.e. paths look like ``[<prefix>/]<class>/<file>``. ``split`` keeps only
the images under the top-level folder ``<split>/``. Classes are sorted alphabetically and
numbered from 0 (the torchvision ImageFolder convention).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import tarfile
import threading
from typing import Any, Sequence

import numpy as np

from maskjax.data.transforms import to_rgb_uint8
from maskjax.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_TAR_SUFFIXES = (".tar",) + _COMPRESSED_TAR_SUFFIXES


class DataNotFound(DataError, FileNotFoundError):
    """A data path does not exist (a :class:`DataError` that is also a ``FileNotFoundError``)."""


_LAYOUT = "[<prefix>/]<class>/<file>"


def _is_image_path(rel: str) -> bool:
    """True for image files, skipping hidden files and macOS resource-fork junk."""
    parts = rel.split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return rel.lower().endswith(IMAGE_EXTENSIONS)


def _is_tar_path(path: str) -> bool:
    return path.lower().endswith(_TAR_SUFFIXES)


def _select(rel_paths: Sequence[str], split: str | None, where: str) -> list[tuple[str, str]]:
    """Filters relative posix paths to ``(path, class_name)`` pairs, applying ``split``.

    Raises DataError (a ValueError) naming ``where`` when ``split`` does not exist or nothing is left.
    """
    rel_paths = [p.strip("/") for p in rel_paths]
    if split is not None:
        split = split.strip("/")
        top_level = sorted({p.split("/")[0] for p in rel_paths if "/" in p})
        if rel_paths and split not in top_level:
            raise DataError(
                f"split folder {split!r} not found in {where}; "
                f"top-level folders: {', '.join(top_level) or '(none)'}"
            )
        rel_paths = [p for p in rel_paths if p.startswith(split + "/")]
    selected = []
    for rel in rel_paths:
        parts = rel.split("/")
        # A file directly under the (split) root has no class folder, so it is not a sample.
        min_depth = 3 if split is not None else 2
        if len(parts) >= min_depth and _is_image_path(rel):
            selected.append((rel, parts[-2]))
    if not selected:
        what = f"{where} (split {split!r})" if split is not None else where
        found = (f"{len(rel_paths)} file{'s' * (len(rel_paths) != 1)}, none an image inside a class folder"
                 if rel_paths else "no files at all")
        raise DataError(
            f"no images found in {what}: {found}; expected {_LAYOUT} with one of the "
            f"extensions {', '.join(IMAGE_EXTENSIONS)}"
        )
    return selected


def _index(selected: list[tuple[str, str]]) -> tuple[list[str], list[str], list[int]]:
    """Returns (sorted class names, paths, labels) sorted by (label, path) for a stable order."""
    class_names = sorted({c for _, c in selected})
    label_of = {c: i for i, c in enumerate(class_names)}
    ordered = sorted(selected, key=lambda pc: (label_of[pc[1]], pc[0]))
    return class_names, [p for p, _ in ordered], [label_of[c] for _, c in ordered]


class ImageFolderSource:
    """Encoded images from an ImageFolder directory or a (possibly compressed) tar archive.

    Args:
      path: a directory of ``<class>/<file>`` images, or a ``.tar`` / ``.tar.gz`` / ``.tgz``
        archive with members ``[<prefix>/]<class>/<file>``.
      split: optional top-level folder to read (e.g. ``"train"``).

    Items are ``{"image": <encoded bytes>, "label": int}``; decoding is left to the pipeline so
    it runs in grain's worker threads/processes. A plain ``.tar`` is read in place with
    ``os.pread`` at each member's data offset (thread-safe, no extraction); a compressed archive
    is read into memory once per process (only sensible for small archives such as the embedded
    CIFAR-10 subset).
    """

    def __init__(self, path: str | os.PathLike, split: str | None = None):
        self.path = os.fspath(path)
        self.split = split
        if not os.path.exists(self.path):
            raise DataNotFound(f"image folder or archive not found: {self.path}")
        self._is_dir = os.path.isdir(self.path)
        self._compressed = not self._is_dir and self.path.lower().endswith(_COMPRESSED_TAR_SUFFIXES)
        if not self._is_dir and not _is_tar_path(self.path):
            raise DataError(
                f"{self.path} is neither a directory nor a tar archive "
                f"(expected one of {', '.join(_TAR_SUFFIXES)})"
            )
        if self._is_dir:
            rel_paths = self._list_dir(split)
            locations: dict[str, Any] = {}
        else:
            locations = self._scan_tar()
            rel_paths = list(locations)
        selected = _select(rel_paths, split, self.path)
        self.class_names, self._paths, self._labels = _index(selected)
        # Per-item arrays aligned with the item order; numpy keeps the pickle that grain sends to
        # each worker compact even for archives with a million members.
        self._offsets = self._sizes = None
        self._blobs: list[bytes] | None = None
        if not self._is_dir and not self._compressed:
            self._offsets = np.asarray([locations[p][0] for p in self._paths], np.int64)
            self._sizes = np.asarray([locations[p][1] for p in self._paths], np.int64)
        elif self._compressed:
            self._blobs = [locations[p] for p in self._paths]  # unselected members are dropped
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._lock = threading.Lock()

    def _list_dir(self, split: str | None) -> list[str]:
        """Relative posix paths of the files below the directory (sorted walk, deterministic).

        With a split only ``<path>/<split>`` is walked, so other splits are not listed.
        """
        root = pathlib.Path(self.path)
        start = root
        if split is not None:
            start = root / split.strip("/")
            if not start.is_dir():
                if not any(root.iterdir()):
                    raise DataError(f"image folder {self.path} is empty; expected {_LAYOUT} images "
                                    f"under its split folder {split.strip('/')!r}/")
                top_level = sorted(p.name for p in root.iterdir() if p.is_dir())
                raise DataError(
                    f"split folder {split!r} not found in {self.path}; "
                    f"top-level folders: {', '.join(top_level) or '(none)'}"
                )
        rel = []
        for dirpath, dirnames, filenames in os.walk(start, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                rel.append(pathlib.Path(dirpath, name).relative_to(root).as_posix())
        return rel

    def _scan_tar(self) -> dict[str, Any]:
        """Maps member name -> (data offset, size) for a plain tar, or -> bytes if compressed."""
        try:
            return self._scan_tar_members()
        except Exception as e:  # noqa: BLE001 - tarfile, gzip, zlib, lzma, EOF: all mean "not a readable tar"
            lines = str(e).strip().splitlines()
            # tarfile's "file could not be opened successfully" lists one line per method tried;
            # the last (plain tar) is the informative one.
            last = lines[-1].lstrip("- ") if lines else type(e).__name__
            quoted = re.fullmatch(r"method \w+: \w+\((['\"])(.*)\1\)", last)
            reason = quoted.group(2) if quoted else last
            raise DataError(f"{self.path} is not a readable tar archive ({reason}); expected a .tar / .tar.gz "
                            f"of {_LAYOUT} images") from e

    def _scan_tar_members(self) -> dict[str, Any]:
        locations: dict[str, Any] = {}
        with tarfile.open(self.path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.removeprefix("./")
                if self._compressed:
                    # Compressed streams cannot be read at an offset, so keep the bytes.
                    if _is_image_path(name):
                        locations[name] = tar.extractfile(member).read()
                    else:
                        locations[name] = None
                else:
                    locations[name] = (member.offset_data, member.size)
        return locations

    def __len__(self) -> int:
        return len(self._paths)

    def record_name(self, index: int) -> str:
        """Where item ``index`` lives: its file path, or ``archive.tar:member`` (for messages)."""
        rel = self._paths[index]
        return os.path.join(self.path, rel) if self._is_dir else f"{self.path}:{rel}"

    @property
    def labels(self) -> np.ndarray:
        """All labels in item order (int32), without reading any image."""
        return np.asarray(self._labels, np.int32)

    def relative_path(self, index: int) -> str:
        """Path of item ``index`` inside the directory or archive (for debugging and tests)."""
        return self._paths[index]

    def _read(self, index: int) -> bytes:
        if self._is_dir:
            with open(os.path.join(self.path, self._paths[index]), "rb") as f:
                return f.read()
        if self._compressed:
            if self._blobs is None:
                with self._lock:  # several grain threads may hit a fresh (unpickled) copy at once
                    if self._blobs is None:
                        locations = self._scan_tar()
                        self._blobs = [locations[p] for p in self._paths]
            return self._blobs[index]
        return self._pread(int(self._offsets[index]), int(self._sizes[index]))

    def _pread(self, offset: int, size: int) -> bytes:
        # One descriptor per process; pread carries its own offset, so grain's reader threads
        # can share it without a seek/read race. Reopen after fork to avoid sharing with parent.
        pid = os.getpid()
        if self._fd is None or self._fd_pid != pid:
            with self._lock:
                if self._fd is None or self._fd_pid != pid:
                    self._fd = os.open(self.path, os.O_RDONLY)
                    self._fd_pid = pid
        if hasattr(os, "pread"):
            data = os.pread(self._fd, size, offset)
        else:  # pragma: no cover - Windows has no pread
            with self._lock:
                os.lseek(self._fd, offset, os.SEEK_SET)
                data = os.read(self._fd, size)
        if len(data) != size:
            raise IOError(f"short read from {self.path} at offset {offset}")
        return data

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return {"image": self._read(index), "label": self._labels[index]}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"] = None
        state["_fd_pid"] = None
        state["_lock"] = None
        if self._compressed:
            state["_blobs"] = None  # re-read in the receiving process instead of pickling MBs
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self):
        # Close only a descriptor this process opened; at interpreter shutdown module globals
        # (os) may already be gone, hence the broad except.
        try:
            if self._fd is not None and self._fd_pid == os.getpid():
                os.close(self._fd)
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource(path={self.path!r}, split={self.split!r}, "
            f"num_images={len(self)}, num_classes={len(self.class_names)})"
        )


class ArrayRecordImageSource:
    """Images from ArrayRecord shards written by `maskjax.data.convert.convert_image_folder`.

    Args:
      path_or_dir: the converter's output directory, or its ``metadata.json``.

    Items are ``{"image": <encoded bytes>, "label": int}``, in the order they were converted.
    """

    def __init__(self, path_or_dir: str | os.PathLike):
        # The format convert_image_folder writes (image_records, not convert: convert reads its
        # input through this module).
        from maskjax.data import image_records

        path = os.fspath(path_or_dir)
        if not os.path.exists(path):
            raise DataNotFound(f"ArrayRecord dataset not found: {path}")
        meta_path = path if os.path.isfile(path) else os.path.join(path, image_records.METADATA_FILE)
        if not os.path.isfile(meta_path):
            raise DataNotFound(
                f"no {image_records.METADATA_FILE} in {path}; expected a directory written by "
                "`maskjax convert-images`"
            )
        with open(meta_path) as f:
            self.metadata = image_records.check_metadata(json.load(f), meta_path)
        self.path = os.path.dirname(os.path.abspath(meta_path))
        self.class_names = list(self.metadata["class_names"])
        shards = [os.path.join(self.path, s) for s in self.metadata["shards"]]
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            raise FileNotFoundError(f"missing ArrayRecord shards in {self.path}: {missing}")
        import grain

        self._source = grain.sources.ArrayRecordDataSource(shards)
        if len(self._source) != self.metadata["num_records"]:
            raise ValueError(
                f"{self.path}: metadata says {self.metadata['num_records']} records but the "
                f"shards hold {len(self._source)}"
            )
        self._decode = image_records.decode_record

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        label, image = self._decode(self._source[int(index)])
        return {"image": image, "label": label}

    def record_name(self, index: int) -> str:
        """``<dir> record <index>`` (for messages about an unreadable record)."""
        return f"{self.path} record {index}"

    def __repr__(self) -> str:
        return f"ArrayRecordImageSource(path={self.path!r}, num_images={len(self)})"


def open_prepared_tfds(name: str, split, data_dir):
    """``tfds.data_source`` of a dataset the user prepared; never downloads (clear error if absent).

    TFDS's default ``download=True`` would try the network (and hang on its timeouts offline).
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds for a missing dataset
        raise FileNotFoundError(
            f"TFDS dataset {name!r} split {split!r} is not prepared in data_dir={data_dir!r} ({type(e).__name__}: "
            f"{e}). Prepare it once in ArrayRecord format, e.g. `tfds build {name} --file_format=array_record "
            f"--data_dir=DIR` on a machine with internet access, then set data.data_dir=DIR") from e


class TfdsImageSource:
    """A TFDS dataset prepared as ArrayRecord (e.g. ``imagenet2012``, ``cifar10``), no TensorFlow.

    Args:
      name: TFDS dataset name (optionally with config/version, e.g. ``"cifar10:3.0.2"``).
      split: TFDS split string (``"train"``, ``"validation"``, ``"train[:1%]"``, ...).
      data_dir: TFDS data directory (defaults to TFDS's own default, ``~/tensorflow_datasets``).
      image_key, label_key: feature names holding the image and the integer label.

    Items are ``{"image": uint8 HxWx3 array, "label": int}`` (TFDS decodes images itself).
    ``class_names`` comes from the label's ``ClassLabel`` feature when there is one, else None.
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | os.PathLike | None = None,
        *,
        image_key: str = "image",
        label_key: str = "label",
    ):
        self.name = name
        self.split = split
        self.image_key = image_key
        self.label_key = label_key
        data_dir = os.fspath(data_dir) if data_dir is not None else None
        # Created eagerly: tfds' ArrayRecordDataSource is itself picklable and opens its files
        # lazily, and creating it here keeps `tfds.testing.mock_data` contexts working.
        self._source = open_prepared_tfds(name, split, data_dir)
        self.class_names = None
        info = getattr(self._source, "dataset_info", None)
        feature = info.features[label_key] if info is not None else None
        if feature is not None and hasattr(feature, "names"):
            self.class_names = list(feature.names)

    def __len__(self) -> int:
        return len(self._source)

    def _convert(self, record: dict) -> dict[str, Any]:
        return {
            "image": to_rgb_uint8(record[self.image_key]),
            "label": int(record[self.label_key]),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._convert(self._source[int(index)])

    def record_name(self, index: int) -> str:
        """``tfds <name> <split> record <index>`` (for messages about an unreadable record)."""
        return f"tfds {self.name} {self.split} record {index}"

    def __repr__(self) -> str:
        return f"TfdsImageSource(name={self.name!r}, split={self.split!r}, num_images={len(self)})"


SOURCE_KINDS = ("folder", "array_record", "tfds")


def open_image_source(
    kind: str,
    path: str | os.PathLike | None = None,
    split: str | None = None,
    name: str | None = None,
    data_dir: str | os.PathLike | None = None,
):
    """Opens an image source by kind (the config-facing factory).

    - ``"folder"``: `ImageFolderSource(path, split)`; ``path`` is a directory or a tar archive.
    - ``"array_record"``: `ArrayRecordImageSource(path)` (``split`` must be None: convert each
      split into its own directory).
    - ``"tfds"``: `TfdsImageSource(name, split, data_dir)`.
    """
    if kind == "folder":
        if path is None:
            raise ValueError("kind='folder' needs a path (directory or tar archive)")
        return ImageFolderSource(path, split=split)
    if kind == "array_record":
        if path is None:
            raise ValueError("kind='array_record' needs a path (converted directory)")
        if split is not None:
            raise ValueError(
                "kind='array_record' has no splits; convert each split to its own directory "
                f"and pass that directory (got split={split!r})"
            )
        return ArrayRecordImageSource(path)
    if kind == "tfds":
        if name is None or split is None:
            raise ValueError("kind='tfds' needs a dataset name and a split")
        return TfdsImageSource(name, split, data_dir=data_dir)
    raise ValueError(f"unknown image source kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")


class SubsetSource:
    """The first ``n`` items of a fixed random permutation of ``source`` (keeps ``class_names``)."""

    def __init__(self, source, n: int, seed: int = 0):
        import numpy as _np

        self.source = source
        self.indices = _np.sort(_np.random.default_rng(seed).permutation(len(source))[: min(n, len(source))])
        self.class_names = getattr(source, "class_names", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]

    def record_name(self, i: int) -> str:
        """The wrapped source's name of item ``i`` (for messages about an unreadable record)."""
        from maskjax.data.bad_records import describe_record

        return describe_record(self.source, int(self.indices[i]))


def maybe_subset(source, n: int | None, seed: int):
    """``SubsetSource(source, n, seed)`` when ``n`` is set, else ``source`` itself.

    A random subset on purpose: sources are usually sorted by class, so the first n items
    would often be a single class.
    """
    return SubsetSource(source, n, seed) if n else source
