"""The batch-size sweep (colorization.py --batch-sizes) and the finished-run lookup it shares with report.py."""
import csv
import json
import os

import pytest
from PIL import Image

import colorization
from colorization_sweep import CSV_COLUMNS, SweepConfig, csv_row, run_configs, sweep_folder, write_csv
from reporting.reuse import finished_runs
from tests.clirun import error_lines, run_main
from tests.fixtures.cifar import write_cifar_folder
from training.runs import differences


def valid_png(path):
    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG"


def run_folders(results):
    return sorted(p.name for p in (results / "colorization").iterdir() if not p.name.startswith("batch_sweep"))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, n_per_batch=8, horse_every=2)  # 20 train and 4 val horses
    return root


@pytest.fixture(scope="module")
def sweep(cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    argv = ["ConvTransposeNet", "--batch-sizes", "4", "8", "--epochs", "1", "--num-filters", "8",
            "--data-dir", str(cifar), "--results-dir", str(out / "results"), "--logs-dir", str(out / "logs"),
            "--accelerator", "cpu", "--no-compile"]
    assert colorization.main(argv) == 0
    return out, argv


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_csv_figure_and_one_grid_per_batch_size(sweep):
    out, _ = sweep
    folder = out / "results" / "colorization" / "batch_sweep"
    rows = read_csv(folder / "batch_sweep.csv")
    assert [int(r["batch_size"]) for r in rows] == [4, 8]
    assert tuple(rows[0]) == CSV_COLUMNS
    for row in rows:
        summary = json.loads((out / "results" / "colorization" / row["run"] / "summary.json").read_text())
        assert summary["batch_size"] == int(row["batch_size"]) and summary["epochs"] == int(row["epochs"]) == 1
        assert int(row["steps"]) == {4: 5, 8: 3}[summary["batch_size"]]  # 20 train horses, 1 epoch
        for key in ("final_val_loss", "final_val_acc", "final_train_loss", "wall_seconds"):
            assert float(row[key]) == pytest.approx(summary[key], rel=1e-5), key
        for key in ("colourfulness_ratio", "mean_recall"):
            assert float(row[key]) == pytest.approx(summary["colour_quality"][key], rel=1e-5), key
    assert valid_png(folder / "val_loss.png")
    assert valid_png(folder / "samples_bs004.png") and valid_png(folder / "samples_bs008.png")
    assert json.loads((folder / "sweep.json").read_text())["settings"]["batch_sizes"] == [4, 8]


def invented(batch_size, epochs, train, ratio, recall, **fields):
    return {"batch_size": batch_size, "epochs": epochs, "data": {"train": train}, "run": f"bs{batch_size}",
            "colour_quality": {"colourfulness_ratio": ratio, "mean_recall": recall}, "final_val_loss": 1.5,
            **fields}


def test_csv_columns_hold_steps_and_measured_quality(tmp_path):
    """steps = ceil(train images / batch) * epochs; the quality columns are the final weights' colour_quality."""
    rows = [csv_row(invented(32, 10, 5000, 0.61, 0.23)), csv_row(invented(512, 3, 5000, 0.4, 0.125)),
            csv_row(invented(100, 2, 1000, 1.25, 0.5))]
    assert [(r["steps"], r["colourfulness_ratio"], r["mean_recall"]) for r in rows] == [
        (157 * 10, 0.61, 0.23), (10 * 3, 0.4, 0.125), (10 * 2, 1.25, 0.5)]
    assert rows[0]["final_val_loss"] == 1.5 and rows[0]["run"] == "bs32"
    path = write_csv(tmp_path / "sweep.csv", [{**{k: "" for k in CSV_COLUMNS}, **r} for r in rows])
    back = read_csv(path)
    assert [(r["steps"], r["colourfulness_ratio"], r["mean_recall"]) for r in back] == [
        ("1570", "0.61", "0.23"), ("30", "0.4", "0.125"), ("20", "1.25", "0.5")]


def test_run_configs_give_one_run_per_batch_size(tmp_path):
    config = SweepConfig(model="UNet", batch_sizes=(64, 32, 64), epochs=3, results_dir=str(tmp_path))
    runs = run_configs(config)
    assert [b for b, _ in runs] == [32, 64]
    assert [(c.batch_size, c.epochs, c.model, c.devices) for _, c in runs] == [(32, 3, "UNet", 1), (64, 3, "UNet", 1)]
    assert [c.run_name.split("-")[:2] for _, c in runs] == [["UNet", "bs032"], ["UNet", "bs064"]]


def test_rerun_trains_nothing_and_keeps_the_csv(sweep):
    out, argv = sweep
    results = out / "results"
    before = run_folders(results)
    csv_before = (results / "colorization" / "batch_sweep" / "batch_sweep.csv").read_text()
    assert colorization.main(argv) == 0
    assert run_folders(results) == before
    assert (results / "colorization" / "batch_sweep" / "batch_sweep.csv").read_text() == csv_before


def test_other_settings_go_to_a_new_folder_and_leave_the_first(sweep):
    out, argv = sweep
    results = out / "results"
    first = results / "colorization" / "batch_sweep" / "batch_sweep.csv"
    csv_before = first.read_text()
    argv = [a if a != "4" else "8" for a in argv]  # one batch size, so a different sweep
    argv[argv.index("--epochs") + 1] = "2"
    assert colorization.main(argv) == 0
    assert first.read_text() == csv_before
    rows = read_csv(results / "colorization" / "batch_sweep-2" / "batch_sweep.csv")
    assert [(r["batch_size"], r["epochs"]) for r in rows] == [("8", "2")]


def test_run_name_with_batch_sizes_is_refused(cifar, tmp_path, capsys):
    code = colorization.main(["UNet", "--batch-sizes", "4", "--run-name", "x", "--data-dir", str(cifar),
                              "--results-dir", str(tmp_path / "r"), "--logs-dir", str(tmp_path / "l")])
    assert code == 2 and "--run-name" in capsys.readouterr().err
    assert not (tmp_path / "r" / "colorization" / "x").exists()


def test_sweep_folder_skips_foreign_and_other_settings(tmp_path):
    root = tmp_path / "colorization"
    (root / "batch_sweep").mkdir(parents=True)  # someone else's folder, no sweep.json
    (root / "batch_sweep-2").mkdir()
    (root / "batch_sweep-2" / "sweep.json").write_text(json.dumps({"settings": {"epochs": 3}}))
    assert sweep_folder(tmp_path, {"epochs": 5}).name == "batch_sweep-3"
    assert sweep_folder(tmp_path, {"epochs": 3}).name == "batch_sweep-2"


def write_summary(results, name, mtime, **fields):
    folder = results / "colorization" / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(fields))
    os.utime(folder / "summary.json", (mtime, mtime))
    return folder


SETTINGS = {"task": "colorization", "hyperparameters": {"model": "UNet", "lr": 0.001, "rebalance": None},
            "epochs": 25, "data": {"checksum": "abc", "split": [1, 2]}}


def test_finished_runs_match_every_setting_and_take_the_newest(tmp_path):
    write_summary(tmp_path, "a", 1000, settings=SETTINGS)
    newest = write_summary(tmp_path, "b", 2000, settings={**SETTINGS, "hyperparameters": {
        "model": "UNet", "lr": 1e-3 * (1 + 1e-12), "rebalance": None}})  # equal floats up to rounding
    write_summary(tmp_path, "c", 3000, settings={**SETTINGS, "epochs": 24})
    write_summary(tmp_path, "e", 4000, settings={**SETTINGS, "data": {"checksum": "other", "split": [1, 2]}})
    write_summary(tmp_path, "f", 5000, settings={**SETTINGS, "extra": 1})  # a setting the request lacks
    write_summary(tmp_path, "g", 6000, epochs=25, hyperparameters=SETTINGS["hyperparameters"])  # no settings
    (tmp_path / "colorization" / "d").mkdir()
    (tmp_path / "colorization" / "d" / "summary.json").write_text("{truncated")
    assert [f.name for f, _ in finished_runs(tmp_path, "colorization", SETTINGS)] == ["b", "a"]
    assert finished_runs(tmp_path, "colorization", {**SETTINGS, "epochs": 10}) == []
    assert finished_runs(tmp_path / "nowhere", "colorization", SETTINGS) == []
    # partial: only the keys asked for (predict's --checkpoint best|last gives the task and the model)
    wanted = {"task": "colorization", "hyperparameters": {"model": "UNet"}}
    found = finished_runs(tmp_path, "colorization", wanted, partial=True)
    assert [f.name for f, _ in found] == ["f", "e", "c", "b", "a"]
    assert newest.name == "b"


def test_differences_name_each_changed_setting():
    assert differences(SETTINGS, SETTINGS) == []
    changed = differences(SETTINGS, {**SETTINGS, "data": {"checksum": "new", "split": [1, 2]}, "epochs": 3})
    assert changed == ["data.checksum: 'abc' -> 'new'", "epochs: 25 -> 3"]
    assert differences(SETTINGS, {**SETTINGS, "epochs": 3}, ignore=("epochs",)) == []
    assert differences(SETTINGS, {**SETTINGS, "data": {"checksum": "abc"}}, ignore=("epochs",)) == [
        "data.split: [1, 2] -> '(not given)'"]
    assert differences(None, {"task": "colorization"}) == ["task: '(not recorded)' -> 'colorization'"]
    assert differences({"a": (1, 2)}, {"a": [1, 2]}) == []  # tuples from a module, lists from JSON
    assert differences({"a": 1}, {"a": True}) != []  # booleans are not numbers here


@pytest.mark.parametrize("flags", [["--devices", "2"], ["--devices", "0,1"], ["--devices", "-1"], ["--num-nodes", "2"]])
def test_sweep_refuses_several_processes_with_one_line(tmp_path, capsys, flags):
    """Each DDP rank would have to walk the same runs in step: refused before anything is written."""
    code, _, err = run_main(colorization.main, ["ConvTransposeNet", "--batch-sizes", 2, 4, *flags,
                                                "--data-dir", tmp_path / "none", "--results-dir", tmp_path / "r",
                                                "--logs-dir", tmp_path / "l"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "--batch-sizes runs one process at a time" in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_report_refuses_to_run_under_torchrun(tmp_path, capsys, monkeypatch):
    import report

    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_main(report.main, ["--results-dir", tmp_path / "r", "--logs-dir", tmp_path / "l"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "not torchrun" in lines[0], err
    assert list(tmp_path.iterdir()) == []
