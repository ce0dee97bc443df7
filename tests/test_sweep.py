"""The batch-size sweep (colorization.py --batch-sizes) and the finished-run lookup it shares with report.py."""
import csv
import json
import os

import pytest
from PIL import Image

import colorization
from colorization_sweep import CSV_COLUMNS, sweep_folder
from tests.fixtures.cifar import write_cifar_folder
from training.finished import find_finished


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
            "--accelerator", "cpu"]
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
        assert float(row["final_val_loss"]) == pytest.approx(summary["final_val_loss"], rel=1e-5)
        assert 0 <= float(row["final_val_acc"]) <= 1 and float(row["wall_seconds"]) > 0
        assert float(row["best_train_loss"]) == pytest.approx(summary["final_train_loss"], rel=1e-5)  # 1 epoch
    assert valid_png(folder / "val_loss.png")
    assert valid_png(folder / "samples_bs004.png") and valid_png(folder / "samples_bs008.png")
    assert json.loads((folder / "sweep.json").read_text())["settings"]["batch_sizes"] == [4, 8]


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


def test_find_finished_matches_values_floats_predicates_and_takes_the_newest(tmp_path):
    write_summary(tmp_path, "a", 1000, epochs=25, hyperparameters={"lr": 0.001}, data={"folder": "/d"})
    newest = write_summary(tmp_path, "b", 2000, epochs=25, hyperparameters={"lr": 1e-3}, data={"folder": "/d"})
    write_summary(tmp_path, "c", 3000, epochs=24, hyperparameters={"lr": 1e-3}, data={"folder": "/d"})
    (tmp_path / "colorization" / "d").mkdir()
    (tmp_path / "colorization" / "d" / "summary.json").write_text("{truncated")
    wanted = {"epochs": 25, "hyperparameters.lr": 0.001, "data.folder": lambda f: f == "/d"}
    assert find_finished(tmp_path, "colorization", wanted)[0] == newest
    assert find_finished(tmp_path, "colorization", {**wanted, "epochs": 10}) is None
    assert find_finished(tmp_path, "colorization", {**wanted, "hyperparameters.lr": 0.002}) is None
    assert find_finished(tmp_path, "colorization", {**wanted, "seed": 0}) is None  # key absent: no match
    assert find_finished(tmp_path / "nowhere", "colorization", wanted) is None
