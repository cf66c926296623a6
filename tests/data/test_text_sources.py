"""Tests for maskjax.data.text.sources: plain-text formats, WikiText, TFDS and the factory."""
from __future__ import annotations

import pickle
import re

import pytest

from maskjax.data.text.sources import (
    TextFileSource,
    TfdsTextSource,
    open_text_source,
    split_wikitext_sentences,
)

BLANK_LINE_TEXT = """First doc line one.
First doc line two.

   
Second doc only line.


Third doc a.
  Third doc b.  
"""


def test_blank_line_format(tmp_path):
    path = tmp_path / "bert.txt"
    path.write_text(BLANK_LINE_TEXT, encoding="utf-8")
    src = TextFileSource(path)
    assert len(src) == 3
    assert src[0] == ["First doc line one.", "First doc line two."]
    assert src[1] == ["Second doc only line."]
    assert src[2] == ["Third doc a.", "Third doc b."] and src[-1] == src[2]
    with pytest.raises(IndexError):
        src[3]
    clone = pickle.loads(pickle.dumps(src))
    assert [clone[i] for i in range(3)] == [src[i] for i in range(3)]


def test_multiple_files_and_globs(tmp_path):
    (tmp_path / "b.txt").write_text("b1\n\nb2\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("a1\na1b\n", encoding="utf-8")
    src = TextFileSource(str(tmp_path / "*.txt"))
    assert [src[i] for i in range(len(src))] == [["a1", "a1b"], ["b1"], ["b2"]]  # sorted glob
    src = TextFileSource([tmp_path / "b.txt", tmp_path / "a.txt"])
    assert src[0] == ["b1"] and src[2] == ["a1", "a1b"]  # documents never span files


def test_wikitext_format_on_real_data(shared_data):
    path = shared_data / "wikitext2" / "valid.txt"
    src = TextFileSource(path, doc_format="wikitext")
    lines = path.read_text(encoding="utf-8").splitlines()
    titles = [l for l in lines if re.fullmatch(r" = [^=].* = ", l)]
    assert len(src) == len(titles) > 50
    paragraphs = [l.strip() for l in lines if l.strip() and not l.strip().startswith("= ")]
    docs = [src[i] for i in range(len(src))]
    assert sum(len(d) for d in docs) == len(paragraphs)
    assert [p for d in docs for p in d] == paragraphs  # order kept, headings dropped
    assert docs[0][0].startswith("Homarus gammarus , known as")
    assert all(not l.startswith("=") for d in docs for l in d)


def test_split_wikitext_sentences():
    line = ("It may grow to 60 cm ( 24 in ) . H. americanus weighs 0 @.@ 7 kg ? Yes ! "
            "It is \" red \" on cooking .")
    assert split_wikitext_sentences(line) == [
        "It may grow to 60 cm ( 24 in ) .",
        "H. americanus weighs 0 @.@ 7 kg ?",
        "Yes !",
        "It is \" red \" on cooking .",
    ]
    assert split_wikitext_sentences("  ") == []


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TextFileSource(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="no files match"):
        TextFileSource(str(tmp_path / "*.none"))
    (tmp_path / "x.txt").write_text("x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="doc_format"):
        TextFileSource(tmp_path / "x.txt", doc_format="markdown")
    with pytest.raises(ValueError, match="unknown text source kind"):
        open_text_source("csv", path=tmp_path / "x.txt")
    with pytest.raises(ValueError, match="needs a path"):
        open_text_source("text")
    with pytest.raises(ValueError, match="name and a split"):
        open_text_source("tfds_text", name="lm1b")
    assert len(open_text_source("text", path=tmp_path / "x.txt")) == 1


@pytest.mark.parametrize("name,field", [("wikipedia/20230601.en", "text"), ("lm1b", "text")])
def test_tfds_mock_source(name, field):
    tfds = pytest.importorskip("tensorflow_datasets")
    try:
        with tfds.testing.mock_data(num_examples=6):
            src = open_text_source("tfds_text", name=name, split="train", text_field=field)
            docs = [src[i] for i in range(len(src))]
            with pytest.raises(ValueError, match="no feature"):
                TfdsTextSource(name, "train", text_field="body")
    except (tfds.core.registered.DatasetNotFoundError, ImportError) as e:  # pragma: no cover
        pytest.skip(f"TFDS dataset {name} is not usable offline here: {e}")
    assert len(docs) == 6
    assert all(isinstance(d, list) and all(isinstance(l, str) and l == l.strip() and l for l in d) for d in docs)
    assert sum(len(d) for d in docs) >= 6


def test_unprepared_tfds_dataset_is_a_clear_error_not_a_download(tmp_path):
    """TFDS would try the network for a missing dataset; maskjax refuses with instructions."""
    import time

    from maskjax.data.sources import open_prepared_tfds

    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="tfds build lm1b --file_format=array_record"):
        open_text_source("tfds_text", name="lm1b", split="train", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is not prepared"):
        open_prepared_tfds("mnist", "train", str(tmp_path))
    assert time.perf_counter() - start < 30  # no network timeouts
