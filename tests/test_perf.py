"""The speed pieces: clock-throttled progress bar (epochs counted from 1), channels-last switch, the fast
per-pixel argmax, exact epoch means logged once per epoch, and the segmentation sample grid drawn from
the trunk's features."""
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from training.callbacks import ProgressBar
from training.speed import Speed


def test_progress_bar_redraws_by_the_clock_and_on_the_last_batch():
    bar = ProgressBar(interval=3600)
    assert bar._due(0, 50)  # the first batch draws
    assert not bar._due(1, 50)  # then nothing until an hour has passed...
    assert bar._due(49, 50)  # ...except the bar's last batch (batch_idx counts from 0)
    assert not bar._due(48, 50)
    assert ProgressBar(interval=0)._due(7, 50)


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_progress_bar_counts_epochs_from_1(tmp_path):
    seen = []

    class Spy(ProgressBar):
        def on_train_epoch_start(self, trainer, *args):
            super().on_train_epoch_start(trainer, *args)
            seen.append(self.train_progress_bar.desc)

    trainer = pl.Trainer(max_epochs=2, callbacks=[Spy()], logger=False, enable_checkpointing=False,
                         accelerator="cpu", enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_Tiny(), DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2))
    assert [d.rstrip(": ") for d in seen] == ["Epoch 1/2", "Epoch 2/2"]


def _trainer(device):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


@pytest.mark.parametrize("enabled, device, expected", [(None, "cpu", False), (None, "cuda", True),
                                                        (True, "cpu", True), (False, "cuda", False)])
def test_channels_last_default_follows_the_device(enabled, device, expected):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    callback = Speed(compile=False, channels_last=enabled)
    callback.setup(_trainer(device), model, "fit")
    weight = model[0].weight
    assert callback.applied == {"compile": False, "channels_last": expected}
    assert weight.is_contiguous(memory_format=torch.channels_last) is expected
    if expected:  # activations follow the weights' layout
        x = torch.randn(2, 3, 9, 9)
        assert model[0](x).is_contiguous(memory_format=torch.channels_last)


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, grey):
        return self.logits


def test_predicted_indices_are_argmax_with_first_index_on_ties():
    from colorization import ColorizationModule

    module = ColorizationModule(model="UNet", num_filters=4)
    logits = torch.randn(3, 24, 4, 4)
    logits[0, 1] = logits[0, 3] = 10.0  # a tie: argmax picks the first
    module.model = _Fixed(logits)
    got = module.predict_indices(torch.zeros(3, 1, 4, 4))
    assert torch.equal(got, logits.argmax(dim=1))
    assert (got[0] == 1).all()


def test_metrics_logged_on_the_first_batch_cover_every_batch(tmp_path):
    """The module calls self.log once per epoch (batch 0); the values still cover the whole split, with
    batches of unequal size weighted by their pixels (exact epoch means)."""
    import torch.nn.functional as F

    from colorization import ColorizationModule
    from data.cifar import CIFARHorses
    from tests.fixtures.cifar import write_cifar_folder

    write_cifar_folder(tmp_path, n_per_batch=22, horse_every=2)  # 11 validation images: batches of 4, 4, 3
    dm = CIFARHorses(tmp_path, batch_size=4, download=False)
    module = ColorizationModule(num_filters=4)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, datamodule=dm, verbose=False)[0]
    grey, target, _ = dm.val_set.tensors
    assert len(grey) == 11
    with torch.no_grad():
        logits = module.eval()(grey)
    assert logged["val/loss"] == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    assert logged["val/acc"] == pytest.approx((logits.argmax(1) == target).float().mean().item(), abs=1e-6)


def test_segmentation_samples_from_the_features_match_the_full_network(tmp_path):
    """The sample grid of a run that trains on cached trunk features shows what the whole network predicts."""
    import segmentation
    from reporting.segmentation import sample_rows
    from tests.fixtures.oxford17 import write_oxford17

    root = write_oxford17(tmp_path / "flowers", n_classes=2, per_class=8)
    base = dict(loss="ce", backbone="mobilenet_v3_large", weights="none", image_size=64, batch_size=4,
                data_dir=str(root), feature_store=str(tmp_path / "store"), accelerator="cpu")
    rows = {}
    for cached in (True, False):
        # the trunk's layout must not change what the grid shows: channels-last (None: an older config.json's
        # value) or NCHW (--no-channels-last)
        prepared = segmentation.prepare(segmentation.SegmentationConfig(**base, feature_cache=cached,
                                                                        channels_last=None if cached else False))
        assert prepared.module.inputs == ("features" if cached else "images")
        trunk = prepared.module.model.model.backbone
        assert next(trunk.parameters()).is_contiguous(memory_format=torch.channels_last) is cached
        assert (prepared.datamodule is prepared.data) is not cached
        with torch.no_grad():  # a head that is not near zero, so that predictions mean something
            torch.manual_seed(5)
            prepared.module.model.last_layer.weight.normal_(0, 0.5)
        rows[cached] = sample_rows(prepared.module, prepared.data, prepared.datamodule, 3)
    cached, full = rows[True], rows[False]
    assert [r[0] for r in cached] == [r[0] for r in full] == ["image", "ground truth", "prediction"]
    assert cached[0][1].shape[0] == 3
    assert torch.equal(cached[0][1], full[0][1]) and torch.equal(cached[1][1], full[1][1])
    same = (cached[2][1] == full[2][1]).all(dim=1).float().mean().item()
    assert same > 0.99, same  # head(cached features) equals the full forward to ~1e-6
    assert len(torch.unique(full[2][1].flatten(1), dim=1)) > 1  # the prediction is not blank
