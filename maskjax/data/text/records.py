"""The tokenized text format: one packed block per ArrayRecord record, ``metadata.json`` beside.

The record layout is documented in :mod:`maskjax.data.text.convert`, which writes it
(``maskjax tokenize``); :class:`ArrayRecordTextSource` reads it. Its own module so that the
writer (convert, which reads its input through :mod:`maskjax.data.text.sources`) and
``sources.open_text_source`` share it without importing each other (no import cycles in
maskjax: pyproject.toml, ``[tool.importlinter]``).
"""
from __future__ import annotations

import io
import json
import os

import numpy as np

from maskjax.data.text.packing import NSP_FIELD
from maskjax.data.text.tokenizer import vocab_sha256

FORMAT_NAME = "maskjax.text_blocks"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"


def record_dtype(seq_len: int, nsp: bool) -> np.dtype:
    """The structured dtype of one stored block."""
    fields = [
        ("input_ids", "<i4", (seq_len,)),
        ("segment_ids", "u1", (seq_len,)),
        ("input_mask", "u1", (seq_len,)),
        ("word_start", "u1", (seq_len,)),
    ]
    if nsp:
        fields.append((NSP_FIELD, "<i4"))
    return np.dtype(fields)


def encode_blocks(blocks: dict[str, np.ndarray], nsp: bool) -> list[bytes]:
    """Serialises every block of a block dict into one ``.npy`` record each."""
    n, seq_len = blocks["input_ids"].shape
    rows = np.zeros(n, record_dtype(seq_len, nsp))
    for k in rows.dtype.names:
        rows[k] = blocks[k]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        np.save(buf, rows[i : i + 1], allow_pickle=False)
        out.append(buf.getvalue())
    return out


# Parsed .npy headers -> dtype: every record of a dataset has the same header, and parsing it
# with np.load each time costs far more than the copy of the data itself.
_HEADER_DTYPES: dict[bytes, np.dtype] = {}


def _record_dtype(header: bytes) -> np.dtype:
    dtype = _HEADER_DTYPES.get(header)
    if dtype is None:
        f = io.BytesIO(header)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        if shape != (1,) or dtype.names is None or "input_ids" not in dtype.names or dtype.hasobject:
            raise ValueError(f"not a text block record (shape {shape}, dtype {dtype})")
        _HEADER_DTYPES[header] = dtype
    return dtype


def decode_block(record: bytes) -> dict[str, np.ndarray]:
    """Inverse of `encode_blocks` for one record: ``{field: int32 array}``."""
    if len(record) < 12 or record[:6] != b"\x93NUMPY":
        raise ValueError("corrupt text block record: not .npy bytes")
    size_bytes = 2 if record[6] == 1 else 4
    header_len = 8 + size_bytes + int.from_bytes(record[8 : 8 + size_bytes], "little")
    try:
        dtype = _record_dtype(bytes(record[:header_len]))
    except ValueError as e:
        raise ValueError(f"corrupt text block record: {e}") from None
    if len(record) != header_len + dtype.itemsize:
        raise ValueError(f"corrupt text block record: {len(record)} bytes, expected {header_len + dtype.itemsize}")
    row = np.frombuffer(record, dtype, count=1, offset=header_len)[0]
    # Copies: the buffer is read-only, and downstream masking may edit arrays in place.
    return {k: np.array(row[k], np.int32) for k in dtype.names}


class ArrayRecordTextSource:
    """Packed blocks written by `tokenize_to_array_record`, as a random-access source.

    Args:
      path: the output directory or its ``metadata.json``.

    Items are block dicts of int32 arrays (``nsp_label`` a scalar when present); attributes
    ``metadata``, ``seq_len``, ``has_nsp``, ``special_ids``.
    """

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"tokenized text dataset not found: {path}")
        meta_path = path if os.path.isfile(path) else os.path.join(path, METADATA_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"no {METADATA_FILE} in {path}; expected a directory written by `maskjax tokenize`")
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{meta_path}: not a maskjax text-block dataset (format={meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r}")
        self.metadata = meta
        self.path = os.path.dirname(os.path.abspath(meta_path))
        shards = [os.path.join(self.path, s) for s in meta["shards"]]
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            raise FileNotFoundError(f"missing ArrayRecord shards in {self.path}: {missing}")
        import grain

        self._source = grain.sources.ArrayRecordDataSource(shards)
        if len(self._source) != meta["num_records"]:
            raise ValueError(
                f"{self.path}: metadata says {meta['num_records']} blocks but the shards hold {len(self._source)}"
            )

    @property
    def seq_len(self) -> int:
        """Block length."""
        return int(self.metadata["seq_len"])

    @property
    def has_nsp(self) -> bool:
        """Whether blocks carry ``nsp_label``."""
        return bool(self.metadata["nsp"])

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Special-token ids of the vocabulary used."""
        return tuple(int(i) for i in self.metadata["special_ids"])

    def check_vocab(self, vocab_path: str | os.PathLike) -> None:
        """Raises ValueError unless ``vocab_path`` is the vocabulary the data was tokenized with."""
        if vocab_sha256(vocab_path) != self.metadata["vocab_sha256"]:
            raise ValueError(
                f"{vocab_path} is not the vocabulary {self.path} was tokenized with "
                f"({self.metadata['vocab_path']}); token ids would not match"
            )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return decode_block(self._source[int(index)])

    def __repr__(self) -> str:
        return f"ArrayRecordTextSource(path={self.path!r}, num_blocks={len(self)}, seq_len={self.seq_len})"
