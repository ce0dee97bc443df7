"""The Lightning callbacks both tasks use, each with one job.

- `ValidationGrid`: a TensorBoard image grid of the same validation images after every validation epoch.
- `LastEveryEpoch`: a ModelCheckpoint whose last.ckpt really holds the last finished epoch.
- `EpochHistory`: per-epoch metric history, kept in checkpoints so curves survive a resume.
- `ThrottledProgressBar`: a progress bar that redraws by the clock, not after every batch.
- `ChannelsLast`: channels-last (NHWC) memory format for the model (`--channels-last`).
- `FiniteLossGuard`: stops the run at the first NaN/inf training loss, before last.ckpt is overwritten.
- `InterruptCheckpoint`: saves interrupted.ckpt when SIGINT / SIGTERM stops training.
- `RunStamp`: writes the run's task and settings into every checkpoint (training/checkpoints.py reads it).
- `RNGState`: saves and restores the random number generators, which Lightning does not.
"""
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torchvision.utils import make_grid

from errors import UserError
from training.checkpoints import INTERRUPTED, STAMP
from training.tensorboard import enlarge


class ValidationGrid(Callback):
    """Logs `rows_fn(pl_module, datamodule, n)` (a list of (label, (n, C, H, W) images in [0, 1]))
    as one grid under `tag`, one row per entry, enlarged `scale` times with nearest-neighbour scaling
    (sharp pixels in TensorBoard). Rank 0 only; never during the sanity check."""

    def __init__(self, rows_fn, tag, n, scale=1):
        self.rows_fn, self.tag, self.n, self.scale = rows_fn, tag, n, scale

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.logger is None:
            return
        rows = self.rows_fn(pl_module, trainer.datamodule, self.n)
        grid = make_grid(torch.cat([images.expand(-1, 3, -1, -1) for _, images in rows]), nrow=self.n, padding=2)
        trainer.logger.experiment.add_image(self.tag, enlarge(grid, self.scale), trainer.current_epoch)


# A ModelCheckpoint whose last.ckpt really holds the last finished epoch.
#
# Lightning 2.6 rewrites last.ckpt only in an epoch where a top-k checkpoint was saved, i.e. when the
# monitored metric improved (pytorch_lightning/callbacks/model_checkpoint.py, "Only save last checkpoint
# if a checkpoint was actually saved in this step"). A run whose validation score stalls for ten epochs
# and then dies would lose all ten on resume. This subclass also writes last.ckpt in the other epochs.
class LastEveryEpoch(ModelCheckpoint):
    """ModelCheckpoint that refreshes last.ckpt at the end of every epoch (with save_last=True)."""

    def _refresh_last(self, trainer):
        # Skipped when this step was already saved (then Lightning wrote last.ckpt itself).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module):
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer, pl_module):
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)


class EpochHistory(Callback):
    """Records the epoch-level values of the logged metrics after every training epoch.

    Validation runs inside the training epoch, so at `on_train_epoch_end` the callback metrics hold
    both this epoch's train/* and val/* values. The sanity check's values are never recorded.
    """

    def __init__(self, keys=None):
        self.keys = keys
        self.history = []

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if self.keys is not None:
            metrics = {k: v for k, v in metrics.items() if k in self.keys}
        self.history = [h for h in self.history if h["epoch"] != trainer.current_epoch]
        self.history.append({"epoch": trainer.current_epoch, **metrics})

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
        rows = [h for h in self.history if key in h]
        if not rows:
            return None, None
        pick = min if mode == "min" else max
        row = pick(rows, key=lambda h: h[key])
        return row[key], row["epoch"]

    def last(self, key):
        rows = [h for h in self.history if key in h]
        return rows[-1][key] if rows else None


# A progress bar that redraws by the clock, not after every batch.
#
# Lightning's TQDMProgressBar redraws (and re-reads the logged metrics) after every batch by default.
# Colorization steps on a GPU take about a millisecond, so that redraw would be a large part of each
# step; a fixed `refresh_rate` of N batches would instead freeze the bar for minutes when a step is
# slow (segmentation without the feature cache on a CPU). Redrawing at most every `interval` seconds
# (and at the end of each bar) suits both.
class ThrottledProgressBar(TQDMProgressBar):
    """TQDMProgressBar that redraws at most every `interval` seconds, and on a bar's last batch."""

    def __init__(self, interval=0.5, **kwargs):
        super().__init__(**kwargs)
        self.interval = interval
        self._last_draw = float("-inf")

    def _should_update(self, current, total):
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current == total or now - self._last_draw >= self.interval:
            self._last_draw = now
            return True
        return False


# Channels-last memory format for both CLIs: `--channels-last / --no-channels-last`, on by default on CUDA.
#
# Convolutions on GPU tensor cores run in NHWC; with NCHW tensors cuDNN transposes around every conv.
# Converting the model's weights once is enough: a convolution whose weight is channels-last returns
# channels-last activations, so the layout carries through the network. On a CPU the gain is not
# reliable, so the default there is off.
class ChannelsLast(Callback):
    """Converts the LightningModule to channels-last at setup: always (True), never (False), or
    when it trains on CUDA (None). `applied` says what was done."""

    def __init__(self, enabled=None):
        self.enabled = enabled
        self.applied = False

    def setup(self, trainer, pl_module, stage):
        on = self.enabled if self.enabled is not None else trainer.strategy.root_device.type == "cuda"
        if on:
            pl_module.to(memory_format=torch.channels_last)
        self.applied = bool(on)


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite."""


class Interrupted(UserError):
    """Training stopped by a signal; exit code 128 + the signal number, as shells report it."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class FiniteLossGuard(Callback):
    """Stops training at the first non-finite training loss.

    Cost: reading a GPU value forces a synchronisation, so on an accelerator the check is only
    accumulated on the device each step (a few one-element kernels, no transfer) and read every
    `every` steps and at the end of each epoch. The step reported is the first bad one even so. On
    the CPU reading is free, so every step is checked. Lightning calls checkpoint callbacks last, so
    the epoch-end check runs before `last.ckpt` would be overwritten with bad weights.
    """

    def __init__(self, every=50, every_step=None):
        self.every = every
        self.every_step = every_step  # None: every step on the CPU only
        self._first_bad = None  # on the loss's device: global step of the first bad loss, or -1
        self._epoch_start_step = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start_step = trainer.global_step
        self._first_bad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = ~torch.isfinite(loss.detach()).all()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = torch.full_like(self._first_bad, trainer.global_step)  # a fill kernel: no host-to-device copy
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)
        every_step = loss.device.type == "cpu" if self.every_step is None else self.every_step
        if every_step or trainer.global_step % self.every == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._check(trainer)

    def _check(self, trainer):
        if self._first_bad is None:
            return
        step = int(self._first_bad.item())
        bad = step >= 0
        if getattr(trainer, "world_size", 1) > 1:  # all processes stop together, or DDP would hang
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        kept = (f"the last good checkpoint is {last}" if last
                else "no checkpoint was written before (it happened in the first epoch)")
        where = (f"at step {step} (batch {step - self._epoch_start_step} of epoch {trainer.current_epoch + 1})"
                 if step >= 0 else f"in another process in epoch {trainer.current_epoch + 1}")
        raise NonFiniteLoss(f"the training loss became NaN or infinite {where}; training stopped and {kept}. "
                            f"Try a lower --lr")


def _finite(module):
    return all(torch.isfinite(p).all() for p in module.parameters())


class InterruptCheckpoint(Callback):
    """Saves RUN/checkpoints/interrupted.ckpt when SIGINT or SIGTERM stops training (not for other
    errors, and never with non-finite weights); deletes it once a later fit of the run completes.

    Not Lightning's OnExceptionCheckpoint: with that one in the callbacks, `fit` without a checkpoint
    silently resumes from whatever it finds; here resuming is always asked for with --resume.
    """

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
        if not _finite(pl_module):
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
