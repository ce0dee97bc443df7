"""Lightning DDP on CPU: `--accelerator cpu --devices 2 --strategy ddp` for both CLIs.

Each run is the real CLI in a subprocess (Lightning's launcher starts the second process with the
same command line), with a timeout so that a hang fails the test instead of blocking CI. Checks:
the validation metrics cover the whole validation set exactly once (they equal a single-process
evaluation of the saved weights; the set sizes are odd, so a padding sampler would count an image
twice and change them), and results, figures and the summary are written once, by rank 0.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import REPO
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.oxford17 import write_oxford17
from training.checkpoints import load_module

pytestmark = pytest.mark.slow
DDP = ("--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")
TIMEOUT = 420


def run_ddp(script, *args, timeout=TIMEOUT):
    """Run `python script args` in its own process group; kill the whole group on timeout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("IMAGE2IMAGE_RUN_NAME", None)
    proc = subprocess.Popen([sys.executable, script, *map(str, args)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's children too
        out, err = proc.communicate()
        pytest.fail(f"{script} with DDP did not finish in {timeout} s (hang?):\n{err[-3000:]}")
    assert proc.returncode == 0, err[-4000:]
    return out, err


def only_run(root, task):
    """The one run folder of `task` under root/results and root/logs (asserts there is exactly one)."""
    results = list((root / "results" / task).iterdir())
    logs = list((root / "logs" / task).iterdir())
    assert len(results) == 1 and [p.name for p in logs] == [results[0].name], (results, logs)
    return results[0], logs[0]


def validate_once(module, datamodule):
    """Single-process validation metrics of `module` on the whole validation set."""
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    return {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}


def test_colorization_ddp_two_processes(tmp_path):
    from colorization import ColorizationModule
    from data.cifar import CIFARHorses

    data = tmp_path / "cifar"
    write_cifar_folder(data, n_per_batch=22, horse_every=2)  # 55 train, 11 val horses: odd on purpose
    out, _ = run_ddp("colorization.py", "UNet", "--num-filters", 8, "--epochs", 1, "--batch-size", 4,
                     "--data-dir", data, "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs",
                     *DDP)
    assert out.count("best val loss") == 1  # only rank 0 reports
    results, logs = only_run(tmp_path, "colorization")
    assert sorted(p.name for p in results.iterdir()) == ["colour_recall.png", "confusion.png", "curves.png",
                                                          "machine.json", "samples.png", "summary.json"]
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
    from data.oxford17 import Oxford17
    from segmentation import SegmentationModule

    data = write_oxford17(tmp_path / "flowers", n_classes=3, per_class=12)  # 18 train, 9 val, 9 test
    # soft IoU: a mean over images, so the epoch loss does not depend on how images are batched
    # (cross-entropy averages over the valid pixels of each batch, which depends on the batching)
    out, _ = run_ddp("segmentation.py", "--loss", "iou", "--backbone", "mobilenet_v3_large", "--weights", "none",
                     "--image-size", 64, "--batch-size", 4, "--epochs", 1, "--data-dir", data,
                     "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", *DDP)
    assert out.count("best val mIoU") == 1
    results, logs = only_run(tmp_path, "segmentation")
    assert sorted(p.name for p in results.iterdir()) == ["curves.png", "machine.json", "predictions.png", "summary.json"]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["feature_cache"] is True and summary["epochs"] == 1
    final = summary["history"][-1]

    module = load_module(SegmentationModule, logs / "checkpoints" / "last.ckpt", "segmentation")
    dm = Oxford17(data, image_size=64, batch_size=4, download=False, mean=module.model.mean, std=module.model.std)
    dm.setup("fit")
    assert len(dm.val_set) == 9
    module.cached = dm.cache_features(module.model.features, "cpu")  # the same (cached) path as the run
    single = validate_once(module, dm)
    for key in ("val/miou", "val/iou_flower"):
        assert abs(single[key] - final[key]) < 1e-6, (key, single, final)
    assert abs(single["val/loss"] - final["val/loss"]) < 1e-5, (single, final)
    # the test split too: every test image once, full network (one epoch: best = last weights)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert abs(test["test/miou"] - summary["test_miou"]) < 1e-6, (test, summary["test_miou"])
