"""Reading checkpoints: the one loader that `--resume`, `--predict`, the sweep and the report use.

Every checkpoint is read with `torch.load(weights_only=True)`: tensors and plain containers only, so a
file from elsewhere can never run code while it is loaded. Lightning's own checkpoints load that way;
`RunStamp` (training/callbacks.py) adds one stamp, `{"task", "settings"}`, that says what run wrote
the file, and `checkpoint_task` / `stamp_settings` read it back.

Where the checkpoint files of a run are: `LOGS/<task>/<run>/checkpoints/` holds `best-epochNNN.ckpt`,
`last.ckpt` (the last finished epoch) and, after a Ctrl+C or SIGTERM, `interrupted.ckpt`.
"""
import pickle
from pathlib import Path

import torch

from errors import UsageError, UserError

STAMP = "image2image"  # key of the stamp in the checkpoint dict
LAST, INTERRUPTED = "last.ckpt", "interrupted.ckpt"
TASKS = ("colorization", "segmentation")


def read_checkpoint(path, flag="--checkpoint"):
    """The checkpoint dict at `path` (weights_only, memory-mapped), or a UserError that names `flag`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file; give a .ckpt file from LOGS_DIR/<task>/<run>/checkpoints/")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated files, other formats and pickles with code all end here
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            why = "it holds objects that only an unrestricted unpickler could load, which is refused"
        else:
            why = f"not a torch.save file, or truncated: {type(e).__name__}"
        raise UserError(f"{flag} {path}: not a checkpoint written by colorization.py or segmentation.py "
                        f"({why})") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserError(f"{flag} {path}: not a checkpoint written by colorization.py or segmentation.py "
                        f"(no state_dict / hyper_parameters)")
    return checkpoint


def checkpoint_task(checkpoint):
    """'colorization', 'segmentation' or None: from the stamp, else (older files) the hyper-parameters."""
    task = (checkpoint.get(STAMP) or {}).get("task") or checkpoint.get("task")
    if task in TASKS:
        return task
    hparams = checkpoint.get("hyper_parameters") or {}
    if "backbone" in hparams:
        return "segmentation"
    if "num_colours" in hparams and "model" in hparams:
        return "colorization"
    return None


def stamp_settings(checkpoint):
    """The run settings stamped into the checkpoint (training/runs.py: `run_settings`), or None."""
    return (checkpoint.get(STAMP) or {}).get("settings")


def check_task(checkpoint, path, task, model=None, flag="--checkpoint"):
    """A UserError unless the checkpoint is of `task` (and, for colorization, of `model`)."""
    found = checkpoint_task(checkpoint)
    hparams = checkpoint["hyper_parameters"]
    if found is None:
        raise UserError(f"{flag} {path}: not a checkpoint of colorization.py or segmentation.py "
                        f"(hyper-parameters {sorted(hparams)})")
    if found != task:
        other = f" ({hparams.get('model')})" if found == "colorization" else ""
        raise UserError(f"{flag} {path}: a {found} checkpoint{other}, but this is {task}.py; use it with "
                        f"`{found}.py {flag} {path}`, or give a checkpoint from LOGS_DIR/{task}/<run>/checkpoints/")
    if model is not None and hparams.get("model") != model:
        raise UserError(f"{flag} {path}: a checkpoint of {hparams.get('model')}, not of {model}; run "
                        f"`python colorization.py {hparams.get('model')} ...` or give a {model} checkpoint")
    return checkpoint


def load_checkpoint(path, task, model=None, flag="--checkpoint"):
    """`read_checkpoint` + `check_task`: the checkpoint dict of a `task` (and `model`) run."""
    return check_task(read_checkpoint(path, flag), path, task, model, flag)


def model_state(checkpoint, prefix="model."):
    """The wrapped nn.Module's weights: the LightningModule's state_dict entries under `prefix`."""
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def load_module(module_class, path, task):
    """A LightningModule of `task` restored from `path` (checked first, then loaded weights_only), on the CPU."""
    load_checkpoint(path, task)
    return module_class.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)


def run_checkpoint(logs_folders, which):
    """The newest `which` ('best' or 'last') checkpoint file in the first of `logs_folders` (run logs
    folders) that has one, or None."""
    pattern = "best-*.ckpt" if which == "best" else "last*.ckpt"
    for folder in logs_folders:
        found = sorted(Path(folder, "checkpoints").glob(pattern), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        if found:
            return found[0]
    return None
