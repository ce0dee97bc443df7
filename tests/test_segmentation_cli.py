"""segmentation.py end to end: the CLI in a subprocess for both losses, errors, and real data."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from tests import segeval
from tests.conftest import REPO
from tests.fixtures.network import no_network
from tests.fixtures.oxford17 import write_oxford17
from tests.tb import read_image_tags, read_scalars

FAST = ("--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", "64", "--batch-size", "4",
        "--accelerator", "cpu")


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "segmentation.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    root = tmp_path_factory.mktemp("oxford17")
    write_oxford17(root)
    return root


@pytest.mark.parametrize("loss", ["ce", "iou"])
def test_cli_both_losses_write_summary_figures_and_logs(flowers, tmp_path, loss):
    proc = run_cli("--loss", loss, *FAST, "--epochs", 2, "--data-dir", flowers,
                   "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "results" / "segmentation").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["loss"] == loss and summary["backbone"] == "mobilenet_v3_large" and summary["weights"] is None
    assert summary["epochs"] == 2 and summary["feature_cache"] is True
    assert summary["best_val_miou_epoch"] in (0, 1)
    assert summary["best_val_miou"] == max(h["val/miou"] for h in summary["history"])
    # the summary's numbers are the best checkpoint's, recomputed from its weights and the files
    best = tmp_path / "logs" / "segmentation" / run.name / "checkpoints" / f"best-epoch{summary['best_val_miou_epoch']:03d}.ckpt"
    assert summary["test_checkpoint"] == str(best)
    val = segeval.checkpoint_iou(best, flowers, 64, 4, "val")
    test = segeval.checkpoint_iou(best, flowers, 64, 4, "test")
    assert summary["best_val_miou"] == pytest.approx(val["miou"], abs=1e-6)
    assert summary["test_miou"] == pytest.approx(test["miou"], abs=1e-6)
    assert summary["test_iou_flower"] == pytest.approx(test[1], abs=1e-6)
    for name in ("curves.png", "predictions.png"):
        with Image.open(run / name) as im:
            im.verify()
            assert im.format == "PNG"
    logs = tmp_path / "logs" / "segmentation" / run.name
    scalars = read_scalars(logs)
    assert {"train/loss", "val/loss", "val/miou", "val/iou_flower"} <= set(scalars)
    assert scalars["val/miou"] == pytest.approx([h["val/miou"] for h in summary["history"]], abs=1e-6)
    assert any("predictions" in t for t in read_image_tags(logs))
    assert "best val mIoU" in proc.stdout


def test_unknown_loss_exits_2_listing_choices():
    proc = run_cli("--loss", "dice")
    assert proc.returncode == 2
    assert "ce" in proc.stderr and "iou" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_flags():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in ("--loss", "--backbone", "--weights", "--split", "--image-size", "--epochs", "--batch-size",
                 "--lr", "--seed", "--data-dir", "--results-dir", "--logs-dir", "--no-feature-cache", "--augment",
                 "--accelerator", "--devices", "--strategy", "--num-nodes", "--precision"):
        assert flag in proc.stdout, flag


def test_missing_trimaps_gives_one_clear_line(flowers, tmp_path, capsys, monkeypatch):
    """Images there, trimaps missing and their download failing (stubbed, so the same with a network)."""
    import segmentation
    from tests.clirun import run_main

    data = tmp_path / "data"
    shutil.copytree(flowers / "jpg", data / "jpg")
    asked = no_network(monkeypatch)
    code, _, err = run_main(segmentation.main, ["--loss", "ce", *FAST, "--data-dir", data, "--results-dir",
                                                tmp_path / "r", "--logs-dir", tmp_path / "l"], capsys)
    assert code == 1 and asked == ["https://www.robots.ox.ac.uk/~vgg/data/flowers/17/trimaps.tgz"]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: Oxford17 is missing trimaps.tgz") and "network disabled by the test" in line
    assert "17flowers.tgz" not in line  # the images were found


def test_tiny_image_size_is_refused(flowers, tmp_path):
    proc = run_cli("--loss", "ce", *FAST[:-4], "--image-size", 8, "--data-dir", flowers)
    assert proc.returncode == 2 and "--image-size" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_short_run_on_real_flowers_beats_all_background(shared_oxford17, tmp_path):
    """A randomly initialised frozen ResNet-50 still gives features a 1x1 conv can separate."""
    proc = run_cli("--loss", "ce", "--backbone", "resnet50", "--weights", "none", "--image-size", 128,
                   "--epochs", 3, "--batch-size", 16, "--accelerator", "cpu", "--data-dir", shared_oxford17,
                   "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next((tmp_path / "results" / "segmentation").glob("*/summary.json")).read_text())
    from data.oxford17 import Oxford17

    dm = Oxford17(data_dir=shared_oxford17, image_size=128, download=False)
    dm.prepare_data()
    dm.setup("fit")
    masks = torch.stack([dm.val_set[i][1] for i in range(len(dm.val_set))])
    valid = masks != 255
    background_iou = ((masks == 0) & valid).sum().item() / valid.sum().item()
    all_background_miou = background_iou / 2  # flower IoU is 0 when nothing is predicted flower
    # Measured on this data (generated split, 205 val images): all-background 0.337; random frozen
    # ResNet-50 after 3 epochs 0.681 best val mIoU. Bar set with margin.
    assert summary["best_val_miou"] > all_background_miou + 0.2, (summary["best_val_miou"], all_background_miou)


# ---------------------------------------------------------------- the no-image baseline, sample grids
def test_mean_mask_prediction_by_hand():
    from segmentation import mean_mask_prediction

    # three 1x5 training masks; per pixel: flower 2/3, flower 1/2 (one ignored), flower 1/3, all ignored, 0/3
    masks = torch.tensor([[[1, 1, 1, 255, 0]], [[1, 255, 0, 255, 0]], [[0, 0, 0, 255, 0]]], dtype=torch.uint8)
    assert mean_mask_prediction(masks).tolist() == [[1, 1, 0, 0, 0]]


def test_no_image_baseline_scores_the_mean_mask_with_the_runs_miou():
    from types import SimpleNamespace

    from segmentation import no_image_baseline

    train = torch.tensor([[[1, 1, 0, 0]], [[1, 0, 0, 0]], [[1, 0, 0, 1]]], dtype=torch.uint8)  # prediction [1, 0, 0, 0]
    val = torch.tensor([[[1, 1, 0, 255]]], dtype=torch.uint8)
    # val confusion: flower TP 1, FN 1; background TN 1 -> IoU flower 1/2, background 1/2
    test = torch.tensor([[[0, 0, 0, 0]]], dtype=torch.uint8)
    # test: flower FP 1, no flower anywhere -> IoU flower 0 (torchmetrics' rule), background 3/4
    dm = SimpleNamespace(split_masks=lambda name: {"train": train, "val": val, "test": test}[name])
    base = no_image_baseline(dm)
    assert base["val_miou"] == pytest.approx(0.5) and base["val_iou_flower"] == pytest.approx(0.5)
    assert base["test_iou_flower"] == pytest.approx(0.0) and base["test_miou"] == pytest.approx(0.375)
    assert base["flower_pixels"] == 1


def test_validation_samples_show_several_flower_classes(flowers):
    import warnings

    from data.oxford17 import Oxford17, class_of

    dm = Oxford17(flowers, image_size=32, download=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    numbers = dm.split_numbers["val"]
    assert len({class_of(n) for n in numbers[:4]}) == 2  # the first images of the split: two of the three classes
    index = dm.val_sample_indices(4)
    assert sorted({class_of(numbers[i]) for i in index}) == [0, 1, 2] and len(set(index)) == 4
    images, masks, normalised = dm.val_samples(4)
    assert torch.equal(images, dm._pairs["val"].images[torch.tensor(index)])
    assert torch.equal(masks, dm._pairs["val"].masks[torch.tensor(index)].long())


def test_summary_and_output_hold_the_baseline(flowers, tmp_path, capsys):
    import warnings

    import segmentation
    from data.oxford17 import Oxford17
    from tests.clirun import run_main

    code, out, err = run_main(segmentation.main, ["--loss", "ce", *FAST, "--epochs", 1, "--data-dir", flowers,
                                                  "--feature-store", tmp_path / "fs", "--results-dir",
                                                  tmp_path / "results", "--logs-dir", tmp_path / "logs"], capsys)
    assert code == 0, err[-2000:]
    summary = json.loads(next((tmp_path / "results" / "segmentation").glob("*/summary.json")).read_text())
    dm = Oxford17(flowers, image_size=64, download=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    expected = segmentation.no_image_baseline(dm)
    for key in ("val_miou", "test_miou", "val_iou_flower", "test_iou_flower"):
        assert summary["baseline"][key] == pytest.approx(expected[key], abs=1e-7)
    assert f"no-image baseline (mean training mask): val mIoU {expected['val_miou']:.4f}" in out


def test_confusion_iou_equals_torchmetrics_jaccard():
    """The fast metric gives torchmetrics' numbers, batch after batch, ignored pixels and empty classes included."""
    from torchmetrics.classification import MulticlassJaccardIndex

    from segmentation import ConfusionIoU

    g = torch.Generator().manual_seed(0)
    for average in ("macro", "none"):
        ours, theirs = ConfusionIoU(average), MulticlassJaccardIndex(2, average=average, ignore_index=255)
        for step in range(3):
            target = torch.randint(0, 2, (3, 9, 7), generator=g)
            target[torch.rand(3, 9, 7, generator=g) < 0.2] = 255
            preds = torch.randint(0, 2, (3, 9, 7), generator=g) if step < 2 else torch.zeros(3, 9, 7, dtype=torch.long)
            ours.update(preds, target)
            theirs.update(preds, target)
            assert torch.allclose(ours.compute(), theirs.compute(), atol=1e-7), (average, step)
        ours.reset()
        ours.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
        theirs = MulticlassJaccardIndex(2, average=average, ignore_index=255)
        theirs.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
        assert torch.allclose(ours.compute(), theirs.compute()), (average, ours.compute(), theirs.compute())
