"""Tests for the embedded CIFAR-10 subset and the tool that builds it."""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pathlib

import numpy as np
import pytest

from maskjax.data import ImageFolderSource, embedded_cifar10_path
from maskjax.data.transforms import to_rgb_uint8

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "make_embedded_subset", REPO_ROOT / "tools" / "make_embedded_subset.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("split,per_class", [("train", 1000), ("test", 200)])
def test_embedded_subset_counts(split, per_class):
    source = ImageFolderSource(os.path.join(embedded_cifar10_path(), f"{split}.tar.gz"), split=split)
    assert source.class_names == CLASSES
    assert np.bincount(source.labels).tolist() == [per_class] * 10
    image = to_rgb_uint8(source[len(source) - 1]["image"])
    assert image.shape == (32, 32, 3)


def test_embedded_subset_size_and_readme():
    folder = embedded_cifar10_path()
    sizes = [os.path.getsize(os.path.join(folder, f)) for f in ("train.tar.gz", "test.tar.gz")]
    assert sum(sizes) <= 4.5e6
    readme = open(os.path.join(folder, "README.md")).read()
    assert "Krizhevsky" in readme and "make_embedded_subset.py" in readme


def test_embedded_bytes_match_original(shared_data):
    embedded = ImageFolderSource(os.path.join(embedded_cifar10_path(), "test.tar.gz"), split="test")
    full = ImageFolderSource(shared_data / "cifar10" / "test.tar", split="test")
    for cls in (0, 9):
        for k in (0, 199):
            assert embedded[cls * 200 + k] == full[cls * 1000 + k]  # JPEG bytes not re-encoded


def test_tool_output_is_byte_reproducible(tmp_path):
    tool = _load_tool()
    members = [("train/b/0.jpg", b"\xff\xd8" + bytes(range(50))), ("train/a/1.jpg", b"xyz")]
    digests = []
    for name in ("one.tar.gz", "two.tar.gz"):
        path = tmp_path / name
        tool.write_reproducible_tgz(path, members)
        data = path.read_bytes()
        digests.append(hashlib.sha256(data).hexdigest())
        assert data[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime field is zero
        assert gzip.decompress(data).count(b"train/") == 2
    assert digests[0] == digests[1]
    source = ImageFolderSource(tmp_path / "one.tar.gz", split="train")
    assert source.class_names == ["a", "b"] and source[0]["image"] == b"xyz"
