"""Each task's config: config.json in every run folder, `--config FILE` (flags win),
`--print-config`, one-line refusals of bad config files and flags, and every default shown once in
--help."""
import dataclasses
import json
import re
import subprocess
import sys

import pytest

import colorization
import segmentation
from errors import UsageError
from tests.clirun import error_lines, run_main
from tests.conftest import REPO
from tests.fixtures.cifar import write_cifar_folder
from training.config import settings
from training.runs import differences

TASKS = {"colorization": (colorization, colorization.ColorizationConfig),
         "segmentation": (segmentation, segmentation.SegmentationConfig)}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, n_per_batch=20, horse_every=2)
    return root


def _run_folders(results):
    return sorted(p.name for p in (results / "colorization").iterdir())


def test_config_round_trip_gives_the_same_settings_except_epochs(cifar_dir, tmp_path, capsys):
    """A one-epoch run writes config.json; `--config <it> --epochs 2` trains with the same settings but epochs."""
    out = ["--results-dir", tmp_path / "results", "--logs-dir", tmp_path / "logs"]
    code, _, err = run_main(colorization.main, ["UNet", "--num-filters", 8, "--kernel", 5, "--lr", 0.003,
                                                "--batch-size", 16, "--epochs", 1, "--seed", 7, "--accelerator",
                                                "cpu", "--no-compile", "--data-dir", cifar_dir, *out], capsys)
    assert code == 0, err[-3000:]
    [first] = _run_folders(tmp_path / "results")
    folder = tmp_path / "results" / "colorization" / first
    stored = json.loads((folder / "config.json").read_text())
    assert stored == {**dataclasses.asdict(colorization.ColorizationConfig(
        model="UNet", num_filters=8, kernel=5, lr=0.003, batch_size=16, epochs=1, seed=7, accelerator="cpu",
        compile=False, data_dir=str(cifar_dir), results_dir=str(tmp_path / "results"),
        logs_dir=str(tmp_path / "logs"))), "progress_bar": True}
    code, _, err = run_main(colorization.main, ["--config", folder / "config.json", "--epochs", 2], capsys)
    assert code == 0, err[-3000:]
    [second] = [name for name in _run_folders(tmp_path / "results") if name != first]
    summaries = [json.loads((tmp_path / "results" / "colorization" / n / "summary.json").read_text())
                 for n in (first, second)]
    assert differences(summaries[0]["settings"], summaries[1]["settings"]) == ["config.epochs: 1 -> 2"]
    assert summaries[1]["epochs"] == 2 and summaries[1]["settings"]["config"]["kernel"] == 5
    assert {k for k in stored if stored[k] != summaries[1]["config"][k]} == {"epochs"}
    again = json.loads((tmp_path / "results" / "colorization" / second / "config.json").read_text())
    assert again == {**stored, "epochs": 2}


def test_config_file_then_flags(tmp_path):
    """Defaults, then the file, then the flags given (the bare model argument too)."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "PoolUpsampleNet", "kernel": 5, "lr": 0.01, "rebalance": 0.5}))
    config = colorization.parse_config(["UNet", "--config", str(path), "--kernel", "7"])
    assert (config.model, config.kernel, config.lr, config.rebalance, config.epochs) == ("UNet", 7, 0.01, 0.5, 25)
    config = colorization.parse_config(["--config", str(path)])
    assert (config.model, config.kernel, config.num_filters) == ("PoolUpsampleNet", 5, 32)
    # the settings a run records are those of the resolved config
    assert settings(config) == {"seed": 0, "precision": "32-true", "model": "PoolUpsampleNet", "kernel": 5,
                                "num_filters": 32, "optimizer": "adamw", "weight_decay": 0.0, "rebalance": 0.5,
                                "epochs": 25, "batch_size": 100, "lr": 0.01}


def test_segmentation_config_files_from_before_the_trunk_layout_flag_still_load(tmp_path):
    """Run folders written before --channels-last set the trunk's layout hold "channels_last": null; their
    config.json (and the resume command printed after an interruption) must still be accepted."""
    path = tmp_path / "config.json"
    old = {**dataclasses.asdict(segmentation.SegmentationConfig(loss="ce")), "channels_last": None}
    path.write_text(json.dumps(old))
    assert segmentation.parse_config(["--config", str(path)]).channels_last is None
    assert segmentation.parse_config(["--config", str(path), "--no-channels-last"]).channels_last is False


@pytest.mark.parametrize("task, file, flags, expected", [
    ("colorization", {"model": "UNet", "kernel": 5, "lr": 0.01}, ["--kernel", "7", "--no-compile"],
     {"model": "UNet", "kernel": 7, "lr": 0.01, "compile": False, "epochs": 25, "batch_size": 100}),
    ("segmentation", {"loss": "ce", "image_size": 64, "epochs": 3}, ["--loss", "iou", "--batch-size", "4"],
     {"loss": "iou", "image_size": 64, "epochs": 3, "batch_size": 4, "backbone": "resnet101", "lr": 0.001}),
], ids=["colorization", "segmentation"])
def test_print_config_prints_the_resolved_config_and_exits(tmp_path, capsys, monkeypatch, task, file, flags, expected):
    module, config_class = TASKS[task]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps(file))
    code, out, err = run_main(module.main, ["--config", "c.json", *flags, "--print-config"], capsys)
    assert code == 0, err
    printed = json.loads(out)
    assert list(printed) == [f.name for f in dataclasses.fields(config_class)]
    assert {k: printed[k] for k in expected} == expected
    assert printed == dataclasses.asdict(config_class(**expected))  # every other field at its default
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]  # nothing trained, nothing written


def test_print_config_in_a_real_process_and_fed_back(tmp_path):
    """What --print-config prints is a config file --config reads (the same config again)."""
    proc = subprocess.run([sys.executable, "segmentation.py", "--loss", "iou", "--split", "2", "--print-config"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp_path / "printed.json").write_text(proc.stdout)
    config = segmentation.parse_config(["--config", str(tmp_path / "printed.json")])
    assert dataclasses.asdict(config) == json.loads(proc.stdout)
    assert (config.loss, config.split, config.image_size) == ("iou", 2, 224)


@pytest.mark.parametrize("content, parts", [
    ('{"kernal": 3}', ["unknown setting(s) kernal", "known: seed"]),
    ('{"kernel": "3"}', ["kernel: expected int, got '3'"]),
    ('{"kernel": 3.5}', ["kernel: expected int, got 3.5"]),
    ('{"deterministic": 1}', ["deterministic: expected bool"]),
    ('{"kernel": 0}', ["kernel: must be at least 1"]),
    ('{"model": "ResNet"}', ["model: 'ResNet' is not one of PoolUpsampleNet, ConvTransposeNet, UNet"]),
    ('{"kernel": 3,', ["not a readable JSON file"]),
    ("[3]", ["expected a JSON object of settings, got list"]),
    (None, ["no such file"]),
], ids=["unknown-key", "string-for-int", "float-for-int", "int-for-bool", "bad-value", "bad-choice", "not-json",
        "not-an-object", "missing-file"])
def test_bad_config_file_is_one_line_exit_2(tmp_path, capsys, monkeypatch, content, parts):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.json"
    if content is not None:
        path.write_text(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_main(colorization.main, ["UNet", "--config", path, "--epochs", 1], capsys)
    assert code == 2 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: --config {path}: ")
    for part in parts:
        assert part in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no data, no run folders


def test_bad_segmentation_config_file_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text('{"loss": "dice"}')
    code, _, err = run_main(segmentation.main, ["--config", path], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: --config {path}: loss: 'dice' is not one of ce, iou"]


def test_configs_built_in_code_are_checked_like_flags():
    """report.py and the sweep build configs directly: the same checks, the same one-line UsageError."""
    with pytest.raises(UsageError, match="^kernel: must be at least 1, got 0$"):
        colorization.ColorizationConfig(model="UNet", kernel=0)
    with pytest.raises(UsageError, match="^lr: expected float, got '0.1'$"):
        colorization.ColorizationConfig(model="UNet", lr="0.1")
    with pytest.raises(UsageError, match="^image_size: 8 is too small"):
        segmentation.SegmentationConfig(loss="ce", image_size=8)
    assert colorization.ColorizationConfig(model="UNet", lr=1).lr == 1  # a JSON integer is a float value


def _help(task, capsys, monkeypatch):
    """--help of a task (in this process), rendered wide enough that no help text wraps."""
    monkeypatch.setenv("COLUMNS", "1000")
    code, out, err = run_main(TASKS[task][0].main, ["--help"], capsys)
    assert code == 0, err
    return out


# How --help shows each default: the value, "off" / "on" for booleans and None, or a description.
SHOWN = {
    "colorization": {"model": "none, give one", "kernel": "3", "num_filters": "32", "optimizer": "adamw",
                     "weight_decay": "0.0", "rebalance": "off, the homework's CE", "epochs": "25",
                     "batch_size": "100", "lr": "0.001", "data_dir": "datasets",
                     "palette": "color/color_kmeans24_cat7.npy", "compile": "on where it is faster: CPU and CUDA",
                     "channels_last": "on for CUDA, off otherwise"},
    "segmentation": {"loss": "none, give one", "backbone": "resnet101", "weights": "coco", "split": "1",
                     "image_size": "224", "unlabelled": "ignore", "augment": "off", "epochs": "10",
                     "batch_size": "16", "lr": "0.001", "data_dir": "datasets/oxford17", "feature_cache": "on",
                     "feature_store": "$XDG_CACHE_HOME/image2image/features", "channels_last": "on"},
}
SHARED = {"seed": "0", "deterministic": "off", "resume": "off", "num_workers": "0", "results_dir": "results",
          "logs_dir": "logs", "run_name": "<model>-<date>-<time>", "debug": "off", "progress_bar": "on",
          "accelerator": "auto", "devices": "auto", "strategy": "auto", "num_nodes": "1", "precision": "32-true"}


@pytest.mark.parametrize("task", list(TASKS))
def test_help_shows_every_default_once(task, capsys, monkeypatch):
    text = _help(task, capsys, monkeypatch)
    fields = [f.name for f in dataclasses.fields(TASKS[task][1])]
    shown = {**SHARED, **SHOWN[task]}
    assert sorted(shown) == sorted(fields)  # every field has a flag whose default is checked here
    entries, current = {}, None
    for line in text.splitlines():  # an entry: its flags' line and the help lines indented below it
        match = re.match(r"  (--[a-z-]+)", line)
        if match:
            current = match.group(1).lstrip("-").replace("-", "_")
            entries[current] = line.strip()
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    for name in fields:
        line = entries[name]
        assert line.count("(default:") == 1, line
        assert line.endswith(f"(default: {shown[name]})"), line
    assert text.count("(default:") == len(fields)  # nowhere else either ("... (default: None)")
    assert "--no-" + ("compile" if task == "colorization" else "feature-cache") in text


@pytest.mark.parametrize("task, argv, parts", [
    ("colorization", ["UNet", "--kernel", "x"], ["argument --kernel: invalid literal for int()"]),
    ("colorization", ["UNet", "--epohcs", "3"], ["unrecognized arguments: --epohcs 3"]),
    ("colorization", ["UNet", "--epochs"], ["argument --epochs/--nepochs: expected one argument"]),
    ("segmentation", ["--loss", "ce", "--split", "4"], ["argument --split: invalid choice: 4"]),
], ids=["bad-int", "unknown-flag", "missing-value", "segmentation-choice"])
def test_argparse_errors_are_one_line_with_a_hint_to_help(task, argv, parts, capsys):
    code, out, err = run_main(TASKS[task][0].main, argv, capsys)
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and line.endswith(f"(see `python {task}.py --help`)")
    for part in parts:
        assert part in line, line
    assert error_lines(err) == [line]


def test_argparse_error_reaches_a_terminal_as_one_line():
    proc = subprocess.run([sys.executable, "colorization.py", "UNet", "--kernel", "x"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("error: argument --kernel: invalid literal for int() with base 10: 'x' "
                           "(see `python colorization.py --help`)\n")
