"""A TensorBoard image grid of the same validation images after every validation epoch."""
import torch
from pytorch_lightning import Callback
from torchvision.utils import make_grid

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
