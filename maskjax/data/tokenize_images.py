"""``maskjax tokenize-images``: every image of a dataset encoded once into token ids, written as
ArrayRecord token records (:mod:`maskjax.data.image_tokens`), so generative training reads tokens,
not pixels.

The data half lives here: the argument parser, the walk over a source in order with the
evaluation preprocessing (resize + center crop at the tokenizer run's ``data.image_size`` and
``data.crop_pct``, ImageNet normalisation; no augmentation, so an image has one token grid), and
the streaming writer. Loading the trained tokenizer needs the method registry, a layer above data
(pyproject.toml ``[tool.importlinter]``), so the command's entry point is
:func:`maskjax.methods.vqgan.tokenize_images_main`, which calls :func:`tokenize_source` with the
tokenizer's ``encode_to_ids``.

Output: ``OUT/<split>/`` (``tokens-*.array_record`` + ``metadata.json`` with the grid, the
codebook size and the tokenizer run in ``source``), the layout the MaskGIT configs read
(``data.path = OUT/train``, ``data.eval_path = OUT/test``).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import numpy as np

DESCRIPTION = """Encodes every image of a split of the tokenizer run's dataset once (evaluation preprocessing)
and writes the token ids as ArrayRecord records in OUT/<split>/ (metadata.json beside them).

example:
  maskjax tokenize-images --workdir runs/vqgan_cifar10 --out data/cifar10_tokens --split train
  maskjax tokenize-images --workdir runs/vqgan_cifar10 --out data/cifar10_tokens --split test
"""


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments: ``--workdir``, ``--out``, ``--split``, ``--step``, ``--batch``."""
    p = argparse.ArgumentParser(prog="maskjax tokenize-images", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the tokenizer's training run (config.json + checkpoints/)")
    p.add_argument("--out", required=True, help="output folder; the tokens go to OUT/<split>/")
    p.add_argument("--split", default="train",
                   help="train (the run's data.path) or test/val/eval (its data.eval_path); names the sub-folder")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--batch", type=int, default=256, help="images encoded per call (default 256)")
    return p


def source_split(split: str) -> str:
    """The modality's split name for ``--split``: "train", or "eval" for any held-out name."""
    return "train" if split == "train" else "eval"


def tokenize_source(source: Any, encode: Callable[[np.ndarray], Any], path: str, *, image_size: int,
                    crop_pct: float, batch_size: int, grid: tuple[int, int], codebook_size: int,
                    num_classes: int | None = None, source_info: dict | None = None) -> dict:
    """Encodes every image of ``source`` in index order and writes the ids to the token dataset ``path``.

    ``encode``: normalised images f32 [batch_size, S, S, 3] -> ids [batch_size, h*w]; the last
    batch is padded with copies of its first image (one compiled shape) and the padding dropped.
    Returns the dataset's metadata (:class:`~maskjax.data.image_tokens.TokenRecordWriter`).
    """
    from maskjax.data.image_tokens import TokenRecordWriter, read_token_metadata
    from maskjax.data.pipeline import take_arrays
    from maskjax.progress import phase

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    total = len(source)
    with phase(f"tokenizing {total} images into {path}"):
        with TokenRecordWriter(path, grid=grid, codebook_size=codebook_size, num_classes=num_classes,
                               source_info=source_info) as writer:
            for start in range(0, total, batch_size):
                indices = list(range(start, min(start + batch_size, total)))
                images, labels = take_arrays(source, indices, image_size, crop_pct=crop_pct)
                n = len(indices)
                if n < batch_size:
                    images = np.concatenate([images, np.repeat(images[:1], batch_size - n, axis=0)])
                ids = np.asarray(encode(images))[:n]
                writer.write(ids.reshape(n, -1).astype(np.int64), labels)
    return read_token_metadata(path)   # written when the writer closed
