"""summary.json: what ran, on what, with which libraries, and what it measured."""
import platform
import sys

from training.files import atomic_write_json


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
