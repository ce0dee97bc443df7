"""The speed pieces: clock-throttled progress bar, channels-last switch, exact epoch means,
the fast per-pixel argmax, and the segmentation sample grid drawn from the feature cache."""
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from colorization import pixel_classes
from training.metrics import BatchMean
from training.callbacks import ChannelsLast, ThrottledProgressBar


def test_progress_bar_redraws_by_the_clock_and_on_the_last_batch():
    bar = ThrottledProgressBar(interval=3600)
    assert bar._should_update(1, 50)  # the first batch draws
    assert not bar._should_update(2, 50)  # then nothing until an hour has passed...
    assert bar._should_update(50, 50)  # ...except the bar's last batch
    assert ThrottledProgressBar(interval=0)._should_update(7, 50)
    bar.disable()
    assert not bar._should_update(50, 50)


def _trainer(device):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


@pytest.mark.parametrize("enabled, device, expected", [(None, "cpu", False), (None, "cuda", True),
                                                        (True, "cpu", True), (False, "cuda", False)])
def test_channels_last_default_follows_the_device(enabled, device, expected):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    callback = ChannelsLast(enabled)
    callback.setup(_trainer(device), model, "fit")
    weight = model[0].weight
    assert callback.applied is expected
    assert weight.is_contiguous(memory_format=torch.channels_last) is expected
    if expected:  # activations follow the weights' layout, and the values do not change
        x = torch.randn(2, 3, 9, 9)
        assert model[0](x).is_contiguous(memory_format=torch.channels_last)


def test_batch_mean_weights_batches_by_their_size():
    mean = BatchMean()
    mean.update(torch.tensor(1.0), 4)
    mean.update(torch.tensor(4.0), 1)
    assert mean.compute().item() == pytest.approx((4 * 1.0 + 4.0) / 5)
    mean.reset()
    mean.update(torch.tensor(2.0), 3)
    assert mean.compute().item() == pytest.approx(2.0)


def test_pixel_classes_is_argmax_with_first_index_on_ties():
    logits = torch.randn(3, 5, 4, 4)
    logits[0, 1] = logits[0, 3] = 10.0  # a tie: argmax picks the first
    assert torch.equal(pixel_classes(logits), logits.argmax(dim=1))
    assert (pixel_classes(logits)[0] == 1).all()


def test_segmentation_samples_from_the_cache_match_the_full_network(tmp_path):
    from data.oxford17 import Oxford17
    from segmentation import SegmentationModule, sample_rows
    from tests.fixtures.oxford17 import write_oxford17

    root = write_oxford17(tmp_path / "flowers", n_classes=2, per_class=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = SegmentationModule(backbone="mobilenet_v3_large", weights=None, image_size=64)
    dm = Oxford17(root, image_size=64, batch_size=4, download=False, mean=module.model.mean, std=module.model.std)
    dm.setup()
    with torch.no_grad():  # a head that is not near zero, so that predictions mean something
        module.model.last_layer.weight.normal_(0, 0.5)
    full = sample_rows(module, dm, 3)
    module.cached = dm.cache_features(module.model.features, "cpu")
    cached = sample_rows(module, dm, 3)
    assert module.cached and [r[0] for r in cached] == [r[0] for r in full]
    assert torch.equal(cached[0][1], full[0][1]) and torch.equal(cached[1][1], full[1][1])
    same = (cached[2][1] == full[2][1]).all(dim=1).float().mean().item()
    assert same > 0.99, same  # head(cached features) equals the full forward to ~1e-6


def test_metrics_logged_on_the_first_batch_cover_every_batch(tmp_path):
    """The modules call self.log once per epoch (batch 0); the values still cover the whole split."""
    import pytorch_lightning as pl
    import torch.nn.functional as F

    from colorization import ColorizationModule
    from data.cifar import CIFARHorses
    from tests.fixtures.cifar import write_cifar_folder

    write_cifar_folder(tmp_path, n_per_batch=22, horse_every=2)  # 11 validation images: batches of 4, 4, 3
    dm = CIFARHorses(tmp_path, batch_size=4, download=False)
    module = ColorizationModule(num_filters=4)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, datamodule=dm, verbose=False)[0]
    grey, target = dm.val_set.tensors
    with torch.no_grad():
        logits = module.eval()(grey)
    assert logged["val/loss"] == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    assert logged["val/acc"] == pytest.approx((logits.argmax(1) == target).float().mean().item(), abs=1e-6)
