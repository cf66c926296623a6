"""PyAV decoding: exact frame counts, frame content after an MP4 round trip, seeking, errors."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")

from maskjax.data.video.decode import (  # noqa: E402
    VideoDecodeError,
    read_all_frames,
    read_frames,
    video_info,
    write_video,
)


def numbered_frames(n: int, size: int = 32) -> np.ndarray:
    """Frames whose flat halves encode the frame number (t % 16 left, t // 16 right), with a small
    moving square in the top rows; flat regions survive H.264 almost exactly, so a decoded frame's
    number can be read back with `frame_number`."""
    frames = np.zeros((n, size, size, 3), np.uint8)
    for t in range(n):
        frames[t, :, : size // 2] = 8 + 15 * (t % 16)
        frames[t, :, size // 2:] = 8 + 15 * (t // 16)
        col = (2 * t) % (size - 4)
        frames[t, :4, col:col + 4] = 255
    return frames


def frame_number(frame: np.ndarray) -> int:
    size = frame.shape[1]
    left = float(np.median(frame[8:-4, 2: size // 2 - 2, 0]))
    right = float(np.median(frame[8:-4, size // 2 + 2: -2, 0]))
    return int(round((left - 8) / 15)) + 16 * int(round((right - 8) / 15))


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    frames = numbered_frames(20)
    path = tmp_path_factory.mktemp("decode") / "clip.mp4"
    write_video(path, frames, fps=10)
    return path, frames


@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory):
    frames = numbered_frames(120)
    path = tmp_path_factory.mktemp("decode_long") / "long.mp4"
    write_video(path, frames, fps=25, gop=10)
    return path, frames


def test_frame_count_fps_and_size(mp4):
    path, frames = mp4
    info = video_info(path)
    assert info.num_frames == len(frames) == 20
    assert info.fps == pytest.approx(10.0)
    assert (info.height, info.width) == frames.shape[1:3]


def test_round_trip_content_close(mp4):
    path, frames = mp4
    decoded, fps = read_all_frames(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    err = np.abs(decoded.astype(np.int32) - frames.astype(np.int32))
    assert err.mean() < 3.0, err.mean()
    assert [frame_number(f) for f in decoded] == list(range(20))


def test_read_frames_any_order_with_repeats(mp4):
    path, _ = mp4
    full, _ = read_all_frames(path)
    idx = [7, 0, 7, 19, 3, 3]
    got = read_frames(path, idx)
    np.testing.assert_array_equal(got, full[idx])


def test_seek_path_matches_sequential_decode(long_mp4, monkeypatch):
    from maskjax.data.video import decode

    path, _ = long_mp4
    full, _ = read_all_frames(path)
    used = []
    original = decode._read_after_seek
    monkeypatch.setattr(decode, "_read_after_seek", lambda *a: used.append(original(*a)) or used[-1])
    idx = [100, 57, 119, 57, 64]
    seek = read_frames(path, idx, seek_min_frames=10)       # seeks to the keyframe before 57
    plain = read_frames(path, idx, seek_min_frames=10_000)  # decodes from the start
    np.testing.assert_array_equal(seek, full[idx])
    np.testing.assert_array_equal(plain, full[idx])
    assert [frame_number(f) for f in seek] == idx
    assert len(used) == 1 and used[0] is not None  # the seek was taken, not the fallback


def test_count_by_decoding_when_container_has_no_count(tmp_path):
    frames = numbered_frames(13)
    path = tmp_path / "clip.webm"
    write_video(path, frames, fps=10, codec="libvpx")
    import av

    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # WebM stores no count: we must decode
    assert video_info(path).num_frames == 13
    np.testing.assert_array_equal(read_frames(path, [12])[0], read_all_frames(path)[0][12])


def test_out_of_range_and_bad_files(mp4, tmp_path):
    path, _ = mp4
    with pytest.raises(IndexError, match="out of range"):
        read_frames(path, [20])
    with pytest.raises(ValueError, match="at least one"):
        read_frames(path, [])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 10)
    with pytest.raises(VideoDecodeError, match="junk.mp4"):
        video_info(junk)
    with pytest.raises(VideoDecodeError, match="not found"):
        read_frames(tmp_path / "missing.mp4", [0])
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))
