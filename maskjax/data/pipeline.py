"""grain input pipelines for image pre-training and evaluation.

`make_image_pipeline` builds a per-process ``grain.IterDataset`` of host-local batches;
`to_global_batch` turns one host batch into globally sharded ``jax.Array`` s. Checkpointing::

    ds = make_image_pipeline(source, global_batch=256, image_size=224, train=True, seed=0)
    it = iter(ds)                          # a grain DatasetIterator
    batch = to_global_batch(next(it), NamedSharding(mesh, P(("data", "fsdp"))))
    state = it.get_state()                 # small JSON-able dict; it.set_state(state) resumes
    # With Orbax: ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(it)) and
    # grain.checkpoint.CheckpointRestore(it) on restore. Each process saves its own iterator.

The iterator state depends on ``num_workers`` (specs/jax_ecosystem.md gotcha G2): resuming with
a different worker count fails or silently yields a different stream, so keep ``num_workers``
in the run config and refuse to resume when it changed.
"""
from __future__ import annotations

from typing import Any, Sequence

import grain
import jax
import numpy as np

from maskjax.data.bad_records import DEFAULT_MAX_BAD_FRACTION, SkipBadRecords
from maskjax.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodeImage,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ResizeCenterCrop,
)
from maskjax.errors import ConfigError, DataError

AUGMENTATIONS = ("mae", "probe", "finetune", "none", "simmim", "maskfeat", "ijepa")

# Pre-training crops of the masked-image-modeling recipes that differ from MAE's (scale, ratio, flip),
# as specs/methods_vision.md records them: SimMIM §2(d), MaskFeat §4(c), I-JEPA §13(d).
RECIPE_CROPS = {
    "simmim": ((0.67, 1.0), (3 / 4, 4 / 3), True),
    "maskfeat": ((0.5, 1.0), (0.75, 1.333), True),
    "ijepa": ((0.3, 1.0), (3 / 4, 4 / 3), False),
}
# MAE pre-training crops 20%..100% of the image area.
MAE_CROP_SCALE = (0.2, 1.0)


def train_augmentation(augment: str, image_size: int) -> list:
    """The training transforms (on decoded uint8 images, before Normalize) of each recipe.

    - ``"mae"``: pre-training, RandomResizedCrop(scale=(0.2, 1), bicubic) + flip.
    - ``"probe"``: MAE linear probing, the TF-style RandomResizedCrop(scale=(0.08, 1)) of MAE's
      ``util/crop.py`` (one draw, clamped; no rejection loop) + flip.
    - ``"finetune"``: MAE fine-tuning, RandomResizedCrop(0.08, 1) + flip + RandAugment
      (rand-m9-mstd0.5-inc1); random erasing runs after normalisation (see
      ``maskjax.data.augment``).
    - ``"simmim"``, ``"maskfeat"``, ``"ijepa"``: those recipes' pre-training crops
      (:data:`RECIPE_CROPS`: crop scale and aspect range; I-JEPA has no flip).
    - ``"none"``: no augmentation (resize + center crop as in evaluation).
    """
    if augment in RECIPE_CROPS:
        scale, ratio, flip = RECIPE_CROPS[augment]
        return [RandomResizedCrop(image_size, scale=scale, ratio=ratio)] + ([RandomHorizontalFlip(0.5)] if flip else [])
    if augment == "mae":
        return [RandomResizedCrop(image_size, scale=MAE_CROP_SCALE), RandomHorizontalFlip(0.5)]
    if augment == "probe":
        return [RandomResizedCrop(image_size, scale=(0.08, 1.0), tf_style=True), RandomHorizontalFlip(0.5)]
    if augment == "finetune":
        from maskjax.data.augment import RandAugment

        return [RandomResizedCrop(image_size, scale=(0.08, 1.0)), RandomHorizontalFlip(0.5), RandAugment()]
    return []


class ImageLabelOnly(grain.transforms.Map):
    """Keeps exactly ``{"image", "label"}`` with an int32 label, so batches stack cleanly.

    Sources may carry extra keys (TFDS ids, file names) that cannot be turned into jax arrays.
    """

    def map(self, element: dict) -> dict:
        """Returns ``{"image": element["image"], "label": np.int32(element["label"])}``."""
        return {"image": element["image"], "label": np.int32(element["label"])}


def _process_seed(seed: int, process_index: int, stream: int) -> int:
    """A 32-bit seed for one random transform on one process.

    grain seeds a random_map from (seed, element index); without mixing in the process index,
    element i of every host would get the same crop and flip.
    """
    return int(np.random.SeedSequence([seed, process_index, stream]).generate_state(1)[0])


def make_image_pipeline(
    source: Any,
    *,
    global_batch: int,
    image_size: int,
    train: bool,
    seed: int,
    augment: str = "mae",
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    read_options: grain.ReadOptions | None = None,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> grain.IterDataset:
    """Builds this process's pipeline of ``{"image": f32[b,H,W,3], "label": i32[b]}`` batches.

    Steps: source -> seed -> per-process shard ``[process_index::process_count]`` -> (train)
    global shuffle, reshuffled every epoch -> decode -> augmentation -> normalize -> batch of
    ``global_batch // process_count`` -> repeat -> ``to_iter_dataset`` -> (num_workers > 0)
    ``mp_prefetch``.

    Args:
      source: a random-access source with items ``{"image": bytes|array, "label": int}``.
      global_batch: batch size summed over all processes; must divide by ``process_count``.
      image_size: output side length.
      train: shuffle + augment + repeat forever (unless ``num_epochs``); else one ordered pass
        with eval preprocessing.
      seed: seeds shuffling and augmentation (same seed -> same batches).
      augment: ``"mae"`` (RandomResizedCrop(scale=(0.2, 1)) + horizontal flip) or ``"none"``
        (resize + center crop). Evaluation always uses the latter.
      process_index, process_count: this process's shard; default ``jax.process_index()`` and
        ``jax.process_count()``.
      num_workers: grain worker processes (0 = read in threads of this process).
      num_epochs: passes over the data; None = forever when training, one pass when not.
      drop_remainder: drop each epoch's last partial batch. When True the dataset is also
        trimmed to a multiple of ``process_count`` first so every process yields the same
        number of batches (unequal counts would hang multi-host collectives). With False
        (exact evaluation) processes can differ by one example and the last batch is smaller,
        so gather such batches per process rather than with `to_global_batch`.
      crop_pct: resize/crop ratio of the eval preprocessing (0.875: 256 -> 224 crop; use 1.0
        for images already at ``image_size``, e.g. CIFAR-10 at 32).
      mean, std: normalization constants (ImageNet by default, as MAE).
      read_options: grain read threads / buffer; defaults to 4 threads, 64 elements ahead.
      max_bad_fraction: images that do not decode are skipped (one warning each, replaced by the
        next readable one) until they exceed this share of the images read; then
        :class:`~maskjax.errors.DataError` (``maskjax.data.bad_records``).

    Returns:
      A ``grain.IterDataset``; ``iter()`` gives a checkpointable iterator (module docstring).
    """
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"unknown augment {augment!r}; expected one of {', '.join(AUGMENTATIONS)}")
    # Decoding happens where each image is read, so a corrupt file is skipped at its index, with
    # its path, instead of failing the run steps later with PIL's traceback.
    source = SkipBadRecords(source, DecodeImage().map, max_bad_fraction=max_bad_fraction)
    ds, process_index, per_process_batch = process_shard(
        source, global_batch=global_batch, seed=seed, process_index=process_index,
        process_count=process_count, num_epochs=num_epochs, num_workers=num_workers,
        drop_remainder=drop_remainder, unit="examples")
    if train:
        # Explicit per-process seed: the index-based shuffle is reseeded with (seed + epoch) once
        # repeat() feeds it indices past the first epoch.
        ds = ds.shuffle(seed=_process_seed(seed, process_index, 0))
    transforms = train_augmentation(augment, image_size) if train else []
    if not transforms:
        ds = ds.map(ResizeCenterCrop(image_size, crop_pct=crop_pct))
    for stream, transform in enumerate(transforms, start=1):
        # Each random transform gets its own per-process seed stream (1, 2, ... as before).
        ds = ds.random_map(transform, seed=_process_seed(seed, process_index, stream))
    ds = ds.map(Normalize(mean, std))
    if train and augment == "finetune":
        from maskjax.data.augment import RandomErasing

        ds = ds.random_map(RandomErasing(0.25), seed=_process_seed(seed, process_index, 99))
    ds = ds.map(ImageLabelOnly())
    return batch_and_iterate(ds, per_process_batch, train=train, num_epochs=num_epochs,
                             num_workers=num_workers, drop_remainder=drop_remainder, read_options=read_options)


def process_shard(source, *, global_batch: int, seed: int, process_index: int | None, process_count: int | None,
                  num_epochs: int | None, num_workers: int, drop_remainder: bool, unit: str = "examples"):
    """Validates the arguments and returns ``(dataset, process_index, per_process_batch)``.

    The seeded ``MapDataset`` holds this process's strided shard of ``source``. With
    ``drop_remainder`` the source is first trimmed to a multiple of ``process_count`` so every
    process yields the same number of batches (unequal counts would hang multi-host
    collectives). Shared by the image and text pipelines.
    """
    if process_index is None:
        process_index = jax.process_index()
    if process_count is None:
        process_count = jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if global_batch <= 0 or global_batch % process_count:
        raise ValueError(f"global_batch {global_batch} is not divisible by the process count {process_count}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    per_process_batch = global_batch // process_count
    ds = grain.MapDataset.source(source).seed(seed)
    if drop_remainder:
        ds = ds[: len(ds) // process_count * process_count]
    ds = ds[process_index::process_count]
    if len(ds) < per_process_batch and drop_remainder:
        raise DataError(
            f"process {process_index} has {len(ds)} {unit}, fewer than its batch "
            f"{per_process_batch}; with drop_remainder=True it would yield no batches")
    return ds, process_index, per_process_batch


def batch_and_iterate(ds, per_process_batch: int, *, train: bool, num_epochs: int | None, num_workers: int,
                      drop_remainder: bool, read_options=None):
    """Batches, repeats (forever when training) and turns ``ds`` into a checkpointable IterDataset."""
    ds = ds.batch(per_process_batch, drop_remainder=drop_remainder)
    # repeat() after the random maps: it forwards indices beyond the first epoch to the parents,
    # so shuffle order and random transforms differ every epoch (grain's reseed_each_epoch).
    epochs = num_epochs if num_epochs is not None else (None if train else 1)
    if epochs != 1:
        ds = ds.repeat(epochs)
    if read_options is None:
        read_options = grain.ReadOptions(num_threads=4, prefetch_buffer_size=64)
    it_ds = ds.to_iter_dataset(read_options)
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it_ds


def to_global_batch(host_batch: dict, sharding: jax.sharding.Sharding) -> dict:
    """Assembles each process's host-local batch into global ``jax.Array`` s.

    Every leaf's leading (batch) axis is sharded by ``sharding`` (e.g.
    ``NamedSharding(mesh, P(("data", "fsdp")))``); the global batch is the concatenation of the
    processes' batches in process order. Works unchanged on one process.
    """
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch
    )


def take_arrays(
    source: Any,
    indices: Sequence[int],
    image_size: int,
    *,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """Eagerly loads ``source[indices]`` with eval preprocessing (small subsets only).

    Returns ``(images f32[n, image_size, image_size, 3] normalized, labels i32[n])``; used for
    linear probes and reconstruction figures. ``crop_pct`` as in `make_image_pipeline`. An image
    that does not decode is replaced by the next readable one, as in the pipeline.
    """
    crop, normalize = ResizeCenterCrop(image_size, crop_pct), Normalize(mean, std)
    source = SkipBadRecords(source, DecodeImage().map)
    indices = [int(i) for i in indices]
    images = np.zeros((len(indices), image_size, image_size, 3), np.float32)
    labels = np.zeros((len(indices),), np.int32)
    for row, index in enumerate(indices):
        item = normalize.map(crop.map(source[index]))
        images[row] = item["image"]
        labels[row] = item["label"]
    return images, labels
