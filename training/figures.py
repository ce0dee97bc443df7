"""Figures that runs write to results/: training curves and labelled image grids."""
import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from training.files import atomic_save_figure  # noqa: E402


def plot_curves(history, panels, path, title):
    """One subplot per panel: `panels` is a list of (ylabel, [metric keys]); x is the epoch (1-based).

    `history` is a list of per-epoch dicts (see training.callbacks.EpochHistory).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (ylabel, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(h["epoch"] + 1, h[key]) for h in history if h.get(key) is not None]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def to_hwc(images):
    """(N, C, H, W) float tensor in [0, 1] (C = 1 or 3) -> (N, H, W, 3) numpy array for imshow."""
    images = images.detach().float().cpu().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1).numpy()


def save_image_rows(rows, path, title, col_labels=None):
    """A grid figure: each row is (label, (N, C, H, W) tensor in [0, 1]); one column per image."""
    n = max(r[1].shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.35 * n + 0.8, 1.45 * len(rows) + 0.5), squeeze=False)
    for r, (label, images) in enumerate(rows):
        arr = to_hwc(images)
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(arr):
                ax.imshow(arr[c], interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0 and col_labels is not None and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def mask_to_rgb(mask, colours=((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), ignore=(0.5, 0.5, 0.5), ignore_index=255):
    """(N, H, W) class ids -> (N, 3, H, W) colours; ignored pixels grey."""
    import torch

    table = torch.tensor(list(colours) + [ignore], dtype=torch.float32)
    idx = mask.long().clone().cpu()
    idx[idx == ignore_index] = len(colours)
    return table[idx].permute(0, 3, 1, 2)


__all__ = ["plot_curves", "save_image_rows", "to_hwc", "mask_to_rgb", "np"]
