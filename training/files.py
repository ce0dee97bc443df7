"""Files a run writes: atomically (a crash or a full disk never leaves half a summary, CSV or figure
behind), into folders probed for writability, with summary.json and machine.json.

- `atomic_write_*` / `atomic_save_figure`: write a temporary file beside the target, then rename;
- `check_writable`: really creates a file (for root, os.access says yes even on a read-only mount);
- `write_summary`: summary.json = what ran (command, library versions) and what it measured;
- `describe_machine` / `write_machine` / `read_machine`: machine.json, the machine a run ran on.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from data.download import is_writable
from errors import UserError

MACHINE_FILE = "machine.json"


def _atomic(path, write):
    """Write through `write(fileobj)` into a temporary file beside `path`, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text):
    return _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(path, data):
    return _atomic(path, lambda f: f.write(data))


def atomic_write_json(path, obj):
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save_figure(fig, path, dpi=110):
    """Save a matplotlib figure as PNG atomically (format given explicitly: the temp name has no .png)."""
    return _atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))


def check_writable(folder, hint):
    """Create `folder` if needed and prove it writable (data.download.is_writable really writes a file),
    or raise a UserError ending in `hint`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create folder {folder} ({e.strerror}); {hint}") from e
    if not is_writable(folder):
        raise UserError(f"folder {folder} is not writable; {hint}")
    return folder


# ----------------------------------------------------------------------------- summary.json

def library_versions():
    import numpy
    import pytorch_lightning
    import torch
    import torchmetrics
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "numpy": numpy.__version__,
    }


def write_summary(path, **fields):
    """Write `fields` plus the command line and library versions to `path` (atomically)."""
    summary = dict(fields)
    summary["command"] = " ".join(sys.argv)
    summary["versions"] = library_versions()
    atomic_write_json(path, summary)
    return summary


# ----------------------------------------------------------------------------- machine.json

def cpu_model():
    """The CPU's model name: lscpu's "Model name", else /proc/cpuinfo, else platform.processor()."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_machine():
    """A JSON-serialisable dict: cpu, logical_cpus, torch_threads, accelerator, platform."""
    import torch

    accelerator = "CPU only"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        accelerator = ", ".join(names)
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "accelerator": accelerator, "platform": platform.platform()}


def machine_text(machine):
    """One line for a report: 'Intel(R) Xeon(R) ..., 2 logical CPUs (torch: 2 threads), CPU only'."""
    if not machine:
        return "not recorded"
    return (f"{machine.get('cpu', '?')}, {machine.get('logical_cpus', '?')} logical CPUs "
            f"(torch: {machine.get('torch_threads', '?')} threads), {machine.get('accelerator', '?')}")


def write_machine(folder, machine=None):
    """Write machine.json (this machine unless `machine` is given) into a run's results folder."""
    return atomic_write_json(Path(folder) / MACHINE_FILE, machine or describe_machine())


def read_machine(folder):
    """The dict in `folder`/machine.json, or None when absent or unreadable."""
    try:
        return json.loads((Path(folder) / MACHINE_FILE).read_text())
    except (OSError, ValueError):
        return None
