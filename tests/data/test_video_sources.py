"""Video sources: folders of MP4s, predecode -> ArrayRecord, moving CIFAR, TFDS, the factory, CLIs."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")

from maskjax.data.sources import ImageFolderSource  # noqa: E402
from maskjax.data.transforms import to_rgb_uint8  # noqa: E402
from maskjax.data.video.decode import read_all_frames, write_video  # noqa: E402
from maskjax.data.video.moving_cifar import MovingCifarSource, resolve_cifar  # noqa: E402
from maskjax.data.video.predecode import (  # noqa: E402
    encode_clip_record,
    parse_clip_header,
    predecode_videos,
)
from maskjax.data.video.sources import (  # noqa: E402
    ArrayRecordClipSource,
    VideoFolderSource,
    clip_reader,
    open_video_source,
)

# Per class: (number of frames, height, width) of each video; names deliberately unsorted.
VIDEOS = {"walk": [(20, 32, 32), (12, 32, 48)], "clap": [(20, 32, 32)]}


def smooth_clip(seed: int, t: int, h: int, w: int) -> np.ndarray:
    """A smooth moving pattern (compresses well, so decoded frames stay close to these)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = [127 + 100 * np.sin((xx + 2 * k + seed * 7) / 6.0)[..., None] * np.array([1.0, 0.6, -0.8])
              + 0 * yy[..., None] for k in range(t)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    originals = {}
    seed = 0
    for cls, specs in VIDEOS.items():
        for k, (t, h, w) in enumerate(specs):
            frames = smooth_clip(seed, t, h, w)
            path = root / "train" / cls / f"v{k}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_video(path, frames, fps=12)
            originals[f"train/{cls}/v{k}.mp4"] = frames
            seed += 1
    (root / "train" / "clap" / "notes.txt").write_text("not a video")
    (root / "test" / "clap").mkdir(parents=True)
    write_video(root / "test" / "clap" / "a.mp4", smooth_clip(9, 6, 32, 32), fps=12)
    return root, originals


def test_video_folder_source(video_root):
    root, originals = video_root
    source = VideoFolderSource(root, "train")
    assert source.class_names == ["clap", "walk"]
    assert len(source) == 3
    assert [source.relative_path(i) for i in range(3)] == ["train/clap/v0.mp4", "train/walk/v0.mp4",
                                                          "train/walk/v1.mp4"]
    assert source.labels.tolist() == [0, 1, 1]
    item = source[2]
    assert item["label"] == 1 and item["path"].endswith("walk/v1.mp4")
    reader = clip_reader(item)
    assert (reader.num_frames, reader.height, reader.width) == (12, 32, 48)
    got = reader.read(np.array([11, 0]))
    ref = originals["train/walk/v1.mp4"][[11, 0]]
    assert np.abs(got.astype(np.int32) - ref).mean() < 4.0
    assert len(VideoFolderSource(root, "test")) == 1
    with pytest.raises(ValueError, match="split folder 'val' not found"):
        VideoFolderSource(root, "val")
    with pytest.raises(FileNotFoundError):
        VideoFolderSource(root / "nowhere", "train")


def test_clip_record_round_trip_and_corruption():
    jpegs = [b"\xff\xd8one", b"\xff\xd8second", b"\xff\xd8"]
    record = encode_clip_record(7, 29.97, jpegs, 240, 320, video_index=4, first_frame=16, total_frames=40,
                                name="a/b.mp4")
    header = parse_clip_header(record)
    assert (header.label, header.num_frames, header.height, header.width, header.name) == (7, 3, 240, 320, "a/b.mp4")
    assert (header.video_index, header.first_frame, header.total_frames) == (4, 16, 40)
    assert header.fps == pytest.approx(29.97)
    assert [record[header.offsets[i]:header.offsets[i + 1]] for i in range(3)] == jpegs
    with pytest.raises(ValueError, match="magic"):
        parse_clip_header(b"XXXX" + record[4:])
    with pytest.raises(ValueError, match="frame table"):
        parse_clip_header(record[:-1])
    with pytest.raises(ValueError, match="exceed"):
        encode_clip_record(0, 1.0, jpegs, 2, 2, first_frame=38, total_frames=40)


def _all_frames(item) -> np.ndarray:
    reader = clip_reader(item)
    return reader.read(np.arange(reader.num_frames))


def test_predecode_array_record_same_frames(video_root, tmp_path):
    root, _ = video_root
    meta = predecode_videos(root, tmp_path, split="train", num_shards=2, quality=95)
    # 20, 20 and 12 frames in records of 16: 2 + 2 + 1 records; whole videos stay in one shard
    assert meta["num_videos"] == 3 and meta["num_records"] == 5 and meta["class_names"] == ["clap", "walk"]
    assert meta["shard_num_records"] == [2, 3]
    folder = VideoFolderSource(root, "train")
    clips = ArrayRecordClipSource(tmp_path / "train")
    assert len(clips) == len(folder) and clips.class_names == folder.class_names
    assert clips.labels.tolist() == folder.labels.tolist()
    for i in range(len(folder)):
        decoded, fps = read_all_frames(folder.path_of(i))
        item = clips[i]
        assert item["label"] == folder[i]["label"]
        frames = _all_frames(item)
        assert frames.shape == decoded.shape
        # equal up to JPEG (quality 95, 4:2:0 chroma): PSNR well above 30 dB, and far closer than
        # to the neighbouring frames (the content moves 2 pixels per frame)
        mse = ((frames.astype(np.float64) - decoded) ** 2).mean()
        assert 10 * np.log10(255**2 / mse) > 32
        shifted = ((frames[1:].astype(np.float64) - decoded[:-1]) ** 2).mean()
        assert mse < shifted / 4
        # reading across record boundaries, in any order, with repeats
        idx = np.array([len(frames) - 1, 0, min(15, len(frames) - 2), 3, min(15, len(frames) - 2)])
        np.testing.assert_array_equal(clip_reader(item).read(idx), frames[idx])
        first = clips._records[clips._index[i, 0]]
        header = parse_clip_header(first)
        assert header.name == folder.relative_path(i) and header.video_index == i
        assert header.fps == pytest.approx(fps)
    # the factory resolves OUT/<split> as well as the folder itself
    assert len(open_video_source("array_record_video", path=str(tmp_path), split="train")) == 3
    assert len(open_video_source("array_record_video", path=str(tmp_path / "train"), split="test")) == 3


def test_records_per_video_layouts_agree(video_root, tmp_path):
    root, _ = video_root
    by_three = predecode_videos(root, tmp_path / "a", split="train", frames_per_record=3, num_shards=1)
    whole = predecode_videos(root, tmp_path / "b", split="train", frames_per_record=0, num_shards=1)
    assert by_three["num_records"] == 7 + 7 + 4 and whole["num_records"] == 3
    a, b = ArrayRecordClipSource(tmp_path / "a" / "train"), ArrayRecordClipSource(tmp_path / "b" / "train")
    for i in range(3):
        np.testing.assert_array_equal(_all_frames(a[i]), _all_frames(b[i]))  # the same JPEGs, regrouped
        record = b._records[i]
        np.testing.assert_array_equal(_all_frames({"record": record, "label": 0}), _all_frames(b[i]))


def test_predecode_resizes_short_side_and_cli(video_root, tmp_path, capsys):
    from maskjax.data.video.predecode import main

    root, _ = video_root
    assert main(["--src", str(root), "--out", str(tmp_path), "--split", "train", "--frame_size", "16",
                 "--shards", "1"]) == 0
    assert "wrote 3 videos of 2 classes" in capsys.readouterr().out
    clips = ArrayRecordClipSource(tmp_path / "train" / "metadata.json")
    sizes = [_all_frames(clips[i]).shape[1:3] for i in range(3)]
    assert sizes == [(16, 16), (16, 16), (16, 24)]  # 32x48 -> shorter side 16, longer int(16 * 48 / 32)
    meta = json.loads((tmp_path / "train" / "metadata.json").read_text())
    assert meta["frame_size"] == 16 and meta["format"] == "maskjax.video_clips"
    assert main(["--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_predecode_skips_unreadable_videos(tmp_path):
    (tmp_path / "src" / "train" / "a").mkdir(parents=True)
    write_video(tmp_path / "src" / "train" / "a" / "ok.mp4", smooth_clip(0, 4, 16, 16), fps=5)
    (tmp_path / "src" / "train" / "a" / "bad.mp4").write_bytes(b"garbage" * 20)
    from maskjax.data.video.decode import VideoDecodeError

    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        predecode_videos(tmp_path / "src", tmp_path / "out", split="train")
    assert not (tmp_path / "out" / "train" / "metadata.json").exists()
    meta = predecode_videos(tmp_path / "src", tmp_path / "out", split="train", skip_errors=True, num_workers=1)
    assert meta["num_videos"] == 1 and meta["skipped"][0]["path"] == "train/a/bad.mp4"
    assert len(ArrayRecordClipSource(tmp_path / "out" / "train")) == 1


# ---------------------------------------------------------------- moving CIFAR


@pytest.fixture(scope="module")
def cifar_test():
    return ImageFolderSource(resolve_cifar(None, "test"), split="test")


def _shift_between(a: np.ndarray, b: np.ndarray) -> tuple[int, int] | None:
    """The circular shift (dy, dx) with b == roll(a, (dy, dx)), if there is one."""
    for dy in range(a.shape[0]):
        for dx in range(a.shape[1]):
            if np.array_equal(np.roll(a, (dy, dx), axis=(0, 1)), b):
                return dy, dx
    return None


def test_moving_cifar_is_deterministic_and_labelled(cifar_test):
    a = MovingCifarSource(None, "test", num_frames=6)
    b = MovingCifarSource(None, "test", num_frames=6)
    assert len(a) == len(cifar_test) and a.class_names == cifar_test.class_names
    for i in (0, 17, 1999):
        np.testing.assert_array_equal(a[i]["frames"], b[i]["frames"])
        assert a[i]["label"] == cifar_test[i]["label"] == a.labels[i]
    assert not np.array_equal(a[3]["frames"], MovingCifarSource(None, "test", num_frames=6, seed=1)[3]["frames"])
    with pytest.raises(IndexError):
        a[len(a)]


def test_moving_cifar_frames_move_with_constant_velocity(cifar_test):
    source = MovingCifarSource(None, "test", num_frames=8, min_speed=1.0, max_speed=3.0)
    for i in (5, 600):
        frames = source[i]["frames"]
        image = to_rgb_uint8(cifar_test[i]["image"])
        # every frame is the real CIFAR image, circularly shifted (32x32 canvas wraps around)
        shifts = [_shift_between(image, f) for f in frames]
        assert all(s is not None for s in shifts)
        # unwrap the shifts and fit a constant velocity: rounding error of at most 1 pixel
        pos = np.unwrap(np.array(shifts, np.float64) * 2 * np.pi / 32, axis=0) * 32 / (2 * np.pi)
        t = np.arange(8)
        velocity = np.polyfit(t, pos, 1)[0]
        assert 1.0 - 1e-6 <= np.hypot(*velocity) <= 3.0 + 0.3
        residual = pos - (pos[0] + np.outer(t, velocity))
        assert np.abs(residual).max() <= 1.0
        assert np.abs(pos[-1] - pos[0]).max() >= 3  # it actually moved


def test_moving_cifar_larger_canvas_noise_and_distractor(cifar_test):
    black = MovingCifarSource(None, "test", num_frames=5, canvas_size=48)
    frames = black[9]["frames"]
    image = to_rgb_uint8(cifar_test[9]["image"])
    assert frames.shape == (5, 48, 48, 3)
    # black background, wrap-around paste: the whole image is on the canvas in every frame
    assert all(int(f.astype(np.int64).sum()) == int(image.astype(np.int64).sum()) for f in frames)
    noisy = MovingCifarSource(None, "test", num_frames=5, canvas_size=48, background="noise", distractor=True)
    assert noisy[9]["frames"].shape == (5, 48, 48, 3) and noisy[9]["label"] == black[9]["label"]
    with pytest.raises(ValueError, match="canvas_size"):
        MovingCifarSource(None, "test", canvas_size=20)


def test_make_moving_cifar_cli_writes_decodable_mp4s(tmp_path, capsys):
    from maskjax.data.video.moving_cifar import main

    assert main(["--out", str(tmp_path), "--n", "3", "--num_frames", "8", "--split", "test"]) == 0
    assert "wrote 3 clips" in capsys.readouterr().out
    folder = VideoFolderSource(tmp_path, "test")
    generator = MovingCifarSource(None, "test", num_frames=8)
    assert len(folder) == 3
    for i in range(3):
        index = int(folder.relative_path(i).rsplit("/", 1)[1].split(".")[0])
        decoded, _ = read_all_frames(folder.path_of(i))
        expected = generator[index]
        assert decoded.shape == (8, 32, 32, 3)
        assert folder.class_names[folder[i]["label"]] == generator.class_names[expected["label"]]
        err = np.abs(decoded.astype(np.int32) - expected["frames"]).mean()
        other = np.abs(decoded.astype(np.int32) - generator[(index + 1) % len(generator)]["frames"]).mean()
        assert err < 12 and err < other / 2


# ---------------------------------------------------------------- TFDS and the factory


def test_tfds_video_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyVideoClips(tfds.core.GeneratorBasedBuilder):
        """A TFDS video dataset stand-in (uint8 frames; TFDS's Video feature needs TensorFlow)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=(None, 8, 8, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):  # pragma: no cover - mock_data replaces it
            yield 0, {}

    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        source = open_video_source("tfds_video", name="tiny_video_clips", split="train")
        assert len(source) == 4 and source.class_names == ["a", "b", "c"]
        item = source[0]
        assert item["frames"].dtype == np.uint8 and item["frames"].shape[1:] == (8, 8, 3)
        assert 0 <= item["label"] < 3
        assert clip_reader(item).num_frames == item["frames"].shape[0]


def test_open_video_source_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown video data.kind 'avi'"):
        open_video_source("avi", path="x")
    with pytest.raises(ValueError, match="needs data.path"):
        open_video_source("video_folder")
    with pytest.raises(ValueError, match="needs data.path"):
        open_video_source("array_record_video")
    with pytest.raises(ValueError, match="needs data.name"):
        open_video_source("tfds_video", split="train")
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        open_video_source("array_record_video", path=str(tmp_path))
    with pytest.raises(FileNotFoundError):
        open_video_source("moving_cifar", path=str(tmp_path / "none.tar"), split="train")
    with pytest.raises(ValueError, match="'frames', 'path', 'clip' or 'record'"):
        clip_reader({"label": 1})
