"""Figures both tasks' runs and the report write (PNG, atomically): training curves and labelled image grids."""
import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from files import atomic_save_figure  # noqa: E402


def plot_curves(history, panels, path, title, lines=None):
    """One subplot per (ylabel, [metric keys]) panel of the per-epoch `history` dicts; `lines`: {ylabel:
    [(label, y)]} horizontal reference lines (e.g. a baseline)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (ylabel, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, marker="o", markersize=3, label=key)
        for label, y in (lines or {}).get(ylabel, []):
            ax.axhline(y, color="grey", linestyle="--", linewidth=1, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)  # off the data
    fig.suptitle(title)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def save_image_rows(rows, path, title, col_labels=None, legend=None):
    """A grid figure: each row is (label, (N, C, H, W) tensor in [0, 1]); one column per image;
    `legend`: [(label, RGB colour)] explaining the colours of masks."""
    n = max(r[1].shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.35 * n + 0.8, 1.45 * len(rows) + 0.5), squeeze=False)
    for r, (label, images) in enumerate(rows):
        # (N, C, H, W) in [0, 1] with C = 1 or 3 -> (N, H, W, 3) for imshow
        arr = images.detach().float().cpu().clamp(0, 1).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()
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
    if legend:
        fig.legend(handles=[Patch(facecolor=c, edgecolor="black", label=label) for label, c in legend],
                   loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 if legend else 0, 1, 1))
    atomic_save_figure(fig, path)
    plt.close(fig)

