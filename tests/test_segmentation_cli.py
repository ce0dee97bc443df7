"""segmentation.py end to end: the CLI for both losses, errors, the no-image baseline, the figures, head-only
checkpoints (size, trunk identity, resume, --predict --checkpoint best|last), and real data."""
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reporting.figures
import segmentation
from data.oxford17 import Oxford17, class_of
from errors import UserError
from inference.checkpoints import load_module
from models.deeplabv3 import build_deeplabv3, weights_path
from models.standin_weights import write_standin
from reporting.segmentation import MASK_COLOURS
from reporting.segmentation import mean_mask_prediction, no_image_baseline, sample_rows
from tests import segeval
from tests.clirun import error_lines, run_main, summary
from tests.conftest import REPO
from tests.fixtures.network import no_network
from tests.fixtures.oxford17 import write_oxford17
from tests.tb import read_image_tags, read_scalars

SIZE, BATCH = 64, 4
# A random frozen ResNet-50 gives features that vary over the image (MobileNetV3's random trunk gives ~1e-10
# everywhere: every logit would be the bias, and predictions, IoUs and losses would not depend on the image)
BACKBONE = "resnet50"
FAST = ("--backbone", BACKBONE, "--weights", "none", "--image-size", SIZE, "--batch-size", BATCH,
        "--accelerator", "cpu", "--no-progress-bar")
MB = 1_000_000


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "segmentation.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    root = tmp_path_factory.mktemp("oxford17")
    write_oxford17(root)
    return root


def train(flowers, tmp_path, *flags, run="run", capsys=None):
    """segmentation.py in this process; its summary."""
    out = ["--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", "--run-name", run]
    code, _, err = run_main(segmentation.main, [*FAST, "--data-dir", flowers, *out, *flags], capsys)
    assert code == 0, err[-3000:]
    return summary(tmp_path / "results", "segmentation", run)


def setup_quietly(dm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's datasplits.mat is not the official file
        dm.setup("fit")
    return dm


@pytest.mark.parametrize("loss", ["ce", "iou"])
def test_cli_both_losses_write_summary_figures_and_logs(flowers, tmp_path, loss):
    proc = run_cli("--loss", loss, *FAST, "--epochs", 2, "--data-dir", flowers,
                   "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = list((tmp_path / "results" / "segmentation").iterdir())
    s = json.loads((run / "summary.json").read_text())
    assert s["loss"] == loss and s["backbone"] == BACKBONE and s["weights"] == "none"
    assert s["epochs"] == 2 and s["inputs"] == "features" and [h["epoch"] for h in s["history"]] == [1, 2]
    best_row = max(s["history"], key=lambda h: h["val/miou"])  # ties: the first, as the checkpoint keeps
    assert (s["best_val_miou"], s["best_val_miou_epoch"]) == (best_row["val/miou"], best_row["epoch"])
    # the summary's numbers are the best checkpoint's, recomputed from its weights and the files
    checkpoints = tmp_path / "logs" / "segmentation" / run.name / "checkpoints"
    best = checkpoints / f"best-epoch{s['best_val_miou_epoch']:03d}.ckpt"
    assert s["checkpoints"] == {"best": str(best), "last": str(checkpoints / "last.ckpt")}
    val = segeval.checkpoint_iou(best, flowers, SIZE, BATCH, "val")
    test = segeval.checkpoint_iou(best, flowers, SIZE, BATCH, "test")
    assert s["best_val_miou"] == pytest.approx(val["miou"], abs=1e-6)
    assert s["test_miou"] == pytest.approx(test["miou"], abs=1e-6)
    assert s["test_iou_flower"] == pytest.approx(test[1], abs=1e-6)
    # val/loss of that epoch: the exact mean over the split (valid pixels for CE, images for the soft IoU)
    assert best_row["val/loss"] == pytest.approx(segeval.checkpoint_loss(best, flowers, SIZE, BATCH, loss), abs=2e-6)
    for name in ("curves.png", "predictions.png"):
        with Image.open(run / name) as im:
            im.verify()
            assert im.format == "PNG"
    logs = tmp_path / "logs" / "segmentation" / run.name
    scalars = read_scalars(logs)
    assert {"train/loss", "val/loss", "val/miou", "val/iou_flower", "test/miou"} <= set(scalars)
    assert scalars["val/miou"] == pytest.approx([h["val/miou"] for h in s["history"]], abs=1e-6)
    assert any("predictions" in t for t in read_image_tags(logs))
    assert f"best val mIoU {s['best_val_miou']:.4f} at epoch {s['best_val_miou_epoch']}" in proc.stdout


def test_unknown_loss_exits_2_listing_choices():
    proc = run_cli("--loss", "dice")
    assert proc.returncode == 2
    assert "'ce'" in proc.stderr and "'iou'" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_flags():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in ("--loss", "--backbone", "--weights", "--split", "--image-size", "--epochs", "--batch-size",
                 "--lr", "--seed", "--data-dir", "--results-dir", "--logs-dir", "--no-feature-cache", "--augment",
                 "--feature-store", "--unlabelled", "--resume", "--config", "--print-config",
                 "--accelerator", "--devices", "--strategy", "--num-nodes", "--precision"):
        assert flag in proc.stdout, flag


def test_missing_trimaps_gives_one_clear_line(flowers, tmp_path, capsys, monkeypatch):
    """Images there, trimaps missing and their download failing (stubbed, so the same with a network)."""
    data = tmp_path / "data"
    shutil.copytree(flowers / "jpg", data / "jpg")
    asked = no_network(monkeypatch)
    code, _, err = run_main(segmentation.main, ["--loss", "ce", *FAST, "--data-dir", data, "--results-dir",
                                                tmp_path / "r", "--logs-dir", tmp_path / "l"], capsys)
    assert code == 1 and asked == ["https://www.robots.ox.ac.uk/~vgg/data/flowers/17/trimaps.tgz"]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: Oxford17 is missing trimaps.tgz") and "downloads are stubbed in the tests" in line
    assert "17flowers.tgz" not in line  # the images were found
    assert not (tmp_path / "r").exists() and not (tmp_path / "l").exists()  # no run folder for a run that never ran


def test_tiny_image_size_is_refused(flowers):
    proc = run_cli("--loss", "ce", "--image-size", 8, "--data-dir", flowers)
    assert proc.returncode == 2 and "--image-size" in proc.stderr and "Traceback" not in proc.stderr
    assert "at least 32" in proc.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_short_run_on_real_flowers_beats_all_background(shared_oxford17, tmp_path):
    """A randomly initialised frozen ResNet-50 still gives features a 1x1 conv can separate."""
    # the shared folder has no datasplits.mat: prepare_data would lock (and, online, download) in it, so the
    # run reads its images and trimaps through links in a folder of the test's own
    data, untouched = tmp_path / "oxford17", shared_oxford17.stat().st_mtime_ns  # any file made or removed changes it
    data.mkdir()
    for folder in ("jpg", "trimaps"):
        (data / folder).symlink_to(shared_oxford17 / folder, target_is_directory=True)
    proc = run_cli("--loss", "ce", "--backbone", "resnet50", "--weights", "none", "--image-size", 128,
                   "--epochs", 3, "--batch-size", 16, "--accelerator", "cpu", "--data-dir", data,
                   "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs",
                   "--feature-store", tmp_path / "features", timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(next((tmp_path / "results" / "segmentation").glob("*/summary.json")).read_text())
    dm = setup_quietly(Oxford17(data_dir=data, image_size=128, download=False))
    masks = dm.split_masks("val")
    valid = masks != 255
    background_iou = ((masks == 0) & valid).sum().item() / valid.sum().item()
    all_background_miou = background_iou / 2  # flower IoU is 0 when nothing is predicted flower
    # Measured on this data (generated split, 205 val images): all-background 0.337; random frozen
    # ResNet-50 after 3 epochs 0.681 best val mIoU. Bar set with margin.
    assert s["best_val_miou"] > all_background_miou + 0.2, (s["best_val_miou"], all_background_miou)
    assert shared_oxford17.stat().st_mtime_ns == untouched  # not even a lock file came and went there


# ---------------------------------------------------------------- the no-image baseline, sample grids
def test_mean_mask_prediction_by_hand():
    # three 1x5 training masks; per pixel: flower 2/3, flower 1/2 (one ignored), flower 1/3, all ignored, 0/3
    masks = torch.tensor([[[1, 1, 1, 255, 0]], [[1, 255, 0, 255, 0]], [[0, 0, 0, 255, 0]]], dtype=torch.uint8)
    assert mean_mask_prediction(masks).tolist() == [[1, 1, 0, 0, 0]]


def test_no_image_baseline_scores_the_mean_mask_with_the_runs_miou():
    from types import SimpleNamespace

    train_masks = torch.tensor([[[1, 1, 0, 0]], [[1, 0, 0, 0]], [[1, 0, 0, 1]]], dtype=torch.uint8)  # -> [1, 0, 0, 0]
    val = torch.tensor([[[1, 1, 0, 255]]], dtype=torch.uint8)
    # val confusion: flower TP 1, FN 1; background TN 1 -> IoU flower 1/2, background 1/2
    test = torch.tensor([[[0, 0, 0, 0]]], dtype=torch.uint8)
    # test: flower FP 1, no flower anywhere -> IoU flower 0 (torchmetrics' rule), background 3/4
    dm = SimpleNamespace(split_masks=lambda name: {"train": train_masks, "val": val, "test": test}[name])
    base = no_image_baseline(dm)
    assert base["val_miou"] == pytest.approx(0.5) and base["val_iou_flower"] == pytest.approx(0.5)
    assert base["test_iou_flower"] == pytest.approx(0.0) and base["test_miou"] == pytest.approx(0.375)
    assert base["flower_pixels"] == 1


def test_validation_samples_show_several_flower_classes(flowers):
    dm = setup_quietly(Oxford17(flowers, image_size=32, download=False))
    numbers = dm.split_numbers["val"]
    assert len({class_of(n) for n in numbers[:4]}) == 2  # the first images of the split: two of the three classes
    index = dm.val_sample_indices(4)
    assert sorted({class_of(numbers[i]) for i in index}) == [0, 1, 2] and len(set(index)) == 4

    class AllFlower:  # sample_rows asks the module for logits of what the Trainer validates on
        device, training = torch.device("cpu"), False

        def eval(self):
            pass

        def train(self, mode):
            pass

        def logits(self, x, size):
            assert x.shape[1:] == (3, 32, 32)
            return torch.stack([torch.zeros(len(x), *size), torch.ones(len(x), *size)], dim=1)

    rows = sample_rows(AllFlower(), dm, dm, 4)
    assert [label for label, _ in rows] == ["image", "ground truth", "prediction"]
    for i, n in enumerate(numbers[j] for j in index):  # the files, read here
        with Image.open(flowers / "jpg" / f"image_{n:04d}.jpg") as im:
            rgb = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255
        np.testing.assert_allclose(rows[0][1][i].permute(1, 2, 0).numpy(), rgb, atol=1e-6)
        mask = segeval.load_mask(flowers, n, 32)
        want = np.select([mask == 1, mask == 255], [1.0, 0.5], 0.0)
        np.testing.assert_array_equal(rows[1][1][i].numpy(), np.stack([want] * 3).astype(np.float32))
    assert torch.equal(rows[2][1], torch.ones(4, 3, 32, 32))  # all flower: white


def baseline_by_hand(flowers):
    """The no-image baseline from the files: flower where at least half of the labelled training masks are."""
    masks = {split: np.stack([segeval.load_mask(flowers, n, SIZE) for n in segeval.split_numbers(flowers, split)])
             for split in ("train", "val", "test")}
    labelled, flower = (masks["train"] != 255).sum(0), (masks["train"] == 1).sum(0)
    prior = ((2 * flower >= labelled) & (labelled > 0)).astype(np.int64)
    out = {}
    for split in ("val", "test"):
        iou = segeval.iou_from_confusion(np.broadcast_to(prior, masks[split].shape), masks[split])
        out[f"{split}_miou"], out[f"{split}_iou_flower"] = iou["miou"], iou[1]
    return out


def test_summary_output_and_figures_hold_the_baseline(flowers, tmp_path, capsys, monkeypatch):
    """The summary and the printed line carry the no-image baseline; curves.png plots train and val loss and
    val mIoU per epoch with the baseline as a line; predictions.png explains the grey band in a legend."""
    drawn = {}
    real_save = reporting.figures.atomic_save_figure

    def save(fig, path, *args, **kwargs):
        drawn[path.name] = fig
        return real_save(fig, path, *args, **kwargs)

    monkeypatch.setattr(reporting.figures, "atomic_save_figure", save)
    s = train(flowers, tmp_path, "--loss", "ce", "--epochs", 2, "--lr", "0.05", capsys=capsys)
    dm = setup_quietly(Oxford17(flowers, image_size=SIZE, download=False))
    expected = baseline_by_hand(flowers)
    for key in ("val_miou", "test_miou", "val_iou_flower", "test_iou_flower"):
        assert s["baseline"][key] == pytest.approx(expected[key], abs=1e-6), key
    assert sorted(drawn) == ["curves.png", "predictions.png"]

    loss_ax, iou_ax = drawn["curves.png"].axes
    lines = {line.get_label(): line for ax in (loss_ax, iou_ax) for line in ax.get_lines()}
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train/loss", "val/loss"]
    for key in ("train/loss", "val/loss", "val/miou"):
        assert list(lines[key].get_xdata()) == [1, 2]
        assert list(lines[key].get_ydata()) == pytest.approx([h[key] for h in s["history"]], abs=1e-9)
    [baseline] = [line for line in iou_ax.get_lines() if line.get_label().startswith("no-image baseline")]
    assert list(baseline.get_ydata()) == pytest.approx([expected["val_miou"]] * 2)
    assert f"({expected['val_miou']:.3f})" in baseline.get_label()
    assert [t.get_text() for t in iou_ax.get_legend().get_texts()] == ["val/miou", baseline.get_label()]

    fig = drawn["predictions.png"]
    [legend] = fig.legends
    colours = {t.get_text(): tuple(p.get_facecolor()[:3]) for t, p in zip(legend.get_texts(), legend.get_patches())}
    assert colours == MASK_COLOURS and (0.5, 0.5, 0.5) in colours.values()
    # the grey of the legend is exactly the ground-truth pixels that the trimaps' band makes 255
    truth_axes = [ax for ax in fig.axes if ax.get_subplotspec().rowspan.start == 1]
    index = dm.val_sample_indices(6)
    assert len(truth_axes) == len(index) == 6
    for ax, i in zip(sorted(truth_axes, key=lambda a: a.get_subplotspec().colspan.start), index):
        shown = np.asarray(ax.get_images()[0].get_array())
        band = segeval.load_mask(flowers, dm.split_numbers["val"][i], SIZE) == 255
        assert band.any()
        np.testing.assert_array_equal(np.all(shown == 0.5, axis=-1), band)
    assert f"best checkpoint (epoch {s['best_val_miou_epoch']})" in fig.get_suptitle()


def test_summary_line_is_printed(flowers, tmp_path, capsys):
    out = ["--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs", "--run-name", "r"]
    code, stdout, err = run_main(segmentation.main, ["--loss", "iou", *FAST, "--epochs", 1, "--data-dir", flowers,
                                                     *out], capsys)
    assert code == 0, err[-2000:]
    s = summary(tmp_path / "results", "segmentation", "r")
    assert (f"no-image baseline (mean training mask): val mIoU {s['baseline']['val_miou']:.4f}, "
            f"test mIoU {s['baseline']['test_miou']:.4f}") in stdout


# ---------------------------------------------------------------- head-only checkpoints
@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "resnet50"])
def test_ten_epoch_checkpoints_hold_the_head_and_the_trunk_identity_in_under_1_mb(flowers, tmp_path, backbone):
    s = train(flowers, tmp_path, "--loss", "ce", "--epochs", 10, "--backbone", backbone, "--lr", "0.05")
    assert s["epochs"] == 10
    files = [s["checkpoints"]["best"], s["checkpoints"]["last"], s["weights_file"]]
    assert files[1].endswith("last.ckpt") and files[2].endswith("model.pt")
    trunk = build_deeplabv3(backbone, "none").trunk_identity()
    for path in files:
        size = Path(path).stat().st_size
        assert size <= MB, (path, size)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
        assert shapes == {f"{segeval.HEAD}.weight": (2, 256, 1, 1), f"{segeval.HEAD}.bias": (2,)}  # 514 numbers
        assert checkpoint["trunk"] == trunk
    last = torch.load(files[1], map_location="cpu", weights_only=True)
    assert last["epoch"] == 9 and len(last["optimizer_states"][0]["state"]) == 2  # Adam's moments of the head only
    # loading rebuilds the trunk: the whole network's logits equal those of a fresh one given the head
    module = load_module(segmentation.SegmentationModule, files[1], "segmentation").eval()
    images, _ = segeval.load_split(flowers, "val", SIZE)
    with torch.no_grad():
        got = module(images)
    torch.testing.assert_close(got, segeval.checkpoint_logits(files[1], images, len(images)), atol=1e-5, rtol=0)


@pytest.fixture
def standin_home(tmp_path, monkeypatch):
    """A TORCH_HOME with stand-in 'COCO' weights for MobileNetV3 (random values, the real file name)."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    write_standin("mobilenet_v3_large", home, seed=0)
    return home


def test_loading_refuses_a_trunk_whose_identity_differs_in_one_line(flowers, tmp_path, standin_home, capsys):
    small = ("--loss", "ce", "--epochs", 1, "--backbone", "mobilenet_v3_large")  # the identity is what matters here
    coco = train(flowers, tmp_path, *small, "--weights", "coco", run="coco", capsys=capsys)
    plain = train(flowers, tmp_path, *small, run="none", capsys=capsys)
    coco_ckpt, plain_ckpt = coco["checkpoints"]["last"], plain["checkpoints"]["last"]
    checkpoint = torch.load(coco_ckpt, map_location="cpu", weights_only=True)
    assert checkpoint["trunk"]["weights"] == "coco" and checkpoint["trunk"]["standin"] is True
    assert len(checkpoint["state_dict"]) == 2 and Path(coco_ckpt).stat().st_size <= MB
    load_module(segmentation.SegmentationModule, coco_ckpt, "segmentation")  # its own trunk: accepted

    # a checkpoint whose recorded sha256 is not that of the weights file here
    checkpoint["trunk"]["sha256"] = "0" * 64
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    with pytest.raises(UserError, match="frozen trunk is not the one built here") as info:
        load_module(segmentation.SegmentationModule, tampered, "segmentation")
    assert "sha256 000000000000" in str(info.value) and "\n" not in str(info.value)
    # a random ('none') trunk's head where the COCO weights are used
    with pytest.raises(UserError) as info:
        segmentation.SegmentationModule.load_from_checkpoint(plain_ckpt, weights="coco", weights_only=True)
    here = f"here: mobilenet_v3_large, {Path(weights_path('mobilenet_v3_large')).name} sha256 "
    assert "(checkpoint: mobilenet_v3_large, random seed 0; " + here in str(info.value)

    # the weights file replaced since training (other values, same name): --predict refuses in one line
    write_standin("mobilenet_v3_large", standin_home, seed=1, force=True)
    image = tmp_path / "flower.png"
    shutil.copy(flowers / "jpg" / "image_0001.jpg", image)
    capsys.readouterr()
    code, _, err = run_main(segmentation.main, ["--predict", image, "--checkpoint", coco_ckpt, "--accelerator", "cpu",
                                                "--out", tmp_path / "masks"], capsys)
    assert code == 1 and "Traceback" not in err
    [line] = error_lines(err)
    assert line.startswith("error: the checkpoint's frozen trunk is not the one built here") and "sha256" in line
    assert not (tmp_path / "masks").exists()


def test_resume_continues_a_head_only_checkpoint_exactly(flowers, tmp_path, capsys):
    """1 epoch, then --resume last to 3, equals 3 epochs in one go (weights, optimiser, history)."""
    straight = train(flowers, tmp_path / "a", "--loss", "ce", "--epochs", 3, "--lr", "0.05", capsys=capsys)
    first = train(flowers, tmp_path / "b", "--loss", "ce", "--epochs", 1, "--lr", "0.05", capsys=capsys)
    after_1 = torch.load(first["checkpoints"]["last"], weights_only=True)["state_dict"]  # resuming rewrites the file
    assert len(after_1) == 2
    resumed = train(flowers, tmp_path / "b", "--loss", "ce", "--epochs", 3, "--lr", "0.05", "--resume", "last",
                    capsys=capsys)  # in the run folder of the checkpoint
    assert resumed["resumed_from"] == first["checkpoints"]["last"] and resumed["epochs"] == 3
    assert resumed["history"] == pytest.approx(straight["history"])
    a, b = (torch.load(s["checkpoints"]["last"], weights_only=True) for s in (straight, resumed))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, atol=1e-7, rtol=0)
    assert not torch.equal(a["state_dict"][f"{segeval.HEAD}.weight"], after_1[f"{segeval.HEAD}.weight"])


def test_predict_uses_the_best_or_the_last_head_only_checkpoint(flowers, tmp_path, capsys, monkeypatch):
    """Epoch 2 ends with a layer that calls every pixel flower, so best (epoch 1) and last differ;
    --checkpoint best|last finds each in the newest finished run and predicts with it."""

    segeval.plant_all_flower_epoch_2(monkeypatch, segmentation.SegmentationModule)
    s = train(flowers, tmp_path, "--loss", "ce", "--epochs", 2, "--lr", "0.05", capsys=capsys)
    assert s["best_val_miou_epoch"] == 1 and s["checkpoints"]["best"].endswith("best-epoch001.ckpt")
    number = segeval.split_numbers(flowers, "test")[0]
    image = flowers / "jpg" / f"image_{number:04d}.jpg"
    with Image.open(image) as im:
        width, height = im.size
    x = torch.from_numpy(segeval.load_image(flowers, number, SIZE))[None]
    masks = {}
    for which in ("best", "last"):
        out = tmp_path / f"masks-{which}"
        code, _, err = run_main(segmentation.main, ["--predict", image, "--checkpoint", which, "--accelerator", "cpu",
                                                    "--results-dir", tmp_path / "results", "--logs-dir",
                                                    tmp_path / "logs", "--out", out], capsys)
        assert code == 0, err[-2000:]
        record = json.loads((out / "predictions.json").read_text())
        assert record["checkpoint"] == s["checkpoints"][which]
        with Image.open(out / f"image_{number:04d}_mask.png") as im:
            masks[which] = np.asarray(im)
        want = segeval.checkpoint_logits(s["checkpoints"][which], x, 1).argmax(dim=1)[0].numpy().astype(np.uint8)
        want = np.asarray(Image.fromarray(want * 255).resize((width, height), Image.NEAREST))
        np.testing.assert_array_equal(masks[which], want)
    assert (masks["last"] == 255).all() and not (masks["best"] == 255).all()
