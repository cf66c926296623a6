"""A deterministic WordPiece vocabulary trainer (BPE-style merges, as HF's WordPieceTrainer).

Why not just ``tokenizers.trainers.WordPieceTrainer``: its result changes from run to run. It
breaks ties between equally frequent characters and pairs by ids that come from Rust hash-map
iteration order, which is randomised per process, so two hosts training "the same" vocabulary
get different files (and a multi-host run would then tokenize differently on each host). This
trainer does the same thing with every tie broken by the token strings, so equal inputs give
equal vocabularies. Normalisation and pre-tokenization still use the Rust BertNormalizer and
BertPreTokenizer, so words are exactly the ones the tokenizer will see.

Algorithm (HF's WordPiece trainer = BPE with a ``##`` continuation prefix):

1. Count words (pre-tokens) over the corpus.
2. Alphabet: every character (``c``) plus ``##c`` for characters seen after a word's first.
3. Repeatedly merge the most frequent adjacent pair ``(a, b)`` into ``a + b.removeprefix("##")``
   (count ties: the lexicographically smallest ``(a, b)`` first) until the vocabulary has
   ``vocab_size`` entries or the best pair occurs fewer than ``min_frequency`` times.

Cost: pure Python with incremental pair counts; a few seconds for WikiText-103-sized word
lists. For Wikipedia-scale corpora train on a sample of the text (BERT's own vocabulary was
built from a sample too), or pass ``deterministic=False`` to `train_wordpiece` to use the Rust
trainer.
"""
from __future__ import annotations

import collections
import heapq
import os
from typing import Iterable, Sequence

from maskjax.progress import progress

# Text is read in chunks of about this many characters (bounded memory on big files).
_CHUNK_CHARS = 1 << 22


def count_words(paths: Sequence[str], lowercase: bool = True) -> collections.Counter:
    """Counts BERT pre-tokens (normalised words and punctuation) in the given text files."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    pre = pre_tokenizers.BertPreTokenizer()
    raw: collections.Counter = collections.Counter()
    sizes = [os.path.getsize(p) for p in paths]
    # Progress in MB read: characters stand in for bytes within a file (exact at each file's end).
    with progress(total=round(sum(sizes) / 1e6, 1), desc="vocab: counting words", unit="MB") as bar:
        for path, size in zip(paths, sizes):
            left = size / 1e6
            with open(path, encoding="utf-8", errors="replace") as f:
                while True:
                    lines = f.readlines(_CHUNK_CHARS)
                    if not lines:
                        break
                    text = "".join(lines)
                    # Whitespace split in C first: BertPreTokenizer splits on whitespace before it
                    # splits punctuation, so pre-tokenizing each distinct chunk once is equivalent
                    # and far cheaper than pre-tokenizing the whole text.
                    raw.update(text.split())
                    step = min(len(text) / 1e6, left)
                    bar.update(step)
                    left -= step
            bar.update(left)
    words: collections.Counter = collections.Counter()
    with progress(total=len(raw), desc="vocab: pre-tokenizing distinct strings", unit="str") as bar:
        for k, (chunk, n) in enumerate(raw.items()):
            for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(chunk)):
                words[word] += n
            if k % 10000 == 9999:  # a bar update per string would cost more than some strings
                bar.update(10000)
        bar.update(len(raw) % 10000)
    return words


def train_from_counts(
    counts: dict[str, int],
    vocab_size: int,
    min_frequency: int,
    special_tokens: Sequence[str],
    prefix: str = "##",
) -> list[str]:
    """Learns a vocabulary (specials first, then alphabet, then merges) from word counts."""
    tokens: list[str] = list(special_tokens)
    index = {t: i for i, t in enumerate(tokens)}

    def add(token: str) -> int:
        i = index.get(token)
        if i is None:
            i = index[token] = len(tokens)
            tokens.append(token)
        return i

    words = sorted(w for w in counts if w)
    for c in sorted({c for w in words for c in w}):
        add(c)
    for c in sorted({c for w in words for c in w[1:]}):
        add(prefix + c)
    symbols = [[index[w[0]]] + [index[prefix + c] for c in w[1:]] for w in words]
    weights = [int(counts[w]) for w in words]
    pair_count: dict[tuple[int, int], int] = collections.defaultdict(int)
    where: dict[tuple[int, int], set[int]] = collections.defaultdict(set)
    for wi, syms in enumerate(symbols):
        for pair in zip(syms, syms[1:]):
            pair_count[pair] += weights[wi]
            where[pair].add(wi)
    # Max-heap on count, ties by token strings; stale entries are skipped when popped.
    heap = [(-n, tokens[a], tokens[b], a, b) for (a, b), n in pair_count.items()]
    heapq.heapify(heap)
    # Counts merges towards the target size (a small corpus may stop early, at min_frequency).
    bar = progress(total=max(vocab_size - len(tokens), 0), desc="vocab: merges", unit="merge")
    counted = len(tokens)
    while len(tokens) < vocab_size and heap:
        neg, _, _, a, b = heapq.heappop(heap)
        if pair_count.get((a, b), 0) != -neg:
            continue  # stale entry
        if -neg < min_frequency:
            break
        # A merged string may already exist (reached by another path): HF reuses its id.
        merged = add(tokens[a] + tokens[b][len(prefix):])
        changed: set[tuple[int, int]] = set()
        for wi in where.pop((a, b), ()):
            syms = symbols[wi]
            out: list[int] = []
            i, hit = 0, False
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(merged)
                    i += 2
                    hit = True
                else:
                    out.append(syms[i])
                    i += 1
            if not hit:
                continue  # the word lost this pair to an earlier overlapping merge
            k = weights[wi]
            for pair in zip(syms, syms[1:]):
                pair_count[pair] -= k
                changed.add(pair)
            for pair in zip(out, out[1:]):
                pair_count[pair] += k
                changed.add(pair)
                where[pair].add(wi)
            symbols[wi] = out
        pair_count.pop((a, b), None)
        for pair in changed:
            n = pair_count.get(pair, 0)
            if n > 0:
                heapq.heappush(heap, (-n, tokens[pair[0]], tokens[pair[1]], pair[0], pair[1]))
            else:
                pair_count.pop(pair, None)
        if len(tokens) - counted >= 64:  # batched: a merge can be far cheaper than a bar update
            bar.update(len(tokens) - counted)
            counted = len(tokens)
    bar.update(len(tokens) - counted)
    bar.close()
    return tokens


def train_vocab(
    paths: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str],
    lowercase: bool = True,
    min_frequency: int = 2,
) -> list[str]:
    """`count_words` + `train_from_counts`: the vocabulary tokens in id order."""
    counts = count_words(list(paths), lowercase=lowercase)
    if not counts:
        raise ValueError("the training files contain no text")
    return train_from_counts(counts, vocab_size, min_frequency, special_tokens)
