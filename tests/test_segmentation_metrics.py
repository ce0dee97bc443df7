"""segmentation.py's numbers against numbers recomputed here (tests/segeval.py): mIoU and flower IoU
from a hand-counted confusion and from torchmetrics, the logged losses as exact means over the split
whatever the batch size, what prepare() serves (trunk features or images) and that the features give
the whole network's logits, the soft IoU loss by its formula, the test split scored with the best
checkpoint, and the --no-feature-cache, --augment and --unlabelled background paths end to end.

The CLI runs in this process (tests.clirun.run_main) on the tiny Oxford17 fixture (split 1: 12 train,
6 val, 6 test images) with a random frozen ResNet-50 trunk at 64 px; each run takes seconds.
"""
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassJaccardIndex

import segmentation
from data.features import TensorDataModule
from data.oxford17 import Oxford17
from tests import segeval
from tests.clirun import run_main, summary
from tests.fixtures.oxford17 import write_oxford17

SIZE, BATCH = 64, 4
BACKBONE = "resnet50"  # its random trunk's features vary over the image; MobileNetV3's are ~1e-10 everywhere
FAST = ["--backbone", BACKBONE, "--weights", "none", "--image-size", SIZE, "--batch-size", BATCH,
        "--accelerator", "cpu", "--no-progress-bar"]


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    return write_oxford17(tmp_path_factory.mktemp("oxford17"))


def train(flowers, tmp_path, *flags, run="run"):
    """Run segmentation.py in process; returns its summary."""
    out = ["--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", "--run-name", run]
    code, _, err = run_main(segmentation.main, [*FAST, "--data-dir", flowers, *out, *flags])
    assert code == 0, err[-3000:]
    return summary(tmp_path / "results", "segmentation", run)


class StepSpy:
    """Records every training batch (inputs, masks), the new layer's weights before the step, and
    the loss the step returned."""

    def __init__(self, monkeypatch):
        self.steps = []
        real = segmentation.SegmentationModule.training_step

        def spy(module, batch, batch_idx):
            x, mask = batch
            layer = module.model.last_layer
            record = {"epoch": module.current_epoch, "x": x.detach().clone(), "mask": mask.long(),
                      "cached": module.inputs == "features", "weight": layer.weight.detach().clone(),
                      "bias": layer.bias.detach().clone()}
            loss = real(module, batch, batch_idx)
            record["loss"] = loss.item()
            self.steps.append(record)
            return loss

        monkeypatch.setattr(segmentation.SegmentationModule, "training_step", spy)


def config(flowers, tmp_path, loss, **values):
    return segmentation.SegmentationConfig(loss=loss, backbone=BACKBONE, weights="none", image_size=SIZE,
                                           batch_size=values.pop("batch_size", BATCH), data_dir=str(flowers),
                                           feature_store=str(tmp_path / "features"), accelerator="cpu", **values)


def set_head(module, seed=3):
    """Give the new layer fixed weights large enough that its predictions vary from pixel to pixel."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.model.last_layer.weight.copy_(torch.randn(2, 256, 1, 1, generator=g) * 0.5)
        module.model.last_layer.bias.copy_(torch.tensor([0.3, -0.3]))
    return module


def quiet_trainer():
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)


def head_logits(step, size):
    """Logits of the new 1x1 layer on cached features, by hand: W x + b, then bilinear upsampling."""
    w = step["weight"][:, :, 0, 0]
    logits = torch.einsum("nchw,kc->nkhw", step["x"], w) + step["bias"].view(1, -1, 1, 1)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- the metric path

def test_miou_and_flower_iou_equal_a_hand_counted_confusion(flowers):
    """Predictions we control (flower where the normalised red channel exceeds -0.5) fed through the
    module's val and test metric path, in batches of 4 (6 images: batches of 4 and 2)."""
    dm = Oxford17(data_dir=flowers, image_size=SIZE, batch_size=BATCH, download=False, mean=segeval.MEAN,
                  std=segeval.STD)
    module = segmentation.SegmentationModule(backbone="mobilenet_v3_large", weights="none", image_size=SIZE)
    module.logits = lambda x, size: torch.stack([torch.full_like(x[:, 0], -0.5), x[:, 0]], dim=1)
    got = {**quiet_trainer().validate(module, datamodule=dm, verbose=False)[0],
           **quiet_trainer().test(module, datamodule=dm, verbose=False)[0]}
    for stage, split in (("val", "val"), ("test", "test")):
        images, masks = segeval.load_split(flowers, split, SIZE)
        preds = (images[:, 0] > -0.5).numpy().astype(np.int64)
        want = segeval.iou_from_confusion(preds, masks)
        # the fixture must tell the right answer from the usual wrong ones: a mean of batch values,
        # the last batch alone, background's IoU for the flower's, a micro average
        batches = [segeval.iou_from_confusion(preds[i:i + BATCH], masks[i:i + BATCH]) for i in (0, BATCH)]
        wrong = [np.mean([b["miou"] for b in batches]), np.mean([b[1] for b in batches]), batches[-1]["miou"],
                 batches[-1][1], want[0], np.mean(preds[masks != 255] == masks[masks != 255])]
        assert min(abs(w - v) for w in wrong for v in (want[1], want["miou"])) > 1e-3 and want[1] > 0.1
        assert (masks == 255).any()
        assert got[f"{stage}/miou"] == pytest.approx(want["miou"], abs=1e-6), stage
        assert got[f"{stage}/iou_flower"] == pytest.approx(want[1], abs=1e-6), stage


def random_batches(seed, kind):
    """Three batches of (preds, target) with ignored pixels; `kind` leaves a class out on purpose."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        target = torch.randint(0, 2, (3, 9, 7), generator=g)
        preds = torch.randint(0, 2, (3, 9, 7), generator=g)
        if kind == "no flower anywhere":  # class 1 in neither target nor prediction
            target, preds = torch.zeros_like(target), torch.zeros_like(preds)
        elif kind == "no background anywhere":
            target, preds = torch.ones_like(target), torch.ones_like(preds)
        elif kind == "flower only predicted":  # class 1 absent from the target, present in the prediction
            target = torch.zeros_like(target)
        target[torch.rand(3, 9, 7, generator=g) < 0.2] = 255
        out.append((preds, target))
    return out


@pytest.mark.parametrize("kind", ["random", "no flower anywhere", "no background anywhere", "flower only predicted"])
@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_iou_equals_torchmetrics_jaccard_index(kind, seed):
    """The split's IoU from one confusion matrix gives torchmetrics' numbers batch after batch: macro and
    per class, ignore_index 255, a class absent from target and prediction included."""
    ours = segmentation.ConfusionIoU()
    macro = MulticlassJaccardIndex(2, average="macro", ignore_index=255)
    per_class = MulticlassJaccardIndex(2, average="none", ignore_index=255)
    for preds, target in random_batches(seed, kind):
        for metric in (ours, macro, per_class):
            metric.update(preds, target)
        got = ours.compute()
        torch.testing.assert_close(got["miou"], macro.compute(), atol=1e-7, rtol=0)
        torch.testing.assert_close(got["iou"], per_class.compute(), atol=1e-7, rtol=0)
    if kind.endswith("anywhere"):  # the absent class must change the answer, or the case would test nothing
        iou = got["iou"].tolist()
        assert got["miou"] != pytest.approx(sum(iou) / 2)


def test_val_and_test_metrics_are_those_of_the_whole_split_for_any_batch_size(flowers, tmp_path):
    """The same head validated in batches of 2 and of 5 gives the same mIoU, flower IoU and loss."""
    got = []
    for batch_size in (2, 5):
        prepared = segmentation.prepare(config(flowers, tmp_path, "ce", batch_size=batch_size))
        set_head(prepared.module)
        got.append({**quiet_trainer().validate(prepared.module, datamodule=prepared.datamodule, verbose=False)[0],
                    **quiet_trainer().test(prepared.module, datamodule=prepared.datamodule, verbose=False)[0]})
    assert set(got[0]) == {"val/loss", "val/miou", "val/iou_flower", "test/loss", "test/miou", "test/iou_flower"}
    for key in got[0]:
        assert got[0][key] == pytest.approx(got[1][key], abs=1e-6), key


@pytest.mark.parametrize("loss", ["ce", "iou"])
def test_logged_loss_is_the_exact_mean_over_the_split_whatever_the_batch_size(flowers, tmp_path, loss):
    """val/loss and test/loss = cross-entropy over every valid pixel of the split at once (soft IoU: the mean
    over images), recomputed here from torchvision's forward of the images read from the files; batches of
    2 and 5 give the same value, which the old rule (a mean of batch means weighted by images) does not."""
    logged = {}
    for batch_size in (2, 5):
        prepared = segmentation.prepare(config(flowers, tmp_path, loss, batch_size=batch_size))
        module = set_head(prepared.module)
        logged[batch_size] = {**quiet_trainer().validate(module, datamodule=prepared.datamodule, verbose=False)[0],
                              **quiet_trainer().test(module, datamodule=prepared.datamodule, verbose=False)[0]}
    for split in ("val", "test"):
        images, masks = segeval.load_split(flowers, split, SIZE)
        with torch.no_grad():
            logits = module.model.model(images)["out"]
        want = segeval.mean_loss(logits, masks, loss)
        for batch_size in (2, 5):
            assert logged[batch_size][f"{split}/loss"] == pytest.approx(want, abs=1e-6), (split, batch_size)
        # batches of 5 (5 + 1 images): what a batch-dependent mean would have logged instead
        parts = [(segeval.mean_loss(logits[i:i + 5], masks[i:i + 5], loss), len(masks[i:i + 5])) for i in (0, 5)]
        by_images = sum(v * n for v, n in parts) / sum(n for _, n in parts)
        batch_mean = np.mean([v for v, _ in parts])
        wrong = [batch_mean] if loss == "iou" else [by_images, batch_mean]  # by images IS exact for the soft IoU
        assert min(abs(w - want) for w in wrong) > 1e-5, (split, wrong, want)  # ten times the tolerance


def test_prepare_serves_trunk_features_whose_logits_match_the_full_network(flowers, tmp_path):
    """With the feature cache prepare() hands the Trainer the trunk's features (a TensorDataModule) and the
    module knows it; the new layer on them gives the whole network's logits on val and test; and
    head(features(x)) is torchvision's own DeepLabV3 output."""
    prepared = segmentation.prepare(config(flowers, tmp_path, "ce"))
    module, served = set_head(prepared.module), prepared.datamodule
    assert isinstance(served, TensorDataModule) and isinstance(prepared.data, Oxford17)
    assert module.inputs == "features" and prepared.settings["config"]["batch_size"] == BATCH
    assert served.info["location"].startswith(str(tmp_path / "features"))
    for split in ("val", "test"):
        features, masks = served.datasets[split].tensors
        images, want_masks = segeval.load_split(flowers, split, SIZE)
        assert features.shape == (len(images), 256, 8, 8) and np.array_equal(masks.long().numpy(), want_masks)
        with torch.no_grad():
            full = module.model.model(images)["out"]  # torchvision's DeepLabV3.forward
            stored = module.logits(features, masks.shape[-2:])
            split_net = module.model.head(module.model.features(images), images.shape[-2:])
        assert full.std(dim=(2, 3)).min() > 0.1  # logits that vary over every image: the upsampling matters
        torch.testing.assert_close(stored, full, atol=1e-3, rtol=0)
        torch.testing.assert_close(split_net, full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("flag", ["--no-feature-cache", "--augment"])
def test_prepare_serves_images_without_the_feature_cache_or_with_flips(flowers, tmp_path, flag):
    extra = {"--no-feature-cache": {"feature_cache": False}, "--augment": {"augment": True}}[flag]
    prepared = segmentation.prepare(config(flowers, tmp_path, "ce", **extra))
    assert prepared.datamodule is prepared.data and isinstance(prepared.data, Oxford17)
    assert prepared.module.inputs == "images" and prepared.data.augment is (flag == "--augment")
    assert not (tmp_path / "features").exists()  # the trunk never ran over the images


# ----------------------------------------------------------------------------- losses

def test_loss_iou_trains_with_the_soft_iou(flowers, tmp_path, monkeypatch):
    """The first training batch's loss is 1 - I/U per image (X = softmax flower probability, Y = flower
    mask, sums over labelled pixels), averaged over the batch - not cross-entropy."""
    spy = StepSpy(monkeypatch)
    s = train(flowers, tmp_path, "--loss", "iou", "--epochs", 1)
    assert s["loss"] == "iou"
    first = spy.steps[0]
    assert first["cached"] and (first["mask"] == 255).any()
    logits = head_logits(first, first["mask"].shape[-2:])
    x = logits.softmax(dim=1)[:, 1]
    y = (first["mask"] == 1).float()
    valid = (first["mask"] != 255).float()
    inter = (x * y * valid).sum(dim=(1, 2))
    union = ((x + y - x * y) * valid).sum(dim=(1, 2))
    soft_iou = (1 - inter / union).mean().item()
    ce = F.cross_entropy(logits, first["mask"], ignore_index=255).item()
    assert abs(soft_iou - ce) > 1e-2
    assert first["loss"] == pytest.approx(soft_iou, abs=1e-5)


def test_unlabelled_background_counts_the_band_as_background(flowers, tmp_path, monkeypatch):
    """--unlabelled background: every training mask is the trimap with its black band as background
    (nothing ignored), the loss is cross-entropy over every pixel, and the test mIoU is counted with
    the band as background."""
    spy = StepSpy(monkeypatch)
    s = train(flowers, tmp_path, "--loss", "ce", "--epochs", 1, "--unlabelled", "background")
    band_as_background = {segeval.load_mask(flowers, n, SIZE, "background").tobytes()
                          for n in segeval.split_numbers(flowers, "train")}
    seen = [m.numpy().astype(np.int64) for step in spy.steps for m in step["mask"]]
    assert len(seen) == 12 and {m.tobytes() for m in seen} == band_as_background
    first = spy.steps[0]
    ce_all_pixels = F.cross_entropy(head_logits(first, first["mask"].shape[-2:]), first["mask"]).item()
    assert first["loss"] == pytest.approx(ce_all_pixels, abs=1e-5)
    want = segeval.checkpoint_iou(s["checkpoints"]["best"], flowers, SIZE, BATCH, unlabelled="background")
    ignored = segeval.checkpoint_iou(s["checkpoints"]["best"], flowers, SIZE, BATCH, unlabelled="ignore")
    assert abs(want["miou"] - ignored["miou"]) > 1e-3
    assert s["test_miou"] == pytest.approx(want["miou"], abs=1e-6)
    assert s["test_iou_flower"] == pytest.approx(want[1], abs=1e-6)


# ----------------------------------------------------------------------------- checkpoints

def test_test_split_is_scored_with_the_best_checkpoint_when_best_is_not_last(flowers, tmp_path, monkeypatch):
    """Epoch 2 ends with a layer that calls every pixel flower (worse than epoch 1), so the best
    checkpoint is epoch 1's; the summary's test numbers are that checkpoint's, recomputed here."""

    segeval.plant_all_flower_epoch_2(monkeypatch, segmentation.SegmentationModule)
    s = train(flowers, tmp_path, "--loss", "ce", "--epochs", 2)
    assert s["epochs"] == 2 and s["best_val_miou_epoch"] == 1
    assert s["history"][0]["val/miou"] > s["history"][1]["val/miou"] + 1e-3
    checkpoints = tmp_path / "logs" / "segmentation" / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-epoch001.ckpt", "last.ckpt"]
    assert s["checkpoints"]["best"] == str(checkpoints / "best-epoch001.ckpt")
    best = segeval.checkpoint_iou(checkpoints / "best-epoch001.ckpt", flowers, SIZE, BATCH)
    last = segeval.checkpoint_iou(checkpoints / "last.ckpt", flowers, SIZE, BATCH)
    assert abs(best["miou"] - last["miou"]) > 1e-3
    assert s["test_miou"] == pytest.approx(best["miou"], abs=1e-6)
    assert s["test_iou_flower"] == pytest.approx(best[1], abs=1e-6)
    # and the validation numbers of the summary are the best checkpoint's too
    assert s["best_val_miou"] == pytest.approx(segeval.checkpoint_iou(checkpoints / "best-epoch001.ckpt", flowers,
                                                                       SIZE, BATCH, "val")["miou"], abs=1e-6)


# ----------------------------------------------------------------------------- other data paths

def test_no_feature_cache_trains_the_full_network_end_to_end(flowers, tmp_path, monkeypatch):
    spy = StepSpy(monkeypatch)
    s = train(flowers, tmp_path, "--loss", "ce", "--epochs", 1, "--no-feature-cache")
    assert s["inputs"] == "images" and s["epochs"] == 1
    assert len(spy.steps) == 3 and all(not step["cached"] and step["x"].shape[1:] == (3, SIZE, SIZE)
                                       for step in spy.steps)
    want = segeval.checkpoint_iou(s["checkpoints"]["best"], flowers, SIZE, BATCH)
    assert s["test_miou"] == pytest.approx(want["miou"], abs=1e-6)
    assert s["test_iou_flower"] == pytest.approx(want[1], abs=1e-6)


def test_augment_flips_training_pairs_end_to_end(flowers, tmp_path, monkeypatch):
    """--augment: the full network runs on images (no cache); every training item is a train image
    with its own mask, both mirrored or neither, and some are mirrored (12 images: p = 2**-12 that
    none is)."""
    spy = StepSpy(monkeypatch)
    s = train(flowers, tmp_path, "--loss", "ce", "--epochs", 1, "--augment")
    assert s["inputs"] == "images" and s["epochs"] == 1
    assert all(not step["cached"] and step["x"].shape[1:] == (3, SIZE, SIZE) for step in spy.steps)
    numbers = segeval.split_numbers(flowers, "train")
    images = {n: torch.from_numpy(segeval.load_image(flowers, n, SIZE)) for n in numbers}
    masks = {n: segeval.load_mask(flowers, n, SIZE) for n in numbers}
    flipped = []
    for step in spy.steps:
        for x, mask in zip(step["x"], step["mask"].numpy()):
            [(n, flip)] = [(n, flip) for n in numbers for flip in (False, True)
                           if torch.allclose(x, images[n].flip(-1) if flip else images[n], atol=1e-5)]
            np.testing.assert_array_equal(mask, masks[n][:, ::-1] if flip else masks[n])
            flipped.append(flip)
    assert len(flipped) == 12 and 0 < sum(flipped) < 12
    want = segeval.checkpoint_iou(s["checkpoints"]["best"], flowers, SIZE, BATCH)
    assert s["test_miou"] == pytest.approx(want["miou"], abs=1e-6)
