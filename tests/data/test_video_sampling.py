"""Frame sampling and crops vs direct transcriptions of the official MCG-NJU/VideoMAE code.

The ``official_*`` functions below copy the official control flow line by line (``kinetics.py::
VideoMAE._sample_train_indices`` + ``_video_TSN_decord_batch_loader``, ``VideoClsDataset`` test
mode, ``transforms.py::GroupMultiScaleCrop``), with ``np.random`` / ``random`` replaced by an
injected ``numpy.random.Generator`` so that both sides see the same draws.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from maskjax.data.video.sampling import eval_crop_boxes, eval_views, train_clip_indices
from maskjax.data.video.transforms import (
    GroupMultiScaleCrop,
    NormalizeVideo,
    ResizeCenterCropVideo,
    fixed_crop_offsets,
    multiscale_crop_sizes,
)

# ---------------------------------------------------------------- official transcriptions


def official_train_frame_ids(rng, num_frames, new_length, new_step, num_segments=1):
    skip_length = new_length * new_step
    average_duration = (num_frames - skip_length + 1) // num_segments
    if average_duration > 0:
        offsets = np.multiply(list(range(num_segments)), average_duration)
        offsets = offsets + rng.integers(average_duration, size=num_segments)
    elif num_frames > max(num_segments, skip_length):
        offsets = np.sort(rng.integers(num_frames - skip_length + 1, size=num_segments))
    else:
        offsets = np.zeros((num_segments,))
    skip_offsets = np.zeros(skip_length // new_step, dtype=int)
    indices = offsets + 1
    duration = num_frames
    frame_id_list = []
    for seg_ind in indices:
        offset = int(seg_ind)
        for i, _ in enumerate(range(0, skip_length, new_step)):
            if offset + skip_offsets[i] <= duration:
                frame_id = offset + skip_offsets[i] - 1
            else:
                frame_id = offset - 1
            frame_id_list.append(frame_id)
            if offset + new_step < duration:
                offset += new_step
    return frame_id_list


def official_test_views(num_frames, height, width, clip_len, frame_sample_rate, short_side_size,
                        test_num_segment, test_num_crop):
    """(frame ids, (row0, row1, col0, col1) of the slice in the resized frame) per view."""
    all_index = [x for x in range(0, num_frames, frame_sample_rate)]
    while len(all_index) < clip_len:
        all_index.append(all_index[-1])
    # video_transforms.Resize(short_side_size) -> get_resize_sizes
    if width < height:
        ow, oh = short_side_size, int(short_side_size * height / width)
    else:
        oh, ow = short_side_size, int(short_side_size * width / height)
    views = []
    for chunk_nb in range(test_num_segment):
        for split_nb in range(test_num_crop):
            spatial_step = 1.0 * (max(oh, ow) - short_side_size) / (test_num_crop - 1)
            temporal_step = max(1.0 * (len(all_index) - clip_len) / (test_num_segment - 1), 0)
            temporal_start = int(chunk_nb * temporal_step)
            spatial_start = int(split_nb * spatial_step)
            ids = all_index[temporal_start:temporal_start + clip_len]
            if oh >= ow:
                rows = (spatial_start, min(spatial_start + short_side_size, oh))
                cols = (0, ow)
            else:
                rows = (0, oh)
                cols = (spatial_start, min(spatial_start + short_side_size, ow))
            views.append((ids, rows + cols, (oh, ow)))
    return views


def official_crop_candidates(image_w, image_h, input_size, scales=(1, .875, .75, .66), max_distort=1):
    """Every (crop_w, crop_h, w_offset, h_offset) GroupMultiScaleCrop can return (list, with repeats)."""
    base_size = min(image_w, image_h)
    crop_sizes = [int(base_size * x) for x in scales]
    crop_h = [input_size[1] if abs(x - input_size[1]) < 3 else x for x in crop_sizes]
    crop_w = [input_size[0] if abs(x - input_size[0]) < 3 else x for x in crop_sizes]
    pairs = []
    for i, h in enumerate(crop_h):
        for j, w in enumerate(crop_w):
            if abs(i - j) <= max_distort:
                pairs.append((w, h))
    out = []
    for cw, ch in pairs:
        w_step, h_step = (image_w - cw) // 4, (image_h - ch) // 4
        ret = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step),
               (0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step), (2 * w_step, 0 * h_step),
               (1 * w_step, 1 * h_step), (3 * w_step, 1 * h_step), (1 * w_step, 3 * h_step),
               (3 * w_step, 3 * h_step)]
        out.append(((cw, ch), ret))
    return pairs, out


# ---------------------------------------------------------------- train sampling


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 400), num_frames=st.integers(1, 24), rate=st.integers(1, 8),
       segments=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_train_indices_match_official(n, num_frames, rate, segments, seed):
    ours = train_clip_indices(np.random.default_rng(seed), n, num_frames, rate, segments)
    ref = official_train_frame_ids(np.random.default_rng(seed), n, num_frames, rate, segments)
    assert ours.tolist() == ref
    assert ours.min() >= 0 and ours.max() < n


@pytest.mark.parametrize("n", [1, 2, 15, 16, 30, 63, 64, 65, 66, 300])
def test_train_indices_videomae_default_and_short_videos(n):
    """16 frames at stride 4 (K400), including videos shorter than the 64-frame span."""
    for seed in range(20):
        ours = train_clip_indices(np.random.default_rng(seed), n, 16, 4)
        assert ours.tolist() == official_train_frame_ids(np.random.default_rng(seed), n, 16, 4)


def test_train_indices_hand_computed():
    # n = 30 < 64: start at frame 0, advance by 4 while the 1-based position + 4 < 30, then repeat.
    idx = train_clip_indices(np.random.default_rng(0), 30, 16, 4)
    assert idx.tolist() == [0, 4, 8, 12, 16, 20, 24, 28] + [28] * 8
    # n = 64: exactly one start (0), the clip spans 0..60.
    assert train_clip_indices(np.random.default_rng(5), 64, 16, 4).tolist() == list(range(0, 64, 4))


def test_train_indices_start_is_uniform():
    starts = [train_clip_indices(np.random.default_rng(s), 70, 16, 4)[0] for s in range(2000)]
    counts = np.bincount(starts, minlength=7)
    assert counts.size == 7 and counts.min() > 200  # starts 0..6 (70 - 64 + 1 = 7 choices)


# ---------------------------------------------------------------- test views


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), h=st.integers(20, 90), w=st.integers(20, 90), clip_len=st.integers(1, 16),
       rate=st.integers(1, 5), short=st.integers(8, 24), segments=st.integers(2, 6), crops=st.integers(2, 4))
def test_eval_views_match_official(n, h, w, clip_len, rate, short, segments, crops):
    ours = eval_views(n, h, w, num_frames=clip_len, sampling_rate=rate, short_side=short,
                      test_num_segment=segments, test_num_crop=crops)
    ref = official_test_views(n, h, w, clip_len, rate, short, segments, crops)
    assert len(ours) == len(ref) == segments * crops
    for view, (ids, (r0, r1, c0, c1), size) in zip(ours, ref):
        assert view.indices.tolist() == ids
        assert view.resize_hw == size
        top, left, bh, bw = view.box
        assert (top, top + bh, left, left + bw) == (r0, r1, c0, c1)
        assert bh == bw == short  # square crops of the short side


def test_single_view_is_centered():
    (new_h, new_w), (box,) = eval_crop_boxes(240, 320, 224, 1)
    assert (new_h, new_w) == (224, 298)
    assert box == (0, (298 - 224) // 2, 224, 224)
    (view,) = eval_views(100, 240, 320, num_frames=16, sampling_rate=4, short_side=224, test_num_segment=1,
                         test_num_crop=1)
    # 25 strided entries (0, 4, ..., 96); the centered 16 start at int(9 / 2) = 4 -> frame 16.
    assert view.indices.tolist() == list(range(16, 80, 4))


# ---------------------------------------------------------------- GroupMultiScaleCrop


@pytest.mark.parametrize("w,h,size", [(320, 240, 224), (426, 320, 224), (32, 32, 32), (40, 30, 24), (226, 300, 224)])
def test_multiscale_candidates_match_official(w, h, size):
    pairs, per_pair = official_crop_candidates(w, h, (size, size))
    assert multiscale_crop_sizes(w, h, (size, size)) == pairs
    for (cw, ch), offsets in per_pair:
        assert fixed_crop_offsets(w, h, cw, ch, more_fix_crop=True) == offsets


def test_multiscale_boxes_cover_exactly_the_official_set():
    w, h = 64, 48
    crop = GroupMultiScaleCrop(32)
    _, per_pair = official_crop_candidates(w, h, (32, 32))
    allowed = {(oh, ow, ch, cw) for (cw, ch), offsets in per_pair for ow, oh in offsets}
    rng = np.random.default_rng(0)
    seen = {crop.sample_box(rng, w, h) for _ in range(6000)}
    assert seen == allowed


def test_multiscale_crop_same_box_for_every_frame_and_bilinear_resize():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, t, axis=1) for t in range(6)])  # distinct frames
    crop = GroupMultiScaleCrop(32)
    out = crop.random_map({"frames": frames, "label": 3}, np.random.default_rng(7))
    assert out["frames"].shape == (6, 32, 32, 3) and out["label"] == 3
    top, left, ch, cw = crop.sample_box(np.random.default_rng(7), 64, 48)
    for t in range(6):
        ref = Image.fromarray(frames[t]).crop((left, top, left + cw, top + ch)).resize((32, 32), Image.BILINEAR)
        np.testing.assert_array_equal(out["frames"][t], np.asarray(ref))


def test_resize_center_crop_and_normalize():
    frames = np.random.default_rng(2).integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    out = ResizeCenterCropVideo(10).map({"frames": frames, "label": 1})["frames"]
    # shorter side 20 -> 10 (longer 30 -> 15), centered crop columns int(5 / 2) = 2 .. 12.
    for t in range(3):
        ref = np.asarray(Image.fromarray(frames[t]).resize((15, 10), Image.BILINEAR))[:, 2:12]
        np.testing.assert_array_equal(out[t], ref)
    norm = NormalizeVideo().map({"frames": out, "label": 4})
    assert set(norm) == {"video", "label"} and norm["video"].dtype == np.float32 and norm["label"].dtype == np.int32
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(norm["video"], (out / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
