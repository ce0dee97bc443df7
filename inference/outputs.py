"""Where predictions go: a fresh folder per call, unique file names, atomic PNG writes, the figure."""
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from errors import UserError
from training.files import atomic_save_figure, atomic_write_bytes

FIGURE_MAX_ROWS = 16  # more rows make an unreadably tall figure; every image still gets its own PNG
FIGURE_MAX_SIDE = 512  # figure panels are shrunk to this; the PNGs keep the full size


def output_folder(out, results_dir, task, prefix):
    """`out` if given (created if missing; files of the same name in it are replaced), else a NEW
    folder results/<task>/predict/<prefix>-<date>-<time>[-N], claimed with an exclusive mkdir so that
    an earlier call's folder is never written into (the rule training/runs.py uses for runs)."""
    if out is not None:
        return _mkdir(Path(out), exist_ok=True)
    root = _mkdir(Path(results_dir) / task / "predict", exist_ok=True)
    base = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 1000):
        candidate = root / (base if i == 1 else f"{base}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"no free output folder name for {base!r} in {root}; pass --out DIR")


def _mkdir(folder, exist_ok):
    try:
        folder.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as e:
        raise UserError(f"cannot create output folder {folder} ({e.strerror}); choose another with --out") from e
    return folder


class UniqueNames:
    """File stems for the outputs: the input's own stem, with -2, -3, ... when two inputs share it."""

    def __init__(self):
        self.used = set()

    def __call__(self, stem):
        name, i = stem, 1
        while name in self.used:
            i += 1
            name = f"{stem}-{i}"
        self.used.add(name)
        return name


def to_uint8(image):
    """float tensor (C, H, W) in [0, 1] -> uint8 array (H, W, C), or (H, W) for C = 1."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[2] == 1 else array


def save_png(array, path):
    """Write a uint8 (H, W) or (H, W, 3) array as PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def thumbnail(array, max_side=FIGURE_MAX_SIDE):
    """A uint8 image shrunk (aspect kept) so that its longer side is at most `max_side`, for figures."""
    image = Image.fromarray(np.ascontiguousarray(array))
    image.thumbnail((max_side, max_side), Image.LANCZOS)
    return np.asarray(image)


def save_side_by_side(rows, col_labels, path, title, total=None):
    """One figure, one row per image: `rows` is [(row label, [uint8 arrays, one per column])].

    Images keep their own sizes and aspect ratios (training/figures.save_image_rows needs one size
    per row); at most FIGURE_MAX_ROWS rows are drawn, the title says when some of `total` were left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = rows[:FIGURE_MAX_ROWS]
    total = max(total or 0, len(rows))
    if total > len(shown):
        title += f" (the first {len(shown)} shown)"
    fig, axes = plt.subplots(len(shown), len(col_labels), figsize=(3.0 * len(col_labels), 2.8 * len(shown) + 0.6),
                             squeeze=False)
    for r, (label, images) in enumerate(shown):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
    return path
