"""Lightning DDP on CPU: `--accelerator cpu --devices 2 --strategy ddp` for both CLIs.

Each run is the real CLI in a subprocess (Lightning's launcher starts the second process with the
same command line, and rank 0's run folder goes to it through training/runs.py `claimed_run`), with a
timeout so that a hang fails the test instead of blocking CI. Checks: the validation (and, for
segmentation, test) metrics cover the whole set exactly once (they equal a single-process evaluation
of the saved weights; the set sizes are odd, so a padding sampler would count an image twice and
change them, and a per-process mean of the loss would differ), and results, figures and the summary
are written once, by rank 0, into one run folder.
"""
import json

import pytest
import pytorch_lightning as pl

from inference.checkpoints import load_module
from tests.clirun import run_ddp
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.oxford17 import write_oxford17

pytestmark = pytest.mark.slow
DDP = ("--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")
TIMEOUT = 420


def only_run(root, task):
    """The one run folder of `task` under root/results and root/logs (asserts there is exactly one)."""
    results = list((root / "results" / task).iterdir())
    logs = list((root / "logs" / task).iterdir())  # a second process without the hand-off would add its own
    assert len(results) == 1 and [p.name for p in logs] == [results[0].name], (results, logs)
    return results[0], logs[0]


def single_process():
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)


def validate_once(module, datamodule):
    """Single-process validation metrics of `module` on the whole validation set."""
    return {k: float(v) for k, v in single_process().validate(module, datamodule=datamodule, verbose=False)[0].items()}


def test_colorization_ddp_two_processes(tmp_path):
    from colorization import ColorizationModule
    from data.cifar import CIFARHorses

    data = tmp_path / "cifar"
    write_cifar_folder(data, n_per_batch=22, horse_every=2)  # 55 train, 11 val horses: odd on purpose
    out, _ = run_ddp("colorization.py", "UNet", "--num-filters", 8, "--epochs", 1, "--batch-size", 4, "--no-compile",
                     "--data-dir", data, "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs",
                     *DDP)
    assert out.count("best val loss") == 1  # only rank 0 reports
    results, logs = only_run(tmp_path, "colorization")
    assert sorted(p.name for p in results.iterdir()) == ["colour_recall.png", "config.json", "confusion.png",
                                                          "curves.png", "machine.json", "model.pt", "samples.png",
                                                          "summary.json"]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["data"]["val"] == 11

    module = load_module(ColorizationModule, logs / "checkpoints" / "last.ckpt", "colorization")
    dm = CIFARHorses(data, batch_size=4, download=False)
    single = validate_once(module, dm)
    assert abs(single["val/loss"] - summary["final_val_loss"]) < 1e-5, (single, summary["final_val_loss"])
    assert abs(single["val/acc"] - summary["final_val_acc"]) < 1e-6, (single, summary["final_val_acc"])
    # rank 0 measured the colour quality on all 11 validation images, not on its shard
    assert summary["colour_quality"]["images"] == 11
    assert summary["history"][0]["val/colourfulness_pred"] == pytest.approx(
        summary["colour_quality"]["colourfulness_pred"], rel=1e-5)


def test_segmentation_ddp_two_processes(tmp_path):
    import segmentation
    from segmentation import SegmentationConfig, SegmentationModule

    data = write_oxford17(tmp_path / "flowers", n_classes=3, per_class=12)  # 18 train, 9 val, 9 test
    # cross-entropy: its logged loss is the mean over the valid pixels of the whole split, which a mean of
    # per-process (or per-batch) means is not; rank 0 validates 5 images, rank 1 4
    flags = dict(loss="ce", backbone="resnet50", weights="none", image_size=64, batch_size=4, lr=0.3,
                 data_dir=str(data), feature_store=str(tmp_path / "features"), accelerator="cpu")
    out, err = run_ddp("segmentation.py", *[a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", v)],
                       "--epochs", 2, "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", *DDP)
    assert out.count("best val mIoU") == 1
    # the trunk ran once: rank 0 built the store entry in prepare(), rank 1 (started by the launcher) read it
    assert out.count("feature store: built") == 1 and out.count("feature store: reused") == 1, out[-3000:]
    results, logs = only_run(tmp_path, "segmentation")
    assert sorted(p.name for p in results.iterdir()) == ["config.json", "curves.png", "machine.json", "model.pt",
                                                          "predictions.png", "summary.json"]
    [best] = (logs / "checkpoints").glob("best-epoch*.ckpt")
    assert sorted(p.name for p in (logs / "checkpoints").iterdir()) == sorted([best.name, "last.ckpt"])
    summary = json.loads((results / "summary.json").read_text())
    assert summary["inputs"] == "features" and summary["epochs"] == 2 and summary["data"]["counts"]["val"] == 9
    final = summary["history"][-1]
    assert 0.05 < final["val/iou_flower"] < 0.95  # some flower predicted, not all: the IoUs depend on every image

    # one process, the whole network on the images (no features), the last checkpoint's head
    module = load_module(SegmentationModule, logs / "checkpoints" / "last.ckpt", "segmentation")
    images = segmentation.prepare(SegmentationConfig(**flags, feature_cache=False)).datamodule
    assert module.inputs == "images" and len(images.val_set) == 9 and len(images.test_set) == 9
    single = validate_once(module, images)
    for key in ("val/miou", "val/iou_flower", "val/loss"):
        assert abs(single[key] - final[key]) < 1e-6, (key, single, final)
    # the test split too, scored with the best checkpoint: every test image once
    best_module = load_module(SegmentationModule, best, "segmentation")
    test = single_process().test(best_module, datamodule=images, verbose=False)[0]
    assert abs(test["test/miou"] - summary["test_miou"]) < 1e-6, (test, summary["test_miou"])
    assert abs(test["test/iou_flower"] - summary["test_iou_flower"]) < 1e-6, (test, summary["test_iou_flower"])
