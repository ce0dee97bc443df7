"""last.ckpt holds the last finished epoch even when the monitored metric stops improving; file names
count epochs from 1."""
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.callbacks import checkpoints


class Constant(pl.LightningModule):
    """Trains a little, but its validation score never changes: only the first epoch is ever 'best'."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_follows_every_epoch_and_names_count_from_1(tmp_path):
    best, last = checkpoints(tmp_path, "val/score", "max")
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(max_epochs=3, callbacks=[best, last], logger=False, accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Constant(), data, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-epoch001.ckpt", "last.ckpt"]
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["epoch"] == 2 and state["global_step"] == 6  # Lightning's own counter, from 0: the third epoch
    assert torch.load(tmp_path / "best-epoch001.ckpt", weights_only=True)["global_step"] == 2
    assert best.best_model_path == str(tmp_path / "best-epoch001.ckpt")
    assert last.best_model_path == str(tmp_path / "last.ckpt")
