"""last.ckpt holds the last finished epoch even when the monitored metric stops improving."""
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.callbacks import LastEveryEpoch


class Constant(pl.LightningModule):
    """Trains a little, but its validation score never changes: only epoch 0 is ever 'best'."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, checkpoint):
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(max_epochs=3, callbacks=[checkpoint], logger=False, accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Constant(), data, data)
    return torch.load(tmp_path / "last.ckpt", weights_only=True)


def test_last_checkpoint_follows_every_epoch(tmp_path):
    checkpoint = LastEveryEpoch(dirpath=tmp_path, filename="best", monitor="val/score", mode="max", save_last=True)
    last = _fit(tmp_path, checkpoint)
    assert last["epoch"] == 2 and last["global_step"] == 6
    assert checkpoint.best_model_path.endswith("best.ckpt") and checkpoint.last_model_path.endswith("last.ckpt")
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
