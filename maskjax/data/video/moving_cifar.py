"""Moving CIFAR-10: synthetic video clips of real CIFAR-10 images in motion (mini reproductions).

Real video datasets (Kinetics, SSv2) are far too large for a small-scale check of the video
methods, and Moving MNIST has no natural-image content. Moving CIFAR keeps real image statistics
and adds the one thing the video models need beyond images: content that moves over time.

Generator, for clip ``i`` of a split (everything drawn from ``numpy.random.default_rng([seed,
i])``, so a clip is a pure function of ``(seed, i)``: random access, no storage):

1. The main image is CIFAR-10 image ``i mod N`` of the split (32x32 RGB, decoded from the
   ImageFolder tar); the clip's label is that image's class.
2. The canvas is ``canvas_size x canvas_size`` (default 32, at least 32), black or, with
   ``background="noise"``, static uniform noise drawn once per clip.
3. The image starts at a uniformly random top-left position and moves with a constant velocity:
   a uniformly random direction and a speed uniform in ``[min_speed, max_speed]`` pixels per
   frame (default 1-3). Frame ``t`` pastes it at ``round(p0 + v t)``.
4. Positions wrap around the canvas edges (a torus): on the default 32x32 canvas every frame
   is the whole image circularly shifted, so no content leaves the view.
5. Optional ``distractor=True``: a second, randomly chosen CIFAR image with its own start and
   velocity is pasted first, behind the main one (it carries no label information).

``num_frames`` frames per clip. The video modality generates ``data.num_frames x
data.sampling_rate`` frames, so the official sampling (16 frames at stride 4) spans the whole
clip. ``maskjax make-moving-cifar`` writes such clips as MP4 files in the ``VideoFolderSource``
layout (``<out>/<split>/<class>/<index>.mp4``), which exercises the real decoding path.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

CIFAR_SIZE = 32
BACKGROUNDS = ("black", "noise")


def resolve_cifar(path: str | os.PathLike | None, split: str) -> str:
    """The ImageFolder tar/dir to read: ``path`` itself, ``path/<split>.tar[.gz]`` when ``path`` is a
    folder holding those, or the embedded subset's ``<split>.tar.gz`` when ``path`` is None."""
    if path is None:
        from maskjax.data import embedded_cifar10_path

        path = embedded_cifar10_path()
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (f"{split}.tar", f"{split}.tar.gz"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"CIFAR-10 data not found: {path} (a {split}.tar or a folder holding one)")
    return path


class MovingCifarSource:
    """Clips ``{"frames": uint8[num_frames, C, C, 3], "label": int}`` of moving CIFAR-10 images.

    Args:
      cifar_path: a CIFAR-10 ImageFolder tar (``<split>/<class>/*.jpg``), a folder holding
        ``<split>.tar[.gz]``, or None for the embedded subset.
      split: the CIFAR split (``"train"`` or ``"test"``).
      num_frames: frames per clip.
      canvas_size: canvas side in pixels (>= 32).
      seed: generator seed (module docstring).
      min_speed, max_speed: speed range in pixels per frame.
      background: ``"black"`` or ``"noise"``.
      distractor: add a second moving image behind the main one.
      num_clips: number of clips (default: one per CIFAR image of the split).
    """

    def __init__(self, cifar_path: str | os.PathLike | None = None, split: str = "train", num_frames: int = 16,
                 canvas_size: int = CIFAR_SIZE, *, seed: int = 0, min_speed: float = 1.0, max_speed: float = 3.0,
                 background: str = "black", distractor: bool = False, num_clips: int | None = None):
        from maskjax.data.sources import ImageFolderSource

        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if canvas_size < CIFAR_SIZE:
            raise ValueError(f"canvas_size must be >= {CIFAR_SIZE} (the CIFAR image size), got {canvas_size}")
        if not 0 <= min_speed <= max_speed:
            raise ValueError(f"need 0 <= min_speed <= max_speed, got {min_speed}, {max_speed}")
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
        self.images = ImageFolderSource(resolve_cifar(cifar_path, split), split=split)
        self.class_names = list(self.images.class_names)
        self.split = split
        self.num_frames, self.canvas_size, self.seed = int(num_frames), int(canvas_size), int(seed)
        self.min_speed, self.max_speed = float(min_speed), float(max_speed)
        self.background, self.distractor = background, bool(distractor)
        if self.distractor and len(self.images) < 2:
            raise ValueError("distractor=True needs at least two CIFAR images")
        self.num_clips = len(self.images) if num_clips is None else int(num_clips)
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")

    def __len__(self) -> int:
        return self.num_clips

    @property
    def labels(self) -> np.ndarray:
        """Labels of all clips (int32), without generating any."""
        return self.images.labels[np.arange(self.num_clips) % len(self.images)]

    def _image(self, index: int) -> tuple[np.ndarray, int]:
        from maskjax.data.transforms import to_rgb_uint8

        item = self.images[index % len(self.images)]
        image = to_rgb_uint8(item["image"])
        if image.shape[:2] != (CIFAR_SIZE, CIFAR_SIZE):
            raise ValueError(f"expected {CIFAR_SIZE}x{CIFAR_SIZE} CIFAR images, got {image.shape[:2]}")
        return image, int(item["label"])

    def _trajectory(self, rng: np.random.Generator) -> np.ndarray:
        """int64[num_frames, 2] top-left (row, col) positions, already wrapped onto the canvas."""
        start = rng.integers(0, self.canvas_size, size=2).astype(np.float64)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        speed = rng.uniform(self.min_speed, self.max_speed)
        velocity = speed * np.array([math.sin(angle), math.cos(angle)])
        t = np.arange(self.num_frames, dtype=np.float64)[:, None]
        return np.round(start + velocity * t).astype(np.int64) % self.canvas_size

    def _paste(self, frames: np.ndarray, image: np.ndarray, positions: np.ndarray) -> None:
        offsets = np.arange(CIFAR_SIZE)
        for frame, (row, col) in zip(frames, positions):
            rows, cols = (row + offsets) % self.canvas_size, (col + offsets) % self.canvas_size
            frame[np.ix_(rows, cols)] = image

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        rng = np.random.default_rng([self.seed, index])
        c = self.canvas_size
        if self.background == "noise":
            canvas = rng.integers(0, 256, (c, c, 3), dtype=np.uint8)
        else:
            canvas = np.zeros((c, c, 3), np.uint8)
        frames = np.repeat(canvas[None], self.num_frames, axis=0)
        image, label = self._image(index)
        main_path = self._trajectory(rng)
        if self.distractor:
            other = int(rng.integers(len(self.images) - 1))
            other += other >= index % len(self.images)  # never the main image itself
            self._paste(frames, self._image(other)[0], self._trajectory(rng))
        self._paste(frames, image, main_path)
        return {"frames": frames, "label": label}

    def __repr__(self) -> str:
        return (f"MovingCifarSource(split={self.split!r}, num_clips={self.num_clips}, num_frames={self.num_frames}, "
                f"canvas_size={self.canvas_size})")


def write_moving_cifar(out_dir: str | os.PathLike, n: int, *, num_frames: int = 16, split: str = "train",
                       cifar_path: str | os.PathLike | None = None, fps: float = 8.0, seed: int = 0,
                       **opts) -> list[str]:
    """Writes ``n`` clips (a random, class-mixed subset) as ``out/<split>/<class>/<index>.mp4``."""
    from maskjax.data.video.decode import write_video

    source = MovingCifarSource(cifar_path, split, num_frames, seed=seed, **opts)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(source))[: min(n, len(source))])
    written = []
    for index in chosen.tolist():
        item = source[index]
        folder = os.path.join(os.fspath(out_dir), split, source.class_names[item["label"]])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{index:06d}.mp4")
        write_video(path, item["frames"], fps=fps)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``maskjax make-moving-cifar --out DIR [--n 50] [--num_frames 16] [--split train,test]``."""
    p = argparse.ArgumentParser(prog="maskjax make-moving-cifar",
                                description="Write moving-CIFAR-10 clips as MP4 files (VideoFolderSource layout).")
    p.add_argument("--out", required=True, help="output root; files go to OUT/<split>/<class>/<index>.mp4")
    p.add_argument("--n", type=int, default=50, help="clips per split (default 50)")
    p.add_argument("--num_frames", type=int, default=16, help="frames per clip (default 16)")
    p.add_argument("--split", default="train,test", help="comma-separated CIFAR splits (default train,test)")
    p.add_argument("--cifar", default=None, help="CIFAR-10 tar or folder of <split>.tar (default: embedded subset)")
    p.add_argument("--canvas_size", type=int, default=CIFAR_SIZE, help="canvas side in pixels (even, >= 32)")
    p.add_argument("--background", default="black", choices=BACKGROUNDS)
    p.add_argument("--distractor", action="store_true", help="add a second moving image")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        for split in [s for s in args.split.split(",") if s]:
            paths = write_moving_cifar(args.out, args.n, num_frames=args.num_frames, split=split,
                                       cifar_path=args.cifar, fps=args.fps, seed=args.seed,
                                       canvas_size=args.canvas_size, background=args.background,
                                       distractor=args.distractor)
            print(f"wrote {len(paths)} clips to {os.path.join(args.out, split)}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
