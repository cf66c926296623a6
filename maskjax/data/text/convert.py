"""Tokenize once: packed text blocks in ArrayRecord shards, plus the tokenizer CLIs.

Record format: each record is one block, the bytes of a ``.npy`` file (``numpy.save``,
``allow_pickle=False``) holding a single structured row::

    input_ids   int32[seq_len]
    segment_ids uint8[seq_len]
    input_mask  uint8[seq_len]
    word_start  uint8[seq_len]
    nsp_label   int32            (only when the data was built with --nsp)

The ``.npy`` header names the fields, shapes and dtypes, so a record describes itself; reading
never unpickles (safe on untrusted shards) and `ArrayRecordTextSource` returns every field as
int32. ``metadata.json`` beside the shards records the format version, ``seq_len``, ``nsp``,
the vocabulary (path, SHA-256, size, special ids, lower-casing), the block count and the shard
list. It is written last, so a directory with metadata is complete.

CLIs (wired into ``maskjax`` by ``maskjax/cli.py``)::

    maskjax train-tokenizer --input a.txt b.txt --vocab-size 8000 --output vocab.txt [--cased]
    maskjax tokenize --vocab vocab.txt --input FILES... [--doc-format wikitext] \\
        [--tfds NAME --split S --data-dir D] --seq-len 128 [--nsp] --output DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from maskjax.data.text.packing import BlockPacker, nsp_pairs
# The record format and its reader are shared with sources.open_text_source; re-exported here,
# where they were first defined.
from maskjax.data.text.records import (  # noqa: F401
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_FILE,
    ArrayRecordTextSource,
    decode_block,
    encode_blocks,
    record_dtype,
)
from maskjax.data.text.tokenizer import WordPieceTokenizer, load_tokenizer, vocab_sha256
from maskjax.progress import phase, progress

DEFAULT_SHARD_SIZE = 65536
# Lines handed to the Rust tokenizer per call: large enough to use its thread pool well.
ENCODE_BATCH_LINES = 8192


def iter_documents(source: Any, max_documents: int | None = None) -> Iterator[list[str]]:
    """Documents of a random-access source (``len`` + ``[]``) or any iterable of them."""
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        n = len(source) if max_documents is None else min(len(source), max_documents)
        for i in range(n):
            yield source[i]
        return
    for i, doc in enumerate(source):
        if max_documents is not None and i >= max_documents:
            return
        yield doc


def tokenize_documents(
    documents: Iterable[Sequence[str]],
    tokenizer: WordPieceTokenizer,
    *,
    sentences: bool = False,
    sentence_splitter: Callable[[str], list[str]] | None = None,
    batch_lines: int = ENCODE_BATCH_LINES,
) -> Iterator[Any]:
    """Tokenizes documents in large batches; yields one item per non-empty document.

    With ``sentences=False`` an item is the document's ``(ids, word_start)`` (its lines
    concatenated, no separators); with ``sentences=True`` it is a list of ``(ids, word_start)``
    per line (after ``sentence_splitter``, e.g. `split_wikitext_sentences`), for `nsp_pairs`.
    """
    pending: list[list[str]] = []
    count = 0

    def flush():
        flat = [line for doc in pending for line in doc]
        encoded = tokenizer.encode_batch(flat) if flat else []
        pos = 0
        for doc in pending:
            pieces = [p for p in encoded[pos : pos + len(doc)] if len(p[0])]
            pos += len(doc)
            if not pieces:
                continue
            if sentences:
                yield pieces
            else:
                yield np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])

    for doc in documents:
        lines = [l for l in doc if l and l.strip()]
        if sentence_splitter is not None:
            lines = [s for l in lines for s in sentence_splitter(l)]
        pending.append(lines)
        count += len(lines)
        if count >= batch_lines:
            yield from flush()
            pending, count = [], 0
    yield from flush()


def _counted(documents: Iterable, bar, every: int = 16) -> Iterator:
    """``documents`` unchanged, counted on ``bar`` in batches of ``every`` (cheaper than per document)."""
    k = 0
    for k, doc in enumerate(documents, 1):
        yield doc
        if k % every == 0:
            bar.update(every)
    bar.update(k % every)


def _shard_name(i: int) -> str:
    return f"blocks-{i:05d}.array_record"


class _ShardWriter:
    """Writes records into consecutive shards of at most ``shard_size`` records."""

    def __init__(self, out_dir: str, shard_size: int):
        self.out_dir, self.shard_size = out_dir, shard_size
        self.shards: list[str] = []
        self.counts: list[int] = []
        self._writer = None

    def write(self, records: list[bytes]) -> None:
        from array_record.python import array_record_module

        for rec in records:
            if self._writer is None or self.counts[-1] >= self.shard_size:
                self.close()
                name = _shard_name(len(self.shards))
                # group_size:1: one record per chunk, so random reads decode a single block
                # (specs/jax_ecosystem.md gotcha G5).
                self._writer = array_record_module.ArrayRecordWriter(
                    os.path.join(self.out_dir, name), "group_size:1"
                )
                self.shards.append(name)
                self.counts.append(0)
            self._writer.write(rec)
            self.counts[-1] += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def tokenize_to_array_record(
    source: Any,
    tokenizer: WordPieceTokenizer | str | os.PathLike,
    out_dir: str | os.PathLike,
    seq_len: int,
    nsp: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    seed: int = 0,
    *,
    short_seq_prob: float = 0.1,
    doc_separator: bool = True,
    sentence_splitter: Callable[[str], list[str]] | None = None,
    max_documents: int | None = None,
    source_info: dict | None = None,
) -> dict[str, Any]:
    """Tokenizes a document source, packs it and writes ArrayRecord shards + metadata.json.

    Args:
      source: documents (lists of lines): a `TextFileSource`, `TfdsTextSource` or any list.
      tokenizer: a `WordPieceTokenizer` or a vocab.txt path (uncased).
      out_dir: output directory (created; an old metadata.json is removed first).
      seq_len: block length.
      nsp: sentence-pair blocks with ``nsp_label`` (`nsp_pairs`; needs all tokenized documents
        in memory for random-next sampling, as BERT's script does) instead of streamed
        contiguous blocks (`BlockPacker`, bounded memory).
      shard_size: blocks per shard.
      seed: NSP randomness (contiguous packing is deterministic).
      short_seq_prob, doc_separator: see `nsp_pairs` / `pack_blocks`.
      sentence_splitter: splits each line into sentences for NSP (e.g.
        `split_wikitext_sentences` for WikiText paragraphs); ignored without ``nsp``.
      max_documents: only the first documents (smoke runs).
      source_info: extra JSON-able facts recorded in the metadata.

    Returns:
      The metadata dict written to ``out_dir/metadata.json``.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not isinstance(tokenizer, WordPieceTokenizer):
        tokenizer = load_tokenizer(tokenizer)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, METADATA_FILE)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # a failed run must not leave old metadata over new shards
    for name in os.listdir(out_dir):
        if name.startswith("blocks-") and name.endswith(".array_record"):
            os.remove(os.path.join(out_dir, name))  # stale shards of a previous, longer run
    tok = tokenizer
    total = None
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):  # as iter_documents reads it
        total = len(source) if max_documents is None else min(len(source), max_documents)
    bar = progress(total=total, desc="tokenize", unit="doc")
    docs = _counted(iter_documents(source, max_documents), bar)
    writer = _ShardWriter(out_dir, shard_size)
    try:
        if nsp:
            with bar:
                tokenized = list(tokenize_documents(docs, tok, sentences=True, sentence_splitter=sentence_splitter))
            with phase(f"tokenize: pairing sentences of {len(tokenized)} documents"):
                blocks = nsp_pairs(tokenized, seq_len, tok.cls_id, tok.sep_id, tok.pad_id,
                                   short_seq_prob=short_seq_prob, seed=seed)
            n_blocks = len(blocks["input_ids"])
            with progress(total=n_blocks, desc="tokenize: writing blocks", unit="block") as out_bar:
                for start in range(0, n_blocks, 4096):
                    writer.write(encode_blocks({k: v[start : start + 4096] for k, v in blocks.items()}, True))
                    out_bar.update(min(4096, n_blocks - start))
        else:
            packer = BlockPacker(seq_len, tok.cls_id, tok.sep_id, tok.pad_id, doc_separator)
            with bar:
                for k, (ids, ws) in enumerate(tokenize_documents(docs, tok)):
                    packer.add(ids, ws)
                    if k % 1024 == 1023:
                        writer.write(encode_blocks(packer.pop_full(), False))
                        bar.set_postfix_str(f"{sum(writer.counts)} blocks")
                writer.write(encode_blocks(packer.finish(), False))
                bar.set_postfix_str(f"{sum(writer.counts)} blocks")
    finally:
        bar.close()
        writer.close()
    num_blocks = int(sum(writer.counts))
    if num_blocks == 0:
        raise ValueError("the source produced no blocks (no text, or less than half a block)")
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "record_layout": "numpy .npy bytes of one structured row: "
        + ", ".join(f"{n} {record_dtype(seq_len, nsp)[n].str}" for n in record_dtype(seq_len, nsp).names),
        "seq_len": int(seq_len),
        "nsp": bool(nsp),
        "num_records": num_blocks,
        "shards": writer.shards,
        "shard_num_records": writer.counts,
        "vocab_path": tok.vocab_path,
        "vocab_sha256": vocab_sha256(tok.vocab_path),
        "vocab_size": tok.vocab_size,
        "lowercase": tok.lowercase,
        "special_ids": list(tok.special_ids),
        "doc_separator": bool(doc_separator) if not nsp else None,
        "short_seq_prob": float(short_seq_prob) if nsp else None,
        "seed": int(seed),
        "source": source_info if source_info is not None else repr(source)[:500],
    }
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    os.replace(tmp, meta_path)
    return meta


def build_tokenize_parser(prog: str = "maskjax tokenize") -> argparse.ArgumentParser:
    """Argument parser of ``maskjax tokenize``."""
    p = argparse.ArgumentParser(prog=prog, description="Tokenize and pack text into ArrayRecord blocks "
                                "(read them with kind='array_record_text').")
    p.add_argument("--vocab", required=True, help="WordPiece vocab.txt")
    p.add_argument("--input", nargs="+", default=None, help="text files or globs")
    p.add_argument("--doc-format", default="blank_line", choices=("blank_line", "wikitext"))
    p.add_argument("--tfds", default=None, metavar="NAME", help="TFDS dataset instead of --input")
    p.add_argument("--split", default=None, help="TFDS split")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir")
    p.add_argument("--text-field", default="text", help="TFDS text feature (default text)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--nsp", action="store_true", help="BERT sentence pairs with nsp_label")
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    p.add_argument("--no-doc-separator", action="store_true", help="no [SEP] between documents")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="blocks per shard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-documents", type=int, default=None)
    p.add_argument("--cased", action="store_true", help="cased vocabulary (no lower-casing)")
    p.add_argument("--output", required=True, help="output directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``maskjax tokenize`` entry point; returns 0 on success, 2 on bad input."""
    from maskjax.data.text.sources import TextFileSource, TfdsTextSource, split_wikitext_sentences

    args = build_tokenize_parser().parse_args(argv)
    try:
        if (args.input is None) == (args.tfds is None):
            raise ValueError("give either --input FILES or --tfds NAME (not both)")
        if args.tfds is not None:
            if args.split is None:
                raise ValueError("--tfds needs --split")
            source = TfdsTextSource(args.tfds, args.split, args.data_dir, args.text_field)
            info = {"tfds": args.tfds, "split": args.split, "data_dir": args.data_dir}
        else:
            source = TextFileSource(args.input, doc_format=args.doc_format)
            info = {"files": source.paths, "doc_format": args.doc_format}
        tokenizer = load_tokenizer(args.vocab, lowercase=not args.cased)
        splitter = split_wikitext_sentences if args.nsp and args.doc_format == "wikitext" else None
        meta = tokenize_to_array_record(
            source, tokenizer, args.output, args.seq_len, nsp=args.nsp, shard_size=args.shard_size,
            seed=args.seed, short_seq_prob=args.short_seq_prob, doc_separator=not args.no_doc_separator,
            sentence_splitter=splitter, max_documents=args.max_documents, source_info=info,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {meta['num_records']} blocks of {meta['seq_len']} tokens into "
          f"{len(meta['shards'])} shard(s) in {args.output}")
    return 0


def build_train_tokenizer_parser(prog: str = "maskjax train-tokenizer") -> argparse.ArgumentParser:
    """Argument parser of ``maskjax train-tokenizer``."""
    p = argparse.ArgumentParser(prog=prog, description="Train a BERT WordPiece vocab.txt.")
    p.add_argument("--input", nargs="+", required=True, help="training text files or globs")
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--cased", action="store_true", help="keep case and accents")
    p.add_argument("--fast", action="store_true", help="HF's Rust trainer: faster, not reproducible")
    p.add_argument("--output", required=True, help="vocab.txt to write")
    return p


def main_train_tokenizer(argv: Sequence[str] | None = None) -> int:
    """``maskjax train-tokenizer`` entry point; returns 0 on success, 2 on bad input."""
    from maskjax.data.text.sources import resolve_paths
    from maskjax.data.text.tokenizer import train_wordpiece

    args = build_train_tokenizer_parser().parse_args(argv)
    try:
        files = resolve_paths(args.input)
        train_wordpiece(files, args.vocab_size, args.output, lowercase=not args.cased,
                        min_frequency=args.min_frequency, deterministic=not args.fast)
        tok = load_tokenizer(args.output, lowercase=not args.cased)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote a vocabulary of {tok.vocab_size} tokens to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
