"""The video grain pipeline: shapes, sampled frames, determinism, resume, eval views, the modality."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskjax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from maskjax.data.video.pipeline import clip_views, make_video_pipeline, take_clips, take_views
from maskjax.data.video.sampling import eval_views


class IndexedClips:
    """In-memory clips whose pixels reveal (item, frame): channel 0 = frame number * 10,
    channel 1 = item index * 10, channel 2 = a column ramp (shows the horizontal crop)."""

    def __init__(self, n: int, frames: int = 20, height: int = 12, width: int = 16):
        self.n, self.frames, self.height, self.width = n, frames, height, width

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        t = np.arange(self.frames, dtype=np.uint8)[:, None, None]
        clip = np.zeros((self.frames, self.height, self.width, 3), np.uint8)
        clip[..., 0] = 10 * t
        clip[..., 1] = 10 * index
        clip[..., 2] = (np.arange(self.width) * 15)[None, None, :]
        return {"frames": clip, "label": index}


def pixels(video: np.ndarray) -> np.ndarray:
    """Undo the ImageNet normalisation: back to 0..255 floats."""
    return (video * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)) * 255.0


def _pipe(source, **kw):
    args = dict(global_batch=4, train=True, seed=0, num_frames=4, sampling_rate=2, image_size=8,
                augment="multiscale_crop", process_index=0, process_count=1)
    args.update(kw)
    return make_video_pipeline(source, **args)


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_train_batches_shapes_and_strided_frames():
    source = IndexedClips(12)
    batch = next(iter(_pipe(source)))
    assert batch["video"].shape == (4, 4, 8, 8, 3) and batch["video"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    values = pixels(batch["video"])
    for row, label in enumerate(batch["label"]):
        frame_numbers = np.round(values[row, :, :, :, 0].mean(axis=(1, 2)) / 10).astype(int)
        # 4 frames 2 apart from a start in [0, 20 - 8] (the official sampling on a 20-frame video)
        assert np.all(np.diff(frame_numbers) == 2) and 0 <= frame_numbers[0] <= 12
        assert np.allclose(values[row, ..., 1], 10 * label, atol=1.0)  # the item's own frames


def test_determinism_seeds_and_resume():
    source = IndexedClips(16)
    a = _take(iter(_pipe(source)), 6)
    b = _take(iter(_pipe(source)), 6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["video"], y["video"])
        np.testing.assert_array_equal(x["label"], y["label"])
    c = _take(iter(_pipe(source, seed=1)), 6)
    assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, c))
    # resume: the state after 3 batches reproduces batches 4..6 (epochs roll over at 4 batches)
    it = iter(_pipe(source))
    _take(it, 3)
    state = it.get_state()
    rest = _take(it, 3)
    fresh = iter(_pipe(source))
    fresh.set_state(state)
    for x, y in zip(rest, _take(fresh, 3)):
        np.testing.assert_array_equal(x["video"], y["video"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_epochs_reshuffle_and_processes_are_disjoint():
    source = IndexedClips(8)
    batches = _take(iter(_pipe(source)), 4)  # two epochs of 2 batches
    first = np.concatenate([b["label"] for b in batches[:2]])
    second = np.concatenate([b["label"] for b in batches[2:]])
    assert sorted(first) == sorted(second) == list(range(8)) and not np.array_equal(first, second)
    shards = [np.concatenate([b["label"] for b in _take(iter(_pipe(source, global_batch=4, process_index=p,
                                                                    process_count=2)), 2)]) for p in (0, 1)]
    assert set(shards[0]).isdisjoint(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(8))


def test_eval_pass_is_ordered_center_clips():
    source = IndexedClips(6)
    batches = list(_pipe(source, train=False, drop_remainder=False))
    assert [b["label"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5]]
    values = pixels(batches[0]["video"])
    # 20 frames at stride 2 -> 10 entries; the centered 4 start at int(6 / 2) = 3 -> frames 6..12
    frame_numbers = np.round(values[0, :, :, :, 0].mean(axis=(1, 2)) / 10).astype(int)
    assert frame_numbers.tolist() == [6, 8, 10, 12]
    # 12x16 -> shorter side 8 (8x10), centered columns 1..9: the column ramp shows the crop
    resized = np.asarray(Image.fromarray(source[0]["frames"][6]).resize((10, 8), Image.BILINEAR))
    np.testing.assert_allclose(values[0, 0], resized[:, 1:9], atol=0.01)
    videos, labels = take_clips(source, [0, 1, 2, 3], {"num_frames": 4, "sampling_rate": 2, "image_size": 8})
    np.testing.assert_allclose(videos, batches[0]["video"], atol=1e-6)
    assert labels.tolist() == [0, 1, 2, 3]


def test_take_views_are_the_official_views():
    source = IndexedClips(3, frames=40, height=12, width=20)
    data = {"num_frames": 4, "sampling_rate": 2, "image_size": 8, "test_clips": 3, "test_crops": 3}
    videos, labels = take_views(source, [2, 0], data)
    assert videos.shape == (2, 9, 4, 8, 8, 3) and labels.tolist() == [2, 0]
    item = source[2]
    views = eval_views(40, 12, 20, num_frames=4, sampling_rate=2, short_side=8, test_num_segment=3,
                       test_num_crop=3)
    for v, view in enumerate(views):
        h, w = view.resize_hw
        frames = [np.asarray(Image.fromarray(item["frames"][i]).resize((w, h), Image.BILINEAR)) for i in view.indices]
        top, left, bh, bw = view.box
        ref = np.stack(frames)[:, top:top + bh, left:left + bw]
        np.testing.assert_allclose(pixels(videos[0, v]), ref, atol=0.01)
    # the three crops of a clip differ (they slide along the longer side), the clips differ in time
    assert not np.allclose(videos[0, 0], videos[0, 2]) and not np.allclose(videos[0, 0], videos[0, 3])
    assert clip_views(item, num_frames=4, sampling_rate=2, image_size=8, test_clips=1,
                      test_crops=1).shape == (1, 4, 8, 8, 3)


def test_argument_errors():
    source = IndexedClips(8)
    with pytest.raises(ValueError, match="unknown video augment"):
        _pipe(source, augment="mae")
    with pytest.raises(ValueError, match="num_frames"):
        _pipe(source, num_frames=0)
    with pytest.raises(ValueError, match="divisible"):
        _pipe(source, global_batch=3, process_count=2)
    with pytest.raises(ValueError, match="test_clips"):
        take_views(source, [0], {"num_frames": 4, "sampling_rate": 2, "image_size": 8, "test_clips": 0})


# ---------------------------------------------------------------- real files and the modality


@pytest.fixture(scope="module")
def mp4_root(tmp_path_factory):
    pytest.importorskip("av")
    from maskjax.data.video.decode import write_video

    root = tmp_path_factory.mktemp("pipe_videos")
    xx = np.arange(32, dtype=np.float32)[None, None, :, None]
    t = np.arange(20, dtype=np.float32)[:, None, None, None]
    for k in range(4):
        # smooth content that moves with time and differs per video (compresses well)
        wave = 127 + 100 * np.sin((xx + 2 * t) / (4.0 + k)) * np.array([1.0, -0.5, 0.7])
        frames = np.broadcast_to(wave, (20, 32, 32, 3)).clip(0, 255).astype(np.uint8)
        path = root / "train" / f"c{k % 2}" / f"{k}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, frames, fps=10)
    return root


def test_mp4_and_predecoded_sources_through_the_pipeline(mp4_root, tmp_path):
    from maskjax.data.video.predecode import predecode_videos
    from maskjax.data.video.sources import open_video_source

    folder = open_video_source("video_folder", path=str(mp4_root), split="train")
    predecode_videos(mp4_root, tmp_path, split="train", num_shards=2)
    clips = open_video_source("array_record_video", path=str(tmp_path), split="train")
    for source in (folder, clips):
        batch = next(iter(_pipe(source, global_batch=2, num_frames=8, sampling_rate=2, image_size=16)))
        assert batch["video"].shape == (2, 8, 16, 16, 3) and np.isfinite(batch["video"]).all()
    eval_a = next(iter(_pipe(folder, train=False, num_frames=8, image_size=16)))
    eval_b = next(iter(_pipe(clips, train=False, num_frames=8, image_size=16)))
    assert eval_a["label"].tolist() == eval_b["label"].tolist()
    # the same clips up to JPEG: far closer to each other than to the other videos' clips
    a, b = pixels(eval_a["video"]), pixels(eval_b["video"])
    assert np.abs(a - b).mean() < 3.0 < np.abs(a - b[::-1]).mean() / 3


def test_worker_processes_give_the_same_stream(mp4_root, tmp_path):
    from maskjax.data.video.predecode import predecode_videos
    from maskjax.data.video.sources import open_video_source

    predecode_videos(mp4_root, tmp_path, split="train", num_shards=1)
    source = open_video_source("array_record_video", path=str(tmp_path / "train"))
    # Proves the sources and transforms survive pickling into grain worker processes.
    threads = _take(iter(_pipe(source, global_batch=2, num_workers=0)), 3)
    it = iter(_pipe(source, global_batch=2, num_workers=2))
    try:
        workers = _take(it, 3)
    finally:
        it.close()
    for x, y in zip(threads, workers):
        np.testing.assert_array_equal(x["video"], y["video"])
        np.testing.assert_array_equal(x["label"], y["label"])


def _video_config(**data):
    from maskjax.config import moving_cifar_data, video_base_config

    config = video_base_config()
    moving_cifar_data(config)
    config.global_batch = 4
    config.data.num_frames, config.data.sampling_rate, config.data.image_size = 4, 2, 32
    config.data.update(data)
    return config


def test_video_modality_end_to_end():
    from maskjax.data.modalities import get_modality

    modality = get_modality("video")
    config = _video_config(test_clips=2, test_crops=1)
    errors: list[str] = []
    modality.check(config, errors)
    assert errors == []
    train = modality.open_source(config, "train")
    test = modality.open_source(config, "eval")
    assert len(train) == 10_000 and len(test) == 2_000
    assert train[0]["frames"].shape == (8, 32, 32, 3)  # num_frames x sampling_rate generated frames
    batch = next(iter(modality.make_pipeline(config, train, train=True)))
    assert batch["video"].shape == (4, 4, 32, 32, 3) and batch["label"].shape == (4,)
    x, y = modality.take_examples(config, test, [0, 1999])
    assert x.shape == (2, 4, 32, 32, 3) and y.tolist() == [test.labels[0], test.labels[1999]]
    xv, yv = modality.take_views(config, test, [5])
    assert xv.shape == (1, 2, 4, 32, 32, 3) and yv.tolist() == [test.labels[5]]


@pytest.mark.parametrize("overrides,message", [
    (dict(kind="webm_folder"), "unknown data.kind 'webm_folder'"),
    (dict(num_frames=5), "not divisible by model.tubelet_size=2"),
    (dict(sampling_rate=0), "data.sampling_rate must be a positive integer"),
    (dict(augment="mae"), "unknown data.augment 'mae'"),
    (dict(kind="video_folder", path=None), "data.path is not set"),
    (dict(kind="array_record_video", path="/nonexistent/clips"), "does not exist"),
    (dict(kind="tfds_video", name=None), "data.name is not set"),
    (dict(test_crops=0), "data.test_crops must be a positive integer"),
])
def test_video_modality_config_checks(overrides, message):
    from maskjax.data.modalities import get_modality

    errors: list[str] = []
    get_modality("video").check(_video_config(**overrides), errors)
    assert any(message in e for e in errors), errors
