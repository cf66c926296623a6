"""AudioMAE time/frequency masking (specs/methods_vision.md section 8a).

References are numpy transcriptions of the official ``models_mae.py::random_masking_2d`` (pre-
training order, the ``+ 999 * mask`` sort included) and ``models_vit.py::random_masking_2d``
(fine-tuning gather order), run on the same noise as the code under test.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskjax.masking.audio import time_freq_mask, time_freq_mask_from_noise

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


def official_mae_2d(noise_t: np.ndarray, noise_f: np.ndarray, pt: float, pf: float):
    """``models_mae.py::random_masking_2d`` line by line (torch ops -> numpy)."""
    n, t = noise_t.shape
    f = noise_f.shape[1]
    len_keep_t = int(t * (1 - pt))
    len_keep_f = int(f * (1 - pf))
    ids_shuffle_t = np.argsort(noise_t, axis=1, kind="stable")
    ids_restore_t = np.argsort(ids_shuffle_t, axis=1, kind="stable")
    ids_shuffle_f = np.argsort(noise_f, axis=1, kind="stable")
    ids_restore_f = np.argsort(ids_shuffle_f, axis=1, kind="stable")
    mask_f = np.ones((n, f))
    mask_f[:, :len_keep_f] = 0
    mask_f = np.take_along_axis(mask_f, ids_restore_f, axis=1)[:, None, :].repeat(t, axis=1)  # N,T,F
    mask_t = np.ones((n, t))
    mask_t[:, :len_keep_t] = 0
    mask_t = np.take_along_axis(mask_t, ids_restore_t, axis=1)[:, None, :].repeat(f, axis=1)
    mask_t = mask_t.transpose(0, 2, 1)  # N,T,F
    mask = 1 - (1 - mask_t) * (1 - mask_f)
    id2res = np.arange(n * t * f, dtype=np.float64).reshape(n, t, f) + 999 * mask
    id2res2 = np.argsort(id2res.reshape(n, -1), axis=1, kind="stable")
    ids_keep = id2res2[:, :len_keep_f * len_keep_t]
    ids_restore = np.argsort(id2res2, axis=1, kind="stable")
    return ids_keep, ids_restore, mask.reshape(n, -1).astype(bool)


def official_vit_2d(noise_t: np.ndarray, noise_f: np.ndarray, pt: float, pf: float):
    """``models_vit.py::random_masking_2d`` on x = token index (D = 1): returns the kept ids in order."""
    n, t = noise_t.shape
    f = noise_f.shape[1]
    x = np.arange(t * f).reshape(1, t, f, 1).repeat(n, axis=0)  # N, T, F, D
    len_keep_t = int(t * (1 - pt))
    ids_keep = np.argsort(noise_t, axis=1, kind="stable")[:, :len_keep_t]
    x = np.take_along_axis(x, ids_keep[:, :, None, None].repeat(f, axis=2), axis=1)  # N, T', F, D
    x = x.transpose(0, 2, 1, 3)  # N F T' D
    len_keep_f = int(f * (1 - pf))
    ids_keep = np.argsort(noise_f, axis=1, kind="stable")[:, :len_keep_f]
    x = np.take_along_axis(x, ids_keep[:, :, None, None].repeat(len_keep_t, axis=2), axis=1)
    x = x.transpose(0, 2, 1, 3)  # N T' F' D
    return x.reshape(n, len_keep_f * len_keep_t)


@st.composite
def grids(draw):
    t = draw(st.sampled_from([4, 8, 64]))
    f = draw(st.sampled_from([2, 3, 8]))
    pt = draw(st.floats(0.0, 0.74))
    pf = draw(st.floats(0.0, 0.49))
    seed = draw(st.integers(0, 2**16))
    return t, f, pt, pf, seed


def _noise(seed: int, b: int, t: int, f: int):
    rng = np.random.default_rng(seed)
    return rng.random((b, t)).astype(np.float32), rng.random((b, f)).astype(np.float32)


@SETTINGS
@given(grids())
def test_pretrain_order_matches_official(case):
    t, f, pt, pf, seed = case
    nt, nf = _noise(seed, 3, t, f)
    ref_keep, ref_restore, ref_mask = official_mae_2d(nt, nf, pt, pf)
    m = time_freq_mask_from_noise(nt, nf, pt, pf, order="pretrain")
    np.testing.assert_array_equal(np.asarray(m.ids_keep), ref_keep)
    np.testing.assert_array_equal(np.asarray(m.ids_restore), ref_restore)
    np.testing.assert_array_equal(np.asarray(m.mask), ref_mask)


@SETTINGS
@given(grids())
def test_finetune_order_matches_official(case):
    t, f, pt, pf, seed = case
    nt, nf = _noise(seed, 2, t, f)
    m = time_freq_mask_from_noise(nt, nf, pt, pf, order="finetune")
    np.testing.assert_array_equal(np.asarray(m.ids_keep), official_vit_2d(nt, nf, pt, pf))
    # The same visible set as the pre-training order, and a consistent inverse permutation.
    np.testing.assert_array_equal(np.asarray(m.mask), official_mae_2d(nt, nf, pt, pf)[2])
    ids_shuffle = np.argsort(np.asarray(m.ids_restore), axis=1)
    np.testing.assert_array_equal(ids_shuffle[:, :m.ids_keep.shape[1]], np.asarray(m.ids_keep))


@SETTINGS
@given(grids())
def test_counts_and_row_or_column_rule(case):
    t, f, pt, pf, seed = case
    keys = jax.random.split(jax.random.key(seed), 4)
    m = time_freq_mask(keys, 4, t, f, pt, pf)
    kt, kf = int(t * (1 - pt)), int(f * (1 - pf))
    mask = np.asarray(m.mask).reshape(4, t, f)
    assert m.ids_keep.shape == (4, kt * kf)
    assert (~mask).sum(axis=(1, 2)).tolist() == [kt * kf] * 4
    # Visible rows / columns: those with at least one visible token; exactly kt and kf of them.
    rows_kept = (~mask).any(axis=2)
    cols_kept = (~mask).any(axis=1)
    assert rows_kept.sum(1).tolist() == [kt] * 4 and cols_kept.sum(1).tolist() == [kf] * 4
    # Hidden iff the row or the column is dropped: visible = the intersection.
    np.testing.assert_array_equal(~mask, rows_kept[:, :, None] & cols_kept[:, None, :])
    # ids_keep lists exactly the visible tokens; ids_restore ranks them first.
    for b in range(4):
        assert sorted(np.asarray(m.ids_keep[b]).tolist()) == np.flatnonzero(~mask[b].reshape(-1)).tolist()
    np.testing.assert_array_equal(np.asarray(m.mask), np.asarray(m.ids_restore) >= kt * kf)


def test_large_grid_keeps_only_visible_tokens():
    # 101x12 = 1212 tokens (the official overlapping-patch grid): the official "+ 999" sort would
    # interleave hidden tokens among the first ones; ours keeps the intersection exactly.
    nt, nf = _noise(0, 2, 101, 12)
    m = time_freq_mask_from_noise(nt, nf, 0.2, 0.2)
    kept = np.asarray(m.ids_keep)
    assert not np.asarray(m.mask)[np.arange(2)[:, None], kept].any()
    assert np.all(np.diff(kept, axis=1) > 0)  # ascending, as the official order for small grids
    ref_keep = official_mae_2d(nt, nf, 0.2, 0.2)[0]
    assert np.asarray(m.mask)[np.arange(2)[:, None], ref_keep].any()  # the official quirk


def test_per_example_keys_are_batch_independent():
    keys = jax.random.split(jax.random.key(7), 3)
    full = time_freq_mask(keys, 3, 16, 8, 0.5, 0.5)
    part = time_freq_mask(keys[1:2], 1, 16, 8, 0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(full.ids_keep[1:2]), np.asarray(part.ids_keep))
    assert not np.array_equal(np.asarray(full.mask[0]), np.asarray(full.mask[1]))


@pytest.mark.parametrize("pt,pf,match", [(1.0, 0.5, "mask_t_prob"), (0.5, 0.9, "mask_f_prob"),
                                         (-0.1, 0.5, "mask_t_prob")])
def test_bad_probabilities_raise(pt, pf, match):
    with pytest.raises(ValueError, match=match):
        time_freq_mask(jax.random.key(0), 2, 8, 4, pt, pf)


def test_unknown_order_raises():
    nt, nf = _noise(0, 1, 4, 4)
    with pytest.raises(ValueError, match="order"):
        time_freq_mask_from_noise(nt, nf, 0.5, 0.5, order="random")
