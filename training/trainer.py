"""The one training flow both tasks share: `run_task` = run folder -> Trainer -> fit [-> test] -> results.

Each task builds its `Prepared` (module, data, settings) and passes what differs: monitor, callbacks, results,
headline and HParams metrics. The Trainer flags come from the config, so `--strategy ddp --devices N` is
Lightning's own DDP (the DataModules shard the data themselves: data/batching.py).
"""
import contextlib
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy
import pytorch_lightning as pl
import torch
import torchmetrics
import torchvision
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from errors import Interrupted
from files import atomic_write_json
from training.callbacks import (EpochHistory, FiniteLossGuard, InterruptCheckpoint, ProgressBar, RNGState, RunStamp,
                                checkpoints)
from training.config import settings
from training.runs import WEIGHTS, claimed_run, save_weights

CONFIG_FILE, SUMMARY_FILE, MACHINE_FILE = "config.json", "summary.json", "machine.json"


@dataclass
class Prepared:
    """What a task builds before training: enough to decide "same settings" without training."""

    module: pl.LightningModule
    datamodule: pl.LightningDataModule  # what the Trainer trains on
    settings: dict  # training.runs.run_settings(...)
    data: pl.LightningDataModule | None = None  # the task's own data, when `datamodule` is derived from it


def quiet_known_warnings():
    """Silence Lightning advice that does not apply here."""
    for message in (r".*does not have many workers.*",  # the data are tensors already in memory
                    r".*is smaller than the logging interval.*",  # epoch-level logging only
                    r".*LeafSpec.*is deprecated.*",
                    r".*Checkpoint directory .* exists and is not empty.*",  # --resume continues in its run folder
                    r".*module\(s\) in eval mode at the start of training.*",  # DeepLabV3's frozen trunk, on purpose
                    r".*configured with multiple `ModelCheckpoint`.*"):  # test uses the first one, the best
        warnings.filterwarnings("ignore", message=message)


def build_trainer(run, config, monitor, mode, callbacks=(), **overrides):
    """(Trainer, history): logs to run.logs, keeps the best (on `monitor`) and the last checkpoint."""
    quiet_known_warnings()
    logger = TensorBoardLogger(save_dir=str(run.logs.parent), name=run.name, version="", default_hp_metric=False)
    history = EpochHistory()
    bar = [ProgressBar()] if config.progress_bar else []
    kwargs = dict(max_epochs=config.epochs, logger=logger, log_every_n_steps=50, default_root_dir=str(run.logs),
                  callbacks=[*checkpoints(run.checkpoints, monitor, mode), history, *bar, *callbacks],
                  enable_progress_bar=config.progress_bar,
                  **{k: v for k, v in config.trainer_flags().items() if v is not None}, **overrides)
    return pl.Trainer(**kwargs), history


def fit(trainer, module, datamodule, run, task):
    """`trainer.fit` (resuming from run.resume_from, loaded with weights_only=True); a SIGINT or SIGTERM
    becomes an `Interrupted` error whose message says how to resume."""
    interrupt = next(c for c in trainer.callbacks if isinstance(c, InterruptCheckpoint))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=run.resume_from, weights_only=True)
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning exits on SIGINT; SIGTERMException is a SystemExit
        if interrupt.signal is None:
            raise
        last = run.checkpoints / "last.ckpt"
        where = (f"the end of epoch {trainer.current_epoch} ({last})" if last.is_file()
                 else f"the interruption ({interrupt.ckpt_path})" if interrupt.saved else None)
        saved = f"saved {interrupt.ckpt_path}; " if interrupt.saved else "no checkpoint could be saved; "
        command = shlex.join(["python", f"{task}.py", "--config", str(run.results / CONFIG_FILE), "--resume", "last"])
        how = f"resume from {where} with: {command}" if where else "start it again"
        name = signal.Signals(interrupt.signal).name
        raise Interrupted(f"training stopped by {name} in epoch {trainer.current_epoch + 1}; {saved}{how}",
                          interrupt.signal) from e


def run_task(config, prepared, *, task, prefix, monitor, mode, callbacks, results, headline, metrics, test=False):
    """Train `prepared`; on global rank 0 write config.json, summary.json, machine.json and model.pt (the best
    weights) and return the summary, else None. `results(run, history, test_metrics)` writes the task's figures
    and returns its summary fields; `metrics(summary)` goes to the HParams tab. `test`: score the best checkpoint."""
    module, datamodule = prepared.module, prepared.datamodule
    with claimed_run(task, prefix, config, prepared.settings) as run:
        if rank_zero_only.rank == 0:
            atomic_write_json(run.results / CONFIG_FILE, {**asdict(config), "resume": None})
        trainer, history = build_trainer(run, config, monitor, mode, callbacks=[
            *callbacks, RunStamp(task, prepared.settings), RNGState(), FiniteLossGuard(),
            InterruptCheckpoint(run.checkpoints)])
        start = time.perf_counter()
        fit(trainer, module, datamodule, run, task)
        seconds = time.perf_counter() - start
        # read before testing: trainer.test(ckpt_path="best") restores the callbacks' states of that checkpoint
        best, last = (c.best_model_path for c in trainer.checkpoint_callbacks)
        test_metrics = {}
        if test:
            test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False,
                                        weights_only=True)[0]
    if not trainer.is_global_zero:
        return None
    fields = results(run, history, test_metrics)
    save_weights(best, run.results / WEIGHTS)
    atomic_write_json(run.results / MACHINE_FILE, describe_machine())
    summary = {"task": task, "run": run.name, "settings": prepared.settings, "config": asdict(config), **fields,
               "epochs": len(history.history), "history": history.history, "wall_seconds": round(seconds, 2),
               "resumed_from": run.resume_from, "checkpoints": {"best": best, "last": last},
               "weights_file": str(run.results / WEIGHTS), "logs": str(run.logs), "command": shlex.join(sys.argv),
               "versions": library_versions()}
    atomic_write_json(run.results / SUMMARY_FILE, summary)
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in settings(config).items()}
    trainer.logger.log_hyperparams(hparams, {f"hparams/{k}": v for k, v in metrics(summary).items() if v is not None})
    trainer.logger.finalize("success")  # flushed now: after fit, Lightning has finalized the logger already
    print(f"{headline(summary)}; results in {run.results}, TensorBoard logs in {run.logs}")
    return summary


# ----------------------------------------------------------------------------- what ran, and where

def library_versions():
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pytorch_lightning": pl.__version__, "torchmetrics": torchmetrics.__version__, "numpy": numpy.__version__}


def cpu_model():
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def describe_machine():
    gpus = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
    names = [torch.cuda.get_device_name(i) for i in gpus]
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "accelerator": ", ".join(names) or "CPU only", "platform": platform.platform()}
