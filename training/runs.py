"""Runs: their folders, their settings, and finding an earlier run (to reuse, resume or predict with).

Folders: `LOGS/<task>/<run>/` (TensorBoard events, checkpoints/) and `RESULTS/<task>/<run>/` (summary.json,
figures). A new run never reuses an existing folder: names carry a timestamp, and a collision (two runs
started in the same second) takes the next free suffix, claimed with an exclusive mkdir.

Settings: everything that decides a run's numbers (`run_settings`): the task, the module's
hyper-parameters, batch size, seed, epochs, precision and the data (checksum of what was read, palette or
split, ...). They are written into summary.json and stamped into every checkpoint, and `differences` is
the ONE place that decides whether two runs have the same settings. It is used by
- `find_finished` / `reuse_or_train`: report.py and the batch-size sweep reuse a finished run;
- `find_resume`: `--resume last|PATH` continues a run (epochs may differ; the data may not);
- `find_checkpoint`: `--predict --checkpoint best|last` (the settings given there: the task, the model).
A flag that changes the numbers must therefore end up in the module's hyper-parameters or the data.
"""
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pytorch_lightning.utilities import rank_zero_only


from errors import UsageError, UserError
from training.checkpoints import INTERRUPTED, LAST, check_task, read_checkpoint, run_checkpoint, stamp_settings
from training.files import check_writable

# Lightning's DDP launcher starts the other processes by running the same command again; they learn
# rank 0's run folder (and checkpoint) from this variable, set in `start_run` and removed by run_task.
HANDOFF_ENV = "IMAGE2IMAGE_RUN"


@dataclass(frozen=True)
class Run:
    name: str
    logs: Path  # TensorBoard events and checkpoints/
    results: Path  # summary.json, figures

    @property
    def checkpoints(self):
        return self.logs / "checkpoints"


# ----------------------------------------------------------------------------- settings

def run_settings(task, args, hparams, data):
    """The settings that decide a run's numbers, as plain JSON values (see the module docstring)."""
    return _plain({"task": task, "hyperparameters": dict(hparams), "batch_size": args.batch_size, "seed": args.seed,
                   "epochs": args.epochs, "precision": str(args.precision), "data": data})


def _plain(value):
    """JSON values only (tuples -> lists, ...), so stored and fresh settings compare alike."""
    return json.loads(json.dumps(value, default=str))


def _flatten(value, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; an empty dict inside stays a value of its own."""
    if not isinstance(value, dict):
        return {prefix[:-1]: value}
    out = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}{key}."))
    return out if out or not prefix else {prefix[:-1]: {}}


def _same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python; not as a setting
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
                and not isinstance(b, bool) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))
    return a == b


def differences(stored, wanted, ignore=(), partial=False):
    """['key: stored -> wanted', ...] for every setting in which `stored` differs from `wanted`.

    Keys are dotted ("hyperparameters.lr", "data.checksum"); `ignore` drops keys and their sub-keys.
    A key missing on one side is a difference, except, with `partial`, keys that `wanted` does not name.
    """
    s, w = _flatten(_plain(stored or {})), _flatten(_plain(wanted))
    keys = w.keys() if partial else w.keys() | s.keys()
    out = []
    for key in sorted(keys):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        if key not in s or key not in w or not _same(s[key], w[key]):
            out.append(f"{key}: {s.get(key, '(not recorded)')!r} -> {w.get(key, '(not given)')!r}")
    return out


# ----------------------------------------------------------------------------- folders

def create_run(task, prefix, results_root="results", logs_root="logs", name=None):
    """Claim a fresh run folder pair for `task`, named `<prefix>-<YYYYmmdd-HHMMSS>[-N]` unless `name` is given."""
    results_root, logs_root = Path(results_root) / task, Path(logs_root) / task
    for root in (results_root, logs_root):
        check_writable(root, "choose another with --results-dir / --logs-dir")
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
        return Run(candidate, logs_root / candidate, results_root / candidate)
    raise UserError(f"no free run folder name for {base!r} in {results_root}")


def run_of_checkpoint(path, task, results_root):
    """The Run a checkpoint LOGS/<task>/<run>/checkpoints/x.ckpt belongs to, or None if it lies elsewhere."""
    path = Path(path).absolute()
    if path.parent.name != "checkpoints" or path.parent.parent.parent.name != task:
        return None
    logs = path.parent.parent
    return Run(logs.name, logs, Path(results_root) / task / logs.name)


def start_run(task, prefix, args, settings):
    """(run, checkpoint path to resume from or None) for this invocation.

    Rank 0 claims a fresh run folder, or with `--resume` finds the run to continue. The other processes
    of a DDP run take rank 0's choice from HANDOFF_ENV (set here, removed by `run_task` when the run ends).
    """
    handed = os.environ.get(HANDOFF_ENV)
    if rank_zero_only.rank != 0:
        if not handed:  # launched by torchrun / srun: rank 0 owns the folders and writes every file
            name = args.run_name or f"{prefix}-rank-follower"
            return Run(name, Path(args.logs_dir) / task / name, Path(args.results_dir) / task / name), None
        handed = json.loads(handed)
        return Run(handed["name"], Path(handed["logs"]), Path(handed["results"])), handed["resume"]
    resume = None
    if getattr(args, "resume", None):
        resume = find_resume(task, args.resume, args.logs_dir, settings)
        args.resumed_from = str(resume)
    run = run_of_checkpoint(resume, task, args.results_dir) if resume else None
    if run is None:  # a new run, or a checkpoint copied out of its run folder: continue in a new run
        run = create_run(task, prefix, args.results_dir, args.logs_dir, args.run_name)
    else:
        for folder in (run.results, run.logs):
            check_writable(folder, "choose another with --results-dir / --logs-dir")
    resume = str(Path(resume).absolute()) if resume else None
    os.environ[HANDOFF_ENV] = json.dumps({"name": run.name, "logs": str(run.logs), "results": str(run.results),
                                          "resume": resume})
    return run, resume


# ----------------------------------------------------------------------------- resume

def check_resumable(path, task, settings):
    """Raise a UserError unless `path` is a checkpoint of `task` with the same settings (epochs aside)."""
    checkpoint = check_task(read_checkpoint(path, "--resume"), path, task, flag="--resume")
    if "loops" not in checkpoint:
        raise UserError(f"--resume {path}: holds weights but no training state (loops); give last.ckpt or "
                        f"interrupted.ckpt from LOGS_DIR/{task}/<run>/checkpoints/")
    changed = differences(stamp_settings(checkpoint), settings, ignore=("epochs",))
    data = [c for c in changed if c.startswith("data.")]
    if data:
        raise UserError(f"--resume {path}: the checkpoint was trained on other data ({'; '.join(data)}); "
                        f"resume with the data it was trained on, or start a new run without --resume")
    if changed:
        raise UserError(f"--resume {path}: the checkpoint was trained with other settings ({'; '.join(changed)}); "
                        f"give the same flags as that run, or start a new run without --resume")
    return checkpoint


def find_resume(task, spec, logs_root, settings):
    """The checkpoint `--resume spec` continues: a path (checked), or for 'last' the newest last.ckpt /
    interrupted.ckpt among the runs of `task` with these settings."""
    if spec != "last":
        path = Path(spec).expanduser()
        check_resumable(path, task, settings)
        return path
    root = Path(logs_root) / task
    folders = {p.parent for p in [*root.glob(f"*/checkpoints/{LAST}"), *root.glob(f"*/checkpoints/{INTERRUPTED}")]}
    skipped = 0
    for folder in sorted(folders, key=lambda f: max(p.stat().st_mtime for p in f.glob("*.ckpt")), reverse=True):
        path = folder / LAST if (folder / LAST).is_file() else folder / INTERRUPTED
        try:
            check_resumable(path, task, settings)
        except UserError:
            skipped += 1
            continue
        return path
    others = f" ({skipped} checkpoint(s) there are of runs with other settings, or unreadable)" if skipped else ""
    raise UserError(f"--resume last: no checkpoint of a {task} run with these settings in {root}{others}; "
                    f"give the flags of the run to resume, or --resume PATH, or start without --resume")


# ----------------------------------------------------------------------------- finished runs

def finished_runs(results_dir, task, wanted, partial=False):
    """[(results folder, summary)] of the finished runs of `task` (summary.json exists: written after
    training ends) whose settings equal `wanted`, newest first."""
    found = []
    for path in (Path(results_dir) / task).glob("*/summary.json"):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a damaged or foreign file is not a finished run
        if isinstance(summary, dict) and not differences(summary.get("settings"), wanted, partial=partial):
            found.append((path.stat().st_mtime_ns, path.parent.name, path.parent, summary))
    found.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return [(folder, summary) for _, _, folder, summary in found]


def reuse_or_train(task, prepare, train, args, log=print):
    """(summary, trained): the newest finished run of `task` with the settings that `prepare(args)`
    decides, or the summary of `train(args, prepared)`, trained now."""
    prepared = prepare(args)
    found = finished_runs(args.results_dir, task, prepared.settings)
    if found:
        log(f"reusing finished run {found[0][0]}")
        return found[0][1], False
    return train(args, prepared), True


def summary_checkpoint(summary, which, logs_dir=None, run=None):
    """The existing `which` ('best' / 'last') checkpoint of a finished run (named `run`, else as its summary
    says): in LOGS_DIR/<task>/<run>/ first, then in the logs folder its summary names. None when gone."""
    run = run or summary.get("run", "")
    folders = [Path(logs_dir) / summary.get("task", "") / run] if logs_dir is not None and run else []
    if summary.get("logs"):
        folders.append(Path(summary["logs"]))
    return run_checkpoint(folders, which)


def find_checkpoint(spec, task, results_dir="results", logs_dir="logs", model=None):
    """(path, how) of the checkpoint `--checkpoint spec` names: a file, or 'best' / 'last' of the newest
    finished run of `task` (and `model`)."""
    if spec not in ("best", "last"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UsageError(f"--checkpoint {path}: not found; give best, last or a .ckpt file from "
                             f"{Path(logs_dir) / task}/<run>/checkpoints/")
        return path, "given"
    wanted = {"task": task, **({"hyperparameters": {"model": model}} if model else {})}
    runs = finished_runs(results_dir, task, wanted, partial=True)
    what = f"{task} run" + (f" of {model}" if model else "")
    if not runs:
        train = f"python {task}.py {model or ''}".strip() if task == "colorization" else "python segmentation.py --loss ce"
        raise UserError(f"no finished {what} in {Path(results_dir) / task} (a run is finished once it has "
                        f"summary.json); train one with `{train}`, or pass --checkpoint PATH")
    for folder, summary in runs:
        path = summary_checkpoint(summary, spec, logs_dir, folder.name)
        if path is not None:
            return path, f"{spec} of run {folder.name}"
    newest = runs[0][0].name
    raise UserError(f"the newest finished {what}, {newest}, has no {spec} checkpoint in "
                    f"{Path(logs_dir) / task / newest / 'checkpoints'} (were the logs deleted?); pass --checkpoint PATH")
