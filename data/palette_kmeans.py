"""Regenerate the palette (color/color_kmeans24_cat7.npy): k-means over the RGB pixels of the training horses.

    python -m data.palette_kmeans --data-dir ../shared/data/cifar10-horses --out color/color_kmeans24_cat7.npy

writes a plain float32 (k, 3) .npy in [0, 1] (loads without pickle), colours sorted by luminance.
It lives in data/ because it reads the data; color/ only reads the palette. color/README.md gives the
settings of the shipped file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from data.cifar import HORSE, TRAIN_BATCHES, ensure_cifar, load_batches
from errors import UsageError, UserError
from files import atomic_save

N_INIT = 4
DEFAULT_MAX_PIXELS = 0  # all pixels (5.1M for CIFAR-10; about 2 minutes on one core)


def horse_pixels(data_dir, max_pixels: int | None = None, seed: int = 0) -> np.ndarray:
    """RGB pixels in [0, 1], float64 (P, 3), of the training horses (label 7 of data_batch_1..5);
    a random subset of `max_pixels` of them (fixed by `seed`) when there are more (None/0: all)."""
    folder = ensure_cifar(data_dir, download=False, md5=None)
    images, labels = load_batches(folder, TRAIN_BATCHES)
    pixels = images[labels == HORSE].transpose(0, 2, 3, 1).reshape(-1, 3)
    if max_pixels and len(pixels) > max_pixels:
        keep = np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False)
        pixels = pixels[np.sort(keep)]
    return pixels / 255.0


def fit_palette(pixels: np.ndarray, k: int = 24, seed: int = 0) -> np.ndarray:
    """k-means centres of `pixels` as float32 (k, 3), sorted by luminance (then R, G, B).

    One thread, so that the floating-point sums, and hence the file, do not depend on the machine's
    core count.
    """
    if len(pixels) < k:
        raise UsageError(f"--k {k} is more than the {len(pixels)} pixels available")
    with threadpool_limits(limits=1):
        centres = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit(pixels).cluster_centers_
    centres = np.clip(centres, 0.0, 1.0).astype(np.float32)
    luminance = centres @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return centres[np.lexsort((centres[:, 2], centres[:, 1], centres[:, 0], luminance))]


def save_palette(colours: np.ndarray, out: str | Path) -> Path:
    """Write `colours` as a plain .npy, atomically."""
    return atomic_save(out, lambda f: np.save(f, np.ascontiguousarray(colours), allow_pickle=False))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data.palette_kmeans", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/ (or the archive)")
    parser.add_argument("--out", required=True, help="the .npy file to write")
    parser.add_argument("--k", type=int, default=24, help="number of colours (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixel subset and k-means (default 0)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="cluster a random subset of this many pixels (faster); 0 = all (default)")
    args = parser.parse_args(argv)
    if args.k < 2:
        parser.error("--k must be at least 2")
    if args.max_pixels < 0:
        parser.error("--max-pixels must be >= 0")
    return args


def main(argv=None) -> int:
    """Command line entry point; returns the exit code."""
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        pixels = horse_pixels(args.data_dir, args.max_pixels, args.seed)
        out = save_palette(fit_palette(pixels, args.k, args.seed), args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {out}: {args.k} colours from {len(pixels)} pixels in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
