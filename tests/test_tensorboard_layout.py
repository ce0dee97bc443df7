"""What TensorBoard shows: the Custom Scalars layout of both tasks, the enlarged sample grids and the
HParams tab (each run's settings with its final metrics), read back from the event files the runs
wrote, as TensorBoard reads them."""
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2

import colorization
import segmentation
from tests.clirun import run_main
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.oxford17 import write_oxford17
from tests.tb import read_hparams, read_scalars


def read_layout(log_dir):
    """{category: {chart title: [tag regexes]}} of the Custom Scalars layout in the run's event files."""
    layout = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "custom_scalars__config__":
                    parsed = layout_pb2.Layout.FromString(value.tensor.string_val[0])
                    for category in parsed.category:
                        layout[category.title] = {c.title: list(c.multiline.tag) for c in category.chart}
    return layout


def charted_tags(layout, scalar_tags):
    """[sorted scalar tags that TensorBoard puts in each chart] (it matches the regexes with re.search)."""
    return sorted(tuple(sorted(t for t in scalar_tags if any(re.search(rx, t) for rx in regexes)))
                  for charts in layout.values() for regexes in charts.values())


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    write_cifar_folder(root / "cifar", n_per_batch=20, horse_every=2)
    code, _, _ = run_main(colorization.main, [
        "UNet", "--num-filters", 8, "--batch-size", 16, "--epochs", 1, "--rebalance", 0.5, "--accelerator", "cpu",
        "--no-compile", "--data-dir", root / "cifar", "--results-dir", root / "results", "--logs-dir", root / "logs",
        "--run-name", "r"])
    assert code == 0
    return root / "logs" / "colorization" / "r"


def _summary(logs):
    """The summary.json of the run whose logs are `logs` (RESULTS/<task>/<run>/ beside LOGS/<task>/<run>/)."""
    return json.loads((logs.parents[2] / "results" / logs.parent.name / logs.name / "summary.json").read_text())


def test_colorization_layout_puts_train_and_val_of_each_metric_in_one_chart(colour_run):
    layout = read_layout(colour_run)
    assert list(layout) == ["colorization"]
    assert charted_tags(layout, read_scalars(colour_run)) == sorted([
        ("train/loss", "val/loss"), ("train/acc", "val/acc"), ("train/loss_weighted", "val/loss_weighted"),
        ("val/colourfulness_pred", "val/colourfulness_true"), ("val/mae_rgb_annealed", "val/mae_rgb_argmax")])


def test_segmentation_layout_charts_train_and_val_loss_together_and_the_iou(tmp_path):
    flowers = write_oxford17(tmp_path / "oxford17")
    code, _, _ = run_main(segmentation.main, [
        "--loss", "ce", "--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", 64,
        "--batch-size", 6, "--epochs", 1, "--accelerator", "cpu", "--data-dir", flowers,
        "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", "--run-name", "s",
        "--feature-store", tmp_path / "store"])
    assert code == 0
    logs = tmp_path / "logs" / "segmentation" / "s"
    layout = read_layout(logs)
    assert list(layout) == ["segmentation"]
    scalars = read_scalars(logs)
    assert charted_tags(layout, scalars) == [("train/loss", "val/loss"), ("val/iou_flower", "val/miou")]
    # the HParams tab: the run's settings, and metrics that are the summary's numbers
    shown, summary = read_hparams(logs), _summary(logs)
    assert shown["hparams"] == {"seed": 0, "precision": "32-true", "loss": "ce", "backbone": "mobilenet_v3_large",
                                "weights": "none", "split": 1, "image_size": 64, "unlabelled": "ignore",
                                "augment": False, "epochs": 1, "batch_size": 6, "lr": 0.001}
    assert shown["status"] == "STATUS_SUCCESS"
    expected = {"best_val_miou": summary["best_val_miou"], "final_val_miou": summary["final_val_miou"],
                "test_miou": summary["test_miou"], "baseline_val_miou": summary["baseline"]["val_miou"]}
    assert sorted(shown["metrics"]) == sorted(f"hparams/{k}" for k in expected)
    for key, value in expected.items():
        assert scalars[f"hparams/{key}"] == [pytest.approx(value, rel=1e-6)], key


def test_hparams_tab_holds_the_settings_with_the_final_metrics(colour_run):
    shown, summary = read_hparams(colour_run), _summary(colour_run)
    assert shown["hparams"] == {"seed": 0, "precision": "32-true", "model": "UNet", "kernel": 3, "num_filters": 8,
                                "optimizer": "adamw", "weight_decay": 0.0, "rebalance": 0.5, "epochs": 1,
                                "batch_size": 16, "lr": 0.001}
    assert shown["status"] == "STATUS_SUCCESS"
    quality = summary["colour_quality"]
    expected = {"final_val_loss": summary["final_val_loss"], "best_val_loss": summary["best_val_loss"],
                "final_val_acc": summary["final_val_acc"], "best_val_acc": summary["best_val_acc"],
                **{k: quality[k] for k in ("colourfulness_ratio", "ciede2000_argmax", "ciede2000_annealed",
                                           "psnr_argmax", "ssim_argmax")}}
    assert sorted(shown["metrics"]) == sorted(f"hparams/{k}" for k in expected)
    scalars = read_scalars(colour_run)
    for key, value in expected.items():  # one value each, at step 0, as the HParams tab reads it
        assert value is not None and scalars[f"hparams/{key}"] == [pytest.approx(value, rel=1e-6)], key
    assert scalars["hparams/final_val_loss"] == [pytest.approx(scalars["val/loss"][-1], rel=1e-6)]


def test_sample_grid_is_logged_four_times_larger_with_sharp_pixels(colour_run):
    acc = EventAccumulator(str(colour_run), size_guidance={"images": 0})
    acc.Reload()
    [tag] = [t for t in acc.Tags()["images"] if "samples" in t]
    event = acc.Images(tag)[-1]
    # make_grid of 3 rows x 8 images of 32 px with 2 px padding: 8 * 34 + 2 = 274 by 3 * 34 + 2 = 104
    assert (event.width, event.height) == (4 * 274, 4 * 104)
    pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")).astype(int)
    blocks = pixels.reshape(104, 4, 274, 4, 3)
    assert (blocks == blocks[:, :1, :, :1, :]).all()  # every 4 x 4 block is one colour: nearest neighbour
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # and the picture is not blank
