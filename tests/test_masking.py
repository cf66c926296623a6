"""MAE random masking (specs/methods_vision.md section 1(a) and 0.7).

References are written from the spec's pseudo-code in numpy; nothing here derives an expected
value by calling the code under test.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskjax.masking import Mask, gather_tokens, mask_from_noise, num_kept, random_mask, uniform_noise

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


def ref_len_keep(length: int, ratio: float) -> int:
    # The spec's formula, verbatim: len_keep = int(L*(1-ratio)).
    return int(length * (1 - ratio))


def ref_random_masking(noise: np.ndarray, ratio: float):
    """facebookresearch/mae ``random_masking`` (spec 1(a)) in numpy."""
    n, length = noise.shape
    ids_shuffle = np.argsort(noise, axis=1, kind="stable")
    ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
    len_keep = ref_len_keep(length, ratio)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = np.ones((n, length))
    mask[:, :len_keep] = 0
    mask = np.take_along_axis(mask, ids_restore, axis=1)  # 1 = removed
    return ids_shuffle, ids_keep, ids_restore, mask.astype(bool)


# Ratios that keep at least one token for every length the strategies draw.
ratios = st.floats(min_value=0.05, max_value=0.9, allow_nan=False)


@st.composite
def shape_and_ratio(draw):
    # A few fixed shapes (each new shape costs an XLA compile); the ratio varies freely.
    batch = draw(st.sampled_from([1, 3]))
    length = draw(st.sampled_from([2, 7, 16, 33]))
    ratio = draw(ratios)
    if ref_len_keep(length, ratio) < 1:
        length = max(length, int(np.ceil(2.0 / (1 - ratio))))  # make sure a token is kept
    return batch, length, ratio


# --------------------------------------------------------------------------------------------
# num_kept


@pytest.mark.parametrize("length,ratio,expected", [
    (196, 0.75, 49),      # spec 0.7: MAE default, 49 kept / 147 masked
    (1568, 0.9, 156),     # spec 0.7: mae_st, int(156.8) = 156 (truncation, not rounding)
    (512, 0.8, 102),      # spec 0.7: AudioMAE, keep 102
    (10, 0.75, 2),        # int(2.5) = 2
    (7, 0.5, 3),          # int(3.5) = 3
])
def test_num_kept_hand_cases(length, ratio, expected):
    assert num_kept(length, ratio) == expected


@given(st.integers(1, 5000), st.floats(0.001, 0.999))
@SETTINGS
def test_num_kept_is_truncation(length, ratio):
    expected = ref_len_keep(length, ratio)
    if expected < 1:
        with pytest.raises(ValueError):
            num_kept(length, ratio)
    else:
        assert num_kept(length, ratio) == expected


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_num_kept_rejects_ratio_outside_open_interval(ratio):
    with pytest.raises(ValueError):
        num_kept(196, ratio)


@pytest.mark.parametrize("length,ratio", [(4, 0.8), (1, 0.5), (10, 0.95)])
def test_num_kept_rejects_ratio_keeping_no_token(length, ratio):
    assert ref_len_keep(length, ratio) == 0
    with pytest.raises(ValueError):
        num_kept(length, ratio)
    with pytest.raises(ValueError):
        random_mask(jax.random.key(0), 2, length, ratio)


# --------------------------------------------------------------------------------------------
# mask_from_noise / random_mask structure


def check_mask_structure(m, batch, length, ratio):
    keep = ref_len_keep(length, ratio)
    ids_keep, ids_restore, mask = (np.asarray(a) for a in m)
    assert ids_keep.shape == (batch, keep)
    assert ids_restore.shape == (batch, length)
    assert mask.shape == (batch, length) and mask.dtype == bool
    # exactly L - K hidden per row
    np.testing.assert_array_equal(mask.sum(axis=1), np.full(batch, length - keep))
    for b in range(batch):
        # kept ids are distinct, valid and exactly the False entries of the mask
        assert len(set(ids_keep[b].tolist())) == keep
        assert set(ids_keep[b].tolist()) == set(np.flatnonzero(~mask[b]).tolist())
        # ids_restore is a permutation
        np.testing.assert_array_equal(np.sort(ids_restore[b]), np.arange(length))
        # the shuffle it inverts starts with ids_keep: ids_shuffle[ids_restore] == arange
        ids_shuffle = np.argsort(ids_restore[b])
        np.testing.assert_array_equal(ids_shuffle[ids_restore[b]], np.arange(length))
        np.testing.assert_array_equal(ids_shuffle[:keep], ids_keep[b])
        # position i is hidden iff its rank in the shuffle is >= keep
        np.testing.assert_array_equal(mask[b], ids_restore[b] >= keep)


# random_mask draws its noise with threefry, whose XLA compile per shape is slow on a loaded CPU:
# the key-driven tests below reuse a handful of shapes and let hypothesis vary seeds and ratios.
@given(st.sampled_from([(1, 16), (3, 16)]), st.floats(0.05, 0.9), st.integers(0, 2**31 - 1))
@SETTINGS
def test_random_mask_structure(shape, ratio, seed):
    batch, length = shape
    check_mask_structure(random_mask(jax.random.key(seed), batch, length, ratio), batch, length, ratio)


@given(shape_and_ratio(), st.integers(0, 2**32 - 1))
@SETTINGS
def test_mask_from_noise_structure(shape, seed):
    batch, length, ratio = shape
    noise = np.random.default_rng(seed).random((batch, length)).astype(np.float32)
    check_mask_structure(mask_from_noise(jnp.asarray(noise), ratio), batch, length, ratio)


@given(shape_and_ratio(), st.integers(0, 2**32 - 1))
@SETTINGS
def test_mask_from_noise_matches_numpy_reference(shape, seed):
    batch, length, ratio = shape
    rng = np.random.default_rng(seed)
    noise = rng.random((batch, length)).astype(np.float32)
    ids_shuffle, ids_keep, ids_restore, mask = ref_random_masking(noise, ratio)
    m = mask_from_noise(jnp.asarray(noise), ratio)
    assert isinstance(m, Mask)
    np.testing.assert_array_equal(np.asarray(m.ids_keep), ids_keep)
    np.testing.assert_array_equal(np.asarray(m.ids_restore), ids_restore)
    np.testing.assert_array_equal(np.asarray(m.mask), mask)
    np.testing.assert_array_equal(ids_shuffle[np.arange(batch)[:, None], ids_restore],
                                  np.tile(np.arange(length), (batch, 1)))


def test_mask_from_noise_hand_case():
    # noise ranks: position 2 smallest, then 0, then 3, then 1 -> shuffle [2, 0, 3, 1]
    noise = jnp.array([[0.3, 0.9, 0.1, 0.5]])
    m = mask_from_noise(noise, 0.5)  # keep int(4 * 0.5) = 2
    np.testing.assert_array_equal(np.asarray(m.ids_keep), [[2, 0]])
    np.testing.assert_array_equal(np.asarray(m.ids_restore), [[1, 3, 0, 2]])
    np.testing.assert_array_equal(np.asarray(m.mask), [[False, True, False, True]])
    assert m.ids_keep.dtype == jnp.int32 and m.ids_restore.dtype == jnp.int32


def test_same_key_same_mask_different_key_different_mask():
    a = random_mask(jax.random.key(3), 3, 49, 0.75)
    b = random_mask(jax.random.key(3), 3, 49, 0.75)
    c = random_mask(jax.random.key(4), 3, 49, 0.75)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Each row differs (collision probability ~ 1/C(49,12)).
    assert np.all(np.any(np.asarray(a.mask) != np.asarray(c.mask), axis=1))
    # and the rows of one batch differ from each other
    rows = {tuple(r) for r in np.asarray(a.mask).astype(int).tolist()}
    assert len(rows) == 3


def test_hidden_frequency_is_uniform():
    """Every position is hidden with probability (L-K)/L = ratio (binomial 6-sigma bound + chi2)."""
    n, length, ratio = 2000, 16, 0.75
    m = random_mask(jax.random.key(1234), n, length, ratio)
    mask = np.asarray(m.mask)
    hidden = mask.sum(axis=0)
    p = 1 - ref_len_keep(length, ratio) / length
    assert p == ratio
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(hidden - n * p) < 6 * sigma), hidden
    # chi-square on the kept counts (15 dof; 50.0 is far beyond the 0.9999 quantile ~ 42.6)
    kept = n - hidden
    expected = n * (1 - p)
    chi2 = np.sum((kept - expected) ** 2 / expected)
    assert chi2 < 50.0, chi2
    # the shuffle order is uniform too: the first kept id is any position equally often
    first = np.bincount(np.asarray(m.ids_keep)[:, 0], minlength=length)
    chi2_first = np.sum((first - n / length) ** 2 / (n / length))
    assert chi2_first < 50.0, chi2_first
    # pairs: positions are hidden jointly with P = (L-K)(L-K-1)/(L(L-1)) (not independently)
    both = np.mean(mask[:, 0] & mask[:, 1])
    p_pair = (length - 4) * (length - 5) / (length * (length - 1))
    assert abs(both - p_pair) < 6 * np.sqrt(p_pair * (1 - p_pair) / n)


def test_hidden_frequency_with_truncated_keep():
    # L=10, ratio 0.75: K = int(2.5) = 2, so each position is hidden with probability 0.8.
    n, length = 4000, 10
    noise = np.random.default_rng(99).random((n, length)).astype(np.float32)
    mask = np.asarray(mask_from_noise(jnp.asarray(noise), 0.75).mask)
    np.testing.assert_array_equal(mask.sum(axis=1), 8)
    freq = mask.mean(axis=0)
    assert np.all(np.abs(freq - 0.8) < 6 * np.sqrt(0.8 * 0.2 / n)), freq


# --------------------------------------------------------------------------------------------
# per-example keys


@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 3]))
@SETTINGS
def test_per_example_keys_independent_of_batch_split(seed, cut):
    batch, length, ratio = 4, 16, 0.75
    keys = jax.random.split(jax.random.key(seed), batch)
    full = random_mask(keys, batch, length, ratio)
    parts = [random_mask(keys[:cut], cut, length, ratio), random_mask(keys[cut:], batch - cut, length, ratio)]
    for field in range(3):
        joined = np.concatenate([np.asarray(p[field]) for p in parts], axis=0)
        np.testing.assert_array_equal(np.asarray(full[field]), joined)
    # a permuted batch gives the permuted masks (sharding may reorder examples)
    perm = np.array([2, 0, 3, 1])
    shuffled = random_mask(keys[perm], batch, length, ratio)
    np.testing.assert_array_equal(np.asarray(shuffled.mask), np.asarray(full.mask)[perm])


def test_uniform_noise_per_example_rows():
    keys = jax.random.split(jax.random.key(7), 5)
    noise = np.asarray(uniform_noise(keys, 5, 16))
    assert noise.shape == (5, 16)
    assert np.all((noise >= 0) & (noise < 1))
    for b in range(5):
        np.testing.assert_array_equal(noise[b], np.asarray(jax.random.uniform(keys[b], (16,))))


def test_single_key_is_split_over_batch():
    key = jax.random.key(5)
    a = random_mask(key, 3, 16, 0.75)
    b = random_mask(jax.random.split(key, 3), 3, 16, 0.75)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_wrong_number_of_keys_raises():
    keys = jax.random.split(jax.random.key(0), 3)
    with pytest.raises(ValueError):
        uniform_noise(keys, 4, 16)


def test_legacy_uint32_key_accepted_as_one_key():
    legacy = jax.random.PRNGKey(0)
    m = random_mask(legacy, 4, 16, 0.75)
    ref = random_mask(jax.random.wrap_key_data(legacy), 4, 16, 0.75)
    np.testing.assert_array_equal(np.asarray(m.mask), np.asarray(ref.mask))


# --------------------------------------------------------------------------------------------
# jit and gather


def test_random_mask_under_jit_static_shapes():
    fn = jax.jit(random_mask, static_argnums=(1, 2, 3))
    key = jax.random.key(11)
    jitted = fn(key, 3, 49, 0.75)
    eager = random_mask(key, 3, 49, 0.75)
    assert jitted.ids_keep.shape == (3, 12)
    assert jitted.ids_restore.shape == (3, 49) and jitted.mask.shape == (3, 49)
    for x, y in zip(jitted, eager):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # per-example keys traced through jit as well (the trainer's usage)
    keys = jax.random.split(key, 3)
    out = jax.jit(lambda k: random_mask(k, 3, 49, 0.75).mask)(keys)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(random_mask(keys, 3, 49, 0.75).mask))
    # abstract evaluation gives the same static shapes
    shapes = jax.eval_shape(lambda k: random_mask(k, 3, 49, 0.75), keys)
    assert shapes.ids_keep.shape == (3, 12) and shapes.mask.dtype == jnp.bool_


@given(st.sampled_from([1, 3]), st.sampled_from([1, 5, 12]), st.sampled_from([1, 4]),
       st.integers(0, 2**32 - 1))
@SETTINGS
def test_gather_tokens_matches_loop(batch, length, dim, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, dim)).astype(np.float32)
    k = rng.integers(1, length + 1)
    ids = np.stack([rng.permutation(length)[:k] for _ in range(batch)]).astype(np.int32)
    out = np.asarray(gather_tokens(jnp.asarray(x), jnp.asarray(ids)))
    ref = np.zeros((batch, k, dim), np.float32)
    for b in range(batch):
        for j in range(k):
            ref[b, j] = x[b, ids[b, j]]
    np.testing.assert_array_equal(out, ref)


def test_unshuffle_with_mask_tokens_hand_case():
    # One example, L = 4, kept ids [2, 0] (ids_restore puts them back); cls 9 stays in front.
    from maskjax.masking import unshuffle_with_mask_tokens

    mask = mask_from_noise(jnp.asarray([[0.2, 0.9, 0.1, 0.8]]), 0.5)
    assert mask.ids_keep.tolist() == [[2, 0]]
    x = jnp.asarray([[[9.0], [20.0], [0.0]]])  # cls, token 2, token 0
    out = unshuffle_with_mask_tokens(x, jnp.full((1, 1, 1), -1.0), mask.ids_restore)
    assert out[..., 0].tolist() == [[9.0, 0.0, -1.0, 20.0, -1.0]]
    no_cls = unshuffle_with_mask_tokens(x[:, 1:], jnp.full((1, 1, 1), -1.0), mask.ids_restore, 0)
    assert no_cls[..., 0].tolist() == [[0.0, -1.0, 20.0, -1.0]]
