"""Every bad input through the CLIs: a non-zero exit, one `error:` line, no traceback, and
earlier runs' files untouched. Also: a NaN loss stops the run and keeps the last good checkpoint,
run folders of simultaneous runs differ, and result files are written atomically.

The CLIs run in this process (`tests.clirun.run_main`): interpreter start-up would dominate. The
subprocess tests in test_colorization_cli.py / test_segmentation_cli.py / test_resume.py show that
the same messages reach a real terminal without a traceback. Bad inputs already covered there or by
the data tests are not repeated: see the table in README.md ("Resume and reliability").
"""
import contextlib
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import colorization
import segmentation
from tests.clirun import error_lines, run_main, snapshot
from tests.conftest import REPO
from tests.fixtures.cifar import write_cifar_archive, write_cifar_folder
from tests.fixtures.network import no_network
from tests.fixtures.oxford17 import write_oxford17

COLOR = ["UNet", "--num-filters", 8, "--batch-size", 16, "--accelerator", "cpu", "--no-compile"]
SEG = ["--loss", "ce", "--backbone", "mobilenet_v3_large", "--weights", "none", "--image-size", 64,
       "--batch-size", 6, "--accelerator", "cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data sets and one earlier run of each task in results/ and logs/, which no failure may touch."""
    root = tmp_path_factory.mktemp("reliability")
    write_cifar_folder(root / "cifar", n_per_batch=20, horse_every=2)
    write_oxford17(root / "flowers")
    out = ["--results-dir", root / "results", "--logs-dir", root / "logs"]
    for main, flags in ((colorization.main, [*COLOR, "--data-dir", root / "cifar"]),
                        (segmentation.main, [*SEG, "--data-dir", root / "flowers"])):
        code, _, _ = run_main(main, [*flags, *out, "--epochs", 1])
        assert code == 0
    return root


def _out(world):
    return ["--results-dir", world / "results", "--logs-dir", world / "logs"]


def _check_failure(world, capsys, main, argv, code, *parts):
    """Run the CLI, expect exit `code` and ONE error line holding `parts`, no traceback, nothing touched."""
    before = snapshot(world / "results", world / "logs")
    got, _, err = run_main(main, [*argv, *_out(world)], capsys)
    assert got == code, err[-3000:]
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err[-3000:]
    for part in parts:
        assert part in lines[0], lines[0]
    assert snapshot(world / "results", world / "logs") == before
    return lines[0]


# ----------------------------------------------------------------------------- flags

@pytest.mark.parametrize("main, argv, parts", [
    (colorization.main, ["ResNet"], ["model: 'ResNet' is not one of", "UNet"]),
    (segmentation.main, ["--loss", "dice"], ["invalid choice", "'iou'"]),
    (colorization.main, ["UNet", "--kernel", "0"], ["--kernel", "at least 1"]),
    (colorization.main, ["UNet", "--num-filters", "0"], ["--num-filters", "at least 1"]),
    (colorization.main, ["UNet", "--batch-size", "-3"], ["--batch-size", "at least 1"]),
    (segmentation.main, ["--loss", "ce", "--batch-size", "0"], ["--batch-size", "at least 1"]),
    (colorization.main, ["UNet", "--epochs", "0"], ["--epochs", "at least 1"]),
    (segmentation.main, ["--loss", "iou", "--epochs", "0"], ["--epochs", "at least 1"]),
    (colorization.main, ["UNet", "--lr", "nan"], ["--lr", "greater than 0"]),
], ids=["model", "loss", "kernel", "num-filters", "batch-size", "seg-batch-size", "epochs", "seg-epochs", "lr"])
def test_bad_flag_values_exit_2(world, capsys, main, argv, parts):
    _check_failure(world, capsys, main, argv, 2, *parts)


def test_image_size_the_model_cannot_use(world, capsys):
    _check_failure(world, capsys, segmentation.main, [*SEG[:-4], "--image-size", 8, "--data-dir", world / "flowers"],
                   2, "--image-size: 8 is too small", "at least 32")


# ----------------------------------------------------------------------------- data

def test_segmentation_data_missing_and_download_failing(world, tmp_path, capsys, monkeypatch):
    asked = no_network(monkeypatch)  # the same with or without a network
    _check_failure(world, capsys, segmentation.main, [*SEG, "--data-dir", tmp_path / "none"], 1,
                   "17flowers.tgz", "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/", str(tmp_path / "none"),
                   "downloads are stubbed in the tests")
    assert not (tmp_path / "none").exists()  # a mistyped --data-dir is not created
    assert asked == ["https://www.robots.ox.ac.uk/~vgg/data/flowers/17/17flowers.tgz",
                     "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/trimaps.tgz"]


def test_cifar_archive_with_wrong_checksum_is_moved_aside(world, tmp_path, capsys):
    archive = write_cifar_archive(tmp_path)
    content = archive.read_bytes()
    _check_failure(world, capsys, colorization.main, [*COLOR, "--data-dir", tmp_path], 1,
                   "cifar-10-python.tar.gz", "md5", "moved it to", ".bad-md5")
    assert not archive.exists() and (tmp_path / "cifar-10-python.tar.gz.bad-md5").read_bytes() == content


def test_truncated_cifar_pickle(world, tmp_path, capsys):
    folder = write_cifar_folder(tmp_path)
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    _check_failure(world, capsys, colorization.main, [*COLOR, "--data-dir", tmp_path], 1,
                   str(batch), "truncated")


@pytest.mark.parametrize("array, part", [(np.zeros((24, 4)), "shape (24, 4)"),
                                         (np.array([["a", "b", "c"]]), "dtype")], ids=["shape", "type"])
def test_palette_of_wrong_shape_or_type(world, tmp_path, capsys, array, part):
    np.save(tmp_path / "palette.npy", array)
    _check_failure(world, capsys, colorization.main,
                   [*COLOR, "--data-dir", world / "cifar", "--palette", tmp_path / "palette.npy"], 1,
                   str(tmp_path / "palette.npy"), part)


def test_oxford17_tree_without_trimaps(world, tmp_path, capsys):
    root = write_oxford17(tmp_path / "flowers", n_classes=1, per_class=4)
    for png in (root / "trimaps").iterdir():
        png.unlink()
    (root / "trimaps").rmdir()
    _check_failure(world, capsys, segmentation.main, [*SEG, "--data-dir", root], 1, "trimaps.tgz")


def test_unreadable_image_is_named(world, tmp_path, capsys):
    root = write_oxford17(tmp_path / "flowers", n_classes=1, per_class=4)
    jpg = root / "jpg" / "image_0002.jpg"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])  # a truncated JPEG: the header still opens
    _check_failure(world, capsys, segmentation.main, [*SEG, "--data-dir", root], 1, str(jpg), "cannot read image")


def test_pretrained_weights_missing_offline(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):  # never touch the network
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    weights = list(SEG)
    weights[weights.index("--weights") + 1] = "coco"
    _check_failure(world, capsys, segmentation.main, [*weights, "--data-dir", world / "flowers"], 1,
                   "deeplabv3_mobilenet_v3_large", "https://download.pytorch.org/", str(tmp_path / "torch"))


# ----------------------------------------------------------------------------- results folders

@contextlib.contextmanager
def _unwritable(folder):
    """Make `folder` unwritable even for root (chattr +i), or skip."""
    folder.chmod(0o555)
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        probe = folder / ".probe"
        try:
            probe.touch()
            probe.unlink()
            pytest.skip("cannot make a folder unwritable here (root without chattr)")
        except OSError:
            pass
        yield folder
    finally:
        if made:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_results_folder_not_writable(world, capsys):
    with _unwritable(world / "results" / "colorization") as folder:
        _check_failure(world, capsys, colorization.main, [*COLOR, "--data-dir", world / "cifar"], 1,
                       str(folder), "not writable", "--results-dir")


def test_results_folder_that_cannot_be_created(world, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder\n")
    got, _, err = run_main(segmentation.main, [*SEG, "--data-dir", world / "flowers", "--results-dir",
                                               tmp_path / "file" / "results", "--logs-dir", tmp_path / "logs"], capsys)
    assert got == 1 and "Traceback" not in err
    assert len(error_lines(err)) == 1 and "cannot create folder" in error_lines(err)[0]


# ----------------------------------------------------------------------------- NaN / inf loss

def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(world, capsys, monkeypatch):
    real_step = colorization.ColorizationModule.training_step

    def poisoned(self, batch, batch_idx):  # the loss of epoch 3's second batch is NaN
        loss = real_step(self, batch, batch_idx)
        return loss * float("nan") if (self.current_epoch, batch_idx) == (2, 1) else loss

    monkeypatch.setattr(colorization.ColorizationModule, "training_step", poisoned)
    before = snapshot(world / "results", world / "logs")
    got, _, err = run_main(colorization.main, [*COLOR, "--data-dir", world / "cifar", "--epochs", 5,
                                               "--run-name", "nan", *_out(world)], capsys)
    assert got == 1 and "Traceback" not in err
    [line] = error_lines(err)
    steps_per_epoch = 4  # 50 training horses in batches of 16
    assert f"at step {2 * steps_per_epoch + 2} (batch 2 of epoch 3)" in line and "NaN or infinite" in line
    ckpt = world / "logs" / "colorization" / "nan" / "checkpoints" / "last.ckpt"
    assert str(ckpt) in line
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (ckpt.parent / "interrupted.ckpt").exists()
    after = snapshot(world / "results", world / "logs")
    assert {k: v for k, v in after.items() if k in before} == before  # earlier runs untouched


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_guard_names_the_first_bad_step_and_reads_an_accelerator_flag_every_n_steps(device):
    """On the CPU every step is checked; on an accelerator the flag is read every `every` steps (no
    synchronisation per step), and the step named is still the first bad one."""
    from errors import NonFiniteLoss
    from training.callbacks import FiniteLossGuard

    class FakeTrainer:
        global_step, current_epoch, world_size, checkpoint_callbacks = 0, 4, 1, []

    guard, trainer = FiniteLossGuard(every=4), FakeTrainer()
    guard.on_train_epoch_start(trainer, None)  # no step taken yet: after its first batch, global_step is 1
    losses = [1.0, float("inf"), 2.0, float("nan")]
    stopped = None
    for step, loss in enumerate(losses, start=1):
        trainer.global_step = step
        try:
            guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss, device=device)}, None, step - 1)
        except NonFiniteLoss as e:
            stopped = (step, str(e))
            break
    assert stopped is not None
    assert stopped[0] == (2 if device == "cpu" else 4)  # cuda: read at global step 4 (a multiple of every)
    assert "at step 2 (batch 2 of epoch 5)" in stopped[1] and "first epoch" in stopped[1]


# ----------------------------------------------------------------------------- files

def _claim(barrier, results, logs, queue):
    from training.runs import create_run

    barrier.wait()  # both processes call create_run at the same moment
    queue.put(create_run("colorization", "UNet", results, logs, "same").name)


def test_simultaneous_runs_get_different_folders(tmp_path):
    """Two processes claim a run folder of the same name at the same moment (forked: no start-up cost)."""
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    procs = [context.Process(target=_claim, args=(barrier, tmp_path / "r", tmp_path / "l", queue)) for _ in range(2)]
    for p in procs:
        p.start()
    names = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert names == ["same", "same-2"]
    assert sorted(p.name for p in (tmp_path / "r" / "colorization").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "l" / "colorization").iterdir()) == names


def test_atomic_writers_leave_the_old_file_when_writing_fails(tmp_path):
    import matplotlib.pyplot as plt

    from files import atomic_save_figure, atomic_write_json

    atomic_write_json(tmp_path / "summary.json", {"ok": 1})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"ok": 1}
    fig = plt.figure()
    atomic_save_figure(fig, tmp_path / "curves.png")
    png = (tmp_path / "curves.png").read_bytes()
    fig.savefig = _failing_savefig
    with pytest.raises(OSError):
        atomic_save_figure(fig, tmp_path / "curves.png")
    plt.close(fig)
    assert (tmp_path / "curves.png").read_bytes() == png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "summary.json"]  # no temporary files


def _failing_savefig(f, **kwargs):
    f.write(b"\x89PNG half a file")
    raise OSError("disk full")


def test_every_result_writer_goes_through_files_py():
    """Summaries, CSVs, figures and weights: no module writes them directly (files.py does, atomically), except
    through files.atomic_save on the same line (`atomic_save(path, lambda f: torch.save(obj, f))`)."""
    direct = (".savefig(", "json.dump(", ".to_csv(", "csv.writer(", ".write_text(", ".write_bytes(", "np.save(",
              "torch.save(")
    # these write atomically themselves: k-means its palette; the feature store and the stand-in weights
    # script a temporary folder / file that is renamed into place. training/files.py is the old copy of
    # files.py that report.py still imports (to be removed with its move to the new API).
    allowed = {Path("files.py"), Path("data/palette_kmeans.py"), Path("data/features.py"),
               Path("models/standin_weights.py"), Path("training/files.py")}
    packages = [p.parent for p in REPO.glob("*/__init__.py") if p.parent.name != "tests"]
    sources = [*REPO.glob("*.py"), *(path for package in packages for path in package.rglob("*.py"))]
    offenders = []
    for path in sorted(sources):
        rel = path.relative_to(REPO)
        if rel not in allowed:
            offenders += [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
                          if any(d in line for d in direct) and "atomic_save(" not in line]
    assert {Path("colorization.py"), Path("training/runs.py"), Path("reporting/figures.py")} <= {
        p.relative_to(REPO) for p in sources}  # the scan does see the code
    assert not offenders, offenders


def test_results_files_honour_the_umask(world):
    """What a run writes gets the permissions of a plain open(), not mkstemp's 0600."""
    mask = os.umask(0)
    os.umask(mask)
    run = sorted((world / "results" / "colorization").glob("*/summary.json"))[0].parent
    files = sorted(p for p in run.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"summary.json", "config.json", "machine.json", "model.pt", "curves.png"}
    logs = [p for p in (world / "logs" / "colorization" / run.name).rglob("*") if p.is_file()]  # Lightning's own
    assert {p.name for p in logs} >= {"last.ckpt", "hparams.yaml"}
    files += logs
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o666 & ~mask for p in files}


@pytest.mark.parametrize("mask", [0o002, 0o077])
def test_atomic_writers_honour_the_umask_of_the_process(tmp_path, mask):
    """In a fresh process with another umask (group-writable 0664, private 0600)."""
    code = ("import os, sys; os.umask(int(sys.argv[1])); import files, matplotlib.pyplot as plt; "
            "files.atomic_write_json(sys.argv[2] + '/a.json', {}); files.atomic_save_figure(plt.figure(), "
            "sys.argv[2] + '/b.png'); files.atomic_save(sys.argv[2] + '/c.pt', lambda f: f.write(b'x'))")
    subprocess.run([sys.executable, "-c", code, str(mask), str(tmp_path)], cwd=REPO, check=True, timeout=300)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "a.json": 0o666 & ~mask, "b.png": 0o666 & ~mask, "c.pt": 0o666 & ~mask}


def test_checkpoints_load_weights_only(world):
    """What the CLIs write loads without unpickling anything but tensors and plain containers: the
    earlier (fixture) run of each task holds exactly a best and a last checkpoint, and every
    checkpoint in logs/ (other tests of this module may add some) is stamped with its task."""
    for task in ("colorization", "segmentation"):
        run = sorted((world / "results" / task).glob("*/summary.json"))[0].parent.name  # the earlier run's
        names = sorted(p.name for p in (world / "logs" / task / run / "checkpoints").glob("*.ckpt"))
        assert len(names) == 2 and names[0].startswith("best-epoch") and names[1] == "last.ckpt", names
    checkpoints = sorted((world / "logs").rglob("*.ckpt"))
    assert len(checkpoints) >= 4
    for ckpt in checkpoints:
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
        assert state["image2image"]["task"] == ckpt.relative_to(world / "logs").parts[0], ckpt


def test_summaries_record_seed_versions_and_data(world):
    for task in ("colorization", "segmentation"):
        path = sorted((world / "results" / task).glob("*/summary.json"))[0]  # the earlier run's
        s = json.loads(path.read_text())
        assert s["task"] == task and s["seed"] == 0 and {"torch", "pytorch_lightning", "numpy"} <= set(s["versions"])
        assert len(s["data"]["checksum"]) == 16

