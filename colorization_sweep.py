"""Batch-size sweep (homework Q1.2.5): one colorization run per batch size, compared in one folder.

    python colorization.py ConvTransposeNet --batch-sizes 32 64 128 256 512 --epochs 10

trains one run per batch size (every other flag as given, the same for all) and writes
`RESULTS_DIR/colorization/batch_sweep/`:

- `batch_sweep.csv`: per batch size the optimiser steps, final and best train/val loss and accuracy,
  the colour quality of the final model (colourfulness ratio, mean recall), wall seconds and the run;
- `val_loss.png`: validation loss and accuracy of every batch size against epochs and against
  optimiser steps (a larger batch takes fewer steps per epoch);
- `samples_bs<B>.png`: the validation samples of the run with batch size B;
- `sweep.json`: the sweep's settings and its runs.

A run already finished with the same settings is reused (reporting/reuse.py), so an interrupted sweep
resumes where it stopped. The folder is `batch_sweep/` when it is free or holds a sweep with the same
settings; a sweep with other settings goes to the first free or matching `batch_sweep-2`, ... The runs
go one after the other in one process; several devices (DDP) are refused with one line.
"""
import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from pathlib import Path

from matplotlib import pyplot as plt
from matplotlib.ticker import MaxNLocator

import colorization
from errors import UsageError
from files import atomic_save_figure, atomic_write_bytes, atomic_write_json, atomic_write_text
from reporting.reuse import reuse_or_train
from training.config import option, parse, positive_int, run_main, settings

TASK = colorization.TASK
SWEEP_DIR, CSV_NAME, FIGURE_NAME = "batch_sweep", "batch_sweep.csv", "val_loss.png"
CSV_COLUMNS = ("batch_size", "epochs", "steps", "final_train_loss", "final_train_acc", "final_val_loss",
               "final_val_acc", "best_val_loss", "best_val_loss_epoch", "best_val_acc", "best_val_acc_epoch",
               "colourfulness_ratio", "mean_recall", "wall_seconds", "run")


@dataclasses.dataclass(frozen=True)
class SweepConfig(colorization.ColorizationConfig):
    batch_sizes: tuple[int, ...] = option((), "one run per batch size (homework Q1.2.5)", check=positive_int,
                                          metavar="B", group="model", shown="none, give several")


def several_processes(config):
    """Whether the Trainer flags (or torchrun / srun) ask for more than one process."""
    devices = config.devices
    many = devices == -1 or (isinstance(devices, int) and devices > 1) or (isinstance(devices, str) and "," in devices)
    return many or config.num_nodes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1


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


def csv_row(summary):
    """One row (keyed by CSV_COLUMNS) from a run's summary; epochs counted from 1."""
    quality = summary["colour_quality"]
    steps = math.ceil(summary["data"]["train"] / summary["batch_size"]) * summary["epochs"]
    return {"steps": steps, "colourfulness_ratio": quality["colourfulness_ratio"],
            "mean_recall": quality["mean_recall"], **{k: summary[k] for k in CSV_COLUMNS if k in summary}}


def write_csv(path, rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in CSV_COLUMNS})
    return atomic_write_text(path, out.getvalue())


def plot_sweep(summaries, path, title):
    """Validation loss against epochs and against optimiser steps, and accuracy against epochs, per batch size."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for s in summaries:
        per_epoch = math.ceil(s["data"]["train"] / s["batch_size"])
        points = [(h["epoch"], h["val/loss"], h["val/acc"]) for h in s["history"] if h.get("val/loss") is not None]
        epochs, loss, acc = zip(*points)
        label = f"batch size {s['batch_size']}"
        axes[0].plot(epochs, loss, marker="o", markersize=3, label=label)
        axes[1].plot([e * per_epoch for e in epochs], loss, marker="o", markersize=3, label=label)
        axes[2].plot(epochs, [100 * a for a in acc], marker="o", markersize=3, label=label)
    for ax, (xlabel, ylabel) in zip(axes, [("epoch", "validation cross-entropy"), ("optimiser steps", "validation "
                                           "cross-entropy"), ("epoch", "validation pixel accuracy (%)")]):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def run_sweep(config, log=print):
    """Train (or reuse) one run per batch size in `config.batch_sizes`; write the sweep folder.

    Returns a dict: folder, settings, summaries (sorted by batch size), rows, csv, figure, samples
    ({batch size: path}), trained (how many runs were trained now).
    """
    if not config.batch_sizes:
        raise UsageError("give the batch sizes of the sweep: --batch-sizes B [B ...]")
    if config.run_name:
        raise UsageError("--run-name cannot be combined with --batch-sizes: each batch size gets its own run")
    if several_processes(config):
        raise UsageError("--batch-sizes runs one process at a time: drop --devices/--num-nodes (or torchrun) "
                         "for the sweep, or train each batch size as its own run with --devices N")
    summaries, trained = [], 0
    runs = run_configs(config)
    for b, one in runs:
        log(f"batch-size sweep: batch size {b} ({config.epochs} epoch(s))")
        summary, new = reuse_or_train(TASK, colorization.prepare, colorization.train, one, log)
        summaries.append(summary)
        trained += new
    return write_sweep(config, [b for b, _ in runs], summaries, trained, log)


def run_configs(config):
    """[(batch size, ColorizationConfig of its run)], smallest batch first: the runs of the sweep, which
    report.py trains in parallel processes (each as `reuse_or_train` of its config)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # devices=1: 'auto' would take every GPU of the machine, i.e. DDP
    return [(b, colorization.ColorizationConfig(**{**settings_of(config), "batch_size": b, "devices": 1,
                                                   "run_name": f"{config.model}-bs{b:03d}-{stamp}"}))
            for b in sorted(set(config.batch_sizes))]


def settings_of(config):
    """The fields of a ColorizationConfig (all but batch_sizes)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(colorization.ColorizationConfig)}


def write_sweep(config, batch_sizes, summaries, trained, log=print):
    """The sweep folder's CSV, figure, sample grids and sweep.json."""
    sweep = {k: v for k, v in settings(config).items() if k not in ("batch_size", "batch_sizes")}
    sweep = {**sweep, "batch_sizes": batch_sizes, "data": summaries[0]["settings"]["data"]}
    folder = sweep_folder(config.results_dir, sweep)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [csv_row(s) for s in summaries]
    csv_path = write_csv(folder / CSV_NAME, rows)
    plot_sweep(summaries, folder / FIGURE_NAME, f"{config.model}: validation curves per batch size "
                                                f"({config.epochs} epoch(s) each)")
    samples = {}
    for s in summaries:
        own = Path(config.results_dir) / TASK / s["run"] / "samples.png"
        if own.is_file():
            samples[s["batch_size"]] = atomic_write_bytes(folder / f"samples_bs{s['batch_size']:03d}.png",
                                                          own.read_bytes())
    atomic_write_json(folder / "sweep.json", {"settings": sweep, "runs": [s["run"] for s in summaries],
                                              "csv": CSV_NAME, "figure": FIGURE_NAME})
    log(f"batch-size sweep: {len(summaries)} runs ({trained} trained now); results in {folder}")
    return {"folder": folder, "settings": sweep, "summaries": summaries, "rows": rows, "csv": csv_path,
            "figure": folder / FIGURE_NAME, "samples": samples, "trained": trained}


def parse_config(argv=None):
    return parse(SweepConfig, argv, "colorization.py", "Batch-size sweep (homework Q1.2.5): one colorization run "
                 "per batch size, compared in RESULTS_DIR/colorization/batch_sweep/.",
                 "example: python colorization.py ConvTransposeNet --batch-sizes 32 64 128 256 512 --epochs 10")


def main(argv=None):
    return run_main(run_sweep, sys.argv[1:] if argv is None else argv, parse_config)


if __name__ == "__main__":
    sys.exit(main())
