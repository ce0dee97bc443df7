"""Batch-size sweep (homework Q1.2.5): one colorization run per batch size, compared in one folder.

    python colorization.py ConvTransposeNet --batch-sizes 32 64 128 256 512 --epochs 10

trains one run per batch size (every other flag as given, the same for all) and writes
`RESULTS_DIR/colorization/batch_sweep/`:

- `batch_sweep.csv`: batch size, final and best train/val loss and accuracy, wall seconds, run;
- `val_loss.png`: the validation loss (and accuracy) curves of all batch sizes;
- `samples_bs<B>.png`: validation samples (grey | prediction | truth) of the run with batch size B;
- `sweep.json`: the sweep's settings and its runs.

Reruns never destroy an earlier sweep. A run already finished with the same hyper-parameters
(summary.json with the epochs asked for; see training/finished.py) is reused, not trained again,
so an interrupted sweep resumes where it stopped. The folder is `batch_sweep/` when it is free or
holds a sweep with the same settings (then it is rewritten with the same runs); a sweep with other
settings (epochs, model, batch sizes, ...) goes to the first free or matching `batch_sweep-2`,
`batch_sweep-3`, ...
"""
import copy
import csv
import io
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from data.cifar import find_batch_folder  # noqa: E402
from errors import UsageError  # noqa: E402
from training.files import atomic_save_figure, atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from training.finished import checkpoint_path, reuse_or_train  # noqa: E402

TASK = "colorization"
SWEEP_DIR = "batch_sweep"
CSV_NAME = "batch_sweep.csv"
FIGURE_NAME = "val_loss.png"
CSV_COLUMNS = ("batch_size", "epochs", "final_train_loss", "final_train_acc", "final_val_loss", "final_val_acc",
               "best_train_loss", "best_train_acc", "best_val_loss", "best_val_loss_epoch", "best_val_acc",
               "best_val_acc_epoch", "wall_seconds", "run")


def colorization_wanted(args):
    """What a finished colorization run must match to stand in for training `args` again."""
    folder = find_batch_folder(args.data_dir)
    return {
        "task": TASK, "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
        "hyperparameters.kernel": args.kernel, "hyperparameters.num_filters": args.num_filters,
        "hyperparameters.lr": float(args.lr), "hyperparameters.optimizer": args.optimizer,
        "hyperparameters.weight_decay": float(args.weight_decay),
        # data not extracted yet: None matches no stored folder, so the run trains
        "data.folder": str(folder) if folder else None,
        "data.palette": str(args.palette or "default"),
        # older summaries have no "rebalance": they were all trained with the plain cross-entropy
        "hyperparameters": lambda hp: hp.get("rebalance") == getattr(args, "rebalance", None),
    }


def train_or_reuse(args, log=print):
    """(summary, trained) for one colorization run with `args` (see training.finished)."""
    from colorization import train

    return reuse_or_train(train, args, TASK, colorization_wanted(args), log)


def sweep_settings(args, batch_sizes):
    """The settings that identify a sweep (and its folder)."""
    folder = find_batch_folder(args.data_dir)
    return {"model": args.model, "batch_sizes": sorted(batch_sizes), "epochs": args.epochs, "kernel": args.kernel,
            "num_filters": args.num_filters, "lr": float(args.lr), "optimizer": args.optimizer,
            "weight_decay": float(args.weight_decay), "seed": args.seed,
            "data": str(folder) if folder else str(Path(args.data_dir).resolve()),
            "palette": str(args.palette or "default"),
            # only when set, so that the settings of earlier sweeps (plain cross-entropy) still match
            **({"rebalance": args.rebalance} if getattr(args, "rebalance", None) is not None else {})}


def sweep_folder(results_dir, settings):
    """batch_sweep/ if free or holding these settings, else the first free or matching batch_sweep-N."""
    root = Path(results_dir) / TASK
    for i in range(1, 10000):
        folder = root / (SWEEP_DIR if i == 1 else f"{SWEEP_DIR}-{i}")
        if not folder.exists():
            return folder
        try:
            if json.loads((folder / "sweep.json").read_text()).get("settings") == settings:
                return folder
        except (OSError, ValueError, AttributeError):
            continue  # not ours, or damaged: leave it alone
    raise UsageError(f"no free batch_sweep-N folder in {root}")


def _best(history, key, pick):
    values = [h[key] for h in history if h.get(key) is not None]
    return pick(values) if values else None


def csv_row(summary):
    """One CSV row (dict keyed by CSV_COLUMNS) from a run's summary."""
    history = summary.get("history", [])
    return {"batch_size": summary["batch_size"], "epochs": summary["epochs"],
            "final_train_loss": summary["final_train_loss"], "final_train_acc": summary["final_train_acc"],
            "final_val_loss": summary["final_val_loss"], "final_val_acc": summary["final_val_acc"],
            "best_train_loss": _best(history, "train/loss", min), "best_train_acc": _best(history, "train/acc", max),
            "best_val_loss": summary["best_val_loss"], "best_val_loss_epoch": summary["best_val_loss_epoch"] + 1,
            "best_val_acc": summary["best_val_acc"], "best_val_acc_epoch": summary["best_val_acc_epoch"] + 1,
            "wall_seconds": summary["wall_seconds"], "run": summary["run"]}


def write_csv(path, rows):
    """Write the rows (dicts keyed by CSV_COLUMNS) atomically; epochs in it are 1-based."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_text(path, out.getvalue())


def plot_sweep(summaries, path, title):
    """Validation loss and accuracy per epoch, one line per batch size."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (("val/loss", "validation cross-entropy (nats per pixel)", 1),
              ("val/acc", "validation pixel accuracy (%)", 100))
    for ax, (key, ylabel, scale) in zip(axes, panels):
        for s in summaries:
            points = [(h["epoch"] + 1, h[key] * scale) for h in s["history"] if h.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=f"batch size {s['batch_size']}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def render_samples(summary, datamodule, path, results_dir, logs_dir):
    """Validation samples of a finished run, titled with its batch size, from its last checkpoint;
    the run's own samples.png is copied when the checkpoint is gone. Returns the path or None."""
    from colorization import ColorizationModule, sample_rows
    from training.figures import save_image_rows

    ckpt = checkpoint_path(summary, "last", logs_dir)
    if ckpt is None:
        own = Path(results_dir) / TASK / summary["run"] / "samples.png"
        return atomic_write_bytes(path, own.read_bytes()) if own.is_file() else None
    module = ColorizationModule.load_from_checkpoint(str(ckpt), map_location="cpu")
    title = (f"{summary['model']}, batch size {summary['batch_size']}, after {summary['epochs']} epoch(s): "
             f"validation samples")
    save_image_rows(sample_rows(module, datamodule), path, title)
    return path


def run_sweep(args, log=print):
    """Train (or reuse) one run per batch size in `args.batch_sizes`; write the sweep folder.

    Returns a dict: folder, settings, summaries (sorted by batch size), rows, csv, figure, samples
    ({batch size: path}), trained (how many runs were trained now).
    """
    if args.run_name:
        raise UsageError("--run-name cannot be combined with --batch-sizes: each batch size gets its own run")
    batch_sizes = sorted(set(args.batch_sizes))
    summaries, trained = [], 0
    for b in batch_sizes:
        one = copy.copy(args)
        one.batch_size, one.batch_sizes = b, None
        one.run_name = f"{args.model}-bs{b:03d}-{time.strftime('%Y%m%d-%H%M%S')}"
        log(f"batch-size sweep: batch size {b} ({args.epochs} epoch(s))")
        summary, new = train_or_reuse(one, log)
        if summary is None:  # a non-zero DDP rank: rank 0 writes the sweep
            return None
        summaries.append(summary)
        trained += new
    return write_sweep(args, batch_sizes, summaries, trained, log)


def write_sweep(args, batch_sizes, summaries, trained, log=print):
    """The sweep folder's CSV, figure, sample grids and sweep.json."""
    from data.cifar import CIFARHorses

    settings = sweep_settings(args, batch_sizes)
    folder = sweep_folder(args.results_dir, settings)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [csv_row(s) for s in summaries]
    csv_path = write_csv(folder / CSV_NAME, rows)
    figure = folder / FIGURE_NAME
    plot_sweep(summaries, figure, f"{args.model}: validation curves per batch size ({args.epochs} epoch(s) each)")
    datamodule = CIFARHorses(data_dir=args.data_dir, batch_size=max(batch_sizes), palette=args.palette)
    datamodule.setup()
    samples = {}
    for s in summaries:
        path = render_samples(s, datamodule, folder / f"samples_bs{s['batch_size']:03d}.png", args.results_dir,
                              args.logs_dir)
        if path is not None:
            samples[s["batch_size"]] = Path(path)
    atomic_write_json(folder / "sweep.json", {"settings": settings, "runs": [s["run"] for s in summaries],
                                              "csv": CSV_NAME, "figure": FIGURE_NAME})
    log(f"batch-size sweep: {len(summaries)} runs ({trained} trained now); results in {folder}")
    return {"folder": folder, "settings": settings, "summaries": summaries, "rows": rows, "csv": csv_path,
            "figure": figure, "samples": samples, "trained": trained}
