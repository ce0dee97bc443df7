"""colorization.py end to end: the CLI in a subprocess, the LightningModule in process, real data."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import colorization
from tests import coloreval
from tests.clirun import error_lines, run_main
from tests.conftest import REPO
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.network import no_network
from tests.tb import read_image_tags, read_scalars


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
                   "--no-compile", "--results-dir", out / "results", "--logs-dir", out / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_cli_writes_summary_figures_logs_and_checkpoints(one_epoch_run, cifar_dir):
    out, proc = one_epoch_run
    runs = list((out / "results" / "colorization").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("UNet-")
    assert sorted(p.name for p in runs[0].iterdir()) == ["colour_recall.png", "config.json", "confusion.png",
                                                          "curves.png", "machine.json", "model.pt", "samples.png",
                                                          "summary.json"]
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["model"] == "UNet" and summary["epochs"] == 1
    assert summary["hyperparameters"]["kernel"] == 3 and summary["batch_size"] == 8
    assert summary["settings"]["config"]["batch_size"] == 8 and summary["config"]["data_dir"] == str(cifar_dir)
    assert summary["best_val_loss"] == summary["final_val_loss"]
    assert summary["wall_seconds"] > 0 and summary["data"]["val"] == 10 and summary["data"]["train"] == 50
    for name in ("curves.png", "samples.png"):
        with Image.open(runs[0] / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100
    logs = out / "logs" / "colorization" / runs[0].name
    scalars = read_scalars(logs)
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(scalars)
    assert abs(scalars["val/loss"][-1] - summary["final_val_loss"]) < 1e-5
    assert any("samples" in tag for tag in read_image_tags(logs))
    ckpts = sorted(p.name for p in (logs / "checkpoints").iterdir())
    assert ckpts == ["best-epoch001.ckpt", "last.ckpt"]
    # the summary's numbers are the trained weights' on the validation horses, recomputed here
    recomputed = coloreval.val_metrics(logs / "checkpoints" / "last.ckpt")
    assert summary["final_val_loss"] == pytest.approx(recomputed["loss"], abs=1e-5)
    assert summary["final_val_acc"] == pytest.approx(recomputed["acc"], abs=1e-6)
    # model.pt holds the best checkpoint's weights alone
    weights = torch.load(runs[0] / "model.pt", weights_only=True)
    best = torch.load(logs / "checkpoints" / "best-epoch001.ckpt", weights_only=True)
    assert "optimizer_states" not in weights and weights["state_dict"].keys() == best["state_dict"].keys()
    assert all(torch.equal(weights["state_dict"][k], best["state_dict"][k]) for k in best["state_dict"])
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


def test_colour_quality_from_the_validation_pass_equals_a_second_pass(one_epoch_run, cifar_dir):
    """What validation_step accumulates is what a separate pass of the same weights over all validation
    images measures (the end-of-fit computation before), and the main numbers agree with an
    independent numpy recomputation."""
    from color.metrics import ColourQuality, plain, reference
    from data.cifar import CIFARHorses

    out, _ = one_epoch_run
    [run] = list((out / "results" / "colorization").iterdir())[:1]
    summary = json.loads((run / "summary.json").read_text())
    ckpt = out / "logs" / "colorization" / run.name / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    module = colorization.ColorizationModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    dm = CIFARHorses(data_dir=cifar_dir)
    dm.setup()
    grey, target, rgb = dm.val_set.tensors
    net, second = module.eval().model, ColourQuality(dm.palette, reference(rgb, target, dm.palette))
    with torch.no_grad():
        for start in range(0, len(grey), 250):  # in batches other than the run's 100
            part = slice(start, start + 250)
            second.update(net(grey[part]), target[part], rgb[part], full=True)
    second = plain(second.compute())
    accumulated = summary["colour_quality"]
    assert accumulated.keys() == second.keys()
    assert accumulated["confusion_matrix"] == second["confusion_matrix"]
    for key, value in second.items():
        if isinstance(value, float):
            assert accumulated[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
        elif key not in ("palette", "recall", "target_share", "pred_share"):
            assert accumulated[key] == value, key
    assert accumulated["recall"] == pytest.approx(second["recall"], rel=1e-9)
    assert accumulated["psnr_annealed"] is not None and accumulated["ciede2000_argmax"] is not None  # full=True
    independent = coloreval.val_metrics(ckpt)
    assert accumulated["confusion_matrix"] == independent["confusion"].tolist()
    assert accumulated["colourfulness_pred"] == pytest.approx(independent["colourfulness_pred"], rel=1e-5)
    assert accumulated["colourfulness_true"] == pytest.approx(independent["colourfulness_true"], rel=1e-6)
    assert accumulated["mae_rgb_argmax"] == pytest.approx(independent["mae_rgb"], rel=1e-5)


def test_validation_runs_the_network_once_per_image(cifar_dir):
    """Colour quality costs no second forward pass. A forward hook on the net counts the
    images it sees in one validation epoch (the last one: the full colour quality is computed)."""
    import pytorch_lightning as pl

    from data.cifar import CIFARHorses

    dm = CIFARHorses(data_dir=cifar_dir, batch_size=4)  # 10 validation images: batches of 4, 4, 2
    module = colorization.ColorizationModule(model="UNet", num_filters=4)
    seen = []
    module.model.register_forward_hook(lambda net, inputs, output: seen.append(len(inputs[0])))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    assert seen == [4, 4, 2]
    assert module.last_quality["images"] == 10 and module.last_quality["psnr_annealed"] is not None


def test_second_run_gets_new_folder_and_leaves_first_untouched(one_epoch_run, cifar_dir):
    out, _ = one_epoch_run
    first = next((out / "results" / "colorization").iterdir())
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    code, _, err = run_main(colorization.main, [
        "PoolUpsampleNet", "--epochs", 1, "--batch-size", 16, "--data-dir", cifar_dir, "--accelerator", "cpu",
        "--no-compile", "--results-dir", out / "results", "--logs-dir", out / "logs", "--run-name", first.name])
    assert code == 0, err
    assert sorted(p.name for p in (out / "results" / "colorization").iterdir()) == [first.name, f"{first.name}-2"]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before


def _epochs_run(cifar_dir, tmp_path, capsys, monkeypatch, *flags):
    """A 2-epoch in-process run; returns (summary, checkpoint folder, x values of each line in curves.png)."""
    import reporting.figures

    lines = {}
    real_save = reporting.figures.atomic_save_figure

    def spy(fig, path, *args, **kwargs):
        if path.name == "curves.png":
            lines.update({line.get_label(): list(line.get_xdata()) for ax in fig.axes for line in ax.get_lines()
                          if not line.get_label().startswith("_")})
        return real_save(fig, path, *args, **kwargs)

    monkeypatch.setattr(reporting.figures, "atomic_save_figure", spy)
    code, _, err = run_main(colorization.main, [
        "UNet", "--num-filters", 8, "--batch-size", 16, "--epochs", 2, "--accelerator", "cpu", "--no-compile",
        "--data-dir", cifar_dir, "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs",
        "--run-name", "two", *flags], capsys)
    assert code == 0, err[-3000:]
    summary = json.loads((tmp_path / "results" / "colorization" / "two" / "summary.json").read_text())
    return summary, tmp_path / "logs" / "colorization" / "two" / "checkpoints", lines


def test_epochs_count_from_1_in_summary_checkpoint_names_history_and_figure(cifar_dir, tmp_path, capsys,
                                                                           monkeypatch):
    """A 2-epoch run's best epoch, best checkpoint name and curves agree, from 1."""
    summary, checkpoints, lines = _epochs_run(cifar_dir, tmp_path, capsys, monkeypatch)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    [best] = checkpoints.glob("best-*.ckpt")
    lightning_epoch = torch.load(best, weights_only=True)["epoch"]  # Lightning's own counter, from 0
    losses = [h["val/loss"] for h in summary["history"]]
    assert summary["best_val_loss_epoch"] == lightning_epoch + 1 == 1 + int(np.argmin(losses))
    assert best.name == f"best-epoch{summary['best_val_loss_epoch']:03d}.ckpt"
    assert summary["best_val_loss"] == min(losses)
    assert lines["val/loss"] == lines["train/loss"] == [1, 2]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] + 1 == 2


def test_rebalanced_run_picks_best_checkpoint_and_best_epoch_by_the_same_loss(cifar_dir, tmp_path, capsys,
                                                                              monkeypatch):
    """With --rebalance, the best checkpoint and the summary's best epoch both follow the
    monitored loss (val/loss_weighted). The weighted validation loss of epoch 2 is inflated here, so
    that it disagrees with the plain one: the plain loss falls in epoch 2, the weighted one rises."""
    from losses.rebalanced import RebalancedCrossEntropy

    real_terms = RebalancedCrossEntropy.terms

    def terms(self, logits, target):
        plain, weighted = real_terms(self, logits, target)
        return plain, weighted * 10 if getattr(self, "inflate", False) and not self.training else weighted

    def on_validation_epoch_start(module):  # epoch 2 (current_epoch 1), not the sanity check
        module.criterion.inflate = not module.trainer.sanity_checking and module.current_epoch == 1

    monkeypatch.setattr(RebalancedCrossEntropy, "terms", terms)
    monkeypatch.setattr(colorization.ColorizationModule, "on_validation_epoch_start", on_validation_epoch_start,
                        raising=False)
    summary, checkpoints, _ = _epochs_run(cifar_dir, tmp_path, capsys, monkeypatch, "--rebalance", 0.5, "--lr", 0.01)
    plain = [h["val/loss"] for h in summary["history"]]
    weighted = [h["val/loss_weighted"] for h in summary["history"]]
    assert plain[1] < plain[0] and weighted[1] > weighted[0]  # the two rules disagree
    assert summary["monitor"] == "val/loss_weighted"
    assert summary["best_val_loss_epoch"] == 1
    assert [p.name for p in checkpoints.glob("best-*.ckpt")] == ["best-epoch001.ckpt"]
    assert summary["best_val_loss"] == plain[0]  # the plain loss of the chosen epoch


def test_homework_flag_spellings_are_accepted():
    config = colorization.parse_config(["--model", "ConvTransposeNet", "--num_filters", "8", "--batch_size", "7",
                                        "--learn_rate", "0.01", "--nepochs", "3"])
    assert (config.model, config.num_filters, config.batch_size, config.lr, config.epochs) == (
        "ConvTransposeNet", 8, 7, 0.01, 3)
    assert colorization.parse_config(["UNet"]).model == "UNet"  # the model as a bare argument


def test_unknown_model_exits_2_listing_choices():
    proc = run_cli("ResNet")
    assert proc.returncode == 2
    assert "PoolUpsampleNet" in proc.stderr and "UNet" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_help_explains_every_flag():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in ("--kernel", "--num-filters", "--batch-size", "--epochs", "--lr", "--optimizer", "--seed",
                 "--data-dir", "--results-dir", "--logs-dir", "--palette", "--accelerator", "--devices",
                 "--strategy", "--num-nodes", "--precision", "--rebalance", "--compile", "--no-compile",
                 "--config", "--print-config", "--predict", "--batch-sizes", "--export"):
        assert flag in proc.stdout, flag


def test_missing_data_and_failed_download_gives_one_clear_line(tmp_path, capsys):
    """In process, with every download stubbed to fail (as offline), so it holds with a network too. The
    mistyped folder is not created and the message points at --data-dir."""
    asked = no_network()
    code, _, err = run_main(colorization.main, ["UNet", "--data-dir", tmp_path / "nothing-here", "--results-dir",
                                                tmp_path / "r", "--logs-dir", tmp_path / "l", "--no-compile"], capsys)
    assert code == 1 and asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert "Traceback" not in err
    [line] = error_lines(err)
    assert line.startswith("error: could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    assert "downloads are stubbed in the tests" in line and str(tmp_path / "nothing-here") in line
    assert "--data-dir" in line and "local copy" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data folder, no run folders


def test_module_overfits_and_logs_on_fixture(cifar_dir, tmp_path):
    """In process: the LightningModule learns the fixture's colours within a few epochs."""
    import pytorch_lightning as pl

    from data.cifar import CIFARHorses

    pl.seed_everything(0)
    dm = CIFARHorses(data_dir=cifar_dir, batch_size=10)
    module = colorization.ColorizationModule(model="UNet", num_filters=16, lr=1e-2)
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
    proc = run_cli("UNet", "--epochs", 2, "--data-dir", shared_cifar, "--accelerator", "cpu", "--no-compile",
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
