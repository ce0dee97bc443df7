"""--predict: use a trained model on your own images (colorization.py and segmentation.py).

One checkpoint per task is trained for one epoch on the fixtures (in process, through the CLI's
main); predictions run through the CLI's main too, and once in a subprocess for the exit code and
stderr of a partly failing call. The decoding limits themselves are tested in test_decode.py.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import colorization
import segmentation
from training.checkpoints import STAMP
from training.runs import find_checkpoint
from inference.images import crop_to, load_image, pad_to_multiple
from tests.conftest import REPO
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.oxford17 import write_oxford17
from errors import UserError

ODD_SIZES = {"rgb": (37, 23), "rgba": (50, 61), "grey": (3, 5), "grey16": (37, 23), "palette": (29, 30)}


def _train(main, argv):
    """Train in process through the CLI's main."""
    assert main(argv) == 0


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    write_cifar_folder(root / "cifar", n_per_batch=8, horse_every=2)
    _train(colorization.main, ["UNet", "--epochs", "1", "--batch-size", "8", "--num-filters", "8",
                               "--data-dir", str(root / "cifar"), "--accelerator", "cpu",
                               "--results-dir", str(root / "results"), "--logs-dir", str(root / "logs")])
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Small images of odd sizes and every mode the issue names, plus bad inputs."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)

    def pixels(name, channels):
        w, h = ODD_SIZES[name]
        return rng.integers(0, 256, (h, w, channels) if channels else (h, w), dtype=np.uint8)

    Image.fromarray(pixels("rgb", 3)).save(folder / "rgb.jpg", quality=95)
    Image.fromarray(pixels("rgba", 4), "RGBA").save(folder / "rgba.png")
    Image.fromarray(pixels("grey", 0), "L").save(folder / "grey.png")
    w, h = ODD_SIZES["grey16"]
    Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)).save(folder / "grey16.png")
    Image.fromarray(pixels("palette", 3)).convert("P").save(folder / "palette.gif")
    (folder / "not-an-image.png").write_text("this is text, not a PNG")
    (folder / "a-folder").mkdir()
    return folder


def good_images(folder):
    return [folder / n for n in ("rgb.jpg", "rgba.png", "grey.png", "grey16.png", "palette.gif")]


def dirs(root):
    return ["--results-dir", str(root / "results"), "--logs-dir", str(root / "logs")]


def run_cli(script, *args):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


# ---------------------------------------------------------------- reading images

def test_grey_is_computed_exactly_as_for_training(tmp_path):
    from data.cifar import TRAIN_BATCHES, horses
    from color.palette import load_palette

    folder = write_cifar_folder(tmp_path, n_per_batch=4, horse_every=2)
    grey, _, rgb = horses(folder, TRAIN_BATCHES[:1], load_palette())
    Image.fromarray((rgb[0] * 255).round().byte().permute(1, 2, 0).numpy()).save(tmp_path / "horse.png")
    assert torch.equal(load_image(tmp_path / "horse.png").grey(), grey[0])  # bit for bit


def test_modes_become_rgb_and_grey(images, tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent: composited over white
    rgba[0, 1] = (10, 20, 30, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    loaded = load_image(tmp_path / "alpha.png")
    assert loaded.rgb8()[0, 0].tolist() == [255, 255, 255] and loaded.rgb8()[0, 1].tolist() == [10, 20, 30]

    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    grey16 = load_image(tmp_path / "sixteen.png")
    assert grey16.mode.startswith("I")
    assert torch.allclose(grey16.grey()[0, 0], torch.tensor([0, 257, 32768, 65535]) / 65535.0)  # not clipped at 255

    for name, (w, h) in ODD_SIZES.items():
        image = load_image(next(images.glob(f"{name}.*")))
        assert image.size == (w, h) and image.rgb().shape == (3, h, w) and image.grey().shape == (1, h, w)
        assert 0 <= image.grey().min() and image.grey().max() <= 1


def test_padding_to_a_multiple_of_four_crops_back():
    for h, w in [(1, 1), (2, 7), (5, 3), (23, 37), (8, 12)]:
        x = torch.rand(1, 1, h, w)
        padded, size = pad_to_multiple(x)
        assert padded.shape[-2] % 4 == 0 and padded.shape[-1] % 4 == 0
        assert padded.shape[-2] - h < 4 and padded.shape[-1] - w < 4
        assert torch.equal(crop_to(padded, size), x)
        assert torch.equal(padded[..., -1, -1], x[..., -1, -1])  # edge pixels repeated, not zeros


def test_bad_image_files_are_one_clear_error(images):
    for path, words in [(images / "missing.jpg", "not found"), (images / "not-an-image.png", "not an image"),
                        (images / "a-folder", "folder")]:
        with pytest.raises(UserError, match=words) as info:
            load_image(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- colorization

def test_colorize_images_of_any_size_and_mode(colour_run, images, capsys):
    assert colorization.main(["UNet", "--predict", *map(str, good_images(images)), *dirs(colour_run)]) == 0
    out = next((colour_run / "results" / "colorization" / "predict").iterdir())
    for name, size in ODD_SIZES.items():
        with Image.open(out / f"{name}_colour.png") as im:
            assert im.mode == "RGB" and im.size == size, name
    with Image.open(out / "predictions.png") as im:
        im.verify()
    record = json.loads((out / "predictions.json").read_text())
    assert record["model"] == "UNet" and record["decode"] == "argmax" and record["failed"] == []
    assert "best-" in record["checkpoint"] and record["palette"] == "stored in the checkpoint"
    assert len(record["images"]) == 5 and "_colour.png" in capsys.readouterr().out


def test_checkpoint_stores_the_training_palette(colour_run):
    from color.palette import load_palette

    path = find_checkpoint("last", "colorization", colour_run / "results", colour_run / "logs", "UNet")[0]
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint[STAMP]["task"] == "colorization"
    assert torch.equal(torch.tensor(checkpoint["palette"]), load_palette())


def test_old_checkpoints_without_a_palette_use_their_runs_or_the_given_one(colour_run, tmp_path):
    from color.palette import load_palette
    from inference.colorize import checkpoint_palette

    path = find_checkpoint("last", "colorization", colour_run / "results", colour_run / "logs", "UNet")[0]
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint_palette(checkpoint, path, colour_run / "results")[1] == "stored in the checkpoint"
    del checkpoint["palette"]
    palette, source = checkpoint_palette(checkpoint, path, colour_run / "results")
    assert torch.equal(palette, load_palette()) and "summary.json" in source  # the run's summary says "default"
    custom = load_palette().flip(0).numpy()
    np.save(tmp_path / "custom.npy", custom)
    palette, source = checkpoint_palette(checkpoint, path, colour_run / "results", tmp_path / "custom.npy")
    assert torch.equal(palette, torch.from_numpy(custom)) and "--palette" in source
    with pytest.warns(UserWarning, match="shipped palette"):
        checkpoint_palette(checkpoint, path, tmp_path / "no-results")


def test_annealed_decoding_differs_from_argmax_and_is_written(colour_run, images, tmp_path):
    image = images / "rgb.jpg"
    for method in ("argmax", "annealed"):
        extra = ["--temperature", "0.5"] if method == "annealed" else []
        assert colorization.main(["UNet", "--predict", str(image), "--decode", method, *extra,
                                  "--out", str(tmp_path / method), *dirs(colour_run)]) == 0
    argmax, annealed = (np.asarray(Image.open(tmp_path / m / "rgb_colour.png")) for m in ("argmax", "annealed"))
    assert argmax.shape == annealed.shape == (23, 37, 3)
    assert np.abs(argmax.astype(int) - annealed).mean() > 1
    record = json.loads((tmp_path / "annealed" / "predictions.json").read_text())
    assert record["decode"] == "annealed" and record["temperature"] == 0.5


def test_default_output_folder_is_new_every_call(colour_run, images):
    predict = colour_run / "results" / "colorization" / "predict"
    argv = ["UNet", "--predict", str(images / "grey.png"), "--checkpoint", "last", *dirs(colour_run)]
    assert colorization.main(argv) == 0
    before = {p: sorted(f.name for f in p.iterdir()) for p in predict.iterdir()}
    stamps = {p: p.stat().st_mtime_ns for p in predict.rglob("*")}
    assert colorization.main(argv) == 0
    assert len(list(predict.iterdir())) == len(before) + 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_partial_failure_exits_1_and_writes_the_good_images(colour_run, images, tmp_path):
    bad = [images / "not-an-image.png", images / "missing.jpg", images / "a-folder"]
    proc = run_cli("colorization.py", "UNet", "--predict", images / "rgb.jpg", *bad, images / "grey.png",
                   "--out", tmp_path, *dirs(colour_run))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4 and "3 of 5 images" in errors[-1]
    for path, line in zip(bad, errors):
        assert str(path) in line
    assert (tmp_path / "rgb_colour.png").is_file() and (tmp_path / "grey_colour.png").is_file()
    assert len(json.loads((tmp_path / "predictions.json").read_text())["failed"]) == 3


def test_checkpoint_of_another_model_or_task_is_refused(colour_run, images, capsys):
    unet = find_checkpoint("last", "colorization", colour_run / "results", colour_run / "logs", "UNet")[0]
    argv = ["--predict", str(images / "rgb.jpg"), "--checkpoint", str(unet), "--out", str(colour_run / "x")]
    assert colorization.main(["PoolUpsampleNet", *argv]) == 1
    assert "checkpoint of UNet, not of PoolUpsampleNet" in capsys.readouterr().err
    assert segmentation.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a colorization checkpoint (UNet), but this is segmentation.py" in err[0]
    assert not (colour_run / "x").exists()


def test_prediction_flags_need_predict(capsys):
    with pytest.raises(SystemExit) as info:
        colorization.parse_args(["UNet", "--checkpoint", "last"])
    assert info.value.code == 2 and "--predict" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        segmentation.main(["--epochs", "1"])  # training still needs --loss
    assert info.value.code == 2 and "--loss" in capsys.readouterr().err


# ---------------------------------------------------------------- checkpoint resolution

def _fake_run(root, name, model, age, finished=True, task="colorization"):
    logs = root / "logs" / task / name / "checkpoints"
    logs.mkdir(parents=True)
    for ckpt in ("best-epoch003.ckpt", "last.ckpt"):
        (logs / ckpt).write_bytes(b"")
    results = root / "results" / task / name
    results.mkdir(parents=True)
    if finished:
        (results / "summary.json").write_text(json.dumps({"task": task, "model": model, "settings": {
            "task": task, "hyperparameters": {"model": model}}}))
        stamp = time.time() - age
        os.utime(results / "summary.json", (stamp, stamp))
    return logs


def test_best_and_last_come_from_the_newest_finished_run(tmp_path):
    old_unet = _fake_run(tmp_path, "unet-old", "UNet", age=300)
    new_unet = _fake_run(tmp_path, "unet-new", "UNet", age=200)
    pool = _fake_run(tmp_path, "pool", "PoolUpsampleNet", age=100)
    _fake_run(tmp_path, "unet-running", "UNet", age=0, finished=False)  # newest, but not finished
    (tmp_path / "results" / "colorization" / "predict").mkdir()  # prediction folders are not runs

    def resolve(spec, model):
        return find_checkpoint(spec, "colorization", tmp_path / "results", tmp_path / "logs", model)[0]

    assert resolve("best", "UNet") == new_unet / "best-epoch003.ckpt"
    assert resolve("last", "UNet") == new_unet / "last.ckpt"
    assert resolve("last", "PoolUpsampleNet") == pool / "last.ckpt"
    assert resolve("best", None) == pool / "best-epoch003.ckpt"  # any model when none is named
    assert resolve(str(old_unet / "last.ckpt"), "UNet") == old_unet / "last.ckpt"
    with pytest.raises(UserError, match="no finished colorization run of ConvTransposeNet"):
        resolve("best", "ConvTransposeNet")
    with pytest.raises(UserError, match="not found"):
        resolve(str(tmp_path / "nope.ckpt"), "UNet")


# ---------------------------------------------------------------- segmentation
# Training DeepLabV3 even for one epoch on the fixture takes ~15 s on 2 shared cores: marked slow.

@pytest.fixture(scope="module")
def flower_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowers")
    write_oxford17(root / "oxford17", n_classes=2, per_class=4)
    _train(segmentation.main, ["--loss", "ce", "--backbone", "mobilenet_v3_large", "--weights", "none",
                               "--image-size", "64", "--batch-size", "4", "--epochs", "1", "--accelerator", "cpu",
                               "--data-dir", str(root / "oxford17"), *dirs(root)])
    return root


@pytest.mark.slow
def test_segment_images_of_any_size_and_mode(flower_run, images, capsys):
    assert segmentation.main(["--predict", *map(str, good_images(images)), "--checkpoint", "last",
                              *dirs(flower_run)]) == 0
    out = next((flower_run / "results" / "segmentation" / "predict").iterdir())
    record = json.loads((out / "predictions.json").read_text())
    assert record["preprocessing"]["image_size"] == 64 and record["hyperparameters"]["backbone"] == "mobilenet_v3_large"
    shares = {}
    for name, size in ODD_SIZES.items():
        with Image.open(out / f"{name}_mask.png") as im:
            mask = np.asarray(im)
            assert im.mode == "L" and im.size == size
        assert set(np.unique(mask)) <= {0, 255}
        with Image.open(out / f"{name}_overlay.png") as im:
            assert im.mode == "RGB" and im.size == size
        shares[name] = float((mask == 255).mean())
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("input,width,height,flower_share") and len(rows) == 6
    for entry in record["images"]:
        name = os.path.splitext(os.path.basename(entry["input"]))[0]
        assert entry["flower_share"] == pytest.approx(shares[name], abs=1e-6)
    assert capsys.readouterr().out.count("flower") >= 5


def test_mask_is_made_at_training_size_and_resized_back_nearest():
    """The model sees image_size x image_size; its 0/1 mask goes back to the image's (H, W) by
    nearest neighbour, as Pillow samples it (the pixel whose centre is nearest: source index
    floor((i + 0.5) * scale), never a tie for the odd factors 3 and 5 used here).

    A random 0/1 mask shrunk 30x30 -> (H 10, W 6) must be exactly mask[1::3, 2::5]. Upscaling
    would not tell: Pillow resizes one axis at a time and rounds in between, so a 0/1 bilinear
    upscale equals nearest neighbour; when shrinking, bilinear (antialiased) averages 3x5 pixels."""
    from inference.segment import segment

    prep = {"image_size": 30, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    pattern = np.random.default_rng(0).integers(0, 2, (30, 30), dtype=np.uint8)

    class FixedMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = None
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            self.seen = tuple(x.shape)
            flower = torch.from_numpy(pattern).float().expand(x.shape[0], -1, -1)
            return torch.stack([1 - flower, flower], dim=1)

    stub = FixedMask()
    mask = segment(stub, np.zeros((10, 6, 3), np.uint8), prep)
    assert stub.seen == (1, 3, 30, 30) and mask.shape == (10, 6) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, pattern[1::3, 2::5])


@pytest.mark.slow
def test_model_and_preprocessing_come_from_the_checkpoint(flower_run):
    from inference.segment import load_segmenter

    best, last = (find_checkpoint(s, "segmentation", flower_run / "results", flower_run / "logs")[0]
                  for s in ("best", "last"))
    assert best.name.startswith("best-") and last.name == "last.ckpt" and best.parent == last.parent
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint[STAMP]["task"] == "segmentation" and checkpoint["preprocessing"]["image_size"] == 64
    model, prep, hp = load_segmenter(last)
    assert prep == checkpoint["preprocessing"] and hp["backbone"] == model.backbone_name == "mobilenet_v3_large"
    trained = checkpoint["state_dict"]["model.model.classifier.4.weight"]
    assert torch.equal(model.last_layer.weight, trained) and not model.training


@pytest.mark.slow
def test_segmentation_checkpoint_in_colorization_is_refused(flower_run, images, capsys):
    path = find_checkpoint("last", "segmentation", flower_run / "results", flower_run / "logs")[0]
    assert colorization.main(["--predict", str(images / "rgb.jpg"), "--checkpoint", str(path),
                              *dirs(flower_run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a segmentation checkpoint, but this is colorization.py" in err[0]


@pytest.mark.slow
def test_segmentation_partial_failure_exit_code(flower_run, images, tmp_path, capsys):
    code = segmentation.main(["--predict", str(images / "missing.jpg"), str(images / "rgba.png"),
                              "--out", str(tmp_path), *dirs(flower_run)])
    err = capsys.readouterr().err
    assert code == 1 and "missing.jpg" in err and "1 of 2 images" in err
    assert (tmp_path / "rgba_mask.png").is_file() and (tmp_path / "rgba_overlay.png").is_file()
