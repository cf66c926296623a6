"""Character-level text in the text8 format (27 symbols: ``a``-``z`` and space) for masked
diffusion and autoregressive character models, and the ``"chars"`` data modality.

text8 (Mahoney's ``wikifil.pl``, the data of MD4's and MDLM's character benchmarks) keeps only
lowercase letters and single spaces: upper case is lowered, each digit is spelled out
(``"1" -> " one "``), every other character becomes a space and runs of spaces collapse to one.
:func:`clean_text8` does the same to any text, so the offline corpora (Tiny Shakespeare,
WikiText-2) become text8-style streams. Ids follow MD4's ``Text8Tokenizer``: ``ord(c) - 97`` for
``a``-``z`` (0-25) and 26 for the space (specs/methods_text_gen.md 12e: vocabulary 27); the
diffusion mask id is 27 (``vocab_size``), never produced by the data.

Blocks (:class:`CharBlocks`) are windows of ``seq_len`` characters of the whole stream, documents
joined by a space ("wrapped", MDLM's ``wrap: True``): ``stride = seq_len`` packs the stream into
disjoint blocks (the last partial one dropped, as MD4's evaluation ``ChunkDataSource``), ``stride
= 1`` gives every window, MD4's text8 training source (``overlapping=True``). Each block carries
the four fields of the text pipeline (``input_ids``; ``segment_ids`` 0; ``input_mask`` 1;
``word_start``), so :func:`maskjax.data.text.make_text_pipeline` batches, shards per process,
shuffles per epoch and checkpoints its state exactly as for WordPiece text, and the held-out
``mlm`` evaluator reads these blocks unchanged.

Split: ``data.eval_path`` when set (WikiText-2: train on ``valid.txt``, hold out ``test.txt``);
otherwise the stream's last ``data.heldout_fraction`` is held out (contiguous, deterministic: the
90/5/5 split of text8 is also contiguous), the rest is training data.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Sequence

import numpy as np

from maskjax.data.modalities import Modality, register_modality

ALPHABET = "abcdefghijklmnopqrstuvwxyz "
VOCAB_SIZE = len(ALPHABET)        # 27, MD4's text8 vocabulary
SPACE_ID = ALPHABET.index(" ")    # 26, MD4's Text8Tokenizer pad/space token
DOC_FORMATS = ("plain", "wikitext")
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NOT_LETTER = re.compile(r"[^a-z]+")
_WIKITEXT_HEADING = re.compile(r"^\s*(=\s)+.*?(\s=)+\s*$")


def clean_text8(text: str, *, spell_digits: bool = True) -> str:
    """``text`` cleaned as ``wikifil.pl`` makes text8: lowercase letters and single spaces only.

    Digits are spelled out (``spell_digits``, as text8) before every non-letter becomes a space;
    runs of spaces collapse to one and the ends are stripped.
    """
    text = text.lower()
    if spell_digits:
        for digit, word in enumerate(_DIGITS):
            text = text.replace(str(digit), f" {word} ")
    return _NOT_LETTER.sub(" ", text).strip()


def clean_document(text: str, doc_format: str = "plain", *, spell_digits: bool = True) -> str:
    """:func:`clean_text8` after the format's own clean-up.

    ``"wikitext"``: heading lines (`` = Title = ``) and WikiText's ``<unk>`` placeholders are
    dropped first (they are artefacts of its word-level tokenization, not text).
    """
    if doc_format not in DOC_FORMATS:
        raise ValueError(f"unknown character doc_format {doc_format!r}; use one of {DOC_FORMATS}")
    if doc_format == "wikitext":
        lines = [line for line in text.splitlines() if not _WIKITEXT_HEADING.match(line)]
        text = "\n".join(lines).replace("<unk>", " ")
    return clean_text8(text, spell_digits=spell_digits)


def encode(text: str) -> np.ndarray:
    """Ids (uint8) of a cleaned text: ``a``-``z`` -> 0-25, space -> 26; other characters are an error."""
    raw = np.frombuffer(text.encode("ascii", errors="replace"), np.uint8).astype(np.int16)
    ids = np.where(raw == ord(" "), SPACE_ID, raw - ord("a"))
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        bad = sorted({c for c in text if c not in ALPHABET})[:5]
        raise ValueError(f"text is not text8-clean (characters {bad!r}); run clean_text8 first")
    return ids.astype(np.uint8)


def decode(ids: Sequence[int] | np.ndarray) -> str:
    """Text of character ids; ids outside the alphabet (e.g. a leftover mask id) print as ``_``."""
    return "".join(ALPHABET[i] if 0 <= i < VOCAB_SIZE else "_" for i in np.asarray(ids).reshape(-1).tolist())


def word_starts(ids: np.ndarray) -> np.ndarray:
    """1 where a letter starts a word (first position or after a space), else 0 (int32)."""
    ids = np.asarray(ids)
    prev = np.concatenate([np.full(ids.shape[:-1] + (1,), SPACE_ID, ids.dtype), ids[..., :-1]], axis=-1)
    return ((ids != SPACE_ID) & (prev == SPACE_ID)).astype(np.int32)


@functools.lru_cache(maxsize=8)
def _cached_stream(files: tuple[tuple[str, int, int], ...], doc_format: str, spell_digits: bool) -> np.ndarray:
    # Keyed on (path, size, mtime) so an edited file is read again.
    docs = []
    for path, _, _ in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            docs.append(clean_document(f.read(), doc_format, spell_digits=spell_digits))
    stream = encode(" ".join(d for d in docs if d))
    stream.flags.writeable = False  # shared by every source of this file: read-only
    return stream


def load_char_stream(paths: str | os.PathLike | Sequence, doc_format: str = "plain", *,
                     spell_digits: bool = True) -> np.ndarray:
    """The cleaned, encoded stream (uint8 ids) of one or more files (paths, globs, or a comma list),
    documents joined by one space. Cached in memory per file state."""
    from maskjax.data.text.sources import resolve_paths

    if isinstance(paths, str) and "," in paths:
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    files = []
    for p in resolve_paths(paths):
        st = os.stat(p)
        files.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
    return _cached_stream(tuple(files), doc_format, bool(spell_digits))


def split_stream(stream: np.ndarray, heldout_fraction: float, split: str) -> np.ndarray:
    """The first ``1 - heldout_fraction`` of ``stream`` ("train") or the rest ("eval")."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    cut = int(len(stream) * (1.0 - heldout_fraction))
    return stream[:cut] if split == "train" else stream[cut:]


class CharBlocks:
    """Random-access blocks of ``seq_len`` characters from a stream, every ``stride`` characters.

    ``stride`` None (default) is ``seq_len``: disjoint packed blocks. Element ``i`` is a dict of
    int32 arrays [seq_len]: ``input_ids`` (the characters), ``segment_ids`` (0), ``input_mask``
    (1) and ``word_start`` (:func:`word_starts`), the text pipeline's block fields.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, stride: int | None = None):
        seq_len, stride = int(seq_len), int(stride or seq_len)
        if seq_len < 2 or stride < 1:
            raise ValueError(f"seq_len must be >= 2 and stride >= 1, got {seq_len} and {stride}")
        self.stream = np.asarray(stream, np.uint8)
        self.seq_len, self.stride = seq_len, stride
        self._len = max(0, (len(self.stream) - seq_len) // stride + 1)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not -self._len <= index < self._len:
            raise IndexError(f"block {index} out of range for {self._len} blocks")
        start = (index % self._len) * self.stride
        ids = self.stream[start:start + self.seq_len].astype(np.int32)
        return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": np.ones_like(ids),
                "word_start": word_starts(ids)}

    def __repr__(self) -> str:
        return f"CharBlocks({len(self.stream)} chars, seq_len={self.seq_len}, stride={self.stride}, {self._len} blocks)"


def char_data_section(**overrides):
    """The ``config.data`` section of the character modality, defaults first (``overrides`` win).

    Fields: ``path`` / ``eval_path`` (files, globs or comma lists; no ``eval_path``: the last
    ``heldout_fraction`` of ``path`` is held out), ``doc_format`` (plain | wikitext),
    ``spell_digits`` (text8's digit words), ``seq_len`` (MD4 text8: 256), ``train_stride``
    (None: disjoint blocks; 1: every window, MD4's text8 training source), and the pipeline's
    ``shuffle_seed`` / ``num_workers`` / ``num_train_examples``.
    """
    import ml_collections
    from ml_collections import config_dict

    d = ml_collections.ConfigDict(dict(
        kind="chars", doc_format="plain", spell_digits=True, seq_len=256, heldout_fraction=0.1,
        num_workers=0, shuffle_seed=0))
    d.path = config_dict.placeholder(str)
    d.eval_path = config_dict.placeholder(str)
    d.train_stride = config_dict.placeholder(int)
    d.num_train_examples = config_dict.placeholder(int)
    for key, value in overrides.items():
        d[key] = value
    return d


def open_char_blocks(data, split: str) -> CharBlocks:
    """The :class:`CharBlocks` of ``split`` ("train" or "eval") that a ``config.data`` section describes."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    stride = data.get("train_stride") if split == "train" else None
    fmt, spell = data.get("doc_format", "plain"), data.get("spell_digits", True)
    if data.get("eval_path"):
        stream = load_char_stream(data.path if split == "train" else data.eval_path, fmt, spell_digits=spell)
    else:
        stream = split_stream(load_char_stream(data.path, fmt, spell_digits=spell), data.heldout_fraction, split)
    blocks = CharBlocks(stream, data.seq_len, stride)
    if not len(blocks):
        raise ValueError(f"the {split} split has {len(stream)} characters, fewer than one block of "
                         f"data.seq_len={data.seq_len}")
    return blocks


@register_modality("chars")
class CharModality(Modality):
    """text8-style character blocks (:class:`CharBlocks`) through the text pipeline."""

    def open_source(self, config, split: str) -> CharBlocks:
        """The blocks of ``split``: ``data.path`` / ``data.eval_path``, or a held-out tail of ``data.path``."""
        return open_char_blocks(config.data, split)

    def make_pipeline(self, config, source, *, train: bool):
        """Shuffled, repeated, per-process batches for training; one ordered pass for evaluation."""
        from maskjax.data.text.pipeline import make_text_pipeline

        d = config.data
        return make_text_pipeline(source, global_batch=config.global_batch, train=train, seed=d.shuffle_seed,
                                  num_workers=d.num_workers)

    def batch_spec(self, config) -> dict:
        """``input_ids``, ``segment_ids``, ``input_mask``, ``word_start``: i32[B, seq_len]."""
        import jax
        import jax.numpy as jnp

        b, length = int(config.global_batch), int(config.data.seq_len)
        return {k: jax.ShapeDtypeStruct((b, length), jnp.int32)
                for k in ("input_ids", "segment_ids", "input_mask", "word_start")}

    def synthetic_batch(self, config, spec: dict, seed: int = 0) -> dict:
        """Uniformly random characters (no data read)."""
        out = super().synthetic_batch(config, spec, seed)
        ids = np.random.default_rng(seed).integers(0, VOCAB_SIZE, out["input_ids"].shape).astype(np.int32)
        return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": np.ones_like(ids),
                "word_start": word_starts(ids)}

    def take_examples(self, config, source, indices):
        """``({"input_ids": [n, L]}, zero labels)``: character blocks have no labels."""
        ids = np.stack([source[int(i)]["input_ids"] for i in indices])
        return {"input_ids": ids}, np.zeros(len(ids), np.int32)

    def check(self, config, errors: list[str]) -> None:
        """Files exist, a known format, a block length, a held-out share or file."""
        d = config.data
        if not d.get("path"):
            errors.append("data.path is not set (the character modality reads text files from it)")
        for field in ("path", "eval_path"):
            value = d.get(field)
            if value and not _exists(value):
                errors.append(f"data.{field} {value!r} matches no file")
        if d.get("doc_format", "plain") not in DOC_FORMATS:
            errors.append(f"unknown data.doc_format {d.doc_format!r} for characters; use one of {DOC_FORMATS}")
        if not isinstance(d.get("seq_len"), int) or d.seq_len < 2:
            errors.append(f"data.seq_len must be an int >= 2, got {d.get('seq_len')!r}")
        stride = d.get("train_stride")
        if stride is not None and stride < 1:
            errors.append(f"data.train_stride must be >= 1 (1: every window) or None (disjoint blocks), got {stride}")
        if not d.get("eval_path") and not 0.0 < d.get("heldout_fraction", 0.0) < 1.0:
            errors.append(f"data.heldout_fraction must be in (0, 1) without data.eval_path, got "
                          f"{d.get('heldout_fraction')!r}")
        vocab = config.get("model", {}).get("vocab_size")
        if vocab is not None and vocab != VOCAB_SIZE:
            errors.append(f"model.vocab_size is {vocab}, but character data has {VOCAB_SIZE} symbols")


def _exists(path) -> bool:
    from maskjax.data.text.sources import resolve_paths

    parts = [p.strip() for p in str(path).split(",") if p.strip()]
    try:
        return bool(resolve_paths(parts))
    except (FileNotFoundError, ValueError):
        return False
