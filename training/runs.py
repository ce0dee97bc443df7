"""Runs: their folders, settings and checkpoints, and finding an earlier run to resume (to reuse: reporting/reuse.py).

Folders: `LOGS/<task>/<run>/` (TensorBoard events, checkpoints/) and `RESULTS/<task>/<run>/` (config.json,
summary.json, machine.json, figures, model.pt: the best weights alone); a new run never reuses one.
Settings (`run_settings`: task, the config fields that decide numbers, the data's checksum) go into summary.json
and every checkpoint; `differences` is the ONE place that decides whether two runs have the same settings (reuse,
`--resume`, finding a model to predict with). Every checkpoint is read by `read_checkpoint` with
`torch.load(weights_only=True)`: a file from elsewhere never runs code while it is loaded.
"""
import contextlib
import dataclasses
import json
import math
import os
import pickle
import time
from pathlib import Path

import torch
from pytorch_lightning.utilities import rank_zero_only

from errors import UsageError, UserError
from files import atomic_save, check_writable, claim_folder

STAMP = "image2image"  # key of the {task, settings} stamp in every checkpoint (training/callbacks.py RunStamp)
LAST, INTERRUPTED, WEIGHTS = "last.ckpt", "interrupted.ckpt", "model.pt"
TASKS = ("colorization", "segmentation")
# Lightning's DDP launcher starts the other ranks by running the same command again: rank 0's run folder goes
# to them in the environment too, set and removed in `claimed_run` only.
HANDOFF_ENV = "IMAGE2IMAGE_RUN"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    logs: Path  # TensorBoard events and checkpoints/
    results: Path  # config.json, summary.json, figures, model.pt
    resume_from: str | None = None  # the checkpoint this invocation continues from

    @property
    def checkpoints(self):
        return self.logs / "checkpoints"


# ----------------------------------------------------------------------------- settings

def run_settings(task, config_settings, data):
    """The settings that decide a run's numbers, as plain JSON values."""
    return _plain({"task": task, "config": config_settings, "data": data})


def _plain(value):
    """JSON values only (tuples -> lists, ...), so stored and fresh settings compare alike."""
    return json.loads(json.dumps(value, default=str))


def _flatten(value, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; an empty dict inside stays a value of its own."""
    if not isinstance(value, dict):
        return {prefix[:-1]: value}
    out = {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return out if out or not prefix else {prefix[:-1]: {}}


def _same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python; not as a setting
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, (int, float)) and isinstance(b, (int, float))
                and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))
    return a == b


def differences(stored, wanted, ignore=(), partial=False):
    """['key: stored -> wanted', ...] for every dotted key ("config.lr") in which `stored` differs from `wanted`;
    `ignore` drops keys and their sub-keys; with `partial`, keys that `wanted` does not name are not compared."""
    s, w = _flatten(_plain(stored or {})), _flatten(_plain(wanted))
    keys = w.keys() if partial else w.keys() | s.keys()
    out = []
    for key in sorted(keys):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        if key not in s or key not in w or not _same(s[key], w[key]):
            out.append(f"{key}: {s.get(key, '(not recorded)')!r} -> {w.get(key, '(not given)')!r}")
    return out


# ----------------------------------------------------------------------------- checkpoints

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
        raise UserError(f"{flag} {path}: not a checkpoint written by colorization.py or segmentation.py ({why})") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserError(f"{flag} {path}: not a checkpoint written by colorization.py or segmentation.py "
                        f"(no state_dict / hyper_parameters)")
    return checkpoint


def load_checkpoint(path, task, flag="--checkpoint"):
    """The checkpoint dict at `path`, refused in one line unless it is of `task`."""
    checkpoint = read_checkpoint(path, flag)
    found, hparams = (checkpoint.get(STAMP) or {}).get("task"), checkpoint["hyper_parameters"]
    if found not in TASKS:
        raise UserError(f"{flag} {path}: not a checkpoint of colorization.py or segmentation.py (no task stamp)")
    if found != task:
        other = f" ({hparams.get('model')})" if found == "colorization" else ""
        raise UserError(f"{flag} {path}: a {found} checkpoint{other}, but this is {task}.py; use it with "
                        f"`{found}.py {flag} {path}`, or give a checkpoint from LOGS_DIR/{task}/<run>/checkpoints/")
    return checkpoint


def save_weights(checkpoint_path, path):
    """Write the weights (state_dict, hyper-parameters, stamp) of the checkpoint at `checkpoint_path` to `path`."""
    checkpoint = read_checkpoint(checkpoint_path)
    keep = ("state_dict", "hyper_parameters", "pytorch-lightning_version", "epoch", "global_step", STAMP, "trunk")
    weights = {k: checkpoint[k] for k in keep if k in checkpoint}
    return atomic_save(path, lambda f: torch.save(weights, f))


# ----------------------------------------------------------------------------- folders

def create_run(task, prefix, results_root="results", logs_root="logs", name=None):
    """Claim a fresh run folder pair for `task`, named `<prefix>-<YYYYmmdd-HHMMSS>[-N]` unless `name` is given."""
    results_root, logs_root = Path(results_root) / task, Path(logs_root) / task
    for root in (results_root, logs_root):
        check_writable(root, "choose another with --results-dir / --logs-dir")
    results = claim_folder(results_root, name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}", also=[logs_root])
    (logs_root / results.name).mkdir()
    return Run(results.name, logs_root / results.name, results)


def run_of_checkpoint(path, task, results_root):
    """The Run a checkpoint LOGS/<task>/<run>/checkpoints/x.ckpt belongs to, or None if it lies elsewhere."""
    path = Path(path).absolute()
    if path.parent.name != "checkpoints" or path.parent.parent.parent.name != task:
        return None
    logs = path.parent.parent
    return Run(logs.name, logs, Path(results_root) / task / logs.name)


@contextlib.contextmanager
def claimed_run(task, prefix, config, settings):
    """The Run of this invocation: rank 0 claims a fresh run folder, or with `--resume` finds the run and
    checkpoint to continue, and hands both to the other DDP ranks through HANDOFF_ENV for the block. A rank
    started by torchrun / srun without the hand-off writes no file of its own (rank 0 writes them all)."""
    handed = os.environ.get(HANDOFF_ENV)
    if rank_zero_only.rank != 0:
        if handed:
            given = json.loads(handed)  # JSON holds strings: the folders become Paths again
            yield Run(given["name"], Path(given["logs"]), Path(given["results"]), given["resume_from"])
        else:
            name = config.run_name or f"{prefix}-rank-follower"
            yield Run(name, Path(config.logs_dir) / task / name, Path(config.results_dir) / task / name)
        return
    resume = find_resume(task, config.resume, config.logs_dir, settings) if config.resume else None
    run = run_of_checkpoint(resume, task, config.results_dir) if resume else None
    if run is None:  # a new run, or a checkpoint copied out of its run folder: continue in a new run
        run = create_run(task, prefix, config.results_dir, config.logs_dir, config.run_name)
    else:
        for folder in (run.results, run.logs):
            check_writable(folder, "choose another with --results-dir / --logs-dir")
    run = dataclasses.replace(run, resume_from=str(Path(resume).absolute()) if resume else None)
    os.environ[HANDOFF_ENV] = json.dumps(dataclasses.asdict(run), default=str)  # the folders' Paths as strings
    try:
        yield run
    finally:
        os.environ.pop(HANDOFF_ENV, None)


# ----------------------------------------------------------------------------- resume

def check_resumable(path, task, settings):
    """Raise a UserError unless `path` is a checkpoint of `task` with the same settings (epochs aside)."""
    checkpoint = load_checkpoint(path, task, flag="--resume")
    if "loops" not in checkpoint or "optimizer_states" not in checkpoint:
        raise UserError(f"--resume {path}: holds weights but no training state; give last.ckpt or "
                        f"interrupted.ckpt from LOGS_DIR/{task}/<run>/checkpoints/")
    changed = differences((checkpoint.get(STAMP) or {}).get("settings"), settings, ignore=("config.epochs",))
    data = [c for c in changed if c.startswith("data.")]
    if data:
        raise UserError(f"--resume {path}: the checkpoint was trained on other data ({'; '.join(data)}); "
                        f"resume with the data it was trained on, or start a new run without --resume")
    if changed:
        raise UserError(f"--resume {path}: the checkpoint was trained with other settings ({'; '.join(changed)}); "
                        f"give the same flags as that run, or start a new run without --resume")
    return checkpoint


def check_resume_path(spec):
    """A `--resume PATH` that does not exist is refused before any data is read."""
    if spec and spec != "last" and not Path(spec).expanduser().is_file():
        raise UsageError(f"--resume {spec}: no such file; give last, or a .ckpt file from "
                         f"LOGS_DIR/<task>/<run>/checkpoints/")


def find_resume(task, spec, logs_root, settings):
    """The checkpoint `--resume spec` continues: a path (checked), or for 'last' the newest last / interrupted
    checkpoint among the runs of `task` with these settings."""
    if spec != "last":
        path = Path(spec).expanduser()
        check_resumable(path, task, settings)
        return path
    root = Path(logs_root) / task
    folders = {p.parent for p in [*root.glob(f"*/checkpoints/{LAST}"), *root.glob(f"*/checkpoints/{INTERRUPTED}")]}
    refused = []
    for folder in sorted(folders, key=lambda f: max(p.stat().st_mtime for p in f.glob("*.ckpt")), reverse=True):
        path = folder / LAST if (folder / LAST).is_file() else folder / INTERRUPTED
        try:
            check_resumable(path, task, settings)
        except UserError as e:
            refused.append(f"{folder.parent.name}: {str(e).split(': ', 1)[-1]}")
            continue
        return path
    others = f"; refused: {' | '.join(refused[:3])}" if refused else ""
    raise UserError(f"--resume last: no checkpoint of a {task} run with these settings in {root}{others}; "
                    f"give the flags of the run to resume, or --resume PATH, or start without --resume")
