"""Tests for maskjax.data.pipeline: sharding, determinism, resume, global batches, take_arrays."""
from __future__ import annotations

import io
import itertools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from maskjax.data import ImageFolderSource, make_image_pipeline, take_arrays, to_global_batch
from maskjax.data.transforms import Normalize, ResizeCenterCrop, to_rgb_uint8


class IndexedImages:
    """In-memory source whose label is the item index, so batches reveal which items they hold.

    Top-level (picklable) so that it also works with grain worker processes.
    """

    def __init__(self, n: int, size: int = 12):
        rng = np.random.default_rng(1)
        self._images = []
        for i in range(n):
            buf = io.BytesIO()
            shape = (size + i % 3, size + (2 * i) % 5, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
            self._images.append(buf.getvalue())

    def __len__(self):
        return len(self._images)

    def __getitem__(self, index):
        return {"image": self._images[index], "label": index, "id": f"img{index}"}


N = 40


@pytest.fixture(scope="module")
def indexed():
    return IndexedImages(N)


def _pipeline(source, **kw):
    args = dict(global_batch=8, image_size=8, train=True, seed=3, process_index=0, process_count=1)
    args.update(kw)
    return make_image_pipeline(source, **args)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _labels(batches):
    return [b["label"].tolist() for b in batches]


def test_batch_format(indexed):
    batch = next(iter(_pipeline(indexed)))
    assert set(batch) == {"image", "label"}  # extra source keys ("id") are dropped
    assert batch["image"].shape == (8, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32


@pytest.mark.parametrize("train", [True, False])
def test_process_shards_are_disjoint_and_cover_an_epoch(indexed, train):
    seen = []
    for process_index in (0, 1):
        ds = _pipeline(indexed, train=train, num_epochs=1, process_index=process_index,
                       process_count=2, global_batch=8)
        batches = list(itertools.islice(ds, 100))  # islice: a bug must fail, not hang
        assert len(batches) == N // 8  # 20 examples per process -> 5 batches of 4
        assert all(b["label"].shape == (4,) for b in batches)
        seen.append({label for b in batches for label in b["label"].tolist()})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(N))


def test_same_seed_same_batches_and_epochs_reshuffle(indexed):
    a = _take(iter(_pipeline(indexed, seed=7)), 10)
    b = _take(iter(_pipeline(indexed, seed=7)), 10)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    other = _take(iter(_pipeline(indexed, seed=8)), 5)
    assert _labels(other) != _labels(a[:5])
    # Each epoch (5 batches) is a permutation, and the order changes between epochs.
    epoch1 = sum(_labels(a[:5]), [])
    epoch2 = sum(_labels(a[5:]), [])
    assert sorted(epoch1) == sorted(epoch2) == list(range(N))
    assert epoch1 != epoch2


def test_augmentation_differs_across_epochs_and_processes(indexed):
    # One batch of the whole dataset per epoch, unshuffled-equivalent comparison by label.
    def images_by_label(batch):
        order = np.argsort(batch["label"])
        return batch["image"][order]

    it = iter(_pipeline(indexed, global_batch=N))
    e1, e2 = images_by_label(next(it)), images_by_label(next(it))
    assert not np.allclose(e1, e2)  # fresh crops/flips every epoch
    p0 = next(iter(_pipeline(indexed, global_batch=2, process_index=0, process_count=2)))
    p1 = next(iter(_pipeline(indexed, global_batch=2, process_index=1, process_count=2)))
    assert not np.allclose(p0["image"], p1["image"])


def test_eval_is_ordered_single_pass(indexed):
    ds = _pipeline(indexed, train=False, global_batch=16, drop_remainder=False)
    batches = list(itertools.islice(ds, 100))  # must stop after one pass
    assert _labels(batches) == [list(range(16)), list(range(16, 32)), list(range(32, 40))]
    expected, _ = take_arrays(indexed, range(16), 8)
    np.testing.assert_allclose(batches[0]["image"], expected, rtol=1e-6)


def test_state_resume(indexed):
    it = iter(_pipeline(indexed))
    _take(it, 7)  # crosses an epoch boundary
    state = it.get_state()
    expected = _take(it, 4)
    fresh = iter(_pipeline(indexed))
    fresh.set_state(state)
    for x, y in zip(_take(fresh, 4), expected):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_multiprocess_workers_match_in_process(indexed):
    # Proves sources and transforms survive pickling into grain workers; the stream must not
    # depend on the worker count (only the checkpoint state format does).
    ref = _take(iter(_pipeline(indexed)), 6)
    it = iter(_pipeline(indexed, num_workers=2))
    try:
        got = _take(it, 6)
    finally:
        it.close()
    for x, y in zip(got, ref):
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["image"], y["image"])


def test_argument_errors(indexed):
    with pytest.raises(ValueError, match="global_batch 7 is not divisible by the process count 2"):
        _pipeline(indexed, global_batch=7, process_count=2)
    with pytest.raises(ValueError, match="unknown augment 'simclr'"):
        _pipeline(indexed, augment="simclr")
    with pytest.raises(ValueError, match="fewer than its batch"):
        _pipeline(indexed, global_batch=64)


def test_to_global_batch_on_8_devices(indexed):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    host = next(iter(_pipeline(indexed, global_batch=16)))
    out = to_global_batch(host, sharding)
    assert out["image"].shape == (16, 8, 8, 3) and out["label"].shape == (16,)
    assert out["image"].sharding == sharding and out["label"].dtype == np.int32
    assert len(out["image"].addressable_shards) == 8
    assert out["image"].addressable_shards[0].data.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(np.asarray(out["image"]), host["image"])
    np.testing.assert_array_equal(np.asarray(out["label"]), host["label"])


def test_take_arrays(indexed):
    images, labels = take_arrays(indexed, [3, 0, 5], 8, crop_pct=1.0)
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.float32
    assert labels.tolist() == [3, 0, 5] and labels.dtype == np.int32
    manual = Normalize()(ResizeCenterCrop(8, 1.0)(to_rgb_uint8(indexed[5]["image"])))
    np.testing.assert_allclose(images[2], manual)


def test_pipeline_on_real_cifar(shared_data):
    source = ImageFolderSource(shared_data / "cifar10" / "test.tar", split="test")
    images, labels = take_arrays(source, [0, 1000, 9999], 32, crop_pct=1.0)
    assert labels.tolist() == [0, 1, 9]
    assert images.shape == (3, 32, 32, 3) and np.isfinite(images).all()
    assert -2.2 < images.min() < images.max() < 2.7
    batch = next(iter(make_image_pipeline(source, global_batch=4, image_size=32, train=True,
                                          seed=0, process_index=0, process_count=1)))
    assert batch["image"].shape == (4, 32, 32, 3)
