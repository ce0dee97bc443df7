"""--export onnx: the ONNX files run in onnxruntime and give PyTorch's logits (max |difference| <= 1e-4,
float32) on inputs of other batch sizes (and, for the colour nets, other sizes) than the ones traced,
which is what shows that the dynamic axes work. Then the command lines: default and given file names,
the metadata a user needs, and bad input (no model, an unwritable place, a failing write): one line, a
non-zero exit, no file or an earlier one left as it was."""
import json
import os

import numpy as np
import pytest
import torch

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import colorization  # noqa: E402
import segmentation  # noqa: E402
from inference import export  # noqa: E402
from models.registry import build_model  # noqa: E402
from tests.clirun import error_lines, run_main  # noqa: E402
from tests.fixtures.trained import FLOWER_SIZE, calibrate_batchnorm, dirs  # noqa: E402
from tests.test_predict import checkpoint_of  # noqa: E402

TOLERANCE = 1e-4
COLOUR_SHAPES = [(1, 1, 36, 20), (3, 1, 64, 48)]  # traced on (2, 1, 32, 32)


def session(data_or_path):
    return onnxruntime.InferenceSession(data_or_path if isinstance(data_or_path, bytes) else str(data_or_path),
                                        providers=["CPUExecutionProvider"])


def compare(sess, net, x):
    """(max |onnxruntime - PyTorch|, PyTorch's logits) for input x."""
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
    assert got.shape == want.shape
    return float(np.abs(got - want).max()), want


# ---------------------------------------------------------------- parity, random weights

@pytest.mark.parametrize("name,kernel", [("PoolUpsampleNet", 3), ("ConvTransposeNet", 3), ("UNet", 3), ("UNet", 4)])
def test_colour_nets_give_pytorchs_logits_for_any_batch_and_size(name, kernel):
    torch.manual_seed(0)
    net = build_model(name, kernel=kernel, num_in_channels=1, num_filters=8, num_colours=24).eval()
    sess = session(export.colour_net_onnx(net, verify=False))
    assert [i.name for i in sess.get_inputs()] == ["grey"] and [o.name for o in sess.get_outputs()] == ["logits"]
    assert sess.get_inputs()[0].shape == ["batch", 1, "height", "width"]
    generator = torch.Generator().manual_seed(1)
    for shape in COLOUR_SHAPES:
        diff, logits = compare(sess, net, torch.rand(shape, generator=generator))
        assert logits.shape == (shape[0], 24, *shape[2:])
        assert logits.std() > 0.01  # logits that differ, so that agreeing on them means something
        assert diff <= TOLERANCE, (name, shape, diff)


def test_segmentation_network_gives_pytorchs_logits_for_any_batch():
    """A small backbone with random weights; its BatchNorm statistics calibrated so that features are not
    ~0 (else every logit would be the head's bias), and a random head giving logits up to ~14, as trained
    heads do. (The float32 difference grows with the logits: ~5e-6 of the largest, over ~60 layers.)"""
    from models.deeplabv3 import build_deeplabv3

    net = build_deeplabv3("mobilenet_v3_large", weights="none")
    calibrate_batchnorm(net.model, FLOWER_SIZE)
    with torch.no_grad():
        net.last_layer.weight.copy_(torch.randn(net.last_layer.weight.shape,
                                                generator=torch.Generator().manual_seed(2)) * 0.1)
    net.eval()
    sess = session(export.segmentation_onnx(net, FLOWER_SIZE, verify=False))
    assert sess.get_inputs()[0].shape == ["batch", 3, FLOWER_SIZE, FLOWER_SIZE]
    generator = torch.Generator().manual_seed(3)
    for batch in (1, 3):  # traced with 2
        diff, logits = compare(sess, net, torch.randn(batch, 3, FLOWER_SIZE, FLOWER_SIZE, generator=generator))
        assert logits.shape == (batch, 2, FLOWER_SIZE, FLOWER_SIZE)
        assert logits.std(axis=(2, 3)).min() > 0.1 and np.abs(logits).max() > 5  # varies across pixels
        assert diff <= TOLERANCE, (batch, diff)


def cancelling_net():
    """A net whose float32 logits are ~2e-3 from the float64 ones (two channels of ~2e4 subtracted): deep nets
    such as DeepLabV3-ResNet-101 lose 1e-3 to float32 rounding in the same way."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.Conv2d(2, 1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1e4, 1e4 + 1.0]).view(2, 1, 1, 1))
        net[0].bias.fill_(1e4)
        net[1].weight.copy_(torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1))
    return net.eval()


def test_the_exporters_own_check(monkeypatch, capsys):
    """Refused: onnxruntime's logits farther from PyTorch's than 1e-4 and farther from the float64 logits than
    twice PyTorch's float32 ones. Accepted: within 1e-4, or as close to float64 as PyTorch's float32."""
    import copy

    net = cancelling_net()
    onnxruntime_is = {}

    def fake(data, net, x):
        with torch.no_grad():
            want = net(x).numpy()
            exact = copy.deepcopy(net).double()(x.double()).numpy()
        return onnxruntime_is["logits"](want, exact).astype(np.float32), want

    monkeypatch.setattr(export, "both_logits", fake)
    onnxruntime_is["logits"] = lambda want, exact: want + 0.01
    with pytest.raises(export.UserError, match="does not reproduce PyTorch's logits") as info:
        export.colour_net_onnx(net)
    assert "(max difference 0.01; from the float64 logits: onnxruntime 0.01" in str(info.value)
    assert "\n" not in str(info.value)
    onnxruntime_is["logits"] = lambda want, exact: 2 * exact - want  # as far from float64 as PyTorch, other side
    assert export.colour_net_onnx(net) == export.colour_net_onnx(net, verify=False)
    out = capsys.readouterr().out
    assert "float32 rounding: PyTorch's float32 logits are 0.0019 from float64, onnxruntime's 0.0019" in out
    onnxruntime_is["logits"] = lambda want, exact: want
    export.colour_net_onnx(net)
    out = capsys.readouterr().out
    assert "max |difference| of the logits 0 (largest logit 1)" in out and "float64" not in out


# ---------------------------------------------------------------- the command lines

def test_colorization_export_of_the_trained_run(colour_run, capsys):
    from inference.colorize import load_colorizer

    code, out, err = run_main(colorization.main, ["--export", "onnx", *dirs(colour_run)], capsys)
    assert code == 0, err
    (run,) = list((colour_run / "results" / "colorization").iterdir())
    path = run / "model.onnx"
    assert f"wrote {path}" in out and "checked with onnxruntime" in out
    best = checkpoint_of(colour_run, "colorization", "best")
    net, palette, hp = load_colorizer(best)
    sess = session(path)
    meta = export.metadata_of(sess)
    assert meta["task"] == "colorization" and meta["model"] == "UNet" and meta["checkpoint"] == str(best)
    assert json.loads(meta["palette"]) == hp["palette"] and len(hp["palette"]) == 24
    assert json.loads(meta["hyperparameters"])["num_filters"] == 8
    generator = torch.Generator().manual_seed(4)
    for shape in COLOUR_SHAPES:
        diff, _ = compare(sess, net, torch.rand(shape, generator=generator))
        assert diff <= TOLERANCE


def test_export_choices_and_the_file_given(colour_run, tmp_path, capsys):
    (run,) = list((colour_run / "results" / "colorization").iterdir())
    code, out, _ = run_main(colorization.main, ["UNet", "--export", "onnx", "--checkpoint", "last", *dirs(colour_run)],
                            capsys)
    assert code == 0 and f"wrote {run / 'last.onnx'}" in out
    last = checkpoint_of(colour_run, "colorization", "last")
    assert export.metadata_of(session(run / "last.onnx"))["checkpoint"] == str(last)
    target = tmp_path / "new" / "folder" / "unet.onnx"
    code, out, _ = run_main(colorization.main, ["--export", "onnx", "--checkpoint", last, "--out", target,
                                                *dirs(colour_run)], capsys)
    assert code == 0 and f"wrote {target}" in out and sorted(os.listdir(target.parent)) == ["unet.onnx"]
    assert export.default_out(last, str(last), "colorization", colour_run / "results") == run / "last.onnx"
    assert export.default_out(tmp_path / "x.ckpt", "x", "colorization", colour_run / "results") == tmp_path / "x.onnx"
    assert export.default_out(run / "model.pt", "best", "colorization", tmp_path) == run / "model.onnx"


def test_export_bad_input_is_one_line_and_writes_nothing(colour_run, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    cases = [
        (["--export", "onnx", "--results-dir", tmp_path / "empty", "--logs-dir", tmp_path / "empty"], 1,
         f"error: no finished colorization run of UNet in {tmp_path / 'empty' / 'colorization'}"),
        (["--export", "onnx", "--out", tmp_path / "a-file" / "model.onnx", *dirs(colour_run)], 1,
         f"error: cannot write {tmp_path / 'a-file' / 'model.onnx'}: the folder {tmp_path / 'a-file'}"),
        (["--export", "onnx", "--out", "/proc/model.onnx", *dirs(colour_run)], 1,
         "error: cannot write /proc/model.onnx"),
        (["--export", "onnx", "--out", tmp_path / "a-folder", *dirs(colour_run)], 2,
         f"error: --out {tmp_path / 'a-folder'} is a folder"),
        (["--export", "onnx", "--checkpoint", tmp_path / "none.ckpt", *dirs(colour_run)], 2,
         f"error: --checkpoint {tmp_path / 'none.ckpt'}: not found"),
        (["--export", "tflite", *dirs(colour_run)], 2, "error: argument --export: invalid choice: 'tflite'"),
        (["ConvTransposeNet", "--export", "onnx", "--checkpoint", checkpoint_of(colour_run, "colorization", "best"),
          "--out", tmp_path / "x.onnx", *dirs(colour_run)], 1, "a checkpoint of UNet, not of ConvTransposeNet"),
    ]
    for argv, exit_code, start in cases:
        code, out, err = run_main(colorization.main, argv, capsys)
        assert code == exit_code and len(err.strip().splitlines()) == 1, (argv, err)
        assert (err.startswith(start) if start.startswith("error:") else start in err), err
    assert sorted(os.listdir(tmp_path)) == ["a-file", "a-folder"] and os.listdir(tmp_path / "a-folder") == []


def test_a_failed_write_leaves_the_earlier_export_and_no_partial_file(colour_run, tmp_path, monkeypatch, capsys):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the earlier export")
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst) == str(target):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    code, _, err = run_main(colorization.main, ["--export", "onnx", "--out", target, *dirs(colour_run)], capsys)
    assert code == 1 and error_lines(err) == [
        f"error: cannot write {target} (No space left on device); choose another place with --out FILE"]
    assert target.read_bytes() == b"the earlier export" and os.listdir(tmp_path) == ["model.onnx"]


@pytest.mark.slow
def test_segmentation_export_of_the_trained_run(flower_run, capsys):
    from inference.segment import load_segmenter

    code, out, err = run_main(segmentation.main, ["--export", "onnx", *dirs(flower_run)], capsys)
    assert code == 0, err
    (run,) = list((flower_run / "results" / "segmentation").iterdir())
    best = checkpoint_of(flower_run, "segmentation", "best")
    module = load_segmenter(best)
    sess = session(run / "model.onnx")
    meta = export.metadata_of(sess)
    assert meta["task"] == "segmentation" and json.loads(meta["image_size"]) == FLOWER_SIZE
    assert json.loads(meta["mean"]) == list(module.model.mean) and json.loads(meta["std"]) == list(module.model.std)
    assert json.loads(meta["classes"]) == ["background", "flower"]
    assert json.loads(meta["trunk"]) == module.model.trunk_identity()
    generator = torch.Generator().manual_seed(5)
    for batch in (1, 3):
        diff, logits = compare(sess, module.model, torch.randn(batch, 3, FLOWER_SIZE, FLOWER_SIZE,
                                                                 generator=generator))
        assert logits.std(axis=(2, 3)).min() > 1e-3 and diff <= TOLERANCE
    code, _, err = run_main(segmentation.main, ["--export", "onnx", "--checkpoint",
                                                checkpoint_of(flower_run, "segmentation", "last"),
                                                "--out", run / "x.onnx", "--results-dir", run / "none"], capsys)
    assert code == 0 and (run / "x.onnx").is_file()


def test_a_colour_checkpoint_in_segmentation_export_is_refused(colour_run, tmp_path, capsys):
    path = checkpoint_of(colour_run, "colorization", "best")
    code, _, err = run_main(segmentation.main, ["--export", "onnx", "--checkpoint", path, "--out",
                                                tmp_path / "x.onnx"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --checkpoint {path}: a colorization checkpoint (UNet), but this is segmentation.py")
    assert os.listdir(tmp_path) == []
