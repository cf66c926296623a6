"""Figure of ColorMAE's four noise colours: a pattern, its mask, and its radially averaged power spectrum.

The official ColorMAE repository ships only pre-generated patterns; ``maskjax.masking.color_noise``
generates them in-graph with our own filters (parameters in its docstring). This script shows what
those filters produce, so they can be compared by eye with the paper's figures:

* row 1: one filtered-noise field per colour (``--field-size`` patches square);
* row 2: the ColorMAE mask of a ``--window`` crop of it (visible = the ``1 - ratio`` largest values);
* row 3: the radially averaged power spectrum over ``--fields`` fields (dots), normalised to the
  white-noise level, with the designed gain squared (line).

Usage::

    python tools/colormae_spectra.py OUT.png [--field-size 32] [--window 14] [--fields 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def radial_average(values, size):
    """Mean of ``values`` [size, size] (fftfreq layout) over rings of integer radius 0..size//2."""
    import numpy as np

    f = np.fft.fftfreq(size) * size
    radius = np.rint(np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)).astype(int)
    bins = np.arange(size // 2 + 1)
    return bins / size, np.array([values[radius == b].mean() for b in bins])


def main(argv=None) -> int:
    """Parses the arguments, draws the figure, writes it to the given path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="where to write the figure (.png, .pdf, ...)")
    parser.add_argument("--field-size", type=int, default=32, help="noise field side in patches")
    parser.add_argument("--window", type=int, default=14, help="token grid side of the mask")
    parser.add_argument("--ratio", type=float, default=0.75, help="mask ratio")
    parser.add_argument("--fields", type=int, default=256, help="fields averaged in the spectra")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from maskjax.masking.color_noise import (
        COLORS, color_gain, color_noise_patterns, extract_windows, mask_from_patterns)

    size = args.field_size
    fig, axes = plt.subplots(3, len(COLORS), figsize=(3.2 * len(COLORS), 9.4))
    for col, color in enumerate(COLORS):
        key = jax.random.fold_in(jax.random.key(args.seed), col)
        fields = np.asarray(color_noise_patterns(key, args.fields, color, size))
        windows = extract_windows(jax.random.fold_in(key, 1), fields[:1], args.window)
        hidden = np.asarray(mask_from_patterns(windows, args.ratio).mask[0])
        power = (np.abs(np.fft.fft2(fields)) ** 2).mean(0) / size ** 2  # white noise -> 1
        freq, measured = radial_average(power, size)
        _, designed = radial_average(color_gain(color, size) ** 2, size)

        axes[0, col].imshow(fields[0], cmap="gray")
        axes[0, col].set_title(f"{color}: {size}x{size} field")
        axes[1, col].imshow(~hidden.reshape(args.window, args.window), cmap="gray", vmin=0, vmax=1)
        axes[1, col].set_title(f"visible {(~hidden).sum()} of {hidden.size} (white)")
        axes[2, col].plot(freq, measured, "o", ms=3, label=f"measured ({args.fields} fields)")
        axes[2, col].plot(freq, designed, "-", label="designed |gain|^2")
        axes[2, col].set_xlabel("radial frequency (cycles / patch)")
        axes[2, col].set_ylim(-0.05, 1.3)
        for ax in axes[:2, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[2, 0].set_ylabel("power (white noise = 1)")
    axes[2, 0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
