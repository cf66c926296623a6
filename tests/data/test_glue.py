"""GLUE encoding and loading (BERT's run_classifier format) and the WikiText word-order proxy task."""
from __future__ import annotations

import numpy as np
import pytest

from maskjax.data.text import load_tokenizer, train_wordpiece
from maskjax.data.text.glue import (
    GLUE_TASKS, encode_pairs, glue_task, load_glue, perturb_order, truncate_seq_pair, wikitext_order_examples,
    wikitext_order_task, wikitext_sentences)


@pytest.fixture(scope="module")
def wiki(shared_data):
    """WikiText-2 ``valid.txt`` (vocab training) and ``test.txt`` (task sentences)."""
    root = shared_data / "wikitext2"
    if not (root / "test.txt").exists():
        pytest.skip("WikiText-2 is not present")
    return root


@pytest.fixture(scope="module")
def tok(wiki, tmp_path_factory):
    """A 400-entry WordPiece vocabulary trained on the first 400 lines of valid.txt."""
    d = tmp_path_factory.mktemp("glue_vocab")
    lines = (wiki / "valid.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:400]
    (d / "slice.txt").write_text("".join(lines), encoding="utf-8")
    return load_tokenizer(train_wordpiece([d / "slice.txt"], 400, d / "vocab.txt"))


def test_task_table():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert glue_task("STSB").is_regression and glue_task("stsb").num_labels == 1
    assert glue_task("glue/mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert glue_task("cola").metric == "mcc" and glue_task("mrpc").metric == "f1" and glue_task("qqp").metric == "f1"
    assert glue_task("qqp").text_fields == ("question1", "question2")
    assert glue_task("qnli").text_fields == ("question", "sentence")
    with pytest.raises(ValueError, match="known.*cola"):
        glue_task("squad")


def test_truncate_seq_pair_is_berts_rule():
    a, b = list(range(10)), list(range(100, 104))
    truncate_seq_pair(a, b, 9)
    assert a == [0, 1, 2, 3, 4] and b == [100, 101, 102, 103]  # only the longer one shrinks
    a, b = list(range(5)), list(range(100, 105))
    truncate_seq_pair(a, b, 7)  # tie at 5/5: the second loses first, then alternate
    assert (len(a), len(b)) == (4, 3) and a == [0, 1, 2, 3] and b == [100, 101, 102]


def test_encode_pairs_hand_example(tok):
    a = tok.encode("the city")[0].tolist()
    b = tok.encode("of the war and the army")[0].tolist()
    assert len(a) < len(b)
    out = encode_pairs(tok, ["the city"], ["of the war and the army"], seq_len=len(a) + len(b) + 5)
    cls, sep, pad = tok.cls_id, tok.sep_id, tok.pad_id
    assert out["input_ids"][0].tolist() == [cls, *a, sep, *b, sep, pad, pad]
    assert out["segment_ids"][0].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0, 0]
    assert out["input_mask"][0].tolist() == [1] * (len(a) + len(b) + 3) + [0, 0]
    assert all(v.dtype == np.int32 for v in out.values())
    # Budget len(a) + 2: b is cut to len(a) + 1 ... then both alternate, b first on ties.
    short = encode_pairs(tok, ["the city"], ["of the war and the army"], seq_len=len(a) + len(a) + 3)
    assert short["input_ids"][0].tolist() == [cls, *a, sep, *b[: len(a)], sep]
    single = encode_pairs(tok, ["of the war and the army"], None, seq_len=4)
    assert single["input_ids"][0].tolist() == [cls, *b[:2], sep]
    assert single["segment_ids"].sum() == 0


def test_encode_pairs_matches_transformers(tok, wiki):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizerFast(vocab=tok.vocab_path, do_lower_case=True)
    sents = wikitext_sentences(str(wiki / "test.txt"))[:120]
    a, b = sents[0::2], sents[1::2]
    differ = 0
    for seq_len in (12, 17, 24, 64):
        ours = encode_pairs(tok, a, b, seq_len)
        theirs = hf(a, b, truncation="longest_first", max_length=seq_len, padding="max_length", return_tensors="np")
        same = ((ours["input_ids"] == theirs["input_ids"]).all(1)
                & (ours["segment_ids"] == theirs["token_type_ids"]).all(1)
                & (ours["input_mask"] == theirs["attention_mask"]).all(1))
        # When both texts are cut to about half of an odd budget, HF's longest_first gives the
        # extra token to the originally longer text (the second on a tie), BERT's loop to the
        # first: A keeps one token more with BERT's rule, B one token less.
        for i in np.flatnonzero(~same):
            len_a = int(np.sum(ours["segment_ids"][i] == 0) - np.sum(ours["input_mask"][i] == 0) - 2)
            hf_a = int(np.sum(theirs["token_type_ids"][i] == 0) - np.sum(theirs["attention_mask"][i] == 0) - 2)
            assert (seq_len - 3) % 2 == 1 and len_a == hf_a + 1, (seq_len, i)
            differ += 1
        if (seq_len - 3) % 2 == 0:
            assert same.all()
    assert differ > 0  # the documented tie-breaking difference does occur


def test_load_glue_from_mocked_tfds(tok):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        cola = load_glue("cola", "train", tok, seq_len=16)
        mnli = load_glue("mnli", "validation_mismatched", tok, seq_len=24)
        stsb = load_glue("stsb", "validation", tok, seq_len=16, max_examples=4)
        src = tfds.data_source("glue/mnli", split="validation_mismatched")
        records = [src[i] for i in range(len(src))]
    assert cola["input_ids"].shape == (6, 16) and cola["label"].dtype == np.int32
    assert set(np.unique(cola["label"])) <= {0, 1} and cola["segment_ids"].sum() == 0
    assert mnli["input_ids"].shape == (6, 24) and mnli["segment_ids"].max() == 1
    assert mnli["label"].tolist() == [int(r["label"]) for r in records]
    expected = encode_pairs(tok, [r["premise"] for r in records], [r["hypothesis"] for r in records], 24)
    for key in expected:
        np.testing.assert_array_equal(mnli[key], expected[key])
    assert stsb["label"].dtype == np.float32 and len(stsb["label"]) == 4


def test_load_glue_errors(tok, tmp_path):
    with pytest.raises(ValueError, match="unknown GLUE task"):
        load_glue("imdb", "train", tok, 16)
    with pytest.raises(RuntimeError, match="prepared beforehand"):
        load_glue("rte", "train", tok, 16, data_dir=str(tmp_path))


def test_perturb_order_changes_order_only():
    rng = np.random.default_rng(0)
    words = "the cat sat on the mat today .".split()
    for _ in range(50):
        out = perturb_order(words, rng)
        assert out != words and sorted(out) == sorted(words) and out[-1] == "."
        diff = [i for i, (x, y) in enumerate(zip(words, out)) if x != y]
        assert diff[-1] - diff[0] in (1, 2)  # an adjacent swap or the ends of a 3-word span
    with pytest.raises(ValueError):
        perturb_order("a a a .".split(), rng)


def test_wikitext_order_task(wiki, tok):
    path = str(wiki / "test.txt")
    train, test = wikitext_order_examples(path, 300, 101, seed=3)
    again, _ = wikitext_order_examples(path, 300, 101, seed=3)
    other, _ = wikitext_order_examples(path, 300, 101, seed=4)
    assert train == again and train != other  # deterministic given the seed
    assert sum(y for _, y, _ in train) == 150 and sum(y for _, y, _ in test) == 50  # balanced
    assert not {s for _, _, s in train} & {s for _, _, s in test}  # disjoint source sentences
    for text, label, source in train + test:
        assert (text == source) == (label == 1)
        assert sorted(text.split()) == sorted(source.split()) and len(source.split()) >= 8
        assert not source.startswith("=")
    tr, te = wikitext_order_task(path, tok, seq_len=48, n_train=64, n_test=32, seed=0)
    assert tr["input_ids"].shape == (64, 48) and te["label"].tolist().count(1) == 16
    fits = lambda ss: [len(ids) <= 46 for ids, _ in tok.encode_batch(ss)]  # noqa: E731
    texts = [t for t, _, _ in wikitext_order_examples(path, 64, 32, seed=0, keep=fits)[0]]
    np.testing.assert_array_equal(tr["input_ids"], encode_pairs(tok, texts, None, 48)["input_ids"])
    # Every sentence fits whole, so no perturbation is cut off by truncation.
    assert tr["input_mask"].sum(1).tolist() == [len(tok.encode(t)[0]) + 2 for t in texts]
    with pytest.raises(ValueError, match="usable sentences"):
        wikitext_order_task(path, tok, seq_len=12, n_train=5000, n_test=5000)
