"""numpy / Python transcriptions of the official mask generators, and the statistics the tests use.

Each transcription follows the official code as specs/methods_vision.md records it (sections 2, 3,
4, 9-13), with its random source passed in so that the same function runs either

* on the official random source's own kind (Python's ``random.Random``, a numpy ``Generator``)
  for distribution comparisons, or
* on a :class:`UniformStream` that hands out pre-drawn uniforms in call order, so it can be fed
  exactly the uniforms the JAX implementation consumed and compared draw for draw.

Nothing here imports the code under test.
"""
from __future__ import annotations

import math

import numpy as np


# --------------------------------------------------------------------------------------------
# random sources


class UniformStream:
    """A random source reading pre-drawn uniforms in order (the JAX side's stream convention).

    ``uniform(a, b) = a + (b - a) * u`` is CPython's own ``random.uniform``; integer draws are
    ``a + floor(u * n)`` over the n admissible values.
    """

    def __init__(self, uniforms):
        self.u = np.asarray(uniforms, np.float64)  # float32 values, exactly representable
        self.pos = 0

    def random(self) -> float:
        value = float(self.u[self.pos])
        self.pos += 1
        return value

    def uniform(self, a, b):
        return a + (b - a) * self.random()

    def randint(self, a, b):  # inclusive, as random.randint
        return a + int(math.floor(self.random() * (b - a + 1)))

    def randint_exclusive(self, low, high):  # torch.randint(low, high): high excluded
        return low + int(math.floor(self.random() * (high - low)))


class TorchLikeRandom:
    """``torch.rand`` / ``torch.randint`` stand-ins on a numpy Generator (for distribution tests)."""

    def __init__(self, seed):
        self.g = np.random.default_rng(seed)

    def random(self) -> float:
        return float(self.g.random())

    def randint_exclusive(self, low, high):
        return int(self.g.integers(low, high))


# --------------------------------------------------------------------------------------------
# SimMIM (spec 2(a)): data/data_simmim.py::MaskGenerator


def ref_simmim(permutation, input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6):
    """The official ``MaskGenerator.__call__`` with ``np.random.permutation(token_count)`` given."""
    assert input_size % mask_patch_size == 0
    assert mask_patch_size % model_patch_size == 0
    rand_size = input_size // mask_patch_size
    scale = mask_patch_size // model_patch_size
    token_count = rand_size ** 2
    mask_count = int(np.ceil(token_count * mask_ratio))
    mask_idx = np.asarray(permutation)[:mask_count]
    mask = np.zeros(token_count, dtype=int)
    mask[mask_idx] = 1
    mask = mask.reshape((rand_size, rand_size))
    mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)
    return mask


# --------------------------------------------------------------------------------------------
# BEiT / MaskFeat (spec 3(a), 4(a)): beit/masking_generator.py::MaskingGenerator


class RefMaskingGenerator:
    """The official BEiT generator, with ``random`` passed in; records each accepted block.

    ``quirk`` deliberately breaks one rule (for the tests' power checks): ``"linear_aspect"`` draws
    the aspect ratio uniformly instead of log-uniformly; ``"exclusive_offsets"`` never uses the
    last top/left offset.
    """

    def __init__(self, input_size, num_masking_patches, min_num_patches=4, max_num_patches=None,
                 min_aspect=0.3, max_aspect=None, rng=None, quirk=None):
        if not isinstance(input_size, tuple):
            input_size = (input_size,) * 2
        self.height, self.width = input_size
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.aspect = (min_aspect, max_aspect)
        self.random = rng
        self.quirk = quirk
        self.blocks = []  # (h, w, new) of every accepted block, in order

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for _attempt in range(10):
            target_area = self.random.uniform(self.min_num_patches, max_mask_patches)
            if self.quirk == "linear_aspect":
                aspect_ratio = self.random.uniform(*self.aspect)
            else:
                aspect_ratio = math.exp(self.random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                last = 1 if self.quirk == "exclusive_offsets" else 0
                top = self.random.randint(0, self.height - h - last)
                left = self.random.randint(0, self.width - w - last)
                num_masked = mask[top: top + h, left: left + w].sum()
                # Overlap
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                    self.blocks.append((h, w, delta))
                if delta > 0:
                    break
        return delta

    def __call__(self):
        self.blocks = []
        mask = np.zeros(shape=(self.height, self.width), dtype=int)
        mask_count = 0
        while mask_count < self.num_masking_patches:
            max_mask_patches = self.num_masking_patches - mask_count
            max_mask_patches = min(max_mask_patches, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            else:
                mask_count += delta
        return mask


# --------------------------------------------------------------------------------------------
# HPM (spec 10(a)): models_mae_learn_loss.py::generate_mask


def ref_hpm_num_hard(length, mask_ratio, epoch, total_epochs):
    """``int((L - len_keep) * keep_ratio)`` with ``keep_ratio = float((epoch+1)/total) * 0.5``."""
    len_keep = int(length * (1 - mask_ratio))
    keep_ratio = float((epoch + 1) / total_epochs) * 0.5
    return int((length - len_keep) * keep_ratio)


def ref_hpm_mask(loss_pred, shuffle_noise, mask_ratio, num_hard):
    """The official per-sample loop, ``np.random.shuffle`` replaced by the order of ``shuffle_noise``.

    ``shuffle_noise`` [L] drives the shuffle of the non-hard positions (its values at those
    positions, ascending), and the fully random path (num_hard == 0). Returns the mask (1 = removed).
    """
    length = loss_pred.shape[0]
    len_keep = int(length * (1 - mask_ratio))
    if num_hard <= 0:
        ids_shuffle = np.argsort(shuffle_noise, kind="stable")
    else:
        ids_shuffle_loss = np.argsort(loss_pred, kind="stable")
        ids_shuffle = np.zeros(length, dtype=int)
        ids_shuffle[-num_hard:] = ids_shuffle_loss[-num_hard:]
        deleted = np.delete(np.arange(length), ids_shuffle[-num_hard:])  # ascending
        deleted = deleted[np.argsort(shuffle_noise[deleted], kind="stable")]  # the shuffle
        ids_shuffle[:length - num_hard] = deleted
    ids_restore = np.argsort(ids_shuffle, kind="stable")
    mask = np.ones(length)
    mask[:len_keep] = 0
    return mask[ids_restore]


# --------------------------------------------------------------------------------------------
# CrossMAE (spec 11(a)): models_cross.py::random_masking


def ref_crossmae(noise, mask_ratio, kept_mask_ratio):
    """Returns (ids_keep, encoder-hidden mask, reconstruction mask) for noise [N, L]."""
    n, length = noise.shape
    len_keep = int(length * (1 - mask_ratio))
    len_masked = int(length * (mask_ratio - kept_mask_ratio))
    ids_shuffle = np.argsort(noise, axis=1, kind="stable")
    ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
    ids_keep = ids_shuffle[:, :len_keep]
    recon = np.ones((n, length))
    recon[:, :len_keep + len_masked] = 0
    recon = np.take_along_axis(recon, ids_restore, axis=1)
    hidden = np.ones((n, length))
    hidden[:, :len_keep] = 0
    hidden = np.take_along_axis(hidden, ids_restore, axis=1)
    return ids_keep, hidden.astype(bool), recon.astype(bool)


# --------------------------------------------------------------------------------------------
# MFM (spec 12(a)): data/data_mfm.py::FreqMaskGenerator, models/mfm.py::frequency_transform


def ref_mfm_base_mask(input_size=224, mask_radius1=16, mask_radius2=999):
    """The official constructor's double loop (1 = frequency kept by the low-pass mask)."""
    mask = np.ones((input_size, input_size), dtype=int)
    c = input_size // 2
    for y in range(input_size):
        for x in range(input_size):
            d = (x - c) ** 2 + (y - c) ** 2
            if d >= mask_radius1 ** 2 and d < mask_radius2 ** 2:
                mask[y, x] = 0
    return mask


def ref_mfm_transform(x_hwc, mask):
    """``real(ifft2(ifftshift(fftshift(fft2(x)) * mask)))`` per channel, then clamp to [0, 1]."""
    x = np.moveaxis(np.asarray(x_hwc, np.float64), -1, 0)
    freq = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))
    out = np.fft.ifft2(np.fft.ifftshift(freq * mask, axes=(-2, -1))).real
    return np.moveaxis(np.clip(out, 0.0, 1.0), 0, -1)


# --------------------------------------------------------------------------------------------
# ColorMAE (spec 9(a)): ColorMasking.extract_windows + color_noise_mask


def ref_color_window(pattern, top, left, window, hflip, vflip):
    """RandomCrop(window) at (top, left), then H-flip, V-flip, then divide by the slice max."""
    out = np.asarray(pattern, np.float64)[top:top + window, left:left + window]
    if hflip:
        out = out[:, ::-1]
    if vflip:
        out = out[::-1, :]
    return out / out.max()


def ref_color_keep(window_values, mask_ratio):
    """Visible = the ``int(L*(1-r))`` largest values (``argsort(descending)[:len_keep]``)."""
    flat = np.asarray(window_values).reshape(-1)
    len_keep = int(flat.size * (1 - mask_ratio))
    ids_shuffle = np.argsort(-flat, kind="stable")
    mask = np.ones(flat.size, bool)
    mask[ids_shuffle[:len_keep]] = False
    return ids_shuffle[:len_keep], mask


def ref_gaussian_gain(size, sigma):
    """Transfer function of a Gaussian blur of std ``sigma`` pixels on a periodic ``size`` grid."""
    f = np.fft.fftfreq(size)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    return np.exp(-2.0 * np.pi ** 2 * sigma ** 2 * f2)


def radial_power(fields):
    """Radially averaged power spectrum of fields [..., S, S], averaged over the leading axes."""
    size = fields.shape[-1]
    power = np.abs(np.fft.fft2(fields)) ** 2
    return radial_average(power.reshape(-1, size, size).mean(0))


# --------------------------------------------------------------------------------------------
# I-JEPA (spec 13(a)): src/masks/multiblock.py::MaskCollator


class RefMaskCollator:
    """The official collator's mask part; ``torch.rand(1, generator=g)`` reads ``batch_rng.random()``
    and ``torch.randint(0, n, (1,))`` reads ``example_rngs[i].randint_exclusive(0, n)``.

    Records the number of dropped constraints (the official warning) per context mask.
    """

    def __init__(self, grid=(14, 14), enc_mask_scale=(0.2, 0.8), pred_mask_scale=(0.2, 0.8),
                 aspect_ratio=(0.3, 3.0), nenc=1, npred=2, min_keep=4, allow_overlap=False):
        self.height, self.width = grid
        self.enc_mask_scale = enc_mask_scale
        self.pred_mask_scale = pred_mask_scale
        self.aspect_ratio = aspect_ratio
        self.nenc = nenc
        self.npred = npred
        self.min_keep = min_keep
        self.allow_overlap = allow_overlap
        self.fallbacks = []

    def _sample_block_size(self, generator, scale, aspect_ratio_scale):
        _rand = generator.random()
        min_s, max_s = scale
        mask_scale = min_s + _rand * (max_s - min_s)
        max_keep = int(self.height * self.width * mask_scale)
        min_ar, max_ar = aspect_ratio_scale
        aspect_ratio = min_ar + _rand * (max_ar - min_ar)
        h = int(round(math.sqrt(max_keep * aspect_ratio)))
        w = int(round(math.sqrt(max_keep / aspect_ratio)))
        while h >= self.height:
            h -= 1
        while w >= self.width:
            w -= 1
        return (h, w)

    def _sample_block_mask(self, rng, b_size, acceptable_regions=None):
        h, w = b_size

        def constrain_mask(mask, tries=0):
            n = max(int(len(acceptable_regions) - tries), 0)
            for k in range(n):
                mask *= acceptable_regions[k]

        tries = 0
        timeout = og_timeout = 20
        valid_mask = False
        while not valid_mask:
            top = rng.randint_exclusive(0, self.height - h)
            left = rng.randint_exclusive(0, self.width - w)
            mask = np.zeros((self.height, self.width), dtype=np.int32)
            mask[top:top + h, left:left + w] = 1
            if acceptable_regions is not None:
                constrain_mask(mask, tries)
            mask = np.nonzero(mask.flatten())[0]
            valid_mask = len(mask) > self.min_keep
            if not valid_mask:
                timeout -= 1
                if timeout == 0:
                    tries += 1
                    timeout = og_timeout
        mask_complement = np.ones((self.height, self.width), dtype=np.int32)
        mask_complement[top:top + h, left:left + w] = 0
        self._last_tries = tries
        return mask, mask_complement

    def __call__(self, batch_size, batch_rng, example_rngs):
        p_size = self._sample_block_size(batch_rng, self.pred_mask_scale, self.aspect_ratio)
        e_size = self._sample_block_size(batch_rng, self.enc_mask_scale, (1., 1.))
        collated_masks_pred, collated_masks_enc = [], []
        min_keep_pred = self.height * self.width
        min_keep_enc = self.height * self.width
        self.fallbacks = []
        for i in range(batch_size):
            masks_p, masks_c = [], []
            for _ in range(self.npred):
                mask, mask_c = self._sample_block_mask(example_rngs[i], p_size)
                masks_p.append(mask)
                masks_c.append(mask_c)
                min_keep_pred = min(min_keep_pred, len(mask))
            collated_masks_pred.append(masks_p)
            acceptable_regions = None if self.allow_overlap else masks_c
            masks_e, fallbacks = [], []
            for _ in range(self.nenc):
                mask, _ = self._sample_block_mask(example_rngs[i], e_size,
                                                  acceptable_regions=acceptable_regions)
                masks_e.append(mask)
                fallbacks.append(self._last_tries)
                min_keep_enc = min(min_keep_enc, len(mask))
            collated_masks_enc.append(masks_e)
            self.fallbacks.append(fallbacks)
        pred = np.array([[cm[:min_keep_pred] for cm in cm_list] for cm_list in collated_masks_pred])
        enc = np.array([[cm[:min_keep_enc] for cm in cm_list] for cm_list in collated_masks_enc])
        return enc, pred, p_size, e_size


# --------------------------------------------------------------------------------------------
# statistics


def _gammaincc(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x): series below a + 1, Lentz's continued fraction above."""
    if x <= 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(log_front) * h


def chi2_sf(stat: float, df: int) -> float:
    """Upper tail of the chi-square distribution with ``df`` degrees of freedom."""
    return _gammaincc(df / 2.0, stat / 2.0)


def radial_average(values):
    """Mean of a frequency-domain array [S, S] (fftfreq layout) over rings of radius 0..S//2."""
    size = values.shape[-1]
    f = np.fft.fftfreq(size) * size
    r = np.rint(np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)).astype(int)
    return np.array([values[r == b].mean() for b in range(size // 2 + 1)])


def chi2_two_sample(a, b, min_expected: float = 5.0):
    """Chi-square test that two histograms over the same bins come from one distribution.

    Sparse bins (expected count < ``min_expected`` in either sample) are pooled into one bin so
    the asymptotics hold. Returns (statistic, degrees of freedom, p-value).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na, nb = a.sum(), b.sum()
    total = a + b
    small = (total * min(na, nb) / (na + nb)) < min_expected
    if small.any():
        a = np.append(a[~small], a[small].sum())
        b = np.append(b[~small], b[small].sum())
        total = a + b
    keep = total > 0
    a, b, total = a[keep], b[keep], total[keep]
    ea, eb = total * na / (na + nb), total * nb / (na + nb)
    stat = float(((a - ea) ** 2 / ea).sum() + ((b - eb) ** 2 / eb).sum())
    df = max(len(total) - 1, 1)
    return stat, df, chi2_sf(stat, df)


def chi2_gof_uniform_p(counts) -> float:
    """p-value of the chi-square goodness-of-fit test of independent draws against equal frequencies."""
    counts = np.asarray(counts, np.float64).reshape(-1)
    expected = counts.sum() / counts.size
    return chi2_sf(float(((counts - expected) ** 2 / expected).sum()), counts.size - 1)


def histogram(values, bins):
    """Counts of ``values`` over the integer (or tuple) keys ``bins``, in that order."""
    index = {k: i for i, k in enumerate(bins)}
    out = np.zeros(len(bins))
    for v in values:
        out[index[v]] += 1
    return out


def fixed_count_uniformity_p(counts, draws: int, per_draw: int) -> float:
    """p-value that each of K positions is chosen equally often when every draw picks exactly
    ``per_draw`` of them uniformly without replacement.

    Counts then have variance ``s2 = n p (1 - p)`` and covariance ``-s2 / (K - 1)``, so
    ``sum((c - n p)^2) (K - 1) / (K s2)`` is chi-square with K - 1 degrees of freedom.
    """
    counts = np.asarray(counts, np.float64).reshape(-1)
    k = counts.size
    p = per_draw / k
    s2 = draws * p * (1 - p)
    stat = float(((counts - draws * p) ** 2).sum() * (k - 1) / (k * s2))
    return chi2_sf(stat, k - 1)
