"""Text input side of masked-LM pre-training: WordPiece tokenizer, document sources, packing
into BERT blocks (contiguous or NSP pairs), grain pipelines and tokenize-once ArrayRecord data.

Typical use::

    from maskjax.data import text
    vocab = text.ensure_vocab(["wiki.train.txt"], 8000, cache_dir="~/.cache/maskjax")
    blocks = text.prepare_text_blocks("text", path="wiki.train.txt", vocab_path=vocab,
                                      seq_len=128, doc_format="wikitext", cache_dir="~/.cache/maskjax")
    batches = iter(text.make_text_pipeline(blocks, global_batch=64, train=True, seed=0))
"""
from __future__ import annotations

from maskjax.data.text.convert import (
    ArrayRecordTextSource,
    main as tokenize_main,
    main_train_tokenizer,
    tokenize_documents,
    tokenize_to_array_record,
)
from maskjax.data.text.packing import (
    BLOCK_FIELDS,
    NSP_FIELD,
    BlockPacker,
    PackedBlocks,
    nsp_pairs,
    pack_blocks,
    unigram_counts,
)
from maskjax.data.text.pipeline import make_text_pipeline, prepare_text_blocks
from maskjax.data.text.sources import (
    DOC_FORMATS,
    TextFileSource,
    TfdsTextSource,
    open_text_source,
    split_wikitext_sentences,
)
from maskjax.data.text.tokenizer import (
    SPECIAL_TOKENS,
    WordPieceTokenizer,
    ensure_vocab,
    load_tokenizer,
    train_wordpiece,
)

__all__ = [
    "ArrayRecordTextSource",
    "BLOCK_FIELDS",
    "BlockPacker",
    "DOC_FORMATS",
    "NSP_FIELD",
    "PackedBlocks",
    "SPECIAL_TOKENS",
    "TextFileSource",
    "TfdsTextSource",
    "WordPieceTokenizer",
    "ensure_vocab",
    "load_tokenizer",
    "main_train_tokenizer",
    "make_text_pipeline",
    "nsp_pairs",
    "open_text_source",
    "pack_blocks",
    "prepare_text_blocks",
    "split_wikitext_sentences",
    "tokenize_documents",
    "tokenize_main",
    "tokenize_to_array_record",
    "train_wordpiece",
    "unigram_counts",
]
