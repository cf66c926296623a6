"""The ArrayRecord image format: one record per image, ``metadata.json`` beside the shards.

Each record is a tiny self-describing binary format (no pickle, so reading untrusted shards
cannot execute code)::

    bytes 0..3   label, int32 little-endian
    bytes 4..    the original encoded image bytes (JPEG/PNG/... exactly as in the source)

Its own module so that the writer (:mod:`maskjax.data.convert`, which reads its input through
:mod:`maskjax.data.sources`) and the reader (``sources.ArrayRecordImageSource``) share it without
importing each other (no import cycles in maskjax: pyproject.toml, ``[tool.importlinter]``).
"""
from __future__ import annotations

import struct
from typing import Any

FORMAT_NAME = "maskjax.image_label"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
_LABEL = struct.Struct("<i")


def encode_record(label: int, image: bytes) -> bytes:
    """Packs a label and encoded image bytes into one record (label first, int32 LE)."""
    return _LABEL.pack(int(label)) + bytes(image)


def decode_record(record: bytes) -> tuple[int, bytes]:
    """Inverse of `encode_record`: returns ``(label, image_bytes)``."""
    if len(record) < _LABEL.size:
        raise ValueError(f"corrupt record: {len(record)} bytes is shorter than the label header")
    (label,) = _LABEL.unpack_from(record, 0)
    return label, bytes(record[_LABEL.size :])


def check_metadata(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """Validates a ``metadata.json`` dict (format name and version, required keys)."""
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{where}: not a maskjax image dataset (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{where}: format_version {meta.get('format_version')!r} is not supported "
            f"(this maskjax reads version {FORMAT_VERSION})"
        )
    for key in ("class_names", "num_records", "shards"):
        if key not in meta:
            raise ValueError(f"{where}: metadata lacks {key!r}")
    return meta
