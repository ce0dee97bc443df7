"""Where predictions go: a fresh folder per call, atomic PNG writes, the side-by-side figure."""
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from errors import UserError
from files import atomic_save_figure, atomic_write_bytes, claim_folder

FIGURE_MAX_ROWS = 16  # more rows make an unreadably tall figure; every image still gets its own PNG
FIGURE_MAX_SIDE = 512  # figure panels are shrunk to this; the PNGs keep the full size


def output_folder(out, results_dir, task, prefix):
    """`out` if given (created if missing; files of the same name in it are replaced), else a NEW folder
    RESULTS_DIR/<task>/predict/<prefix>-<date>-<time>[-N], claimed as run folders are (files.claim_folder)."""
    try:
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            return Path(out)
        return claim_folder(Path(results_dir) / task / "predict", f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
    except OSError as e:
        raise UserError(f"cannot create the output folder ({e.strerror}: {e.filename}); "
                        f"choose another with --out") from e


def to_uint8(image):
    """float tensor (C, H, W) in [0, 1] -> uint8 array (H, W, C), or (H, W) for C = 1."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[2] == 1 else array


def save_png(array, path):
    """Write a uint8 (H, W) or (H, W, 3) array as PNG, atomically (with the folders it needs)."""
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
