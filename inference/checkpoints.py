"""`--checkpoint best|last|PATH`: find a checkpoint, load it safely, check it is of the right task.

best / last are those of the newest FINISHED run: a run whose results/<task>/<run>/summary.json
exists (written after training ends), newest by that file's modification time. For colorization
only runs of the requested model count; for segmentation runs of any loss and backbone do. The
files are looked for in logs/<task>/<run>/checkpoints/ (best-*.ckpt, last.ckpt), then in the folder
the summary names.

Checkpoints are always loaded with `torch.load(weights_only=True)`: tensors and plain containers
only, never arbitrary unpickled objects. Lightning's checkpoints load that way.
"""
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from errors import UserError

SPECS = ("best", "last")
TASKS = ("colorization", "segmentation")


@dataclass(frozen=True)
class Resolved:
    path: Path
    how: str  # "best of run X", "last of run X" or "given"


def resolve_checkpoint(spec, task, results_dir="results", logs_dir="logs", model=None) -> Resolved:
    """The checkpoint file that `spec` (best, last or a path) names for `task` (and `model`)."""
    if spec not in SPECS:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"checkpoint {path} not found; pass best, last or a .ckpt file from "
                            f"{Path(logs_dir) / task}/<run>/checkpoints/")
        return Resolved(path, "given")
    runs = finished_runs(task, results_dir, model)
    what = f"{task} run" + (f" of {model}" if model else "")
    if not runs:
        train = f"python {task}.py {model or ''}".strip() if task == "colorization" else "python segmentation.py --loss ce"
        raise UserError(f"no finished {what} in {Path(results_dir) / task} (a run is finished once it has "
                        f"summary.json); train one with `{train}`, or pass --checkpoint PATH")
    for run_dir, summary in runs:
        path = _find_file(spec, task, run_dir.name, summary, logs_dir)
        if path is not None:
            return Resolved(path, f"{spec} of run {run_dir.name}")
    newest = runs[0][0].name
    raise UserError(f"the newest finished {what}, {newest}, has no {spec} checkpoint in "
                    f"{Path(logs_dir) / task / newest / 'checkpoints'} (were the logs deleted?); pass --checkpoint PATH")


def finished_runs(task, results_dir, model=None):
    """[(results run folder, summary dict)] of finished runs of `task` (and `model`), newest first."""
    runs = []
    for summary_path in Path(results_dir, task).glob("*/summary.json"):
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            continue  # unreadable summary: not a finished run we can use
        if not isinstance(summary, dict) or summary.get("task", task) != task:
            continue
        if model is not None and summary.get("model") != model:
            continue
        runs.append((summary_path.stat().st_mtime_ns, summary_path.parent.name, summary_path.parent, summary))
    runs.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return [(r[2], r[3]) for r in runs]


def _find_file(spec, task, run, summary, logs_dir):
    """best-*.ckpt / last.ckpt of `run`, or None: our logs folder first, then the one in the summary."""
    folders = [Path(logs_dir) / task / run / "checkpoints"]
    if summary.get("logs"):
        folders.append(Path(summary["logs"]) / "checkpoints")
    for folder in folders:
        pattern = "best-*.ckpt" if spec == "best" else "last*.ckpt"
        found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        if found:
            return found[0]
    return None


def load_checkpoint(path):
    """The checkpoint dict at `path`, loaded with weights_only=True; a UserError naming it otherwise."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a file that is not a checkpoint
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise UserError(f"{path} holds objects that only an unrestricted unpickler could load; refusing "
                            f"(weights_only=True): it is not a checkpoint written by colorization.py or "
                            f"segmentation.py") from e
        raise UserError(f"{path} is not a readable PyTorch checkpoint (not a torch.save file, or truncated: "
                        f"{type(e).__name__}); pass a .ckpt file from logs/<task>/<run>/checkpoints/") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserError(f"{path} is not a Lightning checkpoint written by colorization.py or segmentation.py "
                        f"(no state_dict / hyper_parameters)")
    return checkpoint


def checkpoint_task(checkpoint):
    """"colorization", "segmentation" or None: stored by the modules, else recognised by the hyper-parameters."""
    if checkpoint.get("task") in TASKS:
        return checkpoint["task"]
    hparams = checkpoint.get("hyper_parameters") or {}
    if "backbone" in hparams:
        return "segmentation"
    if "num_colours" in hparams and "model" in hparams:
        return "colorization"
    return None


def check_checkpoint(checkpoint, path, task, model=None):
    """A UserError unless the checkpoint is of `task` (and, for colorization, of `model`)."""
    found = checkpoint_task(checkpoint)
    hparams = checkpoint["hyper_parameters"]
    if found is None:
        raise UserError(f"{path} is not a checkpoint of colorization.py or segmentation.py "
                        f"(hyper-parameters {sorted(hparams)})")
    if found != task:
        other = f" ({hparams.get('model')})" if found == "colorization" else ""
        raise UserError(f"{path} is a {found} checkpoint{other}, not a {task} one; use it with {found}.py, "
                        f"or pass a checkpoint from logs/{task}/<run>/checkpoints/")
    if model is not None and hparams.get("model") != model:
        raise UserError(f"{path} is a checkpoint of {hparams.get('model')}, not of {model}; run "
                        f"`python colorization.py {hparams.get('model')} --predict ...` or pass a {model} checkpoint")


def model_state(checkpoint, prefix="model."):
    """The wrapped nn.Module's weights: the LightningModule's state_dict entries under `prefix`."""
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
