"""Figures of the colour-quality metrics (color/metrics.py), with palette swatches as axis labels.

Each `*_figure` returns a matplotlib Figure (for TensorBoard's add_figure); `save_colour_figures`
writes both as PNGs.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from training.files import atomic_save_figure  # noqa: E402


def _swatches(ax, colours, order, axis="x", offset=0.02, size=0.055):
    """Palette swatches in place of tick labels: colour order[i] at position i, outside the axes."""
    if axis == "x":
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([str(q) for q in order], fontsize=6)
        ax.tick_params(axis="x", pad=14)
        t = blended_transform_factory(ax.transData, ax.transAxes)
        for i, q in enumerate(order):
            ax.add_patch(Rectangle((i - 0.42, -offset - size), 0.84, size, transform=t, clip_on=False,
                                   facecolor=colours[q], edgecolor="black", linewidth=0.4))
    else:
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([str(q) for q in order], fontsize=6)
        ax.tick_params(axis="y", pad=14)
        t = blended_transform_factory(ax.transAxes, ax.transData)
        for i, q in enumerate(order):
            ax.add_patch(Rectangle((-offset - size, i - 0.42), size, 0.84, transform=t, clip_on=False,
                                   facecolor=colours[q], edgecolor="black", linewidth=0.4))


def per_colour_figure(quality, title):
    """Target share, prediction share (top) and recall (bottom) of each palette colour, commonest first."""
    colours = np.clip(np.array(quality["palette"]), 0, 1)
    target, pred = np.array(quality["target_share"]), np.array(quality["pred_share"])
    order = list(np.argsort(-target, kind="stable"))
    x = np.arange(len(order))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.4), sharex=False)
    top.bar(x - 0.2, 100 * target[order], 0.4, label="share of target pixels", color="#4c72b0")
    top.bar(x + 0.2, 100 * pred[order], 0.4, label="share of predicted pixels", color="#dd8452")
    top.set_ylabel("% of validation pixels")
    top.legend(fontsize=8)
    recall = [quality["recall"][q] for q in order]
    bottom.bar(x, [100 * r if r is not None else 0 for r in recall], 0.6, color="#55a868")
    for i, r in enumerate(recall):
        bottom.text(i, (100 * r if r is not None else 0) + 1, "-" if r is None else f"{100 * r:.0f}",
                    ha="center", va="bottom", fontsize=6)
    bottom.set_ylabel("recall (%)")
    bottom.set_ylim(0, 105)
    for ax in (top, bottom):
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        _swatches(ax, colours, order)
    bottom.set_xlabel("palette colour (index and swatch), ordered by share of target pixels")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_figure(quality, title):
    """The (Q, Q) confusion matrix, each row divided by its sum (row q: where pixels of colour q went)."""
    colours = np.clip(np.array(quality["palette"]), 0, 1)
    c = np.array(quality["confusion_matrix"], dtype=np.float64)
    rows = c.sum(axis=1, keepdims=True)
    share = np.divide(c, rows, out=np.zeros_like(c), where=rows > 0)
    order = list(range(len(c)))
    fig, ax = plt.subplots(figsize=(7.6, 6.8))
    image = ax.imshow(share, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row's target pixels")
    _swatches(ax, colours, order, "x", offset=0.015, size=0.03)
    _swatches(ax, colours, order, "y", offset=0.015, size=0.03)
    ax.set_xlabel("predicted colour")
    ax.set_ylabel("target colour")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_colour_figures(quality, folder, name):
    """colour_recall.png and confusion.png in `folder`; returns their paths."""
    paths = []
    for file, make, what in (("colour_recall.png", per_colour_figure, "per palette colour, validation pixels"),
                             ("confusion.png", confusion_figure, "confusion matrix, validation pixels (row-normalised)")):
        fig = make(quality, f"{name}: {what}")
        atomic_save_figure(fig, folder / file)
        plt.close(fig)
        paths.append(folder / file)
    return paths


def recall_comparison_figure(qualities, title):
    """Recall per palette colour for several runs ({label: quality}), colours ordered by target share of
    the first run (commonest left), the target share printed under each bar group."""
    labels = list(qualities)
    first = qualities[labels[0]]
    colours = np.clip(np.array(first["palette"]), 0, 1)
    target = np.array(first["target_share"])
    order = list(np.argsort(-target, kind="stable"))
    x = np.arange(len(order))
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for i, label in enumerate(labels):
        recall = [qualities[label]["recall"][q] for q in order]
        ax.bar(x - 0.4 + width * (i + 0.5), [100 * r if r is not None else 0 for r in recall], width, label=label)
    for i, q in enumerate(order):
        ax.text(i, 101, f"{100 * target[q]:.1f}", ha="center", va="bottom", fontsize=6, color="#444444")
    ax.set_ylim(0, 110)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel("recall (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    _swatches(ax, colours, order)
    ax.set_xlabel("palette colour, ordered by share of target pixels (% printed above the bars)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
