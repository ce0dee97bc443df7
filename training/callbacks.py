"""The Lightning callbacks both tasks use, each with one job (epochs counted from 1 wherever a person reads them)."""
import random
import re
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torchvision.utils import make_grid

from errors import NonFiniteLoss
from training.runs import INTERRUPTED, STAMP


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint whose file names count epochs from 1, as everything a person reads does."""

    def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None):
        metrics = {**metrics, "epoch": metrics["epoch"] + 1} if "epoch" in metrics else metrics
        return super().format_checkpoint_name(metrics, filename, ver, prefix)


def checkpoints(folder, monitor, mode):
    """[best-epochNNN.ckpt on `monitor`, last.ckpt after every epoch]. Lightning's save_last rewrites last.ckpt
    only when the monitored metric improved (a run that stalls, then dies, would lose those epochs); a second,
    unmonitored checkpoint (save_top_k=1: it replaces its one file) does not."""
    best = Checkpoint(dirpath=str(folder), filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
                      monitor=monitor, mode=mode, save_top_k=1)
    last = Checkpoint(dirpath=str(folder), filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    return [best, last]


class EpochHistory(Callback):
    """The logged epoch-level metrics after every training epoch (validation runs inside it, so train/* and
    val/* alike), kept in checkpoints so that curves survive a resume; the sanity check is never recorded."""

    def __init__(self):
        self.history = []

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        self.history = [h for h in self.history if h["epoch"] != epoch] + [{"epoch": epoch, **metrics}]

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state_dict):
        # Resuming a fit restores the epochs run so far. Testing with ckpt_path="best" restores an
        # older checkpoint too: epochs recorded since then must survive, so merge by epoch.
        merged = {h["epoch"]: h for h in state_dict.get("history", [])}
        merged.update({h["epoch"]: h for h in self.history})
        self.history = [merged[e] for e in sorted(merged)]

    def best(self, key, mode="min"):
        """(value, epoch) of the best recorded value of `key`, or (None, None)."""
        pick = min if mode == "min" else max
        row = pick((h for h in self.history if key in h), key=lambda h: h[key], default=None)
        return (None, None) if row is None else (row[key], row["epoch"])

    def last(self, key):
        return next((h[key] for h in reversed(self.history) if key in h), None)


class ProgressBar(TQDMProgressBar):
    """TQDMProgressBar that redraws at most every `interval` seconds and on a bar's last batch.

    Lightning redraws after every batch, a large part of a millisecond GPU step, while a fixed rate of N
    batches freezes the bar when steps are slow. Each overridden (public) hook redraws the bar's position
    absolutely, so skipping some loses nothing."""

    def __init__(self, interval=0.5):
        super().__init__(refresh_rate=1)
        self.interval, self._drawn = interval, float("-inf")

    def _due(self, batch_idx, total):
        now = time.monotonic()
        if batch_idx + 1 == total or now - self._drawn >= self.interval:
            self._drawn = now
            return True
        return False

    def on_train_epoch_start(self, trainer, *args):
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._due(batch_idx, self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._due(batch_idx, self.total_val_batches_current_dataloader):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._due(batch_idx, self.total_test_batches_current_dataloader):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)


class ValidationGrid(Callback):
    """Logs `rows_fn(pl_module, n)` ([(label, (n, C, H, W) images in [0, 1])]) as one grid, a row per entry,
    under `tag` after every validation epoch (rank 0, not in the sanity check), enlarged `scale` times.
    At validation end, after the module's epoch-end metrics: TensorBoard's writer thread checksums the PNG in
    pure Python (0.25 ms per KB), and holding the GIL it would otherwise stall the colour-quality compute."""

    def __init__(self, rows_fn, tag, n, scale=1):
        self.rows_fn, self.tag, self.n, self.scale = rows_fn, tag, n, scale

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.logger is None:
            return
        rows = self.rows_fn(pl_module, self.n)
        grid = make_grid(torch.cat([images.expand(-1, 3, -1, -1) for _, images in rows]), nrow=self.n, padding=2)
        grid = F.interpolate(grid[None], scale_factor=self.scale, mode="nearest")[0]  # each pixel a sharp block
        trainer.logger.experiment.add_image(self.tag, grid, trainer.current_epoch + 1)


def chart(*tags):
    """One multi-line Custom Scalars chart of exactly these scalar tags (TensorBoard matches regexes,
    so they are anchored: "train/loss" must not also pick up "train/loss_weighted")."""
    return ["Multiline", [f"^{re.escape(t)}$" for t in tags]]


class CustomScalars(Callback):
    """Writes a Custom Scalars layout ({category: {title: chart(...)}}) into the run's events."""

    def __init__(self, layout):
        self.layout = layout

    def on_fit_start(self, trainer, pl_module):
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.is_global_zero and hasattr(experiment, "add_custom_scalars"):
            experiment.add_custom_scalars(self.layout)


class FiniteLossGuard(Callback):
    """Stops training at the first non-finite training loss, before last.ckpt is overwritten (Lightning calls
    checkpoint callbacks last). Reading a GPU value synchronises, so there the check accumulates on the device
    and is read every `every` steps and at epoch end (still reporting the first bad step); the CPU checks
    every step."""

    def __init__(self, every=50):
        self.every = every
        self._first_bad = None  # on the loss's device: global step of the first bad loss, or -1
        self._epoch_start_step = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start_step, self._first_bad = trainer.global_step, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = ~torch.isfinite(loss.detach()).all()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = torch.full_like(self._first_bad, trainer.global_step)  # a fill kernel: no host-to-device copy
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)
        if loss.device.type == "cpu" or trainer.global_step % self.every == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._check(trainer)

    def _check(self, trainer):
        if self._first_bad is None:
            return
        step = int(self._first_bad.item())
        bad = step >= 0
        if trainer.world_size > 1:  # all processes stop together, or DDP would hang
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        saved = trainer.checkpoint_callbacks
        last = (getattr(saved[-1], "best_model_path", "") or "") if saved else ""
        kept = (f"the last good checkpoint is {last}" if last
                else "no checkpoint was written before (it happened in the first epoch)")
        # global_step counts the optimizer steps taken, this batch's included: step k is batch k of a first epoch
        where = (f"at step {step} (batch {step - self._epoch_start_step} of epoch {trainer.current_epoch + 1})"
                 if step >= 0 else f"in another process in epoch {trainer.current_epoch + 1}")
        raise NonFiniteLoss(f"the training loss became NaN or infinite {where}; training stopped and {kept}. "
                            f"Try a lower --lr")


class InterruptCheckpoint(Callback):
    """Saves interrupted.ckpt when SIGINT or SIGTERM stops training (never with non-finite weights); deleted
    once a later fit completes. Not Lightning's OnExceptionCheckpoint: with it, `fit` silently resumes from
    whatever it finds; here resuming is always asked for with --resume."""

    def __init__(self, dirpath):
        self.ckpt_path = str(Path(dirpath) / INTERRUPTED)
        self.signal = None  # signal.SIGINT or signal.SIGTERM once one stopped training
        self.saved = False

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, KeyboardInterrupt):
            self.signal = signal.SIGINT
        elif isinstance(exception, SIGTERMException):
            self.signal = signal.SIGTERM
        else:
            return
        if not all(torch.isfinite(p).all() for p in pl_module.parameters()):
            rank_zero_warn("not saving a checkpoint at the interruption: the weights are not finite")
            return
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        self.saved = True

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            Path(self.ckpt_path).unlink(missing_ok=True)  # training went past the interruption


class RunStamp(Callback):
    """Writes {task, settings} into every checkpoint so that `--resume` can check what it resumes."""

    def __init__(self, task, settings):
        self.task, self.settings = task, dict(settings)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[STAMP] = {"task": self.task, "settings": self.settings}


class RNGState(Callback):
    """Saves and restores the Python, NumPy and torch RNGs (Lightning does not), as tensors and Python values so that
    a checkpoint still loads with weights_only=True; restored before the first resumed epoch draws anything."""

    def state_dict(self):
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict):
        if not state_dict:
            return
        # checkpoints written before the state was stored as tuples hold lists
        random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state_dict["python"]))
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if "cuda" in state_dict and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
