"""Convert an ImageFolder (directory or tar) into ArrayRecord shards.

ArrayRecord gives cheap random access from any number of processes without a tar index, which is
what grain wants for large datasets. Each record is a tiny self-describing binary format (no
pickle, so reading untrusted shards cannot execute code)::

    bytes 0..3   label, int32 little-endian
    bytes 4..    the original encoded image bytes (JPEG/PNG/... exactly as in the source)

``metadata.json`` beside the shards records the class names, record count, shard file names and
the format version. Records keep the source order, split into contiguous runs per shard, so
index ``i`` of the converted dataset is index ``i`` of the source.

CLI: ``maskjax convert-images SRC OUT [--split train] [--shards 8]`` (or
``python -m maskjax.data.convert SRC OUT ...``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

# The record format is shared with the reader (sources.ArrayRecordImageSource); re-exported here,
# where it was first defined.
from maskjax.data.image_records import (  # noqa: F401
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_FILE,
    check_metadata,
    decode_record,
    encode_record,
)
from maskjax.progress import progress


def _shard_name(i: int, n: int) -> str:
    return f"data-{i:05d}-of-{n:05d}.array_record"


def convert_image_folder(
    src: str | os.PathLike, out_dir: str | os.PathLike, num_shards: int = 8, split: str | None = None
) -> dict[str, Any]:
    """Writes the images of an ImageFolder directory or tar into ArrayRecord shards.

    Args:
      src: anything `maskjax.data.sources.ImageFolderSource` reads (directory, .tar, .tar.gz).
      out_dir: output directory (created; existing shards/metadata of the same names are
        overwritten).
      num_shards: number of shard files (capped at the number of images).
      split: optional top-level folder of ``src`` to convert (e.g. ``"train"``).

    Returns:
      The metadata dict that was written to ``out_dir/metadata.json``.
    """
    # Imported lazily: reading folders/tars does not need the ArrayRecord C++ module.
    from array_record.python import array_record_module

    from maskjax.data.sources import ImageFolderSource

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    source = ImageFolderSource(src, split=split)
    n = len(source)
    num_shards = min(num_shards, n)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, METADATA_FILE)
    if os.path.exists(meta_path):
        # Remove first so a failed conversion cannot leave old metadata describing new shards.
        os.remove(meta_path)
    shards = [_shard_name(i, num_shards) for i in range(num_shards)]
    counts = []
    bar = progress(total=n, desc="convert images", unit="img")
    for s, shard in enumerate(shards):
        # Contiguous runs keep the global order across shards; sizes differ by at most one.
        start, stop = s * n // num_shards, (s + 1) * n // num_shards
        bar.set_postfix_str(f"shard {s + 1}/{num_shards}")
        # group_size:1 makes every record its own chunk, so a random read decodes one record
        # (specs/jax_ecosystem.md gotcha G5).
        writer = array_record_module.ArrayRecordWriter(os.path.join(out_dir, shard), "group_size:1")
        try:
            for i in range(start, stop):
                item = source[i]
                writer.write(encode_record(item["label"], item["image"]))
                if (i - start) % 64 == 63:  # batched: an image can take microseconds to copy
                    bar.update(64)
        finally:
            writer.close()
        counts.append(stop - start)
        bar.update((stop - start) % 64)  # the rest of this shard
    bar.close()
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "record_layout": "int32 little-endian label, then the encoded image bytes",
        "class_names": list(source.class_names),
        "num_records": n,
        "shards": shards,
        "shard_num_records": counts,
        "source": os.path.abspath(os.fspath(src)),
        "split": split,
    }
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    os.replace(tmp, meta_path)  # metadata appears only once all shards are complete
    return meta


def build_parser(prog: str = "maskjax convert-images") -> argparse.ArgumentParser:
    """The argument parser of the ``convert-images`` command (exposed for the main CLI)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert an ImageFolder directory or tar (<class>/<file> images) into "
        "ArrayRecord shards readable with ArrayRecordImageSource / kind='array_record'.",
    )
    parser.add_argument("src", help="ImageFolder directory, .tar, .tar.gz or .tgz")
    parser.add_argument("out", help="output directory for the shards and metadata.json")
    parser.add_argument("--split", default=None, help="top-level folder to convert, e.g. train")
    parser.add_argument("--shards", type=int, default=8, help="number of shards (default 8)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``convert-images SRC OUT [--split S] [--shards N]``; returns 0 on success."""
    args = build_parser().parse_args(argv)
    try:
        meta = convert_image_folder(args.src, args.out, num_shards=args.shards, split=args.split)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {meta['num_records']} images of {len(meta['class_names'])} classes into "
        f"{len(meta['shards'])} shards in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
