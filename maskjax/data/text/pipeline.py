"""grain pipelines of packed text blocks, and a cached in-memory tokenize-and-pack helper.

`make_text_pipeline` follows the image pipeline's conventions (`maskjax.data.pipeline`):
per-process shard of the source, a global index shuffle reseeded every epoch, drop remainder,
repeat forever when training, one ordered pass for evaluation, and a checkpointable iterator::

    blocks = prepare_text_blocks("text", path="wiki.train.txt", vocab_path=vocab, seq_len=128,
                                 doc_format="wikitext", cache_dir="~/.cache/maskjax")
    it = iter(make_text_pipeline(blocks, global_batch=256, train=True, seed=0))
    batch = next(it)        # {"input_ids": int32[b, 128], "segment_ids", "input_mask", "word_start"}
    state = it.get_state()  # it.set_state(state) resumes at the next batch

Batches are dicts of int32 numpy arrays: ``input_ids, segment_ids, input_mask, word_start``
``[b, seq_len]`` and, for NSP data, ``nsp_label [b]``; ``b = global_batch // process_count``.
Feed them to `maskjax.data.pipeline.to_global_batch` for sharded ``jax.Array`` s. As with
images, the iterator state depends on ``num_workers`` (keep it fixed across a resume).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Sequence

import grain
import numpy as np

from maskjax.data.pipeline import batch_and_iterate, process_shard, to_global_batch
from maskjax.data.text.packing import BLOCK_FIELDS, NSP_FIELD, PackedBlocks, nsp_pairs, pack_blocks

__all__ = ["PackedBlocks", "make_text_pipeline", "prepare_text_blocks", "to_global_batch"]

# Bump when packing or tokenization changes, so stale caches are not reused.
_CACHE_VERSION = 1


def _process_seed(seed: int, process_index: int, stream: int) -> int:
    """A 32-bit seed per (seed, process, random stream), as the image pipeline derives them.

    grain seeds shuffles and random maps from (seed, index); mixing in the process index keeps
    the processes' streams independent.
    """
    return int(np.random.SeedSequence([seed, process_index, stream]).generate_state(1)[0])


class BlockFields(grain.transforms.Map):
    """Keeps the block fields as int32 (drops anything else a source may carry)."""

    def map(self, element: dict) -> dict:
        """Returns the known fields of one block as int32 arrays (fresh copies)."""
        # Copies: `PackedBlocks` hands out views of its arrays, and a transform that edits a
        # block in place (e.g. masking) must not change the data of later epochs.
        out = {k: np.array(element[k], np.int32) for k in BLOCK_FIELDS}
        if NSP_FIELD in element:
            out[NSP_FIELD] = np.int32(element[NSP_FIELD])
        return out


def make_text_pipeline(
    blocks_source: Any,
    *,
    global_batch: int,
    train: bool,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    transforms: Sequence[Any] = (),
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
    """Builds this process's ``grain.IterDataset`` of text batches (module docstring).

    Steps: source -> seed -> (drop_remainder) trim to a multiple of ``process_count`` ->
    shard ``[process_index::process_count]`` -> (train) shuffle reseeded per epoch -> fields ->
    ``transforms`` -> batch of ``global_batch // process_count`` -> repeat -> iter dataset ->
    (num_workers > 0) ``mp_prefetch``.

    Args:
      blocks_source: random-access source of block dicts (`PackedBlocks`,
        `ArrayRecordTextSource`).
      global_batch: batch size summed over processes; must divide by ``process_count``.
      train: shuffle and repeat forever (unless ``num_epochs``); else one ordered pass.
      seed: seeds the shuffle and random transforms (same seed -> same batches).
      process_index, process_count: this process's shard; default ``jax.process_index()`` /
        ``jax.process_count()``.
      num_workers: grain worker processes (0 = threads of this process).
      num_epochs: passes over the data; None = forever when training, one pass otherwise.
      drop_remainder: drop each epoch's last partial batch (and trim the source so every
        process yields the same number of batches, which multi-host collectives need).
      transforms: per-block ``grain.transforms.Map`` / ``RandomMap`` objects applied before
        batching (e.g. dynamic masking); random ones get a per-process seed each.
      read_options: grain read threads / buffer (default 4 threads, 64 elements ahead).
    """
    ds, process_index, per_process_batch = process_shard(
        blocks_source, global_batch=global_batch, seed=seed, process_index=process_index,
        process_count=process_count, num_epochs=num_epochs, num_workers=num_workers,
        drop_remainder=drop_remainder, unit="blocks")
    if train:
        # Per-process seed; repeat() past the first epoch reseeds it with (seed + epoch).
        ds = ds.shuffle(seed=_process_seed(seed, process_index, 0))
    ds = ds.map(BlockFields())
    for stream, transform in enumerate(transforms, start=1):
        if isinstance(transform, grain.transforms.RandomMap):
            ds = ds.random_map(transform, seed=_process_seed(seed, process_index, 100 + stream))
        else:
            ds = ds.map(transform)
    return batch_and_iterate(ds, per_process_batch, train=train, num_epochs=num_epochs,
                             num_workers=num_workers, drop_remainder=drop_remainder, read_options=read_options)


def _source_key(kind: str, path, name, split, data_dir, text_field, doc_format) -> dict:
    """What identifies the raw text for the cache (file stats, or the TFDS coordinates)."""
    from maskjax.data.text.sources import resolve_paths

    if kind == "text":
        files = []
        for p in resolve_paths(path):
            st = os.stat(p)
            files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
        return {"kind": kind, "files": files, "doc_format": doc_format}
    data_dir = os.path.abspath(os.fspath(data_dir)) if data_dir is not None else None
    return {"kind": kind, "name": name, "split": split, "data_dir": data_dir, "text_field": text_field}


def prepare_text_blocks(
    kind: str,
    path: Any = None,
    name: str | None = None,
    split: str | None = None,
    data_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    *,
    vocab_path: str | os.PathLike,
    seq_len: int,
    nsp: bool = False,
    doc_format: str = "blank_line",
    lowercase: bool = True,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    short_seq_prob: float = 0.1,
    doc_separator: bool = True,
    max_documents: int | None = None,
) -> PackedBlocks:
    """Tokenizes and packs a (small) corpus in memory; the result is cached as ``.npz``.

    Args:
      kind, path, name, split, data_dir, text_field, doc_format: the text source, as
        `open_text_source` (``"text"`` or ``"tfds_text"``; ``"array_record_text"`` data is
        already packed: open it with `open_text_source` instead).
      vocab_path, lowercase: the tokenizer (`load_tokenizer`).
      seq_len: block length.
      nsp: BERT sentence pairs with ``nsp_label`` (`nsp_pairs`; WikiText paragraphs are split
        into sentences with `split_wikitext_sentences`) instead of contiguous blocks
        (`pack_blocks`).
      cache_dir: where to keep ``text-blocks-<hash>.npz``; the hash covers the source (file
        paths, sizes, mtimes / TFDS coordinates), the vocabulary's SHA-256 and every argument
        that changes the blocks. None disables caching.
      seed, short_seq_prob: NSP randomness (see `nsp_pairs`).
      doc_separator: ``[SEP]`` between documents in contiguous packing.
      max_documents: only the first documents (smoke runs).

    Returns:
      `PackedBlocks` whose ``meta`` records ``special_ids``, ``vocab_size``, ``vocab_path``.
    """
    from maskjax.data.text.convert import iter_documents, tokenize_documents
    from maskjax.data.text.sources import open_text_source, split_wikitext_sentences
    from maskjax.data.text.tokenizer import load_tokenizer, vocab_sha256

    if kind not in ("text", "tfds_text"):
        raise ValueError(
            f"prepare_text_blocks reads kind 'text' or 'tfds_text', got {kind!r} "
            "(array_record_text is already packed: use open_text_source)"
        )
    tokenizer = load_tokenizer(vocab_path, lowercase=lowercase)
    cache_path = None
    if cache_dir is not None:
        key = {
            "source": _source_key(kind, path, name, split, data_dir, text_field, doc_format),
            "vocab_sha256": vocab_sha256(vocab_path),
            "lowercase": bool(lowercase),
            "seq_len": int(seq_len),
            "nsp": bool(nsp),
            "seed": int(seed) if nsp else None,
            "short_seq_prob": float(short_seq_prob) if nsp else None,
            "doc_separator": bool(doc_separator) if not nsp else None,
            "max_documents": max_documents,
            "version": _CACHE_VERSION,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        cache_dir = os.path.expanduser(os.fspath(cache_dir))
        cache_path = os.path.join(cache_dir, f"text-blocks-{digest}.npz")
        if os.path.isfile(cache_path):
            return PackedBlocks.load_npz(cache_path)

    source = open_text_source(kind, path=path, name=name, split=split, data_dir=data_dir,
                              text_field=text_field, doc_format=doc_format)
    docs = iter_documents(source, max_documents)
    tok = tokenizer
    if nsp:
        splitter = split_wikitext_sentences if doc_format == "wikitext" else None
        tokenized = tokenize_documents(docs, tok, sentences=True, sentence_splitter=splitter)
        arrays = nsp_pairs(tokenized, seq_len, tok.cls_id, tok.sep_id, tok.pad_id,
                           short_seq_prob=short_seq_prob, seed=seed)
    else:
        arrays = pack_blocks(tokenize_documents(docs, tok), seq_len, tok.cls_id, tok.sep_id,
                             tok.pad_id, doc_separator=doc_separator)
    if len(arrays["input_ids"]) == 0:
        raise ValueError(f"{source!r} produced no blocks of length {seq_len} (too little text)")
    meta = {
        "special_ids": list(tok.special_ids),
        "vocab_size": tok.vocab_size,
        "vocab_path": tok.vocab_path,
        "seq_len": int(seq_len),
        "nsp": bool(nsp),
    }
    blocks = PackedBlocks(arrays, meta)
    if cache_path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".npz")
        os.close(fd)
        try:
            blocks.save_npz(tmp)
            os.replace(tmp, cache_path)  # readers never see a half-written cache
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return blocks
