"""What a colourisation run shows and writes: TensorBoard charts, grids and figures, the results folder's
PNGs (the colour-quality ones with palette swatches as axis labels), its summary fields, the line
printed at the end and the numbers of TensorBoard's HParams tab.

colorization.py calls these; they get the module and the DataModule they describe as arguments.
"""
import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.patches import Rectangle
from matplotlib.transforms import blended_transform_factory

from color.palette import palette_to_rgb
from files import atomic_save_figure
from reporting.figures import plot_curves, save_image_rows
from training.callbacks import ValidationGrid, chart

# colour-quality values logged after every validation epoch (the annealed ones and the paper metrics
# exist only after the last one: see color/metrics.py)
QUALITY_SCALARS = ("colourfulness_pred", "colourfulness_true", "colourfulness_ratio", "mae_rgb_argmax", "mean_recall",
                   "colourfulness_pred_annealed", "mae_rgb_annealed", "psnr_argmax", "psnr_annealed", "ssim_argmax",
                   "ssim_annealed", "ciede2000_argmax", "ciede2000_annealed")


def monitor(rebalanced):
    """The validation loss the run minimises: its best checkpoint and its summary's best epoch follow it."""
    return "val/loss_weighted" if rebalanced else "val/loss"


def layout(rebalanced):
    """The Custom Scalars charts of a colourisation run."""
    charts = {"loss: plain cross-entropy (train, val)": chart("train/loss", "val/loss"),
              "pixel accuracy (train, val)": chart("train/acc", "val/acc")}
    if rebalanced:
        charts["loss: rebalanced cross-entropy (train, val)"] = chart("train/loss_weighted", "val/loss_weighted")
    charts["colourfulness of val images (predicted, true)"] = chart("val/colourfulness_pred", "val/colourfulness_true")
    charts["mean absolute RGB error, val (argmax; annealed mean at the end)"] = chart("val/mae_rgb_argmax",
                                                                                     "val/mae_rgb_annealed")
    return {"colorization": charts}


@torch.no_grad()
def sample_rows(module, datamodule, n=8):
    """(label, images) rows for the fixed validation samples: grey input | prediction | ground truth."""
    grey, target, _ = datamodule.sample_batch(n)
    was_training = module.training
    module.eval()
    pred = module.predict_indices(grey.to(module.device)).cpu()
    module.train(was_training)
    palette = datamodule.palette
    return [("greyscale input", grey), ("prediction", palette_to_rgb(pred, palette)),
            ("ground truth", palette_to_rgb(target, palette))]


def validation_grid(datamodule):
    """The TensorBoard grid of fixed validation images, logged after every validation epoch."""
    return ValidationGrid(lambda module, n: sample_rows(module, datamodule, n),
                          "val/samples (grey | prediction | truth)", 8, scale=4)


def log_quality_figures(module, quality, epoch):
    """The per-colour and confusion figures of one validation epoch in TensorBoard (global rank 0)."""
    experiment = getattr(module.logger, "experiment", None)
    if not module.trainer.is_global_zero or not hasattr(experiment, "add_figure"):
        return
    name = f"{module.hparams.model} epoch {epoch}"
    experiment.add_figure("val/colours (share and recall per palette colour)", per_colour_figure(quality, name), epoch)
    experiment.add_figure("val/confusion matrix (row-normalised)", confusion_figure(quality, name), epoch)
    plt.close("all")


def write_results(module, datamodule, config, run, history):
    """curves.png, samples.png, colour_recall.png and confusion.png in the run's results folder; returns the
    task's summary fields. The colour quality is the last validation epoch's: that of the final weights."""
    name, rebalanced = module.hparams.model, module.rebalanced
    loss_keys = ["train/loss", "val/loss"] + (["train/loss_weighted", "val/loss_weighted"] if rebalanced else [])
    flag = f" --rebalance {module.hparams.rebalance:g}" if rebalanced else ""
    epochs = len(history.history)
    plot_curves(history.history, [("cross-entropy loss", loss_keys), ("pixel accuracy", ["train/acc", "val/acc"]),
                                  ("colourfulness of val images",
                                   ["val/colourfulness_pred", "val/colourfulness_true"])],
                run.results / "curves.png", f"{name}{flag}: per epoch")
    save_image_rows(sample_rows(module, datamodule), run.results / "samples.png",
                    f"{name} after {epochs} epochs: validation samples")
    quality = module.last_quality
    for file, make, what in (("colour_recall.png", per_colour_figure, "per palette colour, validation pixels"),
                             ("confusion.png", confusion_figure, "confusion matrix, validation pixels "
                                                                 "(row-normalised)")):
        fig = make(quality, f"{name} after {epochs} epochs: {what}")
        atomic_save_figure(fig, run.results / file)
        plt.close(fig)
    criterion = module.criterion
    rebalance = {"lambda": module.hparams.rebalance, "class_weights": criterion.class_weights.tolist(),
                 "smoothed_distribution": criterion.prior.tolist()} if rebalanced else None
    key = monitor(rebalanced)
    _, best_epoch = history.best(key, "min")
    best_acc, best_acc_epoch = history.best("val/acc", "max")
    best_row = next(h for h in history.history if h["epoch"] == best_epoch)
    return dict(
        model=name, hyperparameters={k: v for k, v in module.hparams.items() if k != "palette"},
        batch_size=config.batch_size, seed=config.seed, monitor=key,
        best_val_loss=best_row["val/loss"], best_val_loss_epoch=best_epoch,
        best_val_acc=best_acc, best_val_acc_epoch=best_acc_epoch,
        final_val_loss=history.last("val/loss"), final_val_acc=history.last("val/acc"),
        final_train_loss=history.last("train/loss"), final_train_acc=history.last("train/acc"),
        loss="rebalanced cross-entropy" if rebalanced else "cross-entropy", rebalance=rebalance,
        colour_quality=quality, data=datamodule.source)


def headline(s):
    return (f"{s['model']}: best val loss {s['best_val_loss']:.4f} (epoch {s['best_val_loss_epoch']}), "
            f"final val acc {s['final_val_acc']:.4f}")


def metrics(s):
    """The numbers of the HParams tab."""
    quality = ("colourfulness_ratio", "ciede2000_argmax", "ciede2000_annealed", "psnr_argmax", "ssim_argmax")
    return ({k: s[k] for k in ("final_val_loss", "best_val_loss", "final_val_acc", "best_val_acc")}
            | {k: s["colour_quality"][k] for k in quality})


# ----------------------------------------------------------------------------- colour-quality figures

def swatches(ax, colours, order, axis="x", offset=0.02, size=0.055):
    """Palette swatches in place of tick labels on `axis`: colour order[i] at position i, outside the axes."""
    getattr(ax, f"set_{axis}ticks")(range(len(order)))
    getattr(ax, f"set_{axis}ticklabels")([str(q) for q in order], fontsize=6)
    ax.tick_params(axis=axis, pad=14)
    x = axis == "x"
    t = blended_transform_factory(*((ax.transData, ax.transAxes) if x else (ax.transAxes, ax.transData)))
    for i, q in enumerate(order):
        corner, width, height = (((i - 0.42, -offset - size), 0.84, size) if x
                                 else ((-offset - size, i - 0.42), size, 0.84))
        ax.add_patch(Rectangle(corner, width, height, transform=t, clip_on=False, facecolor=colours[q],
                               edgecolor="black", linewidth=0.4))


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
        swatches(ax, colours, order)
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
    swatches(ax, colours, order, "x", offset=0.015, size=0.03)
    swatches(ax, colours, order, "y", offset=0.015, size=0.03)
    ax.set_xlabel("predicted colour")
    ax.set_ylabel("target colour")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
