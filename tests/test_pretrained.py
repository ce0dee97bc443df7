"""The default pretrained path (`--weights coco`), verified offline with a stand-in weights file.

torchvision checks a weights file's hash only when it downloads it, so a file with the real name,
keys and shapes (random values; models/standin_weights.py) in a temporary TORCH_HOME exercises the
whole path: builder, CLI training, prediction from the checkpoint, report.py's weight detection.
Downloads are stubbed to fail, so the tests behave the same with or without a network.
"""
import hashlib
import json
import os
import pickle
import subprocess
from pathlib import Path
import sys
import urllib.error
import warnings
from types import SimpleNamespace

import pytest
import torch
from torchvision.models.segmentation import DeepLabV3_MobileNet_V3_Large_Weights

import segmentation
from errors import UserError
from models.deeplabv3 import build_deeplabv3, sha256_of_file, weights_path
from models.standin_weights import standin_path
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
    # every key of ours but the new layer comes from the file, with the file's values
    assert sorted(frozen) == sorted(k for k in ours if not k.startswith("classifier.4."))
    assert all(torch.equal(ours[k], state[k]) for k in frozen)
    new = model.last_layer
    assert isinstance(new, torch.nn.Conv2d) and (new.in_channels, new.out_channels, new.kernel_size) == (256, 2, (1, 1))
    assert new.weight.requires_grad and new.bias.requires_grad
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.classifier.4.weight",
                                                                          "model.classifier.4.bias"]
    assert model.model.aux_classifier is None and not any(k.startswith("aux_classifier.") for k in ours)
    transform = WEIGHTS.transforms()
    assert model.mean == tuple(transform.mean) and model.std == tuple(transform.std)
    assert model.weights == "coco" and model.weights_file == str(standin_path(BACKBONE, torch_home))


def test_normalisation_comes_from_the_weights_own_transforms(torch_home, monkeypatch, offline):
    """The COCO weights use ImageNet's mean and std, so a builder that hard-coded those would pass the
    test above; weights whose transforms say otherwise tell the two apart."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(WEIGHTS.value, "transforms",
                        lambda: SimpleNamespace(mean=(0.25, 0.5, 0.75), std=(0.1, 0.2, 0.3)))
    model = build_deeplabv3(BACKBONE, weights="coco")
    assert model.mean == (0.25, 0.5, 0.75) and model.std == (0.1, 0.2, 0.3)
    path = standin_path(BACKBONE, torch_home)
    assert model.trunk_identity() == {
        "backbone": BACKBONE, "weights": "coco", "file": os.path.basename(WEIGHTS.url), "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "standin": True, "mean": [0.25, 0.5, 0.75],
        "std": [0.1, 0.2, 0.3], "torchvision_builder": "deeplabv3_mobilenet_v3_large"}


def test_weights_digest_is_the_sha256_of_the_whole_file(tmp_path):
    """Read in chunks: a file of several chunks and a last partial one, against hashlib over all its bytes."""
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 41 + b"tail")  # 10500 bytes
    assert sha256_of_file(path, chunk=1000) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_of_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_of_file(tmp_path / "blob") != hashlib.sha256(b"").hexdigest()


class _RunsCode:
    """Unpickling this calls `function(argument)`: what a crafted weights file would do."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("how", ["torch.save", "plain pickle"])
def test_crafted_weights_file_is_refused_in_one_line_without_running(tmp_path, monkeypatch, offline, how):
    """A .pth placed by hand where torchvision looks for the COCO weights, whose unpickling would create
    a marker file: refused (weights_only=True) with one UserError line, and the payload never runs."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / "payload-ran"
    path = weights_path(BACKBONE)
    assert path == str(tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(WEIGHTS.url))
    os.makedirs(os.path.dirname(path))
    payload = {"classifier.4.weight": torch.zeros(1), "evil": _RunsCode(os.system, f"touch {marker}")}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UserError) as info:
        build_deeplabv3(BACKBONE, weights="coco")
    assert not marker.exists()  # the payload did not run
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"the pretrained weights file {path} holds objects other than tensors, which could run "
                       f"code when loaded; refused. Delete it and download it again from {WEIGHTS.url}")
    # the same file unpickled without weights_only runs it: the refusal above is what stops it
    torch.load(path, weights_only=False) if how == "torch.save" else pickle.loads(open(path, "rb").read())
    assert marker.exists()


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
    file = standin_path(BACKBONE, torch_home)
    trunk = {"backbone": BACKBONE, "weights": "coco", "file": os.path.basename(WEIGHTS.url),
             "bytes": file.stat().st_size, "sha256": hashlib.sha256(file.read_bytes()).hexdigest(), "standin": True,
             "mean": list(WEIGHTS.transforms().mean), "std": list(WEIGHTS.transforms().std),
             "torchvision_builder": "deeplabv3_mobilenet_v3_large"}
    assert summary["config"]["weights"] == summary["settings"]["config"]["weights"] == "coco"
    assert summary["trunk"] == trunk and summary["inputs"] == "features"
    assert isinstance(summary["test_miou"], float) and summary["epochs"] == 1
    assert summary["feature_store"]["reused"] is False
    assert summary["feature_store"]["splits"] == ["train", "val", "test"]
    stored = json.loads((tmp_path / "fs" / summary["feature_store"]["key"] / "meta.json").read_text())
    assert stored["identity"]["trunk"] == trunk and stored["identity"]["precision"] == "32-true"
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


def test_report_auto_picks_coco_only_for_a_real_weights_file(torch_home, tmp_path, monkeypatch):
    """report.py --seg-weights auto: coco (224 px) when the weights file is there and is not a stand-in
    (a stand-in's mIoU means nothing), else the random trunk (128 px)."""
    import shutil

    import report
    from models.deeplabv3 import STANDIN_SUFFIX, weights_path

    def resolved(home):
        monkeypatch.setenv("TORCH_HOME", str(home))
        return report.resolve(report.parse_config(["--seg-backbone", BACKBONE]))

    real = tmp_path / "real"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    standin = Path(weights_path(BACKBONE))
    monkeypatch.setenv("TORCH_HOME", str(real))
    Path(weights_path(BACKBONE)).parent.mkdir(parents=True)
    shutil.copy(standin, weights_path(BACKBONE))  # the file without its stand-in marker
    assert Path(str(standin) + STANDIN_SUFFIX).is_file()
    config = resolved(real)
    assert (config.seg_weights, config.seg_image_size) == ("coco", 224)
    config = resolved(torch_home)
    assert (config.seg_weights, config.seg_image_size) == ("none", 128)
    config = resolved(tmp_path / "empty")
    assert (config.seg_weights, config.seg_image_size) == ("none", 128)
