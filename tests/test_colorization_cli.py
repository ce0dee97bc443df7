"""colorization.py end to end: the CLI in a subprocess, the LightningModule in process, real data."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from tests import coloreval
from tests.conftest import REPO
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.network import no_network
from tests.tb import read_scalars, read_image_tags


def run_cli(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, "colorization.py", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, n_per_batch=20, horse_every=2)
    return root


@pytest.fixture(scope="module")
def one_epoch_run(cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run_cli("UNet", "--epochs", 1, "--batch-size", 8, "--data-dir", cifar_dir, "--accelerator", "cpu",
                   "--results-dir", out / "results", "--logs-dir", out / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_cli_writes_summary_figures_logs_and_checkpoints(one_epoch_run):
    out, proc = one_epoch_run
    runs = list((out / "results" / "colorization").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("UNet-")
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["model"] == "UNet" and summary["epochs"] == 1
    assert summary["hyperparameters"]["kernel"] == 3 and summary["batch_size"] == 8
    assert summary["best_val_loss"] == summary["final_val_loss"]
    assert summary["wall_seconds"] > 0 and summary["data"]
    for name in ("curves.png", "samples.png"):
        with Image.open(runs[0] / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100
    logs = out / "logs" / "colorization" / runs[0].name
    scalars = read_scalars(logs)
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(scalars)
    assert abs(scalars["val/loss"][-1] - summary["final_val_loss"]) < 1e-5
    assert any("samples" in tag for tag in read_image_tags(logs))
    ckpts = {p.name for p in (logs / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    # the summary's numbers are the trained weights' on the validation horses, recomputed here
    recomputed = coloreval.val_metrics(logs / "checkpoints" / "last.ckpt")
    assert summary["final_val_loss"] == pytest.approx(recomputed["loss"], abs=1e-5)
    assert summary["final_val_acc"] == pytest.approx(recomputed["acc"], abs=1e-6)
    assert "best val loss" in proc.stdout


def test_summary_and_tensorboard_hold_the_colour_quality_of_the_final_model(one_epoch_run, cifar_dir):
    from data.cifar import CIFARHorses

    out, _ = one_epoch_run
    [run] = [p for p in (out / "results" / "colorization").iterdir() if (p / "summary.json").exists()][:1]
    summary = json.loads((run / "summary.json").read_text())
    # the homework's loss, said in the hyper-parameters and the summary
    assert summary["hyperparameters"]["rebalance"] is None and summary["loss"] == "cross-entropy"
    assert summary["rebalance"] is None
    q = summary["colour_quality"]
    dm = CIFARHorses(data_dir=cifar_dir)
    dm.setup()
    val_target = dm.val_set.tensors[1]
    # all validation images, counted by the confusion matrix as the data module holds them
    assert q["images"] == len(val_target) == summary["data"]["val"]
    assert sum(map(sum, q["confusion_matrix"])) == val_target.numel()
    share = torch.bincount(val_target.flatten(), minlength=24).double() / val_target.numel()
    assert q["target_share"] == pytest.approx(share.tolist(), abs=1e-12)
    # the same model as the last validation epoch: torchmetrics' accuracy and the confusion diagonal agree
    assert q["accuracy"] == pytest.approx(summary["final_val_acc"], abs=1e-6)
    assert len(q["recall"]) == len(q["pred_share"]) == 24
    assert q["colourfulness_ratio"] == pytest.approx(q["colourfulness_pred"] / q["colourfulness_true"])
    logs = out / "logs" / "colorization" / run.name
    scalars = read_scalars(logs)
    for key in ("colourfulness_pred", "colourfulness_true", "mae_rgb_argmax", "mae_rgb_annealed"):
        assert scalars[f"val/{key}"][-1] == pytest.approx(q[key], rel=1e-5), key
    tags = read_image_tags(logs)
    assert any("confusion" in t for t in tags) and any("colours" in t for t in tags)  # figures of the last epoch
    for name in ("colour_recall.png", "confusion.png"):
        with Image.open(run / name) as im:
            assert im.format == "PNG"


def test_second_run_gets_new_folder_and_leaves_first_untouched(one_epoch_run, cifar_dir):
    out, _ = one_epoch_run
    first = next((out / "results" / "colorization").iterdir())
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    proc = run_cli("PoolUpsampleNet", "--epochs", 1, "--batch-size", 16, "--data-dir", cifar_dir,
                   "--accelerator", "cpu", "--results-dir", out / "results", "--logs-dir", out / "logs",
                   "--run-name", first.name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((out / "results" / "colorization").iterdir())) == 2
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before


def test_homework_flag_spellings_are_accepted():
    from colorization import parse_args

    args = parse_args(["--model", "ConvTransposeNet", "--num_filters", "8", "--batch_size", "7",
                       "--learn_rate", "0.01", "--nepochs", "3"])
    assert (args.model, args.num_filters, args.batch_size, args.lr, args.epochs) == ("ConvTransposeNet", 8, 7, 0.01, 3)


def test_unknown_model_exits_2_listing_choices():
    proc = run_cli("ResNet")
    assert proc.returncode == 2
    assert "PoolUpsampleNet" in proc.stderr and "UNet" in proc.stderr and "Traceback" not in proc.stderr


def test_help_explains_every_flag():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in ("--kernel", "--num-filters", "--batch-size", "--epochs", "--lr", "--optimizer", "--seed",
                 "--data-dir", "--results-dir", "--logs-dir", "--palette", "--accelerator", "--devices",
                 "--strategy", "--num-nodes", "--precision", "--rebalance"):
        assert flag in proc.stdout, flag


def test_missing_data_and_failed_download_gives_one_clear_line(tmp_path, capsys, monkeypatch):
    """In process, with the downloader stubbed to fail (as offline), so it holds with a network too."""
    import colorization
    from tests.clirun import run_main

    asked = no_network(monkeypatch)
    code, _, err = run_main(colorization.main, ["UNet", "--data-dir", tmp_path / "nothing-here", "--results-dir",
                                                tmp_path / "r", "--logs-dir", tmp_path / "l"], capsys)
    assert code == 1 and asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    assert "network disabled by the test" in line and str(tmp_path / "nothing-here") in line
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("summary.json"))
    assert list((tmp_path / "nothing-here").iterdir()) == []  # no partial download left


def test_module_overfits_and_logs_on_fixture(cifar_dir, tmp_path):
    """In process: the LightningModule learns the fixture's colours within a few epochs."""
    import pytorch_lightning as pl

    from colorization import ColorizationModule
    from data.cifar import CIFARHorses

    pl.seed_everything(0)
    dm = CIFARHorses(data_dir=cifar_dir, batch_size=10)
    module = ColorizationModule(model="UNet", num_filters=16, lr=1e-2)
    trainer = pl.Trainer(max_epochs=15, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    grey, target = dm.train_set.tensors
    with torch.no_grad():
        acc = (module.eval().predict_indices(grey) == target).float().mean().item()
    majority = (target == target.flatten().mode().values).float().mean().item()
    assert acc > majority + 0.1, (acc, majority)


@pytest.mark.integration
@pytest.mark.slow
def test_unet_two_epochs_on_real_horses_beats_majority_colour(shared_cifar, tmp_path):
    proc = run_cli("UNet", "--epochs", 2, "--data-dir", shared_cifar, "--accelerator", "cpu",
                   "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next((tmp_path / "results" / "colorization").glob("*/summary.json")).read_text())
    from data.cifar import CIFARHorses

    dm = CIFARHorses(data_dir=shared_cifar)
    dm.prepare_data()
    dm.setup("fit")
    val_target = dm.val_set.tensors[1]
    majority = (val_target == val_target.flatten().mode().values).float().mean().item()
    # Measured on this data: majority colour 0.069, UNet after 2 epochs 0.391 val accuracy.
    assert summary["final_val_acc"] > majority + 0.15, (summary["final_val_acc"], majority)
