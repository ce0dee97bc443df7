"""A ModelCheckpoint whose last.ckpt really holds the last finished epoch.

Lightning 2.6 rewrites last.ckpt only in an epoch where a top-k checkpoint was saved, i.e. when the
monitored metric improved (pytorch_lightning/callbacks/model_checkpoint.py, "Only save last checkpoint
if a checkpoint was actually saved in this step"). A run whose validation score stalls for ten epochs
and then dies would lose all ten on resume. This subclass also writes last.ckpt in the other epochs.
"""
from pytorch_lightning.callbacks import ModelCheckpoint


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
