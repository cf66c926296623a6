"""BERT-style WordPiece tokenization on top of Hugging Face ``tokenizers``.

The tokenizer reproduces BERT's ``FullTokenizer`` / ``BertTokenizerFast`` exactly: BertNormalizer
(clean text, CJK spacing, lower-casing + accent stripping when uncased), BertPreTokenizer
(whitespace and punctuation split) and greedy longest-match-first WordPiece with ``##``
continuation pieces and at most 100 characters per word.

Special-token ids are always looked up in the vocabulary, never assumed: vocabularies trained by
`train_wordpiece` put ``[PAD] [UNK] [CLS] [SEP] [MASK]`` at ids 0..4, while the released
``bert-base-uncased/vocab.txt`` has ``[PAD]=0 [UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103``.

Usage::

    vocab = ensure_vocab(["corpus.txt"], vocab_size=8000, cache_dir="~/.cache/maskjax")
    tok = load_tokenizer(vocab)
    [(ids, word_start)] = tok.encode_batch(["Hello unaffable world"])  # no [CLS]/[SEP] added
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from typing import Iterable, Sequence

import numpy as np

from maskjax.progress import phase

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION_PREFIX = "##"
# BERT's WordpieceTokenizer turns longer words into a single [UNK].
MAX_INPUT_CHARS_PER_WORD = 100


def read_vocab(vocab_path: str | os.PathLike) -> dict[str, int]:
    """Reads a one-token-per-line ``vocab.txt`` into ``{token: line index}``.

    Surrounding whitespace is stripped as BERT's ``load_vocab`` does; a duplicated token keeps
    its last line's id (also as BERT), with a warning. Raises FileNotFoundError when the file
    is missing and ValueError when it is empty or lacks one of ``[PAD] [UNK] [CLS] [SEP]
    [MASK]``.
    """
    path = os.fspath(vocab_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    vocab: dict[str, int] = {}
    duplicates = []
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            token = line.rstrip("\n").strip()
            if token in vocab:
                duplicates.append(token)
            vocab[token] = index  # the last occurrence wins, as in BERT's load_vocab
    if duplicates:
        warnings.warn(
            f"{path}: {len(duplicates)} token(s) appear more than once (e.g. {duplicates[0]!r}); "
            "the last occurrence's id is used, as BERT does",
            stacklevel=3,
        )
    if not vocab:
        raise ValueError(f"{path}: the vocabulary file is empty")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(
            f"{path}: the vocabulary lacks the special token(s) {', '.join(missing)}; a BERT "
            f"vocab.txt must contain all of {' '.join(SPECIAL_TOKENS)}"
        )
    return vocab


def _build_backend(vocab: dict[str, int], lowercase: bool):
    """A ``tokenizers.Tokenizer`` configured exactly like ``BertTokenizerFast`` (no post-processor)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(
        models.WordPiece(
            vocab,
            unk_token="[UNK]",
            continuing_subword_prefix=CONTINUATION_PREFIX,
            max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
        )
    )
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    # Registered as special (their ids already exist) so decode can skip them and a literal
    # "[MASK]" in text stays one token, as in BertTokenizerFast.
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


class WordPieceTokenizer:
    """A BERT WordPiece tokenizer loaded from a ``vocab.txt`` (see `load_tokenizer`).

    Attributes:
      vocab_path: the vocabulary file (absolute path).
      lowercase: whether text is lower-cased and accent-stripped (uncased BERT).
      vocab_size: number of lines of the vocabulary (ids are ``0 .. vocab_size - 1``).
      pad_id, unk_id, cls_id, sep_id, mask_id: special-token ids, looked up in the vocabulary.
      special_ids: ``(pad_id, unk_id, cls_id, sep_id, mask_id)``.

    Pickling keeps only the path, the flag and the vocabulary; the Rust tokenizer is rebuilt
    lazily in the receiving process (grain workers), so pickles stay small and fork-safe.
    """

    def __init__(self, vocab_path: str | os.PathLike, lowercase: bool = True):
        self.vocab_path = os.path.abspath(os.fspath(vocab_path))
        self.lowercase = bool(lowercase)
        self._vocab = read_vocab(self.vocab_path)
        self._inverse: list[str] | None = None
        # Ids are line numbers, so the size is the line count even if a token is duplicated.
        self.vocab_size = max(self._vocab.values()) + 1
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self._vocab[t] for t in SPECIAL_TOKENS
        )
        self.special_ids = (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)
        self._backend = None
        self._lock = threading.Lock()

    @property
    def backend(self):
        """The underlying ``tokenizers.Tokenizer`` (built on first use in each process)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = _build_backend(self._vocab, self.lowercase)
        return self._backend

    def encode_batch(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Tokenizes texts WITHOUT adding ``[CLS]``/``[SEP]``.

        Returns one ``(ids int32[n], word_start bool[n])`` per text. ``word_start[i]`` is True
        when token i is the first piece of a (pre-tokenized) word, i.e. not a ``##``
        continuation; it comes from the encodings' word ids, so an ``[UNK]`` standing for a whole
        word is a word start too.
        """
        if isinstance(texts, str):
            raise ValueError("encode_batch takes a list of strings, not a single string")
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        out = []
        for enc in encodings:
            ids = np.asarray(enc.ids, np.int32)
            words = np.asarray([-1 if w is None else w for w in enc.word_ids], np.int64)
            start = np.ones(len(ids), bool)
            if len(ids) > 1:
                start[1:] = words[1:] != words[:-1]
            out.append((ids, start))
        return out

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """`encode_batch` for a single text."""
        return self.encode_batch([text])[0]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Joins pieces back into text (``##`` pieces glued to their word; padding included
        unless ``skip_special_tokens``)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of ``token_id`` (IndexError when out of range)."""
        if self._inverse is None:
            inverse = [""] * self.vocab_size
            for token, index in self._vocab.items():
                inverse[index] = token
            self._inverse = inverse
        return self._inverse[int(token_id)]

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or None when it is not in the vocabulary."""
        return self._vocab.get(token)

    def tokenize(self, text: str) -> list[str]:
        """The word pieces of ``text`` as strings (for inspection and tests)."""
        ids, _ = self.encode(text)
        return [self.id_to_token(i) for i in ids]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_backend"] = None
        state["_inverse"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"WordPieceTokenizer(vocab_path={self.vocab_path!r}, vocab_size={self.vocab_size}, "
            f"lowercase={self.lowercase})"
        )


def load_tokenizer(vocab_path: str | os.PathLike, lowercase: bool = True) -> WordPieceTokenizer:
    """Loads any standard BERT ``vocab.txt`` (e.g. the released bert-base-uncased one).

    Use ``lowercase=False`` for cased vocabularies. Raises FileNotFoundError / ValueError as
    `read_vocab` does.
    """
    return WordPieceTokenizer(vocab_path, lowercase=lowercase)


def _check_files(files: Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = [os.fspath(f) for f in files]
    if not paths:
        raise ValueError("no training files given")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"training file(s) not found: {', '.join(missing)}")
    return paths


def _write_atomically(path: str, lines: Sequence[str]) -> None:
    """Writes ``lines`` to ``path`` through a temp file + rename (readers never see half a file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _train_rust(paths: list[str], vocab_size: int, lowercase: bool, min_frequency: int) -> list[str]:
    """HF's Rust WordPieceTrainer: fast, but ties are broken differently on every run."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False,
    )
    # Its own progress bar (show_progress) is stderr-only and smears in logs: one timed phase instead.
    with phase(f"vocab: training WordPiece (Rust trainer) on {len(paths)} file(s)"):
        tok.train(paths, trainer)
    ordered = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise RuntimeError("trained vocabulary ids are not contiguous")  # would break vocab.txt
    return [t for t, _ in ordered]


def train_wordpiece(
    files: Sequence[str | os.PathLike],
    vocab_size: int,
    out_path: str | os.PathLike,
    lowercase: bool = True,
    min_frequency: int = 2,
    deterministic: bool = True,
) -> str:
    """Trains a BERT-style WordPiece vocabulary and writes it as ``vocab.txt``.

    ``[PAD] [UNK] [CLS] [SEP] [MASK]`` get ids 0..4, then the character alphabet and the learned
    pieces (``##`` marks continuations). Words are BertNormalizer + BertPreTokenizer output, the
    same as at encoding time.

    Args:
      files: plain-text training files.
      vocab_size: target vocabulary size, specials and alphabet included (a small corpus may
        give fewer entries; an alphabet larger than this is kept whole, as HF does).
      out_path: where to write the vocabulary (parent folders are created; written atomically).
      lowercase: uncased (lower-case + strip accents) normalisation, as bert-base-uncased.
      min_frequency: minimum count of a pair to be merged.
      deterministic: True (default) uses `maskjax.data.text.wordpiece_trainer`, which gives
        the same file for the same input; False uses HF's Rust ``WordPieceTrainer``, much
        faster on big corpora but different on every run (hash-order tie breaking).

    Returns:
      ``out_path`` as a string.
    """
    paths = _check_files(files)
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)} (the specials), got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    if deterministic:
        from maskjax.data.text.wordpiece_trainer import train_vocab

        tokens = train_vocab(paths, vocab_size, SPECIAL_TOKENS, lowercase, min_frequency)
    else:
        tokens = _train_rust(paths, vocab_size, lowercase, min_frequency)
    for t in tokens:
        if not t or t != t.strip() or "\n" in t:
            # A vocab.txt line cannot represent such a token (BERT strips lines).
            raise RuntimeError(f"trained vocabulary has a token {t!r} that vocab.txt cannot hold")
    out = os.fspath(out_path)
    _write_atomically(out, tokens)
    return out


def _file_fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def ensure_vocab(
    train_files: Sequence[str | os.PathLike],
    vocab_size: int,
    cache_dir: str | os.PathLike,
    lowercase: bool = True,
    min_frequency: int = 2,
) -> str:
    """Returns a cached WordPiece vocabulary for these files, training it on first use.

    The cache file is ``<cache_dir>/wordpiece-<hash>.vocab.txt``, keyed by a hash of the files'
    absolute paths, sizes and modification times plus ``vocab_size``, ``lowercase`` and
    ``min_frequency``; editing a file therefore retrains. The file is written through a temp
    file and a rename, so concurrent processes either see a complete vocabulary or train their
    own identical copy.
    """
    paths = _check_files(train_files)
    key = {
        "files": [_file_fingerprint(p) for p in paths],
        "vocab_size": int(vocab_size),
        "lowercase": bool(lowercase),
        "min_frequency": int(min_frequency),
        "version": 1,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = os.path.expanduser(os.fspath(cache_dir))
    path = os.path.join(cache_dir, f"wordpiece-{digest}.vocab.txt")
    if not os.path.isfile(path):
        train_wordpiece(paths, vocab_size, path, lowercase=lowercase, min_frequency=min_frequency)
    return path


def vocab_sha256(vocab_path: str | os.PathLike) -> str:
    """SHA-256 of a vocabulary file's bytes (recorded in caches and converted datasets)."""
    with open(os.fspath(vocab_path), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
