"""`--resume last|PATH`: find and check the checkpoint, and continue in the run folder it belongs to.

Every checkpoint carries a stamp (`RunStamp`): the task and the run's settings (the flags that define
the training, not those that say where or on what hardware it runs). `--resume last` takes the run of
the same task whose checkpoint was written most recently among those whose module hyper-parameters and
settings equal the current flags, and resumes it from the end of its last finished epoch (`last.ckpt`),
or from the checkpoint saved when it was interrupted if it never finished an epoch. `--resume PATH`
takes that file; it must be a checkpoint of this task with the same settings.

Checkpoints are read with `torch.load(weights_only=True)`: nothing in them is unpickled beyond
tensors and plain containers. Lightning then restores the epoch, optimiser, scheduler and callback
states; `RNGState` adds the random number generators, which Lightning does not save.
"""
import os
import random
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_only

from errors import UsageError, UserError
from training.runs import RUN_ENV, Run, _check_writable, create_run

RESUME_ENV = "IMAGE2IMAGE_RESUME_CHECKPOINT"  # DDP children use the checkpoint rank 0 chose
STAMP = "image2image"  # key of the stamp in the checkpoint dict
LAST, INTERRUPTED = "last.ckpt", "interrupted.ckpt"
# Flags that may change between a run and its resume: where and on what it runs, and for how long.
NOT_SETTINGS = {"epochs", "resume", "results_dir", "logs_dir", "run_name", "debug", "data_dir", "num_workers",
                "accelerator", "devices", "strategy", "num_nodes", "precision", "deterministic", "model_flag",
                "argv", "resumed_from", "feature_store"}


def run_settings(args):
    """The flags that define a run (compared on resume), as plain values."""
    return {k: v for k, v in sorted(vars(args).items())
            if k not in NOT_SETTINGS and (v is None or isinstance(v, (bool, int, float, str)))}


class RunStamp(Callback):
    """Writes {task, settings} into every checkpoint so that `--resume` can check what it resumes."""

    def __init__(self, task, settings):
        self.task, self.settings = task, dict(settings)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[STAMP] = {"task": self.task, "settings": self.settings}


class RNGState(Callback):
    """Saves and restores the Python, NumPy and torch (CPU and CUDA) random number generators.

    Stored as tensors and plain lists, so a checkpoint still loads with weights_only=True. Restored
    when Lightning loads the checkpoint, before the first resumed epoch draws anything.
    """

    def state_dict(self):
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"python": _to_lists(random.getstate()), "torch": torch.get_rng_state(),
                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict):
        if not state_dict:
            return
        random.setstate(_to_tuples(state_dict["python"]))
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if "cuda" in state_dict and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def read_checkpoint(path):
    """The checkpoint dict at `path`, loaded safely (weights_only, memory-mapped: tensors stay on disk)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--resume {path}: no such file; give a .ckpt file from LOGS_DIR/<task>/<run>/checkpoints/ "
                         f"or 'last'")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated files, other formats, and pickles with code all end here
        raise UserError(f"--resume {path}: not a readable training checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); give a .ckpt file that this program "
                        f"wrote, or 'last'") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise UserError(f"--resume {path}: not a training checkpoint of this program (no model and loop state); "
                        f"give a .ckpt file from LOGS_DIR/<task>/<run>/checkpoints/ or 'last'")
    return checkpoint


def checkpoint_task(checkpoint):
    """'colorization', 'segmentation' or None, from the stamp (or, for older files, the hyper-parameters)."""
    stamp = checkpoint.get(STAMP) or {}
    if stamp.get("task"):
        return stamp["task"]
    hparams = checkpoint.get("hyper_parameters") or {}
    if "backbone" in hparams and "loss" in hparams:
        return "segmentation"
    if "model" in hparams and "num_filters" in hparams:
        return "colorization"
    return None


def differences(checkpoint, hparams, settings):
    """['name: checkpoint value -> current value', ...] for every setting that differs."""
    saved = {**(checkpoint.get("hyper_parameters") or {}), **((checkpoint.get(STAMP) or {}).get("settings") or {})}
    now = {**dict(hparams), **settings}
    return [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in sorted(saved.keys() & now.keys()) if saved[k] != now[k]]


def check_checkpoint(path, task, hparams, settings):
    """Raise a UserError unless `path` is a checkpoint of `task` trained with the same settings."""
    checkpoint = read_checkpoint(path)
    found = checkpoint_task(checkpoint)
    if found != task:
        what = f"a {found} checkpoint" if found else "not a checkpoint of colorization.py or segmentation.py"
        hint = f"; resume it with {found}.py --resume {path}" if found else ""
        raise UserError(f"--resume {path}: {what}, but this is {task}.py{hint}")
    changed = differences(checkpoint, hparams, settings)
    if changed:
        raise UserError(f"--resume {path}: the checkpoint was trained with other settings ({'; '.join(changed)}); "
                        f"give the same flags as that run, or start a new run without --resume")
    return checkpoint


def find_last(task, logs_root, hparams, settings):
    """The checkpoint `--resume last` continues: see the module docstring. Raises UserError if none fits."""
    root = Path(logs_root) / task
    candidates = sorted(root.glob(f"*/checkpoints/{LAST}")) + sorted(root.glob(f"*/checkpoints/{INTERRUPTED}"))
    runs = {}
    for path in candidates:
        runs.setdefault(path.parent, []).append(path)
    skipped = 0
    for folder in sorted(runs, key=lambda f: max(p.stat().st_mtime for p in runs[f]), reverse=True):
        path = folder / LAST if (folder / LAST).is_file() else folder / INTERRUPTED
        try:
            check_checkpoint(path, task, hparams, settings)
        except UserError:
            skipped += 1
            continue
        return path
    others = f" ({skipped} checkpoint(s) there are of runs with other settings, or unreadable)" if skipped else ""
    raise UserError(f"--resume last: no checkpoint of a {task} run with these settings in {root}{others}; "
                    f"give the flags of the run to resume, or --resume PATH, or start without --resume")


def run_of_checkpoint(path, task, results_root):
    """The Run a checkpoint LOGS/<task>/<run>/checkpoints/x.ckpt belongs to, or None if it lies elsewhere."""
    path = Path(path).absolute()
    if path.parent.name != "checkpoints" or path.parent.parent.parent.name != task:
        return None
    logs = path.parent.parent
    return Run(logs.name, logs, Path(results_root) / task / logs.name)


def start_run(task, prefix, args, hparams):
    """(run, checkpoint path or None) for this invocation.

    Without `--resume`: a fresh run folder (training.runs.create_run). With it: the run the checkpoint
    belongs to (its logs folder, and RESULTS_DIR/<task>/<run>), after checking the checkpoint; DDP
    processes that Lightning starts inherit rank 0's choice through the environment.
    """
    if not getattr(args, "resume", None):
        return create_run(task, prefix, args.results_dir, args.logs_dir, args.run_name), None
    settings = run_settings(args)
    inherited = os.environ.get(RESUME_ENV)
    if rank_zero_only.rank != 0 and inherited:
        path = Path(inherited)
    elif args.resume == "last":
        path = find_last(task, args.logs_dir, hparams, settings)
    else:
        path = Path(args.resume).expanduser()
        check_checkpoint(path, task, hparams, settings)
    run = run_of_checkpoint(path, task, args.results_dir)
    if run is None:  # a checkpoint copied out of its run folder: continue in a new run
        run = create_run(task, prefix, args.results_dir, args.logs_dir, args.run_name)
    elif rank_zero_only.rank == 0:
        for folder in (run.results, run.logs):
            _check_writable(folder)
    os.environ[RUN_ENV], os.environ[RESUME_ENV] = run.name, str(path.absolute())
    args.resumed_from = str(path)
    return run, str(path)
