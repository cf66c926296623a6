"""The text modality: how the trainer opens, tokenizes and batches text for MLM methods.

``prepare`` resolves the vocabulary once per run: ``data.vocab_path`` if given (any standard
``vocab.txt``), the one recorded by ``maskjax tokenize`` for ArrayRecord data, or a WordPiece
vocabulary of ``data.vocab_size`` trained on the training files and cached in
``data.cache_dir`` (default ``<workdir>/cache``). Small corpora are tokenized and packed in
memory (cached as ``.npz``); ``maskjax tokenize`` output is read as is (the fast path).
"""

from __future__ import annotations

import os

from maskjax.data.modalities import Modality, register_modality

TEXT_KINDS = ("text", "tfds_text", "array_record_text")

# Stand-in special ids of synthetic text batches (bench, fitcheck): no vocabulary file is read.
SYNTHETIC_IDS = dict(cls_id=2, sep_id=3, pad_id=0, mask_id=4)


def _split_args(config, split: str) -> tuple[object, str | None]:
    d = config.data
    path, name = (d.path, d.split) if split == "train" else (d.eval_path or d.path, d.eval_split)
    if isinstance(path, str) and "," in path:  # a comma-separated list of files or globs
        path = [p.strip() for p in path.split(",") if p.strip()]
    return path, name


@register_modality("text")
class TextModality(Modality):
    """WordPiece-tokenized text packed into fixed-length ``[CLS] ... [SEP]`` blocks."""

    def prepare(self, config, workdir: str) -> None:
        """Fills ``data.vocab_path`` (training and caching a vocabulary when it is unset)."""
        from maskjax.data.text import ArrayRecordTextSource, ensure_vocab, load_tokenizer
        from maskjax.errors import ConfigError

        d = config.data
        if not d.cache_dir:
            d.cache_dir = os.path.join(workdir, "cache")
        if not d.vocab_path:
            if d.kind == "array_record_text":
                d.vocab_path = ArrayRecordTextSource(d.path).metadata["vocab_path"]
            elif d.kind == "text":
                d.vocab_path = ensure_vocab(_files(d.path), d.vocab_size, d.cache_dir, lowercase=d.lowercase)
            else:
                raise ConfigError(f"data.kind={d.kind!r} needs data.vocab_path (a vocab.txt; train one "
                                 "with `maskjax train-tokenizer --input FILES --vocab-size N --output vocab.txt`)")
        tokenizer = load_tokenizer(d.vocab_path, lowercase=d.lowercase)
        if tokenizer.vocab_size > config.model.vocab_size:
            raise ConfigError(f"the vocabulary {d.vocab_path} has {tokenizer.vocab_size} tokens but "
                             f"model.vocab_size is {config.model.vocab_size}; raise model.vocab_size")

    def open_source(self, config, split: str):
        """Packed blocks of ``split`` ("train" or "eval"): ArrayRecord, or tokenized in memory."""
        from maskjax.data.text import ArrayRecordTextSource, prepare_text_blocks

        d = config.data
        path, name = _split_args(config, split)
        if d.kind == "array_record_text":
            source = ArrayRecordTextSource(path)
            if d.vocab_path:
                source.check_vocab(d.vocab_path)
            return source
        return prepare_text_blocks(
            d.kind, path=path, name=d.name, split=name, data_dir=d.data_dir, text_field=d.text_field,
            vocab_path=d.vocab_path, seq_len=d.seq_len, nsp=d.nsp, doc_format=d.doc_format,
            lowercase=d.lowercase, cache_dir=d.cache_dir, seed=d.shuffle_seed)

    def make_pipeline(self, config, source, *, train: bool):
        """Shuffled, repeated batches of blocks for training; one ordered pass for evaluation."""
        from maskjax.data.text import make_text_pipeline

        d = config.data
        return make_text_pipeline(source, global_batch=config.global_batch, train=train, seed=d.shuffle_seed,
                                  num_workers=d.num_workers)

    def batch_spec(self, config) -> dict:
        """``input_ids``, ``segment_ids``, ``input_mask``, ``word_start`` i32[B, seq_len] (+ ``nsp_label``)."""
        import jax
        import jax.numpy as jnp

        b, length = int(config.global_batch), int(config.data.seq_len)
        spec = {k: jax.ShapeDtypeStruct((b, length), jnp.int32)
                for k in ("input_ids", "segment_ids", "input_mask", "word_start")}
        if config.data.get("nsp"):
            spec["nsp_label"] = jax.ShapeDtypeStruct((b,), jnp.int32)
        return spec

    def synthetic_batch(self, config, spec: dict, seed: int = 0) -> dict:
        """Random ids in [5, vocab) framed by :data:`SYNTHETIC_IDS`' [CLS] ... [SEP], all positions real."""
        import numpy as np

        out = super().synthetic_batch(config, spec, seed)
        rng = np.random.default_rng(seed)
        ids = rng.integers(5, int(config.model.vocab_size), out["input_ids"].shape, dtype=np.int32)
        ids[:, 0], ids[:, -1] = SYNTHETIC_IDS["cls_id"], SYNTHETIC_IDS["sep_id"]
        out["input_ids"] = ids
        out["input_mask"] = np.ones_like(ids)
        out["word_start"] = np.ones_like(ids)
        return out

    def check(self, config, errors: list[str]) -> None:
        """Source fields, block length vs positions, NSP data vs NSP head, prediction count."""
        d, m = config.data, config.model
        if d.kind not in TEXT_KINDS:
            errors.append(f"unknown data.kind {d.kind!r} for text; use one of {TEXT_KINDS}")
        elif d.kind in ("text", "array_record_text"):
            if not d.path:
                errors.append(f"data.path is not set (data.kind={d.kind!r} reads text from it)")
            for field in ("path", "eval_path"):
                value = d.get(field)
                if value and d.kind == "text" and not _files(value):
                    errors.append(f"data.{field} {value!r} matches no file")
                elif value and d.kind == "array_record_text" and not os.path.isdir(value):
                    errors.append(f"data.{field} {value!r} is not a directory written by `maskjax tokenize`")
        elif not d.name:
            errors.append("data.name is not set (data.kind='tfds_text' needs a TFDS dataset name)")
        if d.vocab_path and not os.path.exists(d.vocab_path):
            errors.append(f"data.vocab_path {d.vocab_path!r} does not exist")
        if d.seq_len > m.max_positions:
            errors.append(f"data.seq_len {d.seq_len} exceeds model.max_positions {m.max_positions}")
        if bool(d.nsp) != bool(m.get("nsp", False)):
            errors.append(f"data.nsp={d.nsp} but model.nsp={m.get('nsp')}: next-sentence prediction needs both "
                          "(sentence-pair data and the NSP head)")
        p = config.masking.get("max_predictions")
        if p is not None and not 1 <= p <= d.seq_len:
            errors.append(f"masking.max_predictions {p} must be between 1 and data.seq_len {d.seq_len}")


def _files(path) -> list[str]:
    """The files a ``data.path`` names: a path, a glob, or a comma-separated list of either."""
    from maskjax.data.text.sources import resolve_paths

    paths = path if isinstance(path, (list, tuple)) else [p.strip() for p in str(path).split(",") if p.strip()]
    try:
        return resolve_paths(paths)
    except (FileNotFoundError, ValueError):
        return []


# The character-level modality ("chars") lives beside the WordPiece one; importing it here registers it
# when the modalities are discovered (only modules named "modality" are walked).
from maskjax.data.text import chars as _chars  # noqa: E402,F401
