"""Random-access sources of text *documents* for masked-LM pre-training.

A document is a ``list[str]`` of non-empty, stripped lines: sentences in BERT's input format,
paragraphs in WikiText. Sources have ``__len__`` and ``__getitem__`` (the grain
``RandomAccessDataSource`` protocol) and pickle cheaply (byte offsets, not text), so they can be
shipped to worker processes.

Formats of plain-text files (the caller chooses; nothing is auto-detected):

- ``"blank_line"``: BERT's ``create_pretraining_data.py`` format, one sentence (or paragraph)
  per line, documents separated by one or more blank lines.
- ``"wikitext"``: WikiText-2/103 (``wiki.*.tokens`` / ``*.raw``). A document starts at every
  top-level title line `` = Title = ``; sub-heading lines (`` = = Sub = = ``, deeper levels too)
  and the title itself are dropped, blank lines ignored. Text before the first title (if any)
  forms a document of its own.

`split_wikitext_sentences` splits WikiText paragraphs into sentences for next-sentence
prediction (WikiText has a paragraph per line, not a sentence).
"""
from __future__ import annotations

import glob
import os
import re
from typing import Sequence

import numpy as np

DOC_FORMATS = ("blank_line", "wikitext")
TEXT_SOURCE_KINDS = ("text", "tfds_text", "array_record_text")
_GLOB_CHARS = ("*", "?", "[")
# A heading line: "= T =", "= = T = =", ... (any level); checked on the stripped line.
_HEADING = re.compile(r"^(=\s)+.*?(\s=)+$")
# WikiText writes sentence ends as " . " / " ? " / " ! " (tokens are space separated); split
# after the punctuation so each sentence keeps its full stop. "@.@" (decimal point) and
# abbreviations such as "H. americanus" have no space before the dot and are not split.
_SENTENCE_END = re.compile(r"(?<= [.?!]) (?=\S)")


def split_wikitext_sentences(line: str) -> list[str]:
    """Splits a WikiText paragraph at `` . `` / `` ? `` / `` ! `` boundaries (stop kept)."""
    return [s.strip() for s in _SENTENCE_END.split(line.strip()) if s.strip()]


def _is_heading(stripped: bytes | str) -> bool:
    if not stripped[:1] in (b"=", "="):
        return False  # the common case, without decoding or a regex
    if isinstance(stripped, bytes):
        stripped = stripped.decode("utf-8", errors="replace")
    return bool(_HEADING.match(stripped))


def _is_title(stripped: bytes) -> bool:
    """A top-level WikiText title ``= Title =`` (but not ``= = Sub = =``)."""
    return stripped.startswith(b"= ") and stripped.endswith(b" =") and not stripped.startswith(b"= =")


def resolve_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expands one path, a glob, or a list of either into existing files (globs sorted).

    Raises FileNotFoundError for a missing path or a glob that matches nothing, ValueError for
    an empty list.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        p = os.path.expanduser(os.fspath(p))
        if any(c in p for c in _GLOB_CHARS) and not os.path.exists(p):
            matches = sorted(m for m in glob.glob(p) if os.path.isfile(m))
            if not matches:
                raise FileNotFoundError(f"no files match {p!r}")
            out.extend(matches)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"text file not found: {p}")
    if not out:
        raise ValueError("no text files given")
    return out


class TextFileSource:
    """Documents from plain-text files; see the module docstring for ``doc_format``.

    Args:
      paths: a file, a glob (``"data/*.txt"``) or a list of them; read in the given order
        (globs sorted). Documents never span two files.
      doc_format: ``"blank_line"`` or ``"wikitext"``.
      encoding: text encoding (undecodable bytes are replaced, not fatal).

    Construction scans the files once and keeps each document's byte range, so memory is
    O(number of documents) and items are read from disk on access.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        doc_format: str = "blank_line",
        encoding: str = "utf-8",
    ):
        if doc_format not in DOC_FORMATS:
            raise ValueError(f"unknown doc_format {doc_format!r}; expected one of {', '.join(DOC_FORMATS)}")
        self.paths = resolve_paths(paths)
        self.doc_format = doc_format
        self.encoding = encoding
        files, starts, ends = [], [], []
        for fi, path in enumerate(self.paths):
            for start, end in self._scan(path):
                files.append(fi)
                starts.append(start)
                ends.append(end)
        self._file = np.asarray(files, np.int32)
        self._start = np.asarray(starts, np.int64)
        self._end = np.asarray(ends, np.int64)

    def _scan(self, path: str) -> list[tuple[int, int]]:
        """Byte ranges ``[start, end)`` of the non-empty documents of one file."""
        ranges = []
        wikitext = self.doc_format == "wikitext"
        start, has_text, offset = 0, False, 0
        with open(path, "rb") as f:
            for line in f:
                stripped = line.strip()
                line_start, offset = offset, offset + len(line)
                if wikitext:
                    if _is_title(stripped):
                        if has_text:
                            ranges.append((start, line_start))
                        start, has_text = offset, False  # the title line itself is dropped
                    elif stripped and not _is_heading(stripped):
                        has_text = True
                elif not stripped:
                    if has_text:
                        ranges.append((start, line_start))
                    start, has_text = offset, False
                else:
                    has_text = True
        if has_text:
            ranges.append((start, offset))
        return ranges

    def __len__(self) -> int:
        return len(self._start)

    def __getitem__(self, index: int) -> list[str]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"document {index} out of range for {len(self)} documents")
        start, end = int(self._start[index]), int(self._end[index])
        with open(self.paths[int(self._file[index])], "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        lines = [l.strip() for l in data.decode(self.encoding, errors="replace").splitlines()]
        if self.doc_format == "wikitext":
            return [l for l in lines if l and not _is_heading(l)]
        return [l for l in lines if l]

    def __repr__(self) -> str:
        return (
            f"TextFileSource(paths={self.paths!r}, doc_format={self.doc_format!r}, "
            f"num_documents={len(self)})"
        )


class TfdsTextSource:
    """Documents from a prepared TFDS dataset (``tfds.data_source``; no TensorFlow needed).

    Args:
      name: TFDS name, e.g. ``"wikipedia/20230601.en"``, ``"c4/en"``, ``"lm1b"``.
      split: split string (``"train"``, ``"train[:1%]"``...).
      data_dir: TFDS data directory (TFDS's default when None).
      text_field: the feature holding the text.

    Each record is one document; its text is split on ``"\\n"`` into stripped lines and empty
    lines are dropped, so an item may be ``[]`` for an empty record (packing skips those).
    lm1b has one sentence per record, so every document is a single sentence there and NSP
    pairs are always "random next"; prefer a document-level dataset for NSP.
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | os.PathLike | None = None,
        text_field: str = "text",
    ):
        from maskjax.data.sources import open_prepared_tfds

        if name.split("/")[0].split(":")[0] in ("c4", "wikipedia"):
            # Legacy builders are registered only once their module is imported (no TF needed).
            import tensorflow_datasets.text  # noqa: F401
        self.name = name
        self.split = split
        self.text_field = text_field
        data_dir = os.fspath(data_dir) if data_dir is not None else None
        self._source = open_prepared_tfds(name, split, data_dir)
        info = getattr(self._source, "dataset_info", None)
        features = getattr(info, "features", None)
        if features is not None and text_field not in features:
            raise ValueError(
                f"TFDS dataset {name!r} has no feature {text_field!r}; features: "
                f"{', '.join(sorted(features.keys()))}"
            )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> list[str]:
        text = self._source[int(index)][self.text_field]
        if isinstance(text, np.ndarray):
            text = text.item()
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return [l.strip() for l in str(text).split("\n") if l.strip()]

    def __repr__(self) -> str:
        return f"TfdsTextSource(name={self.name!r}, split={self.split!r}, num_documents={len(self)})"


def open_text_source(
    kind: str,
    path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    name: str | None = None,
    split: str | None = None,
    data_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    doc_format: str = "blank_line",
):
    """Opens a text source by kind (the config-facing factory).

    - ``"text"``: `TextFileSource(path, doc_format)`; ``path`` is a file, glob or list.
    - ``"tfds_text"``: `TfdsTextSource(name, split, data_dir, text_field)`.
    - ``"array_record_text"``: `maskjax.data.text.records.ArrayRecordTextSource(path)`, blocks
      that `tokenize_to_array_record` already tokenized and packed. Unlike the other kinds its
      items are block dicts (ready for `make_text_pipeline`), not documents.
    """
    if kind == "text":
        if path is None:
            raise ValueError("kind='text' needs a path (file, glob or list of files)")
        return TextFileSource(path, doc_format=doc_format)
    if kind == "tfds_text":
        if name is None or split is None:
            raise ValueError("kind='tfds_text' needs a dataset name and a split")
        return TfdsTextSource(name, split, data_dir=data_dir, text_field=text_field)
    if kind == "array_record_text":
        if path is None:
            raise ValueError("kind='array_record_text' needs a path (a tokenized output directory)")
        from maskjax.data.text.records import ArrayRecordTextSource

        return ArrayRecordTextSource(path)
    raise ValueError(f"unknown text source kind {kind!r}; expected one of {', '.join(TEXT_SOURCE_KINDS)}")
