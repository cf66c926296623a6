"""Tests for maskjax.data.sources: folder/tar/tar.gz equivalence, splits, errors, TFDS, pickling."""
from __future__ import annotations

import concurrent.futures
import pickle

import numpy as np
import pytest

from maskjax.data import ImageFolderSource, TfdsImageSource, open_image_source
from maskjax.data.transforms import to_rgb_uint8


def _items(source):
    return [source[i] for i in range(len(source))]


@pytest.mark.parametrize("split", ["train", "val"])
def test_dir_tar_tgz_identical(tiny_tree, tree_counts, split):
    sources = [ImageFolderSource(tiny_tree[k], split=split) for k in ("dir", "tar", "tgz", "dotted")]
    reference = _items(sources[0])
    assert len(reference) == sum(tree_counts[split].values())
    for source in sources[1:]:
        assert source.class_names == sources[0].class_names
        assert _items(source) == reference


def test_split_selection_and_alphabetical_labels(tiny_tree, tree_counts):
    train = ImageFolderSource(tiny_tree["tar"], split="train")
    val = ImageFolderSource(tiny_tree["dir"], split="val")
    assert train.class_names == ["ant", "moose", "zebra"] == val.class_names
    assert len(train) == 9 and len(val) == 4
    counts = np.bincount(train.labels, minlength=3)
    assert counts.tolist() == [tree_counts["train"][c] for c in train.class_names]
    # Items are ordered by (label, path) and the label matches the class folder.
    for i in range(len(train)):
        cls = train.relative_path(i).split("/")[1]
        assert train[i]["label"] == train.class_names.index(cls)
    assert train.labels.tolist() == sorted(train.labels.tolist())
    # The split folder itself may be passed as the path, without a split.
    direct = ImageFolderSource(tiny_tree["dir"] / "val")
    assert _items(direct) == _items(val)


def test_no_split_uses_parent_folder_as_class(tiny_tree):
    both = ImageFolderSource(tiny_tree["tgz"])
    assert len(both) == 13
    assert both.class_names == ["ant", "moose", "zebra"]
    assert both[0]["image"][:4] == b"\x89PNG"


def test_missing_path_message(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="image folder or archive not found: .*nope"):
        ImageFolderSource(missing)


def test_empty_folder_message(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"no images found in {tmp_path}"):
        ImageFolderSource(tmp_path)


def test_unknown_split_message(tiny_tree):
    with pytest.raises(ValueError, match=r"split folder 'test' not found in .*tree\.tar; "
                                         r"top-level folders: train, val"):
        ImageFolderSource(tiny_tree["tar"], split="test")
    with pytest.raises(ValueError, match="split folder 'test' not found"):
        ImageFolderSource(tiny_tree["dir"], split="test")


def test_not_a_tar_message(tmp_path):
    path = tmp_path / "images.zip"
    path.write_bytes(b"PK")
    with pytest.raises(ValueError, match="neither a directory nor a tar archive"):
        ImageFolderSource(path)


def test_open_image_source_kinds(tiny_tree):
    source = open_image_source("folder", path=str(tiny_tree["tgz"]), split="val")
    assert isinstance(source, ImageFolderSource) and len(source) == 4
    with pytest.raises(ValueError, match="unknown image source kind 'zip'; expected one of "
                                         "folder, array_record, tfds"):
        open_image_source("zip", path="x")
    with pytest.raises(ValueError, match="needs a path"):
        open_image_source("folder")
    with pytest.raises(ValueError, match="has no splits"):
        open_image_source("array_record", path="x", split="train")


@pytest.mark.parametrize("kind", ["tar", "tgz", "dir"])
def test_pickle_round_trip(tiny_tree, kind):
    source = ImageFolderSource(tiny_tree[kind], split="train")
    source[0]  # opens the per-process handle / cache, which must not be pickled
    clone = pickle.loads(pickle.dumps(source))
    assert _items(clone) == _items(source)


def test_concurrent_tar_reads(tiny_tree):
    # grain reads with many threads; pread must make the shared descriptor race-free.
    source = ImageFolderSource(tiny_tree["tar"], split="train")
    expected = _items(source)
    order = list(range(len(source))) * 20
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(source.__getitem__, order))
    assert got == [expected[i] for i in order]


def test_real_cifar_test_tar(shared_data):
    source = ImageFolderSource(shared_data / "cifar10" / "test.tar", split="test")
    assert len(source) == 10_000
    assert source.class_names == ["airplane", "automobile", "bird", "cat", "deer",
                                  "dog", "frog", "horse", "ship", "truck"]
    for index in (0, 4321, 9999):
        item = source[index]
        assert item["label"] == index // 1000
        assert item["image"][:2] == b"\xff\xd8"  # JPEG SOI marker
        assert to_rgb_uint8(item["image"]).shape == (32, 32, 3)


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        source = TfdsImageSource("cifar10", "train")
        via_factory = open_image_source("tfds", name="cifar10", split="train")
        assert len(source) == 6 == len(via_factory)
        assert len(source.class_names) == 10
        for i in range(len(source)):
            item = source[i]
            assert set(item) == {"image", "label"}
            assert item["image"].shape == (32, 32, 3) and item["image"].dtype == np.uint8
            assert isinstance(item["label"], int) and 0 <= item["label"] < 10
    with pytest.raises(ValueError, match="needs a dataset name and a split"):
        open_image_source("tfds", split="train")


def test_empty_split_folder_message(tmp_path):
    (tmp_path / "train" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no images found in .* \(split 'train'\)"):
        ImageFolderSource(tmp_path, split="train")
