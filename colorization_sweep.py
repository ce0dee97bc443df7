"""Batch-size sweep (homework Q1.2.5): one colorization run per batch size, compared in one folder.

    python colorization.py ConvTransposeNet --batch-sizes 32 64 128 256 512 --epochs 10

trains one run per batch size (every other flag as given, the same for all) and writes
`RESULTS_DIR/colorization/batch_sweep/`:

- `batch_sweep.csv`: batch size, final and best train/val loss and accuracy, wall seconds, run;
- `val_loss.png`: the validation loss (and accuracy) curves of all batch sizes;
- `samples_bs<B>.png`: validation samples (grey | prediction | truth) of the run with batch size B;
- `sweep.json`: the sweep's settings and its runs.

Reruns never destroy an earlier sweep. A run already finished with the same settings (summary.json;
see training/runs.py, `differences`) is reused, not trained again,
so an interrupted sweep resumes where it stopped. The folder is `batch_sweep/` when it is free or
holds a sweep with the same settings (then it is rewritten with the same runs); a sweep with other
settings (epochs, model, batch sizes, ...) goes to the first free or matching `batch_sweep-2`,
`batch_sweep-3`, ...

The sweep runs one process per batch size after the other; several devices (DDP) are refused with
one line, since each rank would have to step through the same runs in the same order.
This module knows nothing of colorization.py: `train_one(args) -> (summary, trained)` and
`render(summary, datamodule, path, logs_dir)` are handed in by its CLI.
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
from training.cli import several_processes  # noqa: E402
from training.files import atomic_save_figure, atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402

TASK = "colorization"
SWEEP_DIR = "batch_sweep"
CSV_NAME = "batch_sweep.csv"
FIGURE_NAME = "val_loss.png"
CSV_COLUMNS = ("batch_size", "epochs", "final_train_loss", "final_train_acc", "final_val_loss", "final_val_acc",
               "best_train_loss", "best_train_acc", "best_val_loss", "best_val_loss_epoch", "best_val_acc",
               "best_val_acc_epoch", "wall_seconds", "run")


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


def run_sweep(args, train_one, render, log=print):
    """Train (or reuse) one run per batch size in `args.batch_sizes`; write the sweep folder.

    Returns a dict: folder, settings, summaries (sorted by batch size), rows, csv, figure, samples
    ({batch size: path}), trained (how many runs were trained now).
    """
    if args.run_name:
        raise UsageError("--run-name cannot be combined with --batch-sizes: each batch size gets its own run")
    if several_processes(args):
        raise UsageError("--batch-sizes runs one process at a time: drop --devices/--num-nodes (or torchrun) "
                         "for the sweep, or train each batch size as its own run with --devices N")
    if args.devices == "auto":
        args.devices = 1  # 'auto' would take every GPU of the machine, i.e. DDP
    batch_sizes = sorted(set(args.batch_sizes))
    summaries, trained = [], 0
    for b in batch_sizes:
        one = copy.copy(args)
        one.batch_size, one.batch_sizes = b, None
        one.run_name = f"{args.model}-bs{b:03d}-{time.strftime('%Y%m%d-%H%M%S')}"
        log(f"batch-size sweep: batch size {b} ({args.epochs} epoch(s))")
        summary, new = train_one(one, log)
        summaries.append(summary)
        trained += new
    return write_sweep(args, batch_sizes, summaries, trained, render, log)


def write_sweep(args, batch_sizes, summaries, trained, render, log=print):
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
        path = folder / f"samples_bs{s['batch_size']:03d}.png"
        if render(s, datamodule, path, args.logs_dir) is None:  # checkpoint gone: copy the run's own samples
            own = Path(args.results_dir) / TASK / s["run"] / "samples.png"
            path = atomic_write_bytes(path, own.read_bytes()) if own.is_file() else None
        if path is not None:
            samples[s["batch_size"]] = Path(path)
    atomic_write_json(folder / "sweep.json", {"settings": settings, "runs": [s["run"] for s in summaries],
                                              "csv": CSV_NAME, "figure": FIGURE_NAME})
    log(f"batch-size sweep: {len(summaries)} runs ({trained} trained now); results in {folder}")
    return {"folder": folder, "settings": settings, "summaries": summaries, "rows": rows, "csv": csv_path,
            "figure": figure, "samples": samples, "trained": trained}
