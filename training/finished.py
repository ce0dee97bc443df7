"""Finished runs: find one that already has the hyper-parameters asked for, or train it.

A run is finished when its results folder holds `summary.json` (written only after training ends)
with the number of epochs asked for. `report.py` and the batch-size sweep use this to skip work an
earlier invocation already did: `reuse_or_train` returns the newest matching summary, or trains.
Trainer flags (accelerator, precision, ...) are not part of the match.
"""
import json
import math
import os
from pathlib import Path

from training.machine import write_machine
from training.runs import RUN_ENV

_MISSING = object()


def iter_summaries(results_dir, task):
    """(run results folder, summary dict) for every readable `results_dir/task/*/summary.json`."""
    for path in sorted((Path(results_dir) / task).glob("*/summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a damaged or foreign file is not a finished run
        if isinstance(summary, dict):
            yield path.parent, summary


def lookup(summary, dotted):
    """summary["a"]["b"] for "a.b"; a private sentinel when any part is missing."""
    value = summary
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _matches(stored, wanted):
    if stored is _MISSING:
        return False
    if callable(wanted):
        return bool(wanted(stored))
    if isinstance(wanted, float) and isinstance(stored, (int, float)) and not isinstance(stored, bool):
        return math.isclose(stored, wanted, rel_tol=1e-9, abs_tol=1e-12)
    return stored == wanted


def find_finished(results_dir, task, wanted):
    """The newest run of `task` whose summary matches every item of `wanted`, as (folder, summary),
    or None. `wanted` maps dotted keys ("hyperparameters.kernel") to a value or to a predicate."""
    found = [(folder, s) for folder, s in iter_summaries(results_dir, task)
             if all(_matches(lookup(s, key), value) for key, value in wanted.items())]
    if not found:
        return None
    return max(found, key=lambda item: (item[0] / "summary.json").stat().st_mtime)


def reuse_or_train(train, args, task, wanted, log=print):
    """(summary, trained): a finished matching run's summary, or `train(args)`'s after training.

    Runs made here also get machine.json. `create_run` hands its folder name to DDP child
    processes through an environment variable; it is cleared around each in-process run, or the
    next run of this process would reuse the previous run's folder.
    """
    found = find_finished(args.results_dir, task, wanted)
    if found is not None:
        log(f"reusing finished run {found[0]}")
        return found[1], False
    os.environ.pop(RUN_ENV, None)
    try:
        summary = train(args)
    finally:
        os.environ.pop(RUN_ENV, None)
    if summary is not None:
        write_machine(Path(args.results_dir) / task / summary["run"])
    return summary, True


def checkpoint_path(summary, which="last", logs_dir=None):
    """The existing checkpoint file `which` ("best" or "last") of a colorization or segmentation
    run, or None. Summaries store paths as given at training time (maybe relative), so the
    run's folder under `logs_dir` is tried too."""
    candidates = []
    stored = (summary.get("checkpoints") or {}).get(which) or (summary.get("test_checkpoint") if which == "best" else None)
    if stored:
        candidates.append(Path(stored))
    folders = [Path(summary["logs"]) / "checkpoints"] if summary.get("logs") else []
    if logs_dir is not None:
        folders.append(Path(logs_dir) / summary.get("task", "") / summary.get("run", "") / "checkpoints")
    for folder in folders:
        candidates += [folder / "last.ckpt"] if which == "last" else sorted(folder.glob("best-*.ckpt"))
    return next((p for p in candidates if p.is_file()), None)
