"""Run folders: logs/<task>/<run>/ (TensorBoard, checkpoints) and results/<task>/<run>/ (summary, figures).

A new run never reuses an existing folder: names carry a timestamp, and a collision (two runs started
in the same second) takes the next free suffix, claimed with an exclusive mkdir so the race is safe.
Only global rank 0 creates folders. Processes that Lightning launches for DDP inherit the chosen name
through the environment, so every rank agrees on it.
"""
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pytorch_lightning.utilities import rank_zero_only

from errors import UserError

RUN_ENV = "IMAGE2IMAGE_RUN_NAME"


@dataclass(frozen=True)
class Run:
    name: str
    logs: Path  # TensorBoard events and checkpoints/
    results: Path  # summary.json, figures

    @property
    def checkpoints(self):
        return self.logs / "checkpoints"


def _check_writable(folder):
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create folder {folder}: {e.strerror}; choose another with the flag for it") from e
    # Really create (and delete) a file: for root, os.access says yes even to immutable folders.
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise UserError(f"folder {folder} is not writable ({e.strerror}); "
                        f"choose another with --results-dir / --logs-dir") from e


def create_run(task, prefix, results_root="results", logs_root="logs", name=None):
    """Claim a fresh run folder pair for `task`, named `<prefix>-<YYYYmmdd-HHMMSS>[-N]` unless `name` is given."""
    results_root, logs_root = Path(results_root) / task, Path(logs_root) / task
    inherited = os.environ.get(RUN_ENV)
    if inherited:  # a DDP child process: rank 0 already claimed the folders
        return Run(inherited, logs_root / inherited, results_root / inherited)
    if rank_zero_only.rank != 0:  # launched by torchrun/srun without a name: rank 0 owns the folders
        base = name or f"{prefix}-rank-follower"
        return Run(base, logs_root / base, results_root / base)
    for root in (results_root, logs_root):
        _check_writable(root)
    base = name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 1000):
        candidate = base if i == 1 else f"{base}-{i}"
        if (logs_root / candidate).exists():
            continue
        try:
            (results_root / candidate).mkdir()
        except FileExistsError:
            continue
        (logs_root / candidate).mkdir()
        os.environ[RUN_ENV] = candidate
        return Run(candidate, logs_root / candidate, results_root / candidate)
    raise UserError(f"no free run folder name for {base!r} in {results_root}")
