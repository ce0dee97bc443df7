"""What both benchmarks share: the repo on sys.path, machine facts, medians, the table and JSON line."""
import json
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo root, on the path
    sys.path.insert(0, str(REPO))


def quiet():
    """Keep the output to the tables: Lightning's info lines and known advice off."""
    from training.trainer import quiet_known_warnings

    quiet_known_warnings()
    warnings.filterwarnings("ignore", message=r".*randomly initialised.*")
    warnings.filterwarnings("ignore", message=r".*datasplits.mat unavailable.*")
    warnings.filterwarnings("ignore", message=r".*differ from the official release.*")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def begin(args):
    """What both benchmarks do first: quiet output, `--threads` applied; the device `--accelerator` names."""
    import torch

    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device("cuda:0" if args.accelerator in ("gpu", "cuda") else "cpu")


def machine(device):
    """Facts about where the numbers came from: CPU, cores, threads, GPU, library versions."""
    import pytorch_lightning
    import torch

    from training.trainer import cpu_model

    facts = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
             "torch": torch.__version__, "pytorch_lightning": pytorch_lightning.__version__,
             "device": str(device)}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def sync(device):
    """Wait for queued device work, so that host clocks measure it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device):
    """(wall-clock seconds, CPU seconds of this process), after the device's queued work is done.

    CPU time is the steadier measure on a machine that others load too: waiting for a core costs
    wall time but no CPU time, and every overhead (Python, logging, writer threads) costs CPU time."""
    sync(device)
    return time.perf_counter(), time.process_time()


def elapsed(start, stop):
    """(wall, cpu) seconds between two `now` readings."""
    return stop[0] - start[0], stop[1] - start[1]


def median(values):
    return statistics.median(values) if values else float("nan")


def print_table(headers, rows):
    """A plain aligned text table on stdout."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_json(obj):
    """The last line of a benchmark: one JSON object, so that runs can be compared by machine."""
    sys.stdout.flush()
    print(json.dumps(obj, sort_keys=False))
