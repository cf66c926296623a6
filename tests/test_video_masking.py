"""Video masks: VideoMAE tube masking, spacetime random masking, VideoMAE V2 running cells.

References are direct numpy transcriptions of the official generators
(``masking_generator.py::TubeMaskingGenerator`` / ``Cell`` / ``RunningCellMaskingGenerator``,
specs/methods_vision.md sections 5a and 6a) and of the official boolean indexing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskjax.masking.video import (decoded_ids, hidden_ids, mask_from_bool, num_decoded, running_cell_candidates,
                                   running_cell_mask, spacetime_random_mask, tube_mask, tube_num_masked)

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)
# A few shapes (t_slots, h, w), so hypothesis varies seeds and ratios without recompiling much.
SHAPES = [(2, 4, 4), (8, 14, 14), (3, 2, 6)]


def keys_for(seed: int, batch: int):
    return jax.random.split(jax.random.key(seed), batch)


# --- official generators, transcribed ---------------------------------------------------------------

class OfficialCell:
    """``dataset/masking_generator.py::Cell`` of VideoMAE V2."""

    def __init__(self, num_masks, num_patches):
        self.size = num_masks + num_patches
        self.queue = np.hstack([np.ones(num_masks), np.zeros(num_patches)])
        self.queue_ptr = 0

    def set_ptr(self, pos):
        self.queue_ptr = pos

    def get_cell(self):
        return self.queue[(np.arange(self.size) + self.queue_ptr) % self.size]

    def run_cell(self):
        self.queue_ptr += 1


def official_running_cell_maps(frames, height, width, mask_ratio=0.5):
    """``RunningCellMaskingGenerator.all_mask_maps``: [4, frames, height*width], 1 = not decoded."""
    n = int(4 * mask_ratio)
    cell = OfficialCell(n, 4 - n)
    maps = []
    for ptr_pos in range(cell.size):
        cell.set_ptr(ptr_pos)
        mask = []
        for _ in range(frames):
            cell.run_cell()
            unit = cell.get_cell().reshape(2, 2)
            mask.append(np.tile(unit, [height // 2, width // 2]).flatten())
        maps.append(np.stack(mask, axis=0))
    return np.stack(maps, axis=0)


# --- tube masking -------------------------------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES), ratio=st.sampled_from([0.5, 0.75, 0.9]),
       batch=st.integers(1, 3))
def test_tube_mask_counts_tubes_and_ids(seed, shape, ratio, batch):
    t, h, w = shape
    spatial = h * w
    m = tube_mask(keys_for(seed, batch), batch, t, spatial, ratio)
    mask = np.asarray(m.mask)
    per_slot = int(ratio * spatial)  # the official truncation
    assert mask.shape == (batch, t * spatial) and mask.dtype == bool
    assert (mask.sum(1) == t * per_slot).all()
    # The same spatial mask in every temporal slot (token index = t * spatial + s).
    slots = mask.reshape(batch, t, spatial)
    assert (slots == slots[:, :1]).all() and (slots[:, 0].sum(1) == per_slot).all()
    # ids_keep = x[~mask] order (ascending), ids_restore inverts "visible then hidden, ascending".
    keep = t * (spatial - per_slot)
    assert m.ids_keep.shape == (batch, keep)
    for b in range(batch):
        np.testing.assert_array_equal(np.asarray(m.ids_keep[b]), np.flatnonzero(~mask[b]))
        np.testing.assert_array_equal(np.asarray(hidden_ids(m)[b]), np.flatnonzero(mask[b]))
        shuffle = np.concatenate([np.flatnonzero(~mask[b]), np.flatnonzero(mask[b])])
        np.testing.assert_array_equal(shuffle[np.asarray(m.ids_restore[b])], np.arange(t * spatial))


def test_tube_mask_is_per_example_and_uniform():
    keys = keys_for(0, 6)
    full = np.asarray(tube_mask(keys, 6, 2, 16, 0.75).mask)
    # A sample's mask depends on its key only, not on the rest of the batch.
    np.testing.assert_array_equal(np.asarray(tube_mask(keys[2:4], 2, 2, 16, 0.75).mask), full[2:4])
    assert len({row.tobytes() for row in full}) > 1
    # Every spatial position is hidden with probability int(0.75*16)/16 (loose binomial bound).
    many = np.asarray(tube_mask(keys_for(1, 2000), 2000, 1, 16, 0.75).mask)
    assert np.abs(many.mean(0) - 12 / 16).max() < 0.05


def test_tube_mask_jits_and_rejects_bad_ratios():
    f = jax.jit(lambda k: tube_mask(k, 2, 8, 196, 0.9))
    m = f(keys_for(3, 2))
    assert m.ids_keep.shape == (2, 160)  # 8 slots x (196 - 176): the paper's 160 visible tokens
    assert tube_num_masked(196, 0.9) == 176
    for bad in (0.0, 1.0, 0.01):
        with pytest.raises(ValueError, match="ratio"):
            tube_mask(keys_for(0, 1), 1, 2, 16, bad)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), ratio=st.sampled_from([0.5, 0.9]))
def test_spacetime_random_mask(seed, ratio):
    length = 2 * 4 * 4
    m = spacetime_random_mask(keys_for(seed, 2), 2, length, ratio)
    keep = int(length * (1 - ratio))  # MAE's count
    mask = np.asarray(m.mask)
    assert (mask.sum(1) == length - keep).all()
    for b in range(2):
        np.testing.assert_array_equal(np.asarray(m.ids_keep[b]), np.flatnonzero(~mask[b]))
    # Not a tube: the spatial pattern differs between slots for some sample.
    many = np.asarray(spacetime_random_mask(keys_for(seed, 8), 8, length, 0.5).mask).reshape(8, 2, 16)
    assert (many[:, 0] != many[:, 1]).any()


def test_mask_from_bool_matches_boolean_indexing():
    mask = np.array([[True, False, True, False, False, True]])
    m = mask_from_bool(jnp.asarray(mask), 3)
    np.testing.assert_array_equal(np.asarray(m.ids_keep), [[1, 3, 4]])
    np.testing.assert_array_equal(np.asarray(hidden_ids(m)), [[0, 2, 5]])


# --- running cells ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES + [(16, 14, 14), (1, 2, 2)])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_running_cell_candidates_match_official(shape, ratio):
    t, h, w = shape
    ours = running_cell_candidates(t, h, w, ratio)
    np.testing.assert_array_equal(ours.astype(float), official_running_cell_maps(t, h, w, ratio))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES), batch=st.integers(1, 4))
def test_running_cell_mask_properties(seed, shape, batch):
    t, h, w = shape
    not_decoded = np.asarray(running_cell_mask(keys_for(seed, batch), batch, t, h, w))
    length = t * h * w
    assert not_decoded.shape == (batch, length)
    # Exactly 50 % decoded per sample and per frame.
    assert (not_decoded.sum(1) == length // 2).all() and num_decoded(length, 0.5) == length // 2
    frames = not_decoded.reshape(batch, t, h // 2, 2, w // 2, 2)
    # Each frame tiles one 2x2 cell (two hidden) over (h/2, w/2).
    cells = frames.transpose(0, 1, 2, 4, 3, 5)  # b, t, cell row, cell col, 2, 2
    assert (cells == cells[:, :, :1, :1]).all() and (cells.sum((-1, -2)) == 2).all()
    # The cell reads the queue [1, 1, 0, 0] at a pointer advancing by one per frame.
    flat = cells[:, :, 0, 0].reshape(batch, t, 4)
    for s in range(t - 1):
        np.testing.assert_array_equal(flat[:, s + 1], np.roll(flat[:, s], -1, axis=-1))
    # Every sample is one of the official candidates.
    official = official_running_cell_maps(t, h, w).reshape(4, -1).astype(bool)
    assert all(any((row == c).all() for c in official) for row in not_decoded)


def test_running_cell_picks_every_candidate_uniformly():
    masks = np.asarray(running_cell_mask(keys_for(9, 800), 800, 2, 2, 2))
    cands = running_cell_candidates(2, 2, 2).reshape(4, -1)
    picks = np.array([next(i for i, c in enumerate(cands) if (c == m).all()) for m in masks])
    counts = np.bincount(picks, minlength=4) / 800
    assert np.abs(counts - 0.25).max() < 0.06


def test_running_cell_errors():
    with pytest.raises(ValueError, match="even"):
        running_cell_candidates(2, 3, 4)
    with pytest.raises(ValueError, match="even"):
        running_cell_mask(keys_for(0, 1), 1, 2, 4, 7)
    with pytest.raises(ValueError, match="decoder_ratio"):
        running_cell_candidates(2, 4, 4, ratio=0.1)


# --- V2 decoded positions and loss weights --------------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_decoded_ids_and_v2_weights_match_boolean_indexing(seed):
    t, h, w, batch = 2, 4, 4, 3
    enc = tube_mask(keys_for(seed, batch), batch, t, h * w, 0.75)
    not_decoded = running_cell_mask(keys_for(seed + 1, batch), batch, t, h, w)
    ids = np.asarray(decoded_ids(not_decoded, num_decoded(t * h * w, 0.5)))
    enc_mask, dec = np.asarray(enc.mask), np.asarray(not_decoded)
    # Official: labels = patches[~decode_mask]; cal_loss_mask = bool_masked_pos[~decode_mask].
    for b in range(batch):
        np.testing.assert_array_equal(ids[b], np.flatnonzero(~dec[b]))
    weights = np.take_along_axis(enc_mask, ids, axis=1)
    np.testing.assert_array_equal(weights, enc_mask[~dec].reshape(batch, -1))
    # Decoded tokens include encoder-visible ones, which get weight 0.
    visible_decoded = (~enc_mask) & (~dec)
    assert weights.sum() == ((~dec) & enc_mask).sum() and weights.size - weights.sum() == visible_decoded.sum()


def test_decoded_ids_default_is_hidden_tokens():
    enc = tube_mask(keys_for(4, 2), 2, 2, 16, 0.75)
    # decoder_ratio == 0: decode_mask = ~enc_mask, i.e. decode exactly the hidden tokens.
    np.testing.assert_array_equal(np.asarray(decoded_ids(~enc.mask, 24)), np.asarray(hidden_ids(enc)))
