"""Sentence(-pair) classification data: GLUE from prepared TFDS data, and an offline proxy task.

GLUE (Wang et al. 2019) is read with ``tfds.data_source("glue/<task>")`` from a ``data_dir``
the user prepared beforehand (nothing is downloaded here) and encoded in BERT's
``run_classifier.py`` format: ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``, segment ids 0 for
``[CLS] A [SEP]`` and 1 for ``B [SEP]``, pairs trimmed by ``_truncate_seq_pair`` (drop the last
token of the currently longer text; on a tie, of the second), zero padding to ``seq_len``.

**The WikiText word-order task is OUR proxy, not a GLUE task.** GLUE cannot be fetched offline,
so CPU reproductions fine-tune on :func:`wikitext_order_task`: real WikiText sentences (label 1)
against the same sentences with two adjacent words swapped or a three-word span reversed
(label 0). It is a CoLA-like acceptability judgement that a bag-of-words model cannot solve
(both classes have the same words), so it rewards an encoder that learned word order.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from maskjax.data.text.sources import split_wikitext_sentences


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its text fields, label count (1 = regression), eval splits and metric.

    ``metric`` is one of ``"mcc"`` (Matthews correlation, CoLA), ``"f1"`` (F1 of class 1 and
    accuracy, MRPC/QQP), ``"pearson_spearman"`` (STS-B) and ``"accuracy"``.
    """

    name: str
    text_fields: tuple[str, ...]
    num_labels: int
    eval_splits: tuple[str, ...] = ("validation",)
    metric: str = "accuracy"

    @property
    def tfds_name(self) -> str:
        """The TFDS dataset name, ``glue/<task>``."""
        return f"glue/{self.name}"

    @property
    def is_regression(self) -> bool:
        """True for STS-B (a similarity score in [0, 5], one output, MSE loss)."""
        return self.num_labels == 1


GLUE_TASKS: dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("cola", ("sentence",), 2, metric="mcc"),
    GlueTask("sst2", ("sentence",), 2),
    GlueTask("mrpc", ("sentence1", "sentence2"), 2, metric="f1"),
    GlueTask("qqp", ("question1", "question2"), 2, metric="f1"),
    GlueTask("stsb", ("sentence1", "sentence2"), 1, metric="pearson_spearman"),
    GlueTask("mnli", ("premise", "hypothesis"), 3, ("validation_matched", "validation_mismatched")),
    GlueTask("qnli", ("question", "sentence"), 2),
    GlueTask("rte", ("sentence1", "sentence2"), 2),
    GlueTask("wnli", ("sentence1", "sentence2"), 2),
)}


def glue_task(name: str) -> GlueTask:
    """The :class:`GlueTask` called ``name`` (case-insensitive; ``glue/`` prefix allowed)."""
    key = name.lower().removeprefix("glue/").replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known: {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[key]


# --- encoding ----------------------------------------------------------------------------------

def truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> None:
    """BERT's ``_truncate_seq_pair``, in place: pop the last token of the longer list until the
    total fits; on a tie the second list loses a token (``len(a) > len(b)`` is False)."""
    while len(tokens_a) + len(tokens_b) > max_length:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()


def encode_pairs(tokenizer, texts_a: Sequence[str], texts_b: Sequence[str] | None = None,
                 seq_len: int = 128) -> dict[str, np.ndarray]:
    """BERT ``run_classifier`` features: ``{"input_ids", "segment_ids", "input_mask"}`` int32 [N, seq_len].

    ``[CLS] A [SEP]`` (A cut to ``seq_len - 2`` tokens) or, with ``texts_b``,
    ``[CLS] A [SEP] B [SEP]`` with the pair cut by :func:`truncate_seq_pair` to ``seq_len - 3``;
    segment 0 covers ``[CLS] A [SEP]``, segment 1 ``B [SEP]``; padding is ``pad_id`` with mask 0.

    Equals Hugging Face ``tokenizer(a, b, truncation="longest_first", max_length=seq_len,
    padding="max_length")`` except in one tie-break: when both texts are cut to about half of an
    odd budget and A is not the longer one, HF gives the odd token to B, BERT (and this) to A.
    """
    texts_a = list(texts_a)
    if texts_b is not None:
        texts_b = list(texts_b)
        if len(texts_b) != len(texts_a):
            raise ValueError(f"texts_b has {len(texts_b)} texts for {len(texts_a)} in texts_a")
    specials = 2 if texts_b is None else 3
    if seq_len <= specials:
        raise ValueError(f"seq_len={seq_len} leaves no room for text after {specials} special tokens")
    n = len(texts_a)
    ids = np.full((n, seq_len), tokenizer.pad_id, np.int32)
    segs = np.zeros((n, seq_len), np.int32)
    mask = np.zeros((n, seq_len), np.int32)
    enc_a = [list(t) for t, _ in tokenizer.encode_batch(texts_a)] if n else []
    enc_b = [list(t) for t, _ in tokenizer.encode_batch(texts_b)] if texts_b is not None and n else None
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    for i in range(n):
        a = enc_a[i]
        if enc_b is None:
            row, seg = [cls] + a[: seq_len - 2] + [sep], []
        else:
            b = enc_b[i]
            truncate_seq_pair(a, b, seq_len - 3)
            row, seg = [cls] + a + [sep] + b + [sep], [1] * (len(b) + 1)
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        if seg:
            segs[i, len(row) - len(seg): len(row)] = seg
    return {"input_ids": ids, "segment_ids": segs, "input_mask": mask}


# --- GLUE from TFDS ----------------------------------------------------------------------------

def _as_text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_records(source, indices: Sequence[int]) -> list[dict]:
    """Records at ``indices``; ArrayRecord sources read a whole chunk at once (much faster)."""
    out: list[dict] = []
    for start in range(0, len(indices), 4096):
        chunk = list(indices[start:start + 4096])
        try:
            out.extend(source.__getitems__(chunk))
        except (AttributeError, TypeError):  # no batched read (e.g. tfds.testing.mock_data): one by one
            out.extend(source[i] for i in chunk)
    return out


def load_glue(task: str, split: str, tokenizer, seq_len: int = 128, data_dir: str | None = None,
              max_examples: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """One split of a prepared GLUE task as ``encode_pairs`` arrays plus ``"label"``.

    Reads ``tfds.data_source("glue/<task>", split=split, data_dir=data_dir)``: the data must
    already be prepared in ArrayRecord format (``tfds build glue/<task> --file_format=array_record``
    on a machine with internet); nothing is downloaded. Labels are int32 class ids (float32
    scores for STS-B); GLUE's ``test`` splits have no public labels (-1). ``max_examples``
    keeps a fixed random subset (``seed``), in source order.
    """
    info = glue_task(task)
    import tensorflow_datasets as tfds

    try:
        # Without TensorFlow, TFDS does not register the legacy text builders (glue among them)
        # until their package is imported; prepared data in data_dir is found either way.
        import tensorflow_datasets.text  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installed TFDS
        pass
    try:
        source = tfds.data_source(info.tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as e:
        raise RuntimeError(
            f"cannot open {info.tfds_name} split {split!r} (data_dir={data_dir!r}): {e}\nGLUE must be "
            f"prepared beforehand in ArrayRecord format, e.g. `tfds build {info.tfds_name} "
            f"--file_format=array_record --data_dir=DIR` on a machine with internet access") from e
    n = len(source)
    indices = np.arange(n)
    if max_examples is not None and max_examples < n:
        indices = np.sort(np.random.default_rng(seed).permutation(n)[:max_examples])
    records = _read_records(source, indices.tolist())
    texts = [[_as_text(r[f]) for r in records] for f in info.text_fields]
    out = encode_pairs(tokenizer, texts[0], texts[1] if len(texts) > 1 else None, seq_len)
    dtype = np.float32 if info.is_regression else np.int32
    out["label"] = np.asarray([np.asarray(r["label"]).item() for r in records], dtype)
    return out


# --- the WikiText word-order proxy task --------------------------------------------------------

def wikitext_sentences(path: str, min_words: int = 8) -> list[str]:
    """Unique sentences (first-seen order) of a WikiText file with at least ``min_words`` words.

    Heading lines (`` = Title = ``, `` = = Section = = ``) and empty lines are skipped;
    paragraphs are split at `` . `` / `` ? `` / `` ! `` (the stop stays with its sentence).
    """
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if not s or (s.startswith("=") and s.endswith("=")):
                continue
            for sentence in split_wikitext_sentences(s):
                if len(sentence.split()) >= min_words:
                    seen.setdefault(sentence, None)
    return list(seen)


def perturb_order(words: list[str], rng: np.random.Generator) -> list[str]:
    """A copy of ``words`` with two adjacent words swapped (p = 0.5) or a 3-word span reversed.

    The final token (usually the full stop) never moves, so "the sentence does not end with a
    stop" is not a shortcut; positions whose change would leave the text unchanged (equal
    words) are not drawn. Raises ValueError when no position changes the sentence.
    """
    body = len(words) - 1  # the last token stays put
    swaps = [i for i in range(body - 1) if words[i] != words[i + 1]]
    spans = [i for i in range(body - 2) if words[i] != words[i + 2]]
    kind = "swap" if (rng.random() < 0.5 and swaps) or not spans else "span"
    choices = swaps if kind == "swap" else spans
    if not choices:
        raise ValueError(f"no word-order change is possible in {' '.join(words)!r}")
    i = int(choices[rng.integers(len(choices))])
    out = list(words)
    width = 2 if kind == "swap" else 3
    out[i:i + width] = out[i:i + width][::-1]
    return out


def wikitext_order_examples(path: str, n_train: int, n_test: int, seed: int = 0, *, min_words: int = 8,
                            keep: Callable[[list[str]], np.ndarray] | None = None) -> tuple[list, list]:
    """The proxy task as text: ``(train, test)``, each a list of ``(text, label, source_sentence)``.

    Sentences are shuffled with ``seed``; the first ``n_train`` make the training split and the
    next ``n_test`` the test split, so the splits never share a sentence. In each split the
    first half (rounded down) stays original (label 1) and the rest is perturbed with
    :func:`perturb_order` (label 0); then the split is shuffled. ``keep`` optionally filters
    the candidate sentences (e.g. those that fit the model's sequence length).
    """
    sentences = wikitext_sentences(path, min_words)
    if keep is not None:
        mask = np.asarray(keep(sentences), bool)
        sentences = [s for s, k in zip(sentences, mask) if k]
    if n_train + n_test > len(sentences):
        raise ValueError(f"{path} has {len(sentences)} usable sentences (>= {min_words} words, fitting the "
                         f"sequence length); asked for {n_train} train + {n_test} test")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))

    def make(chosen: np.ndarray) -> list:
        examples = []
        for j, idx in enumerate(chosen):
            s = sentences[idx]
            if j < len(chosen) // 2:
                examples.append((s, 1, s))
            else:
                examples.append((" ".join(perturb_order(s.split(), rng)), 0, s))
        return [examples[k] for k in rng.permutation(len(examples))]

    return make(order[:n_train]), make(order[n_train:n_train + n_test])


def wikitext_order_task(path: str, tokenizer, seq_len: int = 64, n_train: int = 2000, n_test: int = 500,
                        seed: int = 0, min_words: int = 8) -> tuple[dict, dict]:
    """OUR word-order acceptability proxy (not GLUE): ``(train_arrays, test_arrays)``.

    Arrays as :func:`encode_pairs` (single sentences) plus int32 ``"label"`` (1 = original
    WikiText sentence, 0 = two adjacent words swapped or a 3-word span reversed), balanced,
    deterministic given ``seed``, from disjoint sentences. Only sentences whose word pieces fit
    ``seq_len - 2`` are used, so a perturbation is never cut off by truncation.
    """
    def fits(sentences: list[str]) -> np.ndarray:
        return np.asarray([len(ids) <= seq_len - 2 for ids, _ in tokenizer.encode_batch(sentences)])

    train, test = wikitext_order_examples(path, n_train, n_test, seed, min_words=min_words, keep=fits)

    def arrays(examples: list) -> dict:
        out = encode_pairs(tokenizer, [t for t, _, _ in examples], None, seq_len)
        out["label"] = np.asarray([y for _, y, _ in examples], np.int32)
        return out

    return arrays(train), arrays(test)
