"""report.py --quick on the small fixtures: files written, tables parse, finished runs are skipped."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import report
from reporting.decodings import decoding_metrics
from reporting.markdown import parse_tables, table
from tests import coloreval, segeval
from tests.conftest import REPO
from tests.fixtures.cifar import write_cifar_folder
from tests.fixtures.oxford17 import write_oxford17

# The end-to-end tests train 7 tiny runs and invoke the report twice: ~20 s on 2 idle cores, more when shared.
slow = pytest.mark.slow


def run_dirs(results):
    return {p.relative_to(results) for task in ("colorization", "segmentation")
            for p in (results / task).iterdir() if p.is_dir()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar_folder(root / "cifar", n_per_batch=8, horse_every=2)
    write_oxford17(root / "oxford17", per_class=8)
    return root


@pytest.fixture(scope="module")
def quick(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    argv = ["--quick", "--data-dir-cifar", str(data / "cifar"), "--data-dir-oxford17", str(data / "oxford17"),
            "--results-dir", str(out / "results"), "--logs-dir", str(out / "logs"), "--num-filters", "8",
            "--sweep-batch-sizes", "8", "16", "--seg-backbone", "mobilenet_v3_large", "--seg-weights", "none",
            "--seg-image-size", "64", "--seg-batch-size", "4", "--accelerator", "cpu"]
    assert report.main(argv) == 0
    return out / "results", argv


def this_cpu_model():
    """This machine's CPU model as lscpu (LC_ALL=C) or /proc/cpuinfo names it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}).stdout
        models = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")]
    except OSError:
        models = []
    if not models and Path("/proc/cpuinfo").exists():
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
    if not models:
        pytest.skip("neither lscpu nor /proc/cpuinfo names this machine's CPU")
    return models[0]
def runs_part(tables):
    return " ".join(r["part"] for r in next(t for t in tables if list(t[0])[0] == "part"))


def tables_by_first_header(text):
    return {list(t[0])[0]: t for t in parse_tables(text) if t}


@slow
def test_report_has_every_section_and_its_tables_parse(quick, data):
    results, _ = quick
    text = (results / "REPORT.md").read_text()
    assert "Smoke run (`--quick`)" in text and "Pipeline check, not the homework's number" in text
    assert "deeplabv3_resnet101_coco-586e9e4e.pth" in text and "https://download.pytorch.org/models/" in text
    tables = parse_tables(text)
    models = next(t for t in tables if list(t[0])[:2] == ["model", "epochs"])
    assert [r["model"] for r in models] == ["PoolUpsampleNet", "ConvTransposeNet", "UNet", "uniform guess (ln 24)"]
    assert [r["published val loss"] for r in models] == ["1.585", "1.157", "1.051", "3.178"]
    runs = next(t for t in tables if list(t[0])[0] == "part")
    folders = {part: [r["run folder"].strip("`") for r in runs if r["part"] == part]
               for part in ("colourisation", "segmentation")}
    logs = results.parent / "logs"
    colour = {}  # model -> its run's numbers recomputed from its last checkpoint
    for folder in folders["colourisation"]:
        colour[folder.split("/")[1].split("-")[0]] = coloreval.val_metrics(
            logs / folder / "checkpoints" / "last.ckpt", n_per_batch=8, horse_every=2)
    assert list(colour) == [r["model"] for r in models[:3]]
    for row in models[:3]:  # the table rounds loss to 3 decimals, accuracy to 0.1 %
        assert row["epochs"] == "1"
        assert float(row["final val loss"]) == pytest.approx(colour[row["model"]]["loss"], abs=5e-4 + 1e-6)
        assert float(row["final val acc"].rstrip(" %")) == pytest.approx(100 * colour[row["model"]]["acc"],
                                                                         abs=0.05 + 1e-6)
    assert models[3]["final val loss"] == f"{math.log(24):.3f}"
    layers = next(t for t in tables if list(t[0])[0] == "layer")
    assert layers[-1]["weights"] == "49248" and layers[-1]["connections"] == "13271040"
    six = next(t for t in tables if list(t[0])[0] == "input")
    assert [(r["input"], r["outputs"]) for r in six] == [("32x32", "81920"), ("64x64", "327680")]
    padding = next(t for t in tables if list(t[0])[0] == "kernel")
    assert [(r["kernel"], r["output_padding (blocks 3-4)"]) for r in padding] == [("3", "1"), ("4", "0"), ("5", "1")]
    sweep = next(t for t in tables if list(t[0])[0] == "batch size")
    assert [int(r["batch size"]) for r in sweep] == [8, 16]
    assert [r["steps per epoch"] for r in sweep] == ["3", "2"]  # 20 train horses
    decodings = next(t for t in tables if list(t[0])[0] == "decoding")
    assert len(decodings) == 2
    assert float(decodings[0]["mean abs RGB error (0-255)"]) == pytest.approx(colour["UNet"]["mae_rgb"], abs=5e-3 + 1e-6)
    assert decodings[0]["val pixel accuracy"] == models[2]["final val acc"]  # argmax = the UNet run's accuracy
    rebalance = next(t for t in tables if list(t[0])[0] == "UNet run")
    assert [r["UNet run"].split(" (")[0] for r in rebalance] == ["homework: plain cross-entropy",
                                                                  "rebalanced, lambda = 0.5"]
    assert float(rebalance[0]["val CE (plain)"]) == pytest.approx(float(models[2]["final val loss"]), abs=6e-4)
    assert rebalance[0]["val pixel acc"] == models[2]["final val acc"]  # the same UNet run
    assert "--rebalance 0.5" in runs_part(tables)
    seg = next(t for t in tables if list(t[0])[0] == "loss")
    assert [(r["loss"], r["weights"], r["image px"]) for r in seg] == [("ce", "random (none)", "64"),
                                                                     ("iou", "random (none)", "64"),
                                                                     ("no image (baseline)", "-", "64")]
    assert [f.split("/")[1].split("-")[0] for f in folders["segmentation"]] == ["ce", "iou"]
    for row, folder in zip(seg, folders["segmentation"]):  # best = last: one epoch
        best = logs / folder / "checkpoints" / "best-epoch000.ckpt"
        val, test = (segeval.checkpoint_iou(best, data / "oxford17", 64, 4, split) for split in ("val", "test"))
        assert row["best val mIoU (epoch)"].endswith(" (1)")
        assert float(row["best val mIoU (epoch)"].split()[0]) == pytest.approx(val["miou"], abs=5e-4 + 1e-6)
        assert float(row["test mIoU"]) == pytest.approx(test["miou"], abs=5e-4 + 1e-6)
    assert len(runs) == 3 + 2 + 2 + 1  # models, sweep, segmentation, the rebalanced UNet
    cpu = this_cpu_model()
    assert all(r["machine"].startswith(f"{cpu}, {os.cpu_count()} logical CPUs") for r in runs), (cpu, runs)


@slow
def test_every_linked_figure_is_a_png_in_report_folder(quick):
    results, _ = quick
    text = (results / "REPORT.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # models, sweep figure + grids, decodings, rebalancing (samples, recall), segmentation
    assert len(links) == 3 * 2 + 1 + 2 + 1 + 2 + 2 * 2
    for link in links:
        assert link.startswith("report/")
        with Image.open(results / link) as im:
            im.verify()
            assert im.format == "PNG"
    assert {p.name for p in (results / "report").iterdir()} == {link.split("/")[1] for link in links}


@slow
def test_sweep_csv_is_written(quick):
    results, _ = quick
    lines = (results / "colorization" / "batch_sweep" / "batch_sweep.csv").read_text().splitlines()
    assert lines[0].startswith("batch_size,epochs,") and [ln.split(",")[0] for ln in lines[1:]] == ["8", "16"]


@slow
def test_second_invocation_trains_nothing(quick):
    results, argv = quick
    before = run_dirs(results)
    assert report.main(argv) == 0
    assert run_dirs(results) == before
    assert "it trained 0 and reused 8" in (results / "REPORT.md").read_text()


@slow
def test_missing_oxford17_is_one_line_before_any_training(data, tmp_path):
    proc = subprocess.run([sys.executable, "report.py", "--quick", "--data-dir-cifar", str(data / "cifar"),
                           "--data-dir-oxford17", str(tmp_path / "none"), "--results-dir", str(tmp_path / "r"),
                           "--logs-dir", str(tmp_path / "l")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "Oxford17" in proc.stderr
    assert not (tmp_path / "r" / "colorization").exists()


@pytest.mark.parametrize("quick_flag", [True, False])
def test_defaults_follow_quick_and_the_weights_found(tmp_path, monkeypatch, quick_flag):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    args = report.parse_args(["--quick"] if quick_flag else [])
    assert (args.epochs, args.sweep_epochs, args.seg_epochs) == ((1, 1, 1) if quick_flag else (25, 10, 10))
    assert (args.seg_weights, args.seg_backbone) == ("none", "resnet50")
    assert args.seg_image_size == (64 if quick_flag else 128)
    assert ".cache" in args.results_dir if quick_flag else args.results_dir == "results"
    weights, _ = report.coco_weights("resnet101")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    args = report.parse_args([])
    assert (args.seg_weights, args.seg_backbone, args.seg_image_size) == ("coco", "resnet101", 224)


def test_markdown_tables_round_trip_with_pipes():
    text = "intro\n\n" + table(["a", "b|c"], [[1, "x|y"], [2.5, ""]]) + "\n\nafter"
    assert parse_tables(text) == [[{"a": "1", "b|c": "x|y"}, {"a": "2.5", "b|c": ""}]]
    with pytest.raises(ValueError):
        parse_tables("| a | b |\n| --- | --- |\n| 1 |")


def test_decoding_metrics_on_known_logits():
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    target = torch.tensor([[[0, 1], [2, 2]]])
    rgb = torch.full((1, 3, 2, 2), 0.2)
    logits = 2 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()

    m = decoding_metrics(lambda grey: logits, torch.zeros(1, 1, 2, 2), target, rgb, palette, temperature=0.38)
    assert m["argmax"]["accuracy"] == 1.0
    expected = 255 * (palette[target].permute(0, 3, 1, 2) - rgb).abs().mean().item()
    assert m["argmax"]["mae_rgb"] == pytest.approx(expected)
    assert m["annealed"]["accuracy"] == 1.0  # peaked logits: the mean stays nearest the argmax colour
    assert m["annealed"]["mae_rgb"] != pytest.approx(expected)  # but is not exactly it


def test_segmentation_table_has_the_no_image_baseline_row(tmp_path):
    """The baseline row carries the summaries' baseline numbers into the table, beside the runs."""
    from types import SimpleNamespace

    from reporting.document import segmentation_section

    base = {"val_miou": 0.6123, "val_iou_flower": 0.4567, "test_miou": 0.6789}
    runs = {loss: ({"task": "segmentation", "run": loss, "backbone": "resnet50", "weights": None, "image_size": 128,
                    "epochs": 3, "best_val_miou": 0.7, "best_val_miou_epoch": 2, "final_val_iou_flower": 0.5,
                    "test_miou": 0.69, "wall_seconds": 10.0, "baseline": base}, True) for loss in ("ce", "iou")}
    args = SimpleNamespace(seg_weights="none", seg_backbone="resnet50", seg_image_size=128, seg_epochs=3,
                           seg_batch_size=16, seg_lr=1e-3, results_dir=str(tmp_path))
    ctx = {"args": args, "figures": report.Figures(tmp_path / "report"), "coco": (tmp_path / "w.pth", "http://x"),
           "seg": runs, "reference_seg": report.REFERENCE_SEGMENTATION}
    seg = next(t for t in parse_tables(segmentation_section(ctx)) if list(t[0])[0] == "loss")
    assert [r["loss"] for r in seg] == ["ce", "iou", "no image (baseline)"]
    row = seg[2]
    assert (row["best val mIoU (epoch)"], row["final val flower IoU"], row["test mIoU"]) == ("0.612", "0.457", "0.679")
