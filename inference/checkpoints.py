"""Finding a trained model for prediction, export, the demo and the report: `--checkpoint best|last|PATH`.

`best` / `last` are those checkpoints of the newest finished run (summary.json written) of the task
in RESULTS_DIR / LOGS_DIR whose config has the values asked for (e.g. the model), runs with the
default loss first; without logs, `best` is the run's model.pt (the best weights, which ship in
results/). Every file is read by training/runs.py, weights_only.
"""
from pathlib import Path

from errors import UsageError, UserError
from reporting.reuse import finished_runs
from training.runs import WEIGHTS, load_checkpoint


def load_module(module_class, path, task):
    """A LightningModule of `task` restored from `path` (checked first, then loaded weights_only), on the CPU."""
    load_checkpoint(path, task)
    return module_class.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)


def run_checkpoint(run_logs, run_results, which):
    """The `which` ('best' or 'last') checkpoint of a run: the newest in its logs' checkpoints/, else for
    'best' the run's model.pt; None when there is none."""
    pattern = "best-*.ckpt" if which == "best" else "last*.ckpt"
    found = sorted(Path(run_logs, "checkpoints").glob(pattern), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    if found:
        return found[0]
    weights = Path(run_results) / WEIGHTS
    return weights if which == "best" and weights.is_file() else None


def summary_checkpoint(summary, which, logs_dir, results_dir):
    """The `which` checkpoint of the finished run `summary` (run_checkpoint), or None when gone."""
    task, run = summary.get("task", ""), summary.get("run", "")
    return run_checkpoint(Path(logs_dir) / task / run, Path(results_dir) / task / run, which)


def find_checkpoint(spec, task, results_dir="results", logs_dir="logs", prefer=None):
    """(path, how) of the checkpoint `--checkpoint spec` names: a file, or 'best' / 'last' of the newest
    finished run of `task` whose config has the values `prefer` gives (e.g. {"model": "UNet"});
    among those, runs with the default loss come first."""
    if spec not in ("best", "last"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UsageError(f"--checkpoint {path}: not found; give best, last or a .ckpt file from "
                             f"{Path(logs_dir) / task}/<run>/checkpoints/")
        return path, "given"
    wanted = {"task": task, **({"config": dict(prefer)} if prefer else {})}
    runs = finished_runs(results_dir, task, wanted, partial=True)
    runs.sort(key=lambda r: (r[1].get("settings") or {}).get("config", {}).get("rebalance") is not None)
    what = f"{task} run" + (f" of {', '.join(map(str, prefer.values()))}" if prefer else "")
    if not runs:
        train = "python colorization.py UNet" if task == "colorization" else "python segmentation.py --loss ce"
        raise UserError(f"no finished {what} in {Path(results_dir) / task} (a run is finished once it has "
                        f"summary.json); train one with `{train}`, or pass --checkpoint PATH")
    for folder, summary in runs:
        path = summary_checkpoint(summary, spec, logs_dir, results_dir)
        if path is not None:
            return path, f"{spec} of run {folder.name}"
    newest = runs[0][0].name
    raise UserError(f"the newest finished {what}, {newest}, has no {spec} checkpoint in "
                    f"{Path(logs_dir) / task / newest / 'checkpoints'} nor {WEIGHTS} in {runs[0][0]}; "
                    f"pass --checkpoint PATH")
