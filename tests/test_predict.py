"""--predict: use a trained model on your own images (colorization.py and segmentation.py).

One run per task is trained for one epoch on the fixtures, once per test session (the `colour_run` and
`flower_run` fixtures of tests/fixtures/trained.py, which tests/test_export.py and tests/test_demo.py use
too). The colours and masks written are compared with a second, plain implementation in this file
(numpy padding, a net built from the checkpoint's tensors, Pillow's resizing), pixel for pixel. Prediction
runs through the CLI's main, and once in a subprocess for the exit code, stderr and the progress bar of a
folder with a corrupt file.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import colorization
import segmentation
from errors import UserError
from inference.checkpoints import find_checkpoint
from inference.cli import BAR_FROM, IMAGE_EXTENSIONS, expand_inputs
from inference.images import crop_to, load_image, pad_to_multiple
from models.registry import MODELS
from tests.clirun import error_lines, run_main
from tests.conftest import REPO
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.trained import FLOWER_SIZE, dirs

TEMPERATURE = 0.38  # color/palette.py DEFAULT_TEMPERATURE, the paper's


def checkpoint_of(root, task, which):
    return find_checkpoint(which, task, root / "results", root / "logs", {"model": "UNet"} if task ==
                           "colorization" else None)[0]


def run_cli(script, *args):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


# ---------------------------------------------------------------- the second implementation

def colour_net(path):
    """(net, palette float32 (K, 3)) rebuilt from a checkpoint's tensors alone."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hp = checkpoint["hyper_parameters"]
    net = MODELS[hp["model"]](kernel=hp["kernel"], num_in_channels=1, num_filters=hp["num_filters"],
                              num_colours=len(hp["palette"]))
    net.load_state_dict({k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")})
    return net.eval(), np.asarray(hp["palette"], dtype=np.float32)


def expected_colour(path, grey, method="argmax"):
    """uint8 (H, W, 3): grey float32 (H, W) edge-padded to multiples of 4 with numpy, through the net, cropped,
    decoded by argmax or the annealed mean (softmax(logits / T) times the palette), scaled to 0..255."""
    net, palette = colour_net(path)
    h, w = grey.shape
    padded = np.pad(grey, ((0, -h % 4), (0, -w % 4)), mode="edge")
    with torch.no_grad():
        logits = net(torch.from_numpy(padded)[None, None])[0, :, :h, :w].numpy()
    if method == "argmax":
        rgb = palette[logits.argmax(axis=0)]
    else:
        z = logits / np.float32(TEMPERATURE)
        p = np.exp(z - z.max(axis=0))
        rgb = np.einsum("khw,kc->hwc", p / p.sum(axis=0), palette)
    return np.rint(np.clip(rgb, 0, 1) * np.float32(255)).astype(np.uint8)


def grey_of(rgb8):
    """(R + G + B) / 765 in float32, the training inputs' greyscale."""
    return rgb8.astype(np.int64).sum(axis=-1).astype(np.float32) / np.float32(765)


def read(path):
    with Image.open(path) as im:
        return np.asarray(im)


# ---------------------------------------------------------------- images of every kind, their expected pixels

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """{name: (file, expected greyscale float32 (H, W), expected 8-bit RGB (H, W, 3))}: odd sizes, every mode
    the loader handles, the expected values worked out here from the pixels written."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = {}

    rgb = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    out["rgb"] = (folder / "rgb.png", grey_of(rgb), rgb)

    rgba = rng.integers(0, 256, (61, 50, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    alpha = rgba[..., 3:].astype(np.float32) / 255
    over_white = np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    out["rgba"] = (folder / "rgba.png", grey_of(over_white), over_white)

    grey = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    Image.fromarray(grey, "L").save(folder / "grey.png")
    out["grey"] = (folder / "grey.png", grey.astype(np.float32) * 3 / np.float32(765), np.repeat(grey[..., None], 3, 2))

    grey16 = rng.integers(0, 65536, (23, 37)).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    eight = np.rint(grey16 * (255 / 65535)).astype(np.uint8)
    out["grey16"] = (folder / "grey16.png", grey16.astype(np.float32) * 3 / np.float32(3 * 65535),
                     np.repeat(eight[..., None], 3, 2))

    colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (30, 29), dtype=np.uint8)
    palette_image = Image.fromarray(index, "P")
    palette_image.putpalette(colours.reshape(-1).tolist())
    palette_image.save(folder / "palette.gif")
    out["palette"] = (folder / "palette.gif", grey_of(colours[index]), colours[index])

    Image.fromarray(rgb).save(folder / "photo.jpg", quality=90)
    with Image.open(folder / "photo.jpg") as im:  # lossy: the decoded pixels are the truth
        decoded = np.asarray(im.convert("RGB"))
    out["photo"] = (folder / "photo.jpg", grey_of(decoded), decoded)
    return out


# ---------------------------------------------------------------- reading images

def test_grey_is_computed_exactly_as_for_training(tmp_path):
    from color.palette import load_palette
    from data.cifar import TRAIN_BATCHES, horses

    folder = write_cifar_folder(tmp_path, n_per_batch=4, horse_every=2)
    grey, _, rgb = horses(folder, TRAIN_BATCHES[:1], load_palette())
    Image.fromarray((rgb[0] * 255).round().byte().permute(1, 2, 0).numpy()).save(tmp_path / "horse.png")
    assert torch.equal(load_image(tmp_path / "horse.png").grey(), grey[0])  # bit for bit


def test_every_mode_gives_the_pixels_worked_out_by_hand(images):
    assert len(images) == 6
    for name, (path, grey, rgb8) in images.items():
        image = load_image(path)
        h, w = grey.shape
        assert image.size == (w, h), name
        np.testing.assert_array_equal(image.rgb8(), rgb8, err_msg=name)
        np.testing.assert_allclose(image.grey()[0].numpy(), grey, rtol=0, atol=1e-7, err_msg=name)
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # hidden colour under alpha 0 must not leak
    rgba[0, 1] = (10, 20, 30, 255)
    Image.fromarray(rgba, "RGBA").save(images["rgb"][0].parent / "alpha.png")
    assert load_image(images["rgb"][0].parent / "alpha.png").rgb8().tolist() == [[[255, 255, 255], [10, 20, 30]]]
    values = np.array([[0, 257, 32768, 65535]], np.uint16)  # 16 bits are kept, not clipped at 255
    Image.fromarray(values).save(images["rgb"][0].parent / "sixteen.png")
    assert load_image(images["rgb"][0].parent / "sixteen.png").grey()[0, 0].tolist() == pytest.approx(
        [0, 257 / 65535, 32768 / 65535, 1], abs=1e-7)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    image.save(tmp_path / "camera.png", exif=exif)
    loaded = load_image(tmp_path / "camera.png")
    assert loaded.size == (6, 10)
    np.testing.assert_array_equal(loaded.rgb8(), np.rot90(pixels, k=-1))


def test_padding_to_a_multiple_of_four_crops_back():
    for h, w in [(1, 1), (2, 7), (5, 3), (23, 37), (8, 12)]:
        x = torch.rand(1, 1, h, w)
        padded, size = pad_to_multiple(x)
        assert padded.shape[-2:] == (h + (-h % 4), w + (-w % 4))
        np.testing.assert_array_equal(padded[0, 0].numpy(), np.pad(x[0, 0].numpy(), ((0, -h % 4), (0, -w % 4)),
                                                                     mode="edge"))
        assert torch.equal(crop_to(padded, size), x)


def test_bad_image_files_are_one_clear_error(tmp_path):
    (tmp_path / "text.png").write_text("this is text, not a PNG")
    (tmp_path / "a-folder").mkdir()
    good = tmp_path / "good.jpg"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 99).save(good)
    (tmp_path / "half.jpg").write_bytes(good.read_bytes()[:200])
    for name, words in [("missing.jpg", "not found"), ("text.png", "not an image"), ("a-folder", "is a folder"),
                        ("half.jpg", "truncated")]:
        with pytest.raises(UserError, match=words) as info:
            load_image(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- which files: folders, globs, names

def touch(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_folders_are_searched_recursively_for_image_files(tmp_path):
    touch(tmp_path, "a.jpg", "B.JPEG", "notes.txt", "noext", "sub/c.png", "sub/deep/d.webp", "sub/deep/e.TIF",
          ".hidden.png", "sub/._f.jpg", ".cache/g.png")
    found, missing = expand_inputs([str(tmp_path)])
    assert missing == []
    assert found == [(tmp_path / "B.JPEG", Path("B")), (tmp_path / "a.jpg", Path("a")),
                     (tmp_path / "sub/c.png", Path("sub/c")), (tmp_path / "sub/deep/d.webp", Path("sub/deep/d")),
                     (tmp_path / "sub/deep/e.TIF", Path("sub/deep/e"))]
    touch(tmp_path, "empty/readme.md")
    assert expand_inputs([str(tmp_path / "empty")])[1] == [
        (str(tmp_path / "empty"), f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder {tmp_path / 'empty'}")]


def test_globs_keep_the_path_below_their_fixed_part(tmp_path):
    touch(tmp_path, "x/a.png", "x/b.jpg", "x/y/c.png", "x/y/z/d.png")
    assert expand_inputs([f"{tmp_path}/x/*.png"])[0] == [(tmp_path / "x/a.png", Path("a"))]
    assert expand_inputs([f"{tmp_path}/x/**/*.png"])[0] == [
        (tmp_path / "x/a.png", Path("a")), (tmp_path / "x/y/c.png", Path("y/c")), (tmp_path / "x/y/z/d.png",
                                                                                 Path("y/z/d"))]
    assert expand_inputs([f"{tmp_path}/x/*/c.png"])[0] == [(tmp_path / "x/y/c.png", Path("y/c"))]
    assert expand_inputs([f"{tmp_path}/x/*.gif"]) == ([], [(f"{tmp_path}/x/*.gif", "the pattern matches no file")])
    # files one by one go to the top of the output folder; a missing one is reported when it is read
    assert expand_inputs([str(tmp_path / "x/y/z/d.png"), str(tmp_path / "gone.png")])[0] == [
        (tmp_path / "x/y/z/d.png", Path("d")), (tmp_path / "gone.png", Path("gone"))]


def test_outputs_of_the_same_name_are_numbered(colour_run, tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((8, 8, 3), 50 if folder == "one" else 200, np.uint8)).save(tmp_path / folder / "x.png")
    code, _, _ = run_main(colorization.main, ["--predict", tmp_path / "one", tmp_path / "two/x.png", "--out",
                                              tmp_path / "out", *dirs(colour_run)])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["predictions.png", "x-2_colour.png",
                                                                        "x_colour.png"]
    best = checkpoint_of(colour_run, "colorization", "best")
    for name, value in (("x", 50), ("x-2", 200)):
        np.testing.assert_array_equal(read(tmp_path / "out" / f"{name}_colour.png"),
                                      expected_colour(best, np.full((8, 8), np.float32(3 * value) / 765)))


# ---------------------------------------------------------------- colorization

def test_colours_are_the_models_for_every_mode_and_size(colour_run, images, tmp_path, capsys):
    files = [path for path, _, _ in images.values()]
    code, out, err = run_main(colorization.main, ["UNet", "--predict", *files, "--out", tmp_path, *dirs(colour_run)],
                              capsys)
    assert code == 0, err
    best = checkpoint_of(colour_run, "colorization", "best")
    distinct = set()
    for name, (path, grey, _) in images.items():
        written = read(tmp_path / f"{path.stem}_colour.png")
        np.testing.assert_array_equal(written, expected_colour(best, grey), err_msg=name)
        distinct |= {tuple(c) for c in written.reshape(-1, 3)}
    assert len(distinct) >= 3  # the comparison sees more than one flat colour
    assert sum(line.endswith("_colour.png") for line in out.splitlines()) == len(images)  # a line per image
    record = json.loads((tmp_path / "predictions.json").read_text())
    assert record["model"] == "UNet" and record["decode"] == "argmax" and record["failed"] == []
    assert record["checkpoint"] == str(best) and record["checkpoint_choice"].startswith("best of run ")
    assert record["palette"] == torch.load(best, weights_only=True)["hyper_parameters"]["palette"]
    assert [entry["size"] for entry in record["images"]] == [list(g.shape[::-1]) for _, g, _ in images.values()]
    with Image.open(tmp_path / "predictions.png") as im:
        im.verify()


def test_annealed_decoding_is_the_annealed_mean(colour_run, images, tmp_path):
    path, grey, _ = images["rgb"]
    code, _, _ = run_main(colorization.main, ["--predict", path, "--decode", "annealed", "--out", tmp_path,
                                              *dirs(colour_run)])
    assert code == 0
    written = read(tmp_path / "rgb_colour.png").astype(int)
    best = checkpoint_of(colour_run, "colorization", "best")
    want = expected_colour(best, grey, "annealed").astype(int)
    assert np.abs(written - want).max() <= 1 and (written == want).mean() > 0.99  # float32 sums in another order
    assert np.abs(written - expected_colour(best, grey, "argmax")).mean() > 1  # not argmax
    record = json.loads((tmp_path / "predictions.json").read_text())
    assert record["decode"] == "annealed" and record["temperature"] == TEMPERATURE


def test_checkpoint_choice_best_last_or_a_file(colour_run, images, tmp_path):
    path, grey, _ = images["rgb"]
    logs = colour_run / "logs" / "colorization"
    (run,) = [p.name for p in logs.iterdir()]
    # a third checkpoint with other weights, to see that a PATH is what is used
    checkpoint = torch.load(checkpoint_of(colour_run, "colorization", "last"), weights_only=True)
    checkpoint["state_dict"] = {k: v.flip(0) if v.dim() == 4 else v for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "other.ckpt")
    expected = {"best": (logs / run / "checkpoints" / "best-epoch001.ckpt", f"best of run {run}"),
                "last": (logs / run / "checkpoints" / "last.ckpt", f"last of run {run}"),
                str(tmp_path / "other.ckpt"): (tmp_path / "other.ckpt", "given")}
    for spec, (file, how) in expected.items():
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        code, _, _ = run_main(colorization.main, ["--predict", path, "--checkpoint", spec, "--out", out,
                                                  *dirs(colour_run)])
        assert code == 0
        record = json.loads((out / "predictions.json").read_text())
        assert (record["checkpoint"], record["checkpoint_choice"]) == (str(file), how)
        np.testing.assert_array_equal(read(out / "rgb_colour.png"), expected_colour(file, grey))
    assert not np.array_equal(expected_colour(tmp_path / "other.ckpt", grey),
                              expected_colour(expected["best"][0], grey))


def test_a_fresh_clone_predicts_with_the_shipped_weights(colour_run, images, tmp_path):
    """No logs/: the results folder holds only summary.json and model.pt of the run, as in the repository."""
    (run,) = list((colour_run / "results" / "colorization").iterdir())
    clone = tmp_path / "clone" / "results" / "colorization" / run.name
    clone.mkdir(parents=True)
    for name in ("summary.json", "model.pt"):
        shutil.copy(run / name, clone / name)
    path, grey, _ = images["photo"]
    argv = ["--predict", path, "--results-dir", tmp_path / "clone" / "results", "--logs-dir", tmp_path / "no-logs"]
    assert run_main(colorization.main, [*argv, "--out", tmp_path / "fresh"])[0] == 0
    record = json.loads((tmp_path / "fresh" / "predictions.json").read_text())
    assert record["checkpoint"] == str(clone / "model.pt") and record["checkpoint_choice"] == f"best of run {run.name}"
    best = checkpoint_of(colour_run, "colorization", "best")
    assert run_main(colorization.main, [*argv, "--checkpoint", best, "--out", tmp_path / "ckpt"])[0] == 0
    fresh, ckpt = (tmp_path / name / "photo_colour.png" for name in ("fresh", "ckpt"))
    assert fresh.read_bytes() == ckpt.read_bytes()
    np.testing.assert_array_equal(read(tmp_path / "fresh" / "photo_colour.png"), expected_colour(best, grey))
    assert torch.load(clone / "model.pt", weights_only=True).keys() >= {"state_dict", "hyper_parameters"}


def photo_folder(root, n_good=19):
    """n_good small images in nested folders and one truncated JPEG: (folder, relative stems of the good ones,
    the bad file)."""
    rng = np.random.default_rng(2)
    folder, stems = root / "photos", []
    for i in range(n_good):
        sub = ["", "holiday", "holiday/day2"][i % 3]
        name = f"{sub}/img{i:02d}".lstrip("/")
        ext = [".png", ".jpg", ".bmp"][i % 3]
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (9 + i, 14, 3), dtype=np.uint8)).save(folder / f"{name}{ext}")
        stems.append(name)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "whole.jpg")
    bad = folder / "holiday" / "broken.jpg"
    bad.write_bytes((root / "whole.jpg").read_bytes()[:300])
    return folder, stems, bad


def test_a_folder_with_a_corrupt_file_writes_the_others_and_names_it(colour_run, tmp_path):
    folder, stems, bad = photo_folder(tmp_path)
    assert len(stems) + 1 == 20 >= BAR_FROM
    proc = run_cli("colorization.py", "--predict", folder, "--out", tmp_path / "out", *dirs(colour_run))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr.replace("\r", "\n"))
    assert len(errors) == 2
    assert str(bad) in errors[0] and "truncated" in errors[0]
    assert errors[1] == (f"error: 1 of 20 inputs could not be processed (see above); the other 19 were written to "
                         f"{tmp_path / 'out'}")
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*_colour.png"))
    assert written == sorted(f"{stem}_colour.png" for stem in stems)
    assert "20/20" in proc.stderr and "images:" in proc.stderr  # the progress bar, not a line per image
    assert "_colour.png" not in proc.stdout
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(record["images"]) == 19 and [f["input"] for f in record["failed"]] == [str(bad)]
    best = checkpoint_of(colour_run, "colorization", "best")
    image = load_image(folder / "holiday/day2/img05.bmp").rgb8()
    np.testing.assert_array_equal(read(tmp_path / "out/holiday/day2/img05_colour.png"),
                                  expected_colour(best, grey_of(image)))


def test_a_glob_predicts_what_it_matches(colour_run, tmp_path, capsys):
    folder, _, _ = photo_folder(tmp_path, n_good=6)
    code, out, err = run_main(colorization.main, ["--predict", f"{folder}/**/*.png", f"{folder}/none/*.png",
                                                  "--out", tmp_path / "out", *dirs(colour_run)], capsys)
    assert code == 1
    assert error_lines(err) == [f"error: {folder}/none/*.png: the pattern matches no file",
                                f"error: 1 of 3 inputs could not be processed (see above); the other 2 were written "
                                f"to {tmp_path / 'out'}"]
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*_colour.png")) == [
        "img00_colour.png", "img03_colour.png"]


def test_bad_inputs_are_one_line_each_and_the_rest_is_written(colour_run, images, tmp_path, capsys):
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "a-folder").mkdir()
    bad = [tmp_path / "text.png", tmp_path / "missing.jpg", tmp_path / "a-folder"]
    code, _, err = run_main(colorization.main, ["--predict", images["rgb"][0], *bad, images["grey"][0], "--out",
                                                tmp_path / "out", *dirs(colour_run)], capsys)
    assert code == 1
    errors = error_lines(err)
    assert len(errors) == 4 and len(err.strip().splitlines()) == 4
    # a folder without images is known before any image is read; the others in the order given
    for path, line, words in zip([bad[2], *bad[:2]], errors, ("no image files", "not an image", "not found")):
        assert str(path) in line and words in line
    assert "3 of 5 inputs" in errors[-1]
    assert sorted(p.name for p in (tmp_path / "out").glob("*_colour.png")) == ["grey_colour.png", "rgb_colour.png"]


def test_when_no_input_works_the_default_output_folder_is_removed_again(colour_run, images, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(colour_run / "results", results)
    argv = ["--results-dir", results, "--logs-dir", colour_run / "logs"]
    code, _, err = run_main(colorization.main, ["--predict", tmp_path / "missing.jpg", *argv], capsys)
    assert code == 1 and "nothing was written" in error_lines(err)[-1]
    assert not (results / "colorization" / "predict").exists(), list((results / "colorization" / "predict").rglob("*"))
    assert run_main(colorization.main, ["--predict", images["grey"][0], *argv])[0] == 0  # an earlier call's outputs
    assert run_main(colorization.main, ["--predict", tmp_path / "missing.jpg", *argv])[0] == 1
    assert len(list((results / "colorization" / "predict").iterdir())) == 1  # ... stay, and only they


def test_default_output_folder_is_new_every_call(colour_run, images, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(colour_run / "results", results)
    argv = ["--predict", images["grey"][0], "--results-dir", results, "--logs-dir", colour_run / "logs"]
    assert run_main(colorization.main, argv)[0] == 0
    (first,) = (results / "colorization" / "predict").iterdir()
    stamps = {p: p.stat().st_mtime_ns for p in first.rglob("*")}
    assert run_main(colorization.main, argv)[0] == 0
    assert len(list((results / "colorization" / "predict").iterdir())) == 2
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and len(stamps) == 3


def test_a_checkpoint_of_another_model_or_task_is_refused(colour_run, images, tmp_path, capsys):
    unet = checkpoint_of(colour_run, "colorization", "last")
    argv = ["--predict", images["rgb"][0], "--checkpoint", unet, "--out", tmp_path / "x"]
    code, _, err = run_main(colorization.main, ["PoolUpsampleNet", *argv], capsys)
    assert code == 1 and error_lines(err) == [
        f"error: --checkpoint {unet}: a checkpoint of UNet, not of PoolUpsampleNet; run `python colorization.py "
        f"UNet ...` or give a PoolUpsampleNet checkpoint"]
    code, _, err = run_main(segmentation.main, argv, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --checkpoint {unet}: a colorization checkpoint (UNet), but this is segmentation.py")
    assert not (tmp_path / "x").exists()


def test_prediction_needs_images_and_its_flags_need_predict(colour_run, capsys):
    code, _, err = run_main(colorization.main, ["--predict", *dirs(colour_run)], capsys)
    assert code == 2 and "--predict" in err
    code, _, err = run_main(colorization.main, ["UNet", "--checkpoint", "last"], capsys)  # training has no such flag
    assert code == 2 and "--checkpoint" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- segmentation
# Training DeepLabV3 even for one epoch on the fixture takes ~40 s on 2 shared cores: marked slow.

def expected_mask(checkpoint, rgb8):
    """0/1 uint8 (H, W): Pillow's bilinear resize to the run's size, / 255, normalised by hand, through a network
    rebuilt with the checkpoint's head, argmax, Pillow's NEAREST resize back."""
    from models.deeplabv3 import build_deeplabv3

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hp = state["hyper_parameters"]
    net = build_deeplabv3(hp["backbone"], weights=hp["weights"]).eval()
    net.last_layer.weight.data.copy_(state["state_dict"]["model.model.classifier.4.weight"])
    net.last_layer.bias.data.copy_(state["state_dict"]["model.model.classifier.4.bias"])
    size = hp["image_size"]
    small = np.asarray(Image.fromarray(rgb8).resize((size, size), Image.BILINEAR)).astype(np.float32) / 255
    x = (small - np.float32(net.mean)) / np.float32(net.std)
    with torch.no_grad():
        pred = net(torch.from_numpy(x).permute(2, 0, 1)[None])[0].argmax(0).to(torch.uint8).numpy()
    return np.asarray(Image.fromarray(pred).resize(rgb8.shape[1::-1], Image.NEAREST))


@pytest.fixture
def varied_flower_checkpoint(flower_run, tmp_path_factory):
    """The run's checkpoint with a head of large random weights: masks with both classes, so that comparing
    them pixel for pixel tells a misplaced pixel (the one-epoch head calls nearly everything one class)."""
    checkpoint = torch.load(checkpoint_of(flower_run, "segmentation", "last"), weights_only=True)
    weight = checkpoint["state_dict"]["model.model.classifier.4.weight"]
    checkpoint["state_dict"]["model.model.classifier.4.weight"] = torch.randn(
        weight.shape, generator=torch.Generator().manual_seed(0)) * 50
    path = tmp_path_factory.getbasetemp() / "varied.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.slow
def test_masks_and_overlays_for_every_mode_and_size(flower_run, varied_flower_checkpoint, images, tmp_path, capsys):
    code, out, err = run_main(segmentation.main, ["--predict", *[p for p, _, _ in images.values()], "--checkpoint",
                                                  varied_flower_checkpoint, "--out", tmp_path, *dirs(flower_run)],
                              capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "predictions.json").read_text())
    assert record["preprocessing"]["image_size"] == FLOWER_SIZE and record["failed"] == []
    both = 0
    for entry, (name, (path, _, rgb8)) in zip(record["images"], images.items(), strict=True):
        want = expected_mask(varied_flower_checkpoint, rgb8)
        np.testing.assert_array_equal(read(tmp_path / f"{path.stem}_mask.png"), want * 255, err_msg=name)
        tinted = np.rint(rgb8 * np.float32(0.5) + np.float32([255, 0, 255]) * np.float32(0.5)).astype(np.uint8)
        np.testing.assert_array_equal(read(tmp_path / f"{path.stem}_overlay.png"),
                                      np.where(want[..., None] == 1, tinted, rgb8), err_msg=name)
        assert entry["flower_share"] == round(float(want.mean()), 6)
        both += 0 < want.mean() < 1
    assert both >= 3  # the comparison sees both classes in half the images (the others are tiny or flat)
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0] == "input,width,height,flower_share,mask,overlay" and len(rows) == 1 + len(images)
    assert sum("flower" in line for line in out.splitlines()) == len(images)


@pytest.mark.slow
def test_segmentation_folder_with_a_corrupt_file(flower_run, tmp_path, capsys):
    folder, stems, bad = photo_folder(tmp_path)
    code, out, err = run_main(segmentation.main, ["--predict", folder, "--out", tmp_path / "out", *dirs(flower_run)],
                              capsys)
    assert code == 1
    errors = error_lines(err.replace("\r", "\n"))
    assert len(errors) == 2 and str(bad) in errors[0] and "truncated" in errors[0] and "1 of 20 inputs" in errors[1]
    for kind in ("mask", "overlay"):
        assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob(f"*_{kind}.png")) == \
            sorted(f"{stem}_{kind}.png" for stem in stems)
    assert "20/20" in err
    assert len((tmp_path / "out" / "predictions.csv").read_text().splitlines()) == 20


@pytest.mark.slow
def test_segmentation_checkpoint_choice_and_fresh_clone(flower_run, images, tmp_path):
    path, _, rgb8 = images["rgba"]
    (run,) = list((flower_run / "results" / "segmentation").iterdir())
    clone = tmp_path / "results" / "segmentation" / run.name
    clone.mkdir(parents=True)
    for name in ("summary.json", "model.pt"):
        shutil.copy(run / name, clone / name)
    for spec, roots, file in [("last", dirs(flower_run), checkpoint_of(flower_run, "segmentation", "last")),
                              ("best", ["--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "none"],
                               clone / "model.pt")]:
        code, _, _ = run_main(segmentation.main, ["--predict", path, "--checkpoint", spec, "--out",
                                                  tmp_path / spec, *roots])
        assert code == 0
        assert json.loads((tmp_path / spec / "predictions.json").read_text())["checkpoint"] == str(file)
        np.testing.assert_array_equal(read(tmp_path / spec / "rgba_mask.png"), expected_mask(file, rgb8) * 255)
    assert torch.load(clone / "model.pt", weights_only=True)["state_dict"].keys() == {
        "model.model.classifier.4.weight", "model.model.classifier.4.bias"}  # the head only, not the trunk


@pytest.mark.slow
def test_a_segmentation_checkpoint_in_colorization_is_refused(flower_run, images, capsys):
    path = checkpoint_of(flower_run, "segmentation", "last")
    code, _, err = run_main(colorization.main, ["--predict", images["rgb"][0], "--checkpoint", path,
                                                *dirs(flower_run)], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --checkpoint {path}: a segmentation checkpoint, but this is colorization.py")


def test_mask_is_made_at_training_size_and_resized_back_nearest():
    """The model sees image_size x image_size; its 0/1 mask goes back to the image's (H, W) by nearest
    neighbour, as Pillow samples it (the pixel whose centre is nearest: source index floor((i + 0.5) *
    scale), never a tie for the odd factors 3 and 5 used here). A random 0/1 mask shrunk 30x30 -> (H 10,
    W 6) must be exactly mask[1::3, 2::5]; bilinear (antialiased) would average 3x5 pixels instead."""
    from types import SimpleNamespace

    from inference.segment import segment

    pattern = np.random.default_rng(0).integers(0, 2, (30, 30), dtype=np.uint8)
    seen = []

    def predict_masks(x):
        seen.append(tuple(x.shape))
        return torch.from_numpy(pattern).long().expand(x.shape[0], -1, -1)

    stub = SimpleNamespace(model=SimpleNamespace(mean=(0.5,) * 3, std=(0.2,) * 3), hparams=SimpleNamespace(
        image_size=30), predict_masks=predict_masks, device=torch.device("cpu"))
    mask = segment(stub, np.zeros((10, 6, 3), np.uint8))
    assert seen == [(1, 3, 30, 30)] and mask.shape == (10, 6) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, pattern[1::3, 2::5])
