"""FID and Inception score on the standard TF-Inception weights, and ``maskjax fid-stats``.

- :func:`frechet_distance`: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` in float64. The trace
  of the matrix square root is taken from the eigenvalues of the symmetric PSD matrix
  ``S1^(1/2) S2 S1^(1/2)``, which are those of ``S1 S2``: two ``eigh`` calls, a real result for
  any pair of PSD covariances, and eigenvalues at round-off level are taken as 0. With fewer images
  than 2048 the covariances are singular: ``scipy.linalg.sqrtm(S1 @ S2)`` then returns complex parts
  (the usual ``eps * I`` retry) and, for identical statistics, an FID of about -1e-7 of ``Tr(S)``,
  where this gives about 1e-15.
- :func:`inception_score`: the standard 10-split score ``exp(E_x KL(p(y|x) || p(y)))`` on the
  1008-way logits (mean and std over the splits).
- :class:`FeatureStatistics`: a streaming float64 mean / covariance of pool3 features.
- :func:`image_statistics`: the FID statistics of a folder, tar or ``.npz`` of images or of a
  dataset split, through :class:`maskjax.eval.inception.FidInception` in jitted batches.

Images are RGB ``uint8`` (generated images should be quantised to ``uint8`` first, as in every
published FID). All images of one set must share one size (each is resized to 299 inside).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from typing import Iterator

import numpy as np

from maskjax.errors import DataError, UsageError

def _zero_round_off(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those indistinguishable from 0 (below ``dim * eps * max``) set to 0.

    Their square roots would otherwise add up: from 30 images in 512 dimensions, 7e-4 of FID at identical statistics.
    """
    tolerance = max(float(values.max(initial=0.0)), 0.0) * len(values) * np.finfo(np.float64).eps
    return np.where(values > tolerance, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(_zero_round_off(values))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((sigma1 sigma2)^(1/2))`` for symmetric PSD ``sigma1``, ``sigma2`` (float64, real)."""
    root1 = _psd_sqrt(np.asarray(sigma1, np.float64))
    middle = root1 @ np.asarray(sigma2, np.float64) @ root1
    middle = (middle + middle.T) / 2  # symmetric up to round-off; eigvalsh reads one triangle
    return float(np.sum(np.sqrt(_zero_round_off(np.linalg.eigvalsh(middle)))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet distance between the Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_from_stats(stats1: dict, stats2: dict) -> float:
    """FID between two statistics dicts (or loaded ``.npz`` files) holding ``mu`` and ``sigma``."""
    return frechet_distance(stats1["mu"], stats1["sigma"], stats2["mu"], stats2["sigma"])


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """``(mean, std)`` over ``splits`` consecutive chunks of ``exp(mean_x KL(p(y|x) || mean_x p(y|x)))``.

    ``logits``: ``[N, C]`` (the Inception's 1008-way ``pool3 @ W``, no bias). Computed in float64
    with log-softmax, so confident predictions do not underflow to ``log 0``.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"need [N, C] logits with N >= splits={splits}, got shape {logits.shape}")
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    scores = []
    for chunk in np.array_split(log_p, splits):
        p = np.exp(chunk)
        with np.errstate(divide="ignore", invalid="ignore"):  # a class no image gives mass: 0 * log 0 = 0
            log_marginal = np.log(p.mean(axis=0))
            kl_terms = np.where(p > 0, p * (chunk - log_marginal), 0.0)
        scores.append(np.exp(np.mean(np.sum(kl_terms, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


class FeatureStatistics:
    """Running float64 mean and (unbiased) covariance of feature rows, without keeping the rows."""

    def __init__(self, dim: int):
        self.count, self._sum = 0, np.zeros(dim, np.float64)
        self._outer = np.zeros((dim, dim), np.float64)

    def update(self, features: np.ndarray) -> None:
        """Adds ``[n, dim]`` feature rows."""
        features = np.asarray(features, np.float64)
        self.count += len(features)
        self._sum += features.sum(axis=0)
        self._outer += features.T @ features

    @property
    def mu(self) -> np.ndarray:
        """The mean feature."""
        return self._sum / self.count

    @property
    def sigma(self) -> np.ndarray:
        """The covariance (``np.cov(rows, rowvar=False)``: divided by ``count - 1``)."""
        if self.count < 2:
            raise ValueError("a covariance needs at least 2 feature rows")
        mu = self.mu
        return (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)


# ----------------------------------------------------------------------------------------- image sets


def _decode(blob: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as image:
        return np.asarray(image.convert("RGB"), np.uint8)


def open_images(path: str | None = None, data: str | None = None, split: str | None = None,
                limit: int | None = None, seed: int = 0):
    """An indexable set of RGB ``uint8`` images (``len``, ``[i]`` -> ``[H, W, 3]``).

    ``path``: an ``.npz`` (array ``images`` [N, H, W, 3] uint8, else its only array), or an image
    folder / tar (``maskjax.data.ImageFolderSource``, optionally one ``split`` folder). ``data``:
    a dataset name (``cifar10``) with ``split`` train|test, from ``maskjax.config.datasets``.
    ``limit``: a fixed random subset of that many images (``seed``).
    """
    if (path is None) == (data is None):
        raise UsageError("give either an image path or a dataset name")
    if data is not None:
        if data != "cifar10":
            raise UsageError(f"unknown dataset {data!r}: fid-stats knows cifar10 (or pass --images PATH)")
        if split not in ("train", "test"):
            raise UsageError(f"--split must be train or test for cifar10, got {split!r}")
        from maskjax.config.datasets import cifar10_dir

        path = str(cifar10_dir() / f"{split}.tar")
    if not os.path.exists(path):
        raise DataError(f"images not found: {path}")
    if path.endswith(".npz"):
        with np.load(path) as archive:
            names = list(archive.keys())
            if "images" not in names and len(names) != 1:
                raise DataError(f"{path}: expected an array 'images' (or a single array), found {names}")
            images = archive["images" if "images" in names else names[0]]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"{path}: expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
        source = _ArrayImages(images)
    else:
        from maskjax.data import ImageFolderSource

        source = _DecodedImages(ImageFolderSource(path, split=split))
    if limit is not None and limit < len(source):
        from maskjax.data.sources import SubsetSource

        source = SubsetSource(source, limit, seed=seed)
    return source


class _ArrayImages:
    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.images[index]


class _DecodedImages:
    """An ImageFolderSource's items, decoded to RGB uint8."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:
        return _decode(self.source[index]["image"])

    def record_name(self, index: int) -> str:
        """Where image ``index`` lives (for messages)."""
        return self.source.record_name(index)


def _batches(images, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        batch = [images[i] for i in range(start, min(start + batch_size, len(images)))]
        shapes = {b.shape for b in batch}
        if len(shapes) != 1:
            raise DataError(f"images of different sizes {sorted(shapes)} in one set: resize them to one size first")
        yield np.stack(batch)


def image_statistics(images, inception=None, batch_size: int = 50, desc: str = "inception features") -> dict:
    """FID statistics of an image set (:func:`open_images`, or any ``[N, H, W, 3]`` uint8 array).

    Returns ``{"mu", "sigma", "num_images", "seconds", "images_per_second"}``, plus
    ``"inception_score"`` / ``"inception_score_std"`` when ``inception`` has an output layer.
    """
    from maskjax.eval.inception import FidInception
    from maskjax.progress import progress

    inception = FidInception(batch_size=batch_size) if inception is None else inception
    stats, logits = None, []
    start = time.perf_counter()
    with progress(total=len(images), desc=desc, unit="img") as bar:
        for batch in _batches(images, inception.batch_size):
            out = inception(batch)
            stats = FeatureStatistics(out["pool3"].shape[1]) if stats is None else stats
            stats.update(out["pool3"])
            if "logits" in out:
                logits.append(out["logits"])
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    if stats is None or stats.count < 2:
        raise DataError(f"FID statistics need at least 2 images, got {0 if stats is None else stats.count}")
    result = {"mu": stats.mu, "sigma": stats.sigma, "num_images": stats.count, "seconds": seconds,
              "images_per_second": stats.count / max(seconds, 1e-9)}
    if logits:
        result["inception_score"], result["inception_score_std"] = inception_score(np.concatenate(logits))
    return result


def save_stats(path: str, stats: dict, source: str) -> None:
    """Writes ``mu``, ``sigma``, ``num_images`` (+ the Inception score if any) and where they came from."""
    from maskjax.eval.inception_weights import ARCHIVE_SHA1

    extra = {k: stats[k] for k in ("inception_score", "inception_score_std") if k in stats}
    np.savez(path, mu=stats["mu"], sigma=stats["sigma"], num_images=stats["num_images"], source=source,
             weights_sha1=ARCHIVE_SHA1, **extra)


def load_stats(path: str) -> dict:
    """The statistics saved by :func:`save_stats` (or any ``.npz`` with ``mu`` and ``sigma``)."""
    if not os.path.exists(path):
        raise DataError(f"FID statistics not found: {path}")
    with np.load(path) as data:
        if "mu" not in data or "sigma" not in data:
            raise DataError(f"{path} holds no FID statistics (arrays 'mu' and 'sigma')")
        return {k: data[k] for k in data.keys()}


# ------------------------------------------------------------------------------------------ command

DESCRIPTION = """Computes the FID statistics (pool3 mean and covariance of the TF-Inception FID network)
of a dataset split or of a folder / tar / .npz of images, and writes them to an .npz.
Needs the fid extra (pip install 'maskjax[fid]'); nothing is downloaded.

examples:
  maskjax fid-stats --data cifar10 --split train --out cifar10_train.npz
  maskjax fid-stats --images samples.npz --out samples.npz --reference cifar10_train.npz"""


def build_parser() -> argparse.ArgumentParser:
    """The ``maskjax fid-stats`` argument parser."""
    parser = argparse.ArgumentParser(prog="maskjax fid-stats", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", help="a dataset name: cifar10 (its location: $MASKJAX_CIFAR10 or the data root)")
    what.add_argument("--images", help="an image folder, tar archive or .npz (array 'images', uint8 NHWC)")
    parser.add_argument("--split", help="train or test with --data; a top-level folder of --images")
    parser.add_argument("--out", required=True, help="the .npz to write (mu, sigma, num_images, ...)")
    parser.add_argument("--limit", type=int, help="use a fixed random subset of this many images")
    parser.add_argument("--seed", type=int, default=0, help="the subset's seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per jitted Inception call (default 50)")
    parser.add_argument("--output-layer", help="a file with the Inception's 1008-way output layer, for the "
                        "Inception score (an .npz 'weight', or a torch archive with fc.weight)")
    parser.add_argument("--reference", help="statistics .npz to print the FID against")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``maskjax fid-stats``: writes the statistics, prints images/s (and the FID to --reference)."""
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 2:
        raise UsageError("--limit must be at least 2 (a covariance needs two images)")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    from maskjax.eval.inception import FidInception, load_output_layer
    from maskjax.eval.inception_weights import archive_path

    archive_path()  # the missing extra is the first thing to report, before any data is read
    # Every input is checked before the (hours of CPU) features are computed.
    reference = load_stats(args.reference) if args.reference else None
    output_weight = load_output_layer(args.output_layer) if args.output_layer else None
    images = open_images(args.images, args.data, args.split, args.limit, args.seed)
    inception = FidInception(output_weight=output_weight, batch_size=args.batch_size)
    source = f"{args.data or args.images} split={args.split} limit={args.limit} seed={args.seed}"
    stats = image_statistics(images, inception, desc=f"fid-stats {args.data or args.images}")
    save_stats(args.out, stats, source)
    print(f"wrote {args.out}: {stats['num_images']} images in {stats['seconds']:.1f} s "
          f"({stats['images_per_second']:.2f} images/s)")
    if "inception_score" in stats:
        print(f"Inception score: {stats['inception_score']:.3f} +- {stats['inception_score_std']:.3f} (10 splits)")
    if reference is not None:
        print(f"FID against {args.reference}: {fid_from_stats(stats, reference):.4f}")
    return 0
