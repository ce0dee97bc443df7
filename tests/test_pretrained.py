"""The default pretrained path (`--weights coco`), verified offline with a stand-in weights file.

torchvision checks a weights file's hash only when it downloads it, so a file with the real name,
keys and shapes (random values; models/standin_weights.py) in a temporary TORCH_HOME exercises the
whole path: builder, CLI training, prediction from the checkpoint, report.py's weight detection.
Downloads are stubbed to fail, so the tests behave the same with or without a network.
"""
import json
import os
import subprocess
import sys
import urllib.error
import warnings
from types import SimpleNamespace

import pytest
import torch
from torchvision.models.segmentation import DeepLabV3_MobileNet_V3_Large_Weights

import segmentation
from errors import UserError
from models.deeplabv3 import build_deeplabv3
from models.standin_weights import standin_path, write_standin
from tests.clirun import error_lines, run_main
from tests.conftest import REPO
from tests.fixtures.oxford17 import write_oxford17

BACKBONE = "mobilenet_v3_large"
WEIGHTS = DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME holding the stand-in COCO weights of DeepLabV3-MobileNetV3, written by the script."""
    home = tmp_path_factory.mktemp("torch-home")
    proc = subprocess.run([sys.executable, "-m", "models.standin_weights", "--torch-home", str(home),
                           "--backbone", BACKBONE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "STAND-IN" in proc.stdout
    return home


@pytest.fixture()
def offline(monkeypatch):
    """No download ever happens in these tests (a network or none)."""
    def refuse(url, dst, *args, **kwargs):
        raise urllib.error.URLError(f"download attempted in a test: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_script_writes_the_real_file_name_with_the_real_keys(torch_home):
    path = torch_home / "hub" / "checkpoints" / os.path.basename(WEIGHTS.url)
    assert path.is_file() and standin_path(BACKBONE, torch_home) == path
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["classifier.4.weight"].shape == (21, 256, 1, 1)  # 21 VOC classes, as the real file
    assert any(k.startswith("aux_classifier.") for k in state)


def test_script_never_overwrites_an_existing_file(torch_home):
    path = standin_path(BACKBONE, torch_home)
    before = path.stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "models.standin_weights", "--torch-home", str(torch_home),
                           "--backbone", BACKBONE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert path.stat().st_mtime_ns == before


def test_builder_loads_the_file_and_replaces_only_the_last_layer(torch_home, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "randomly initialised" warning on this path
        model = build_deeplabv3(BACKBONE, weights="coco")
    state = torch.load(standin_path(BACKBONE, torch_home), map_location="cpu", weights_only=True)
    ours = model.model.state_dict()
    frozen = [k for k in state if not k.startswith(("aux_classifier.", "classifier.4."))]
    assert len(frozen) > 100 and all(torch.equal(ours[k], state[k]) for k in frozen)  # the file's values
    new = model.last_layer
    assert isinstance(new, torch.nn.Conv2d) and (new.in_channels, new.out_channels, new.kernel_size) == (256, 2, (1, 1))
    assert new.weight.requires_grad and new.bias.requires_grad
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.classifier.4.weight",
                                                                          "model.classifier.4.bias"]
    assert model.model.aux_classifier is None and not any(k.startswith("aux_classifier.") for k in ours)
    transform = WEIGHTS.transforms()
    assert model.mean == tuple(transform.mean) and model.std == tuple(transform.std) and model.pretrained


def test_normalisation_comes_from_the_weights_own_transforms(torch_home, monkeypatch, offline):
    """The COCO weights use ImageNet's mean and std, so a builder that hard-coded those would pass the
    test above; weights whose transforms say otherwise tell the two apart."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(WEIGHTS.value, "transforms",
                        lambda: SimpleNamespace(mean=(0.25, 0.5, 0.75), std=(0.1, 0.2, 0.3)))
    model = build_deeplabv3(BACKBONE, weights="coco")
    assert model.mean == (0.25, 0.5, 0.75) and model.std == (0.1, 0.2, 0.3)
    identity = model.feature_identity()
    assert identity["weights"] == "coco" and identity["file"] == os.path.basename(WEIGHTS.url)
    assert identity["standin"] is True and len(identity["sha256"]) == 64


def test_truncated_weights_file_is_one_line_corrupt_error(torch_home, tmp_path, monkeypatch, offline):
    path = standin_path(BACKBONE, tmp_path)
    path.parent.mkdir(parents=True)
    data = standin_path(BACKBONE, torch_home).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as info:
        build_deeplabv3(BACKBONE, weights="coco")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "corrupt" in message and "delete it and download it again" in message and WEIGHTS.url in message


def test_cli_default_weights_train_end_to_end_and_predict_from_the_checkpoint(torch_home, tmp_path, monkeypatch,
                                                                            offline, capsys):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    flowers = write_oxford17(tmp_path / "flowers", n_classes=2, per_class=4)
    dirs = ["--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs"]
    code, out, err = run_main(segmentation.main, [
        "--loss", "ce", "--backbone", BACKBONE, "--image-size", 64, "--batch-size", 4, "--epochs", 1,
        "--accelerator", "cpu", "--data-dir", flowers, "--feature-store", tmp_path / "fs", *dirs], capsys)
    assert code == 0, err[-3000:]
    summary = json.loads(next((tmp_path / "results" / "segmentation").glob("*/summary.json")).read_text())
    assert summary["weights"] == "coco" and summary["test_miou"] is not None
    assert summary["feature_store"]["reused"] is False
    stored = json.loads((tmp_path / "fs" / summary["feature_store"]["key"] / "meta.json").read_text())
    assert stored["identity"]["trunk"]["file"] == os.path.basename(WEIGHTS.url)
    image = flowers / "jpg" / "image_0001.jpg"
    code, out, err = run_main(segmentation.main, ["--predict", image, "--checkpoint", "last", *dirs,
                                                  "--out", tmp_path / "pred"], capsys)
    assert code == 0, err[-3000:]
    record = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert record["hyperparameters"]["weights"] == "coco"
    assert record["preprocessing"]["mean"] == list(WEIGHTS.transforms().mean)
    assert (tmp_path / "pred" / "image_0001_mask.png").is_file()


def test_cli_corrupt_weights_is_one_error_line(torch_home, tmp_path, monkeypatch, offline, capsys):
    path = standin_path(BACKBONE, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(standin_path(BACKBONE, torch_home).read_bytes()[:1000])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    flowers = write_oxford17(tmp_path / "flowers", n_classes=2, per_class=4)
    code, out, err = run_main(segmentation.main, [
        "--loss", "ce", "--backbone", BACKBONE, "--image-size", 64, "--accelerator", "cpu", "--data-dir", flowers,
        "--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs"], capsys)
    assert code == 1 and "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and "corrupt" in lines[0] and "download it again" in lines[0]
    assert not (tmp_path / "results").exists()


def test_report_auto_picks_coco_when_the_file_is_there(torch_home, tmp_path, monkeypatch):
    import report

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    args = report.parse_args(["--seg-backbone", BACKBONE])
    assert args.seg_weights == "coco" and args.seg_image_size == 224
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    args = report.parse_args(["--seg-backbone", BACKBONE])
    assert args.seg_weights == "none"
