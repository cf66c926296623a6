"""Tests for the ImageFolder -> ArrayRecord converter and ArrayRecordImageSource."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest

from maskjax.data import ArrayRecordImageSource, ImageFolderSource, convert_image_folder
from maskjax.data import open_image_source
from maskjax.data.convert import decode_record, encode_record, main


def _items(source):
    return [source[i] for i in range(len(source))]


def test_record_format_round_trip():
    record = encode_record(7, b"\xff\xd8jpeg")
    assert record == b"\x07\x00\x00\x00\xff\xd8jpeg"  # int32 little-endian label first
    assert decode_record(record) == (7, b"\xff\xd8jpeg")
    assert decode_record(encode_record(-1, b"")) == (-1, b"")
    with pytest.raises(ValueError, match="corrupt record"):
        decode_record(b"\x01")


def test_convert_round_trip(tiny_tree, tmp_path):
    out = tmp_path / "ar"
    meta = convert_image_folder(tiny_tree["tgz"], out, num_shards=3, split="train")
    original = ImageFolderSource(tiny_tree["tgz"], split="train")
    assert meta["class_names"] == original.class_names
    assert meta["num_records"] == len(original) == 9
    assert meta["shards"] == [f"data-{i:05d}-of-00003.array_record" for i in range(3)]
    assert meta["shard_num_records"] == [3, 3, 3]
    assert meta["format_version"] == 1
    assert json.loads((out / "metadata.json").read_text()) == meta
    converted = ArrayRecordImageSource(out)
    assert converted.class_names == original.class_names
    assert _items(converted) == _items(original)  # same bytes, labels and order
    # Also openable through the metadata file, the factory, and after pickling (grain workers).
    assert len(ArrayRecordImageSource(out / "metadata.json")) == 9
    assert _items(open_image_source("array_record", path=out)) == _items(original)
    assert _items(pickle.loads(pickle.dumps(converted))) == _items(original)


def test_more_shards_than_images_is_capped(tiny_tree, tmp_path):
    meta = convert_image_folder(tiny_tree["dir"], tmp_path / "ar", num_shards=50, split="val")
    assert len(meta["shards"]) == meta["num_records"] == 4
    assert sorted(os.listdir(tmp_path / "ar")) == sorted(meta["shards"] + ["metadata.json"])


def test_main_cli(tiny_tree, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(tiny_tree["tar"]), str(out), "--split", "val", "--shards", "2"]) == 0
    assert "wrote 4 images of 3 classes into 2 shards" in capsys.readouterr().out
    assert _items(ArrayRecordImageSource(out)) == _items(
        ImageFolderSource(tiny_tree["tar"], split="val")
    )
    assert main([str(tmp_path / "missing.tar"), str(tmp_path / "x")]) == 2
    assert "missing.tar" in capsys.readouterr().err


def test_python_dash_m(tiny_tree, tmp_path):
    out = tmp_path / "mod"
    proc = subprocess.run(
        [sys.executable, "-m", "maskjax.data.convert", str(tiny_tree["dir"]), str(out),
         "--split", "train", "--shards", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(ArrayRecordImageSource(out)) == 9


def test_array_record_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ArrayRecord dataset not found"):
        ArrayRecordImageSource(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no metadata.json in"):
        ArrayRecordImageSource(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a maskjax image dataset"):
        ArrayRecordImageSource(tmp_path)
