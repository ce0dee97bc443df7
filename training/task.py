"""The one training flow both tasks share: `run_task` = run folder -> Trainer -> fit [-> test] -> results.

colorization.py and segmentation.py each build their LightningModule, DataModule and settings
(`Prepared`), then call `run_task` with what differs: the metric to monitor, the task's callbacks,
and `results(...)` that writes the task's figures and returns its summary fields. `run_task` writes
summary.json (the common fields + the task's) and machine.json, on global rank 0 only.

The Trainer: TensorBoard logger, best + last checkpoints, epoch history, a clock-throttled progress bar,
and the Trainer flags from the command line, so `--strategy ddp --devices N --num-nodes M` is Lightning's
own DDP (the DataModules shard the data themselves: data/batching.py).
"""
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from errors import UserError
from training.callbacks import (ChannelsLast, EpochHistory, FiniteLossGuard, InterruptCheckpoint, LastEveryEpoch,
                                RNGState, RunStamp, ThrottledProgressBar)
from training.cli import trainer_flags
from training.files import write_machine, write_summary
from training.runs import HANDOFF_ENV, start_run


@dataclass
class Prepared:
    """What a task builds before training: enough to decide "same settings" without training."""

    module: pl.LightningModule
    datamodule: pl.LightningDataModule
    settings: dict  # training.runs.run_settings(...)


class Interrupted(UserError):
    """Training stopped by a signal; exit code 128 + the signal number, as shells report it."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def build_trainer(run, max_epochs, monitor, mode, flags, callbacks=(), **overrides):
    """A Trainer that logs to run.logs and keeps the best (on `monitor`) and the last checkpoint.

    Returns (trainer, history, checkpoint callback). `flags` are the pass-through Trainer flags.
    """
    logger = TensorBoardLogger(save_dir=str(run.logs.parent), name=run.name, version="", default_hp_metric=False)
    checkpoint = LastEveryEpoch(dirpath=str(run.checkpoints), filename="best-epoch{epoch:03d}",
                                auto_insert_metric_name=False, monitor=monitor, mode=mode, save_top_k=1,
                                save_last=True)
    history = EpochHistory()
    if overrides.get("enable_progress_bar", True):
        callbacks = [ThrottledProgressBar(), *callbacks]  # redraws by the clock, not every batch
    kwargs = dict(max_epochs=max_epochs, logger=logger, callbacks=[checkpoint, history, *callbacks],
                  default_root_dir=str(run.logs), log_every_n_steps=50,
                  **{k: v for k, v in flags.items() if v is not None})
    kwargs.update(overrides)
    return pl.Trainer(**kwargs), history, checkpoint


def reliability_callbacks(task, run, settings):
    """The callbacks that resuming and `fit` rely on."""
    return [RunStamp(task, settings), RNGState(), FiniteLossGuard(), InterruptCheckpoint(run.checkpoints)]


def resume_command(task, argv):
    """The command line that resumes this run: the same flags, with `--resume last`."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in ("--resume", "--run-name"):
            skip = True
        elif not token.startswith(("--resume=", "--run-name=")):
            kept.append(token)
    return shlex.join(["python", f"{task}.py", *kept, "--resume", "last"])


def fit(trainer, module, datamodule, ckpt_path, task, argv):
    """`trainer.fit` (resuming from `ckpt_path` if given, loaded with weights_only=True); a SIGINT or
    SIGTERM becomes an `Interrupted` error whose message says how to resume."""
    interrupt = next((c for c in trainer.callbacks if isinstance(c, InterruptCheckpoint)), None)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning exits on SIGINT; SIGTERMException is a SystemExit
        if interrupt is None or interrupt.signal is None:
            raise
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        where = (f"the end of epoch {trainer.current_epoch} ({last})" if last
                 else f"the interruption ({interrupt.ckpt_path})" if interrupt.saved else None)
        saved = f"saved {interrupt.ckpt_path}; " if interrupt.saved else "no checkpoint could be saved; "
        how = f"resume from {where} with: {resume_command(task, argv)}" if where else "start it again"
        name = signal.Signals(interrupt.signal).name
        raise Interrupted(f"training stopped by {name} in epoch {trainer.current_epoch + 1}; {saved}{how}",
                          interrupt.signal) from e


def run_task(task, args, prepared, *, prefix, monitor, mode, callbacks, results, headline, test=False):
    """Train `prepared` as the flags say and write its results; the summary dict (global rank 0) or None.

    `results(run, trainer, history, checkpoint, test_metrics)` writes the task's figures and returns its
    own summary fields; `headline(summary)` is the line printed at the end. With `test`, the test split
    is evaluated with the best checkpoint after fitting.
    """
    module, datamodule, settings = prepared.module, prepared.datamodule, prepared.settings
    run, resume_from = start_run(task, prefix, args, settings)
    try:
        trainer, history, checkpoint = build_trainer(
            run, args.epochs, monitor, mode, trainer_flags(args),
            callbacks=[*callbacks, ChannelsLast(args.channels_last), *reliability_callbacks(task, run, settings)])
        start = time.perf_counter()
        fit(trainer, module, datamodule, resume_from, task, getattr(args, "argv", None) or sys.argv[1:])
        seconds = time.perf_counter() - start
        test_metrics = {}
        if test:
            test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False,
                                        weights_only=True)[0]
    finally:
        os.environ.pop(HANDOFF_ENV, None)  # this run is over: a next run in this process starts afresh
    if not trainer.is_global_zero:
        return None
    fields = results(run, trainer, history, checkpoint, test_metrics)
    write_machine(run.results)
    summary = write_summary(
        run.results / "summary.json", task=task, run=run.name, settings=settings, **fields,
        epochs=len(history.history), history=history.history, wall_seconds=round(seconds, 2),
        resumed_from=getattr(args, "resumed_from", None),
        checkpoints={"best": checkpoint.best_model_path, "last": checkpoint.last_model_path}, logs=str(run.logs))
    print(f"{headline(summary)}; results in {run.results}, TensorBoard logs in {run.logs}")
    return summary
