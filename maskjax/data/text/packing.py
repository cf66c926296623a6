"""Packing tokenized documents into fixed-length BERT blocks (pure numpy, deterministic).

Two layouts, both ``[CLS] ... [SEP]`` padded to ``seq_len``; every field is int32:

- `pack_blocks`: one contiguous segment per block, the RoBERTa FULL-SENTENCES / fairseq
  ``--sample-break-mode none`` layout that SpanBERT and the "mask 15%" recipes use. Documents
  are concatenated into one token stream (a ``[SEP]`` between consecutive documents, as
  RoBERTa's extra separator token, unless ``doc_separator=False``) and cut every
  ``seq_len - 2`` tokens, so a block may span a document boundary and may start in the middle
  of a word (its first token can then be a ``##`` piece with ``word_start == 0``).
- `nsp_pairs`: BERT's ``create_instances_from_document`` (sentence pairs A/B, 50% random B)
  for next-sentence prediction.

Block dict fields (arrays ``[num_blocks, seq_len]`` unless noted):

- ``input_ids``: token ids, ``pad_id`` after the final ``[SEP]``.
- ``segment_ids``: 0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]`` (all 0 in `pack_blocks`).
- ``input_mask``: 1 on real tokens including ``[CLS]``/``[SEP]``, 0 on padding.
- ``word_start``: 1 where a token starts a word (not a ``##`` piece) and on ``[CLS]``/``[SEP]``;
  0 on continuation pieces and padding.
- ``nsp_label`` (``[num_blocks]``, `nsp_pairs` only): 0 = B is the real continuation
  (IsNext), 1 = B is random (the Hugging Face ``next_sentence_label`` convention).
"""
from __future__ import annotations

import os
import random
from typing import Any, Iterable, Sequence

import numpy as np

BLOCK_FIELDS = ("input_ids", "segment_ids", "input_mask", "word_start")
NSP_FIELD = "nsp_label"


def _as_piece(ids: Any, word_start: Any) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, np.int32).reshape(-1)
    word_start = np.asarray(word_start).astype(bool).reshape(-1)
    if ids.shape != word_start.shape:
        raise ValueError(f"ids ({ids.shape[0]}) and word_start ({word_start.shape[0]}) differ in length")
    return ids, word_start


def _check_seq_len(seq_len: int, minimum: int) -> None:
    if int(seq_len) < minimum:
        raise ValueError(f"seq_len must be >= {minimum}, got {seq_len}")


def empty_blocks(seq_len: int, nsp: bool = False) -> dict[str, np.ndarray]:
    """A dict of zero blocks with the right shapes and dtypes."""
    out = {k: np.zeros((0, seq_len), np.int32) for k in BLOCK_FIELDS}
    if nsp:
        out[NSP_FIELD] = np.zeros((0,), np.int32)
    return out


def concat_blocks(parts: Sequence[dict[str, np.ndarray]], seq_len: int, nsp: bool = False) -> dict[str, np.ndarray]:
    """Concatenates block dicts along the block axis (empty input -> `empty_blocks`)."""
    parts = [p for p in parts if len(p["input_ids"])]
    if not parts:
        return empty_blocks(seq_len, nsp)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class BlockPacker:
    """Incremental `pack_blocks`: feed documents with `add`, take full blocks with `pop_full`,
    and the last partial block with `finish` (bounded memory for streaming conversion).

    Args:
      seq_len: block length including ``[CLS]`` and ``[SEP]`` (>= 3).
      cls_id, sep_id, pad_id: special-token ids (look them up in the tokenizer).
      doc_separator: put ``sep_id`` between consecutive documents in the stream.
      min_last_tokens: the final partial block is kept when it holds at least this many
        stream tokens, else dropped; default half a block, ``max(1, (seq_len - 2) // 2)``.
    """

    def __init__(
        self,
        seq_len: int,
        cls_id: int,
        sep_id: int,
        pad_id: int,
        doc_separator: bool = True,
        min_last_tokens: int | None = None,
    ):
        _check_seq_len(seq_len, 3)
        self.seq_len = int(seq_len)
        self.body = self.seq_len - 2
        self.cls_id, self.sep_id, self.pad_id = int(cls_id), int(sep_id), int(pad_id)
        self.doc_separator = doc_separator
        if min_last_tokens is None:
            min_last_tokens = max(1, self.body // 2)
        self.min_last_tokens = int(min_last_tokens)
        self._ids: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._buffered = 0
        self._num_docs = 0

    def add(self, ids: Any, word_start: Any) -> None:
        """Appends one document's tokens to the stream (empty documents are skipped)."""
        ids, word_start = _as_piece(ids, word_start)
        if not len(ids):
            return
        if self.doc_separator and self._num_docs:
            self._ids.append(np.asarray([self.sep_id], np.int32))
            self._starts.append(np.ones(1, bool))
            self._buffered += 1
        self._ids.append(ids)
        self._starts.append(word_start)
        self._buffered += len(ids)
        self._num_docs += 1

    def _blocks(self, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        """Lays out stream pieces (concatenated in ``ids``) of the given lengths as blocks."""
        n, L = len(lengths), self.seq_len
        input_ids = np.full((n, L), self.pad_id, np.int32)
        word_start = np.zeros((n, L), np.int32)
        pos = np.arange(L)[None, :]
        # Real tokens of row r occupy columns 1..lengths[r]; the final [SEP] is at lengths[r]+1.
        body = (pos >= 1) & (pos <= lengths[:, None])
        input_ids[body] = ids
        word_start[body] = starts
        input_ids[:, 0] = self.cls_id
        word_start[:, 0] = 1
        rows = np.arange(n)
        input_ids[rows, lengths + 1] = self.sep_id
        word_start[rows, lengths + 1] = 1
        input_mask = (pos < (lengths + 2)[:, None]).astype(np.int32)
        return {
            "input_ids": input_ids,
            "segment_ids": np.zeros((n, L), np.int32),
            "input_mask": input_mask,
            "word_start": word_start,
        }

    def _take(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int32)
        starts = np.concatenate(self._starts) if self._starts else np.zeros(0, bool)
        return ids, starts

    def pop_full(self) -> dict[str, np.ndarray]:
        """Returns every complete block buffered so far (possibly zero blocks)."""
        n = self._buffered // self.body
        if n == 0:
            return empty_blocks(self.seq_len)
        ids, starts = self._take()
        cut = n * self.body
        self._ids, self._starts = [ids[cut:]], [starts[cut:]]
        self._buffered = len(ids) - cut
        return self._blocks(ids[:cut], starts[:cut], np.full(n, self.body))

    def finish(self) -> dict[str, np.ndarray]:
        """Full blocks left plus the last partial block when long enough; resets the stream."""
        full = self.pop_full()
        ids, starts = self._take()
        self._ids, self._starts, self._buffered, self._num_docs = [], [], 0, 0
        if len(ids) == 0 or len(ids) < self.min_last_tokens:
            return full
        return concat_blocks([full, self._blocks(ids, starts, np.asarray([len(ids)]))], self.seq_len)


def pack_blocks(
    token_docs: Iterable[tuple[Any, Any]],
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    *,
    doc_separator: bool = True,
    min_last_tokens: int | None = None,
) -> dict[str, np.ndarray]:
    """Packs ``(ids, word_start)`` documents into ``[CLS] chunk [SEP]`` blocks (module docstring).

    Chunks hold ``seq_len - 2`` stream tokens; the final partial chunk is padded and kept only
    when it has at least ``min_last_tokens`` tokens (default half a chunk), else dropped.
    Returns the block dict with fields ``input_ids, segment_ids, input_mask, word_start``.
    """
    packer = BlockPacker(seq_len, cls_id, sep_id, pad_id, doc_separator, min_last_tokens)
    parts = []
    for k, (ids, word_start) in enumerate(token_docs):
        packer.add(ids, word_start)
        if k % 4096 == 4095:
            parts.append(packer.pop_full())  # keeps the concatenation buffer short
    parts.append(packer.finish())
    return concat_blocks(parts, int(seq_len))


def _truncate_pair(len_a: int, len_b: int, max_tokens: int, rng: random.Random) -> tuple[int, int, int, int]:
    """BERT's ``truncate_seq_pair`` on lengths: returns kept ranges ``(a0, a1, b0, b1)``.

    While too long, drop one token from the longer side (B on ties), from its front or back
    with probability 1/2 each (the same random draws as BERT's list version).
    """
    a0, a1, b0, b1 = 0, len_a, 0, len_b
    while (a1 - a0) + (b1 - b0) > max_tokens:
        trunc_a = (a1 - a0) > (b1 - b0)
        front = rng.random() < 0.5
        if trunc_a:
            a0, a1 = (a0 + 1, a1) if front else (a0, a1 - 1)
        else:
            b0, b1 = (b0 + 1, b1) if front else (b0, b1 - 1)
    return a0, a1, b0, b1


def _cat(pieces: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


def nsp_pairs(
    documents: Iterable[Sequence[tuple[Any, Any]]],
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    *,
    short_seq_prob: float = 0.1,
    seed: int = 0,
    dupe_factor: int = 1,
) -> dict[str, np.ndarray]:
    """BERT's next-sentence-prediction instances (``create_pretraining_data.py``).

    Args:
      documents: documents, each a sequence of sentences ``(ids, word_start)``. Empty
        sentences and documents are dropped first.
      seq_len: output length; pairs hold at most ``seq_len - 3`` tokens (>= 5).
      cls_id, sep_id, pad_id: special-token ids.
      short_seq_prob: per document, the probability of a random target length in
        ``[2, seq_len - 3]`` instead of the maximum (BERT: 0.1; SpanBERT-style runs use 0).
      seed: seeds a ``random.Random``; the draws follow BERT's code one for one (documents
        shuffled, instances built, instances shuffled).
      dupe_factor: passes over the data (BERT: 10 for static masking; 1 suffices when masking
        is dynamic).

    Per document: sentences are accumulated into a chunk until the target length is reached
    (or the document ends); A = the chunk's first ``a_end`` sentences (``a_end`` uniform in
    ``[1, len(chunk) - 1]``); B = the rest of the chunk (IsNext, label 0) with probability 1/2,
    otherwise (and always for one-sentence chunks) sentences from a random other document
    starting at a random sentence (label 1), and the chunk's unused sentences are put back for
    the next chunk. The pair is trimmed by `_truncate_pair`, then laid out as
    ``[CLS] A [SEP] B [SEP]`` with segment ids 0 then 1.
    """
    _check_seq_len(seq_len, 5)
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
    docs: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for doc in documents:
        sentences = [_as_piece(ids, ws) for ids, ws in doc]
        sentences = [s for s in sentences if len(s[0])]
        if sentences:
            docs.append(sentences)
    if not docs:
        return empty_blocks(seq_len, nsp=True)
    rng = random.Random(seed)
    rng.shuffle(docs)
    max_tokens = seq_len - 3
    instances: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]] = []
    for _ in range(dupe_factor):
        for doc_index, doc in enumerate(docs):
            target = max_tokens
            if rng.random() < short_seq_prob:
                target = rng.randint(2, max_tokens)
            chunk: list[tuple[np.ndarray, np.ndarray]] = []
            length = 0
            i = 0
            while i < len(doc):
                chunk.append(doc[i])
                length += len(doc[i][0])
                if i == len(doc) - 1 or length >= target:
                    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                    a = _cat(chunk[:a_end])
                    if len(chunk) == 1 or rng.random() < 0.5:
                        label = 1
                        target_b = target - len(a[0])
                        # Ten tries for another document, as BERT (a single document falls back
                        # to itself).
                        for _ in range(10):
                            other = rng.randint(0, len(docs) - 1)
                            if other != doc_index:
                                break
                        other_doc = docs[other]
                        start = rng.randint(0, len(other_doc) - 1)
                        b_pieces, b_len = [], 0
                        for j in range(start, len(other_doc)):
                            b_pieces.append(other_doc[j])
                            b_len += len(other_doc[j][0])
                            if b_len >= target_b:
                                break
                        b = _cat(b_pieces)
                        i -= len(chunk) - a_end  # put the unused sentences back
                    else:
                        label = 0
                        b = _cat(chunk[a_end:])
                    a0, a1, b0, b1 = _truncate_pair(len(a[0]), len(b[0]), max_tokens, rng)
                    instances.append((a[0][a0:a1], a[1][a0:a1], b[0][b0:b1], b[1][b0:b1], label))
                    chunk, length = [], 0
                i += 1
    rng.shuffle(instances)
    return _layout_pairs(instances, seq_len, cls_id, sep_id, pad_id)


def _layout_pairs(instances, seq_len: int, cls_id: int, sep_id: int, pad_id: int) -> dict[str, np.ndarray]:
    """``[CLS] A [SEP] B [SEP]`` rows from ``(a_ids, a_ws, b_ids, b_ws, label)`` tuples."""
    n = len(instances)
    out = empty_blocks(seq_len, nsp=True)
    out = {k: np.zeros((n,) + v.shape[1:], np.int32) for k, v in out.items()}
    out["input_ids"][:] = pad_id
    for r, (a_ids, a_ws, b_ids, b_ws, label) in enumerate(instances):
        la, lb = len(a_ids), len(b_ids)
        sep_a, end = la + 1, la + lb + 2
        row = out["input_ids"][r]
        row[0], row[1:sep_a], row[sep_a] = cls_id, a_ids, sep_id
        row[sep_a + 1 : end], row[end] = b_ids, sep_id
        ws = out["word_start"][r]
        ws[0], ws[1:sep_a], ws[sep_a] = 1, a_ws, 1
        ws[sep_a + 1 : end], ws[end] = b_ws, 1
        out["segment_ids"][r, sep_a + 1 : end + 1] = 1
        out["input_mask"][r, : end + 1] = 1
        out[NSP_FIELD][r] = label
    return out


def unigram_counts(blocks: Any, vocab_size: int, special_ids: Sequence[int] | None = None) -> np.ndarray:
    """Counts of each token id over the real, non-special tokens of packed blocks (float64).

    SpanBERT draws its random replacement tokens from this corpus unigram distribution
    (normalise with ``counts / counts.sum()``).

    Args:
      blocks: a block dict, a `PackedBlocks`, or any random-access source of block dicts (e.g.
        `ArrayRecordTextSource`, read in chunks).
      vocab_size: length of the result.
      special_ids: ids never counted; default the ``special_ids`` recorded by a `PackedBlocks` /
        `ArrayRecordTextSource` (ValueError when there are none, e.g. for a plain dict).
    """
    if special_ids is None:
        special_ids = getattr(blocks, "special_ids", None)
        if special_ids is None:
            raise ValueError("unigram_counts needs special_ids (e.g. tokenizer.special_ids) for this input")
    special = np.asarray(list(special_ids), np.int64)
    counts = np.zeros(vocab_size, np.float64)

    def add(ids: np.ndarray, mask: np.ndarray) -> None:
        ids = ids[(mask != 0) & ~np.isin(ids, special)]
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"token id {int(ids.max())} outside the vocabulary of {vocab_size}")
        counts[:] += np.bincount(ids, minlength=vocab_size)[:vocab_size]

    arrays = blocks if isinstance(blocks, dict) else getattr(blocks, "arrays", None)
    if arrays is not None:
        add(np.asarray(arrays["input_ids"]), np.asarray(arrays["input_mask"]))
        return counts
    for start in range(0, len(blocks), 4096):
        rows = [blocks[i] for i in range(start, min(start + 4096, len(blocks)))]
        add(np.stack([r["input_ids"] for r in rows]), np.stack([r["input_mask"] for r in rows]))
    return counts


class PackedBlocks:
    """In-memory packed blocks: a random-access source of block dicts for `make_text_pipeline`.

    Args:
      arrays: a block dict (`pack_blocks` / `nsp_pairs` output).
      meta: optional facts about the data (``special_ids``, ``vocab_size``, ``vocab_path``...).

    ``blocks[i]`` is ``{field: array[seq_len]}`` (plus a scalar ``nsp_label``).
    """

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict | None = None):
        missing = [k for k in BLOCK_FIELDS if k not in arrays]
        if missing:
            raise ValueError(f"block arrays lack {', '.join(missing)}")
        self.arrays = {k: np.asarray(v, np.int32) for k, v in arrays.items()}
        shape = self.arrays["input_ids"].shape
        if len(shape) != 2:
            raise ValueError(f"input_ids must be [num_blocks, seq_len], got shape {shape}")
        for k, v in self.arrays.items():
            want = shape[:1] if k == NSP_FIELD else shape
            if v.shape != want:
                raise ValueError(f"{k} has shape {v.shape}, expected {want}")
        self.meta = dict(meta or {})

    @property
    def seq_len(self) -> int:
        """Block length."""
        return int(self.arrays["input_ids"].shape[1])

    @property
    def has_nsp(self) -> bool:
        """Whether blocks carry ``nsp_label``."""
        return NSP_FIELD in self.arrays

    @property
    def special_ids(self) -> tuple[int, ...] | None:
        """Special-token ids recorded in ``meta`` (None when unknown)."""
        ids = self.meta.get("special_ids")
        return tuple(int(i) for i in ids) if ids is not None else None

    def __len__(self) -> int:
        return int(self.arrays["input_ids"].shape[0])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        return {k: v[index] for k, v in self.arrays.items()}

    def save_npz(self, path: str | os.PathLike) -> None:
        """Writes the arrays (and ``meta`` as JSON) to an ``.npz`` file."""
        import json

        with open(os.fspath(path), "wb") as f:
            np.savez(f, **self.arrays, __meta__=np.asarray(json.dumps(self.meta)))

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> "PackedBlocks":
        """Reads a file written by `save_npz`."""
        import json

        with np.load(os.fspath(path), allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"])) if "__meta__" in data else {}
            arrays = {k: data[k] for k in data.files if k != "__meta__"}
        return cls(arrays, meta)

    def __repr__(self) -> str:
        return f"PackedBlocks(num_blocks={len(self)}, seq_len={self.seq_len}, nsp={self.has_nsp})"
