"""What machine a run ran on: CPU model (from lscpu), core count, torch threads, accelerator.

Wall times mean little without the machine, so runs made by the report and the batch-size sweep
store this next to their summary (`machine.json`).
"""
import os
import platform
import subprocess
from pathlib import Path

from training.files import atomic_write_json

MACHINE_FILE = "machine.json"


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
    import json

    try:
        return json.loads((Path(folder) / MACHINE_FILE).read_text())
    except (OSError, ValueError):
        return None
