"""Finished runs (a summary.json written) found by their settings: reused by report.py and the batch-size sweep
instead of training them again, and searched by inference/checkpoints.py for a model to predict with.
Whether two runs have the same settings is decided by training/runs.py `differences` alone."""
import json
from pathlib import Path

from training.runs import differences


def finished_runs(results_dir, task, wanted, partial=False):
    """[(results folder, summary)] of the finished runs (with a summary.json) of `task` with settings `wanted`,
    newest first."""
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


def reuse_or_train(task, prepare, train, config, log=print):
    """(summary, trained): the newest finished run with the settings of `prepare(config)`, or one trained now.
    `functools.partial(reuse_or_train, TASK, prepare, train)` of a task file is the `train(config, log)` of a
    report job (reporting/jobs.py): a partial of module-level functions pickles for a worker process."""
    prepared = prepare(config)
    found = finished_runs(config.results_dir, task, prepared.settings)
    if found:
        log(f"reusing finished run {found[0][0]}")
        return found[0][1], False
    return train(config, prepared), True
