"""Builds the embedded CIFAR-10 subset ``maskjax/assets/cifar10_mini/{train,test}.tar.gz``.

Takes the first N train and M test images of every class (sorted by file name) from the
CIFAR-10 ImageFolder tars, keeps the original JPEG bytes, and writes byte-reproducible archives:
members in sorted order with fixed mtime/uid/gid/mode in plain ustar format, gzip with mtime=0
and no file name in the header. Running it twice gives identical sha256 sums.

Usage (from the repository root)::

    python tools/make_embedded_subset.py [--src ../shared/data/cifar10] \
        [--out maskjax/assets/cifar10_mini] [--train-per-class 1000] [--test-per-class 200]
"""
from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import os
import pathlib
import sys
import tarfile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from maskjax.config.datasets import cifar10_dir  # noqa: E402

DEFAULT_SRC = cifar10_dir()
DEFAULT_OUT = REPO_ROOT / "maskjax" / "assets" / "cifar10_mini"
# Sized so train.tar.gz + test.tar.gz stay under 4.5 MB together (about 3.9 MB).
DEFAULT_TRAIN_PER_CLASS = 1000
DEFAULT_TEST_PER_CLASS = 200
# 2020-01-01T00:00:00Z, the timestamp of the source tars; any constant works, but 0 (1970)
# makes some tar implementations warn about implausibly old files.
FIXED_MTIME = 1577836800


def select_members(tar_path: pathlib.Path, split: str, per_class: int) -> list[tuple[str, bytes]]:
    """Returns ``(name, jpeg_bytes)`` for the first ``per_class`` files of each class folder."""
    by_class: dict[str, list[tarfile.TarInfo]] = collections.defaultdict(list)
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] == split:
                by_class[parts[1]].append(member)
        if not by_class:
            raise ValueError(f"no {split}/<class>/<file> members in {tar_path}")
        out = []
        for cls in sorted(by_class):
            members = sorted(by_class[cls], key=lambda m: m.name)
            if len(members) < per_class:
                raise ValueError(f"{tar_path}: class {cls} has {len(members)} < {per_class} images")
            for member in members[:per_class]:
                out.append((member.name, tar.extractfile(member).read()))
    return out


def write_reproducible_tgz(path: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    """Writes ``members`` to a gzipped tar whose bytes depend only on the members."""
    raw = io.BytesIO()
    # Fixed metadata on every header; ustar avoids pax headers (which may embed times).
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        # filename="" and mtime=0 keep the gzip header free of the output name and the time.
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as gz:
            gz.write(raw.getvalue())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the per-file size and sha256."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=pathlib.Path, default=DEFAULT_SRC,
                        help="folder with CIFAR-10 train.tar and test.tar")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=DEFAULT_TRAIN_PER_CLASS)
    parser.add_argument("--test-per-class", type=int, default=DEFAULT_TEST_PER_CLASS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        members = select_members(args.src / f"{split}.tar", split, per_class)
        out_path = args.out / f"{split}.tar.gz"
        write_reproducible_tgz(out_path, members)
        data = out_path.read_bytes()
        total += len(data)
        print(f"{out_path}: {len(members)} images, {len(data)} bytes, "
              f"sha256 {hashlib.sha256(data).hexdigest()}")
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
