"""Fixtures for the data tests: a tiny ImageFolder tree as a directory, .tar and .tar.gz."""
from __future__ import annotations

import io
import pathlib
import tarfile

import numpy as np
import pytest
from PIL import Image

# Per split: class -> number of images. Class names are deliberately not in creation order so
# that alphabetical labelling is actually exercised.
TREE = {
    "train": {"zebra": 3, "ant": 2, "moose": 4},
    "val": {"zebra": 1, "ant": 2, "moose": 1},
}


def encode_png(array: np.ndarray) -> bytes:
    """PNG-encodes a uint8 array (lossless, so decoded pixels can be compared exactly)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _make_image(rng: np.random.Generator, i: int) -> bytes:
    shape = (6 + i % 5, 7 + (3 * i) % 4, 3)  # assorted small sizes, including non-square
    return encode_png(rng.integers(0, 256, shape, dtype=np.uint8))


@pytest.fixture(scope="session")
def tree_counts() -> dict[str, dict[str, int]]:
    """Number of images per split and class in `tiny_tree`."""
    return TREE


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Builds the same images as ``root/`` dir, ``tree.tar``, ``tree.tar.gz`` and ``dotted.tar``.

    Layout: ``<split>/<class>/<i>.png`` plus a stray non-image file and a hidden file, which
    every source must ignore. ``dotted.tar`` has ``./``-prefixed member names, as
    ``tar -C root -cf x.tar .`` writes them.
    """
    base = tmp_path_factory.mktemp("tiny_tree")
    root = base / "root"
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    i = 0
    for split, classes in TREE.items():
        for cls, count in classes.items():
            for k in range(count):
                files[f"{split}/{cls}/{k:03d}.png"] = _make_image(rng, i)
                i += 1
    files["train/zebra/notes.txt"] = b"not an image"
    files["train/ant/.hidden.png"] = b"junk"
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    out = {"dir": root}
    for key, name, mode, prefix in (
        ("tar", "tree.tar", "w", ""),
        ("tgz", "tree.tar.gz", "w:gz", ""),
        ("dotted", "dotted.tar", "w", "./"),
    ):
        path = base / name
        with tarfile.open(path, mode) as tar:
            # Reverse order: sources must not depend on the archive's member order.
            for rel, data in sorted(files.items(), reverse=True):
                info = tarfile.TarInfo(prefix + rel)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        out[key] = path
    return out
