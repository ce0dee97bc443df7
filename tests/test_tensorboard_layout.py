"""What TensorBoard shows: the Custom Scalars layout of both tasks and the enlarged sample grids,
read back from the event files the runs wrote, as TensorBoard reads them."""
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2

import colorization
import segmentation
from tests.clirun import run_main
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.oxford17 import write_oxford17
from tests.tb import read_scalars
from training.tensorboard import enlarge


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
        "--data-dir", root / "cifar", "--results-dir", root / "results", "--logs-dir", root / "logs",
        "--run-name", "r"])
    assert code == 0
    return root / "logs" / "colorization" / "r"


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
        "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", "--run-name", "s"])
    assert code == 0
    logs = tmp_path / "logs" / "segmentation" / "s"
    layout = read_layout(logs)
    assert list(layout) == ["segmentation"]
    assert charted_tags(layout, read_scalars(logs)) == [("train/loss", "val/loss"), ("val/iou_flower", "val/miou")]


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


def test_enlarge_repeats_each_pixel_into_a_block():
    image = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])
    assert enlarge(image, 2).tolist() == [[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0],
                                           [0.5, 0.5, 0.25, 0.25], [0.5, 0.5, 0.25, 0.25]]]
    assert enlarge(image, 1) is image
