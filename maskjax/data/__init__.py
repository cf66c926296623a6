"""Input pipelines: image sources, transforms, grain pipelines and the embedded CIFAR-10 subset."""
from __future__ import annotations

import pathlib

from maskjax.data.bad_records import bad_record_count, records_read_count
from maskjax.data.convert import convert_image_folder
from maskjax.data.pipeline import make_image_pipeline, take_arrays, to_global_batch
from maskjax.data.sources import (
    ArrayRecordImageSource,
    ImageFolderSource,
    TfdsImageSource,
    open_image_source,
)
from maskjax.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodeImage,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ResizeCenterCrop,
)


def embedded_cifar10_path() -> str:
    """Folder holding the bundled CIFAR-10 subset (``train.tar.gz`` and ``test.tar.gz``).

    Use as ``ImageFolderSource(embedded_cifar10_path() + "/train.tar.gz", split="train")``.
    The path is resolved relative to the installed package, so it works from a checkout, an
    editable install and a wheel (when the assets are packaged).
    """
    return str(pathlib.Path(__file__).resolve().parent.parent / "assets" / "cifar10_mini")


__all__ = [
    "ArrayRecordImageSource",
    "DecodeImage",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderSource",
    "Normalize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "ResizeCenterCrop",
    "TfdsImageSource",
    "bad_record_count",
    "convert_image_folder",
    "embedded_cifar10_path",
    "make_image_pipeline",
    "open_image_source",
    "records_read_count",
    "take_arrays",
    "to_global_batch",
]
