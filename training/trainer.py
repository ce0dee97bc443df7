"""The Lightning Trainer both tasks use: TensorBoard logger, checkpoints, history, progress bar.

In DDP, the DataModules shard the data themselves (data/batching.py: exact evaluation, no padded
repeats); their samplers are DistributedSamplers, which Lightning leaves as they are.
"""
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from training.checkpoints import LastEveryEpoch
from training.history import EpochHistory
from training.progress import ThrottledProgressBar


def build_trainer(run, max_epochs, monitor, mode, flags, callbacks=(), **overrides):
    """A Trainer that logs to run.logs and keeps the best (on `monitor`) and the last checkpoint.

    Returns (trainer, history, checkpoint callback). `flags` are the pass-through Trainer flags.
    """
    logger = TensorBoardLogger(save_dir=str(run.logs.parent), name=run.name, version="", default_hp_metric=False)
    checkpoint = LastEveryEpoch(  # a ModelCheckpoint; last.ckpt = the last epoch (training/checkpoints.py)
        dirpath=str(run.checkpoints),
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
    )
    history = EpochHistory()
    if overrides.get("enable_progress_bar", True):
        callbacks = [ThrottledProgressBar(), *callbacks]  # redraws by the clock, not every batch
    kwargs = dict(
        max_epochs=max_epochs,
        logger=logger,
        callbacks=[checkpoint, history, *callbacks],
        default_root_dir=str(run.logs),
        log_every_n_steps=50,
        **{k: v for k, v in flags.items() if v is not None},
    )
    kwargs.update(overrides)
    return pl.Trainer(**kwargs), history, checkpoint
