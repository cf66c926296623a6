"""Audio sources (WAV reading, FSDD, WAV folders, TFDS), augmentations, grain pipeline, modality."""

from __future__ import annotations

import collections
import pickle
import struct
import tarfile
import types
import wave

import numpy as np
import pytest

from maskjax.config import audio_base_config, fsdd_data
from maskjax.data.audio.benchmark import audio_pipeline_throughput
from maskjax.data.audio.pipeline import SpecAugment, make_audio_pipeline, mask_along_axis, roll_mag, take_spectrograms
from maskjax.data.audio.sources import FsddSource, TfdsAudioSource, WavFolderSource, open_audio_source, read_wav
from maskjax.data.modalities import get_modality
from tests.audio_helpers import FSDD_TAR, torchaudio_wheel, wav_bytes, write_wav

needs_fsdd = pytest.mark.skipif(not FSDD_TAR.exists(), reason=f"{FSDD_TAR} is not present")


# --------------------------------------------------------------------------------------------- WAV


@pytest.mark.parametrize("sampwidth,ints,expected", [
    (1, [0, 1, 128, 255], [-1.0, -127 / 128, 0.0, 127 / 128]),
    (2, [-32768, -1, 0, 1, 32767], [-1.0, -1 / 32768, 0.0, 1 / 32768, 32767 / 32768]),
    (3, [-(1 << 23), -1, 0, 5, (1 << 23) - 1], [-1.0, -(2.0 ** -23), 0.0, 5 * 2.0 ** -23, 1 - 2.0 ** -23]),
    (4, [-(1 << 31), -1, 0, 1 << 30], [-1.0, -(2.0 ** -31), 0.0, 0.5]),
])
def test_read_wav_pcm_widths(tmp_path, sampwidth, ints, expected):
    path = tmp_path / "x.wav"
    write_wav(path, np.asarray(ints), 22050, sampwidth)
    x, rate = read_wav(path)
    assert rate == 22050 and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.float32(expected))


def test_read_wav_stereo_is_averaged():
    x, rate = read_wav(wav_bytes(np.array([[1000, 3000], [-2000, 0], [7, 8]]), 8000))
    assert rate == 8000
    np.testing.assert_allclose(x, np.float32([2000, -1000, 7.5]) / 32768, rtol=1e-6)


def _riff(fmt_chunk: bytes, data: bytes) -> bytes:
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
            + b"data" + struct.pack("<I", len(data)) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_read_wav_float_and_extensible_headers():
    samples = np.float32([0.25, -0.5, 0.75, 0.0])
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)  # IEEE float mono
    x, rate = read_wav(_riff(fmt, samples.tobytes()))
    assert rate == 16000
    np.testing.assert_array_equal(x, samples)
    # WAVE_FORMAT_EXTENSIBLE, PCM sub-format, 2 channels of int16.
    guid = struct.pack("<H", 1) + bytes.fromhex("000000001000800000aa00389b71")
    ext = struct.pack("<HHIIHHHHI", 0xFFFE, 2, 8000, 32000, 4, 16, 22, 16, 3) + guid
    ints = np.array([[100, 300], [-400, 0]], "<i2")
    x, rate = read_wav(_riff(ext, ints.tobytes()))
    assert rate == 8000
    np.testing.assert_allclose(x, np.float32([200, -200]) / 32768)


def test_read_wav_rejects_garbage():
    with pytest.raises(ValueError, match="not a RIFF|cannot read"):
        read_wav(b"not a wav file at all", where="junk.wav")


# -------------------------------------------------------------------------------------------- FSDD


@needs_fsdd
def test_fsdd_official_split_counts():
    test, train = FsddSource(FSDD_TAR, "test"), FsddSource(FSDD_TAR, "train")
    assert (len(test), len(train), len(FsddSource(FSDD_TAR, "all"))) == (300, 2700, 3000)
    assert test.class_names == [str(d) for d in range(10)]
    per_digit_speaker = collections.Counter(zip(test.labels.tolist(), test.speakers))
    assert len(per_digit_speaker) == 60 and set(per_digit_speaker.values()) == {5}  # 10 digits x 6 speakers x 5
    assert set(collections.Counter(zip(train.labels.tolist(), train.speakers)).values()) == {45}
    assert all(int(p.rsplit("_", 1)[1][:-4]) <= 4 for p in test._paths)
    assert all(int(p.rsplit("_", 1)[1][:-4]) >= 5 for p in train._paths)


@needs_fsdd
def test_fsdd_item_matches_a_direct_read_and_survives_pickling():
    src = FsddSource(FSDD_TAR, "test")
    index = 123
    rel = src.relative_path(index)
    with tarfile.open(FSDD_TAR) as tar, wave.open(tar.extractfile(rel)) as w:
        expected = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    item = src[index]
    assert item["sample_rate"] == 8000 and item["label"] == int(rel.split("/")[-1][0])
    np.testing.assert_array_equal(item["waveform"], expected)
    clone = pickle.loads(pickle.dumps(src))
    assert clone._store._fd is None  # reopened lazily in the receiving process
    np.testing.assert_array_equal(clone[index]["waveform"], expected)


@needs_fsdd
def test_fsdd_from_a_directory(tmp_path):
    names = ["recordings/3_theo_2.wav", "recordings/3_theo_7.wav", "recordings/8_lucas_49.wav"]
    with tarfile.open(FSDD_TAR) as tar:
        for name in names:
            (tmp_path / name).parent.mkdir(exist_ok=True)
            (tmp_path / name).write_bytes(tar.extractfile(name).read())
    (tmp_path / "recordings" / "README.wav").write_bytes(b"")  # not an FSDD name: ignored
    train = FsddSource(tmp_path, "train")
    assert len(train) == 2 and train.labels.tolist() == [3, 8]
    assert FsddSource(tmp_path / "recordings", "test").labels.tolist() == [3]
    with pytest.raises(ValueError, match="split"):
        FsddSource(tmp_path, "validation")
    with pytest.raises(FileNotFoundError, match="FSDD"):
        FsddSource(tmp_path / "missing.tar", "train")


# ------------------------------------------------------------------------------------ WAV folders


@pytest.fixture
def wav_tree(tmp_path):
    rng = np.random.default_rng(0)
    layout = {"train/zebra/a.wav": 300, "train/zebra/b.wav": 500, "train/ant/c.wav": 400,
              "test/ant/d.wav": 250, "flat/dog_1.wav": 260, "flat/cat_9.wav": 270}
    for rel, n in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_wav(tmp_path / rel, rng.integers(-3000, 3000, n), 8000)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("ignored")
    with tarfile.open(tmp_path / "tree.tar", "w") as tar:
        tar.add(tmp_path / "train", arcname="train")
    return tmp_path, layout


def test_wav_folder_layout_labels_and_tar(wav_tree):
    root, layout = wav_tree
    src = WavFolderSource(root, "train")
    assert src.class_names == ["ant", "zebra"]
    assert [src.relative_path(i) for i in range(len(src))] == ["train/ant/c.wav", "train/zebra/a.wav",
                                                               "train/zebra/b.wav"]
    assert src.labels.tolist() == [0, 1, 1]
    assert [src[i]["waveform"].shape[0] for i in range(3)] == [400, 300, 500]
    from_tar = WavFolderSource(root / "tree.tar", "train")
    np.testing.assert_array_equal(from_tar[2]["waveform"], src[2]["waveform"])
    flat = WavFolderSource(root, "flat")  # class from the file-name prefix
    assert flat.class_names == ["cat", "dog"] and flat.labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="split folder 'val'"):
        WavFolderSource(root, "val")


def test_open_audio_source_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown audio data.kind 'mp3'"):
        open_audio_source("mp3", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_audio_source("wav_folder", path=str(tmp_path / "nope"), split="train")
    with pytest.raises(ValueError, match="data.path"):
        open_audio_source("fsdd", path=None)
    with pytest.raises(ValueError, match="data.name"):
        open_audio_source("tfds_audio", split="train")


def test_tfds_audio_source_maps_features(monkeypatch):
    # TFDS 4.9's Audio feature needs TensorFlow to be constructed, so tfds.testing.mock_data
    # cannot build `spoken_digit` here; a stand-in data source with the same features is used.
    features = {"audio": types.SimpleNamespace(sample_rate=8000),
                "label": types.SimpleNamespace(names=list("0123456789"))}
    records = [{"audio": np.array([0, 16384, -32768], np.int64), "label": 7, "audio/filename": b"7_x_1.wav"}]

    class Fake(list):  # random access + dataset_info, like tfds.data_source
        dataset_info = types.SimpleNamespace(features=features)

    import maskjax.data.sources as image_sources

    monkeypatch.setattr(image_sources, "open_prepared_tfds", lambda name, split, data_dir: Fake(records))
    src = open_audio_source("tfds_audio", split="train", name="spoken_digit")
    assert isinstance(src, TfdsAudioSource) and len(src) == 1 and src.class_names[7] == "7"
    item = src[0]
    assert item["sample_rate"] == 8000 and item["label"] == 7
    np.testing.assert_array_equal(item["waveform"], np.float32([0, 0.5, -1]))


# ---------------------------------------------------------------------------------- augmentations


def test_roll_mag_is_a_circular_shift_times_one_gain():
    x = np.random.default_rng(0).standard_normal(257)
    rng = np.random.default_rng(1)
    shifts = set()
    for _ in range(20):
        out = roll_mag(x, rng)
        ratio = np.sort(out) / np.sort(x)  # the multiset of samples, up to the gain
        gain = ratio[0]
        np.testing.assert_allclose(ratio, gain, rtol=1e-12)
        assert 0.5 < gain < 1.5
        matches = [k for k in range(len(x)) if np.allclose(np.roll(x, k) * gain, out)]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 10
    draws = [roll_mag(np.ones(4), rng)[0] for _ in range(3000)]
    assert np.mean(draws) == pytest.approx(1.0, abs=0.01)  # Beta(10, 10) + 0.5 has mean 1, std 0.109
    assert np.std(draws) == pytest.approx(0.1091, abs=0.01)


def test_mask_along_axis_one_contiguous_band():
    rng = np.random.default_rng(0)
    widths, ends = set(), []
    for _ in range(400):
        out = mask_along_axis(np.ones((20, 12), np.float32), 5, axis=1, rng=rng)
        zero_cols = np.where((out == 0).all(axis=0))[0]
        assert ((out == 0) == (out == 0)[0]).all()  # whole columns only
        assert ((out == 0).any(axis=0) == (out == 0).all(axis=0)).all()
        if len(zero_cols):
            assert np.array_equal(zero_cols, np.arange(zero_cols[0], zero_cols[-1] + 1))  # contiguous
            ends.append(zero_cols[-1])
        widths.add(len(zero_cols))
    assert widths == {0, 1, 2, 3, 4}  # uniform [0, mask_param)
    # start = int(U (size - value)) and end = start + int(value) never reach the last column
    # (torchaudio's formula), but do reach the one before it.
    assert max(ends) == 10 and min(ends) < 3


def test_spec_augment_masks_a_frequency_then_a_time_band():
    aug = SpecAugment(freqm=6, timem=6)
    both = 0
    for seed in range(20):
        out = aug.random_map({"spectrogram": np.ones((30, 16), np.float32), "label": 0}, np.random.default_rng(seed))
        masked = out["spectrogram"] == 0
        cols, rows = np.where(masked.all(axis=0))[0], np.where(masked.all(axis=1))[0]
        assert len(cols) < 6 and len(rows) < 6
        expected = np.zeros_like(masked)
        expected[:, cols] = True
        expected[rows, :] = True
        np.testing.assert_array_equal(masked, expected)  # nothing but one column band and one row band
        both += bool(len(cols) and len(rows))
    assert both >= 10


# ------------------------------------------------------------------------------------ pipeline


def _config(**data):
    c = audio_base_config()
    fsdd_data(c)
    c.data.target_length = 32
    c.data.norm_mean, c.data.norm_std = -2.5, 4.4
    c.global_batch = 4
    c.data.update(data)
    return c


@pytest.fixture(scope="module")
def fsdd_test():
    if not FSDD_TAR.exists():
        pytest.skip(f"{FSDD_TAR} is not present")
    return FsddSource(FSDD_TAR, "test")


def _pipe(source, c, *, train, seed=0, **kw):
    from maskjax.data.audio.pipeline import pipeline_kwargs

    args = dict(pipeline_kwargs(c.data, train=train), **kw)
    return make_audio_pipeline(source, global_batch=c.global_batch, train=train, seed=seed, process_index=0,
                               process_count=1, **args)


def test_eval_batches_match_torchaudio_preprocessing(fsdd_test):
    c = _config()
    batch = next(iter(_pipe(fsdd_test, c, train=False)))
    assert batch["spectrogram"].shape == (4, 32, 128, 1) and batch["spectrogram"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["label"].tolist() == fsdd_test.labels[:4].tolist()
    x, y = take_spectrograms(fsdd_test, range(4), c.data)
    np.testing.assert_array_equal(batch["spectrogram"], x)
    np.testing.assert_array_equal(batch["label"], y)
    if torchaudio_wheel() is None:
        pytest.skip("no torchaudio wheel for the reference half of this test")
    from tests.audio_helpers import load_torchaudio_kaldi, torchaudio_fbank

    kaldi = load_torchaudio_kaldi()
    for row in range(4):
        ref = torchaudio_fbank(kaldi, fsdd_test[row]["waveform"], 8000, 128)[:32]
        ref = np.pad(ref, ((0, 32 - len(ref)), (0, 0)))
        np.testing.assert_allclose(x[row, :, :, 0], (ref + 2.5) / 8.8, rtol=0, atol=3e-3 / 8.8)


def test_train_pipeline_is_deterministic_and_resumes(fsdd_test):
    c = _config(freqm=16, timem=8)
    first = iter(_pipe(fsdd_test, c, train=True, seed=1))
    b1, b2 = next(first), next(first)
    state = first.get_state()
    b3 = next(first)
    again = iter(_pipe(fsdd_test, c, train=True, seed=1))
    for expected in (b1, b2, b3):
        got = next(again)
        np.testing.assert_array_equal(got["spectrogram"], expected["spectrogram"])
    resumed = iter(_pipe(fsdd_test, c, train=True, seed=1))
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["spectrogram"], b3["spectrogram"])
    other = next(iter(_pipe(fsdd_test, c, train=True, seed=2)))
    assert not np.array_equal(other["spectrogram"], b1["spectrogram"])


def test_train_augmentations_change_only_what_they_should(fsdd_test):
    c = _config(freqm=24, timem=12)
    plain = next(iter(_pipe(fsdd_test, c, train=True, roll_mag_aug=False, freqm=0, timem=0)))
    masked = next(iter(_pipe(fsdd_test, c, train=True, roll_mag_aug=False)))
    np.testing.assert_array_equal(plain["label"], masked["label"])  # same shuffle
    fill = np.float32((0 + 2.5) / 8.8)  # a masked fbank value 0, normalised
    changed = plain["spectrogram"] != masked["spectrogram"]
    assert changed.any()
    np.testing.assert_array_equal(masked["spectrogram"][changed], fill)
    rolled = next(iter(_pipe(fsdd_test, c, train=True, freqm=0, timem=0)))
    assert not np.allclose(rolled["spectrogram"], plain["spectrogram"])


def test_sample_rate_mismatch_raises(fsdd_test):
    c = _config(sample_rate=16000)
    with pytest.raises(ValueError, match="8000 Hz.*16000 Hz"):
        next(iter(_pipe(fsdd_test, c, train=False)))


# ------------------------------------------------------------------------------------- modality


@needs_fsdd
def test_modality_sources_pipeline_and_check():
    c = _config(roll_mag_aug=True, freqm=16)
    m = get_modality("audio")
    train, evaluation = m.open_source(c, "train"), m.open_source(c, "eval")
    assert (len(train), len(evaluation)) == (2700, 300)
    batch = next(iter(m.make_pipeline(c, evaluation, train=False)))  # no augmentation at eval
    np.testing.assert_array_equal(batch["spectrogram"], take_spectrograms(evaluation, range(4), c.data)[0])
    errors = []
    m.check(c, errors)
    assert errors == []


@pytest.mark.parametrize("overrides,message", [
    ({"kind": "mp3"}, "unknown data.kind 'mp3'"),
    ({"path": "/no/such/recordings.tar"}, "data.path '/no/such/recordings.tar' does not exist"),
    ({"kind": "wav_folder", "path": None}, "data.path is not set"),
    ({"kind": "tfds_audio", "name": None}, "data.name is not set"),
    ({"target_length": 100}, "data.target_length=100 must be a positive multiple of 16"),
    ({"num_mel_bins": 40}, "data.num_mel_bins=40 must be a positive multiple of 16"),
    ({"norm_std": 0.0}, "data.norm_std=0.0 must be > 0"),
    ({"freqm": 200}, "data.freqm=200 is wider"),
])
def test_modality_check_errors(overrides, message):
    c = _config()
    c.data.path = c.data.eval_path = "/"  # exists everywhere
    c.data.update(overrides)
    errors = []
    get_modality("audio").check(c, errors)
    assert any(message in e for e in errors), errors


@needs_fsdd
def test_benchmark_reports_throughput():
    c = _config(target_length=16)
    out = audio_pipeline_throughput(c.data, batches=2, global_batch=4, num_workers=0)
    assert out["spectrograms_per_s"] > 0 and out["batches"] == 2 and out["target_length"] == 16


@pytest.mark.slow
def test_worker_processes_yield_the_same_batches(fsdd_test):
    c = _config()
    ref = iter(_pipe(fsdd_test, c, train=True, num_workers=0))
    workers = iter(_pipe(fsdd_test, c, train=True, num_workers=2))
    for _ in range(3):
        np.testing.assert_array_equal(next(workers)["spectrogram"], next(ref)["spectrogram"])
