"""A TensorBoard image grid of the same validation images after every validation epoch."""
import torch
from pytorch_lightning import Callback
from torchvision.utils import make_grid


class ValidationGrid(Callback):
    """Logs `rows_fn(pl_module, datamodule, n)` (a list of (label, (n, C, H, W) images in [0, 1]))
    as one grid under `tag`, one row per entry. Rank 0 only; never during the sanity check."""

    def __init__(self, rows_fn, tag, n):
        self.rows_fn, self.tag, self.n = rows_fn, tag, n

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.logger is None:
            return
        rows = self.rows_fn(pl_module, trainer.datamodule, self.n)
        grid = make_grid(torch.cat([images.expand(-1, 3, -1, -1) for _, images in rows]), nrow=self.n, padding=2)
        trainer.logger.experiment.add_image(self.tag, grid, trainer.current_epoch)
