"""Stopping safely: a loss that turns NaN/inf, and SIGINT / SIGTERM in the middle of an epoch.

- `FiniteLossGuard` stops the run when the training loss is not finite, naming the epoch and step.
  It runs before the checkpoint callbacks, so the last good `last.ckpt` is never overwritten.
- `InterruptCheckpoint` saves `interrupted.ckpt` when Ctrl+C (SIGINT) or SIGTERM stops training;
  Lightning turns both into exceptions at a safe point (SIGTERM: after the current batch).
- `fit` runs `trainer.fit` and turns those stops into one-line `UserError`s (no traceback) that say
  how to resume.
"""
import shlex
import signal
import sys
from pathlib import Path

import torch
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from errors import UserError
from training.resume import INTERRUPTED, RNGState, RunStamp, run_settings


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


def reliability_callbacks(task, run, args):
    """The callbacks that resuming and `fit` rely on; pass them to the Trainer."""
    return [RunStamp(task, run_settings(args)), RNGState(), FiniteLossGuard(), InterruptCheckpoint(run.checkpoints)]


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


def fit(trainer, module, datamodule, ckpt_path, task, args=None):
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
        command = resume_command(task, getattr(args, "argv", None) or sys.argv[1:])
        how = f"resume from {where} with: {command}" if where else "start it again"
        name = signal.Signals(interrupt.signal).name
        raise Interrupted(f"training stopped by {name} in epoch {trainer.current_epoch + 1}; {saved}{how}",
                          interrupt.signal) from e
